"""``openrft serve``: the local engine behind a small OpenAI-compatible HTTP API.

Endpoints (chat completions, and the subset of vLLM's API that
:class:`~openrft.rollout.endpoint.EndpointEngine` uses, so the endpoint path can be exercised
without a GPU):

* ``GET  /v1/models``
* ``POST /v1/chat/completions``: see :mod:`openrft.rollout.chat_api` (tools, tool calls, stream).
* ``POST /v1/responses`` (and ``GET``/``DELETE /v1/responses/{id}``): OpenAI's Responses API over
  the same path, see :mod:`openrft.rollout.responses_api`.
* ``POST /v1/completions``: see :mod:`openrft.rollout.completions_api`.
* ``GET /health``; with ``api_keys``, every ``/v1`` route needs ``Authorization: Bearer KEY``.
* ``POST /v1/load_lora_adapter`` ``{lora_name, lora_path}`` and ``/v1/unload_lora_adapter``.

Requests that arrive together with the same sampling settings are decoded in one batch.
A request's seed fixes its random draws whatever else shares the batch; in float32 another batch can
still round a near-tie the other way (a float64 model answers identically, tested with 40 concurrent
requests streamed, whole, abandoned and timed out), as with vLLM, whose outputs are not batch-invariant.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from openrft.errors import ConfigError, OpenRFTError
from openrft.net import authorized, bearer_token, foreign_host, is_loopback
from openrft.records import Completion, SamplingParams
from openrft.rollout.batching import Batcher, Tokens
from openrft.rollout.chat_api import HTTPError, add_chat_routes
from openrft.rollout.completions_api import add_completions_route
from openrft.rollout.embeddings_api import add_embeddings_route
from openrft.rollout.responses_api import add_responses_routes
from openrft.rollout.streaming import ClientGone
from openrft.rollout.trajectories import RolloutRecorder

BATCH_WINDOW_S = 0.01


class AdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str | None = None


_HTTPError = HTTPError


class ModelHost:
    """The served model: base weights plus named LoRA adapters, one generation at a time.

    ``model_name`` is the default model: the base, or base + ``base_adapter`` (an adapter given
    at start-up). ``aliases`` are other names for it (``policy``, the base model's path);
    ``base_name`` serves the base without any adapter. ``fixed`` serves whatever the engine
    samples now (a job's policy, any engine with ``generate_from_ids``): no adapter switching.
    """

    def __init__(
        self,
        engine: Any,
        model_name: str,
        base_adapter: str | None = None,
        *,
        aliases: Sequence[str] = (),
        base_name: str | None = None,
        fixed: bool = False,
    ):
        self.engine, self.model_name, self.base_adapter = engine, model_name, base_adapter
        self.aliases = [a for a in dict.fromkeys(aliases) if a != model_name]
        self.base_name = base_name if base_name not in (None, model_name, *self.aliases) else None
        self.fixed = fixed
        self.adapters: dict[str, str] = {}
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        extra = [self.base_name] if self.base_name else []
        return [self.model_name, *self.aliases, *extra, *self.adapters]

    def resolve(self, name: str | None) -> str:
        """The served name a request's ``model`` means (an alias -> the default model); 404 if none."""
        if name is None or name in self.aliases:
            return self.model_name
        if name not in self.names():
            raise _HTTPError(
                404, f"the model '{name}' does not exist (served: {', '.join(self.names())})",
                code="model_not_found", param="model",
            )  # fmt: skip
        return name

    @contextlib.contextmanager
    def selected(self, name: str) -> Iterator[None]:
        model = getattr(self.engine, "model", None)
        if self.fixed:
            yield
        elif name in self.adapters:
            model.set_adapter(name)
            yield
        elif name == self.model_name and self.base_adapter is not None:
            model.set_adapter(self.base_adapter)
            yield
        elif _is_peft(model):
            with model.disable_adapter():
                yield
        else:
            yield

    def generate(
        self,
        key: tuple,
        prompts: list[tuple[str, list[int]]],
        on_tokens: Callable[[Tokens], None] | None = None,
        cancelled: Callable[[], set[int]] | None = None,
    ) -> list[list[Completion]]:
        """Decode ``prompts`` with the settings ``key`` holds; ``on_tokens`` (streaming) and ``cancelled``
        (abandoned requests) as the engine's, when it takes them."""
        name, n, temperature, top_p, top_k, max_tokens, stops, stop_strings, top_logprobs, grammar = key
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=0,
            stop=stop_strings, top_logprobs=top_logprobs, grammar=grammar,
        )  # fmt: skip
        extra: dict[str, Any] = (
            {} if set(stops) == set(self.engine.stop_token_ids) else {"stop_token_ids": stops}
        )
        if on_tokens is not None:
            extra["on_tokens"] = on_tokens
        if cancelled is not None and getattr(self.engine, "aborts_requests", False):
            extra["cancelled"] = cancelled
        with self.lock, self.selected(name):
            return self.engine.generate_from_ids(prompts, params, **extra)

    def load_adapter(self, name: str, path: str) -> None:
        from openrft.models import load_adapter

        with self.lock:
            model = self.engine.model
            if name in self.names() or name == self.base_adapter:
                raise _HTTPError(400, f"a model or adapter named '{name}' is already loaded")
            try:
                if _is_peft(model):
                    model.load_adapter(path, adapter_name=name)
                else:
                    self.engine.model = load_adapter(model, path, adapter_name=name)
            except OpenRFTError as exc:
                raise _HTTPError(400, exc.message) from None
            except Exception as exc:  # a corrupt file raises safetensors' and peft's own errors too
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise _HTTPError(400, f"cannot load adapter from {path}: {first}") from None
            self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                raise _HTTPError(404, f"no adapter named '{name}' is loaded")
            self.engine.model.delete_adapter(name)
            del self.adapters[name]


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def create_app(
    engine: Any,
    model_name: str,
    *,
    base_adapter: str | None = None,
    aliases: Sequence[str] = (),
    base_name: str | None = None,
    recorder: RolloutRecorder | None = None,
    fixed: bool = False,
    batch_window: float = BATCH_WINDOW_S,
    system_prompt: str | None = None,
    api_keys: Sequence[str] = (),
    adapters: dict[str, str] | None = None,
    local_only: bool = False,
) -> FastAPI:
    """The FastAPI application serving ``engine`` as ``model_name`` (see :class:`ModelHost`).

    ``recorder`` makes it a job's policy server: chat calls naming a rollout are recorded.
    ``system_prompt`` opens every chat request that has no system message of its own.
    ``api_keys``: a ``/v1`` request must send one as ``Authorization: Bearer KEY`` (none: no check).
    ``adapters``: more LoRA adapters served from the start, ``{name: folder}`` (as if loaded at run time).
    ``local_only``: answer only requests whose ``Host`` names this machine (a keyless server on loopback:
    a web page that points its own name at 127.0.0.1 must not reach the model or load adapters).
    """
    host = ModelHost(engine, model_name, base_adapter, aliases=aliases, base_name=base_name, fixed=fixed)
    for name, folder in (adapters or {}).items():
        try:
            host.load_adapter(name, folder)
        except _HTTPError as exc:  # at start-up this is bad input, not a request's error
            raise ConfigError(f"--lora-modules: {exc.message}") from None
    batcher = Batcher(host, batch_window)
    app = FastAPI(title="openrft serve")
    app.state.host = host
    _install_error_handlers(app)
    complete = add_chat_routes(app, host, batcher, recorder, system_prompt)
    add_responses_routes(app, complete, engine.tokenizer)
    _add_model_routes(app, host)
    _add_request_ids(app)
    app.add_middleware(_BodyLimit, limit=request_limit(getattr(engine, "max_positions", None)))
    if api_keys:
        app.add_middleware(_BearerKeys, keys=tuple(api_keys))
    if local_only:
        app.add_middleware(_LocalHostOnly)

    @app.get("/health")
    async def health() -> dict[str, str]:  # vLLM's liveness route (no key needed, as there)
        return {}

    add_completions_route(app, host, batcher)
    add_embeddings_route(app, host)
    _add_adapter_routes(app, host)
    return app


def _add_adapter_routes(app: FastAPI, host: ModelHost) -> None:
    """vLLM's runtime LoRA endpoints: ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``."""

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: AdapterRequest) -> JSONResponse:
        if not request.lora_path:
            raise _HTTPError(400, "lora_path is required")
        await asyncio.to_thread(host.load_adapter, request.lora_name, request.lora_path)
        return JSONResponse({"status": "ok", "message": f"adapter '{request.lora_name}' loaded"})

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: AdapterRequest) -> JSONResponse:
        await asyncio.to_thread(host.unload_adapter, request.lora_name)
        return JSONResponse({"status": "ok", "message": f"adapter '{request.lora_name}' unloaded"})


def _add_request_ids(app: FastAPI) -> None:
    """Every answer names itself in ``x-request-id``, as OpenAI's do (the SDK shows it as ``_request_id``).
    A plain ASGI wrapper: it leaves streaming and the routes' disconnect checks as they are."""
    app.add_middleware(_RequestId)


class _RequestId:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", f"req_{uuid.uuid4().hex}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _LocalHostOnly:
    """Answers a request whose ``Host`` is not this machine (DNS rebinding) with a 403, ``/health`` too."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if scope["type"] == "http" and foreign_host(host):
            response = _error(403, f"this server has no API key, so it answers only requests addressed to "
                              f"this machine (Host localhost or 127.0.0.1), not Host {host[:100]!r}")  # fmt: skip
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class _BearerKeys:
    """Answers a ``/v1`` request without a valid ``Authorization: Bearer KEY`` with OpenAI's 401."""

    def __init__(self, app: Any, keys: tuple[str, ...]):
        self.app, self.keys = app, keys

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path.startswith("/v1")
            and not authorized(bearer_token(scope), self.keys)
        ):
            response = _error(401, "Incorrect API key provided: send 'Authorization: Bearer KEY' with a key "
                              "given to openrft serve --api-key", code="invalid_api_key")  # fmt: skip
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def request_limit(context: int | None) -> int:
    """The largest request body served: 64 bytes per token of context (far more than any text that
    fits it, JSON escapes and tool schemas included), 4 MiB at least and 64 MiB at most. A body past
    it could never fit the model; refused before it is read whole, it costs no tokenizing (which
    takes about a hundred times the text's size in memory)."""
    return min(max(4 << 20, 64 * (context or 1 << 30)), 64 << 20)


class _BodyLimit:
    """Refuses a request whose body passes ``limit`` bytes with a 413: by its ``Content-Length``, or,
    sent in chunks, once that many bytes have arrived (the body is then read here and handed on)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:  # the server holds the client to it
            if declared.isdigit() and int(declared) > self.limit:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        message = (f"the request body is larger than this server's limit of {self.limit >> 20} MiB "
                   "(64 bytes per token of the model's context)")  # fmt: skip
        await _error(413, message, code="request_too_large")(scope, receive, send)


def _add_model_routes(app: FastAPI, host: ModelHost) -> None:
    """``GET /v1/models`` and ``GET /v1/models/{name}``, as OpenAI's model objects."""
    started = int(time.time())

    context = getattr(getattr(host, "engine", None), "max_positions", None)

    def model_object(name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": started, "owned_by": "openrft"}
        return {**card, "max_model_len": context} if context else card  # as vLLM lists it

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_object(name) for name in host.names()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        if name not in host.names():
            host.resolve(name)  # an alias or an unknown name: the same 404 a request naming it gets
        return model_object(name)


def _install_error_handlers(app: FastAPI) -> None:
    """Errors as OpenAI-shaped JSON bodies: ours with their status, bad requests and user errors as 400."""

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError) -> JSONResponse:
        return _error(exc.status, exc.message, code=exc.code, param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its "loc" is a byte offset, not a field
            return _error(400, f"the request body is not valid JSON: {first.get('msg', '')}")
        where = field_path(first.get("loc", ()))
        return _error(400, f"invalid request: {where}: {first.get('msg', 'bad value')}", param=where or None)

    @app.exception_handler(OpenRFTError)
    async def _openrft_error(request: Request, exc: OpenRFTError) -> JSONResponse:
        return _error(400, exc.message)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> JSONResponse:  # nobody reads it: nginx's 499
        return _error(499, "the client closed the connection before the reply was ready")

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # an unknown path or method, in the same shape as every other error
        if exc.status_code == 404:
            return _error(404, f"no such endpoint: {request.method} {request.url.path}", code="unknown_url")
        return _error(exc.status_code, str(exc.detail))


UNION_BRANCH = re.compile(r"[a-z_]+\[.*\]|str|int|float|bool|dict|list|none|[a-z]+-[a-z-]+(\[.*\])?")


def field_path(loc: Sequence[Any]) -> str:
    """A pydantic error's location as OpenAI names a parameter: ``messages[0].content``, without the
    ``body`` root or the names pydantic gives a union's branches (``stop.str``, ``function-after[...]``)."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif not UNION_BRANCH.fullmatch(str(part)):
            path += f".{part}" if path else str(part)
    return path


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> JSONResponse:
    """OpenAI's error body: ``type`` names the kind of error, ``code`` (a string or null) the case."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


# ----------------------------------------------------------------------------- running


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread on a free localhost port (tests, tools)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serving_app(engine: Any, model_name: str, host: str, **names: Any) -> FastAPI:
    """The app ``openrft serve`` runs on ``host``: a keyless one on loopback answers this machine's names only
    (a web page that points its own name at 127.0.0.1 must not reach it); ``names`` as for :func:`create_app`."""
    names.setdefault("local_only", not names.get("api_keys") and is_loopback(host))
    return create_app(engine, model_name, **names)


def serve(engine: Any, model_name: str, host: str, port: int, **names: Any) -> None:
    """Serve until interrupted (the ``openrft serve`` command); ``names`` as for :func:`create_app`."""
    import uvicorn

    app = serving_app(engine, model_name, host, **names)
    # bounded: on Ctrl-C or SIGTERM, requests still sampling get 5 s, then are cancelled (their rows end)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


__all__ = ["create_app", "serving_app", "BackgroundServer", "ModelHost", "serve"]
