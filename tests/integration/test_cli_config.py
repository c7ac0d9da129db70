"""`openrft rftj create` validation from the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from openrft.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_reference_defaults_with_sources(capsys):
    code, out, err = _run(capsys, "rftj", "create", "--dry-run")
    # the only warning defaults may give: 2048-token responses sampled on a small CPU are slow
    assert code == 0 and all(
        line.startswith("warning: --max-output-tokens 2048 on a CPU") for line in err.splitlines()
    )
    table = out.split("\n\n")[0]  # the parameters; the memory estimate follows a blank line
    rows = {line.split()[1]: line.split()[2:] for line in table.splitlines()[1:]}
    expected = {
        "epochs": "1",
        "learning-rate": "0.0001",
        "lora-rank": "8",
        "batch-size": "32768",
        "rl-loss-method": "grpo",
        "rl-kl-beta": "0.0 (grpo applies its built-in 0.001)",
        "temperature": "0.7",
        "top-p": "1.0",
        "top-k": "40",
        "response-candidates-count": "8",
        "max-output-tokens": "2048",
        "chunk-size": "200",
        "base-model": "smollm2-135m-instruct",
    }
    for name, value in expected.items():
        assert rows[name] == [*value.split(), "default"], name


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--n", "1"], "--response-candidates-count / --n: 1 is not valid; expected a whole number >= 2"),
        (["--lora-rank", "12"], "--lora-rank: 12 is not valid; expected one of 4, 8, 16, 32"),
        (["--epochs", "1.5"], "--epochs: 1.5 is not valid; expected a whole number from 1 to 10"),
        (["--temperature", "0"], "--temperature: 0 is not valid; expected a number from 0.1 to 2.0"),
        (["--top-k", "101"], "--top-k: 101 is not valid; expected a whole number from 0 to 100"),
        (
            ["--max-output-tokens", "8"],
            "--max-output-tokens: 8 is not valid; expected a whole number from 16 to 16384",
        ),
        (
            ["--rl-loss-method", "dapo", "--rl-kl-beta", "0.1"],
            "loss_config.kl_beta must be 0/unset when method is DAPO",
        ),
        # negative values in any spelling reach the flag's own check (argparse alone would take
        # "-1e-5" or "-inf" for an unknown option and print its usage)
        (
            ["--learning-rate", "-1e-5"],
            "--learning-rate: -1e-5 is not valid; expected a number from 1e-5 to 5e-4",
        ),
        (["--rl-kl-beta", "-1e-5"], "--rl-kl-beta: -1e-5 is not valid; expected a number >= 0"),
        (["--temperature", "-inf"], "--temperature: -inf is not valid; expected a number from 0.1 to 2.0"),
        (
            ["--rl-loss-method", "gspo-token", "--rl-kl-beta", "0.1"],
            "loss_config.kl_beta must be 0/unset when method is GSPO_TOKEN",
        ),
    ],
)
def test_bad_values_fail_with_one_line(capsys, argv, fragment):
    code, out, err = _run(capsys, "rftj", "create", "--dry-run", *argv)
    assert code == 2
    assert out == ""
    first, *rest = err.strip().splitlines()
    assert first == fragment
    if "kl_beta" in fragment:  # the reference's words, then which flag to change
        assert rest == [
            f"hint: leave --rl-kl-beta out (or 0) with --rl-loss-method {argv[1]}: only grpo takes a KL penalty"
        ]
    else:
        assert rest == []


def test_flags_override_config_file_and_sources_shown(capsys, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("learning-rate: 2.0e-4\ntemperature: 0.9\n")
    code, out, _ = _run(
        capsys,
        "reinforcement-fine-tuning-job",
        "create",
        "--config",
        str(job),
        "--temperature",
        "1.1",
        "--dry-run",
    )
    assert code == 0
    table = out.split("\n\n")[0]  # the parameters; the memory estimate follows a blank line
    rows = {line.split()[1]: line.split()[2:] for line in table.splitlines()[1:]}
    assert rows["learning-rate"] == ["0.0002", "config", "file"]
    assert rows["temperature"] == ["1.1", "flag"]


def test_a_job_file_may_not_spell_one_parameter_twice_and_null_means_unset(capsys, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("response_candidates_count: 16\nn: 4\n")
    code, out, err = _run(
        capsys, "rftj", "create", "--dataset", "arithmetic", "--config", str(job), "--dry-run"
    )
    assert code == 2 and out == ""
    assert "'response_candidates_count' and 'n' in" in err and "set the same parameter" in err
    job.write_text("rl_loss_method: dapo\nrl_kl_beta: null\n")  # "0/unset", as the guide says
    code, out, _ = _run(
        capsys, "rftj", "create", "--dataset", "arithmetic", "--config", str(job), "--dry-run"
    )
    rows = {line.split()[1]: line.split()[2:] for line in out.split("\n\n")[0].splitlines()[1:]}
    assert code == 0 and rows["rl-kl-beta"] == ["0.0", "default"]


def test_advice_is_printed_but_never_blocks(capsys):
    code, _, err = _run(capsys, "rftj", "create", "--dry-run", "--lora-rank", "32", "--top-k", "80")
    assert code == 0
    assert "warning: --lora-rank 32" in err and "warning: --top-k 80" in err


def test_help_comes_from_field_descriptions():
    from openrft.config import RolloutConfig

    result = subprocess.run(
        [sys.executable, "-m", "openrft.cli", "rftj", "create", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())
    description = " ".join(RolloutConfig.model_fields["top_k"].description.split())
    assert description in text
    assert "--response-candidates-count N, --n N" in text


def test_command_line_sets_a_short_openmp_spin_unless_the_environment_chose(capsys, monkeypatch):
    # a copy of the environment without either variable: what main() sets does not outlive the test
    chosen = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in chosen})
    main([])
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")
    main([])
    assert os.environ["GOMP_SPINCOUNT"] == "500"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    main([])
    assert "GOMP_SPINCOUNT" not in os.environ
    capsys.readouterr()


def test_command_line_keeps_compiled_kernels_in_the_openrft_home(capsys, monkeypatch, tmp_path):
    from openrft.paths import openrft_home

    monkeypatch.setattr(
        os, "environ", {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    )
    main([])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(openrft_home() / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    main([])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
    capsys.readouterr()


def test_flags_are_never_abbreviated_and_w_and_b_flags_without_wandb_are_flagged(capsys):
    # argparse would take --wandb-api for --wandb-api-key, whose value W&B would then record unmasked
    with pytest.raises(SystemExit) as caught:
        main(["rftj", "create", "--dry-run", "--wandb", "--wandb-api", "sk-secret"])
    assert caught.value.code == 2 and "unrecognized arguments: --wandb-api" in capsys.readouterr().err
    assert main(["rftj", "create", "--dry-run", "--wandb-project", "p", "--wandb-run-id", "r"]) == 0
    assert "warning: --wandb-project, --wandb-run-id given without --wandb" in capsys.readouterr().err


def test_an_openai_fine_tuning_job_body_is_recognised_and_mapped_in_the_hint(capsys, tmp_path):
    import json

    grader = {"type": "string_check", "name": "x", "operation": "eq", "input": "{{ sample.output_text }}",
              "reference": "{{ item.answer }}"}  # fmt: skip
    body = {"training_file": "file-abc", "model": "o4-mini", "method": {"type": "reinforcement",
            "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": 2}}}}  # fmt: skip
    (tmp_path / "openai_job.json").write_text(json.dumps(body))
    assert main(["rftj", "create", "--config", str(tmp_path / "openai_job.json"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "is an OpenAI fine-tuning job body" in err and "--evaluator grader.json" in err


def test_help_shows_no_python_values_and_one_setting_has_one_name_everywhere():
    from openrft.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name in ("rollout", "evaluate", "eval", "serve"):
        text = commands[name].format_help()
        assert "Default: ()" not in text and "Default: None" not in text, name
    args = parser.parse_args(["evaluate", "--evaluator-timeout", "5", "--max-concurrent-evaluations", "2"])
    assert (args.timeout, args.max_concurrency) == (5.0, 2)  # as a job's flags are spelt


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    from openrft.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"openrft {version('openrft')}"
