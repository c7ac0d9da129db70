"""Real jobs on a tiny random model through the store: foreground, and detached then cancelled."""

from __future__ import annotations

import json
import time

import pytest

from openrft.cli import main
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.tracking.sinks import read_jsonl

pytest.importorskip("openrft.rollout", reason="the rollout engine is not available")

S = JobState
EVALUATOR = '''
def letters(completion: str, **row) -> float:
    """Graded on any text (a random model writes gibberish): the share of letters among characters."""
    return sum(c.isalpha() for c in completion) / len(completion) if completion else 0.0
'''


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def flags(tiny_model_dir, tmp_path):
    evaluator = tmp_path / "letters.py"
    evaluator.write_text(EVALUATOR)

    def make(count: int = 4, *extra: str) -> list[str]:
        return [
            "--base-model", str(tiny_model_dir), "--dataset", f"arithmetic:count={count}",
            "--evaluator", f"{evaluator}::letters", "--n", "2", "--max-output-tokens", "16",
            "--chunk-size", "2", "--batch-size", "120", "--micro-batch-tokens", "128", "--temperature", "1.0",
            "--checkpoint-every", "1", "--quiet", *extra,
        ]  # fmt: skip

    return make


def test_real_job_runs_through_the_store(home, flags, capsys):
    assert main(["rftj", "create", "--job-id", "base", *flags(4, "--batch-size", "2k")]) == 0
    assert "Loading weights" not in capsys.readouterr().err  # --quiet: no bar, transformers' own included
    store = JobStore()
    record = store.get("base")
    assert [t.state for t in record.transitions] == [S.PENDING, S.VALIDATING, S.RUNNING, S.COMPLETED]
    steps = [r for r in read_jsonl(record.metrics_path) if "loss/policy" in r]
    assert steps and record.steps == steps[-1]["step"]
    assert record.last_reward == pytest.approx(steps[-1]["reward/mean"])
    assert (record.output_dir / "adapter_config.json").is_file()
    owner, *written = (record.output_dir / ".openrft-job").read_text().strip().splitlines()
    assert owner == str(record.job_dir.resolve())  # its owner, then what it wrote there
    assert sorted(written) == sorted(p.name for p in record.output_dir.iterdir() if p.name != ".openrft-job")
    main(["rftj", "rollouts", "base", "--best", "--limit", "1", "-o", "json"])
    (best,) = json.loads(capsys.readouterr().out)
    rows = [r for r in read_jsonl(record.rollouts_path) if r["step"] == best["step"]]
    assert len(rows) > 1 and best["score"] == max(r["score"] for r in rows)


def test_real_detached_job_cancels_at_a_step_boundary_with_a_checkpoint(home, flags, capsys):
    assert main(["rftj", "create", "--job-id", "bg", "--detach", *flags(40)]) == 0
    assert capsys.readouterr().out == "bg\n"
    store = JobStore()
    deadline = time.time() + 120
    while store.get("bg").steps < 1:
        assert time.time() < deadline and store.get("bg").state.is_active, store.get(
            "bg"
        ).log_path.read_text()
        time.sleep(0.2)
    assert main(["rftj", "cancel", "bg", "--wait"]) == 0
    record = store.get("bg")
    assert record.state is S.CANCELLED, record.log_path.read_text()
    assert record.message == f"cancelled at step {record.steps}"
    latest = (record.job_dir / "checkpoints" / "LATEST").read_text().strip()
    state = json.loads((record.job_dir / "checkpoints" / latest / "state.json").read_text())
    assert state["step"] == record.steps and state["cursor"] < 40  # stopped early, where it was
    logged = [r["step"] for r in read_jsonl(record.metrics_path) if "loss/policy" in r]
    assert logged[-1] == record.steps
    log = record.log_path.read_text()
    assert f"step {record.steps}" in log
    assert "round 1/20: sampling 2 prompts x 2 candidates" in log  # a line as each round starts sampling
    assert f"outputs: {record.output_dir}" in log and "Warning" not in log
