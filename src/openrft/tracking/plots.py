"""Reward curves from ``metrics.jsonl`` files, drawn headless with matplotlib."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from openrft.tracking.sinks import read_jsonl


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def plot_reward_curve(metrics_path: Path, out: Path, title: str = "") -> Path:
    """Training reward (mean, and the band mean +- std) and eval reward against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(Path(metrics_path))
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, mean = _series(rows, "reward/mean")
    if steps:
        std = dict(zip(*_series(rows, "reward/std"), strict=False))
        low = [m - std.get(s, 0.0) for s, m in zip(steps, mean, strict=True)]
        high = [m + std.get(s, 0.0) for s, m in zip(steps, mean, strict=True)]
        ax.fill_between(steps, low, high, alpha=0.15, color="tab:blue", linewidth=0)
        ax.plot(steps, mean, color="tab:blue", label="train reward (mean)")
    eval_steps, eval_reward = _series(rows, "eval/reward")
    if eval_steps:
        ax.plot(eval_steps, eval_reward, "o-", color="tab:orange", label="eval reward")
    ax.set_xlabel("training step")
    ax.set_ylabel("reward")
    ax.set_title(f"reward curve {title}".strip())
    ax.grid(alpha=0.3)
    if steps or eval_steps:
        ax.legend(loc="best")
    _save(fig, Path(out))
    plt.close(fig)
    return Path(out)
