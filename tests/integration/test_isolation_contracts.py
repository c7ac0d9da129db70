"""What keeps a job's scoring and records the same across a resume or a repair: the evaluator snapshot
(which function of the file, grader specs too), and the job store rebuilt from the job folders."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from openrft.jobs.snapshot import resumed_values, write_snapshot

FIRST = "def first(completion, **row):\n    return 0.0\n\n\ndef second(completion, **row):\n    return 1.0\n"


def test_a_resume_from_the_snapshot_copy_keeps_the_evaluator_function_name(tmp_path):
    source = tmp_path / "evaluator.py"
    source.write_text(FIRST)
    values = {"evaluator": f"{source}::second"}
    job_dir = tmp_path / "job"
    manifest = write_snapshot(job_dir, values)
    copy = manifest["code"]["evaluator"]["copy"]
    source.write_text("def second(completion, **row):\n    return -1.0\n")  # edited after the job started
    warnings = []
    resumed = resumed_values(job_dir, values, warnings.append)
    assert resumed["evaluator"] == f"{copy}::second"
    assert Path(copy).read_text() == FIRST and len(warnings) == 1


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_grader_spec_files_are_snapshotted_and_used_on_resume_once_edited(tmp_path, suffix):
    spec = tmp_path / f"grader{suffix}"
    original = json.dumps({"type": "string_check", "operation": "eq", "reference": "{{item.answer}}"})
    spec.write_text(original)
    values = {"evaluator": str(spec)}
    job_dir = tmp_path / "job"
    manifest = write_snapshot(job_dir, values)
    assert manifest["code"]["evaluator"]["path"] == str(spec)
    spec.write_text(original.replace('"eq"', '"ne"'))
    resumed = resumed_values(job_dir, values, lambda message: None)
    assert resumed["evaluator"] == manifest["code"]["evaluator"]["copy"] != str(spec)
    assert Path(resumed["evaluator"]).read_text() == original


def _damaged_home(tmp_path, job_json):
    home = tmp_path / "home"
    folder = home / "jobs" / "a"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(job_json))
    db = home / "jobs.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    db.write_bytes(b"garbage" + db.read_bytes()[7:])  # SQLite's header is gone
    return home


def test_repair_moves_the_damaged_stores_wal_and_shm_aside_with_it(tmp_path):
    from openrft.jobs.repair import repair
    from openrft.jobs.store import JobStore

    home = _damaged_home(
        tmp_path, {"training": {"epochs": 2}, "loss": {}, "rollout": {}, "data": {}, "wandb": {}}
    )
    (home / "jobs.db-wal").write_bytes(b"old wal of the damaged store")
    (home / "jobs.db-shm").write_bytes(b"old shm")
    report = repair(home)
    assert report.restored == ["a"] and report.backup is not None
    for suffix in ("", "-wal", "-shm"):
        assert (home / f"{report.backup.name}{suffix}").is_file()
    assert (home / f"{report.backup.name}-wal").read_bytes() == b"old wal of the damaged store"
    assert [r.id for r in JobStore(home).list()] == ["a"]


def test_repair_never_takes_the_masked_wandb_key_in_job_json_for_the_key(tmp_path):
    from openrft.config import build_config
    from openrft.jobs.repair import repair
    from openrft.jobs.store import JobStore

    cfg = build_config({}, {"wandb_api_key": "the-real-key", "wandb_project": "p"})[0]
    job_json = cfg.to_dict()  # as a job folder holds it: the key masked
    assert job_json["wandb"]["wandb_api_key"] == "********"
    home = _damaged_home(tmp_path, job_json)
    repair(home)
    record = JobStore(home).get("a")
    assert record.config["wandb"]["wandb_api_key"] is None and "wandb_api_key" not in record.given


# ----------------------------------------------------------------------------- evaluator worker processes

WORKER_EVALUATORS = """
import os

from openrft import EvaluateResult, EvaluationRow, evaluation_test


def reads_env(completion, **row):
    return float(os.environ.get("OPENRFT_T_ENV") == "yes")


@evaluation_test(mode="groupwise")
def group_dies(rows: list[EvaluationRow]) -> list[EvaluationRow]:
    os._exit(9)
"""


def _group():
    from openrft.records import Completion, Prompt

    prompt = Prompt("p", ({"role": "user", "content": "x"},), row={"ground_truth": "1"})
    completions = [Completion("p", i, (1,), (2,), t, (-0.1,), "stop") for i, t in enumerate(["a", "b", "cc"])]
    return prompt, completions


@pytest.fixture
def worker_evaluators(tmp_path):
    path = tmp_path / "worker_evs.py"
    path.write_text(WORKER_EVALUATORS)
    return path


def test_the_evaluators_own_env_is_set_in_its_worker_processes(worker_evaluators, monkeypatch):
    import dataclasses

    from openrft.evaluators import load_evaluator
    from openrft.evaluators.isolation import EvaluatorPool

    monkeypatch.delenv("OPENRFT_T_ENV", raising=False)
    evaluator = dataclasses.replace(
        load_evaluator(f"{worker_evaluators}::reads_env"), env={"OPENRFT_T_ENV": "yes"}
    )
    with EvaluatorPool(evaluator, workers=2, timeout=5.0) as pool:
        scores = pool.score_groups([_group()])[0]
    assert [(s.score, s.is_valid) for s in scores] == [(1.0, True)] * 3


def test_a_groupwise_evaluator_whose_worker_dies_scores_every_candidate_invalid(worker_evaluators):
    from openrft.evaluators import load_evaluator
    from openrft.evaluators.isolation import EvaluatorPool

    evaluator = load_evaluator(f"{worker_evaluators}::group_dies")
    assert evaluator.mode == "groupwise"
    with EvaluatorPool(evaluator, workers=2, timeout=5.0) as pool:
        scores = pool.score_groups([_group()])[0]
    assert len(scores) == 3 and not any(s.is_valid for s in scores)  # one score per candidate, as always
