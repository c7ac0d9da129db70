"""One writer per job folder, and nothing of one job lost to another: the folder lock that a running job
holds (resume, ``--resume-from`` and ``repair`` respect it), ``--resume-from`` on a folder continuing the
folder's own job, output folders that belong to another job, checkpoints a killed writer left, and
evaluator workers that outlive a killed job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import test_jobs_lifecycle as lifecycle

from openrft.cli import main
from openrft.errors import ConfigError
from openrft.jobs.states import JobState as S
from openrft.jobs.store import JobStore
from openrft.paths import folder_in_use, folder_lock
from openrft.train.checkpoint import latest_checkpoint
from openrft.train.output_folder import check_output_folder

create = lifecycle.create
fake, home, model_dir = lifecycle.fake, lifecycle.home, lifecycle.model_dir  # the fixtures


def test_a_folder_a_process_trains_in_is_never_given_a_second_writer(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "j")
    store = JobStore()
    job_dir = store.get("j").job_dir
    assert store.get("j").state is S.FAILED and folder_in_use(job_dir) is None
    with folder_lock(job_dir):  # as a process training in it holds it
        assert folder_in_use(job_dir, settle=0) == os.getpid()
        assert main(["rftj", "resume", "j"]) != 0
        assert "a process is training in its folder" in capsys.readouterr().err
        assert store.get("j").state is S.FAILED  # nothing was changed
        assert main(["rftj", "repair", "--force"]) != 0  # it would lose what the running job records
        assert "jobs are running in their folders (j)" in capsys.readouterr().err
        assert store.get("j").state is S.FAILED
        monkeypatch.setenv("OPENRFT_HOME", str(job_dir.parent.parent / "another-home"))  # the folder itself
        assert main(["rftj", "create", "--resume-from", str(job_dir), "--quiet"]) != 0
        assert "a process is training in that folder now" in capsys.readouterr().err


def test_resume_from_a_folder_continues_that_folders_job(
    fake, home, model_dir, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "old", "--learning-rate", "3e-4", "--epochs", "2")
    folder = JobStore().get("old").job_dir
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "other-home"))
    assert main(["rftj", "create", "--resume-from", str(folder), "--lora-rank", "16", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(
        "--lora-rank: a resumed job keeps the LoRA rank"
    )  # as for a stored job
    code = main(["rftj", "create", "--resume-from", str(folder), "--epochs", "3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((folder / "job.json").read_text())["training"]
    assert saved["base_model"] == str(model_dir) and saved["learning_rate"] == 3e-4  # the folder's own job
    assert saved["epochs"] == 3  # with the flag given now


def test_an_output_folder_of_another_job_is_refused(tmp_path):
    owner = tmp_path / "jobs" / "a"
    owner.mkdir(parents=True)
    (owner / "job.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    for name, text in (("adapter_config.json", "{}"), ("job.json", "{}"), (".openrft-job", f"{owner}\n")):
        (out / name).write_text(text)
    with pytest.raises(ConfigError, match="is the output of job a"):
        check_output_folder(out, [])
    check_output_folder(out, [], job_dir=owner)  # its own job, resumed, may write it again
    (owner / "job.json").unlink()  # that job is gone: the folder is an earlier output like any other
    check_output_folder(out, [])


def test_an_earlier_output_with_files_of_the_users_added_or_without_openrfts_mark_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    written = ["adapter_config.json", "adapter_model.safetensors", "job.json", "README.md"]
    for name in written:
        (out / name).write_text("{}")
    with pytest.raises(ConfigError, match="exists and is not an openrft output folder"):
        check_output_folder(out, [])  # an adapter of the user's, job.json and all, but no mark
    (out / ".openrft-job").write_text("".join(f"{line}\n" for line in [tmp_path / "gone", *written]))
    check_output_folder(out, [])  # an earlier output: replaced whole
    (out / "my_notes.txt").write_text("mine")
    (out / "eval_results").mkdir()
    with pytest.raises(
        ConfigError, match=r"holds what openrft did not write there \(eval_results, my_notes.txt\)"
    ):
        check_output_folder(out, [])
    (out / ".openrft-job").write_text(f"{tmp_path / 'gone'}\n")  # a mark from before it listed its files
    with pytest.raises(ConfigError, match="eval_results, my_notes.txt"):
        check_output_folder(out, [])


def test_a_relative_output_folder_is_kept_absolute(fake, home, model_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    create(capsys, model_dir, "--job-id", "rel", "--output-model", "relout")
    config = json.loads((JobStore().get("rel").job_dir / "job.json").read_text())
    assert config["training"]["output_model"] == str(tmp_path / "relout")


def test_checkpoints_a_killed_writer_left_are_recovered_not_deleted(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-000008").mkdir(parents=True)
    (root / "step-000008" / "state.json").write_text("{}")
    moved = root / ".step-000016.old"  # killed between moving the old one aside and renaming the new one
    moved.mkdir()
    (moved / "state.json").write_text("{}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    half = root / f".step-000016.{dead.stdout.strip()}.x.tmp"
    half.mkdir()
    (root / "LATEST").write_text("step-000016\n")
    assert latest_checkpoint(root, tidy=False) == root / "step-000008" and moved.is_dir()  # only looked
    assert latest_checkpoint(root) == root / "step-000016"  # the moved one came back
    assert not moved.exists() and not half.exists()


EVALUATOR = textwrap.dedent("""
    import time

    def slow(completion, **row):
        time.sleep(600)
        return 1.0
""")
PARENT = textwrap.dedent("""
    import os, sys, time
    from openrft.evaluators import load_evaluator
    from openrft.evaluators.isolation import EvaluatorPool
    pool = EvaluatorPool(load_evaluator(sys.argv[1]), workers=1, timeout=600)
    pool._start()
    print(pool._all[0].process.pid, flush=True)
    os._exit(0)  # as a job killed with SIGKILL: no clean-up runs
""")


def test_evaluator_workers_end_when_their_job_is_killed(tmp_path):
    (tmp_path / "ev.py").write_text(EVALUATOR)
    (tmp_path / "parent.py").write_text(PARENT)
    out = subprocess.run([sys.executable, str(tmp_path / "parent.py"), f"{tmp_path}/ev.py::slow"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    worker = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, 9)
    pytest.fail("the evaluator worker outlived its job")


def test_a_snapshot_that_cannot_be_written_leaves_no_job(
    fake, home, model_dir, capsys, monkeypatch, tmp_path
):
    import errno

    import openrft.jobs.snapshot as snapshot

    evaluator = tmp_path / "ev.py"
    evaluator.write_text("def score(completion, **row):\n    return 1.0\n")

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshot.shutil, "copyfile", full)
    code, _, err = create(capsys, model_dir, "--job-id", "s", "--evaluator", f"{evaluator}::score")
    assert code == 1 and "job s was not created" in err and "no space left" in err  # a full disk: exit 1
    assert not JobStore().exists("s") and not (JobStore().jobs_dir / "s").exists()
    assert not list(tmp_path.glob(".ev.py.*"))  # no half-written copy beside anything


def test_a_damaged_snapshot_record_is_named_on_resume(fake, home, model_dir, capsys, monkeypatch, tmp_path):
    evaluator = tmp_path / "ev.py"
    evaluator.write_text("def score(completion, **row):\n    return 1.0\n")
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "d", "--evaluator", f"{evaluator}::score")
    manifest = JobStore().get("d").job_dir / "snapshot" / "manifest.json"
    manifest.write_text(manifest.read_text()[:20])
    assert main(["rftj", "resume", "d", "--detach"]) != 0
    err = capsys.readouterr().err
    assert "manifest.json cannot be read" in err and "Traceback" not in err
    assert JobStore().get("d").state is S.FAILED  # still resumable once the file is put right


def test_a_killed_runs_half_written_files_are_removed_when_the_job_runs_again(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "t")
    job_dir = JobStore().get("t").job_dir
    (job_dir / "checkpoints").mkdir(exist_ok=True)
    stale = [
        job_dir / ".rollouts.jsonl.k1x9.tmp",
        job_dir / ".job.json.a2b.tmp",
        job_dir / "checkpoints" / ".LATEST.q.tmp",
    ]
    fresh = job_dir / ".metrics.jsonl.live.tmp"  # a writer's at work now: left alone
    for path in [*stale, fresh]:
        path.write_text("half")
    for path in stale:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setenv("FAKE_MODE", "ok")
    main(["rftj", "resume", "t"])
    capsys.readouterr()
    assert not any(p.exists() for p in stale) and fresh.exists()


def test_a_full_disk_in_a_library_is_one_line(monkeypatch, capsys):
    import openrft.cli.export as export

    class SafetensorError(Exception):
        pass

    def full(args):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export, "cmd_export", full)
    assert main(["export", "some-job", "--merged", "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("no space left on the disk (SafetensorError") and "Traceback" not in err


def test_half_written_gguf_files_of_dead_exports_are_removed(tmp_path):
    from openrft.train.gguf_export import _remove_stale_temporaries

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".m.gguf.abc123.{dead.stdout.strip()}.gguf.tmp"
    live = tmp_path / f".m.gguf.def456.{os.getpid()}.gguf.tmp"  # an export still writing
    for path in (stale, live):
        path.write_bytes(b"x")
    _remove_stale_temporaries(tmp_path / "m.gguf")
    assert not stale.exists() and live.exists()


def test_a_dataset_that_lost_or_gained_rows_stops_a_resume(
    fake, home, model_dir, capsys, monkeypatch, tmp_path
):
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}], "ground_truth": i + 1}
        for i in range(6)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("FAKE_MODE", "crash")
    code = main(["rftj", "create", "--base-model", str(model_dir), "--quiet", "--dataset", str(data),
                 "--evaluator", "arithmetic", "--job-id", "g"])  # fmt: skip
    assert code != 0 and JobStore().get("g").state is S.FAILED
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    capsys.readouterr()
    assert main(["rftj", "resume", "g", "--quiet"]) != 0
    assert "has 2 lines now and had 6 when the job started" in capsys.readouterr().err
    rows[0]["ground_truth"] = 99  # the same rows, one edited: the job goes on, warned
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["rftj", "resume", "g", "--quiet"]) == 0
    assert "changed since the job started" in capsys.readouterr().err


def test_a_failure_the_store_could_not_take_is_read_from_the_folder(
    fake, home, model_dir, capsys, monkeypatch
):
    from openrft.errors import JobError

    real = JobStore.transition

    def full(self, job_id, state, message=None):
        if state is S.FAILED:
            raise JobError("the disk holding the job store is full")
        return real(self, job_id, state, message)

    monkeypatch.setattr(JobStore, "transition", full)
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "f")
    monkeypatch.setattr(JobStore, "transition", real)
    store = JobStore()
    assert store.get("f", check_process=False).state is S.RUNNING  # the store never heard
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    store.set_process("f", int(dead.stdout))
    record = store.get("f")  # its process is gone: the reason it left in its folder
    assert record.state is S.FAILED and "the accelerator fell over" in record.message


def test_an_output_folder_is_claimed_when_its_job_is_created(
    fake, home, model_dir, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("FAKE_MODE", "crash")  # the first job stops before writing any adapter
    out = tmp_path / "shared-out"
    create(capsys, model_dir, "--job-id", "first", "--output-model", str(out))
    code, _, err = create(capsys, model_dir, "--job-id", "second", "--output-model", str(out))
    assert code == 2 and "is the output of job first" in err
    monkeypatch.setenv("FAKE_MODE", "ok")
    assert main(["rftj", "resume", "first", "--quiet"]) == 0  # its own claim does not stop it
