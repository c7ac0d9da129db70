"""``POST /v1/responses``: OpenAI's Responses API over the chat path (:mod:`openrft.rollout.chat_api`).

A request's ``instructions`` and ``input`` items (messages, ``function_call`` and
``function_call_output`` items) become a chat conversation; its flat function tools become chat
tools. The reply comes back as output items: a ``message`` with ``output_text``, then a
``function_call`` per tool call. ``previous_response_id`` continues a stored response, and
``item_reference`` items name stored items (the server keeps the latest responses in memory,
:mod:`openrft.rollout.response_store`; ``store: false`` keeps none); ``stream: true`` answers with
the Responses event stream as the reply is sampled (whole once sampled for a training call or with
log-probs). A request naming a rollout is a training call,
recorded exactly as a chat completion is: an agent may use either API, and tool calls it sends back
in any order (each call followed by its output) rejoin the turn that made them.

``text.format`` (``json_schema``, ``json_object``) and a forced ``tool_choice`` (``required``, or
``{"type": "function", "name": ...}``) are honoured by constrained decoding, as in chat completions.
Not supported, and refused rather than ignored: server-side ``conversation`` objects, tool types
other than functions.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from openrft.rollout.chat_api import Answer, ChatRequest, HTTPError, logprob_entries
from openrft.rollout.response_store import ResponseStore, Stored
from openrft.rollout.responses_stream import (
    call_ids,
    envelope,
    live_response_events,
    message_first,
    response_events,
    stream_indices,
)
from openrft.rollout.streaming import (
    LiveReply,
    LiveStream,
    settle,
    unless_disconnected,
)

LOGPROBS = "message.output_text.logprobs"
# what OpenAI's ``include`` may name; all but the log-probs concern tools and inputs this server has
# none of, so they add nothing to a reply
INCLUDABLE = (
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", LOGPROBS,
)  # fmt: skip
TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # vLLM's extension, as in chat completions
    reasoning: dict[str, Any] | None = None  # refused: openrft's models have no reasoning settings
    seed: int | None = None  # likewise
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None
    store: bool | None = None  # OpenAI's default: stored
    metadata: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    truncation: str | None = None
    conversation: Any = None
    prompt: Any = None  # a stored prompt template: refused, as conversations are
    background: bool | None = None  # refused when true
    stream: bool = False


Complete = Callable[[ChatRequest, Request, LiveReply | None], Awaitable[Answer | None]]


def add_responses_routes(app: FastAPI, complete: Complete, tokenizer: Any) -> None:
    """Register ``/v1/responses`` (create, retrieve, delete, input items), answering through ``complete``."""
    store = ResponseStore()

    @app.post("/v1/responses", response_model=None)
    async def create_response(request: ResponsesRequest, http: Request) -> Any:
        _check_supported(request)
        history: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            previous = store.get(request.previous_response_id)
            if previous is None:
                raise HTTPError(400, f"Previous response with id '{request.previous_response_id}' not found.",
                                code="previous_response_not_found", param="previous_response_id")  # fmt: skip
            history = list(previous.conversation)
        items = input_items(request.input, store)
        conversation = [*history, *input_messages(items, store)]
        if not conversation:
            raise HTTPError(400, "input: no messages", param="input")
        chat = _chat_request(request, conversation)
        # a stream sends the text as it is sampled, unless log-probs are asked for (then whole, once sampled)
        live = LiveReply() if request.stream and LOGPROBS not in (request.include or ()) else None
        ids = (f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}")

        async def respond() -> dict[str, Any] | None:  # sample, then store
            answer = await _answer(complete, chat, http, live)
            if answer is None:
                return None  # a rollout's client gave up on the call
            indices = (
                _announced(answer, ids[0], tokenizer) if live is not None and live.started.is_set() else None
            )
            body = response_body(tokenizer, request, answer, ids=ids, indices=indices)
            if request.store is not False:
                store.put(body["id"], Stored([*conversation, answer.replies[0].message()], body, items))
            return body

        if live is None:
            body = await unless_disconnected(http, respond())
        else:
            task = asyncio.ensure_future(respond())
            if await live.begun(task):  # accepted, and sent as it is sampled
                settle(task)
                tools = bool(chat.tools) and chat.tool_choice != "none"
                events = live_response_events(live, task, request, tokenizer, ids, tools)
                return LiveStream(events, task)
            body = await task  # refused, or sent whole once sampled
        if body is None:
            return {}
        if request.stream:
            return StreamingResponse(response_events(body), media_type="text/event-stream")
        return body

    def stored(response_id: str) -> Stored:
        found = store.get(response_id)
        if found is None:
            raise HTTPError(404, f"Response with id '{response_id}' not found.")
        return found

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str) -> dict[str, Any]:
        return stored(response_id).body

    @app.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str, order: str = "desc", limit: int = 20, after: str | None = None
    ) -> dict[str, Any]:
        items = list(stored(response_id).input_items)
        if order != "asc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[: max(1, min(limit, 100))]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > len(page)}  # fmt: skip

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict[str, Any]:
        if not store.delete(response_id):
            raise HTTPError(404, f"Response with id '{response_id}' not found.")
        return {"id": response_id, "object": "response", "deleted": True}


def _chat_request(request: ResponsesRequest, conversation: list[dict[str, Any]]) -> ChatRequest:
    """The chat request that samples ``request``'s reply to ``conversation`` (the earlier turns included)."""
    opening = [{"role": "system", "content": request.instructions}] if request.instructions else []
    if request.reasoning:
        raise HTTPError(400, "'reasoning' is not supported: the model has no reasoning settings",
                        param="reasoning")  # fmt: skip
    return ChatRequest(
        model=request.model,
        messages=[*opening, *conversation],
        tools=chat_tools(request.tools),
        tool_choice=chat_tool_choice(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls,
        max_completion_tokens=request.max_output_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        logprobs=bool(request.top_logprobs),
        top_logprobs=request.top_logprobs or None,
        response_format=chat_response_format((request.text or {}).get("format")),
    )


def _check_supported(request: ResponsesRequest) -> None:
    """Refuse the server-side objects and modes this server does not keep, rather than answer without
    them: a conversation, a stored prompt template (its instructions would silently go missing),
    background mode, and ``include`` values OpenAI does not know."""
    if request.conversation is not None:
        raise HTTPError(400, "conversation objects are not supported: send the items, or use "
                        "previous_response_id", param="conversation")  # fmt: skip
    if request.prompt is not None:
        raise HTTPError(400, "stored prompt templates are not supported: send their text as 'instructions' "
                        "and 'input'", param="prompt")  # fmt: skip
    if request.background:
        raise HTTPError(400, "background responses are not supported: leave 'background' out and wait for "
                        "the reply, or stream it", param="background")  # fmt: skip
    for i, value in enumerate(request.include or ()):
        if value not in INCLUDABLE:
            raise HTTPError(400, f"include[{i}] {json.dumps(value)} is not one of {', '.join(INCLUDABLE)}",
                            param=f"include[{i}]")  # fmt: skip


# ----------------------------------------------------------------------------- request -> chat


ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def input_items(
    given: str | list[dict[str, Any]] | None, store: ResponseStore | None = None
) -> list[dict[str, Any]]:
    """The request's input as items, each with an id (text is one user message); references resolved."""
    if given is None:
        return []
    if isinstance(given, str):
        given = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": given}]}]
    items = []
    for i, item in enumerate(given):
        if item.get("type") == "item_reference" or (item.get("id") and set(item) <= {"id", "type"}):
            found = store.item(item["id"]) if store is not None else None
            if found is None:
                raise HTTPError(400, f"Item with id '{item['id']}' not found.", param=f"input[{i}]")
            item = found
        kind = item.get("type", "message")
        items.append(
            item if item.get("id") else {**item, "id": f"{ID_PREFIX.get(kind, 'item')}_{uuid.uuid4().hex}"}
        )
    return items


def input_messages(items: list[dict[str, Any]], store: ResponseStore | None = None) -> list[dict[str, Any]]:
    """Input items as chat messages: a ``function_call`` joins the assistant turn that made it, and so does
    an assistant message right after a turn of calls only (a reply whose text came after its calls: this
    server's output order for it); a ``function_call_output`` is a tool message; reasoning items are left
    out."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise HTTPError(
                    400, f"input[{i}]: role {role!r} is not one of user, assistant, system, developer"
                )
            text = _text(item.get("content"), i)
            last = messages[-1] if messages else {}
            if role == "assistant" and last.get("role") == "assistant" and last.get("content") is None:
                last["content"] = text  # the same reply as its calls: one assistant turn, as it was sampled
                continue
            messages.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}  # fmt: skip
            if not isinstance(call["function"]["name"], str):
                raise HTTPError(400, f"input[{i}]: a function_call needs a name")
            turn = _turn_of(messages, call["id"], store)
            if turn is None:
                messages.append(turn := {"role": "assistant", "content": None})
            turn.setdefault("tool_calls", []).append(call)
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
    return messages


def _announced(answer: Answer, response_id: str, tokenizer: Any) -> list[int]:
    """The reply's calls take the ids a live stream announced for them; their indices in that stream."""
    calls = answer.replies[0].tool_calls
    indices = stream_indices(tokenizer, answer.completions[0].completion_token_ids, calls)
    for index, call in zip(indices, calls, strict=True):
        call["id"] = call_ids(response_id, index)[1]
    return indices


def _turn_of(messages: list[dict[str, Any]], call_id: str | None, store: ResponseStore | None) -> dict | None:
    """The assistant message a tool call belongs to: the one just before it, or, past the tool results
    that follow it, the one holding calls the same response made (``fc A, fco A, fc B, fco B``)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    owner = store.call_owner(call_id) if store is not None else None
    k = len(messages) - 1
    while owner is not None and k >= 0 and messages[k]["role"] == "tool":
        k -= 1
    if owner is None or k < 0 or messages[k]["role"] != "assistant" or not messages[k].get("tool_calls"):
        return None
    return messages[k] if store.call_owner(messages[k]["tool_calls"][0]["id"]) == owner else None  # type: ignore[union-attr]


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
        function["strict"] = (
            tool.get("strict") is not False
        )  # the Responses API's default (null too) is strict
        out.append({"type": "function", "function": function})
    return out


FLAT_TOOL = re.compile(r"(tools\[\d+\]\.)function\.")  # a Responses tool is flat: no "function" level
RESPONSES_PARAMS = {  # chat's field -> the Responses API's (the longest first: text.format is flat)
    "response_format.json_schema": "text.format",
    "response_format": "text.format",
    "messages": "input",
}


async def _answer(
    complete: Complete, chat: ChatRequest, http: Request, live: LiveReply | None
) -> Answer | None:
    """``complete(chat)``, its refusals naming the Responses API's own fields."""
    try:
        return await complete(chat, http, live)
    except HTTPError as error:
        for ours, theirs in RESPONSES_PARAMS.items():
            if error.param and (error.param == ours or error.param.startswith(ours + ".")):
                error.param = theirs + error.param[len(ours) :]
                error.message = error.message.replace(ours, theirs)
        if error.param and FLAT_TOOL.match(error.param):  # tools[1].function.name -> tools[1].name
            error.message = FLAT_TOOL.sub(r"\1", error.message)
            error.param = FLAT_TOOL.sub(r"\1", error.param)
        raise


def chat_tool_choice(choice: Any) -> Any:
    """The Responses API's flat ``{"type": "function", "name": N}`` as chat's nested form."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def chat_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Responses API's flat ``text.format`` ``{"type": "json_schema", "name", "schema", "strict"}``
    as chat's ``response_format`` (``{"type": "json_schema", "json_schema": {...}}``)."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and "json_schema" not in fmt:
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    return fmt


# ----------------------------------------------------------------------------- answer -> response


def response_body(
    tokenizer: Any,
    request: ResponsesRequest,
    answer: Answer,
    ids: tuple[str, str] | None = None,
    indices: list[int] | None = None,
) -> dict[str, Any]:
    """The Responses API's ``response`` object for the first (only) completion of ``answer``; ``ids``:
    the response's and its message's (a stream announces them before the reply is done), ``indices``:
    each call's index in a live stream (the function call items' ids follow them)."""
    response_id, message_id = ids or (f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}")
    c, reply = answer.completions[0], answer.replies[0]
    incomplete = c.finish_reason == "length"
    output: list[dict[str, Any]] = []
    message: list[dict[str, Any]] = []
    if reply.content or not reply.tool_calls:
        part: dict[str, Any] = {"type": "output_text", "text": reply.content or "", "annotations": []}
        if LOGPROBS in (request.include or ()) and not reply.tool_calls:  # the text's own tokens only
            ids, lps = list(c.completion_token_ids), list(c.logprobs)
            if c.finish_reason == "stop" and ids and ids[-1] in set(tokenizer.all_special_ids):
                ids, lps = ids[:-1], lps[:-1]  # the end-of-turn token is not part of the text
            part["logprobs"] = logprob_entries(tokenizer, ids, lps, c.top_logprobs)
        message.append({"type": "message", "id": message_id, "role": "assistant",
                        "status": "incomplete" if incomplete else "completed", "content": [part]})  # fmt: skip
    for k, call in enumerate(reply.tool_calls):
        function = call["function"]
        arguments = function["arguments"]
        output.append({
            "type": "function_call", "id": call_ids(response_id, indices[k] if indices else k)[0], "call_id": call["id"],
            "name": function["name"], "status": "completed",
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
        })  # fmt: skip
    # the message first when its text came first (as a stream sends them), else after the calls
    output = [*message, *output] if message_first(c.text, bool(reply.tool_calls)) else [*output, *message]
    prompt_tokens, completion_tokens = len(c.prompt_token_ids), len(c.completion_token_ids)
    body = envelope(request, answer.name, response_id)
    body.update(
        completed_at=body["created_at"],
        status="incomplete" if incomplete else "completed",
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        output=output,
        usage={
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )
    return body


__all__ = ["ResponsesRequest", "add_responses_routes", "chat_tools", "input_items", "input_messages"]
