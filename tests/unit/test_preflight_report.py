"""The preflight's statistics, advice, verdict and the dry run's CPU estimate, on hand-made numbers."""

from __future__ import annotations

import dataclasses

import pytest

from openrft.config import build_config
from openrft.train.preflight_report import (
    NO_SIGNAL_EXIT_CODE,
    PreflightReport,
    cpu_round_seconds,
    dry_run_warnings,
    group_stats,
    histogram,
    quantiles,
)


def report(**changes) -> PreflightReport:
    base = dict(
        base_model="m", device="cpu", prompts=10, train_prompts=100, n=8, max_tokens=256, temperature=0.7,
        group_means=[0.5] * 10, group_stds=[0.3] * 10, zero_variance=2, zero_variance_low=1,
        zero_variance_high=1, distinct_scores=[0.0, 0.5, 1.0], lengths=[100] * 80, truncated=0, scores=80,
        invalid=0, invalid_example="", calls=80, latency_s=0.001, sample_wall_s=10.0, score_wall_s=0.1,
    )  # fmt: skip
    return PreflightReport(**{**base, **changes})


def test_quantiles_and_histogram():
    q = quantiles([0, 1, 2, 3, 4])
    assert q == {"min": 0, "p10": 0.4, "p25": 1, "p50": 2, "p75": 3, "p90": pytest.approx(3.6), "max": 4}
    assert quantiles([]) == {}
    lines = histogram([0, 0, 0, 1], bins=2, width=6)
    assert lines[0].endswith("######  3") and lines[1].endswith("##      1")
    assert histogram([0.5, 0.5])[0].endswith("2")


def test_group_stats_use_valid_scores_only():
    means, stds = group_stats([[(1.0, True), (0.0, True), (9.0, False)], [(0.0, False)]])
    assert means == [0.5, 0.0] and stds == [0.5, 0.0]


def test_a_usable_sample_gets_no_advice_and_exit_code_0():
    r = report()
    assert r.advice() == [] and r.blockers() == [] and r.exit_code == 0


def test_a_hard_task_scored_0_or_1_asks_for_partial_credit_and_more_exploration():
    r = report(zero_variance=9, zero_variance_low=8, zero_variance_high=0, distinct_scores=[0.0, 1.0])
    text = " ".join(r.advice())
    assert "every candidate failed" in text and "partial credit" in text
    assert "raise --temperature (now 0.7" in text and "raise --response-candidates-count (now 8" in text
    assert r.exit_code == 0  # one group still has signal


def test_a_solved_task_and_all_zero_variance():
    r = report(zero_variance=10, zero_variance_low=0, zero_variance_high=10, distinct_scores=[1.0])
    assert "already got the highest score" in " ".join(r.advice())
    assert r.exit_code == NO_SIGNAL_EXIT_CODE and "zero-variance" in r.blockers()[0]


def test_truncation_and_invalid_scores():
    r = report(truncated=40, max_tokens=128)
    assert "50% of the responses were cut off" in r.advice()[0] and "to 256" in r.advice()[0]
    assert r.exit_code == 0
    assert report(truncated=75).exit_code == NO_SIGNAL_EXIT_CODE
    r = report(invalid=50, invalid_example="ZeroDivisionError")
    assert (
        r.advice()[0].startswith("fix the evaluator first: 50 of 80") and r.exit_code == NO_SIGNAL_EXIT_CODE
    )
    assert report(invalid=10).exit_code == 0 and "fix the evaluator" in report(invalid=10).advice()[0]


def settings(**flags):
    cfg, _ = build_config({}, flags)
    s = cfg.settings()
    return dataclasses.replace(s, model=dataclasses.replace(s.model, device="cpu"))


def test_cpu_estimate_warns_about_long_outputs_only_when_slow():
    slow = settings()  # 200 prompts x 8 x 2048 tokens
    seconds = cpu_round_seconds(slow, 7473, 135_000_000, 2)
    assert seconds == pytest.approx(200 * 8 * 2048 / 200)
    assert any(
        w.startswith("--max-output-tokens 2048 on a CPU") for w in dry_run_warnings(slow, 7473, 135e6, 2)
    )
    assert dry_run_warnings(settings(max_output_tokens=128), 7473, 135e6, 2) == []
    assert dry_run_warnings(slow, 7473, 135e6, 32) == []  # many cores: fast enough
    on_gpu = dataclasses.replace(slow, model=dataclasses.replace(slow.model, device="cuda"))
    assert cpu_round_seconds(on_gpu, 7473, 135e6, 2) is None
