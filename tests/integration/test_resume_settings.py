"""Resuming with other settings (``rftj create --resume-from ID [flags]``): the flags applied from the
next step, what the checkpoints fix refused in one line with nothing changed, a dataset that moved
still the same dataset, and ``--dry-run`` showing the job it would continue; and deleting a job whose
adapter another job still starts from. With the stand-in trainer of :mod:`test_jobs_lifecycle`."""

from __future__ import annotations

import json

import pytest
import test_jobs_lifecycle as lifecycle

from openrft.cli import main
from openrft.jobs.states import JobState as S
from openrft.jobs.store import JobStore

create = lifecycle.create
fake, home, model_dir = lifecycle.fake, lifecycle.home, lifecycle.model_dir  # the fixtures


def test_create_resume_from_keeps_the_stored_config_and_applies_new_flags(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "a", "--temperature", "1.0")
    code = main(["rftj", "create", "--resume-from", "a", "--learning-rate", "2e-4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "continuing with changed learning-rate" in err
    record = JobStore().get("a")
    assert record.state is S.COMPLETED
    assert record.config["training"]["base_model"] == str(model_dir)
    assert record.config["rollout"]["temperature"] == 1.0
    assert record.config["training"]["learning_rate"] == 2e-4


def test_a_resume_refuses_what_its_checkpoints_fix_and_a_refused_one_changes_nothing(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "a")
    refused = [
        (
            ["--lora-rank", "16"],
            "--lora-rank: a resumed job keeps the LoRA rank its checkpoints were made with (8)",
        ),
        (["--lora-alpha", "32"], "--lora-alpha: a resumed job keeps the LoRA alpha"),
        (["--dataset", "arithmetic:count=12"], "--dataset: a resumed job keeps its dataset (arithmetic)"),
        (["--job-id", "b"], "--job-id: a resumed job keeps the job id its checkpoints were made with (a)"),
    ]
    for flags, said in refused:
        assert main(["rftj", "create", "--resume-from", "a", *flags, "--quiet"]) == 2
        assert capsys.readouterr().err.startswith(said)
    assert JobStore().get("a").state is S.FAILED  # nothing was changed or started
    assert main(["rftj", "create", "--resume-from", "a", "--lora-alpha", "16", "--quiet"]) == 0  # 2 x rank
    capsys.readouterr()
    before = JobStore().get("a").config
    code = main(["rftj", "create", "--resume-from", "a", "--learning-rate", "2e-4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 7 and "nothing left to resume" in err and "continuing with changed" not in err
    assert JobStore().get("a").config == before  # a refused resume leaves the job's record as it was


def test_a_resume_with_fewer_epochs_than_the_job_has_begun_is_refused(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "a", "--epochs", "6")
    record = JobStore().get("a")
    latest = record.job_dir / "checkpoints" / "LATEST"
    state = latest.parent / latest.read_text().strip() / "state.json"
    state.write_text(json.dumps({"step": 4, "epoch": 3, "cursor": 2}))  # in its 4th epoch
    for run in (["--dry-run"], ["--quiet"]):
        assert main(["rftj", "create", "--resume-from", "a", "--epochs", "3", *run]) == 2
        err = capsys.readouterr().err
        assert "\n--epochs 3: this job has already begun epoch 4 (its last checkpoint)" in err, err
        assert "--epochs 4 or more" in err
    assert JobStore().get("a").config["training"]["epochs"] == 6  # nothing changed
    state.write_text(json.dumps({"step": 4, "epoch": 3, "cursor": 0}))  # 3 epochs done, none begun
    assert main(["rftj", "create", "--resume-from", "a", "--epochs", "3", "--dry-run"]) == 0


def test_delete_refuses_a_job_whose_adapter_another_resumable_job_starts_from(home, capsys):
    from openrft.config import build_config

    store = JobStore()
    source = store.create("src", build_config({}, {})[0])
    for state in (S.VALIDATING, S.RUNNING, S.COMPLETED):
        store.transition("src", state, "")
    start = build_config({}, {"warm_start_from": str(source.job_dir / "output")})[0]
    store.create("wsk", start)
    store.transition("wsk", S.FAILED, "killed")  # it can still resume, from src's adapter
    assert main(["rftj", "delete", "src"]) == 7
    err = capsys.readouterr().err
    assert "is the --warm-start-from of job wsk" in err and "--force" in err and store.exists("src")
    assert main(["rftj", "delete", "src", "--force"]) == 0 and not store.exists("src")


def test_a_job_whose_dataset_moved_resumes_from_the_file_where_it_is_now(
    fake, home, model_dir, capsys, monkeypatch, tmp_path
):
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"}],
                               "ground_truth": i + 1, "task": "arithmetic"}) + "\n" for i in range(4))  # fmt: skip
    first, moved = tmp_path / "rows.jsonl", tmp_path / "elsewhere" / "rows.jsonl"
    first.write_text(rows)
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "a", "--dataset", str(first))
    moved.parent.mkdir()
    first.rename(moved)  # the same bytes, in another place: the same dataset
    code = main(["rftj", "create", "--resume-from", "a", "--dataset", str(moved), "--quiet"])
    assert code == 0, capsys.readouterr().err
    moved.write_text(rows.replace("What is 0", "What is 9"))  # other bytes: another dataset
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "b", "--dataset", str(tmp_path / "elsewhere" / "rows.jsonl"))
    other = tmp_path / "other.jsonl"
    other.write_text(rows)
    assert main(["rftj", "create", "--resume-from", "b", "--dataset", str(other), "--quiet"]) == 2
    assert "--dataset: a resumed job keeps its dataset" in capsys.readouterr().err


def test_a_resume_names_the_embedded_model_either_way_and_words_a_value_it_never_had():
    from openrft.errors import ConfigError
    from openrft.jobs.snapshot import refuse_fixed_changes
    from openrft.models import EMBEDDED_MODEL, embedded_model_dir

    before = {"base_model": EMBEDDED_MODEL, "lora_rank": 8, "warm_start_from": None, "dataset": "arithmetic"}
    refuse_fixed_changes(before, {**before, "base_model": str(embedded_model_dir())})  # the same model
    with pytest.raises(ConfigError, match=r"cannot take a warm-start adapter it did not start with \(/a\)"):
        refuse_fixed_changes(before, {**before, "warm_start_from": "/a"})


def test_a_dry_run_of_a_resume_shows_the_job_it_would_continue_and_refuses_as_it_would(
    fake, home, model_dir, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_MODE", "crash")
    create(capsys, model_dir, "--job-id", "a", "--epochs", "3")
    assert main(["rftj", "create", "--resume-from", "a", "--temperature", "0.9", "--dry-run"]) == 0
    rows = {line.split()[1]: line.split()[2:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["epochs"] == ["3", "the", "job"] and rows["temperature"] == ["0.9", "flag"]
    assert rows["job-id"] == ["a", "the", "job"]
    assert main(["rftj", "create", "--resume-from", "a", "--lora-rank", "16", "--dry-run"]) == 2
    assert "--lora-rank: a resumed job keeps the LoRA rank" in capsys.readouterr().err
    assert JobStore().get("a").state is S.FAILED  # nothing was written
    assert main(["rftj", "create", "--resume-from", "a", "--quiet"]) == 0  # it completes ...
    capsys.readouterr()
    assert main(["rftj", "create", "--resume-from", "a", "--dry-run"]) == 7  # ... and the dry run says so
    assert "job a is COMPLETED: there is nothing left to resume" in capsys.readouterr().err
    for run in ("--dry-run", "--quiet"):  # whatever the flags, that is said first
        assert main(["rftj", "create", "--resume-from", "a", "--epochs", "1", run]) == 7
        assert "job a is COMPLETED: there is nothing left to resume" in capsys.readouterr().err
