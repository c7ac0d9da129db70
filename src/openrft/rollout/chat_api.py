"""``POST /v1/chat/completions`` for ``openrft serve`` and for a job's policy server.

The conversation is rendered with the model's chat template, tools included
(:mod:`openrft.rollout.chat`), and tool calls are read back out of the completion in the
format that template uses and returned OpenAI-shaped (``finish_reason: "tool_calls"``).
``stream: true`` answers with server-sent events as the reply is sampled (:mod:`openrft.rollout.streaming`):
its text as it grows, its tool calls once read. A training call, or one asking for log-probs, is sent
whole once sampled.

A request that names a rollout (the ``X-OpenRFT-Rollout`` header, set by the client a job
gives an agent) is a training call: the job's sampling parameters replace the request's,
``n`` must be 1, the trajectory's tokens are bounded by the job's context length, and the
exact tokens are recorded (:mod:`openrft.rollout.trajectories`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openrft.errors import DataError
from openrft.records import Completion
from openrft.rollout.call_deltas import CallDeltas
from openrft.rollout.chat import ParsedReply, encode_chat, render_chat, tool_format
from openrft.rollout.chat_checks import (
    MAX_STOP,
    HTTPError,
    check_messages,
    context_exceeded,
    null_is_unset,
    reply_too_long,
)
from openrft.rollout.constrained import ConstraintError, blame_tool, check_grammar, request_grammar
from openrft.rollout.prompts import with_system
from openrft.rollout.streaming import (
    LiveReply,
    LiveStream,
    TextDeltas,
    settle,
    stream_error,
    unless_disconnected,
)
from openrft.rollout.trajectories import (
    ROLLOUT_HEADER,
    CallRecord,
    RolloutRecorder,
    continues,
    joining_text,
    split_rollout_model,
    tools_key,
)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # false: at most one tool call per reply (the first)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    n: int = Field(1, ge=1, le=256)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool = False  # vLLM's extension: prompt and completion token ids in the answer
    response_format: dict[str, Any] | None = None  # text, json_object or json_schema (constrained decoding)
    frequency_penalty: float | None = None  # the penalties, logit_bias and reasoning_effort are refused
    presence_penalty: float | None = None  # unless left at their defaults: the engine does not apply them
    logit_bias: dict[str, float] | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None  # text only: audio output, audio and web search are refused
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    functions: list[Any] | None = None  # OpenAI's deprecated form of tools: refused, never dropped
    function_call: str | dict[str, Any] | None = None

    _nulls = model_validator(mode="before")(null_is_unset)  # "temperature": null is the default


@dataclasses.dataclass
class Answer:
    """A chat request's sampled completions and the replies read out of them."""

    name: str  # the model that answered
    completions: list[Completion]
    replies: list[ParsedReply]


def add_chat_routes(
    app: FastAPI,
    host: Any,
    batcher: Any,
    recorder: RolloutRecorder | None = None,
    system_prompt: str | None = None,
) -> Callable[[ChatRequest, Request], Awaitable[Answer | None]]:
    """Register ``/v1/chat/completions`` on ``app`` (``host``/``batcher`` from :mod:`openrft.rollout.server`)
    and return the function that answers a :class:`ChatRequest` (the Responses API's too).

    ``system_prompt`` is placed before the messages of every request that brings no system message.
    """
    engine = host.engine
    fmt = tool_format("hermes")

    async def complete(request: ChatRequest, http: Request, live: LiveReply | None = None) -> Answer | None:
        """Sample ``request``'s replies (recorded when it names a rollout); None when a rollout's
        client gave up on the call before its reply was ready. ``live`` (a streamed request) is started
        and fed the tokens as they are sampled, unless the reply can only be sent whole (see ``_live``)."""
        model, rollout_id = split_rollout_model(request.model)
        name = host.resolve(model)
        rollout_id = http.headers.get(ROLLOUT_HEADER) or rollout_id
        if rollout_id is not None and (recorder is None or recorder.log(rollout_id) is None):
            raise HTTPError(404, f"no open rollout '{rollout_id}'")
        tools = None if request.tool_choice == "none" else request.tools
        _check_supported(request, engine)
        grammar = _grammar(request, tools, engine)
        request.messages = with_system(request.messages, system_prompt)
        prompt_ids = _prompt_ids(engine.tokenizer, request.messages, tools, fmt, recorder, rollout_id)
        # with one call allowed, sampling ends at its end: a rollout records nothing after it
        ends = (fmt.call_end,) if tools and request.parallel_tool_calls is False else ()
        key, seed_name, budget = _sampling(request, name, engine, recorder, rollout_id, len(prompt_ids), ends)
        key = (*key, grammar)
        if live is not None and _live(request, engine, rollout_id):
            live.start(model or name)
        sink = live.push if live is not None and live.started.is_set() else None
        groups = await batcher.submit(key, [(seed_name, prompt_ids)], sink)
        completions = groups[0]
        # OpenAI leaves a matched stop string out of the content; a training rollout keeps what was
        # sampled, which is what it trains on (the job's stop strings end in the reply, documented)
        stops = () if rollout_id is not None else _request_stops(request)
        texts = [next((c.text[: -len(s)] for s in stops if c.text.endswith(s)), c.text) for c in completions]
        replies = [fmt.parse(t) if tools else ParsedReply(t) for t in texts]
        if request.parallel_tool_calls is False:
            replies = [dataclasses.replace(r, tool_calls=r.tool_calls[:1]) for r in replies]
        if rollout_id is not None and await http.is_disconnected():
            return None  # the agent gave up on this call (a client timeout): it never saw the reply
        if rollout_id is not None:
            c, reply = completions[0], replies[0]
            cut_by_context = budget is not None and budget < recorder.params.max_tokens  # type: ignore[union-attr]
            if cut_by_context and c.finish_reason == "length" and len(c.completion_token_ids) == budget:
                recorder.mark_truncated(rollout_id)  # type: ignore[union-attr]
            recorder.record(rollout_id, _call(request.messages, reply.message(), c, tools))  # type: ignore[union-attr]
        return Answer(model or name, completions, replies)  # the name asked for, as vLLM echoes it

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: ChatRequest, http: Request) -> Any:
        if not request.stream:
            answer = await unless_disconnected(http, complete(request, http))
        else:
            live = LiveReply()
            task = asyncio.ensure_future(complete(request, http, live))
            if await live.begun(task):  # accepted, and sent as it is sampled
                settle(task)
                events = _live_events(live, task, request, engine.tokenizer, fmt)
                return LiveStream(events, task)
            answer = await task  # refused, or sent whole once sampled
        if answer is None:
            return {}
        body = _response(engine.tokenizer, answer.name, request, answer.completions, answer.replies)
        if request.stream:
            return StreamingResponse(_events(body, request), media_type="text/event-stream")
        return body

    return complete


def _live(request: ChatRequest, engine: Any, rollout_id: str | None) -> bool:
    """Whether a streamed reply is sent as it is sampled. It is sent whole once sampled for a training
    call (what the rollout records is the finished reply), with log-probs, and from an engine that
    cannot report its tokens as it goes (vLLM, an endpoint)."""
    return rollout_id is None and not request.logprobs and bool(getattr(engine, "streams_tokens", False))


def _check_supported(request: ChatRequest, engine: Any) -> None:
    """Refuse what would otherwise be ignored: parameters openrft cannot honour, and requests OpenAI
    refuses (an unknown role, a tool result without its call's id, top_logprobs without logprobs)."""
    check_messages(request.messages)
    if request.functions is not None or request.function_call is not None:
        param = "functions" if request.functions is not None else "function_call"
        raise HTTPError(400, f"'{param}' (deprecated by OpenAI) is not supported: describe the functions in "
                        "'tools' and read 'tool_calls'", param=param)  # fmt: skip
    if request.reasoning_effort:
        raise HTTPError(400, "'reasoning_effort' is not supported: the model has no reasoning settings; "
                        "leave it out", param="reasoning_effort")  # fmt: skip
    if request.modalities is not None and set(request.modalities) - {"text"} or request.audio is not None:
        param = "audio" if request.audio is not None else "modalities"
        raise HTTPError(400, "audio output is not supported: the model answers in text only", param=param)
    if request.web_search_options is not None:
        raise HTTPError(400, "'web_search_options' is not supported: this server has no web search",
                        param="web_search_options")  # fmt: skip
    for param in ("frequency_penalty", "presence_penalty", "logit_bias"):
        if getattr(request, param):
            raise HTTPError(400, f"'{param}' is not supported: openrft samples from the model's own "
                            "distribution (temperature, top_p, top_k only); leave it out", param=param)  # fmt: skip
    if request.top_logprobs is not None and not request.logprobs:
        raise HTTPError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    check_top_logprobs(request.top_logprobs, engine)
    if request.stream_options is not None and not request.stream:
        raise HTTPError(400, "stream_options is only allowed with stream set to true", param="stream_options")


def _grammar(request: ChatRequest, tools: list[dict[str, Any]] | None, engine: Any) -> str | None:
    """The grammar the request's ``tool_choice`` (a forced call) or ``response_format`` (JSON) asks for."""
    try:
        grammar, param = request_grammar(tools, request.tool_choice, request.parallel_tool_calls,
                                         request.response_format)  # fmt: skip
        if grammar is None:
            return None
        if not getattr(engine, "constrained_decoding", False):
            if param == "tools":  # strict tools under "auto": honoured where sampling can be constrained,
                return None  # as vLLM's server leaves them to the model
            raise ConstraintError(f"{param} needs constrained decoding, which this server's "
                                  f"{type(engine).__name__} does not do: use 'auto' tool choice or plain "
                                  "text, and parse the reply", param)  # fmt: skip
        try:
            check_grammar(grammar, param)
        except ConstraintError as error:  # the tool at fault, rather than the grammar of them all
            raise blame_tool(tools, error) if tools else error from None
    except ConstraintError as error:
        raise HTTPError(400, str(error), param=error.param) from None
    return grammar


def check_top_logprobs(top_logprobs: int | None, engine: Any) -> None:
    """Alternatives to each sampled token come from engines that record them (the local engine's
    ``max_top_logprobs``); asking another for them is a 400 rather than lists left empty."""
    if top_logprobs and top_logprobs > getattr(engine, "max_top_logprobs", 0):
        raise HTTPError(400, f"top_logprobs {top_logprobs} is not supported by this server's "
                        f"{type(engine).__name__}: it records the log-prob of each sampled token only "
                        "(logprobs: true); send 0 or leave it out", param="top_logprobs")  # fmt: skip


def logprob_entries(
    tokenizer: Any, ids: list[int], logprobs: list[float], alternatives: Any = ()
) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` items: each token, its log-prob and bytes, and its ``top_logprobs``
    (the completion's ``(token id, log-prob)`` alternatives at that position, best first)."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": tokenizer.decode([token]),
            "logprob": logprob,
            "bytes": list(token_bytes(tokenizer, token)),
        }

    alternatives = list(alternatives) or [()] * len(ids)
    return [
        {**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in top]}
        for t, lp, top in zip(ids, logprobs, alternatives[: len(ids)], strict=True)
    ]


def _prompt_ids(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    fmt: Any,
    recorder: RolloutRecorder | None,
    rollout_id: str | None,
) -> list[int]:
    """The prompt's token ids; a rollout's call that continues its last one reuses its exact tokens."""
    try:
        return _encode(tokenizer, messages, tools, fmt, recorder, rollout_id)
    except DataError as exc:  # a malformed message (or a part this model cannot read): the client's
        raise HTTPError(400, f"invalid messages: {exc}", param="messages") from None
    except Exception as exc:  # a chat template refusing the conversation
        raise HTTPError(400, f"invalid messages: {type(exc).__name__}: {exc}") from None


def _encode(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    fmt: Any,
    recorder: RolloutRecorder | None,
    rollout_id: str | None,
) -> list[int]:
    log = recorder.log(rollout_id) if recorder is not None and rollout_id is not None else None
    previous = log.calls[-1] if log is not None and log.calls else None
    if previous is not None and continues(previous, messages, tools):
        k = len(previous.messages) + 1
        head = render_chat(tokenizer, messages[:k], tools, fmt, generation_prompt=False)
        full = render_chat(tokenizer, messages, tools, fmt)
        if full.startswith(head):
            # only an end token the model sampled ends its turn: a reply cut off after "<" or "<|im" did
            # not begin the template's end marker, which is one special token, still to be written whole
            special = special_ids(tokenizer)
            ids = list(previous.completion_token_ids)
            wrote = len(ids) - next((i for i, t in enumerate(reversed(ids)) if t not in special), len(ids))
            sampled = tokenizer.decode(ids[wrote:], skip_special_tokens=False)
            tail = joining_text(sampled, _turn_end(tokenizer)) + full[len(head) :]
            new_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
            return [*previous.prompt_token_ids, *previous.completion_token_ids, *new_ids]
    return encode_chat(tokenizer, messages, tools, fmt)


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens: those it lists, and every added token marked special (an
    end-of-turn token such as Phi-3's ``<|end|>`` may be only the latter)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return set(tokenizer.all_special_ids) | {
        i for i, token in added.items() if getattr(token, "special", False)
    }


def _turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message's content (e.g. ``<|im_end|>\\n``)."""
    cached = getattr(tokenizer, "_openrft_turn_end", None)
    if cached is None:
        marker = "\x1fOPENRFT\x1f"
        text = render_chat(
            tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
            generation_prompt=False,
        )  # fmt: skip
        cached = text[text.rindex(marker) + len(marker) :] if marker in text else ""
        tokenizer._openrft_turn_end = cached
    return cached


def _sampling(
    request: ChatRequest,
    name: str,
    engine: Any,
    recorder: RolloutRecorder | None,
    rollout_id: str | None,
    prompt_len: int,
    extra_stops: tuple[str, ...] = (),
) -> tuple[tuple, str, int | None]:
    """The batcher key, the seed name of the one prompt, and the token budget a rollout call had
    (``extra_stops`` end the reply besides the request's or the job's stop strings)."""
    stops = tuple(sorted(set(engine.stop_token_ids)))
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if any(not s for s in stop):
        raise HTTPError(400, "stop strings must be non-empty", param="stop")
    if len(stop) > MAX_STOP:
        raise HTTPError(400, f"stop takes at most {MAX_STOP} strings (as OpenAI's API), not {len(stop)}",
                        param="stop")  # fmt: skip
    limit = getattr(engine, "max_positions", 1 << 30)
    if rollout_id is None and prompt_len >= limit:
        raise HTTPError(400, context_exceeded(limit, prompt_len, "messages"), code="context_length_exceeded",
                        param="messages")  # fmt: skip
    if rollout_id is None:
        seed = request.seed if request.seed is not None else secrets.randbits(62)
        asked = request.max_completion_tokens or request.max_tokens
        if asked and prompt_len + asked > limit:  # refused, as vLLM and OpenAI refuse it (never cut short)
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise HTTPError(400, reply_too_long(limit, prompt_len, asked, "messages"),
                            code="context_length_exceeded", param=param)  # fmt: skip
        max_tokens = asked or limit - prompt_len  # (at least 1: the prompt left room, checked above)
        key = (name, request.n, request.temperature, request.top_p, max(request.top_k, 0),
               max_tokens, stops, (*stop, *extra_stops), request.top_logprobs or 0)  # fmt: skip
        return key, f"seed:{seed}", None
    assert recorder is not None and recorder.params is not None
    if request.n != 1:
        raise HTTPError(400, "n > 1 is refused for a training rollout: each rollout is one conversation",
                        param="n")  # fmt: skip
    p = recorder.params
    context = min(recorder.max_context or limit, limit)
    budget = min(p.max_tokens, context - prompt_len)
    if budget < 1:  # refused, nothing sampled: an agent that catches it may go on with a shorter history
        recorder.mark_refused(rollout_id)
        raise HTTPError(
            400,
            context_exceeded(context, prompt_len, "messages") + " (the rollout's context budget, "
            "--max-context-length, is used up)",
            code="context_length_exceeded",
            param="messages",
        )
    call = recorder.next_call(rollout_id)  # calls made at once (asyncio.gather) each get their own
    seed_key = recorder.log(rollout_id).seed_key  # type: ignore[union-attr]
    key = (
        name,
        1,
        p.temperature,
        p.top_p,
        p.top_k,
        budget,
        stops,
        (*p.stop, *extra_stops),
        request.top_logprobs or 0,
    )
    return key, f"{p.seed}:{seed_key}/{call}", budget  # the round's seed, the rollout, the call


def _call(messages: list[dict[str, Any]], reply: dict[str, Any], c: Completion, tools: Any) -> CallRecord:
    return CallRecord(
        messages=tuple(messages),
        reply=reply,
        text=c.text,
        prompt_token_ids=tuple(c.prompt_token_ids),
        completion_token_ids=tuple(c.completion_token_ids),
        logprobs=tuple(c.logprobs),
        finish_reason=c.finish_reason,
        policy_version=c.policy_version,
        tools=tools_key(tools),
    )


def _response(
    tokenizer: Any, name: str, request: ChatRequest, completions: list[Completion], replies: list[Any]
) -> dict[str, Any]:
    choices = []
    for index, (c, reply) in enumerate(zip(completions, replies, strict=True)):
        # cut off at the token limit is "length" even after complete calls (the reply is not whole)
        finish = "tool_calls" if reply.tool_calls and c.finish_reason != "length" else c.finish_reason
        choice: dict[str, Any] = {"index": index, "message": reply.message(), "finish_reason": finish,
                                  "logprobs": None}  # fmt: skip
        if request.logprobs:
            ids, lps = list(c.completion_token_ids), list(c.logprobs)
            choice["logprobs"] = {"content": logprob_entries(tokenizer, ids, lps, c.top_logprobs)}
        if request.return_token_ids:
            choice["token_ids"] = list(c.completion_token_ids)
            choice["prompt_token_ids"] = list(c.prompt_token_ids)
        choices.append(choice)
    prompt_tokens = len(completions[0].prompt_token_ids) if completions else 0
    completion_tokens = sum(len(c.completion_token_ids) for c in completions)
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    if request.return_token_ids and completions:  # where vLLM puts them (and on each choice, as before)
        body["prompt_token_ids"] = list(completions[0].prompt_token_ids)
    return body


def _request_stops(request: ChatRequest) -> tuple[str, ...]:
    return (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())


BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes token ``token_id`` stands for, so that a client joining a reply's tokens' bytes gets
    its UTF-8 text even where a character spans tokens (decoding one such token alone gives U+FFFD).
    Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) maps bytes to printable characters; SentencePiece
    writes a lone byte as ``<0xE4>`` and a space as ``▁``."""
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(token, str):
        return tokenizer.decode([token_id]).encode()
    if (match := BYTE_TOKEN.fullmatch(token)) is not None:
        return bytes([int(match.group(1), 16)])
    decoder = _byte_decoder()
    if token and all(ch in decoder for ch in token):
        return bytes(decoder[ch] for ch in token)
    return token.replace("\u2581", " ").encode()


@functools.cache
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def _events(
    body: dict[str, Any],
    request: ChatRequest,
    streams: list[TextDeltas] | None = None,
    base: dict[str, Any] | None = None,
    calls_sent: list[CallDeltas] | None = None,
) -> Iterator[str]:
    """The finished answer as OpenAI's chunk stream: role, content, tool calls, finish, [usage], [DONE].
    With ``streams`` (a stream sent as sampled, under ``base``), the roles and the text sent so far went
    already: only the rest of each text follows, and of each tool call what ``calls_sent`` did not send."""
    base = base or {
        "id": body["id"],
        "object": "chat.completion.chunk",
        "created": body["created"],
        "model": body["model"],
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        data = {
            **base,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        }
        return f"data: {json.dumps(data)}\n\n"

    for choice in body["choices"]:
        i, message = choice["index"], choice["message"]
        if streams is None:
            yield chunk(i, {"role": "assistant", "content": ""})
            if message.get("content") or choice["logprobs"]:  # a reply of tool calls only has log-probs too
                yield chunk(i, {"content": message.get("content") or ""}, logprobs=choice["logprobs"])
        elif rest := streams[i].rest(message.get("content")):
            yield chunk(i, {"content": rest})
        calls = message.get("tool_calls") or []
        deltas = (
            calls_sent[i].finish(calls) if calls_sent else [{"index": n, **c} for n, c in enumerate(calls)]
        )
        for delta in deltas:
            yield chunk(i, {"tool_calls": [delta]})
        yield chunk(i, {}, choice["finish_reason"])
    if (request.stream_options or {}).get("include_usage"):
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': body['usage']})}\n\n"
    yield "data: [DONE]\n\n"


async def _live_events(
    live: LiveReply, task: asyncio.Future, request: ChatRequest, tokenizer: Any, fmt: Any
) -> AsyncIterator[str]:
    """OpenAI's chunk stream as the reply is sampled: each choice's role, then its text as it grows (up to
    a tool call's opening tag) and its tool calls as they are written (:class:`CallDeltas`), then, once
    done, the rest of its text and calls and its finish reason."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": live.name}  # fmt: skip

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    tools = request.tools if request.tool_choice != "none" else None
    markers = (fmt.call_start,) if tools else ()
    streams = [
        TextDeltas(tokenizer, stops=_request_stops(request), markers=markers, trim=bool(tools))
        for _ in range(request.n)
    ]
    calls = [CallDeltas(fmt.call_start, fmt.call_end) for _ in range(request.n)] if tools else None
    for index in range(request.n):
        yield chunk(index, {"role": "assistant", "content": ""})
    async for step in live.steps(task):
        for candidate, text in _grouped(streams, step):
            if text:
                yield chunk(candidate, {"content": text})
            for delta in calls[candidate].update(streams[candidate].before_stop()) if calls else ():
                yield chunk(candidate, {"tool_calls": [delta]})
    try:
        answer = task.result()
    except Exception as exc:  # noqa: BLE001 - the stream has begun: the error is its last event
        yield f"data: {json.dumps({'error': stream_error(exc)})}\n\n"
        return
    body = _response(tokenizer, answer.name, request, answer.completions, answer.replies)
    for line in _events(body, request, streams, base, calls):
        yield line


def _grouped(streams: list[TextDeltas], step: list[tuple[tuple[int, int], int]]) -> list[tuple[int, str]]:
    """One step's tokens pushed into their choices' streams: each choice's new text (often ""), by index."""
    return [(owner[1], streams[owner[1]].push([token])) for owner, token in step]


__all__ = [
    "Answer",
    "ChatRequest",
    "HTTPError",
    "add_chat_routes",
    "check_top_logprobs",
    "context_exceeded",
    "logprob_entries",
    "token_bytes",
]
