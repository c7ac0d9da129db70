"""Training curves from ``metrics.jsonl`` files, drawn headless with matplotlib.

* :func:`plot_reward_curve`: one job's reward (mean +- std band) and eval reward; the
  trainer writes it into every job's output folder.
* :func:`plot_jobs`: one or more jobs overlaid, one colour per job, in panels for
  reward (solid: training, dashed: eval), policy loss, KL, clip fractions (solid:
  low side, dotted: high side) and the fraction of zero-variance groups. This is the
  picture behind ``openrft rftj plot`` and ``openrft rftj compare``.

Every image is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openrft.paths import temporary_beside
from openrft.tracking.sinks import read_metrics


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    fd, tmp = temporary_beside(out, suffix=Path(out).suffix or ".png")  # matplotlib picks the format by it
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def plot_reward_curve(metrics_path: Path, out: Path, title: str = "") -> Path:
    """Training reward (mean, and the band mean +- std kept within the scores' min and max) and eval
    reward against step. Rounds that trained nothing sit at the step they followed, marked with x."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in read_metrics(Path(metrics_path)) if r.get("step") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    trained = [r for r in rows if r.get("reward/mean") is not None]
    if trained:
        steps = [r["step"] for r in trained]
        mean = [r["reward/mean"] for r in trained]
        low, high = zip(*(_band(r) for r in trained), strict=True)
        ax.fill_between(steps, low, high, alpha=0.15, color="tab:blue", linewidth=0)
        marker = "o" if len(steps) == 1 else None  # a line of one point draws nothing
        ax.plot(steps, mean, color="tab:blue", marker=marker, label="train reward (mean)")
        skipped = [r for r in trained if r.get("filter/round_skipped")]
        if skipped:
            ax.plot(
                [r["step"] for r in skipped], [r["reward/mean"] for r in skipped], "x", color="tab:red",
                label="round with no update (scores all alike)",
            )  # fmt: skip
    eval_steps, eval_reward = _series(rows, "eval/reward")
    if eval_steps:
        ax.plot(eval_steps, eval_reward, "o-", color="tab:orange", label="eval reward")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("training step")
    ax.set_ylabel("reward")
    ax.set_title(f"reward curve {title}".strip())
    ax.grid(alpha=0.3)
    if trained or eval_steps:
        ax.legend(loc="best")
    _save(fig, Path(out))
    plt.close(fig)
    return Path(out)


def _band(row: dict) -> tuple[float, float]:
    """mean -/+ std, clipped to the round's lowest and highest score (a band never leaves the data)."""
    mean, std = row["reward/mean"], row.get("reward/std") or 0.0
    low, high = row.get("reward/min", mean - std), row.get("reward/max", mean + std)
    return max(mean - std, low), min(mean + std, high)


# ----------------------------------------------------------------------------- several jobs


@dataclass(frozen=True)
class Panel:
    """One subplot: metric keys drawn with their line styles."""

    title: str
    ylabel: str
    lines: tuple[tuple[str, str, str], ...]  # (metric key, line style, what the style means)


PANELS = (
    Panel("reward", "mean reward", (("reward/mean", "-", "train"), ("eval/reward", "--", "eval"))),
    Panel("policy loss", "loss/policy", (("loss/policy", "-", ""),)),
    Panel("KL to the reference", "kl/mean", (("kl/mean", "-", ""),)),
    Panel(
        "clipped tokens",
        "fraction",
        (("clip/low_frac", "-", "low side"), ("clip/high_frac", ":", "high side")),
    ),
    Panel("zero-variance groups", "fraction of groups", (("filter/zero_variance_frac", "-", ""),)),
)


def legend_styles(panel: Panel, runs: Sequence[list[dict]]) -> list[tuple[str, str]]:
    """``(line style, meaning)`` of the panel's lines that some run has data for (no "eval" entry
    when no job evaluated)."""
    return [
        (style, meaning)
        for key, style, meaning in panel.lines
        if meaning and any(_series(rows, key)[0] for rows in runs)
    ]


def plot_jobs(runs: Sequence[tuple[str, Path]], out: Path, title: str = "") -> Path:
    """Overlay the curves of ``runs`` (``(label, metrics.jsonl path)``) in one figure at ``out``."""
    if not runs:
        raise ValueError("plot_jobs needs at least one run")
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    data = [(label, read_metrics(Path(path))) for label, path in runs]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    flat_axes = list(axes.flat)
    for ax, panel in zip(flat_axes, PANELS, strict=False):
        drawn = 0
        for index, (_, rows) in enumerate(data):
            color = colors[index % len(colors)]
            for key, style, _meaning in panel.lines:
                steps, values = _series(rows, key)
                if steps:
                    marker = "o" if len(steps) <= 25 else None
                    ax.plot(steps, values, linestyle=style, color=color, marker=marker, markersize=3)
                    drawn += 1
        ax.set_title(panel.title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_xlabel("training step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        shown = legend_styles(panel, [rows for _, rows in data])
        if shown:
            handles = [
                Line2D([], [], color="black", linestyle=style, label=meaning) for style, meaning in shown
            ]
            ax.legend(handles=handles, loc="best", fontsize="small")
    legend_ax = flat_axes[len(PANELS)]
    legend_ax.axis("off")
    handles = [
        Line2D([], [], color=colors[i % len(colors)], linewidth=3, label=label)
        for i, (label, _) in enumerate(data)
    ]
    legend_ax.legend(handles=handles, loc="center", title="jobs", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, Path(out))
    plt.close(fig)
    return Path(out)


__all__ = ["plot_reward_curve", "plot_jobs", "legend_styles", "PANELS"]
