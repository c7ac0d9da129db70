"""Toolsets (Python files, MCP servers) and the built-in tool-calling agent, driven by a scripted client."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from openrft.errors import ConfigError
from openrft.evaluators.protocol import EvaluationRow, Message
from openrft.rollout import agents
from openrft.rollout.mcp_client import load_tools, mcp_tools
from openrft.rollout.tools import (
    ToolError,
    Toolset,
    builtin_agent,
    combine,
    function_schema,
    python_tools,
    tool_loop,
)

MCP_SERVER = Path(__file__).parent.parent / "fixtures" / "mcp_calculator.py"

SAMPLE_TOOLS = '''
    import asyncio
    import time
    from os.path import join  # imported: not a tool
    from typing import Literal, Optional


    def add(a: int, b: int = 2) -> int:
        """Add two numbers.

        Uses plain integer addition.

        Args:
            a: The first number.
            b (int): The second number,
                two by default.

        Returns:
            The sum.
        """
        return a + b


    async def describe(name: str, unit: Literal["cm", "in"], tags: list[str],
                       extra: Optional[dict] = None, ratio: float | None = None, flag: bool = False):
        """Describe something."""
        await asyncio.sleep(0)
        return {"name": name, "unit": unit, "tags": tags, "flag": flag}


    def fail(message: str) -> str:
        """Always raises."""
        raise ValueError(message)


    def slow(seconds: float) -> str:
        """Sleeps."""
        time.sleep(seconds)
        return "done"


    def _helper():
        return 1
'''


def write_tools(tmp_path: Path, source: str = SAMPLE_TOOLS, name: str = "my_tools.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# ----------------------------------------------------------------------------- Python toolsets


def test_schemas_from_signatures_and_docstrings(tmp_path):
    tools = python_tools(write_tools(tmp_path))
    by_name = {s["function"]["name"]: s for s in tools.schemas()}
    assert list(by_name) == ["add", "describe", "fail", "slow"]  # no imports, no _private
    assert all(s["type"] == "function" for s in by_name.values())
    add = by_name["add"]["function"]
    assert add["description"] == "Add two numbers."
    assert add["parameters"] == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "The first number."},
            "b": {"type": "integer", "description": "The second number, two by default."},
        },
        "required": ["a"],
    }
    describe = by_name["describe"]["function"]["parameters"]
    assert describe["required"] == ["name", "unit", "tags"]
    assert describe["properties"] == {
        "name": {"type": "string"},
        "unit": {"type": "string", "enum": ["cm", "in"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {"anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}]},
        "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},  # pydantic's schemas: None is allowed
        "flag": {"type": "boolean"},
    }


class Point(BaseModel):
    x: int
    y: int = 0


def move(to: Point, path: list[Point], note: object = None) -> str:
    """Move."""
    return ""


def _other_point():
    class Point(BaseModel):  # the same name, another model
        label: str

    return Point


OtherPoint = _other_point()


def mark(here: list[Point], there: list[OtherPoint]) -> str:
    """Mark."""
    return ""


def test_a_pydantic_model_parameter_keeps_its_definitions_at_the_parameters_root():
    from openrft.rollout.tools import function_schema

    parameters = function_schema(move)["function"]["parameters"]
    assert parameters["properties"]["to"]["required"] == ["x"]  # a model at the top: inline
    assert parameters["properties"]["path"] == {"type": "array", "items": {"$ref": "#/$defs/Point"}}
    assert parameters["$defs"]["Point"]["required"] == ["x"] and parameters["required"] == ["to", "path"]
    assert parameters["properties"]["note"] == {}  # what pydantic cannot describe: any value
    two = function_schema(mark)["function"]["parameters"]  # two models named Point: both kept
    assert two["properties"]["there"]["items"] == {"$ref": "#/$defs/Point_there"}
    assert two["$defs"]["Point"]["required"] == ["x"] and two["$defs"]["Point_there"]["required"] == ["label"]


def test_calls_sync_and_async_tools(tmp_path):
    tools = python_tools(write_tools(tmp_path))

    async def calls():
        async with tools:
            added = await tools.call("add", {"a": 3})
            return added, await tools.call("describe", {"name": "x", "unit": "cm", "tags": ["a"]})

    added, described = run(calls())
    assert added == "5"
    assert json.loads(described) == {"name": "x", "unit": "cm", "tags": ["a"], "flag": False}


@pytest.mark.parametrize(
    "name, arguments, message",
    [
        ("nope", {}, "unknown tool 'nope'"),
        ("add", {}, "bad arguments for add"),
        ("add", {"a": 1, "c": 2}, "bad arguments for add"),
        ("add", {"a": "seven"}, "bad arguments for add: 'a'"),
        ("describe", {"name": "x", "unit": "km", "tags": []}, "bad arguments for describe: 'unit'"),
        ("fail", {"message": "boom"}, "fail raised ValueError: boom"),
    ],
)
def test_call_errors_are_tool_errors(tmp_path, name, arguments, message):
    tools = python_tools(write_tools(tmp_path))
    with pytest.raises(ToolError, match=message):
        run(tools.call(name, arguments))


def test_config_errors_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--tools: no such file"):
        python_tools(str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="--tools: importing .* failed: ZeroDivisionError"):
        python_tools(write_tools(tmp_path, "x = 1 / 0\n", "broken.py"))
    with pytest.raises(ConfigError, match="--tools: .* defines no public functions"):
        python_tools(write_tools(tmp_path, "from os.path import join\ndef _private(): pass\n", "none.py"))
    with pytest.raises(ConfigError, match="--mcp-server"):
        mcp_tools("  ")


def test_combine_refuses_duplicate_names(tmp_path):
    first = python_tools(write_tools(tmp_path))
    second = python_tools(write_tools(tmp_path, "def add(a: int) -> int:\n    return a\n", "other.py"))
    third = python_tools(write_tools(tmp_path, "def square(a: int) -> int:\n    return a * a\n", "sq.py"))
    with pytest.raises(ConfigError, match="'add'"):
        combine([first, second])
    both = combine([first, third])
    assert both.names() == ["add", "describe", "fail", "slow", "square"]
    assert run(both.call("square", {"a": 4})) == "16"
    assert load_tools([write_tools(tmp_path), str(tmp_path / "sq.py")]).names()[-1] == "square"


# ----------------------------------------------------------------------------- the tool loop


def completion(content: str | None = None, calls: list[tuple[str, str]] = ()) -> ChatCompletion:
    """A chat completion whose message has ``content`` and tool ``calls`` (name, JSON arguments)."""
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
    return ChatCompletion.model_validate(
        {"id": "x", "object": "chat.completion", "created": 0, "model": "policy", "choices": [choice]}
    )


class FakeClient:
    """Stands in for ``openai.AsyncOpenAI``: replies from a script, records every request."""

    def __init__(self, replies: list[ChatCompletion], repeat_last: bool = False):
        self.replies, self.repeat_last, self.requests = list(replies), repeat_last, []
        self.chat = self.completions = self  # client.chat.completions.create

    async def create(self, **request: Any) -> ChatCompletion:
        self.requests.append(json.loads(json.dumps(request)))
        if self.repeat_last and len(self.replies) == 1:
            return self.replies[0]
        return self.replies.pop(0)


def question_row(**fields: Any) -> EvaluationRow:
    return EvaluationRow(
        messages=[Message(role="user", content="What is 3 + 4?")], ground_truth="7", **fields
    )


def as_dicts(row: EvaluationRow) -> list[dict[str, Any]]:
    assert all(isinstance(m, Message) for m in row.messages)
    return [m.model_dump(exclude_none=True) for m in row.messages]


def loop_with_counters(row, client, tools, **kwargs) -> tuple[EvaluationRow, dict[str, float]]:
    """tool_loop inside a fake rollout, so ``count(...)`` lands somewhere we can read."""
    counters: dict[str, float] = {}

    class Recorder:
        def count(self, rollout_id: str, name: str, amount: float) -> None:
            counters[name] = counters.get(name, 0.0) + amount

    async def go():
        agents.CURRENT_ROLLOUT.set((Recorder(), "r#0"))
        async with tools:
            return await tool_loop(row, client, tools=tools, **kwargs)

    return run(go()), counters


def test_one_tool_call_then_an_answer(tmp_path):
    tools = python_tools(write_tools(tmp_path))
    client = FakeClient([completion(None, [("add", '{"a": 3, "b": 4}')]), completion("It is 7.")])
    row, counters = loop_with_counters(question_row(), client, tools)
    assert as_dicts(row) == [
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "tool_calls": [  # content None is left out by exclude_none
            {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "name": "add", "content": "7"},
        {"role": "assistant", "content": "It is 7."},
    ]  # fmt: skip
    assert row.ground_truth == "7" and counters == {}
    first, second = client.requests
    assert first["model"] == "policy" and [t["function"]["name"] for t in first["tools"]][0] == "add"
    assert first["messages"] == [{"role": "user", "content": "What is 3 + 4?"}]
    call = {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}
    assert second["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_0", "name": "add", "content": "7"}


def test_row_tools_take_precedence_over_the_toolset(tmp_path):
    tools = python_tools(write_tools(tmp_path))
    only_add = [s for s in tools.schemas() if s["function"]["name"] == "add"]
    client = FakeClient([completion("7")])
    loop_with_counters(question_row(tools=only_add), client, tools)
    assert client.requests[0]["tools"] == only_add


def test_malformed_call_gets_a_hint_and_counts(tmp_path):
    tools = python_tools(write_tools(tmp_path))
    broken = '<tool_call>\n{"name": "add", "arguments": {"a": 3,}\n</tool_call>'
    client = FakeClient([completion(broken), completion("7")])
    row, counters = loop_with_counters(question_row(), client, tools)
    messages = as_dicts(row)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == broken
    assert "could not be parsed" in messages[2]["content"] and "<tool_call>" in messages[2]["content"]
    assert counters == {"tool_errors": 1.0}


@pytest.mark.parametrize(
    "call, expected",
    [
        (("fail", '{"message": "boom"}'), "error: fail raised ValueError: boom"),
        (("slow", '{"seconds": 30}'), "error: slow did not finish within 0.2 s"),
        (("add", '{"a": 3'), "error: the arguments of add are not valid JSON"),
        (("nope", "{}"), "error: unknown tool 'nope'"),
        (("add", '{"b": 1}'), "error: bad arguments for add"),
    ],
)
def test_failed_calls_become_error_results(tmp_path, call, expected):
    tools = python_tools(write_tools(tmp_path))
    client = FakeClient([completion(None, [call]), completion("sorry")])
    row, counters = loop_with_counters(question_row(), client, tools, tool_timeout=0.2)
    tool_message = as_dicts(row)[2]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith(expected)
    assert as_dicts(row)[-1] == {"role": "assistant", "content": "sorry"}
    assert counters == {"tool_errors": 1.0}


def test_stops_after_max_turns(tmp_path):
    tools = python_tools(write_tools(tmp_path))
    client = FakeClient([completion(None, [("add", '{"a": 1}')])], repeat_last=True)
    row, counters = loop_with_counters(question_row(), client, tools, max_turns=3)
    assert len(client.requests) == 3
    roles = [m["role"] for m in as_dicts(row)]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert counters == {}


@pytest.mark.parametrize(
    "doc",
    [
        """Convert a length.

        Args:
            value: How long it is,
                in the unit given.
            *args: Ignored.
        """,
        """Convert a length.

        Parameters
        ----------
        value : float
            How long it is, in the unit given.
        """,
        """Convert a length.

        :param value: How long it is, in the unit given.
        :returns: The length in metres.
        """,
    ],
    ids=["google", "numpy", "rest"],
)
def test_tool_descriptions_come_from_docstrings_in_any_common_style(doc):
    def convert(value: float, unit: str = "cm") -> float:
        return value

    convert.__doc__ = doc
    function = function_schema(convert)["function"]
    assert function["description"] == "Convert a length."
    assert function["parameters"]["properties"]["value"] == {
        "type": "number", "description": "How long it is, in the unit given."}  # fmt: skip
    assert "description" not in function["parameters"]["properties"]["unit"]


def test_a_summary_that_runs_over_two_lines_is_one_description():
    def search(query: str) -> str:
        """Search the notes
        for a phrase.

        Returns the matching lines.
        """

    assert function_schema(search)["function"]["description"] == "Search the notes for a phrase."


def test_builtin_agent_runs_the_loop(tmp_path):
    agent = builtin_agent(python_tools(write_tools(tmp_path)), max_turns=4, tool_timeout=5.0)
    client = FakeClient([completion(None, [("add", '{"a": 3, "b": 4}')]), completion("7")])
    row = run(agent(question_row(), client))
    assert [m.role for m in row.messages] == ["user", "assistant", "tool", "assistant"]
    assert row.messages[2].content == "7"


def test_builtin_agent_keeps_its_turn_limit_and_tool_timeout(tmp_path):
    """``--max-turns`` and ``--tool-timeout`` reach the loop (the defaults are 8 turns and 30 s)."""
    agent = builtin_agent(python_tools(write_tools(tmp_path)), max_turns=2, tool_timeout=0.2)
    client = FakeClient([completion(None, [("slow", '{"seconds": 2}')])], repeat_last=True)
    row = run(agent(question_row(), client))
    assert len(client.requests) == 2
    assert row.messages[2].content.startswith("error: slow did not finish within 0.2 s")


# ----------------------------------------------------------------------------- MCP


def test_mcp_stdio_server(tmp_path):
    tools = mcp_tools(f"{sys.executable} {MCP_SERVER}")
    assert isinstance(tools, Toolset)

    async def go():
        async with tools:
            schemas = tools.schemas()
            product = await tools.call("multiply", {"a": 6, "b": 7})
            with pytest.raises(ToolError, match="unknown tool"):
                await tools.call("divide", {"a": 1, "b": 2})
            with pytest.raises(ToolError, match="multiply failed"):
                await tools.call("multiply", {"a": "six", "b": 7})
            client = FakeClient([completion(None, [("multiply", '{"a": 6, "b": 7}')]), completion("42")])
            row = await tool_loop(question_row(), client, tools=tools)
            return schemas, product, row, client

    schemas, product, row, client = run(asyncio.wait_for(go(), 30))
    by_name = {s["function"]["name"]: s["function"] for s in schemas}
    assert set(by_name) == {"add", "multiply"}
    assert by_name["multiply"]["description"] == "Multiply two whole numbers."
    assert by_name["multiply"]["parameters"]["required"] == ["a", "b"]
    assert by_name["multiply"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert product == "42"
    assert client.requests[0]["tools"] == schemas
    assert [m.role for m in row.messages] == ["user", "assistant", "tool", "assistant"]
    assert row.messages[2].content == "42" and row.messages[2].name == "multiply"


def test_mcp_server_that_cannot_start_is_a_config_error(tmp_path):
    missing = tmp_path / "no_such_server.py"

    async def go():
        async with mcp_tools(f"{sys.executable} {missing}"):
            pass

    with pytest.raises(ConfigError, match="--mcp-server: cannot use the MCP server"):
        run(asyncio.wait_for(go(), 30))


def test_mcp_streamable_http_server():
    import socket
    import threading
    import time

    import uvicorn

    sys.path.insert(0, str(MCP_SERVER.parent))
    try:
        from mcp_calculator import mcp
    finally:
        sys.path.remove(str(MCP_SERVER.parent))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(mcp.streamable_http_app(), host="127.0.0.1", port=port, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)

        async def go():
            async with mcp_tools(f"http://127.0.0.1:{port}/mcp") as tools:
                return tools.names(), await tools.call("add", {"a": 40, "b": 2})

        assert run(asyncio.wait_for(go(), 20)) == (["add", "multiply"], "42")
    finally:
        server.should_exit = True
        thread.join(10)


def test_mcp_servers_see_the_jobs_environment_images_are_named_and_a_dead_server_fails_calls(monkeypatch):
    monkeypatch.setenv("OPENRFT_TEST_MARK", "from-the-job")  # an API key the server needs, say

    async def go():
        async with mcp_tools(f"{sys.executable} {MCP_SERVER.with_name('mcp_edge_cases.py')}") as tools:
            seen = await tools.call("environment", {})
            picture = await tools.call("picture", {})
            structured = await tools.call("structured_only", {})
            for name in (
                "crash",
                "add",
            ):  # the call that kills it, then one to a server gone: each fails alone
                with pytest.raises(ToolError, match=f"{name} failed"):
                    await asyncio.wait_for(tools.call(name, {"a": 1, "b": 2} if name == "add" else {}), 20)
            return seen, picture, structured

    seen, picture, structured = run(asyncio.wait_for(go(), 60))
    assert seen == "from-the-job" and picture == "[image (image/png, 4 bytes): not shown to this text model]"
    assert json.loads(structured) == {"x": 1, "unit": "m"}  # no content blocks: the structured result


def test_a_stdio_server_dies_with_the_thread_that_started_it():
    """What keeps an abandoned conversation's server (or a failed job's) from outliving the job."""
    import subprocess
    import threading
    import time

    from openrft.rollout.mcp_client import _GUARD

    started = []

    def conversation():
        started.append(subprocess.Popen([sys.executable, "-S", "-c", _GUARD, "sleep", "60"]))
        time.sleep(1)  # the conversation goes on a while, then its thread ends without closing the server

    thread = threading.Thread(target=conversation)
    thread.start()
    thread.join()
    deadline = time.monotonic() + 10
    while started[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started[0].returncode == -9  # SIGKILL: its starting thread ended


def test_several_mcp_servers_offer_their_tools_together_and_a_shared_name_is_refused(tmp_path):
    from openrft.config import build_config
    from openrft.rollout.mcp_client import check_server

    echo = tmp_path / "echo_server.py"
    echo.write_text(
        textwrap.dedent('''
        from mcp.server.fastmcp import FastMCP

        mcp = FastMCP("echo", log_level="WARNING")

        @mcp.tool()
        def shout(text: str) -> str:
            """Upper-case the text."""
            return text.upper()

        mcp.run()
    ''')
    )
    calculator, other = f"{sys.executable} {MCP_SERVER}", f"{sys.executable} {echo}"
    assert sorted(check_server([calculator, other])) == ["add", "multiply", "shout"]
    with pytest.raises(
        ConfigError, match=r"the tool name 'add' is offered twice, by --mcp-server '.*mcp_calc"
    ):
        check_server([calculator, calculator])
    cfg, _ = build_config({}, {"mcp_server": [calculator, other]})
    assert cfg.settings().agent.mcp_server == (calculator, other)
    cfg, _ = build_config({}, {"mcp_server": calculator})  # one, as a job file or an older record has it
    assert cfg.settings().agent.mcp_server == (calculator,)
