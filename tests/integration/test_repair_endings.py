"""``rftj repair`` restores each job as it ended, read from its last checkpoint: a cancelled job stays
CANCELLED (a plain resume is still refused), an early-stopped one EARLY_STOPPED with its reason (it
came back COMPLETED, and a cancelled one FAILED); and a cancel writes that mark in the checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

from openrft.cli import main
from openrft.jobs.store import JobStore

FIXTURES = Path(__file__).parent / "train_fixtures" / "evaluators.py"


def _folder(home: Path, name: str, state: dict) -> None:
    folder = home / "jobs" / name
    (folder / "output").mkdir(parents=True)
    (folder / "output" / "adapter_config.json").write_text("{}")
    (folder / "job.json").write_text('{"training": {}, "loss": {}, "rollout": {}, "data": {}, "wandb": {}}')
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-000002" / "state.json").write_text(json.dumps({"step": 2, **state}))


def test_repair_keeps_cancelled_and_early_stopped_jobs_as_they_ended(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("OPENRFT_HOME", str(home))
    _folder(home, "stopped", {"outcome": "", "cancelled": True})
    _folder(
        home, "flat", {"outcome": "early_stopped", "epoch": 0, "epoch_completions": 8, "epoch_truncated": 0}
    )
    _folder(home, "broken", {"outcome": ""})  # a checkpoint written along the way: it had not finished
    assert main(["rftj", "repair", "--force"]) == 0, capsys.readouterr().err
    store = JobStore(home)
    stopped, flat, broken = (store.get(name) for name in ("stopped", "flat", "broken"))
    assert stopped.state == "CANCELLED" and "cancelled at step 2" in stopped.message
    assert flat.state == "EARLY_STOPPED" and "received the same score" in flat.message
    assert broken.state == "FAILED"
    capsys.readouterr()
    assert main(["rftj", "resume", "stopped"]) == 7  # a cancelled job still needs --force
    assert "--force" in capsys.readouterr().err


def test_repair_keeps_when_each_job_was_created_and_their_order(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("OPENRFT_HOME", str(home))
    for name, made in (("older", 1_600_000_000), ("newer", 1_700_000_000)):
        _folder(home, name, {"outcome": ""})
        (home / "jobs" / name / "snapshot").mkdir()
        (home / "jobs" / name / "snapshot" / "manifest.json").write_text("{}")
        os.utime(home / "jobs" / name / "snapshot" / "manifest.json", (made, made))
    assert main(["rftj", "repair", "--force"]) == 0, capsys.readouterr().err
    store = JobStore(home)
    assert [store.get(name).created_at for name in ("older", "newer")] == [1_600_000_000, 1_700_000_000]
    assert [record.id for record in store.list()] == ["newer", "older"]


def test_a_cancel_marks_the_checkpoint_it_writes_and_a_resume_clears_the_mark(tiny_model_dir, tmp_path):
    from openrft.config import build_config
    from openrft.train.checkpoint import latest_checkpoint
    from openrft.train.job import prepare, run_training

    values = dict(
        base_model=str(tiny_model_dir), dataset="arithmetic:count=4", evaluator=f"{FIXTURES}::spread",
        response_candidates_count=2, max_output_tokens=16, chunk_size=2, temperature=1.0, seed=3,
    )  # fmt: skip
    cfg = build_config({}, values)[0]
    job = tmp_path / "job"
    cancelled = run_training(
        prepare(cfg), job, quiet=True, should_stop=lambda: (job / "rollouts.jsonl").exists()
    )
    assert cancelled.status == "cancelled"
    state = json.loads((latest_checkpoint(job / "checkpoints") / "state.json").read_text())
    assert state["cancelled"] is True
    finished = run_training(prepare(cfg), job, quiet=True, resume=True)
    assert finished.status == "completed"
    state = json.loads((latest_checkpoint(job / "checkpoints") / "state.json").read_text())
    assert state["cancelled"] is False and state["outcome"] == "completed"
