"""MCP servers that fail the way real ones do: an HTTP server killed mid-conversation fails the calls
made to it, each as an ``error:`` the model sees, and the conversation goes on (anyio cancelled the
task that held the connection, which was the conversation's); a tool name the policy server could
never offer is refused when the job is created, not by every model call after the model loaded."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from openrft.errors import ConfigError
from openrft.rollout.mcp_client import check_server, mcp_tools
from openrft.rollout.tools import ToolError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _http_server(port: int) -> subprocess.Popen:
    code = textwrap.dedent(
        f"""
        import sys, uvicorn
        sys.path.insert(0, {str(FIXTURES)!r})
        from mcp_calculator import mcp
        uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port={port}, log_level="critical")
        """
    )
    server = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError("the MCP server did not start")


def test_an_http_server_killed_mid_conversation_fails_its_calls_and_the_conversation_goes_on():
    port = _free_port()
    server = _http_server(port)
    try:

        async def conversation() -> list[str]:
            said = []
            async with mcp_tools(f"http://127.0.0.1:{port}/mcp") as tools:
                said.append(await tools.call("add", {"a": 40, "b": 2}))
                server.kill()
                server.wait(10)
                for _ in range(2):  # the call that finds it gone, then one after
                    try:
                        said.append(await asyncio.wait_for(tools.call("add", {"a": 1, "b": 2}), 30))
                    except ToolError as exc:
                        said.append(f"error: {exc}")
            said.append("went on")
            return said

        said = asyncio.run(asyncio.wait_for(conversation(), 90))
    finally:
        server.kill()
    assert said[0] == "42" and said[-1] == "went on"
    assert all(line.startswith("error: add failed") for line in said[1:3]), said


def test_a_tool_name_the_policy_server_refuses_is_refused_at_creation(tmp_path):
    server = tmp_path / "dotted.py"
    server.write_text(
        textwrap.dedent(
            """
            from mcp.server.fastmcp import FastMCP
            mcp = FastMCP("dotted", log_level="WARNING")

            @mcp.tool(name="math.add")
            def add(a: int, b: int) -> int:
                return a + b

            mcp.run()
            """
        )
    )
    with pytest.raises(ConfigError, match=r"math\.add.*letters, digits, underscores or dashes"):
        check_server(f"{sys.executable} {server}")


def test_an_eval_protocol_processor_that_rolls_out_elsewhere_is_refused_at_creation(tmp_path, capsys):
    pytest.importorskip("eval_protocol", reason="the optional eval-protocol extra is not installed")
    from openrft.cli import main

    (tmp_path / "rows.jsonl").write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    (tmp_path / "remote.py").write_text(
        textwrap.dedent(
            """
            from eval_protocol.models import EvaluateResult, EvaluationRow
            from eval_protocol.pytest import evaluation_test
            from eval_protocol.pytest.remote_rollout_processor import RemoteRolloutProcessor


            @evaluation_test(
                input_dataset=["rows.jsonl"],
                completion_params=[{"model": "fireworks_ai/accounts/fireworks/models/gpt-oss-120b"}],
                rollout_processor=RemoteRolloutProcessor(remote_base_url="http://127.0.0.1:9"),
                mode="pointwise",
            )
            def test_remote(row: EvaluationRow) -> EvaluationRow:
                row.evaluation_result = EvaluateResult(score=1.0, reason="ok")
                return row
            """
        )
    )
    evaluator = f"{tmp_path / 'remote.py'}::test_remote"
    code = main(
        ["rftj", "create", "--dataset", str(tmp_path / "rows.jsonl"), "--evaluator", evaluator, "--dry-run"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "rolls out with RemoteRolloutProcessor" in err and "AgentRolloutProcessor" in err
