"""Plots: written atomically, non-empty, every job drawn in its own colour, missing metrics tolerated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openrft.tracking.plots import PANELS, plot_jobs, plot_reward_curve

BLUE, ORANGE, GREEN = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)  # matplotlib's first colours


def write_metrics(path, rewards, *, with_kl=True):
    lines = []
    for step, reward in enumerate(rewards, start=1):
        row = {
            "step": step,
            "reward/mean": reward,
            "reward/std": 0.1,
            "loss/policy": 1.0 / step,
            "clip/low_frac": 0.01,
            "clip/high_frac": 0.02,
            "filter/zero_variance_frac": 0.5,
        }
        if with_kl:
            row["kl/mean"] = 0.001 * step
        if step % 2 == 0:
            row["eval/reward"] = reward
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def pixels(path):
    import matplotlib.image

    image = matplotlib.image.imread(str(path))  # [H, W, 4] floats in 0..1
    return (image[..., :3] * 255).round().astype(int)


def count_colour(rgb_HW3, colour, tolerance=8):
    return int((np.abs(rgb_HW3 - np.array(colour)).max(axis=-1) <= tolerance).sum())


def test_overlay_draws_each_job_in_its_own_colour(tmp_path):
    a = write_metrics(tmp_path / "a.jsonl", [0.1, 0.2, 0.4, 0.5])
    b = write_metrics(tmp_path / "b.jsonl", [0.0, 0.1, 0.1, 0.3])
    out = plot_jobs([("a", a), ("b", b)], tmp_path / "out" / "overlay.png", title="a vs b")
    rgb = pixels(out)
    assert rgb.shape[0] > 500 and rgb.shape[1] > 1000
    assert count_colour(rgb, BLUE) > 500 and count_colour(rgb, ORANGE) > 500
    assert count_colour(rgb, GREEN) == 0  # a third job's colour is absent
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]  # no temp files left behind


def test_missing_metric_leaves_a_no_data_panel(tmp_path):
    a = write_metrics(tmp_path / "a.jsonl", [0.1, 0.2], with_kl=False)  # dapo logs no KL
    out = plot_jobs([("dapo", a)], tmp_path / "dapo.png")
    assert out.stat().st_size > 10_000
    assert [p.title for p in PANELS] == [
        "reward",
        "policy loss",
        "KL to the reference",
        "clipped tokens",
        "zero-variance groups",
    ]


def test_empty_run_list_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        plot_jobs([], tmp_path / "x.png")


def test_single_job_reward_curve_still_works(tmp_path):
    metrics = write_metrics(tmp_path / "m.jsonl", [0.2, 0.4, 0.6])
    out = plot_reward_curve(metrics, tmp_path / "curve.png", title="job")
    rgb = pixels(out)
    assert count_colour(rgb, BLUE) > 100 and count_colour(rgb, ORANGE) > 10  # train line and eval point


def test_a_one_step_job_shows_its_point(tmp_path):
    metrics = write_metrics(tmp_path / "m.jsonl", [0.3])
    rgb = pixels(plot_reward_curve(metrics, tmp_path / "curve.png", title="job"))
    # a marker (the legend alone has ~64 blue pixels): a line through one point would draw nothing
    assert count_colour(rgb, BLUE) > 120


def test_replacing_an_existing_plot(tmp_path):
    metrics = write_metrics(tmp_path / "m.jsonl", [0.2, 0.4])
    out = tmp_path / "p.png"
    out.write_bytes(b"old")
    plot_jobs([("m", metrics)], out)
    assert out.read_bytes()[:4] == b"\x89PNG"
