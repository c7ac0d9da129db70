"""Chat conversations with tools: rendering them for the model and reading tool calls back.

A conversation is rendered with the model's own chat template. Templates that take ``tools``
(Qwen2.5, Llama 3.1, Hermes, ...) get the tool schemas and the assistant's ``tool_calls``
as they expect them. A template without tool support (SmolLM2's, for one) gets them in the
tool-call format of :data:`TOOL_FORMATS`: the schemas described in the system message, each
call written as the model should write it, and tool results as user turns.

Tool calls are read out of a completion by the same format. The built-in format is the
Hermes one used by the Qwen and SmolLM families::

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "17 * 23"}}
    </tool_call>

Other formats register themselves in :data:`TOOL_FORMATS`.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from openrft.errors import DataError


@dataclass
class ParsedReply:
    """A completion read as an assistant message: text, OpenAI-shaped tool calls, unreadable calls."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # the text of each call that could not be read

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


class ToolCallFormat(Protocol):
    """How a model family writes tool calls in text, and how tools are described to it."""

    name: str
    call_start: str  # the text that opens one call
    call_end: str  # the text that closes one call

    def parse(self, text: str) -> ParsedReply: ...

    def call_text(self, name: str, arguments: dict[str, Any]) -> str: ...

    def tools_prompt(self, tools: Sequence[dict[str, Any]]) -> str: ...

    def result_text(self, content: str) -> str: ...


class HermesFormat:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen2.5, SmolLM)."""

    name = "hermes"
    call_start = "<tool_call>"
    call_end = "</tool_call>"
    pattern = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> ParsedReply:
        """The calls read out of ``text``; what is not a readable call (a block cut short or holding
        bad JSON included) stays in the content."""
        calls, malformed, kept, end = [], [], [], 0
        for match in self.pattern.finditer(text):
            body = match.group(1).strip()
            try:
                data = json.loads(body)
                name, arguments = data["name"], data.get("arguments", {})
                if not isinstance(name, str) or not isinstance(arguments, dict):
                    raise TypeError("name must be text and arguments an object")
            except (ValueError, KeyError, TypeError):
                malformed.append(match.group(0))
                continue
            kept.append(text[end : match.start()])
            end = match.end()
            calls.append(
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
                }
            )
        if not calls:  # nothing readable: the whole text is the answer (malformed calls stay visible)
            return ParsedReply(text, [], malformed)
        content = "".join([*kept, text[end:]]).strip()
        return ParsedReply(content or None, calls, malformed)

    def call_text(self, name: str, arguments: dict[str, Any]) -> str:
        payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        return f"<tool_call>\n{payload}\n</tool_call>"

    def tools_prompt(self, tools: Sequence[dict[str, Any]]) -> str:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def result_text(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"


TOOL_FORMATS: dict[str, ToolCallFormat] = {"hermes": HermesFormat()}


def tool_format(name: str = "hermes") -> ToolCallFormat:
    try:
        return TOOL_FORMATS[name]
    except KeyError:
        raise DataError(f"unknown tool-call format '{name}' (known: {', '.join(TOOL_FORMATS)})") from None


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders ``tools`` itself (it mentions them)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tools" in template


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    fmt: ToolCallFormat | None = None,
    *,
    generation_prompt: bool = True,
) -> str:
    """The conversation as prompt text, the assistant turn opened (see the module docstring)."""
    fmt = fmt or TOOL_FORMATS["hermes"]
    checked = _normalise(messages)
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] or "" for m in checked)
    if template_takes_tools(tokenizer):
        return tokenizer.apply_chat_template(
            checked, tools=list(tools) if tools else None, add_generation_prompt=generation_prompt,
            tokenize=False,
        )  # fmt: skip
    return tokenizer.apply_chat_template(
        _as_plain_chat(checked, tools, fmt), add_generation_prompt=generation_prompt, tokenize=False
    )


def encode_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    fmt: ToolCallFormat | None = None,
) -> list[int]:
    """Token ids of :func:`render_chat` (the template writes its own special tokens)."""
    text = render_chat(tokenizer, messages, tools, fmt)
    ids = tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]
    if not ids:
        raise DataError("the conversation renders to no tokens")
    return list(ids)


def _normalise(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Plain dicts; ``content`` None -> ""; text parts joined (other parts refused); ``developer`` as
    ``system``; tool-call arguments as objects."""
    if not messages:
        raise DataError("no messages to render")
    out = []
    for i, message in enumerate(messages):
        m = (
            message.model_dump(exclude_none=True)
            if hasattr(message, "model_dump")
            else copy.deepcopy(message)
        )
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataError(f"message {i} must be an object with a string 'role'")
        if m["role"] == "developer":  # OpenAI's name for the system message of newer models
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):  # text parts, joined by newlines as vLLM joins them
            kinds = [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in content]
            if any(not (isinstance(p, dict) and isinstance(p.get("text"), str)) for p in content):
                other = next(
                    k
                    for k, p in zip(kinds, content, strict=True)
                    if not isinstance(p, dict) or "text" not in p
                )
                raise DataError(
                    f"message {i}: a {other!r} content part cannot be read; this model takes text only"
                )
            content = "\n".join(p["text"] for p in content)
        if content is not None and not isinstance(content, str):
            raise DataError(f"message {i} ('{m['role']}'): content must be text")
        m["content"] = content or ""
        for call in m.get("tool_calls") or []:
            function = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise DataError(f"message {i}: every tool call needs a function name")
            if isinstance(function.get("arguments"), str):
                function["arguments"] = _arguments(function["arguments"])
        out.append(m)
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return text  # written back as given


def tool_calls_text(tool_calls: Sequence[Any], fmt: ToolCallFormat | None = None) -> str:
    """OpenAI-shaped ``tool_calls`` as the text the model writes for them (Hermes blocks by default),
    each on a line of its own: how an answered row's tool-call turn reads as a response."""
    fmt = fmt or TOOL_FORMATS["hermes"]
    calls = []
    for call in tool_calls:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        calls.append(
            fmt.call_text(
                function.get("name", ""), _arguments(arguments) if isinstance(arguments, str) else arguments
            )
        )
    return "".join(f"\n{c}" for c in calls)


def _as_plain_chat(
    messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, fmt: ToolCallFormat
) -> list[dict[str, Any]]:
    """Tools, tool calls and tool results written into plain role/content messages."""
    out: list[dict[str, Any]] = []
    if tools:
        prompt = fmt.tools_prompt(tools)
        if messages[0]["role"] == "system":
            messages = [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": prompt}, *messages]
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                fmt.call_text(c.get("function", c)["name"], c.get("function", c).get("arguments", {}))
                for c in m["tool_calls"]
            ]
            content = "\n".join(([m["content"]] if m["content"] else []) + calls)
            out.append({"role": "assistant", "content": content})
        elif m["role"] == "tool":
            result = fmt.result_text(m["content"])
            if out and out[-1].get("_tool_results"):  # consecutive results share one user turn
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "_tool_results": True})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return [{"role": m["role"], "content": m["content"]} for m in out]


__all__ = [
    "HermesFormat",
    "tool_calls_text",
    "ParsedReply",
    "TOOL_FORMATS",
    "ToolCallFormat",
    "encode_chat",
    "render_chat",
    "template_takes_tools",
    "tool_format",
]
