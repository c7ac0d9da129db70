"""The Responses API's event stream (``stream: true`` on ``POST /v1/responses``).

A reply sent as it is sampled (:func:`live_response_events`) opens its message with the first text and
streams each function call as it is written (:class:`openrft.rollout.call_deltas.CallDeltas`): the item
once the call's name is read, then its arguments. The item and call ids are derived from the response's
id (:func:`call_ids`), so the stored response holds the ids the client saw. A reply sent whole once
sampled (:func:`response_events`) gives the same events at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from openrft.rollout.call_deltas import CallDeltas
from openrft.rollout.chat import tool_format
from openrft.rollout.streaming import LiveReply, TextDeltas, stream_error


def call_ids(response_id: str, k: int) -> tuple[str, str]:
    """The ``k``-th function call's item id and call id in response ``response_id``: a stream announces
    them while the call is being written, before the reply is read."""
    tail = response_id.removeprefix("resp_")
    return f"fc_{tail}_{k}", f"call_{tail[:24]}_{k}"


def message_first(text: str, has_calls: bool) -> bool:
    """Whether a reply's message item comes before its function calls: when text came before the first
    call (it was streamed first), or there are no calls."""
    return not has_calls or bool(text.split(tool_format().call_start, 1)[0].strip())


def envelope(request: Any, name: str, response_id: str) -> dict[str, Any]:
    """A ``response`` object in progress: the request's settings, no output yet."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "completed_at": None,
        "status": "in_progress",
        "incomplete_details": None,
        "error": None,
        "model": name,
        "instructions": request.instructions,
        "previous_response_id": request.previous_response_id,
        "output": [],
        "tools": request.tools or [],
        "tool_choice": request.tool_choice or "auto",
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "max_output_tokens": request.max_output_tokens,
        "temperature": 1.0 if request.temperature is None else request.temperature,  # OpenAI's defaults
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "top_logprobs": request.top_logprobs,
        "store": request.store is not False,
        "metadata": request.metadata or {},
        "text": {"format": (request.text or {}).get("format") or {"type": "text"}},
        "truncation": request.truncation or "disabled",
        "usage": None,
    }


def _numbered() -> Callable[..., str]:
    """A function writing one server-sent event of the Responses stream, numbered in order."""
    sequence = iter(range(1 << 62))

    def event(kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    return event


async def live_response_events(
    live: LiveReply,
    task: asyncio.Future,
    request: Any,
    tokenizer: Any,
    ids: tuple[str, str],
    tools: bool,
) -> AsyncIterator[str]:
    """The Responses event stream as the reply is sampled: the message's text deltas as it grows (up to
    a tool call's opening tag) and each function call as it is written; once done, the rest of each."""
    event = _numbered()
    pending = envelope(request, live.name, ids[0])
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    fmt = tool_format()
    stream = TextDeltas(tokenizer, markers=(fmt.call_start,) if tools else (), trim=tools)
    calls = CallDeltas(fmt.call_start, fmt.call_end) if tools else None
    opened = False  # the message item came first (its text did)
    closed: set[int] = set()  # calls whose items are done: each is closed before the next is added
    async for step in live.steps(task):
        for _, token in step:
            if text := stream.push([token]):
                if not opened:
                    opened = True
                    yield "".join(_message_opens(event, ids[1]))
                yield event("response.output_text.delta", item_id=ids[1], output_index=0, content_index=0,
                            delta=text, logprobs=[])  # fmt: skip
            for delta in calls.update(stream.text) if calls else ():
                before = delta["index"] - 1
                if "id" in delta and before >= 0 and (done := calls.finished(before)) is not None:  # type: ignore[union-attr]
                    closed.add(before)
                    yield "".join(_call_done(event, ids[0], int(opened) + before, before, *done))
                yield "".join(_call_delta(event, ids[0], int(opened), delta))
    try:
        body = task.result()
    except Exception as exc:  # noqa: BLE001 - the stream has begun: the error is its last event
        error = stream_error(exc)
        yield event("error", code=error["code"], message=error["message"], param=error["param"])
        return
    if body is not None:
        yield "".join(_items_end(event, body, ids[0], stream if opened else None, calls, closed))
        yield event(f"response.{body['status']}", response=body)


def _message_opens(event: Callable[..., str], message_id: str) -> Iterator[str]:
    item = {"type": "message", "id": message_id, "role": "assistant", "status": "in_progress", "content": []}
    yield event("response.output_item.added", output_index=0, item=item)
    yield event("response.content_part.added", item_id=message_id, output_index=0, content_index=0,
                part={"type": "output_text", "text": "", "annotations": []})  # fmt: skip


def _call_delta(
    event: Callable[..., str], response_id: str, offset: int, delta: dict[str, Any]
) -> Iterator[str]:
    """A streamed call's header (its item, added) or a piece of its arguments, as Responses events."""
    k = delta["index"]
    item_id, call_id = call_ids(response_id, k)
    if "id" in delta:
        item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": delta["function"]["name"],
                "arguments": "", "status": "in_progress"}  # fmt: skip
        yield event("response.output_item.added", output_index=offset + k, item=item)
    elif arguments := delta["function"].get("arguments"):
        yield event("response.function_call_arguments.delta", item_id=item_id, output_index=offset + k,
                    delta=arguments)  # fmt: skip


def stream_indices(tokenizer: Any, token_ids: Sequence[int], calls: list[dict[str, Any]]) -> list[int]:
    """Each of a finished reply's tool ``calls``' index in its live stream, read from its ``token_ids`` one
    at a time as the stream read them (a call is announced, or not, at the same token): the stored
    response's ids are derived from these (:func:`call_ids`)."""
    fmt = tool_format()
    text, deltas = (
        TextDeltas(tokenizer, markers=(fmt.call_start,), trim=True),
        CallDeltas(fmt.call_start, fmt.call_end),
    )
    for token in token_ids:
        text.push([token])
        deltas.update(text.text)
    return [settled.index for settled in deltas.settle(calls)]


def _as_chat_calls(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in items
        if i["type"] == "function_call"
    ]


def _call_done(
    event: Callable[..., str], response_id: str, output_index: int, k: int, name: str, arguments: str
) -> Iterator[str]:
    """A streamed call's done events, sent as the next call's item is added (OpenAI closes each item first)."""
    item_id, call_id = call_ids(response_id, k)
    item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "status": "completed",
            "arguments": arguments}  # fmt: skip
    yield event("response.function_call_arguments.done", item_id=item_id, output_index=output_index, name=name,
                arguments=arguments)  # fmt: skip
    yield event("response.output_item.done", output_index=output_index, item=item)


def _items_end(
    event: Callable[..., str],
    body: dict[str, Any],
    response_id: str,
    text: TextDeltas | None,
    calls: CallDeltas | None,
    closed: set[int] = frozenset(),  # type: ignore[assignment]
) -> Iterator[str]:
    """The events that finish a live stream's items: a streamed call the reply could not read is closed
    as incomplete; then, in the response's order, the rest of the streamed message (``text``) and calls
    and their done events, and the items not streamed yet, whole, each under an index of its own."""
    offset = int(text is not None)  # the message opened first, at 0
    for index, name, sent in calls.unreadable() if calls is not None else ():
        item_id, call_id = call_ids(response_id, index)
        item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": sent,
                "status": "incomplete"}  # fmt: skip
        yield event("response.function_call_arguments.done", item_id=item_id, output_index=offset + index,
                    name=name, arguments=sent)  # fmt: skip
        yield event("response.output_item.done", output_index=offset + index, item=item)
    settled_calls = calls.settle(_as_chat_calls(body["output"])) if calls is not None else []
    plan = iter(settled_calls)
    # the message, when it was not streamed first, comes after every call: indices follow the items added
    after = offset + max([calls.streamed if calls is not None else 0, *(c.index + 1 for c in settled_calls)])
    for item in body["output"]:
        at = {"item_id": item["id"]}
        if item["type"] == "message" and text is not None:
            (part,) = item["content"]
            if rest := text.rest(part["text"]):
                yield event("response.output_text.delta", **at, output_index=0, content_index=0, delta=rest,
                            logprobs=[])  # fmt: skip
            yield event("response.output_text.done", **at, output_index=0, content_index=0, text=part["text"],
                        logprobs=[])  # fmt: skip
            yield event("response.content_part.done", **at, output_index=0, content_index=0, part=part)
            yield event("response.output_item.done", output_index=0, item=item)
            continue
        settled = next(plan, None) if item["type"] == "function_call" else None
        if settled is None or settled.whole:
            index = offset + settled.index if settled is not None else after
            yield from _item_events(event, index, item)
            continue
        index = offset + settled.index
        if settled.index in closed:  # its done events went as the next call began
            continue
        if settled.rest:
            yield event(
                "response.function_call_arguments.delta", **at, output_index=index, delta=settled.rest
            )
        yield event("response.function_call_arguments.done", **at, output_index=index, name=item["name"],
                    arguments=item["arguments"])  # fmt: skip
        yield event("response.output_item.done", output_index=index, item=item)


def response_events(body: dict[str, Any]) -> Iterator[str]:
    """The finished response as the Responses event stream, each event named and numbered."""
    event = _numbered()
    pending = {**body, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None,
               "completed_at": None}  # fmt: skip
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    for index, item in enumerate(body["output"]):
        yield from _item_events(event, index, item)
    yield event(f"response.{body['status']}", response=body)


def _item_events(event: Callable[..., str], index: int, item: dict[str, Any]) -> Iterator[str]:
    at = {"item_id": item["id"], "output_index": index}
    if item["type"] == "function_call":
        yield event("response.output_item.added", output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"})  # fmt: skip
        yield event("response.function_call_arguments.delta", **at, delta=item["arguments"])
        yield event(
            "response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"]
        )
    else:
        (part,) = item["content"]
        yield event("response.output_item.added", output_index=index,
                    item={**item, "content": [], "status": "in_progress"})  # fmt: skip
        yield event("response.content_part.added", **at, content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []})  # fmt: skip
        logprobs = part.get("logprobs", [])
        yield event(
            "response.output_text.delta", **at, content_index=0, delta=part["text"], logprobs=logprobs
        )
        yield event("response.output_text.done", **at, content_index=0, text=part["text"], logprobs=logprobs)
        yield event("response.content_part.done", **at, content_index=0, part=part)
    yield event("response.output_item.done", output_index=index, item=item)


__all__ = [
    "call_ids",
    "envelope",
    "live_response_events",
    "message_first",
    "response_events",
    "stream_indices",
]
