"""Small server contracts: what a restart re-queues, upload limits and checks, ``field:*`` filters."""

from __future__ import annotations

import subprocess
import tarfile

import pytest

from openrft.config import JobConfig
from openrft.jobs.states import DIED_MESSAGE, SERVER_DIED_MESSAGE, SERVER_DIED_MESSAGES, JobState
from openrft.jobs.store import JobStore
from openrft.server.errors import ApiError
from openrft.server.filtering import select
from openrft.server.queue import JobQueue
from openrft.server.uploads import MB, ArchiveError, UploadLimits, check_declared_sizes, extract_archive
from openrft.server.wire import write_meta


def test_a_restart_requeues_only_the_jobs_whose_process_died_not_those_that_failed_for_a_reason(tmp_path):
    store = JobStore(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a dead pid: the job looks like one a stopped server was running
    store.create("died", JobConfig(), pid=gone.pid, detached=True)
    store.create("broken", JobConfig())
    store.transition("broken", JobState.VALIDATING)
    store.transition("broken", JobState.FAILED, "evaluator raised ValueError")
    for job_id in ("died", "broken"):
        write_meta(store.job_dir(job_id), {"account": "acme", "refs": {}})
    assert store.get("died").message == DIED_MESSAGE  # (found dead before its server.json was written)

    assert JobQueue(store).recover() == ["died"]
    server = subprocess.Popen(["sleep", "60"])
    for job_id in ("zz-older", "aa-newer"):  # queued in this order by a server that then died
        store.create(job_id, JobConfig(), pid=server.pid, detached=True)
        write_meta(store.job_dir(job_id), {"account": "acme", "refs": {}})
    server.kill()
    server.wait()
    assert store.get("aa-newer").message == SERVER_DIED_MESSAGE  # queued, never started: not a crash
    assert JobQueue(store).recover() == ["zz-older", "aa-newer"]  # they keep their turn, not their names
    assert (
        store.get("zz-older").message == "queued again as the server restarted"
    )  # not "resumed from FAILED"
    assert (
        store.get("zz-older").updated_at < store.get("aa-newer").updated_at
    )  # the order tick() starts them in
    # a job that failed for a real reason would only fail again, on every restart
    broken = store.get("broken")
    assert broken.state is JobState.FAILED and broken.message == "evaluator raised ValueError"
    assert store.get("died").state is JobState.PENDING
    assert "stopped while it waited in the queue" in SERVER_DIED_MESSAGE  # a resumed job had started once
    store.create("old-words", JobConfig())  # left FAILED by a version that worded the message otherwise
    write_meta(store.job_dir("old-words"), {"account": "acme", "refs": {}})
    store.transition("old-words", JobState.FAILED, SERVER_DIED_MESSAGES[1])
    assert JobQueue(store).recover() == ["old-words"]


def test_upload_limits_from_the_environment_are_in_megabytes_and_members_are_a_count():
    limits = UploadLimits.from_env(
        {
            "OPENRFT_SERVER_MAX_DATASET_MB": "2",
            "OPENRFT_SERVER_MAX_ARCHIVE_MB": "0.5",
            "OPENRFT_SERVER_MAX_ARCHIVE_MEMBERS": "7",
        }
    )
    assert limits.max_dataset_bytes == 2 * MB
    assert limits.max_archive_bytes == MB // 2
    assert limits.max_archive_members == 7
    assert UploadLimits.from_env({}) == UploadLimits()  # unset: the defaults


@pytest.mark.parametrize("size", ["-1", "-5"])
def test_a_negative_declared_upload_size_is_refused(size):
    with pytest.raises(ApiError) as refused:
        check_declared_sizes({"code.tar.gz": size}, 1000, "evaluator", (".tar.gz",), 1)
    assert refused.value.status_code == 400 and "must be >= 0" in str(refused.value.message)


def test_an_archive_of_folders_only_is_refused_as_holding_no_files(tmp_path):
    packed = tmp_path / "code.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        folder = tarfile.TarInfo("src")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="holds no files"):
        extract_archive(packed, dest, UploadLimits())
    assert not dest.exists()  # nothing half-extracted is left behind


def test_a_field_has_any_value_filter_skips_empty_strings_lists_and_objects():
    items = [
        {"name": "blank", "x": ""},
        {"name": "none", "x": None},
        {"name": "list", "x": []},
        {"name": "dict", "x": {}},
        {"name": "set", "x": "v"},
    ]
    assert [i["name"] for i in select(items, "x:*", {"name", "x"})] == ["set"]


def test_job_progress_names_the_epoch_under_way_or_the_one_a_stopped_job_stopped_in(tmp_path):
    from openrft.config import build_config
    from openrft.server.job_object import job_progress

    store = JobStore(tmp_path)
    store.create("j", build_config({}, {"epochs": 3})[0])
    store.transition("j", JobState.VALIDATING)
    store.transition("j", JobState.RUNNING)
    record = store.get("j")
    record.metrics_path.write_text('{"step": 4, "train/epoch": 1.0}\n')  # the first epoch just finished
    assert job_progress(record, record.flat_config())["epoch"] == 2  # running: the second is under way
    store.transition("j", JobState.EARLY_STOPPED, "no signal in epoch 1")
    stopped = job_progress(store.get("j"), record.flat_config())
    assert stopped["epoch"] == 1 and stopped["percent"] == 33  # it stopped in (after) the first


def test_a_status_message_says_how_an_api_client_resumes_and_the_cli_says_it_its_way(tmp_path):
    from openrft.cli.remote import cli_words
    from openrft.jobs.store import CANCEL_DIED_MESSAGE
    from openrft.server.job_object import status_of

    store = JobStore(tmp_path)
    store.create("j", JobConfig())
    store.transition("j", JobState.CANCELLED, CANCEL_DIED_MESSAGE)
    message = status_of(store.get("j"))["message"]
    assert 'a :resume with {"force": true} continues' in message and "--force" not in message
    assert "resume --force continues" in cli_words(message)


def test_a_server_flag_that_is_not_a_url_is_a_flag_error(capsys, monkeypatch, tmp_path):
    from openrft.cli import main

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    assert main(["rftj", "list", "--server", "notaurl"]) == 2
    assert capsys.readouterr().err.startswith("--server notaurl: not a server URL; expected http(s)://")
    monkeypatch.setenv("OPENRFT_SERVER", "localhost:8000")
    assert main(["rftj", "get", "x"]) == 2
    assert capsys.readouterr().err.startswith("OPENRFT_SERVER localhost:8000: not a server URL")


def test_a_finished_job_that_named_a_model_does_not_hold_the_name_once_the_model_is_gone(tmp_path):
    from openrft.server import wire

    store = JobStore(tmp_path)
    for job_id, end in (("done", JobState.COMPLETED), ("failed", JobState.FAILED)):
        store.create(job_id, JobConfig())
        store.transition(job_id, JobState.VALIDATING)
        store.transition(job_id, JobState.RUNNING)
        store.transition(job_id, end)
        write_meta(store.job_dir(job_id), {"account": "acme", "refs": {"outputModel": f"{job_id}-model"}})
    ctx = wire.WireContext(account="acme", home=tmp_path)
    assert wire.model_folder("done-model", ctx) is None  # deleted with models.delete: free again
    assert (
        wire.model_folder("failed-model", ctx) == tmp_path / "models" / "failed-model"
    )  # may resume into it


def test_delete_force_through_a_server_says_it_does_not_apply(capsys, monkeypatch, tmp_path):
    from openrft.cli import main

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    assert main(["rftj", "delete", "j", "--force", "--server", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("--force deletes from this machine's store only")
