"""Jobs through the store and the ``rftj`` commands, with a stand-in trainer (no model, fast).

The stand-in replaces ``openrft.train.job.run_training`` with the same signature and
contract: it writes metrics/rollouts/checkpoints, feeds the extra sinks, polls
``should_stop`` at every step boundary and returns an outcome, or fails the way it is
told to through ``FAKE_*`` environment variables. Detached jobs run it in a real
background process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from openrft.cli import main
from openrft.jobs import runner
from openrft.jobs.states import DIED_MESSAGE, JobState
from openrft.jobs.store import JobStore

S = JobState

FAKE_TRAINER = r'''
"""Stand-in for openrft.train.job.run_training (see the test module)."""
import json, os, subprocess, sys, time, types
from pathlib import Path

from openrft.train.job import prepare  # the real checks run; only training is replaced


def _append(path, record):
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _checkpoint(job_dir, step):
    ckpt = job_dir / "checkpoints" / f"step-{step:06d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "state.json").write_text(json.dumps({"step": step}))
    (job_dir / "checkpoints" / "LATEST").write_text(ckpt.name + "\n")


def _outcome(status, step, message=""):
    return types.SimpleNamespace(status=status, message=message, state=types.SimpleNamespace(step=step))


def run_training(prepared, job_dir, *, resume=False, quiet=False, lines=False, should_stop=lambda: False, extra_sinks=()):
    cfg = prepared.cfg
    env = os.environ
    mode, steps = env.get("FAKE_MODE", "ok"), int(env.get("FAKE_STEPS", "4"))
    delay, cancel_at = float(env.get("FAKE_DELAY", "0")), int(env.get("FAKE_CANCEL_AT", "0"))
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(cfg.to_dict()))
    latest = job_dir / "checkpoints" / "LATEST"
    start = int(latest.read_text().strip().split("-")[1]) if resume and latest.is_file() else 0
    _append(job_dir / "fake_calls.jsonl", {"resume": resume, "start": start, "pid": os.getpid(),
                                           "lr": cfg.training.learning_rate})
    lr_scale = cfg.training.learning_rate / 1e-4
    for step in range(start + 1, steps + 1):
        if step == 2 and mode == "data-error":
            from openrft.errors import DataError
            raise DataError("train.jsonl: row 3 has no messages")
        if step == 2 and mode == "crash" and not (job_dir / "crashed").exists():
            (job_dir / "crashed").write_text("")
            raise RuntimeError("the accelerator fell over")
        reward = min(1.0, lr_scale * step / steps)
        metrics = {"reward/mean": reward, "reward/std": 0.1, "loss/policy": 0.5 / step, "kl/mean": 0.001 * step,
                   "clip/low_frac": 0.0, "clip/high_frac": 0.01 * step, "filter/zero_variance_frac": 0.25}
        if step == steps:
            metrics["eval/reward"] = reward
        _append(job_dir / "metrics.jsonl", {"step": step, **metrics})
        rows = [{"round": step, "prompt_id": f"p{step}", "prompt": f"What is {step} + {i}?",
                 "completion": f"<answer>{step + i}</answer>", "score": i / 3, "valid": True,
                 "reason": f"candidate {i}", "finish_reason": "stop"} for i in range(4)]
        for row in rows:
            _append(job_dir / "rollouts.jsonl", {"step": step, **row})
        for sink in extra_sinks:
            sink.log_rollouts(step, rows)
            sink.log(step, metrics)
        _checkpoint(job_dir, step)
        if step == cancel_at:
            subprocess.run([sys.executable, "-m", "openrft.cli", "rftj", "cancel", job_dir.name], check=True,
                           capture_output=True)
        time.sleep(delay)
        if should_stop():
            return _outcome("cancelled", step, f"cancelled at step {step}")
    if mode == "early":
        return _outcome("early_stopped", steps, "every candidate received the same score")
    if mode == "late-cancel":  # a cancel that arrives after the last step's boundary check
        subprocess.run([sys.executable, "-m", "openrft.cli", "rftj", "cancel", job_dir.name], check=True,
                       capture_output=True)
    (job_dir / "output").mkdir(exist_ok=True)
    return _outcome("completed", steps)


def install():
    module = types.ModuleType("openrft.train.job")
    module.run_training = run_training
    module.prepare = prepare
    import openrft.train
    sys.modules["openrft.train.job"] = module
    openrft.train.job = module
    return module


if __name__ == "__main__":
    install()
    from openrft.jobs.worker import main
    sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("OPENRFT_HOME", str(home))
    for key in ("FAKE_MODE", "FAKE_STEPS", "FAKE_DELAY", "FAKE_CANCEL_AT"):
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,'
        ' "intermediate_size": 32, "vocab_size": 128, "max_position_embeddings": 4096}'
    )  # a config and a tokenizer (the prompts are measured when a job is created), no weights:
    tokenizer.save_pretrained(path)  # the stand-in trainer never loads them
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch, home):
    """Install the stand-in trainer here and in detached workers."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    spec = importlib.util.spec_from_file_location("fake_trainer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import openrft.train

    monkeypatch.setitem(sys.modules, "openrft.train.job", module)
    monkeypatch.setattr(openrft.train, "job", module, raising=False)
    monkeypatch.setattr(runner, "worker_command", lambda job_id: [sys.executable, str(script), job_id])
    src = str(Path(runner.__file__).parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    return module


def create(capsys, model_dir, *extra):
    code = main(
        ["rftj", "create", "--base-model", str(model_dir), "--quiet", "--dataset", "arithmetic", *extra]
    )
    out, err = capsys.readouterr()
    return code, out, err


def states(record):
    return [t.state for t in record.transitions]


def wait_for(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


# ----------------------------------------------------------------------------- foreground


def test_foreground_job_goes_through_every_state_to_completed(fake, home, model_dir, capsys):
    code, out, err = create(capsys, model_dir, "--job-id", "a")
    assert code == 0
    record = JobStore().get("a")
    assert states(record) == [S.PENDING, S.VALIDATING, S.RUNNING, S.COMPLETED]
    assert (record.steps, record.last_reward) == (4, 1.0)
    assert record.output_dir == home / "jobs" / "a" / "output"
    assert record.pid == os.getpid()
    assert "job a COMPLETED after 4 steps" in err
    assert out == "a\n"  # the id alone on stdout, as --detach prints it

    code = main(["rftj", "list"])
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["ID", "STATE", "BASE", "MODEL", "METHOD", "STEPS", "LAST", "REWARD", "AGE"]
    assert listing[1].split()[:6] == ["a", "COMPLETED", str(model_dir), "grpo", "4", "1.000"]

    main(["rftj", "get", "a", "-o", "json"])
    got = json.loads(capsys.readouterr().out)
    assert got["state"] == "COMPLETED" and got["latest_metrics"]["step"] == 4
    assert got["latest_metrics"]["eval/reward"] == got["latest_metrics"]["reward/mean"] == 1.0
    assert [t["state"] for t in got["transitions"]] == ["PENDING", "VALIDATING", "RUNNING", "COMPLETED"]
    assert got["config"]["training"]["base_model"] == str(model_dir)

    main(["rftj", "get", "a"])
    text = capsys.readouterr().out
    assert "state:       COMPLETED" in text and "latest metrics (step 4):" in text
    assert "reward/mean" in text and "learning-rate" in text
    assert "pid:         -" in text  # its process has ended: no pid to look for


@pytest.mark.parametrize(
    ("mode", "state", "message", "exit_code"),
    [
        ("data-error", S.FAILED, "train.jsonl: row 3 has no messages", 3),
        ("crash", S.FAILED, "RuntimeError: the accelerator fell over", 7),
        ("early", S.EARLY_STOPPED, "every candidate received the same score", 0),
    ],
)
def test_errors_and_early_stop_are_recorded(
    fake, home, model_dir, capsys, monkeypatch, mode, state, message, exit_code
):
    monkeypatch.setenv("FAKE_MODE", mode)
    code, _, err = create(capsys, model_dir, "--job-id", "a")
    assert code == exit_code
    record = JobStore().get("a")
    assert states(record) == [S.PENDING, S.VALIDATING, S.RUNNING, state]
    assert record.message == message and message in err
    assert "Traceback" not in err
    if mode == "crash":
        assert "RuntimeError: the accelerator fell over" in (record.job_dir / "error.log").read_text()
        assert "the traceback is in" in err


def test_validation_failure_never_starts_training(fake, home, model_dir, capsys):
    code, _, err = create(capsys, model_dir, "--job-id", "a", "--evaluator", "no_such_module_xyz:score")
    assert code == 2  # a bad input is a configuration error, named by its flag
    assert err.startswith("--evaluator: importing the evaluator no_such_module_xyz failed")
    assert not JobStore().exists("a") and not (home / "jobs" / "a").exists()  # refused jobs leave no trace


def test_missing_base_model_fails_validation(fake, home, tmp_path, capsys):
    code, _, err = create(capsys, tmp_path / "nowhere", "--job-id", "a")
    assert code == 2 and err.startswith(
        f"--base-model: base model not found: {tmp_path / 'nowhere'} (no such"
    )
    assert "hf download" not in err  # a folder is not fetched from the hub
    assert not JobStore().exists("a")


def test_cancel_from_another_process_stops_at_the_step_boundary(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "10")
    monkeypatch.setenv("FAKE_CANCEL_AT", "3")  # the trainer runs `openrft rftj cancel` during step 3
    code, _, err = create(capsys, model_dir, "--job-id", "a")
    assert code == 9  # not finished: `rftj create ... && openrft export ...` stops here
    record = JobStore().get("a")
    assert states(record) == [S.PENDING, S.VALIDATING, S.RUNNING, S.CANCELLED]
    assert record.message == "cancelled at step 3" and record.steps == 3
    assert (record.job_dir / "checkpoints" / "LATEST").read_text().strip() == "step-000003"
    assert "job a CANCELLED after 3 steps" in err


def test_a_cancel_during_the_last_step_says_the_job_finished_anyway(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "late-cancel")
    code, _, _ = create(capsys, model_dir, "--job-id", "a")
    record = JobStore().get("a")
    assert code == 0 and record.state is S.COMPLETED and record.steps == 4
    assert "a cancel came after the last step had begun" in record.message


def test_failed_job_resumes_from_its_checkpoint(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")  # crashes once, in step 2
    assert create(capsys, model_dir, "--job-id", "a", "--learning-rate", "5e-5")[0] == 7
    assert main(["rftj", "resume", "a", "--quiet"]) == 0
    record = JobStore().get("a")
    assert states(record) == [S.PENDING, S.VALIDATING, S.RUNNING, S.FAILED] + [
        S.PENDING,
        S.VALIDATING,
        S.RUNNING,
        S.COMPLETED,
    ]
    assert record.transitions[4].message == "resumed from FAILED"
    calls = [json.loads(line) for line in (record.job_dir / "fake_calls.jsonl").read_text().splitlines()]
    assert [(c["resume"], c["start"], c["lr"]) for c in calls] == [(False, 0, 5e-5), (True, 1, 5e-5)]
    assert main(["rftj", "resume", "a"]) == 7
    assert "nothing left to resume" in capsys.readouterr().err


def test_cancelled_job_needs_force_to_resume(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "6")
    monkeypatch.setenv("FAKE_CANCEL_AT", "2")
    create(capsys, model_dir, "--job-id", "a")
    assert main(["rftj", "resume", "a"]) == 7
    err = capsys.readouterr().err
    assert "cancelled jobs are not resumed" in err and "--force" in err
    monkeypatch.setenv("FAKE_CANCEL_AT", "0")
    assert main(["rftj", "resume", "a", "--force", "--quiet"]) == 0
    record = JobStore().get("a")
    assert record.state is S.COMPLETED and record.steps == 6
    assert record.transitions[4].message == "resumed from CANCELLED"


def test_existing_id_is_refused(fake, home, model_dir, capsys):
    create(capsys, model_dir, "--job-id", "a")
    code, _, err = create(capsys, model_dir, "--job-id", "a")
    assert code == 2 and "--job-id a: job a already exists" in err


def test_delete(fake, home, model_dir, capsys):
    create(capsys, model_dir, "--job-id", "a")
    assert main(["rftj", "delete", "a"]) == 0
    assert not (home / "jobs" / "a").exists()
    assert main(["rftj", "get", "a"]) == 7
    assert "no job with id 'a'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- detached


def test_detach_prints_the_id_at_once_and_runs_in_the_background(fake, home, model_dir, capsys):
    code, out, err = create(capsys, model_dir, "--job-id", "bg", "--detach")
    assert code == 0 and out == "bg\n" and "openrft rftj cancel bg" in err
    store = JobStore()
    record = wait_for(lambda: (r := store.get("bg")).state.is_terminal and r)
    assert states(record) == [S.PENDING, S.VALIDATING, S.RUNNING, S.COMPLETED]
    assert record.detached and record.pid != os.getpid()
    calls = [json.loads(line) for line in (record.job_dir / "fake_calls.jsonl").read_text().splitlines()]
    assert calls[0]["pid"] == record.pid
    log = record.log_path.read_text()
    assert "step 4" in log and "job bg COMPLETED after 4 steps" in log


def test_cancel_a_detached_job(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "200")
    monkeypatch.setenv("FAKE_DELAY", "0.05")
    create(capsys, model_dir, "--job-id", "bg", "--detach")
    store = JobStore()
    wait_for(lambda: store.get("bg").steps >= 2)
    assert main(["rftj", "cancel", "bg", "--wait"]) == 0
    out = capsys.readouterr().out
    record = store.get("bg")
    assert record.state is S.CANCELLED and f"job bg CANCELLED: cancelled at step {record.steps}" in out
    assert 2 <= record.steps < 200
    latest = (record.job_dir / "checkpoints" / "LATEST").read_text().strip()
    assert latest == f"step-{record.steps:06d}"
    assert main(["rftj", "cancel", "bg"]) == 7  # nothing to cancel any more


def test_killed_detached_job_reads_as_failed(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "500")
    monkeypatch.setenv("FAKE_DELAY", "0.05")
    create(capsys, model_dir, "--job-id", "bg", "--detach")
    store = JobStore()
    record = wait_for(lambda: (r := store.get("bg")).steps >= 1 and r)
    assert record.state is S.RUNNING
    os.kill(record.pid, signal.SIGKILL)
    record = wait_for(lambda: (r := store.get("bg")).state.is_terminal and r)
    assert record.state is S.FAILED and record.message == DIED_MESSAGE
    main(["rftj", "list"])
    assert "FAILED" in capsys.readouterr().out.splitlines()[1]
    # and it resumes from its last checkpoint
    monkeypatch.setenv("FAKE_STEPS", str(record.steps + 2))
    monkeypatch.setenv("FAKE_DELAY", "0")
    assert main(["rftj", "resume", "bg", "--quiet"]) == 0
    assert store.get("bg").state is S.COMPLETED


def test_sigterm_stops_a_detached_job_gracefully(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "500")
    monkeypatch.setenv("FAKE_DELAY", "0.05")
    create(capsys, model_dir, "--job-id", "bg", "--detach")
    store = JobStore()
    record = wait_for(lambda: (r := store.get("bg")).steps >= 1 and r)
    os.kill(record.pid, signal.SIGTERM)
    record = wait_for(lambda: (r := store.get("bg")).state.is_terminal and r)
    assert record.state is S.CANCELLED and record.message.startswith("cancelled at step")


# ----------------------------------------------------------------------------- looking at jobs


def test_rollouts_command_orders_and_filters(fake, home, model_dir, capsys):
    create(capsys, model_dir, "--job-id", "a")
    main(["rftj", "rollouts", "a", "--worst", "--limit", "2", "-o", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["step"], r["score"]) for r in rows] == [(4, 0.0), (4, 1 / 3)]
    main(["rftj", "rollouts", "a", "--step", "2", "--best", "--limit", "1"])
    text = capsys.readouterr().out
    assert "1 rollout of step 2 (best first)" in text
    assert "What is 2 + 3?" in text and "<answer>5</answer>" in text and "candidate 3" in text
    assert main(["rftj", "rollouts", "a", "--step", "9"]) == 7
    assert "no rollouts for step 9" in capsys.readouterr().err


def test_compare_names_exactly_the_differing_parameter_and_plots(fake, home, model_dir, capsys, tmp_path):
    create(capsys, model_dir, "--job-id", "base")
    create(capsys, model_dir, "--job-id", "fast", "--learning-rate", "2e-4")
    out_png = tmp_path / "cmp.png"
    assert main(["rftj", "compare", "base", "fast", "--out", str(out_png)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    start = lines.index("Parameters that differ:")
    assert lines[start + 1].split() == ["parameter", "base", "fast"]
    assert lines[start + 2].split() == ["learning-rate", "0.0001", "0.0002"]
    assert lines[start + 3] == ""
    assert "warning" not in err
    results = {line.split()[0]: line.split() for line in lines[lines.index("Results:") + 2 :] if line.strip()}
    assert results["base"][1:6] == [
        "COMPLETED",
        "4",
        "0",
        "1.000",
        "1.000",
    ]  # the fake trainer logs no rounds
    assert results["fast"][1:6] == ["COMPLETED", "4", "0", "1.000", "1.000"]
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_warns_when_more_than_one_parameter_differs(fake, home, model_dir, capsys, tmp_path):
    create(capsys, model_dir, "--job-id", "a")
    create(capsys, model_dir, "--job-id", "b", "--learning-rate", "2e-4", "--temperature", "1.0")
    main(["rftj", "compare", "a", "b", "--out", str(tmp_path / "c.png")])
    out, err = capsys.readouterr()
    assert "warning: 2 parameters differ (learning-rate, temperature); change one at a time" in err
    block = out[out.index("Parameters that differ:") : out.index("Results:")]
    assert [line.split()[0] for line in block.strip().splitlines()[2:]] == ["learning-rate", "temperature"]


def test_plot_command_writes_an_overlay(fake, home, model_dir, capsys, tmp_path):
    create(capsys, model_dir, "--job-id", "a")
    create(capsys, model_dir, "--job-id", "b", "--learning-rate", "5e-5")
    out_png = tmp_path / "plots" / "ab.png"
    assert main(["rftj", "plot", "a", "b", "--out", str(out_png)]) == 0
    assert out_png.stat().st_size > 10_000
    assert main(["rftj", "plot", "nope", "--out", str(out_png)]) == 7


def test_wandb_flag_logs_the_job_to_an_offline_run(fake, home, model_dir, capsys, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    code, _, err = create(capsys, model_dir, "--job-id", "wb", "--wandb", "--wandb-project", "rft-tests")
    assert code == 0
    record = JobStore().get("wb")
    run_id = json.loads((record.job_dir / "wandb_run.json").read_text())["id"]  # the run this job opened
    assert run_id.startswith("wb-")
    (run_dir,) = (record.job_dir / "wandb").glob(f"offline-run-*-{run_id}")
    assert f"W&B: offline run (no W&B API key) at {run_dir}" in err
    data = run_dir.joinpath(f"run-{run_id}.wandb").read_bytes()
    for text in (b"reward/mean", b"loss/policy", b"train/step", b"rft-tests", b'"learning_rate":0.0001'):
        assert text in data, text
    assert list((run_dir / "files" / "media" / "table" / "rollouts").glob("samples_*.table.json"))


def test_resume_from_a_folder_outside_the_store(fake, home, model_dir, capsys, tmp_path):
    folder = tmp_path / "old-job"
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    (folder / "checkpoints" / "LATEST").write_text("step-000002\n")
    code, _, _ = create(capsys, model_dir, "--resume-from", str(folder))
    assert code == 0
    record = JobStore().get("old-job")
    assert record.job_dir == folder and record.state is S.COMPLETED and record.resume
    calls = [json.loads(line) for line in (folder / "fake_calls.jsonl").read_text().splitlines()]
    assert [(c["resume"], c["start"]) for c in calls] == [(True, 2)]
    assert main(["rftj", "delete", "old-job"]) == 0
    assert (
        "its folder" in capsys.readouterr().out and folder.is_dir()
    )  # never deletes a folder it does not own
    assert main(["rftj", "create", "--resume-from", str(tmp_path / "nothing")]) == 7
    assert "neither a job id in the store nor a job folder" in capsys.readouterr().err
    # --dry-run checks the same, and accepts what a create would take: a folder with checkpoints, a job id
    for target, code in (
        (str(tmp_path / "nothing"), 7),
        ("no-such-job", 7),
        (str(folder), 0),
        ("old-job", 7),
    ):
        assert main(["rftj", "create", "--resume-from", target, "--dry-run"]) == code, target
        assert ("neither a job id" in capsys.readouterr().err) == (code == 7)


def test_wandb_without_the_extra_fails_validation_with_a_hint(fake, home, model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    code, _, err = create(capsys, model_dir, "--job-id", "a", "--wandb")
    assert code == 2 and "pip install 'openrft[wandb]'" in err
    assert err.startswith("--wandb needs the optional W&B extra, which is not installed")
    assert not JobStore().exists("a")  # refused at creation: nothing recorded


def test_output_piped_into_a_closed_reader_ends_quietly(fake, home, model_dir, capsys):
    import subprocess

    for n in range(40):
        JobStore().create(f"job-{n:02d}", runner.build_config({}, {"base_model": str(model_dir)})[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrft.cli", "rftj", "list", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # like `| head -0`
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err


def test_resuming_a_job_stored_before_a_parameter_existed(fake, home, model_dir, capsys, monkeypatch):
    import sqlite3

    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "a")
    store = JobStore()
    config = store.get("a").config
    del config["training"]["seed"]  # as if "seed" were added after the job was created
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE jobs SET config_json = ? WHERE id = 'a'", (json.dumps(config),))
    assert main(["rftj", "resume", "a", "--quiet"]) == 0
    assert "resolves" not in capsys.readouterr().err  # no false "changed" warning
    config["training"]["learning_rate"] = 3e-4  # a stored value this version resolves differently
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE jobs SET config_json = ?, state = 'FAILED' WHERE id = 'a'", (json.dumps(config),))
    assert main(["rftj", "resume", "a", "--quiet"]) == 0
    assert "warning: this openrft version resolves learning-rate differently" in capsys.readouterr().err


def test_detach_validates_before_it_detaches(fake, home, model_dir, capsys, tmp_path):
    code, out, err = create(
        capsys, model_dir, "--job-id", "a", "--detach", "--dataset", str(tmp_path / "none.jsonl")
    )
    assert code == 2 and out == "" and err.startswith("--")  # no job id printed, no worker started
    assert not JobStore().exists("a") and not (home / "jobs" / "a").exists()


def test_a_foreground_job_stops_gracefully_on_sigterm_as_on_ctrl_c():
    import signal
    import threading

    from openrft.jobs.runner import graceful_interrupt

    before = signal.getsignal(signal.SIGTERM)
    recorded = threading.Event()
    with graceful_interrupt(on_stop=recorded.set) as interrupted:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's or `kill`'s stop: the job's clean-up must run
        assert interrupted == [True]
        assert recorded.wait(5)  # the request is recorded too (off the handler): `rftj list` says CANCELLING
        with pytest.raises(KeyboardInterrupt):  # a second one aborts
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_detached_resume_checks_the_inputs_before_going_to_the_background(
    fake, home, model_dir, capsys, monkeypatch, tmp_path
):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n' * 4)
    monkeypatch.setenv("FAKE_MODE", "crash")
    code = main(["rftj", "create", "--base-model", str(model_dir), "--quiet", "--dataset", str(data),
                 "--evaluator", "arithmetic", "--job-id", "a"])  # fmt: skip
    assert code == 7
    capsys.readouterr()
    data.unlink()  # the dataset is hashed, not copied: the job cannot go on without it
    assert main(["rftj", "resume", "a", "--detach"]) == 2
    err = capsys.readouterr().err
    assert "--dataset" in err and "running in the background" not in err
    record = JobStore().get("a")
    assert record.state is S.FAILED and record.transitions[-2].message == "resumed from FAILED"
