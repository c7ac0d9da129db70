"""Group-relative advantages (GRPO, arXiv 2402.03300, "outcome supervision").

For one prompt the K sampled responses form a group g with scores r_1..r_K. Each response's
advantage is its score standardised within the group:

    A_i = (r_i - mean_g) / (std_g + eps),    eps = 1e-6

with ``std_g`` the *unbiased* (Bessel-corrected, divide by n - 1) standard deviation, as in verl
and TRL (``torch.std`` defaults). The same advantage is used for every token of response i.

Invalid scores (the evaluator raised, timed out or said so; also any non-finite score) are
handled explicitly: they are left out of ``mean_g`` and ``std_g`` and their responses get
advantage 0, so they neither push the policy nor shift the other responses' advantages. A group
with fewer than 2 valid scores has no defined spread, and a group whose valid scores are all
equal has none: both get advantages of exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from openrft.records import ScoredGroup

ADVANTAGE_EPS = 1e-6


def group_advantages(
    scores_K: Sequence[float] | torch.Tensor,
    valid_K: Sequence[bool] | torch.Tensor | None = None,
    eps: float = ADVANTAGE_EPS,
) -> torch.Tensor:
    """Advantages ``[K]`` (float32) of one group: A_i = (r_i - mean) / (std_unbiased + eps).

    Statistics use the valid scores only (``valid_K`` True; None = all valid; non-finite scores
    count as invalid). Invalid scores get 0; with fewer than 2 valid scores every advantage is 0.
    Computed in float64 and returned as float32.
    """
    scores = torch.as_tensor(_as_floats(scores_K), dtype=torch.float64).reshape(-1)  # [K]
    if valid_K is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    else:
        valid = torch.as_tensor(valid_K, dtype=torch.bool).reshape(-1)  # [K]
        if valid.shape != scores.shape:
            raise ValueError(f"group_advantages: {valid.numel()} validity flags for {scores.numel()} scores")
    valid = valid & torch.isfinite(scores)
    adv = torch.zeros_like(scores)
    kept = scores[valid]
    if kept.numel() >= 2 and bool(kept.max() > kept.min()):  # equal scores: exactly 0, not rounding noise
        adv[valid] = (kept - kept.mean()) / (kept.std(unbiased=True) + eps)
    return adv.to(torch.float32)


def group_advantages_batch(
    scores_GK: Sequence[Sequence[float]],
    valid_GK: Sequence[Sequence[bool] | None] | None = None,
    eps: float = ADVANTAGE_EPS,
) -> list[torch.Tensor]:
    """:func:`group_advantages` for G groups (their K may differ); one ``[K_g]`` tensor per group."""
    if valid_GK is not None and len(valid_GK) != len(scores_GK):
        raise ValueError(
            f"group_advantages_batch: {len(valid_GK)} validity lists for {len(scores_GK)} groups"
        )
    valids = valid_GK if valid_GK is not None else [None] * len(scores_GK)
    return [group_advantages(s, v, eps) for s, v in zip(scores_GK, valids, strict=True)]


def scored_group_advantages(groups: Sequence[ScoredGroup], eps: float = ADVANTAGE_EPS) -> list[torch.Tensor]:
    """Advantages of :class:`ScoredGroup` records, read from ``Score.score`` / ``Score.is_valid``."""
    return group_advantages_batch(
        [[s.score for s in g.scores] for g in groups], [[s.is_valid for s in g.scores] for g in groups], eps
    )


def _as_floats(values: Any) -> Any:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    # None (an evaluator that returned nothing) becomes NaN, i.e. invalid.
    return [math.nan if v is None else float(v) for v in values]
