"""W&B logging in offline mode: a real offline run directory holding the config, metrics and rollout tables.

The run file (``run-ID.wandb``) is read back record by record (W&B's own protobuf records in its
transaction log, :func:`openrft.tracking.wandb_sink.run_records`).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

wandb = pytest.importorskip("wandb")

from openrft.config import build_config  # noqa: E402
from openrft.jobs.runner import resolved_values, start_wandb  # noqa: E402
from openrft.tracking.wandb_sink import choose_mode, run_records  # noqa: E402

read_records = run_records  # W&B's offline run file, record by record


def history_and_config(run_dir):
    (run_file,) = run_dir.glob("run-*.wandb")
    history, config = [], {}
    for record in read_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return history, config


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    for key in (
        "WANDB_API_KEY",
        "WANDB_MODE",
        "WANDB_BASE_URL",
        "WANDB_DIR",
        "WANDB_RUN_ID",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_NAME",
        "WANDB_TAGS",
        "WANDB_RUN_GROUP",
        "WANDB_NOTES",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # no ~/.netrc login
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "user" / key.lower()))


def metrics(step):
    return {
        "reward/mean": 0.25 * step,
        "loss/policy": 1.0 / step,
        "kl/mean": float("nan"),
        "eval/reward": None,
    }


def test_offline_run_holds_config_metrics_and_rollout_tables(offline_env, tmp_path, capsys):
    cfg = build_config(
        {}, {"wandb": True, "wandb_project": "rft-tests", "learning_rate": 2e-4, "wandb_api_key": None}
    )[0]
    job_dir = tmp_path / "job"
    prepared = SimpleNamespace(settings=cfg.settings())  # what the runner passes: the job's resolved settings
    sink = start_wandb(cfg, job_id="job-1", job_dir=job_dir, rollout_every=2, probe=lambda url: True,
                       resolved=resolved_values(prepared))  # fmt: skip
    err = capsys.readouterr().err
    assert sink.run_dir.parent == job_dir / "wandb" and sink.run_dir.name.startswith("offline-run-")
    assert f"W&B: offline run (no W&B API key) at {sink.run_dir}" in err and "wandb sync" in err
    rows = [
        {
            "prompt": "What is 2 + 2?",
            "completion": f"<answer>{i}</answer>",
            "score": float(i == 4),
            "valid": True,
            "reason": f"r{i}",
        }
        for i in range(3, 6)
    ]
    for step in (1, 2, 3, 4):
        sink.log_rollouts(step, rows)  # tables at steps 1 and 3 (every 2)
        sink.log(step, metrics(step))
    sink.close()
    sink.close()  # closing twice is harmless

    history, config = history_and_config(sink.run_dir)
    logged = [(h["train/step"], h["reward/mean"], h["loss/policy"]) for h in history if "reward/mean" in h]
    assert logged == [(1, 0.25, 1.0), (2, 0.5, 0.5), (3, 0.75, 1 / 3), (4, 1.0, 0.25)]
    assert all(h["kl/mean"] != h["kl/mean"] for h in history if "reward/mean" in h)  # NaN sent as NaN
    assert not any("eval/reward" in h for h in history)  # a missing value is left out
    tables = [h for h in history if "rollouts/samples/_type" in h or "rollouts/samples" in h]
    assert [h["train/step"] for h in tables] == [1, 3]
    assert config["job_id"] == "job-1"
    assert config["training"]["learning_rate"] == 2e-4
    assert config["wandb"]["wandb_project"] == "rft-tests"
    # --rl-kl-beta 0 as given, and what GRPO runs with for it
    assert config["loss"]["rl_kl_beta"] == 0 and config["resolved"]["kl_coef"] == 0.001
    assert (config["resolved"]["clip_low"], config["resolved"]["clip_high"]) == (0.2, 0.2)
    files = (sink.run_dir / "files" / "media" / "table").glob("rollouts/samples_*.table.json")
    by_step = {t["data"][0][0]: t for t in (json.loads(f.read_text()) for f in files)}
    assert sorted(by_step) == [1, 3]
    table = by_step[1]
    assert table["columns"] == ["step", "prompt", "completion", "score", "valid", "reason"]
    assert [row[2] for row in table["data"]] == [
        "<answer>3</answer>",
        "<answer>4</answer>",
        "<answer>5</answer>",
    ]
    assert [row[3] for row in table["data"]] == [0.0, 1.0, 0.0]


def test_api_key_is_never_logged_and_unreachable_server_means_offline(offline_env, tmp_path, capsys):
    cfg = build_config({}, {"wandb": True, "wandb_api_key": "sk-very-secret"})[0]
    sink = start_wandb(cfg, job_id="job-2", job_dir=tmp_path / "job", probe=lambda url: False)
    sink.log(1, {"reward/mean": 0.5})
    sink.close()
    assert "api.wandb.ai cannot be reached" in capsys.readouterr().err
    for path in sink.run_dir.rglob("*"):
        if path.is_file():
            assert b"sk-very-secret" not in path.read_bytes(), path
    _, config = history_and_config(sink.run_dir)
    assert config["wandb"]["wandb_api_key"] == "********"


def test_mode_choice(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert choose_mode(None, probe=lambda url: True) == ("offline", "no W&B API key")
    assert choose_mode("k", probe=lambda url: True) == ("online", "API key found")
    assert choose_mode("k", probe=lambda url: False)[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_mode("k", probe=lambda url: True) == ("disabled", "WANDB_MODE is set")


def run_end(run_dir):
    """The run file's exit record and final summary."""
    (run_file,) = run_dir.glob("run-*.wandb")
    exit_code, summary = None, {}
    for record in read_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            exit_code = record.exit.exit_code
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    return exit_code, summary


def test_a_resumed_job_sends_what_its_run_missed_once_and_the_run_ends_as_the_job(
    offline_env, tmp_path, capsys
):
    from openrft.tracking.sinks import JsonlSink

    cfg, job = build_config({}, {"wandb": True})[0], tmp_path / "job"
    first = start_wandb(cfg, job_id="job-3", job_dir=job, rollout_every=1, probe=lambda url: True)
    lines = JsonlSink(job / "logs")
    for step in (1, 2, 3):
        lines.log(step, metrics(step))
        first.log_rollouts(step, [{"prompt": "p", "completion": "c", "score": 1.0, "valid": True}])
        if step < 3:  # step 3's table reached the run, its metrics row never did (the process was killed)
            first.log(step, metrics(step))
    first.job_ended("FAILED")
    first.close()
    again = start_wandb(
        cfg, job_id="job-3", job_dir=job, rollout_every=1, resuming=True, probe=lambda url: True
    )
    assert again.run.id == first.run.id and again.run.id.startswith("job-3-")  # the same run
    said = "".join(capsys.readouterr())
    assert f"`wandb sync {first.run_dir} {again.run_dir}`" in said  # both parts, in order: one run
    assert again.catch_up(lines.metrics_path) == 1  # the line it missed; not the two it holds
    for step in (2, 4):  # the job replays step 2 after its checkpoint, then goes on
        again.log_rollouts(step, [{"prompt": "p", "completion": "c", "score": 1.0, "valid": True}])
        again.log(step, metrics(step))
    again.job_ended("COMPLETED")
    again.close()
    history, _ = history_and_config(again.run_dir)
    assert [h["train/step"] for h in history if "reward/mean" in h] == [3, 4]
    assert [h["train/step"] for h in history if "rollouts/samples/_type" in h or "rollouts/samples" in h] == [
        4
    ]
    assert run_end(first.run_dir)[0] == 1 and run_end(again.run_dir) == (0, {**run_end(again.run_dir)[1]})
    assert run_end(again.run_dir)[1]["job/state"] == "COMPLETED"


def test_an_online_run_resumes_after_the_last_step_it_holds(tmp_path):
    from types import SimpleNamespace

    from openrft.tracking.sinks import JsonlSink
    from openrft.tracking.wandb_sink import METRICS_STEP, WandbSink

    logged = []
    run = SimpleNamespace(summary={METRICS_STEP: 5}, log=logged.append, define_metric=lambda *a, **k: None)
    sink = WandbSink(run)
    lines = JsonlSink(tmp_path)
    for step in range(3, 8):
        lines.log(step, {**metrics(step), "loss/policy": float("nan") if step == 7 else 1.0})
    assert sink.catch_up(lines.metrics_path) == 2
    sink.log(5, metrics(5))  # replayed: the run has it
    sink.log(8, {**metrics(8), "loss/policy": float("inf")})
    assert [entry["train/step"] for entry in logged] == [6, 7, 8]
    assert "loss/policy" not in logged[1]  # the file holds null for it: nothing to send
    assert logged[2]["loss/policy"] == float("inf")  # a live non-finite value reaches W&B as it is


def test_a_new_job_never_writes_into_an_older_jobs_run_and_a_resume_keeps_its_identity(
    offline_env, tmp_path, monkeypatch
):
    cfg = build_config({}, {"wandb": True})[0]
    ids = set()
    for folder in ("a", "b"):  # the same job id, used again (after rftj delete, on another machine)
        sink = start_wandb(cfg, job_id="job-5", job_dir=tmp_path / folder, probe=lambda url: True)
        ids.add(sink.run.id)
        sink.close()
    assert len(ids) == 2 and all(i.startswith("job-5-") for i in ids)
    for key, value in {"WANDB_RUN_ID": "my-run", "WANDB_NAME": "pretty", "WANDB_TAGS": "t1, t2",
                       "WANDB_RUN_GROUP": "grp", "WANDB_PROJECT": "proj"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    sink = start_wandb(cfg, job_id="job-6", job_dir=tmp_path / "c", probe=lambda url: True)
    sink.close()
    for key in ("WANDB_RUN_ID", "WANDB_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(key)  # resumed from another shell, whose other variables say otherwise
    for key, value in {"WANDB_TAGS": "t9", "WANDB_RUN_GROUP": "g2", "WANDB_NOTES": "n2"}.items():
        monkeypatch.setenv(key, value)
    again = start_wandb(cfg, job_id="job-6", job_dir=tmp_path / "c", resuming=True, probe=lambda url: True)
    run = again.run
    assert (run.id, run.name, run.project, run.group, list(run.tags)) == ("my-run", "pretty", "proj", "grp",
                                                                           ["t1", "t2"])  # fmt: skip
    assert not run.notes  # none was given at creation: this shell's WANDB_NOTES does not count
    again.close()


def test_a_w_and_b_mode_it_would_refuse_stops_the_job_at_creation(offline_env, monkeypatch):
    from openrft.errors import ConfigError
    from openrft.tracking.wandb_sink import check_mode

    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match="WANDB_MODE=bogus is not a W&B mode"):
        check_mode()
    monkeypatch.setenv("WANDB_MODE", "online")  # forced, but nothing answers: offline at once
    assert choose_mode("k", probe=lambda url: False)[0] == "offline"


def test_w_and_b_s_own_environment_variables_apply(offline_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_NAME", "a readable name")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    sink = start_wandb(build_config({}, {"wandb": True})[0], job_id="job-4", job_dir=tmp_path / "job",
                       probe=lambda url: True)  # fmt: skip
    assert (sink.run.project, sink.run.name) == ("from-env", "a readable name")
    assert sink.run.id.startswith("job-4-")  # a new job's own run
    assert sink.run_dir.parent == tmp_path / "elsewhere" / "wandb"
    sink.close()
    exit_code, _ = run_end(sink.run_dir)
    assert exit_code == 0


def test_an_online_run_w_and_b_refuses_goes_on_offline(offline_env, tmp_path, monkeypatch, capsys):
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b'{"errors": [{"message": "user is not logged in"}]}'
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        cfg = build_config({}, {"wandb": True, "wandb_api_key": "x" * 40})[0]
        sink = start_wandb(cfg, job_id="job-5", job_dir=tmp_path / "job", probe=lambda url: True)
        sink.log(1, {"reward/mean": 0.5})
        sink.close()
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "online run failed" in err and "logging offline instead" in err
    history, _ = history_and_config(sink.run_dir)
    assert [h["reward/mean"] for h in history if "reward/mean" in h] == [0.5]
