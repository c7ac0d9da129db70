"""Tools for agent rollouts, and the built-in agent that lets the policy call them.

A :class:`Toolset` offers tools: ``schemas()`` in the OpenAI ``tools`` format, ``await call(name,
arguments)`` returning the result as text, and ``async with`` around a run for tools that need a
session. Every failure of a call (unknown name, arguments that do not fit, the tool's own
exception) is one :class:`ToolError` whose message can go back to the model as it is.

:func:`python_tools` offers the public functions defined in a ``.py`` file; their schemas come
from the signature (annotations -> JSON schema as pydantic writes it, no default -> required) and the docstring (first
paragraph, and the parameters of a Google, NumPy or reST docstring); :mod:`openrft.rollout.mcp_client` offers an MCP
server's.
:func:`combine` joins toolsets whose names do not clash.

:func:`tool_loop` is the agent for users without agent code: ask the policy, run its tool calls,
feed the results back, until a reply calls nothing or ``max_turns`` replies were made. Failed
and unreadable calls become messages the model can react to, and count as ``tool_errors``.
:func:`builtin_agent` wraps it as ``agent(row, client)`` with a session per run (an MCP session
belongs to the task that opened it, so concurrent runs cannot share one).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import importlib.util
import inspect
import json
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError
from openrft.paths import user_module_spec
from openrft.rollout.agents import POLICY_MODEL, count

MALFORMED_CALL_HINT = (
    "Your tool call could not be parsed. Write each call as valid JSON inside tags, exactly like:\n"
    '<tool_call>\n{"name": "<function-name>", "arguments": {"<parameter>": <value>}}\n</tool_call>'
)


class ToolError(Exception):
    """A tool call failed; the message says why, in words meant for the model and the user."""


class Toolset:
    """Tools a model can call. Subclasses provide :meth:`schemas` and :meth:`call`."""

    source = "a toolset"  # where the tools come from, for messages ("--tools tools.py")

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI ``tools`` format (``{"type": "function", "function": ...}``)."""
        raise NotImplementedError

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run tool ``name`` with ``arguments`` and return its result as text, or raise ToolError."""
        raise NotImplementedError

    def names(self) -> list[str]:
        return [s["function"]["name"] for s in self.schemas()]

    def clone(self) -> Toolset:
        """A copy with no open session, safe to enter alongside this one (stateless sets: itself)."""
        return self

    async def __aenter__(self) -> Toolset:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


# ----------------------------------------------------------------------------- Python functions


def _type_schema(annotation: Any) -> dict[str, Any]:
    """JSON schema of a type annotation, as pydantic writes it (``{}``: any value, for what it cannot
    describe); models' definitions stay under ``$defs`` for :func:`function_schema` to hoist."""
    from pydantic import TypeAdapter

    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    try:
        return TypeAdapter(annotation).json_schema()
    except Exception:  # a class pydantic has no schema for: described as any value, called as given
        return {}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}): the first paragraph, and the documented parameters.

    Google (``Args:``), NumPy (``Parameters`` and dashes) and reST (``:param a:``) styles are read by
    ``docstring_parser``; whitespace inside each text is folded to single spaces.
    """
    import docstring_parser

    parsed = docstring_parser.parse(doc)
    head = [parsed.short_description or ""]
    if parsed.long_description and not parsed.blank_after_short_description:
        head.append(parsed.long_description.split("\n\n")[0])  # the first paragraph runs on
    params = {p.arg_name.lstrip("*"): " ".join((p.description or "").split()) for p in parsed.params}
    return " ".join(" ".join(head).split()), params


def _hoist_definitions(prop: dict[str, Any], definitions: dict[str, Any], param: str) -> dict[str, Any]:
    """``prop`` without its ``$defs``, which join ``definitions``; a name another parameter already gave a
    different definition is renamed (``Name_param``) with the refs to it."""
    own = prop.pop("$defs", {})
    clashes = {n: f"{n}_{param}" for n, d in own.items() if n in definitions and definitions[n] != d}
    if clashes:
        text = json.dumps({"prop": prop, "defs": own})
        for old, new in clashes.items():
            text = text.replace(json.dumps(f"#/$defs/{old}"), json.dumps(f"#/$defs/{new}"))
        moved = json.loads(text)
        prop, own = moved["prop"], {clashes.get(n, n): d for n, d in moved["defs"].items()}
    definitions.update(own)
    return prop


def function_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool schema of a Python function (see the module docstring)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved: describe that parameter as "any"
        hints = {}
    description, documented = _parse_docstring(inspect.getdoc(fn) or "")
    properties: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    required = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        prop = _type_schema(hints.get(name, param.annotation))
        # refs are "#/$defs/...", read from the parameters' root: the definitions go there
        prop = _hoist_definitions(prop, definitions, name)
        if name in documented:
            prop = {**prop, "description": documented[name]}
        if param.default is param.empty:
            required.append(name)
        properties[name] = prop
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    if definitions:
        parameters["$defs"] = definitions
    function = {"name": fn.__name__, "description": description or fn.__name__, "parameters": parameters}
    return {"type": "function", "function": function}


@dataclass
class _PythonTool:
    fn: Callable[..., Any]
    signature: inspect.Signature
    adapters: dict[str, Any]  # parameter -> pydantic TypeAdapter of its annotation
    schema: dict[str, Any]


def _python_tool(fn: Callable[..., Any]) -> _PythonTool:
    from pydantic import TypeAdapter

    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    signature, adapters = inspect.signature(fn), {}
    for name, param in signature.parameters.items():
        if name in hints and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            with contextlib.suppress(Exception):  # a type pydantic cannot check is passed on as given
                adapters[name] = TypeAdapter(hints[name])
    return _PythonTool(fn, signature, adapters, function_schema(fn))


class PythonToolset(Toolset):
    """The public functions of one Python file (:func:`python_tools`)."""

    def __init__(self, functions: dict[str, Callable[..., Any]]):
        self.tools = {name: _python_tool(fn) for name, fn in functions.items()}

    def schemas(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(t.schema) for t in self.tools.values()]  # callers may edit their copy

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool '{name}' (available: {', '.join(self.tools)})")
        kwargs = _checked_arguments(tool, name, arguments)
        try:
            if inspect.iscoroutinefunction(tool.fn):
                result = await tool.fn(**kwargs)
            else:
                result = await _in_daemon_thread(tool.fn, kwargs)
        except Exception as exc:
            raise ToolError(f"{name} raised {type(exc).__name__}: {exc}") from exc
        return _as_text(result)


def _in_daemon_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    """``fn(**kwargs)`` in a thread of its own that nothing waits for once the caller gives up.

    (``asyncio.to_thread`` would do, but a tool that never returns would then hold up the
    shutdown of the event loop, and with it the whole rollout, after its call timed out.)
    """
    loop, context = asyncio.get_running_loop(), contextvars.copy_context()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(value)

    def work() -> None:
        try:
            value, error = context.run(fn, **kwargs), None
        except Exception as exc:
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=f"tool-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return future


def _checked_arguments(tool: _PythonTool, name: str, arguments: Any) -> dict[str, Any]:
    """The arguments bound to the tool's signature and converted to its annotated types."""
    from pydantic import ValidationError

    if not isinstance(arguments, dict):
        raise ToolError(f"bad arguments for {name}: expected a JSON object, got {type(arguments).__name__}")
    try:
        bound = tool.signature.bind(**arguments)
    except TypeError as exc:
        raise ToolError(f"bad arguments for {name}: {exc}") from None
    out = dict(bound.arguments)
    for key, value in bound.arguments.items():
        if key not in tool.adapters:
            continue
        try:
            out[key] = tool.adapters[key].validate_python(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise ToolError(f"bad arguments for {name}: '{key}': {problem} (got {value!r})") from None
    return out


def python_tools(path: str | Path) -> PythonToolset:
    """The public functions defined in the Python file ``path``, as tools; ConfigError naming --tools."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--tools: no such file: {file}")
    module_name = f"openrft_tools_{abs(hash(str(file.resolve())))}"
    spec = user_module_spec(module_name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--tools: cannot import {file} (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"--tools: importing {file} failed: {type(exc).__name__}: {exc}") from None
    functions = {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module_name
    }
    if not functions:
        raise ConfigError(f"--tools: {file} defines no public functions to offer as tools")
    toolset = PythonToolset(functions)
    toolset.source = f"--tools {file}"
    return toolset


# ----------------------------------------------------------------------------- MCP servers


# ----------------------------------------------------------------------------- several toolsets


class CombinedToolset(Toolset):
    """Several toolsets offered as one; each call goes to the set that owns the name."""

    def __init__(self, parts: Sequence[Toolset]):
        self.parts = list(parts)
        self._stack: contextlib.AsyncExitStack | None = None

    def clone(self) -> CombinedToolset:
        return CombinedToolset([p.clone() for p in self.parts])

    def schemas(self) -> list[dict[str, Any]]:
        return [s for part in self.parts for s in part.schemas()]

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        owner = next((p for p in self.parts if name in p.names()), None)
        if owner is None:
            raise ToolError(f"unknown tool '{name}' (available: {', '.join(self.names())})")
        return await owner.call(name, arguments)

    async def __aenter__(self) -> CombinedToolset:
        async with contextlib.AsyncExitStack() as stack:
            for part in self.parts:
                await stack.enter_async_context(part)
            _refuse_duplicates(self.parts)  # MCP names are known only now
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


def _refuse_duplicates(parts: Sequence[Toolset]) -> None:
    seen: dict[str, str] = {}  # tool name -> where it comes from
    for part in parts:
        try:
            names = part.names()
        except ToolError:  # an MCP server not connected yet: its names are checked on entry
            continue
        source = part.source
        for name in names:
            if name in seen:
                flag = "--mcp-server" if "--mcp-server" in source + seen[name] else "--tools"
                raise ConfigError(f"{flag}: the tool name '{name}' is offered twice, by {seen[name]} and by "
                                  f"{source}; tool names must be unique")  # fmt: skip
            seen[name] = source


def combine(toolsets: Sequence[Toolset]) -> Toolset:
    """One toolset of several; ConfigError when two share a tool name (MCP names: checked on entry)."""
    parts = list(toolsets)
    if not parts:
        raise ConfigError("--tools: no toolsets given")
    _refuse_duplicates(parts)
    return parts[0] if len(parts) == 1 else CombinedToolset(parts)


# ----------------------------------------------------------------------------- the built-in agent


async def tool_loop(
    row: Any,
    client: Any,
    *,
    tools: Toolset,
    max_turns: int = 8,
    tool_timeout: float = 30.0,
    model: str = POLICY_MODEL,
) -> Any:
    """Let the model call ``tools`` for up to ``max_turns`` replies; the row with the conversation.

    The loop stops at a reply with no tool call, or after ``max_turns`` model calls (the tool
    calls of that last reply are then left unrun: the model would never see their results).
    """
    messages = [
        m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m) for m in row.messages
    ]
    schemas = list(row.tools or []) or tools.schemas()
    extra = {"tools": schemas} if schemas else {}
    for turn in range(max_turns):
        response = await client.chat.completions.create(model=model, messages=messages, **extra)
        reply = _assistant_message(response.choices[0].message)
        messages.append(reply)
        calls = reply.get("tool_calls") or []
        malformed = not calls and "<tool_call>" in (reply.get("content") or "")
        if malformed:
            count("tool_errors")
        if (not calls and not malformed) or turn == max_turns - 1:
            break
        if malformed:
            messages.append({"role": "user", "content": MALFORMED_CALL_HINT})
        for call in calls:
            messages.append(await _run_call(call, tools, tool_timeout))
    return _with_messages(row, messages)


def _assistant_message(message: Any) -> dict[str, Any]:
    """A reply as a plain OpenAI assistant message (role, content, tool_calls when there are any)."""
    content = message.content
    out: dict[str, Any] = {"role": "assistant", "content": content}
    calls = [c.model_dump(exclude_none=True) if hasattr(c, "model_dump") else dict(c)
             for c in (message.tool_calls or [])]  # fmt: skip
    if calls:
        out["tool_calls"] = calls
    return out


async def _run_call(call: dict[str, Any], tools: Toolset, timeout: float) -> dict[str, Any]:
    """One tool call run into a ``tool`` message; failures become an ``error: ...`` result."""
    function = call.get("function") or {}
    name = function.get("name") or ""
    result = {"role": "tool", "tool_call_id": call.get("id", ""), "name": name}
    try:
        if call.get("type", "function") != "function" or not name:
            raise ToolError(f"unsupported tool call of type '{call.get('type')}'; call a function by name")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError as exc:
            raise ToolError(f"the arguments of {name} are not valid JSON ({exc})") from None
        if not isinstance(arguments, dict):
            raise ToolError(f"the arguments of {name} must be a JSON object, not {type(arguments).__name__}")
        content = await asyncio.wait_for(tools.call(name, arguments), timeout)
    except TimeoutError:
        count("tool_errors")
        content = f"error: {name} did not finish within {timeout:g} s"
    except ToolError as exc:
        count("tool_errors")
        content = f"error: {exc}"
    return {**result, "content": content}


def _with_messages(row: Any, messages: list[dict[str, Any]]) -> Any:
    """The row with its messages replaced (assigning plain dicts would skip the validation)."""
    from openrft.evaluators.protocol import Message

    row.messages = [Message.model_validate(m) for m in messages]
    return row


def builtin_agent(tools: Toolset, max_turns: int = 8, tool_timeout: float = 30.0) -> Callable[..., Any]:
    """``async def agent(row, client)`` running :func:`tool_loop` in a session of its own per run."""

    async def agent(row: Any, client: Any) -> Any:
        async with tools.clone() as live:
            return await tool_loop(row, client, tools=live, max_turns=max_turns, tool_timeout=tool_timeout)

    return agent


__all__ = [
    "CombinedToolset",
    "PythonToolset",
    "ToolError",
    "Toolset",
    "builtin_agent",
    "combine",
    "function_schema",
    "python_tools",
    "tool_loop",
]
