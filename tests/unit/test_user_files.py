"""Files the commands write for the user: modes, formats, and never over their own inputs or secrets."""

from __future__ import annotations

import json
import os
import sys

import pytest

from openrft.data import write_jsonl
from openrft.errors import ConfigError


def test_written_files_get_the_umask_mode_or_keep_the_mode_of_the_file_they_replace(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    fresh = write_jsonl(tmp_path / "new.jsonl", [{"a": 1}])
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    kept = tmp_path / "kept.jsonl"
    kept.write_text("{}\n")
    kept.chmod(0o640)
    write_jsonl(kept, [{"a": 2}])
    assert kept.stat().st_mode & 0o777 == 0o640 and json.loads(kept.read_text()) == {"a": 2}


def test_a_plot_is_written_in_the_format_its_name_asks_for(tmp_path):
    from openrft.tracking.plots import plot_reward_curve

    metrics = tmp_path / "metrics.jsonl"
    write_jsonl(metrics, [{"step": s, "reward/mean": s / 4, "reward/std": 0.1} for s in range(1, 5)])
    assert plot_reward_curve(metrics, tmp_path / "curve.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in plot_reward_curve(metrics, tmp_path / "curve.svg").read_bytes()[:500]
    assert plot_reward_curve(metrics, tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")


def test_an_output_may_not_be_one_of_the_commands_inputs(tmp_path):
    from openrft.cli.evaluate import refuse_output_over_inputs

    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    with pytest.raises(ConfigError, match="is an input of the command"):
        refuse_output_over_inputs(str(rows), None, str(rows))
    evaluator = tmp_path / "ev.py"
    evaluator.write_text("")
    with pytest.raises(ConfigError, match="is an input of the command"):
        refuse_output_over_inputs(str(evaluator), f"{evaluator}::score")
    refuse_output_over_inputs(str(tmp_path / "scores.jsonl"), str(rows))  # a new file is fine


def test_wandb_never_sees_the_api_key_on_the_command_line(monkeypatch):
    from openrft.tracking.wandb_sink import _argv_without_secrets

    argv = ["openrft", "rftj", "create", "--wandb-api-key", "SECRET1", "--wandb-api-key=SECRET2", "--n", "4"]
    monkeypatch.setattr(sys, "argv", list(argv))
    with _argv_without_secrets():
        assert "SECRET" not in " ".join(sys.argv) and sys.argv[-2:] == ["--n", "4"]
    assert sys.argv == argv  # restored


def test_an_atomic_folder_write_puts_right_what_a_killed_writer_left(tmp_path):
    import os
    import subprocess

    from openrft.paths import atomic_directory

    target = tmp_path / "model"
    old = tmp_path / ".model.old"  # killed between the two renames: the earlier output is only here
    old.mkdir()
    (old / "weights").write_text("earlier")
    dead = subprocess.Popen(["true"])
    dead.wait()
    half = tmp_path / f".model.{dead.pid}.abc.tmp"  # killed while writing
    half.mkdir()
    mine = tmp_path / f".model.{os.getpid()}.xyz.tmp"  # a live writer's: left alone
    mine.mkdir()
    with atomic_directory(target) as tmp:
        assert (target / "weights").read_text() == "earlier" and not half.exists() and mine.exists()
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and not old.exists()
