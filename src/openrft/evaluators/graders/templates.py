"""Grader templates: ``{{ item.field }}`` and ``{{ sample.output_text }}`` rendered with Jinja2.

Templates run in Jinja2's sandboxed environment (no access to Python internals). Only ``{{ ... }}``
is special, as in OpenAI's graders: Jinja's statement and comment markers (``{% %}``, ``{# #}``)
are plain text here, so a prompt may hold a literal ``{#anchor}``. Two namespaces exist: ``item``
(the dataset row) and ``sample`` (the response being graded, with the fields of OpenAI's sample:
``output_text``, ``output_json`` when the response is valid JSON, ``output_tools``, the tool calls
it made, ``choices``, the response as one chat completion choice, and ``output_audio``, always
null here). A reference to something that is not there is an error, never an empty string:
:class:`MissingField` names the field. Values render as JSON text (objects, lists, ``true``,
``null``), strings and numbers as themselves.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from openrft.errors import EvaluatorError

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
THINK_RE = re.compile(r"<think>.*?</think>\s*", re.DOTALL)  # a reasoning model's thoughts


class MissingField(EvaluatorError):
    """A template refers to a field the item or the sample does not have."""

    def __init__(self, field: str, template: str):
        super().__init__(f"template {template!r} refers to {field!r}, which is not there")
        self.field, self.template = field, template


class _Undefined(StrictUndefined):
    """Undefined that remembers the missing name, so the error can name the field."""

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
        raise UndefinedError(f"\0{self._undefined_name}")

    __str__ = __iter__ = __len__ = __eq__ = __bool__ = __hash__ = _fail_with_undefined_error  # type: ignore[assignment]


def _finalize(value: Any) -> Any:
    if isinstance(value, dict | list | bool) or value is None:
        return json.dumps(value, ensure_ascii=False)
    return value


class _Environment(SandboxedEnvironment):
    """Dots into a JSON object read its fields (``item.items`` is the row's "items" field, never the
    dict method), as the JSON-path-like syntax of OpenAI's templates means. A path that goes on into
    a string holding a JSON object or list (a tool call's ``function.arguments``) reads inside it."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        obj = _json_inside(obj)
        if isinstance(obj, dict):
            return obj[attribute] if attribute in obj else self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        return super().getitem(_json_inside(obj) if not isinstance(argument, slice) else obj, argument)


def _json_inside(value: Any) -> Any:
    """The object or list a string holds as JSON (``'{"symbols": [...]}'``), else the value itself."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return _Environment(
        undefined=_Undefined,
        finalize=_finalize,
        autoescape=False,
        keep_trailing_newline=True,
        # Only {{ }} is a placeholder: markers no grader text contains stand for Jinja's statements
        # and comments, so "{%" and "{#" in a prompt or a reference stay as written.
        block_start_string="\0{%",
        block_end_string="%}\0",
        comment_start_string="\0{#",
        comment_end_string="#}\0",
    )


PLACEHOLDER_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
# item.reference-answer: a JSON-path-like name with a hyphen before a letter (Jinja would read a
# subtraction; `item.n-1` stays one), outside string literals
HYPHEN_PATH_RE = re.compile(r"\b((?:item|sample)(?:\.[A-Za-z_]\w*(?:-[A-Za-z_]\w*)*)+)")
STRING_RE = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def _json_paths(template: str) -> str:
    """``template`` with each ``item.a-b`` inside ``{{ }}`` written as ``item["a-b"]`` (OpenAI's paths
    take any field name; a hyphen between two names, without spaces, is part of the name)."""

    def path(match: re.Match[str]) -> str:
        head, *parts = match.group(1).split(".")
        return head + "".join(f"[{json.dumps(p)}]" if "-" in p else f".{p}" for p in parts)

    def placeholder(match: re.Match[str]) -> str:
        pieces = STRING_RE.split(match.group(1))  # odd pieces are string literals: kept as written
        return (
            "{{" + "".join(p if i % 2 else HYPHEN_PATH_RE.sub(path, p) for i, p in enumerate(pieces)) + "}}"
        )

    return PLACEHOLDER_RE.sub(placeholder, template) if "-" in template else template


@lru_cache(maxsize=512)
def _compile(template: str) -> Any:
    try:
        return _environment().from_string(_json_paths(template))
    except TemplateSyntaxError as exc:
        raise EvaluatorError(
            f"template {template!r} is not valid: {exc.message} (line {exc.lineno})"
        ) from None


def check_syntax(template: str) -> None:
    """Raise :class:`EvaluatorError` when ``template`` does not parse."""
    _compile(template)


def render(template: str, item: dict[str, Any], sample: Any) -> str:
    """``template`` with the ``item`` and ``sample`` namespaces filled in."""
    compiled = _compile(template)
    try:
        return compiled.render(item=item, sample=sample)
    except UndefinedError as exc:
        text = str(exc)
        name = text[1:] if text.startswith("\0") else text
        raise MissingField(name, template) from None
    except SecurityError as exc:
        raise EvaluatorError(f"template {template!r} is not allowed: {exc}") from None


def sample_of(text: str, tool_calls: list[Any] | None = None, finish_reason: str = "stop") -> dict[str, Any]:
    """The ``sample`` namespace for one response, shaped like OpenAI's.

    ``output_tools`` are the response's tool calls (read from ``<tool_call>`` blocks unless given);
    when there are any, ``output_text`` is the text around the blocks, as a chat completion's
    ``message.content`` is the text beside its ``tool_calls``. ``output_json`` is the response
    parsed as JSON when the whole text is one JSON object (else null): what OpenAI fills in for a
    structured-output response, whose root is always an object, so a bare ``72`` stays text.
    ``choices`` holds the response as one choice, its ``finish_reason`` "length" when it was cut at
    the token limit, else "tool_calls" with calls, else "stop". A reasoning model's
    ``<think>...</think>`` blocks are left out, as OpenAI's ``output_text`` holds the answer only.
    """
    text = THINK_RE.sub("", text)
    if tool_calls is None:
        tool_calls = tool_calls_in(text)
        if tool_calls:
            text = TOOL_CALL_RE.sub("", text).strip()
    try:
        output_json = json.loads(text)
    except (ValueError, TypeError):
        output_json = None
    if not isinstance(output_json, dict):
        output_json = None
    message = {"role": "assistant", "content": text, "tool_calls": tool_calls or None}
    finish = "length" if finish_reason == "length" else "tool_calls" if tool_calls else "stop"
    return {
        "output_text": text,
        "output_json": output_json,
        "output_tools": tool_calls,
        "output_audio": None,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def tool_calls_in(text: str) -> list[dict[str, Any]]:
    """Tool calls written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the chat
    templates of the open models openrft trains), in the shape of a chat completion's
    ``message.tool_calls``: ``id``, ``type`` and ``function`` with ``name`` and ``arguments`` (a JSON
    string, non-ASCII characters kept as written)."""
    calls = []
    for body in TOOL_CALL_RE.findall(text):
        try:
            call = json.loads(body)
        except ValueError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            arguments = call.get("arguments", {})
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            calls.append(
                {
                    "id": f"call_{len(calls)}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": arguments},
                }
            )
    return calls


SAMPLE_FIELDS = tuple(sample_of(""))  # the fields every sample has: output_text, output_json, ...


class UnknownSampleField(EvaluatorError):
    """A template reads a field of ``sample`` that no sample has (a misspelt ``sample.output_txt``)."""

    def __init__(self, field: str):
        super().__init__(f"sample has no field {field!r} (its fields: {', '.join(SAMPLE_FIELDS)})")
        self.field = field


class AnySample:
    """A stand-in for ``sample`` when checking templates before any response exists: a sample's own
    fields (:data:`SAMPLE_FIELDS`) are checked, and everything inside them is there (the response's
    content is only known once it is sampled)."""

    def __init__(self, top: bool = True):
        self._top = top

    def _field(self, name: Any) -> AnySample:
        if self._top and name not in SAMPLE_FIELDS:
            raise UnknownSampleField(str(name))
        return AnySample(top=False)

    def __getattr__(self, name: str) -> AnySample:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._field(name)

    def __getitem__(self, key: Any) -> AnySample:
        return self._field(key)

    def __str__(self) -> str:
        return ""

    def __iter__(self):
        return iter(())


__all__ = [
    "AnySample", "MissingField", "SAMPLE_FIELDS", "UnknownSampleField", "check_syntax", "render", "sample_of",
    "tool_calls_in",
]  # fmt: skip
