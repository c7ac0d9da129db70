"""W&B logging in offline mode: a real offline run directory holding the config, metrics and rollout tables.

The run file (``run-ID.wandb``) is read back with W&B's own protobuf records, framed
as a LevelDB log (32 KiB blocks of ``crc32 | length | type`` chunks) after a 7-byte header.
"""

from __future__ import annotations

import json
import struct

import pytest

wandb = pytest.importorskip("wandb")

from openrft.config import build_config  # noqa: E402
from openrft.jobs.runner import start_wandb  # noqa: E402
from openrft.tracking.wandb_sink import choose_mode  # noqa: E402

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer too short for a chunk header: skip to the next block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            parts = chunk
            continue
        elif kind == MIDDLE:
            parts += chunk
            continue
        elif kind == LAST:
            payload, parts = parts + chunk, b""
        else:
            break
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


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
    sink = start_wandb(cfg, job_id="job-1", job_dir=job_dir, rollout_every=2, probe=lambda url: True)
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
    assert not any("kl/mean" in h or "eval/reward" in h for h in history)  # non-finite / missing dropped
    tables = [h for h in history if "rollouts/samples/_type" in h or "rollouts/samples" in h]
    assert [h["train/step"] for h in tables] == [1, 3]
    assert config["job_id"] == "job-1"
    assert config["training"]["learning_rate"] == 2e-4
    assert config["wandb"]["wandb_project"] == "rft-tests"
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


def test_a_resumed_job_does_not_send_replayed_lines_and_the_run_ends_as_the_job(offline_env, tmp_path):
    cfg = build_config({}, {"wandb": True})[0]
    sink = start_wandb(cfg, job_id="job-3", job_dir=tmp_path / "job", rollout_every=1, probe=lambda url: True)
    sink.skip_replayed(lines=2, through_step=3)  # the job logged steps 2 and 3 after its checkpoint at 1
    for step in (2, 3, 4):
        sink.log_rollouts(step, [{"prompt": "p", "completion": "c", "score": 1.0, "valid": True}])
        sink.log(step, metrics(step))
    sink.job_ended("FAILED")
    sink.close()
    history, _ = history_and_config(sink.run_dir)
    assert [h["train/step"] for h in history if "reward/mean" in h] == [4]
    assert [h["train/step"] for h in history if "rollouts/samples/_type" in h or "rollouts/samples" in h] == [
        4
    ]
    exit_code, summary = run_end(sink.run_dir)
    assert exit_code == 1 and summary["job/state"] == "FAILED"


def test_w_and_b_s_own_environment_variables_apply(offline_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_NAME", "a readable name")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    sink = start_wandb(build_config({}, {"wandb": True})[0], job_id="job-4", job_dir=tmp_path / "job",
                       probe=lambda url: True)  # fmt: skip
    assert (sink.run.project, sink.run.name, sink.run.id) == ("from-env", "a readable name", "job-4")
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
