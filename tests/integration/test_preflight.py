"""`openrft rftj preflight` on tiny random models, and the preflight's cheap checks in `create --dry-run`.

A tiny random model writes gibberish until the length limit: every response is cut off and the
arithmetic evaluator scores them all 0, so the preflight must say so and exit with code 8. With stop
strings its responses end early, and an evaluator whose score depends on the text gives groups with
variance: a learning signal, exit code 0.
"""

from __future__ import annotations

import json

import pytest

from openrft.cli import main
from openrft.train.preflight_report import NO_SIGNAL_EXIT_CODE

pytest.importorskip("openrft.rollout", reason="the rollout engine is not available")

VARIED = '''
def letters(completion: str, **row) -> float:
    """Differs between candidates: the share of letters in the response."""
    return sum(c.isalpha() for c in completion) / len(completion) if completion else 0.0
'''


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def preflight(capsys, model_dir, *flags):
    code = main(["rftj", "preflight", "--base-model", str(model_dir), "--dataset", "arithmetic:count=12",
                 "--n", "4", "--max-output-tokens", "16", "--preflight-prompts", "4", *flags])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def test_gibberish_cut_off_at_the_limit_gives_no_signal(home, tiny_model_dir, capsys):
    code, out, err = preflight(capsys, tiny_model_dir, "--evaluator", "arithmetic")
    assert code == NO_SIGNAL_EXIT_CODE, err
    assert "4 of 12 training prompts x 4 candidates" in out
    assert "cut off at --max-output-tokens 16: 16 (100%)" in out
    assert "zero-variance groups (dropped by the trainer): 4 of 4 (100%)" in out
    advice = out.split("advice:")[1]
    assert "Raise --max-output-tokens (e.g. to 32)" in advice
    assert "raise --temperature (now 0.7" in advice and "raise --response-candidates-count (now 4" in advice
    assert "give partial credit" in advice  # all zeros from a 0/1-scored task
    assert "no learning signal expected" in out.splitlines()[-1]
    assert "per round of 12 prompts" in out and "per epoch of 12 prompts" in out
    assert "Traceback" not in err
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())  # no job was created


def test_the_sampling_line_says_how_long_it_may_take_on_a_slow_cpu(home, tiny_model_dir, capsys, monkeypatch):
    import openrft.train.preflight_report as report

    code, _, err = preflight(capsys, tiny_model_dir, "--evaluator", "arithmetic")
    assert "preflight: sampling 4 prompts x 4 candidates (no job" in err  # quick: nothing said
    monkeypatch.setattr(report, "CPU_TOKENS_PER_S", 1e-6)  # a model this CPU samples slowly
    code, _, err = preflight(capsys, tiny_model_dir, "--evaluator", "arithmetic")
    assert "preflight: sampling 4 prompts x 4 candidates, up to about " in err
    assert " on this CPU at 16 tokens each (no job is created" in err


def test_json_report(home, tiny_model_dir, capsys):
    code, out, err = preflight(capsys, tiny_model_dir, "--evaluator", "arithmetic", "--json", "--n", "2")
    report = json.loads(out)
    assert code == report["exit_code"] == NO_SIGNAL_EXIT_CODE
    warned = [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]
    assert warned and report["notes"][: len(warned)] == warned  # what stderr warned of, in the JSON too
    assert report["invalid"] == 0 and report["invalid_example"] is None
    assert report["prompts"] == 4 and report["responses"] == 8 and report["truncated_frac"] == 1.0
    assert report["zero_variance_frac"] == 1.0 and report["lengths"] == [16] * 8
    assert report["invalid_frac"] == 0.0 and report["latency_s"] >= 0
    timing = report["timing"]
    assert timing["prompts_per_round"] == 12 and timing["rounds_per_epoch"] == 1
    assert timing["train_tokens_per_s"] > 0 and timing["train_s"] == 0.0  # every group would be dropped
    assert timing["epoch_s"] == pytest.approx(timing["round_s"])
    assert set(report["reward_mean_quantiles"]) == {"min", "p10", "p25", "p50", "p75", "p90", "max"}
    assert report["blockers"] and report["advice"]


def test_varied_scores_and_early_stops_give_a_signal(home, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "varied.py").write_text(VARIED)
    stops = [x for s in ("e", "a", "o", "i") for x in ("--stop", s)]
    code, out, err = preflight(
        capsys, tiny_model_dir, "--evaluator", f"{tmp_path}/varied.py::letters", "--temperature", "1.0",
        "--max-output-tokens", "32", *stops, "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["truncated_frac"] < 0.5 and report["zero_variance_frac"] < 0.5
    assert report["blockers"] == [] and len(report["distinct_scores"]) > 2
    assert not any("max-output-tokens" in line or "temperature" in line for line in report["advice"])
    assert report["timing"]["train_s"] > 0  # groups with signal are trained on


def test_a_broken_job_is_refused_before_sampling(home, tiny_model_dir, capsys):
    code, out, err = preflight(capsys, tiny_model_dir, "--evaluator", "arithmetic", "--rl-loss-method", "dapo",
                               "--rl-kl-beta", "0.1")  # fmt: skip
    assert code == 2 and out == "" and "kl_beta" in err and "sampling" not in err


def dry_run(capsys, model_dir, *flags):
    code = main(["rftj", "create", "--dry-run", "--base-model", str(model_dir), "--dataset", "arithmetic:count=8",
                 "--evaluator", "arithmetic", "--max-output-tokens", "64", *flags])  # fmt: skip
    return code, capsys.readouterr().err


def test_dry_run_warns_about_settings_that_starve_the_signal(home, tiny_model_dir, capsys):
    code, err = dry_run(capsys, tiny_model_dir, "--n", "2", "--temperature", "0.2", "--batch-size", "100")
    assert code == 0, err
    assert "warning: --response-candidates-count 2: with so few candidates" in err
    assert "warning: --temperature 0.2: this cold" in err
    assert "warning: --batch-size 100 tokens is less than one group's responses at full length (2 x 64" in err
    code, err = dry_run(capsys, tiny_model_dir, "--batch-size-samples", "4")
    assert code == 0 and "--batch-size-samples 4 holds fewer sequences than one group (8 candidates)" in err


def test_dry_run_is_quiet_for_a_sensible_job(home, tiny_model_dir, capsys):
    code, err = dry_run(capsys, tiny_model_dir)
    assert code == 0 and err == "", err


def test_a_warm_start_adapter_is_sampled(home, tiny_model_dir, tmp_path, capsys):
    from openrft.models import load_model
    from openrft.train.policy import attach_lora, save_adapter

    base, _ = load_model(str(tiny_model_dir))
    save_adapter(attach_lora(base, 4, seed=1), tmp_path / "adapter")
    code = main(["rftj", "preflight", "--warm-start-from", str(tmp_path / "adapter"), "--dataset",
                 "arithmetic:count=4", "--evaluator", "arithmetic", "--n", "2", "--max-output-tokens", "16",
                 "--preflight-prompts", "2", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] and report["base_model"] == str(tiny_model_dir)
    assert report["prompts"] == 2 and report["responses"] == 4


def test_an_evaluator_that_fails_is_reported_not_raised(home, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "broken.py").write_text(
        "def score(completion, **row):\n    raise ValueError('no answer here')\n"
    )
    code, out, err = preflight(
        capsys, tiny_model_dir, "--evaluator", f"{tmp_path}/broken.py::score", "--json"
    )
    report = json.loads(out)
    assert code == NO_SIGNAL_EXIT_CODE, err
    assert report["invalid_frac"] == 1.0 and "no answer here" in report["invalid_example"]
    assert report["advice"][0].startswith("fix the evaluator first: 16 of 16 scores are invalid")
    assert any("scores are invalid" in reason for reason in report["blockers"])


def test_an_evaluator_slow_to_start_is_timed_warm(home, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Its workers' start (a heavy import) is paid once per job, not per round: the scoring estimate
    comes from a second, warm pass, however long the first one took."""
    (tmp_path / "slow_start.py").write_text("import time\ntime.sleep(3)  # a heavy import\n" + VARIED)
    monkeypatch.setattr("openrft.train.preflight.RESCORE_UNDER_S", 1.0)  # the first pass takes longer
    code, out, err = preflight(
        capsys, tiny_model_dir, "--evaluator", f"{tmp_path}/slow_start.py::letters", "--json"
    )
    report = json.loads(out)
    assert report["timing"]["score_s"] < 1.0, report["timing"]
