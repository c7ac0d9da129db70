"""Command-line contracts: refusals of `rftj create --dry-run`, the exit code of an interrupted command,
and the defaults and checks of `preflight`, `export`, `rftj repair` and `rollout`."""

from __future__ import annotations

import pytest

from openrft.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_dry_run_refuses_a_resume_from_that_names_neither_a_job_nor_a_checkpoint_folder(
    home, tmp_path, capsys
):
    """`create --dry-run --resume-from X` checks X as the real command would, writing nothing."""
    missing = tmp_path / "no-such-job"
    assert main(["rftj", "create", "--dry-run", "--resume-from", str(missing)]) == 7  # JobError
    err = capsys.readouterr().err
    assert err.startswith(
        f"--resume-from {missing}: neither a job id in the store nor a job folder with checkpoints"
    )
    assert "hint: see the jobs with: openrft rftj list" in err
    assert not (home / "jobs.db").exists()


def test_a_command_interrupted_by_ctrl_c_exits_130_with_one_line(home, monkeypatch, capsys):
    """Scripts tell an interrupted `rftj create` from a failed one by the shell's SIGINT code, 130."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("openrft.jobs.runner.create_and_run", interrupted)
    assert main(["rftj", "create", "--job-id", "ctrl-c"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


def test_preflight_samples_32_prompts_unless_told_otherwise():
    from openrft.cli import build_parser

    assert build_parser().parse_args(["rftj", "preflight"]).preflight_prompts == 32
    assert build_parser().parse_args(["rftj", "preflight", "--preflight-prompts", "4"]).preflight_prompts == 4


def test_export_refuses_a_gguf_file_name_without_the_gguf_extension(home, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--gguf", str(tmp_path / "model.bin")]) == 2
    assert capsys.readouterr().err.startswith(
        f"--gguf {tmp_path / 'model.bin'}: the file name must end in .gguf"
    )


def test_repair_exits_non_zero_when_a_job_folder_could_not_be_restored(home, capsys):
    """A script running `rftj repair` must learn that a job was left out of the rebuilt store."""
    (home / "jobs" / "damaged").mkdir(parents=True)
    (home / "jobs" / "damaged" / "job.json").write_text("{ not json")
    assert main(["rftj", "repair", "--force"]) == 1
    assert "skipped damaged:" in capsys.readouterr().out


def test_rollout_stop_strings_are_checked_and_reach_the_sampling_parameters():
    from openrft.cli import build_parser
    from openrft.cli.rollout import _validated

    args = build_parser().parse_args(["rollout", "--prompt", "hi", "--stop", "</answer>", "--device", "cpu"])
    assert _validated(args).stop == ("</answer>",)


def test_compare_needs_two_jobs_at_least(home, capsys):
    code = main(["rftj", "compare", "only-one"])
    err = capsys.readouterr().err
    assert code != 0 and "compare needs at least two jobs" in err, err
