"""Contracts of a job's logs that users read back: the JSONL files a resume cuts, the comparison of
jobs, and the W&B run a job logs to (its identity, its end state, its API key)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from openrft.tracking.compare import differing_parameters, format_comparison, summarize_run
from openrft.tracking.jsonl_files import Folded, iter_jsonl
from openrft.tracking.sinks import JsonlSink


def _strict_loads(line: str) -> dict:
    """JSON as a browser's ``JSON.parse`` reads it: no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_a_last_line_without_its_newline_is_not_read_even_when_it_parses(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')  # killed before the newline: the line is not complete
    assert [row["step"] for _, _, row in iter_jsonl(path)] == [1]
    folded = Folded(list, lambda steps, row, start, end: [*steps, row["step"]])
    assert folded.get(path) == [1]
    with open(path, "a") as handle:
        handle.write("\n")
    assert folded.get(path) == [1, 2]  # read once, when complete


def test_non_finite_metrics_are_written_as_null_so_the_file_stays_strict_json(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log(1, {"kl/mean": float("inf"), "loss/policy": float("-inf"), "reward/mean": float("nan")})
    (line,) = sink.metrics_path.read_text().splitlines()
    assert _strict_loads(line) == {"step": 1, "kl/mean": None, "loss/policy": None, "reward/mean": None}


def test_an_old_checkpoint_keeps_the_lines_of_its_own_step(tmp_path):
    sink = JsonlSink(tmp_path)
    for step in (1, 2, 3, 4):
        sink.log(step, {"reward/mean": step / 10})
        sink.log_rollouts(step, [{"completion": "x"}])
    sink.truncate_after(2)
    assert [row["step"] for _, _, row in iter_jsonl(sink.metrics_path)] == [1, 2]
    assert [row["step"] for _, _, row in iter_jsonl(sink.rollouts_path)] == [1, 2]
    assert sink.position() == {"metrics": 2, "rollouts": 2}


def test_a_start_that_failed_before_its_first_metrics_line_leaves_no_rollouts_to_its_resume(tmp_path):
    from openrft.train.checkpoint import fresh_state

    sink = JsonlSink(tmp_path)
    sink.log_rollouts(
        1, [{"completion": "first try"}, {"completion": "first try"}]
    )  # then the scoring failed
    resumed = JsonlSink(tmp_path)
    fresh_state(resumed)  # no checkpoint: the resume starts over
    resumed.log_rollouts(1, [{"completion": "second try"}])
    assert [row["completion"] for _, _, row in iter_jsonl(resumed.rollouts_path)] == ["second try"]
    assert resumed.position() == {"metrics": 0, "rollouts": 1}


def test_the_wandb_run_id_is_not_a_parameter_that_differs():
    a = {"learning_rate": 1e-4, "wandb_run_id": "run-a", "wandb_api_key": None}
    b = {"learning_rate": 1e-4, "wandb_run_id": "run-b", "wandb_api_key": "secret"}
    assert differing_parameters([a, b]) == {}


def test_a_diverging_last_step_does_not_become_the_final_or_best_reward(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.3}, {"step": 3, "reward/mean": math.nan},
            {"step": 4, "reward/mean": math.inf}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # written by a version that kept them
    summary = summarize_run("a", path)
    assert (summary.final_reward, summary.best_reward, summary.best_reward_step) == (0.3, 0.3, 2)


def test_wall_times_over_an_hour_show_hours_and_minutes(tmp_path):
    summary = summarize_run("long", tmp_path / "missing.jsonl", wall_s=2 * 3600 + 5 * 60 + 59)
    text, _ = format_comparison(["long"], [{}], [summary])
    assert text.splitlines()[-1].split()[-1] == "2h05m"


def test_a_given_wandb_run_id_continues_that_run_when_it_exists(tmp_path, monkeypatch):
    from openrft.tracking.wandb_sink import run_identity

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    given = run_identity("job-1", tmp_path, None, None, "my-run", resuming=False)
    assert (given["id"], given["resume"]) == ("my-run", "allow")
    monkeypatch.setenv("WANDB_RUN_ID", "env-run")
    from_env = run_identity("job-1", tmp_path, None, None, None, resuming=False)
    assert (from_env["id"], from_env["resume"]) == ("env-run", "allow")
    monkeypatch.delenv("WANDB_RUN_ID")
    fresh = run_identity("job-1", tmp_path, None, None, None, resuming=False)
    assert fresh["id"].startswith("job-1-") and fresh["resume"] == "never"


@pytest.mark.parametrize(
    ("state", "exit_code"), [("COMPLETED", 0), ("FAILED", 1), ("CANCELLED", 1), (None, 0)]
)
def test_a_failed_or_cancelled_job_marks_its_wandb_run_failed(monkeypatch, state, exit_code):
    pytest.importorskip("wandb")
    import wandb

    from openrft.tracking.wandb_sink import WandbSink

    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: None)
    ended = []
    run = SimpleNamespace(
        summary={}, define_metric=lambda *a, **k: None, finish=lambda exit_code: ended.append(exit_code)
    )
    sink = WandbSink(run)
    if state is not None:
        sink.job_ended(state)
    sink.close()
    sink.close()  # once only
    assert ended == [exit_code]
    assert run.summary.get("job/state") == state


def test_the_wandb_api_key_is_read_from_the_netrc_password(tmp_path, monkeypatch):
    from openrft.tracking.wandb_sink import find_api_key

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password the-key\n")
    netrc_file.chmod(0o600)
    assert find_api_key(None) == "the-key"
    assert find_api_key("flag-key") == "flag-key"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com/")
    assert find_api_key(None) is None  # the key of another host is not this one's


def test_a_step_line_counts_the_scores_the_evaluator_failed_on(capsys):
    from openrft.jobs.runner import PrintSink

    PrintSink().log(3, {"reward/mean": 0.5, "reward/invalid_count": 2.0, "reward/count": 8.0})
    PrintSink().log(4, {"reward/mean": 0.5, "reward/invalid_count": 0.0, "reward/count": 8.0})
    first, second = capsys.readouterr().err.splitlines()
    assert "step 3" in first and "invalid scores 2/8" in first and "invalid" not in second
