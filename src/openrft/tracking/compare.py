"""Compare jobs: which parameters differ, and how their rewards came out.

The tuning workflow this supports: run a baseline with the defaults, change one
parameter, compare the reward curves. :func:`differing_parameters` names exactly
the parameters whose resolved values differ (identity and bookkeeping fields such
as the job id, output folder and W&B settings are left out), and
:func:`format_comparison` warns when more than one differs, because then no single
change explains the difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.tracking.sinks import read_metrics

# Fields that name or route a job rather than change what it learns.
NOT_COMPARED = frozenset(
    {"job_id", "output_model", "wandb", "wandb_project", "wandb_entity", "wandb_api_key", "wandb_run_id"}
)


def shown_value(value: Any) -> str:
    """A parameter's value as a person reads it: ``unset``, a list as its items (strings quoted, so that
    a stop string's spaces and newlines show) or ``none`` when empty, anything else as itself."""
    if value is None:
        return "unset"
    if isinstance(value, list | tuple):
        return ", ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in value) or "none"
    return str(value)


@dataclass(frozen=True)
class RunSummary:
    """What a job achieved, read from its ``metrics.jsonl``."""

    label: str
    state: str
    steps: int
    final_reward: float | None
    best_reward: float | None
    best_reward_step: int | None
    final_eval: float | None  # evaluations of a trained policy only (after step 0)
    best_eval: float | None
    wall_s: float | None
    rounds: int = 0  # rollout rounds sampled
    rounds_untrained: int = 0  # of which every group was filtered (no update)
    best_eval_step: int | None = None
    start_eval: float | None = None  # the evaluation before training (step 0)


def _values(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(r["step"]), float(r[key]))
        for r in rows
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]


def summarize_run(
    label: str, metrics_path: Path, *, state: str = "", wall_s: float | None = None
) -> RunSummary:
    rows = read_metrics(Path(metrics_path))
    reward = _values(rows, "reward/mean")
    evals = _values(rows, "eval/reward")
    trained = [p for p in evals if p[0] > 0]  # step 0's evaluation is of the policy before training
    best = max(reward, key=lambda p: p[1]) if reward else None
    best_eval = max(trained, key=lambda p: p[1]) if trained else None
    return RunSummary(
        label=label,
        state=state,
        steps=max((int(r.get("step", 0)) for r in rows), default=0),
        final_reward=reward[-1][1] if reward else None,
        best_reward=best[1] if best else None,
        best_reward_step=best[0] if best else None,
        final_eval=trained[-1][1] if trained else None,
        best_eval=best_eval[1] if best_eval else None,
        best_eval_step=best_eval[0] if best_eval else None,
        start_eval=next((v for s, v in evals if s == 0), None),
        wall_s=wall_s,
        rounds=len({r["train/round"] for r in rows if r.get("train/round") is not None}),
        rounds_untrained=sum(1 for r in rows if r.get("filter/round_skipped")),
    )


def differing_parameters(
    configs: Sequence[dict[str, Any]], defaults: dict[str, Any] | None = None
) -> dict[str, list[Any]]:
    """``{parameter: [value per job]}`` for every compared parameter whose values are not all equal.

    ``configs`` are flat ``{field_name: value}`` dicts. A field missing from a config
    (a job made by an openrft version without that parameter) takes its value from
    ``defaults``, or counts as unset.
    """
    defaults = defaults or {}
    filled = [{**defaults, **cfg} for cfg in configs]
    names = sorted({name for cfg in configs for name in cfg} - NOT_COMPARED)
    return {
        name: [cfg.get(name) for cfg in filled]
        for name in names
        if any(cfg.get(name) != filled[0].get(name) for cfg in filled[1:])
    }


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(f"{str(c):<{w}}" for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(f"{str(c):<{w}}" for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines


def format_comparison(
    labels: Sequence[str],
    configs: Sequence[dict[str, Any]],
    summaries: Sequence[RunSummary],
    defaults: dict[str, Any] | None = None,
) -> tuple[str, list[str]]:
    """The comparison as text, and the warnings (printed separately)."""
    differing = differing_parameters(configs, defaults)
    warnings = []
    lines: list[str] = []
    if not differing:
        lines.append("The jobs have the same parameters: differences come from randomness alone.")
    else:
        lines.append("Parameters that differ:")
        rows = [
            [name.replace("_", "-"), *(shown_value(v) for v in values)] for name, values in differing.items()
        ]
        lines += ["  " + line for line in _table(["parameter", *labels], rows)]
        if len(differing) > 1:
            warnings.append(
                f"{len(differing)} parameters differ ({', '.join(n.replace('_', '-') for n in differing)}); "
                "change one at a time to know which change made the difference"
            )
    lines.append("")
    lines.append("Results:")
    rows = [
        [
            s.label,
            s.state or "-",
            str(s.steps),
            f"{s.rounds} ({s.rounds_untrained} no update)" if s.rounds_untrained else str(s.rounds),
            _num(s.final_reward),
            f"{_num(s.best_reward)} (step {s.best_reward_step})" if s.best_reward is not None else "-",
            _num(s.start_eval),
            _num(s.final_eval),
            f"{_num(s.best_eval)} (step {s.best_eval_step})" if s.best_eval is not None else "-",
            _duration(s.wall_s),
        ]
        for s in summaries
    ]
    header = [
        "job",
        "state",
        "steps",
        "rounds",
        "final reward",
        "best reward",
        "eval before",
        "final eval",
        "best eval",
        "wall time",
    ]
    lines += ["  " + line for line in _table(header, rows)]
    return "\n".join(lines), warnings


__all__ = [
    "RunSummary",
    "summarize_run",
    "differing_parameters",
    "format_comparison",
    "NOT_COMPARED",
]
