"""The tools of an MCP server (``--mcp-server``), through the official ``mcp`` SDK.

:func:`mcp_tools` connects over streamable HTTP for an ``http(s)://`` URL, else over stdio to the
command given. A stdio server gets the job's environment (API keys, ``PYTHONPATH``), and on Linux it
dies with the thread that started it: with the conversation that owns it, or with the job's process
however that ends (a failure, a second Ctrl-C), so no server outlives a job and holds its terminal.
A result reaches the model as text: text blocks and embedded text resources as they are, structured
content as JSON, images, audio and links as a one-line note of what was there. A server that fails
during a call (it crashed, its connection closed, over stdio or HTTP) fails that call and the ones
after it only: the model is told, and the conversation goes on.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import copy
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from openrft.errors import ConfigError
from openrft.rollout.constrained import TOOL_NAME_RE
from openrft.rollout.tools import PythonToolset, ToolError, Toolset, _as_text, combine, python_tools

MCP_STARTUP_TIMEOUT = 60.0  # seconds for an MCP server to start and list its tools
# Run before the server's own command: a SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG,
# kept across exec), then exec. Plain Python (-S: no site imports) so it adds a few milliseconds.
_GUARD = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() == 1:\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


class McpToolset(Toolset):
    """The tools of one MCP server (:func:`mcp_tools`); usable only inside ``async with``.

    The connection lives in a task of its own (:meth:`_hold`): a transport that fails (an HTTP server
    gone) cancels the task that opened it, as anyio's task groups do, so it must not be the
    conversation's. A call waits for its answer or for that task to end, whichever comes first.
    """

    def __init__(self, server: str):
        self.server = server
        self.source = f"--mcp-server '{server}'"
        self._holder: asyncio.Task | None = None
        self._closing: asyncio.Event | None = None
        self._session: Any = None
        self._schemas: list[dict[str, Any]] = []
        self._lost = ""  # why the connection ended, once it has

    def clone(self) -> McpToolset:
        return McpToolset(self.server)

    def schemas(self) -> list[dict[str, Any]]:
        if self._session is None:
            raise ToolError(f"the MCP server '{self.server}' is not connected (use 'async with')")
        return copy.deepcopy(self._schemas)

    async def __aenter__(self) -> McpToolset:
        if self._holder is not None:
            raise ToolError(f"the MCP session to '{self.server}' is already open (use clone())")
        self._closing, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
        self._holder = asyncio.create_task(self._hold(ready))
        try:
            self._session, self._schemas = await ready
        except Exception as exc:
            await self.__aexit__()
            inner = _innermost(exc)
            why = (
                f"no answer in {MCP_STARTUP_TIMEOUT:g} s"
                if isinstance(inner, TimeoutError)
                else str(inner)
                if isinstance(inner, _Refused)
                else _describe(exc)
            )
            if self.server.startswith("http") and ("405" in why or self.server.rstrip("/").endswith("/sse")):
                why += " (only streamable HTTP is spoken over a URL, often .../mcp; SSE-only servers are not)"
            raise ConfigError(f"--mcp-server: cannot use the MCP server '{self.server}': {why}") from None
        return self

    async def _hold(self, ready: asyncio.Future) -> None:
        """Open the connection, hand over the session and its tools, keep it open until closed."""
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(_transport(self.server))
                session = await stack.enter_async_context(ClientSession(read, write))
                async with asyncio.timeout(MCP_STARTUP_TIMEOUT):
                    await session.initialize()
                    schemas = await _list_tool_schemas(session)
                _check_names(schemas)
                ready.set_result((session, schemas))
                assert self._closing is not None
                await self._closing.wait()
            self._lost = "the MCP session is closed"
        except BaseException as exc:  # noqa: BLE001 - the connection's end, whatever it was: told to callers
            self._lost = _describe(exc) if not isinstance(_innermost(exc), asyncio.CancelledError) else (
                "ClosedResourceError: the server closed the connection")  # fmt: skip
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError(self._lost))
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise

    async def __aexit__(self, *exc_info: Any) -> None:
        holder, self._holder, self._session = self._holder, None, None
        if holder is not None and self._closing is not None:
            self._closing.set()
            with contextlib.suppress(BaseException):  # a server that died already has nothing to close
                await holder

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        known = [s["function"]["name"] for s in self.schemas()]
        if name not in known:
            raise ToolError(f"unknown tool '{name}' (available: {', '.join(known)})")
        holder = self._holder
        if holder is None or holder.done():
            raise ToolError(f"{name} failed: {self._lost or 'the server closed the connection'}")
        request = asyncio.ensure_future(self._session.call_tool(name, arguments))
        try:
            await asyncio.wait({request, holder}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not request.done():
                request.cancel()  # the caller's timeout, or the connection gone
        if not request.done() or request.cancelled():
            raise ToolError(f"{name} failed: {self._lost or 'the server closed the connection'}")
        try:
            result = request.result()
        except Exception as exc:  # McpError, and a server gone: a closed stream, an HTTP failure
            raise ToolError(f"{name} failed: {_describe(exc)}") from None
        text = "\n".join(filter(None, (_block_text(block) for block in result.content)))
        if not text and result.structuredContent is not None:
            text = _as_text(result.structuredContent)
        if result.isError:
            raise ToolError(f"{name} failed: {text or 'the server reported an error'}")
        return text


def _block_text(block: Any) -> str:
    """One content block as text: text as it is; what a text model cannot read, named in one line."""
    kind = getattr(block, "type", "")
    if kind == "text":
        return block.text
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        return text if text is not None else f"[resource {resource.uri} ({resource.mimeType or 'binary'})]"
    if kind in ("image", "audio"):
        size = len(base64.b64decode(block.data))
        return f"[{kind} ({block.mimeType}, {size} bytes): not shown to this text model]"
    if kind == "resource_link":
        return f"[resource link {block.uri}" + (f": {block.description}]" if block.description else "]")
    return f"[{kind or 'unknown'} content]"


@contextlib.asynccontextmanager
async def _transport(server: str) -> Any:
    """(read, write) streams to the server: streamable HTTP for a URL, else a stdio subprocess."""
    if server.startswith(("http://", "https://")):
        from mcp.client.streamable_http import streamable_http_client  # streamablehttp_client's new name

        async with streamable_http_client(server) as (read, write, _):
            yield read, write
        return
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    argv = shlex.split(server)
    guarded = ["-S", "-c", _GUARD, *argv] if sys.platform.startswith("linux") else None
    params = StdioServerParameters(
        command=sys.executable if guarded else argv[0], args=guarded or argv[1:], env=dict(os.environ)
    )
    async with stdio_client(params, errlog=_errlog()) as (read, write):
        yield read, write


def _errlog() -> Any:
    """Where a stdio server's stderr goes: ours, or nowhere when ours is no file (a captured stream)."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return open(os.devnull, "w")  # noqa: SIM115 - lives as long as the server


async def _list_tool_schemas(session: Any) -> list[dict[str, Any]]:
    from mcp.types import PaginatedRequestParams

    schemas, cursor = [], None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        for tool in page.tools:
            function = {"name": tool.name, "description": tool.description or tool.name,
                        "parameters": dict(tool.inputSchema or {"type": "object", "properties": {}})}  # fmt: skip
            schemas.append({"type": "function", "function": function})
        cursor = page.nextCursor
        if not cursor:
            return schemas


class _Refused(Exception):
    """A server that answers but cannot be used as it is (its message is the whole reason)."""


def _check_names(schemas: list[dict[str, Any]]) -> None:
    """Refuse a tool whose name no OpenAI-compatible server takes (the policy server refuses every
    request that offers it): MCP allows dots and slashes, OpenAI's function names do not."""
    for schema in schemas:
        name = schema["function"]["name"]
        if not TOOL_NAME_RE.fullmatch(name):
            raise _Refused(f"its tool {name!r} cannot be offered to the model: a function name is 1 to 64 "
                             "letters, digits, underscores or dashes (rename it in the server)")  # fmt: skip


def _innermost(exc: BaseException) -> BaseException:
    """The first exception inside the exception groups anyio raises."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """One line for an exception, looking inside the exception groups anyio raises."""
    exc = _innermost(exc)
    details = str(exc).strip() or (
        "the server closed the connection" if "Closed" in type(exc).__name__ else ""
    )
    return f"{type(exc).__name__}: {details or 'no details'}".splitlines()[0]


def mcp_tools(server: str) -> McpToolset:
    """The tools of the MCP server at an ``http(s)://`` URL, or started by a stdio command line."""
    try:
        argv = shlex.split(server or "")
        if not argv:
            raise ValueError("it is empty")
    except ValueError as exc:
        raise ConfigError(
            f"--mcp-server: '{server}' is not an MCP server URL or command line: {exc}"
        ) from None
    if not server.strip().startswith(("http://", "https://")) and shutil.which(argv[0]) is None:
        raise ConfigError(
            f"--mcp-server: the command '{argv[0]}' is not found (not a program on PATH, nor an executable file)",
            hint="give the MCP server's command line as you would type it, or its http(s):// URL",
        )
    return McpToolset(server.strip())


def check_server(servers: str | Sequence[str], beside: Toolset | None = None) -> list[str]:
    """Start (or reach) each MCP server once and list the tools, as a job's first conversation would:
    a ConfigError naming ``--mcp-server`` when one cannot start, or when two tools share a name (between
    the servers, or with ``beside``: the ``--tools`` file). Runs on a thread of its own, so it works
    inside a running event loop too."""
    servers = [servers] if isinstance(servers, str) else list(servers)

    async def names() -> list[str]:
        parts = [*(mcp_tools(server) for server in servers), *([beside] if beside is not None else [])]
        async with combine(parts) as tools:
            return tools.names()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mcp-check") as pool:
        return pool.submit(asyncio.run, names()).result()


def load_tools(specs: str | Sequence[str]) -> Toolset:
    """Toolsets from specs: a ``.py`` file path, an ``http(s)://`` MCP URL, or an MCP stdio command."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    is_file = [s.strip().endswith(".py") and len(s.split()) == 1 and "://" not in s for s in specs]
    parts: list[PythonToolset | McpToolset] = [
        python_tools(s.strip()) if f else mcp_tools(s) for s, f in zip(specs, is_file, strict=True)
    ]
    return combine(parts)


__all__ = ["MCP_STARTUP_TIMEOUT", "McpToolset", "check_server", "load_tools", "mcp_tools"]
