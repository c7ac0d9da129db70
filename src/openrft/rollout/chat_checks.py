"""What a chat request must be before it is sampled, as OpenAI's API checks it: known roles, tool results
in order (each answers a call of the assistant message before it, and every call is answered before the
conversation goes on), at most four stop strings; and the errors such a request is answered with."""

from __future__ import annotations

import json
from typing import Any


class HTTPError(Exception):
    """An error answer: its status, message and, where OpenAI names them, its code and parameter."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 4  # stop strings a request may give, as OpenAI's API allows


def null_is_unset(data: Any) -> Any:
    """A request body with its explicit ``null`` fields left out: OpenAI's API (and vLLM's) reads a null as
    the field not given, and the openai SDK sends one for a parameter passed as None."""
    return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


def reply_too_long(limit: int, prompt: int, asked: int, where: str) -> str:
    """vLLM's words for a request whose prompt and requested completion together pass the context."""
    return (f"This model's maximum context length is {limit} tokens. However, you requested {prompt + asked} "
            f"tokens ({prompt} in the {where}, {asked} in the completion). Please reduce the length of the "
            f"{where} or completion.")  # fmt: skip


def context_exceeded(limit: int, tokens: int, where: str) -> str:
    """OpenAI's (and vLLM's) words for a request longer than the context, which clients match on (litellm's
    ContextWindowExceededError, and the context-window fallbacks of its router)."""
    return (f"This model's maximum context length is {limit} tokens. However, your {where} resulted in "
            f"{tokens} tokens, which leaves no room for a reply. Please reduce the length of the {where}.")  # fmt: skip


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Roles OpenAI knows, and tool results in OpenAI's order: each ``tool`` message answers a call of the
    assistant message before it, and every such call is answered before the conversation goes on."""
    waiting: dict[str, int] = {}  # the last assistant message's call ids not answered yet -> its index
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue  # the renderer names what is wrong with it
        role = message.get("role")
        if role not in ROLES:
            raise HTTPError(400, f"messages[{i}].role {json.dumps(role)} is not one of {', '.join(ROLES)}",
                            param=f"messages[{i}].role")  # fmt: skip
        content = message.get("content")
        if role != "assistant" and not isinstance(content, str | list):  # (an assistant's may be null)
            raise HTTPError(400, f"messages[{i}].content is required for a '{role}' message: text or a list of "
                            "content parts", param=f"messages[{i}].content")  # fmt: skip
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise HTTPError(400, f"messages[{i}]: a 'tool' message needs the 'tool_call_id' of the call it "
                                "answers", param=f"messages[{i}].tool_call_id")  # fmt: skip
            if waiting.pop(call_id, None) is None:
                raise HTTPError(400, f"messages[{i}]: a 'tool' message must answer a tool call of the assistant "
                                f"message before it, and no call {json.dumps(call_id)} is waiting for its result",
                                param=f"messages[{i}].tool_call_id")  # fmt: skip
            continue
        _refuse_unanswered(waiting)
        calls = message.get("tool_calls") if role == "assistant" else None
        waiting = {c["id"]: i for c in calls or () if isinstance(c, dict) and isinstance(c.get("id"), str)}
    _refuse_unanswered(waiting)


def _refuse_unanswered(waiting: dict[str, int]) -> None:
    if waiting:
        index = next(iter(waiting.values()))
        raise HTTPError(400, f"messages[{index}]: an assistant message with 'tool_calls' must be followed by a "
                        f"'tool' message answering each call; {', '.join(map(json.dumps, waiting))} got none",
                        param=f"messages[{index}].tool_calls")  # fmt: skip


__all__ = [
    "HTTPError", "MAX_STOP", "ROLES", "check_messages", "context_exceeded", "null_is_unset", "reply_too_long",
]  # fmt: skip
