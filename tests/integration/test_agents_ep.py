"""eval-protocol files with a rollout processor: their processor runs each candidate, its model
calls (through litellm) served by the policy and recorded token for token, tools from MCP."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("eval_protocol", reason="the optional eval-protocol extra is not installed")

from openrft.evaluators import load_evaluator  # noqa: E402
from openrft.records import Completion, Prompt, SamplingParams  # noqa: E402
from openrft.rollout.agents import AgentEngine  # noqa: E402
from openrft.rollout.ep_rollouts import processor_agent  # noqa: E402

MCP_SERVER = Path(__file__).resolve().parents[1] / "fixtures" / "mcp_calculator.py"
EP_FILE = """
from eval_protocol.models import EvaluateResult, EvaluationRow
from eval_protocol.pytest import AgentRolloutProcessor, evaluation_test


@evaluation_test(
    input_dataset=["rows.jsonl"],
    completion_params=[{"model": "fireworks_ai/accounts/fireworks/models/some-model", "temperature": 0.0}],
    rollout_processor=AgentRolloutProcessor(),
    mcp_config_path="mcp.json",
    mode="pointwise",
)
def multiplied(row: EvaluationRow) -> EvaluationRow:
    last = row.messages[-1].content or ""
    used = any(m.role == "tool" for m in row.messages)
    spread = len(last) % 5 / 10  # a tiny random model's text still gets a range of scores
    row.evaluation_result = EvaluateResult(score=0.4 * used + 0.2 * (str(row.ground_truth) in last) + spread)
    return row
"""


def write_ep_files(folder: Path) -> Path:
    """The evaluator file, its MCP config (this Python, the calculator server) and two rows."""
    (folder / "ep_agent.py").write_text(textwrap.dedent(EP_FILE))
    config = {"mcpServers": {"calculator": {"command": sys.executable, "args": [str(MCP_SERVER)]}}}
    (folder / "mcp.json").write_text(json.dumps(config))
    rows = [{"messages": [{"role": "user", "content": f"What is {a} times 7?"}], "ground_truth": a * 7}
            for a in (6, 8)]  # fmt: skip
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "ep_agent.py"


class CalculatorScript:
    """A model that calls ``multiply`` first and, once it has a tool response, answers with it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_token_ids = (tokenizer.eos_token_id,)
        self.prompts: list[str] = []

    def generate_from_ids(self, prompts, params, **_):
        out = []
        for name, ids in prompts:
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            if "<tool_response>" in text:
                result = text.rsplit("<tool_response>", 1)[1].split("</tool_response>")[0]
                reply = f"<answer>{''.join(ch for ch in result if ch.isdigit())}</answer>"
            else:
                a = int(text.rsplit("What is ", 1)[1].split(" ")[0])
                call = {"name": "multiply", "arguments": {"a": a, "b": 7}}
                reply = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
            tokens = (
                *self.tokenizer(reply, add_special_tokens=False)["input_ids"],
                self.tokenizer.eos_token_id,
            )
            out.append([Completion(name, k, tuple(ids), tokens, reply, (-0.25,) * len(tokens), "stop")
                        for k in range(params.n)])  # fmt: skip
        return out


def test_the_files_agent_processor_calls_mcp_tools_through_the_policy(tmp_path, tokenizer):
    evaluator = load_evaluator(f"{write_ep_files(tmp_path)}::multiplied")
    spec = evaluator.rollout
    assert spec is not None and spec.name == "AgentRolloutProcessor"
    assert spec.mcp_config_path == str(tmp_path / "mcp.json")  # resolved beside the file
    model = CalculatorScript(tokenizer)
    engine = AgentEngine(model, processor_agent(spec), max_context=2048)
    prompts = [Prompt("p0", ({"role": "user", "content": "What is 6 times 7?"},), {"ground_truth": 42})]
    try:
        (group,) = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=64, seed=1))
    finally:
        engine.close()
    assert "multiply" in model.prompts[0]  # the MCP server's tools were offered to the model
    for c in group:
        assert not c.error, c.error
        roles = [m["role"] for m in c.conversation]
        assert roles == ["user", "assistant", "tool", "assistant"]
        assert (
            "42" in str(c.conversation[2]["content"])
            and c.conversation[3]["content"] == "<answer>42</answer>"
        )
        # both calls recorded and merged: the tool's tokens are in the sequence, masked out
        assert c.agent_metrics["turns"] == 2 and 0 in c.completion_mask and not c.continuations
        assert c.sampled_tokens == sum(c.completion_mask)


def test_a_job_with_an_eval_protocol_agent_file_trains_a_round(tiny_model_dir, tmp_path, capsys):
    from openrft.cli import main
    from openrft.tracking.sinks import read_jsonl

    ep_file = write_ep_files(tmp_path)
    code = main([
        "rftj", "create", "--base-model", str(tiny_model_dir), "--evaluator", f"{ep_file}::multiplied",
        "--n", "2", "--max-output-tokens", "16", "--chunk-size", "2", "--epochs", "1", "--temperature", "1.0",
        "--seed", "3", "--quiet", "--output-model", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    steps = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "agent/turns" in r]
    assert steps and steps[0]["agent/turns"] >= 1 and steps[0]["agent/failed_frac"] == 0
