"""``POST /v1/responses``: OpenAI's Responses API over the chat path (:mod:`openrft.rollout.chat_api`).

A request's ``instructions`` and ``input`` items (messages, ``function_call`` and
``function_call_output`` items) become a chat conversation; its flat function tools become chat
tools. The reply comes back as output items: a ``message`` with ``output_text``, then a
``function_call`` per tool call. ``previous_response_id`` continues a stored response (the server
keeps the latest ones in memory, ``store: false`` keeps none); ``stream: true`` answers with the
Responses event stream once the reply is done. A request naming a rollout is a training call,
recorded exactly as a chat completion is: an agent may use either API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from openrft.rollout.chat_api import Answer, ChatRequest, HTTPError, token_bytes

STORED_RESPONSES = 4096  # responses kept for previous_response_id and GET, newest first
LOGPROBS = "message.output_text.logprobs"
TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # vLLM's extension, as in chat completions
    seed: int | None = None  # likewise
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None
    store: bool | None = None  # OpenAI's default: stored
    metadata: dict[str, Any] | None = None
    stream: bool = False


Complete = Callable[[ChatRequest, Request], Awaitable[Answer | None]]


def add_responses_routes(app: FastAPI, complete: Complete, tokenizer: Any) -> None:
    """Register ``/v1/responses`` (create, retrieve, delete), answering through ``complete``."""
    stored: OrderedDict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = OrderedDict()

    @app.post("/v1/responses", response_model=None)
    async def create_response(request: ResponsesRequest, http: Request) -> Any:
        history: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            if request.previous_response_id not in stored:
                raise HTTPError(404, f"Previous response with id '{request.previous_response_id}' not found.")
            history = list(stored[request.previous_response_id][0])
        conversation = [*history, *input_messages(request.input)]
        opening = [{"role": "system", "content": request.instructions}] if request.instructions else []
        chat = ChatRequest(
            model=request.model,
            messages=[*opening, *conversation],
            tools=chat_tools(request.tools),
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            max_completion_tokens=request.max_output_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k,
            seed=request.seed,
        )
        answer = await complete(chat, http)
        if answer is None:
            return {}  # a rollout's client gave up on the call
        body = response_body(tokenizer, request, answer)
        if request.store is not False:
            stored[body["id"]] = ([*conversation, answer.replies[0].message()], body)
            while len(stored) > STORED_RESPONSES:
                stored.popitem(last=False)
        if request.stream:
            return StreamingResponse(response_events(body), media_type="text/event-stream")
        return body

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str) -> dict[str, Any]:
        if response_id not in stored:
            raise HTTPError(404, f"Response with id '{response_id}' not found.")
        return stored[response_id][1]

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict[str, Any]:
        if stored.pop(response_id, None) is None:
            raise HTTPError(404, f"Response with id '{response_id}' not found.")
        return {"id": response_id, "object": "response", "deleted": True}


# ----------------------------------------------------------------------------- request -> chat


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items as chat messages: a ``function_call`` joins the assistant turn before it,
    a ``function_call_output`` is a tool message; reasoning items are left out."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise HTTPError(
                    400, f"input[{i}]: role {role!r} is not one of user, assistant, system, developer"
                )
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text(item.get("content"), i)})  # fmt: skip
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}  # fmt: skip
            if not isinstance(call["function"]["name"], str):
                raise HTTPError(400, f"input[{i}]: a function_call needs a name")
            if not (messages and messages[-1]["role"] == "assistant"):
                messages.append({"role": "assistant", "content": None})
            messages[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _text(item.get("output"), i)})  # fmt: skip
        elif kind == "reasoning":
            continue  # this server writes none; a client passing one back loses nothing
        else:
            raise HTTPError(
                400,
                f"input[{i}]: items of type {kind!r} are not supported: use messages, function_call "
                "and function_call_output items",
            )
    if not messages:
        raise HTTPError(400, "input: no messages")
    return messages


def _text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise HTTPError(400, f"input[{index}]: content must be text or a list of content parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise HTTPError(
                400, f"input[{index}]: a {kind!r} content part cannot be read; this model takes text only"
            )
    return "\n".join(texts)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Flat Responses function tools (``{"type": "function", "name": ...}``) as chat tools."""
    if not tools:
        return None
    out = []
    for tool in tools:
        if tool.get("type") != "function":
            raise HTTPError(
                400, f"tools: type {tool.get('type')!r} is not supported: only function tools are"
            )
        if isinstance(tool.get("function"), dict):  # already chat-shaped
            out.append(tool)
            continue
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


# ----------------------------------------------------------------------------- answer -> response


def response_body(tokenizer: Any, request: ResponsesRequest, answer: Answer) -> dict[str, Any]:
    """The Responses API's ``response`` object for the first (only) completion of ``answer``."""
    c, reply = answer.completions[0], answer.replies[0]
    incomplete = c.finish_reason == "length"
    output: list[dict[str, Any]] = []
    if reply.content or not reply.tool_calls:
        part: dict[str, Any] = {"type": "output_text", "text": reply.content or "", "annotations": []}
        if LOGPROBS in (request.include or ()):
            part["logprobs"] = [
                {
                    "token": tokenizer.decode([t]),
                    "logprob": lp,
                    "bytes": list(token_bytes(tokenizer, t)),
                    "top_logprobs": [],
                }  # fmt: skip
                for t, lp in zip(c.completion_token_ids, c.logprobs, strict=True)
            ]
        output.append({"type": "message", "id": f"msg_{uuid.uuid4().hex}", "role": "assistant",
                       "status": "incomplete" if incomplete else "completed", "content": [part]})  # fmt: skip
    for call in reply.tool_calls:
        function = call["function"]
        arguments = function["arguments"]
        output.append({
            "type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call["id"],
            "name": function["name"], "status": "completed",
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
        })  # fmt: skip
    prompt_tokens, completion_tokens = len(c.prompt_token_ids), len(c.completion_token_ids)
    now = int(time.time())
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": now,
        "completed_at": now,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": answer.name,
        "instructions": request.instructions,
        "previous_response_id": request.previous_response_id,
        "output": output,
        "tools": request.tools or [],
        "tool_choice": request.tool_choice or "auto",
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "max_output_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_logprobs": request.top_logprobs,
        "store": request.store is not False,
        "metadata": request.metadata or {},
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def response_events(body: dict[str, Any]) -> Iterator[str]:
    """The finished response as the Responses event stream, each event named and numbered."""
    sequence = iter(range(1 << 62))

    def event(kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

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


__all__ = ["ResponsesRequest", "add_responses_routes", "chat_tools", "input_messages"]
