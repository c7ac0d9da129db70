"""``POST /v1/completions`` for ``openrft serve`` (the subset of vLLM's API that
:class:`~openrft.rollout.endpoint.EndpointEngine` uses): ``prompt`` as text, token ids, or a list of
either; ``n``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` (-1 or 0 = off), ``seed``, ``logprobs``
(N: the N most likely tokens too), ``stop``, ``stop_token_ids``, ``return_tokens_as_token_ids``,
``return_token_ids``, ``stream`` (as sampled; whole once sampled with ``logprobs``). Log-probs are
``log_softmax(logits / T)`` of the sampled tokens, before truncation. Choice ``i * n + c`` is prompt
``i``'s candidate ``c``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openrft.records import Completion
from openrft.rollout.batching import Batcher
from openrft.rollout.chat_api import HTTPError as _HTTPError
from openrft.rollout.chat_api import context_exceeded
from openrft.rollout.chat_checks import null_is_unset, reply_too_long
from openrft.rollout.streaming import (
    LiveReply,
    LiveStream,
    TextDeltas,
    settle,
    stream_error,
    unless_disconnected,
)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # "temperature": Infinity is a 400

    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    n: int = Field(1, ge=1, le=256)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    logprobs: int | None = Field(None, ge=0)
    seed: int | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    stop: str | list[str] | None = None
    include_stop_str_in_output: bool = False
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # OpenAI's parameters this server does not apply: refused unless left at their defaults, never ignored
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    _nulls = model_validator(mode="before")(null_is_unset)  # "max_tokens": null is the default


def _check_unsupported(request: CompletionRequest) -> None:
    """Refuse what would otherwise be ignored, as the chat route does."""
    for param in ("frequency_penalty", "presence_penalty", "logit_bias", "echo", "suffix"):
        if getattr(request, param):
            raise _HTTPError(400, f"'{param}' is not supported: openrft samples from the model's own "
                             "distribution and returns the completion only; leave it out", param=param)  # fmt: skip
    if request.best_of not in (None, 1, request.n):
        raise _HTTPError(400, "'best_of' is not supported: ask for n candidates instead", param="best_of")


def add_completions_route(app: FastAPI, host: Any, batcher: Batcher) -> None:
    """``/v1/completions``: text or token-id prompts, ``n`` candidates each (the endpoint engine's API)."""
    engine = host.engine

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, http: Request) -> Any:
        name = host.resolve(request.model)
        _check_unsupported(request)
        if request.stream_options is not None and not request.stream:
            raise _HTTPError(
                400, "stream_options is only allowed with stream set to true", param="stream_options"
            )
        shown = request.model or name  # the name asked for, as vLLM echoes it
        token_lists = prompt_token_ids(engine.tokenizer, request.prompt)
        _check_context(
            engine, token_lists, request.max_tokens if "max_tokens" in request.model_fields_set else None
        )
        seed = request.seed if request.seed is not None else secrets.randbits(62)
        stops = tuple(sorted(set(engine.stop_token_ids) | set(request.stop_token_ids or ())))
        stop_strings = _stop_strings(request)
        key = (
            name,
            request.n,
            request.temperature,
            request.top_p,
            max(request.top_k, 0),
            request.max_tokens,
            stops,
            stop_strings,
            _alternatives_wanted(engine, request.logprobs),
            None,  # no grammar
        )
        prompts = [(f"seed:{seed}", ids) for ids in token_lists]
        if request.stream and not request.logprobs and getattr(engine, "streams_tokens", False):
            task = asyncio.ensure_future(batcher.submit(key, prompts, (live := LiveReply()).push))
            settle(task)
            events = _live_completion_events(
                live, task, request, shown, engine.tokenizer, stop_strings, stops
            )
            return LiveStream(events, task)
        groups = await unless_disconnected(http, batcher.submit(key, prompts))
        choices = [
            _choice(engine.tokenizer, c, i * request.n + c.candidate_index, request, stop_strings)
            for i, group in enumerate(groups)
            for c in group
        ]
        body = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": shown,
            "choices": choices,
            "usage": _usage(groups),
        }
        if request.stream:
            return StreamingResponse(_completion_events(body, request), media_type="text/event-stream")
        return body


def prompt_token_ids(tokenizer: Any, prompt: Any, what: str = "prompt") -> list[list[int]]:
    """Token ids of each text or id list in ``prompt`` (a text, ids, or a list of either); 400s say ``what``."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise _HTTPError(400, f"{what} is empty", param=what)
    token_lists = []
    for item in prompts:
        ids = tokenizer(item)["input_ids"] if isinstance(item, str) else list(item)
        if not ids:
            raise _HTTPError(400, f"a{'n' if what[0] in 'aeiou' else ''} {what} has no tokens", param=what)
        if any(not 0 <= t < len(tokenizer) for t in ids):
            raise _HTTPError(400, f"{what} token ids must be in [0, {len(tokenizer)})", param=what)
        token_lists.append(ids)
    return token_lists


def _stop_strings(request: CompletionRequest) -> tuple[str, ...]:
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if any(not s for s in stop):
        raise _HTTPError(400, "stop strings must be non-empty")
    return tuple(stop)


def _check_context(engine: Any, token_lists: list[list[int]], asked: int | None) -> None:
    """A prompt that leaves no room for one token, or for the ``max_tokens`` a request ``asked`` for, is
    refused as OpenAI and vLLM refuse it (a reply is never cut short to fit)."""
    limit = getattr(engine, "max_positions", 1 << 30)
    longest = max((len(ids) for ids in token_lists), default=0)
    if longest >= limit:
        raise _HTTPError(400, context_exceeded(limit, longest, "prompt"), code="context_length_exceeded",
                         param="prompt")  # fmt: skip
    if asked is not None and longest + asked > limit:
        raise _HTTPError(400, reply_too_long(limit, longest, asked, "prompt"), code="context_length_exceeded",
                         param="max_tokens")  # fmt: skip


def _completion_events(body: dict[str, Any], request: CompletionRequest) -> Iterator[str]:
    """A finished completions answer as the server-sent events OpenAI and vLLM stream: each choice's text
    (with its log-probs), then its finish reason, then [usage] and [DONE]. It is sent once sampled."""
    base = {k: body[k] for k in ("id", "object", "created", "model")}
    for choice in body["choices"]:
        yield f"data: {json.dumps({**base, 'choices': [{**choice, 'finish_reason': None}]})}\n\n"
        end = {
            "index": choice["index"],
            "text": "",
            "finish_reason": choice["finish_reason"],
            "logprobs": None,
        }
        yield f"data: {json.dumps({**base, 'choices': [end]})}\n\n"
    if (request.stream_options or {}).get("include_usage"):
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': body['usage']})}\n\n"
    yield "data: [DONE]\n\n"


async def _live_completion_events(
    live: LiveReply,
    task: asyncio.Future,
    request: CompletionRequest,
    name: str,
    tokenizer: Any,
    stops: tuple[str, ...],
    stop_ids: tuple[int, ...] = (),
) -> AsyncIterator[str]:
    """The completions stream as it is sampled: each choice's text as it grows, then once done its rest
    and finish reason, [usage] and [DONE]. Choice ``i * n + c`` is prompt ``i``'s candidate ``c``."""
    base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": name}  # fmt: skip

    def chunk(index: int, text: str, finish: str | None = None) -> str:
        choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    kept = request.include_stop_str_in_output
    streams: dict[int, TextDeltas] = {}
    async for step in live.steps(task):
        for (prompt, candidate), token in step:
            index = prompt * request.n + candidate
            if index not in streams:
                streams[index] = TextDeltas(
                    tokenizer,
                    stops=() if kept else stops,
                    kept_stops=stops if kept else (),
                    stop_ids=stop_ids,
                )
            if text := streams[index].push([token]):
                yield chunk(index, text)
    try:
        groups = task.result()
    except Exception as exc:  # noqa: BLE001 - the stream has begun: the error is its last event
        yield f"data: {json.dumps({'error': stream_error(exc)})}\n\n"
        return
    for i, group in enumerate(groups):
        for c in group:
            choice = _choice(tokenizer, c, i * request.n + c.candidate_index, request, stops)
            stream = streams.get(choice["index"])
            if rest := (stream.rest(choice["text"]) if stream else choice["text"]):
                yield chunk(choice["index"], rest)
            yield chunk(choice["index"], "", choice["finish_reason"])
    if (request.stream_options or {}).get("include_usage"):
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(groups)})}\n\n"
    yield "data: [DONE]\n\n"


def _usage(groups: list[list[Completion]]) -> dict[str, int]:
    """Tokens of every prompt (once per completion, as OpenAI counts ``n``) and of every completion."""
    prompt_tokens = sum(len(c.prompt_token_ids) for g in groups for c in g)
    completion_tokens = sum(len(c.completion_token_ids) for g in groups for c in g)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def _alternatives_wanted(engine: Any, logprobs: int | None) -> int:
    """How many alternatives per token a completions request's ``logprobs`` asks the engine to record."""
    if not logprobs:
        return 0
    most = getattr(engine, "max_top_logprobs", 0)
    if logprobs > most:
        also = f"; {type(engine).__name__} records the sampled token's only: send 0" if not most else ""
        raise _HTTPError(400, f"logprobs {logprobs} is more than this server returns ({most}){also}",
                         param="logprobs")  # fmt: skip
    return logprobs


def _top_logprobs(
    tokenizer: Any, completion: Completion, request: CompletionRequest
) -> list[dict[str, float]]:
    """The legacy API's ``top_logprobs``: per token, ``{token: log-prob}`` of the ``logprobs`` most likely
    tokens, plus the sampled one (as vLLM does: up to ``logprobs + 1`` entries)."""

    def name(token: int) -> str:
        return f"token_id:{token}" if request.return_tokens_as_token_ids else tokenizer.decode([token])

    alternatives = completion.top_logprobs or [()] * len(completion.completion_token_ids)
    out = []
    for token, logprob, top in zip(
        completion.completion_token_ids, completion.logprobs, alternatives, strict=True
    ):
        entries = {name(t): lp for t, lp in top}
        entries.setdefault(name(token), logprob)
        out.append(entries)
    return out


def _choice(
    tokenizer: Any, completion: Completion, index: int, request: CompletionRequest, stop: tuple[str, ...]
) -> dict:
    ids = list(completion.completion_token_ids)
    text = completion.text
    if not request.include_stop_str_in_output:  # OpenAI leaves the matched stop string out
        text = next((text[: -len(s)] for s in stop if text.endswith(s)), text)
    choice: dict[str, Any] = {
        "index": index,
        "text": text,
        "finish_reason": completion.finish_reason,
        "logprobs": None,
    }
    if request.logprobs is not None:
        pieces = [tokenizer.decode([t]) for t in ids]
        offsets = [0]  # where each token's text starts in the reply's, as vLLM counts them
        for piece in pieces[:-1]:
            offsets.append(offsets[-1] + len(piece))
        choice["logprobs"] = {
            "tokens": [f"token_id:{t}" for t in ids] if request.return_tokens_as_token_ids else pieces,
            "token_logprobs": list(completion.logprobs),
            "top_logprobs": _top_logprobs(tokenizer, completion, request) if request.logprobs else None,
            "text_offset": offsets[: len(ids)],
        }
    if request.return_token_ids:
        choice["token_ids"] = ids
        choice["prompt_token_ids"] = list(completion.prompt_token_ids)
    return choice


__all__ = ["CompletionRequest", "add_completions_route"]
