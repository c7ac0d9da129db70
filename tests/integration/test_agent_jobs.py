"""Jobs whose candidates are conversations with tools: --tools, --mcp-server, the calculator task."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from openrft.cli import main
from openrft.paths import jobs_root
from openrft.tracking.sinks import read_jsonl

FIXTURES = Path(__file__).parent / "train_fixtures" / "evaluators.py"
MCP_SERVER = Path(__file__).resolve().parents[1] / "fixtures" / "mcp_calculator.py"
CALCULATOR_TOOLS = (
    Path(__file__).resolve().parents[2] / "src" / "openrft" / "data" / "tasks" / "calculator_tools.py"
)


def _run(model_dir: Path, out: Path, *flags: str) -> tuple[list[dict], Path]:
    job_id = f"agent-job-{uuid.uuid4().hex[:12]}"
    code = main([
        "rftj", "create", "--job-id", job_id,
        "--base-model", str(model_dir), "--dataset", "arithmetic:count=4",
        "--evaluator", f"{FIXTURES}::spread", "--n", "2", "--max-output-tokens", "16", "--chunk-size", "2",
        "--epochs", "1", "--temperature", "1.0", "--seed", "3", "--quiet", "--output-model", str(out), *flags,
    ])  # fmt: skip
    assert code == 0
    return [r for r in read_jsonl(out / "metrics.jsonl") if "loss/policy" in r], jobs_root() / job_id


@pytest.mark.parametrize(
    "flags",
    [
        ["--tools", str(CALCULATOR_TOOLS), "--max-turns", "3"],
        ["--mcp-server", f"{sys.executable} {MCP_SERVER}", "--max-turns", "2", "--tool-timeout", "10"],
    ],
    ids=["python-tools", "mcp-server"],
)
def test_a_job_with_a_tool_loop_trains_its_rounds(tiny_model_dir, tmp_path, flags):
    steps, job_dir = _run(tiny_model_dir, tmp_path / "out", *flags)
    assert len(steps) == 2  # 4 prompts, 2 per round
    for step in steps:
        assert 1 <= step["agent/turns"] <= int(flags[flags.index("--max-turns") + 1])
        assert step["agent/failed_frac"] == 0 and "agent/tool_calls" in step and "agent/tool_errors" in step
        assert step["mismatch/kl"] < 1e-6  # trained on the tokens the conversation sampled
    rollouts = read_jsonl(job_dir / "rollouts.jsonl")
    assert rollouts and all(r["conversation"][-1]["role"] == "assistant" for r in rollouts)


def test_the_calculator_task_is_a_builtin_dataset_and_evaluator(tiny_model_dir, tmp_path, capsys):
    code = main([
        "rftj", "create", "--base-model", str(tiny_model_dir), "--dataset", "calculator:count=4",
        "--tools", str(CALCULATOR_TOOLS), "--max-turns", "2", "--n", "2", "--max-output-tokens", "16",
        "--chunk-size", "2", "--epochs", "1", "--dry-run",
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "calculator:count=4" in out.out


def test_eval_of_a_tool_job_runs_its_tool_loop_for_every_model(tiny_model_dir, tmp_path, capsys):
    _, job_dir = _run(tiny_model_dir, tmp_path / "out", "--tools", str(CALCULATOR_TOOLS), "--max-turns", "2")
    out = tmp_path / "samples.jsonl"
    code = main([
        "eval", "--dataset", "arithmetic:count=3", "--evaluator", f"{FIXTURES}::spread", "--job", job_dir.name,
        "--base", "--n", "2", "--output", str(out),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"each response is a conversation run as in job {job_dir.name}" in err
    records = read_jsonl(out)
    assert {r["model"] for r in records} == {"base", job_dir.name} and len(records) == 2 * 3 * 2
    for r in records:  # the base model too: both sides of the comparison run the job's tool loop
        assert r["conversation"][-1]["role"] == "assistant" and r["agent"]["turns"] >= 1
