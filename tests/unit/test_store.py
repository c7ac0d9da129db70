"""The job store: lifecycle rules, timestamps, dead-process detection, cancel flags, secrets, resume rules."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from openrft.config import build_config
from openrft.errors import JobError
from openrft.jobs.states import ACTIVE, DIED_MESSAGE, TRANSITIONS, JobState
from openrft.jobs.store import JobStore, config_values

S = JobState
# How to reach each state from PENDING along allowed transitions.
PATHS = {
    S.PENDING: [],
    S.VALIDATING: [S.VALIDATING],
    S.RUNNING: [S.VALIDATING, S.RUNNING],
    S.COMPLETED: [S.VALIDATING, S.RUNNING, S.COMPLETED],
    S.EARLY_STOPPED: [S.VALIDATING, S.RUNNING, S.EARLY_STOPPED],
    S.CANCELLED: [S.VALIDATING, S.RUNNING, S.CANCELLED],
    S.FAILED: [S.VALIDATING, S.FAILED],
}


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "home")


def cfg(**values):
    return build_config({}, values)[0]


def job_in(store: JobStore, state: JobState, job_id: str = "j1"):
    store.create(job_id, cfg(learning_rate=2e-4))
    for step in PATHS[state]:
        store.transition(job_id, step)
    return store.get(job_id)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_new_job_is_pending_with_config_pid_and_folder(store):
    record = store.create("j1", cfg(learning_rate=2e-4, response_candidates_count=4))
    assert record.state is S.PENDING
    assert record.pid == os.getpid()
    assert record.job_dir == store.root / "jobs" / "j1" and record.job_dir.is_dir()
    assert record.config["training"]["learning_rate"] == 2e-4
    assert record.config["rollout"]["response_candidates_count"] == 4
    assert record.given == {"learning_rate": 2e-4, "response_candidates_count": 4}
    assert (record.base_model, record.method) == ("smollm2-135m-instruct", "grpo")
    assert [t.state for t in record.transitions] == [S.PENDING]
    with pytest.raises(JobError, match="job j1 already exists"):
        store.create("j1", cfg())


def test_database_uses_wal(store):
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_happy_path_records_every_transition_with_increasing_times(store):
    before = time.time()
    store.create("j1", cfg())
    for state in (S.VALIDATING, S.RUNNING, S.COMPLETED):
        store.transition("j1", state, "done" if state is S.COMPLETED else None)
    record = store.get("j1")
    assert [t.state for t in record.transitions] == [S.PENDING, S.VALIDATING, S.RUNNING, S.COMPLETED]
    times = [t.at for t in record.transitions]
    assert before <= times[0] and times == sorted(times) and times[-1] <= time.time()
    assert record.transitions[-1].message == "done" and record.message == "done"
    assert record.updated_at == times[-1]


@pytest.mark.parametrize("start", list(S), ids=str)
@pytest.mark.parametrize("target", list(S), ids=str)
def test_every_transition_is_allowed_or_refused_by_the_table(store, start, target):
    job_in(store, start)
    if target in TRANSITIONS[start]:
        record = store.transition("j1", target, "why")
        assert record.state is target
        assert (record.transitions[-1].state, record.transitions[-1].message) == (target, "why")
    else:
        with pytest.raises(JobError, match=f"job j1 is {start}; it cannot become {target}"):
            store.transition("j1", target)
        assert store.get("j1").state is start


def test_lifecycle_table_matches_the_reference_states():
    assert {s.value for s in S} == {
        "PENDING",
        "VALIDATING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "EARLY_STOPPED",
    }
    assert {S.PENDING, S.VALIDATING, S.RUNNING} == ACTIVE
    assert not TRANSITIONS[S.COMPLETED] and not TRANSITIONS[S.EARLY_STOPPED]


@pytest.mark.parametrize("state", sorted(ACTIVE), ids=str)
def test_active_job_whose_process_died_reads_as_failed(store, state):
    job_in(store, state)
    store.set_process("j1", dead_pid())
    record = store.get("j1")
    assert record.state is S.FAILED and record.message == DIED_MESSAGE
    assert (record.transitions[-1].state, record.transitions[-1].message) == (S.FAILED, DIED_MESSAGE)
    # recorded once, not on every read
    assert [t.state for t in store.get("j1").transitions].count(S.FAILED) == 1


def test_a_job_whose_process_died_while_it_was_cancelling_ends_cancelled(store):
    from openrft.jobs.store import CANCEL_DIED_MESSAGE

    for job_id in ("asked", "not-asked"):
        job_in(store, S.RUNNING, job_id)
    store.request_cancel("asked")
    for job_id in ("asked", "not-asked"):
        store.set_process(job_id, dead_pid())
    asked, not_asked = store.get("asked"), store.get("not-asked")
    assert asked.state is S.CANCELLED and asked.message == CANCEL_DIED_MESSAGE
    assert (asked.transitions[-1].state, asked.transitions[-1].message) == (S.CANCELLED, CANCEL_DIED_MESSAGE)
    assert not_asked.state is S.FAILED and not_asked.message == DIED_MESSAGE


def test_list_reconciles_dead_processes_and_leaves_live_and_finished_jobs(store):
    job_in(store, S.RUNNING, "alive")
    job_in(store, S.RUNNING, "dead")
    job_in(store, S.COMPLETED, "done")
    store.set_process("dead", dead_pid())
    store.set_process("done", dead_pid())
    states = {r.id: r.state for r in store.list()}
    assert states == {"alive": S.RUNNING, "dead": S.FAILED, "done": S.COMPLETED}


def test_reused_pid_counts_as_dead(store):
    job_in(store, S.RUNNING)
    with sqlite3.connect(store.db_path) as db:  # our own pid, but recorded as started an hour earlier
        db.execute("UPDATE jobs SET pid_started = pid_started - 3600 WHERE id = 'j1'")
    assert store.get("j1").state is S.FAILED


def test_a_clock_step_does_not_make_a_live_job_dead(store):
    job_in(store, S.RUNNING)
    with sqlite3.connect(store.db_path) as db:  # our own pid, its start read before a 5-second clock step
        db.execute("UPDATE jobs SET pid_started = pid_started - 5 WHERE id = 'j1'")
    assert store.get("j1").state is S.RUNNING


def test_cancel_sets_a_flag_only_for_active_jobs(store):
    job_in(store, S.RUNNING)
    assert not store.cancel_requested("j1")
    assert store.request_cancel("j1").cancel_requested
    assert store.cancel_requested("j1")
    job_in(store, S.COMPLETED, "j2")
    with pytest.raises(JobError, match="job j2 is COMPLETED; only PENDING, VALIDATING or RUNNING"):
        store.request_cancel("j2")


@pytest.mark.parametrize(
    ("state", "force", "error"),
    [
        (S.FAILED, False, None),
        (S.CANCELLED, False, "cancelled jobs are not resumed"),
        (S.CANCELLED, True, None),
        (S.COMPLETED, True, "nothing left to resume"),
        (S.EARLY_STOPPED, True, "nothing left to resume"),
        (S.RUNNING, True, "still running"),
    ],
)
def test_resume_rules(store, state, force, error):
    job_in(store, state)
    if error:
        with pytest.raises(JobError, match=error):
            store.prepare_resume("j1", force=force)
        return
    record = store.prepare_resume("j1", force=force)
    assert record.state is S.PENDING and record.resume and not record.cancel_requested
    assert record.transitions[-1].message == f"resumed from {state}"


def test_a_resume_or_delete_racing_another_resume_changes_nothing(store, monkeypatch):
    stale = job_in(store, S.FAILED)  # what both commands read before either wrote
    store.prepare_resume("j1")
    monkeypatch.setattr(store, "get", lambda *a, **k: stale)
    with pytest.raises(JobError, match="became PENDING while being resumed"):
        store.prepare_resume("j1")
    with pytest.raises(JobError, match="is PENDING; cancel it first"):
        store.delete("j1")
    monkeypatch.undo()
    assert store.get("j1").state is S.PENDING and store.get("j1").job_dir.is_dir()


def test_progress_and_outputs(store, tmp_path):
    job_in(store, S.RUNNING)
    store.record_progress("j1", 3, 0.25)
    store.record_progress("j1", 4, None)  # an eval-only line keeps the last reward
    store.set_output("j1", tmp_path / "out")
    record = store.get("j1")
    assert (record.steps, record.last_reward, record.output_dir) == (4, 0.25, tmp_path / "out")


def test_delete_removes_record_and_folder_but_not_while_active(store):
    record = job_in(store, S.RUNNING)
    (record.job_dir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(JobError, match="cancel it first"):
        store.delete("j1")
    store.transition("j1", S.CANCELLED)
    store.delete("j1")
    assert not record.job_dir.exists() and not store.exists("j1")
    with pytest.raises(JobError, match="no job with id 'j1'"):
        store.get("j1")


def test_api_key_is_kept_out_of_the_database_in_a_private_file(store):
    config = cfg(wandb=True, wandb_api_key="sk-secret-123", wandb_project="p")
    record = store.create("j1", config)
    assert b"sk-secret-123" not in store.db_path.read_bytes()
    wal = store.db_path.with_name("jobs.db-wal")
    assert not wal.exists() or b"sk-secret-123" not in wal.read_bytes()
    assert record.config["wandb"]["wandb_api_key"] == "********"
    assert "wandb_api_key" not in record.given
    secrets = record.job_dir / "secrets.json"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert store.secrets("j1") == {"wandb_api_key": "sk-secret-123"}


def test_config_values_keep_only_what_the_user_set():
    config = cfg(warm_start_from="/some/adapter", temperature=1.0)
    resolved, given, secrets = config_values(config)
    assert given == {"warm_start_from": "/some/adapter", "temperature": 1.0}
    assert resolved["training"]["base_model"] == "smollm2-135m-instruct" and secrets == {}
    # Rebuilding from the given values gives the same config (a full dump would trip the
    # --warm-start-from / --base-model rule).
    assert build_config({}, given)[0] == config


def test_a_warm_started_job_records_the_base_model_and_lora_shape_of_its_adapter(tmp_path):
    from openrft.config import flatten
    from openrft.jobs.repair import saved_values
    from openrft.jobs.snapshot import refuse_fixed_changes

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    shape = {"r": 4, "lora_alpha": 8, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    (adapter / "adapter_config.json").write_text(json.dumps(shape))
    config = cfg(warm_start_from=str(adapter), temperature=1.0)
    resolved, given, _ = config_values(config)
    trained = {k: resolved["training"][k] for k in ("base_model", "lora_rank", "lora_alpha")}
    assert trained == {"base_model": "smollm2-135m-instruct", "lora_rank": 4, "lora_alpha": 8}
    assert given == {"warm_start_from": str(adapter), "temperature": 1.0}  # not flags the user gave
    (tmp_path / "job.json").write_text(json.dumps(resolved))  # as the job writes it
    assert build_config({}, saved_values(tmp_path))[0] == config  # a folder's job rebuilds (repair, resume)
    again = flatten(config_values(build_config({}, given)[0])[0])
    refuse_fixed_changes(flatten(resolved), again)  # a resume without flags changes nothing
    server = {**shape, "base_model_name_or_path": "/srv/openrft/models/smollm2-135m-instruct"}  # its copy
    (adapter / "adapter_config.json").write_text(json.dumps(server))
    assert config_values(config)[0]["training"]["base_model"] == "smollm2-135m-instruct"  # not a path there
    (adapter / "adapter_config.json").unlink()  # gone: the resume fails on the adapter, not on its rank
    refuse_fixed_changes(flatten(resolved), flatten(config_values(build_config({}, given)[0])[0]))


CONCURRENT_WORKER = """
import sys, time
from openrft.config import build_config
from openrft.jobs.store import JobStore
from openrft.jobs.states import JobState as S
root, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = JobStore(root)
cfg = build_config({}, {"seed": 1})[0]
for i in range(count):
    job = f"{name}-{i}"
    store.create(job, cfg)
    for state in (S.VALIDATING, S.RUNNING):
        store.transition(job, state)
    for step in range(1, 4):
        store.record_progress(job, step, step / 10)
        store.cancel_requested(job)
    store.transition(job, S.COMPLETED)
    assert len(store.list()) >= i + 1
print("ok", name)
"""


def test_concurrent_writers_and_readers_in_several_processes(store, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(CONCURRENT_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(store.root), f"w{n}", "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(4)
    ]
    seen = 0
    while any(p.poll() is None for p in procs):  # read while they write
        seen = max(seen, len(store.list()))
    results = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    records = store.list()
    assert len(records) == 32 and seen <= 32
    for record in records:
        full = store.get(record.id)
        assert full.state is S.COMPLETED and (full.steps, full.last_reward) == (3, 0.3)
        assert [t.state for t in full.transitions] == [S.PENDING, S.VALIDATING, S.RUNNING, S.COMPLETED]
    assert json.loads(json.dumps(records[0].to_json()))["state"] == "COMPLETED"


def test_a_disk_io_error_on_a_nearly_full_disk_is_called_full_not_damage(tmp_path, monkeypatch):
    import sqlite3
    from collections import namedtuple

    import openrft.jobs.store_errors as errors

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda _: usage(10 << 30, 10 << 30, 20 << 10))
    error = errors.store_error(tmp_path / "jobs.db", sqlite3.OperationalError("disk I/O error"))
    assert "is full" in error.message and "not damaged" in error.hint
    assert error.exit_code == 1  # the README's code for a full disk, not a job's 7
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda _: usage(10 << 30, 1 << 30, 9 << 30))
    assert (
        "damaged"
        in errors.store_error(tmp_path / "jobs.db", sqlite3.OperationalError("disk I/O error")).message
    )  # (no file there to check)
    JobStore(tmp_path)  # a sound store whose write was refused (ulimit -f): not damage, no repair
    refused = errors.store_error(tmp_path / "jobs.db", sqlite3.OperationalError("disk I/O error"))
    assert "could not be written (disk I/O error), though the file itself is sound" in refused.message
    assert "ulimit -f" in refused.hint and "repair" not in refused.message


def test_a_job_missing_here_while_a_server_is_named_says_where_the_command_looked(store, monkeypatch):
    monkeypatch.delenv("OPENRFT_SERVER", raising=False)
    with pytest.raises(JobError) as plain:
        store.get("elsewhere")
    assert plain.value.hint == "see the jobs with: openrft rftj list"
    monkeypatch.setenv("OPENRFT_SERVER", "http://127.0.0.1:8321")
    with pytest.raises(JobError) as named:
        store.get("elsewhere")
    assert (
        "reads this machine's jobs; OPENRFT_SERVER=http://127.0.0.1:8321 is used only by" in named.value.hint
    )


def test_a_full_disk_reported_by_any_library_is_named_so():
    from openrft.jobs.outcome import failure_message

    for exc in (OSError(28, "No space left on device"), Exception("No space left on device (os error 28)"),
                RuntimeError("SafetensorError: IoError: os error 28")):  # fmt: skip
        assert "no space left on the disk holding the job" in failure_message(
            exc
        ) and "resume it" in failure_message(exc)
    assert failure_message(ValueError("bad")) == "ValueError: bad"


def test_a_file_size_limit_is_not_called_damage(tmp_path):
    env = {**os.environ, "OPENRFT_HOME": str(tmp_path)}
    made = [sys.executable, "-m", "openrft.cli", "rftj", "list"]  # a sound store, closed (no -shm file left)
    subprocess.run(made, env=env, capture_output=True, check=True, timeout=120)
    command = f"ulimit -f 10; exec {sys.executable} -m openrft.cli rftj list"  # SQLite's -shm is 32 KiB
    run = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    if run.returncode == 0:
        pytest.skip("this file system let SQLite write under the limit")
    assert "the file itself is sound" in run.stderr and "rftj repair" not in run.stderr, run.stderr
