"""The endpoint engine: sample from an OpenAI-compatible completions server (vLLM, ``openrft serve``).

Each candidate is one ``POST {base_url}/completions`` request whose prompt is the token
ids rendered locally with the model's chat template (so prompt token ids are exactly the
trainer's). What the engine relies on from the server:

* ``prompt`` given as a list of token ids (vLLM, ``openrft serve``);
* ``logprobs: 1`` with ``return_tokens_as_token_ids: true``: the sampled tokens come back
  as ``"token_id:<id>"`` strings next to their log-probs; ``return_token_ids: true`` (newer
  vLLM) is used instead when the server returns ``choices[i].token_ids``;
* ``top_k`` (``-1`` = off), ``seed`` and ``stop_token_ids`` as extra body fields, and
  ``stop`` strings with ``include_stop_str_in_output: true`` when the job sets any;
* ``finish_reason`` ``"stop"`` or ``"length"``; on ``"stop"`` at an end token that token is
  the last completion token (vLLM and ``openrft serve`` include it).

Log-probs are whatever the server reports. ``openrft serve`` reports
``log_softmax(logits / T)`` before truncation, like the local engine. vLLM reports raw
(``T = 1``) log-probs by default and temperature-scaled *and truncated* ones with
``--logprobs-mode processed_logprobs``; see ``docs/vllm.md``. Before its first round the engine
asks a vLLM server (``owned_by: "vllm"`` in ``/v1/models``) for one token at ``top_k: 1``: processed
log-probs give that token exactly 0, raw ones (the default, or a vLLM before 0.10.2) do not, and the
job is refused rather than trained on mislabelled log-probs. The same listing's ``max_model_len``
bounds each request's ``max_tokens`` (vLLM refuses a prompt plus ``max_tokens`` beyond it).

Every request sets the sampling fields vLLM would otherwise take from the model's
``generation_config.json`` (``repetition_penalty``, ``min_p``, the penalties) to their neutral
values: the job samples from the policy, not from a penalised distribution the trainer never sees.

Requests in flight are bounded by ``max_concurrent_rollouts`` (an asyncio semaphore).
429 and 5xx answers, timeouts and connection errors are retried with exponential
backoff; after ``retries`` retries the call fails with :class:`RolloutError`, so a dead
server is reported after a bounded time (about ``backoff * 2**retries`` seconds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from openrft.errors import RolloutError
from openrft.models import end_token_ids
from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout.aborting import gather_or_abort
from openrft.rollout.adapters import LoadsAdapterFiles
from openrft.rollout.prompts import encode_prompt
from openrft.rollout.sampling import check_params, row_seed, vllm_truncation

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
ADMIN_RETRY_STATUS = RETRY_STATUS - {500}  # vLLM answers an adapter it cannot load with a 500: no retry
NEUTRAL = {"repetition_penalty": 1.0, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


class HTTPStatusError(RolloutError):
    """The server answered with an error status (after any retries): ``status`` and its ``detail``."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


def api_root(base_url: str) -> str:
    """``http://host:8000``, ``.../`` or ``.../v1`` -> ``http://host:8000/v1``."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class EndpointEngine(LoadsAdapterFiles):
    """A :class:`~openrft.records.RolloutEngine` backed by an OpenAI-compatible HTTP server.

    ``tokenizer`` renders prompts (it must be the served model's tokenizer);
    ``model_name`` is the served model (or LoRA adapter) name. ``transport`` replaces
    the network (an ``httpx.AsyncBaseTransport``, for tests).
    """

    should_abort: Callable[[], bool] | None = None  # asked while requests run (RolloutEngine)

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        model_name: str,
        *,
        max_concurrent_rollouts: int = 32,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        stop_token_ids: Sequence[int] | None = None,
        api_key: str | None = None,
        policy_version: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if max_concurrent_rollouts < 1:
            raise RolloutError(f"max_concurrent_rollouts must be >= 1 (got {max_concurrent_rollouts})")
        self.base_url = api_root(base_url)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_concurrent_rollouts = max_concurrent_rollouts
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.stop_token_ids = tuple(stop_token_ids or end_token_ids(tokenizer))
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.policy_version = policy_version
        self.transport = transport
        self.max_model_len: int | None = None  # the server's, once checked (vLLM lists it)
        self._checked = False

    # ------------------------------------------------------------------------- sampling

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt in order, ``params.n`` completions (candidate_index 0..n-1)."""
        return _run_sync(self.agenerate(prompts, params))

    async def agenerate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        encoded = [(p.prompt_id, encode_prompt(self.tokenizer, p)) for p in prompts]
        return await self.agenerate_from_ids(encoded, params)

    def generate_from_ids(
        self,
        prompts: Sequence[tuple[str, Sequence[int]]],
        params: SamplingParams,
        *,
        stop_token_ids: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Like :meth:`generate` for prompts already tokenized: ``(prompt_id, token_ids)`` pairs
        (an agent's calls, rendered by the job's policy server)."""
        return _run_sync(self.agenerate_from_ids(prompts, params, stop_token_ids=stop_token_ids))

    async def agenerate_from_ids(
        self,
        prompts: Sequence[tuple[str, Sequence[int]]],
        params: SamplingParams,
        *,
        stop_token_ids: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        check_params(params)
        version, model = self.policy_version, self.model_name
        stops = list(stop_token_ids or self.stop_token_ids)
        semaphore = asyncio.Semaphore(self.max_concurrent_rollouts)
        async with self._client() as client:
            if not self._checked and prompts:
                await self._check_server(client, list(prompts[0][1]), model)

            async def one(prompt_id: str, ids: list[int], candidate: int) -> Completion:
                body = {**self._body(ids, params, model, prompt_id, candidate), "stop_token_ids": stops}
                if body["max_tokens"] < 1:  # the prompt fills the server's context: nothing to sample
                    return Completion(
                        prompt_id, candidate, tuple(ids), (), "", (), "length", policy_version=version
                    )
                async with semaphore:
                    data = await self._post(client, "/completions", body)
                return self._completion(data, prompt_id, candidate, ids, version)

            tasks = [
                [asyncio.ensure_future(one(name, list(ids), c)) for c in range(params.n)]
                for name, ids in prompts
            ]
            flat = [t for group in tasks for t in group]
            try:
                await gather_or_abort(flat, self.should_abort)
            except BaseException:
                for task in flat:
                    task.cancel()
                await asyncio.gather(*flat, return_exceptions=True)
                raise
        return [[t.result() for t in group] for group in tasks]

    def _body(
        self, ids: list[int], params: SamplingParams, model: str, prompt_id: str, candidate: int
    ) -> dict:
        top_p, top_k = vllm_truncation(params)
        body: dict[str, Any] = {
            "model": model,
            "prompt": ids,
            "n": 1,
            "max_tokens": params.max_tokens,
            **NEUTRAL,
            "temperature": params.temperature,
            "top_p": top_p,
            "top_k": top_k,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "stop_token_ids": list(self.stop_token_ids),
            "skip_special_tokens": True,
        }
        if params.stop:  # vLLM and openrft serve keep the matched string with this flag
            body.update(stop=list(params.stop), include_stop_str_in_output=True)
        if params.seed is not None:
            body["seed"] = row_seed(params.seed, prompt_id, candidate) & 0x7FFFFFFF
        if self.max_model_len is not None:
            body["max_tokens"] = min(params.max_tokens, self.max_model_len - len(ids))
        return body

    async def _check_server(self, client: httpx.AsyncClient, ids: list[int], model: str) -> None:
        """What the server says of itself, once: a vLLM server's context length, and whether it reports
        the log-probs the trainer compares with (temperature-scaled: ``--logprobs-mode processed_logprobs``)."""
        try:
            listing = await self._request(client, "GET", "/models", None)
        except HTTPStatusError:  # a server without the listing: nothing to learn from it
            self._checked = True
            return
        data = listing.get("data", []) if isinstance(listing, dict) else []
        cards = {c.get("id"): c for c in data if isinstance(c, dict)}
        card = cards.get(model, {})  # the one sampled; an adapter's card names its base model as "parent"
        length = card.get("max_model_len") or (cards.get(card.get("parent")) or {}).get("max_model_len")
        self.max_model_len = length if isinstance(length, int) and not isinstance(length, bool) else None
        if card.get("owned_by") == "vllm":
            room = 64 if self.max_model_len is None else max(1, min(64, self.max_model_len - 1))
            probe = {**self._body(ids[-room:], SamplingParams(n=1, temperature=0.5, top_k=1, max_tokens=1), model,
                                  "probe", 0), "stop_token_ids": [], "ignore_eos": True}  # fmt: skip
            answer = await self._post(client, "/completions", probe)
            reported = self._completion(answer, "probe", 0, ids, 0).logprobs
            if not reported:
                raise RolloutError(f"the vLLM server at {self.base_url} answered the log-prob check (one token "
                                   "at top_k 1) with no token, so which log-probs it reports is unknown")  # fmt: skip
            if reported[0] != 0.0:
                raise RolloutError(
                    f"the vLLM server at {self.base_url} reports log-probs before temperature scaling (a "
                    f"token it had to sample at top_k 1 came back with {reported[0]:.4f}, not 0): the "
                    "trainer's importance weights would be wrong",
                    hint="start vllm serve (0.10.2 or newer) with --logprobs-mode processed_logprobs",
                )
        self._checked = True

    def _completion(
        self, data: dict, prompt_id: str, candidate: int, ids: list[int], version: int
    ) -> Completion:
        try:
            choice = data["choices"][0]
            logprobs = choice["logprobs"]
            values = [float(v) for v in logprobs["token_logprobs"]]
            token_ids = choice.get("token_ids") or [_token_id(t) for t in logprobs["tokens"]]
            reason = choice["finish_reason"]
            text = choice["text"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RolloutError(
                f"unexpected completion response from {self.base_url} ({type(exc).__name__}: {exc})",
                hint="the server must return per-token logprobs (vLLM: logprobs=1, return_tokens_as_token_ids)",
            ) from None
        if reason not in ("stop", "length") or len(token_ids) != len(values):
            raise RolloutError(
                f"bad completion from {self.base_url}: finish_reason={reason!r}, "
                f"{len(token_ids)} tokens but {len(values)} log-probs"
            )
        return Completion(
            prompt_id=prompt_id,
            candidate_index=candidate,
            prompt_token_ids=tuple(ids),
            completion_token_ids=tuple(int(t) for t in token_ids),
            text=text,
            logprobs=tuple(values),
            finish_reason=reason,
            policy_version=version,
        )

    # ------------------------------------------------------------------------- adapters

    def load_adapter(self, path: str, name: str) -> None:
        """Ask the server to load the LoRA adapter saved at ``path`` as ``name``; later requests use it.

        vLLM needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``; ``path``
        must be readable by the server process (shared disk or the same machine).
        """
        _run_sync(self._load(name, str(path)))
        self.model_name = name

    async def _load(self, name: str, path: str) -> None:
        """Load ``path`` as ``name``. A server that already has the name (left loaded by this job's run
        that stopped or crashed before a resume) refuses it: it is unloaded and the new files loaded."""
        body = {"lora_name": name, "lora_path": path}
        async with self._client() as client:
            try:
                await self._request(client, "POST", "/load_lora_adapter", body, ADMIN_RETRY_STATUS)
            except HTTPStatusError as exc:
                if exc.status != 400 or "already" not in exc.detail.lower():
                    raise
                await self._request(
                    client, "POST", "/unload_lora_adapter", {"lora_name": name}, ADMIN_RETRY_STATUS
                )
                await self._request(client, "POST", "/load_lora_adapter", body, ADMIN_RETRY_STATUS)

    def unload_adapter(self, name: str) -> None:
        """Free a previously loaded adapter on the server."""

        async def unload() -> None:
            async with self._client() as client:
                await self._request(
                    client, "POST", "/unload_lora_adapter", {"lora_name": name}, ADMIN_RETRY_STATUS
                )

        _run_sync(unload())

    def list_models(self) -> list[str]:
        """Model (and adapter) names the server offers."""

        async def fetch() -> list[str]:
            async with self._client() as client:
                data = await self._request(client, "GET", "/models", None)
            return [m["id"] for m in data.get("data", [])]

        return _run_sync(fetch())

    # ------------------------------------------------------------------------- HTTP

    def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.max_concurrent_rollouts + 2)
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            headers=self.headers,
            limits=limits,
            transport=self.transport,
        )

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict) -> dict:
        return await self._request(client, "POST", path, body)

    async def _request(
        self, client: httpx.AsyncClient, method: str, path: str, body: dict | None, retry=RETRY_STATUS
    ) -> dict:
        """One call with retries on ``retry`` statuses (429, 5xx), timeouts and connection errors."""
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await client.request(method, path, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise RolloutError(
                        f"cannot reach the inference endpoint {url} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {exc}",
                        hint="check that the server is running and --endpoint-url is right",
                    ) from None
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError:
                    raise RolloutError(f"{url} answered with something that is not JSON") from None
            if response.status_code not in retry or last:
                detail = _error_message(response)
                raise HTTPStatusError(
                    f"{url} answered HTTP {response.status_code}"
                    + (f" after {attempt + 1} attempts" if attempt else "")
                    + f": {detail}",
                    response.status_code,
                    detail,
                )
            await asyncio.sleep(self._delay(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        delay = min(self.backoff * 2**attempt, self.max_backoff)
        return delay * (0.75 + 0.5 * random.random())


def _token_id(token: str) -> int:
    if isinstance(token, str) and token.startswith("token_id:"):
        return int(token.split(":", 1)[1])
    raise ValueError(f"token {token!r} is not in 'token_id:<id>' form (send return_tokens_as_token_ids)")


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]


def _run_sync(coroutine: Any) -> Any:
    """Run a coroutine to completion, also from code that is already inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


__all__ = ["EndpointEngine", "api_root"]
