"""Zero-variance filtering at the two levels the reference service describes.

1. **Group level.** A group whose valid scores are all equal (or that has fewer than 2 valid
   scores) carries no learning signal: every advantage is 0. It is dropped from the batch and
   *not* replaced by new prompts (see :mod:`openrft.algo.dapo` for the opt-in alternative,
   dynamic sampling).
2. **Micro-batch level.** The trainer cuts the kept sequences into micro-batches. A micro-batch
   in which every sequence has advantage exactly 0 (e.g. only the invalid or tied candidates of
   a group ended up together) is dropped as well. Note that for grpo such a micro-batch would
   still have contributed its KL term; dropping it is what the reference does. The step's loss
   denominator (:func:`openrft.train.step.step_denominator_of`) still counts the dropped ones'
   tokens, so the policy term's gradient is unchanged.

The counts are returned so that the trainer can log ``filter/zero_variance_groups``,
``filter/zero_advantage_micro_batches`` and the effective batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openrft.records import ScoredGroup

ZERO_ADVANTAGE_ATOL = 1e-12


def is_zero_variance(
    scores_K: Sequence[float] | Any, valid_K: Sequence[bool] | Any | None = None, atol: float = 1e-9
) -> bool:
    """True when a group carries no signal: < 2 valid (finite) scores, or max - min <= ``atol``.

    Uses the same notion of validity as :func:`openrft.algo.advantages.group_advantages`.
    """
    scores = [float(s) if s is not None else math.nan for s in scores_K]
    valid = [True] * len(scores) if valid_K is None else [bool(v) for v in valid_K]
    if len(valid) != len(scores):
        raise ValueError(f"is_zero_variance: {len(valid)} validity flags for {len(scores)} scores")
    kept = [s for s, ok in zip(scores, valid, strict=True) if ok and math.isfinite(s)]
    return len(kept) < 2 or max(kept) - min(kept) <= atol


def group_has_variance(group: ScoredGroup, atol: float = 1e-9) -> bool:
    """True when a :class:`ScoredGroup` has a learning signal (not zero-variance)."""
    return not is_zero_variance([s.score for s in group.scores], [s.is_valid for s in group.scores], atol)


@dataclass(frozen=True)
class GroupPartition:
    """Indices of the groups kept and dropped by zero-variance filtering (input order)."""

    kept: tuple[int, ...]
    dropped: tuple[int, ...]

    @property
    def n_kept(self) -> int:
        return len(self.kept)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)


def partition_groups(
    scores_GK: Sequence[Sequence[float]],
    valid_GK: Sequence[Sequence[bool] | None] | None = None,
    atol: float = 1e-9,
) -> GroupPartition:
    """Split G groups into kept (has variance) and dropped (zero variance) indices."""
    valids = valid_GK if valid_GK is not None else [None] * len(scores_GK)
    if len(valids) != len(scores_GK):
        raise ValueError(f"partition_groups: {len(valids)} validity lists for {len(scores_GK)} groups")
    kept: list[int] = []
    dropped: list[int] = []
    for g, (scores, valid) in enumerate(zip(scores_GK, valids, strict=True)):
        (dropped if is_zero_variance(scores, valid, atol) else kept).append(g)
    return GroupPartition(tuple(kept), tuple(dropped))


def filter_scored_groups(
    groups: Sequence[ScoredGroup], atol: float = 1e-9
) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
    """``(kept, dropped)`` :class:`ScoredGroup` lists; dropped groups are not replaced."""
    part = partition_groups(
        [[s.score for s in g.scores] for g in groups], [[s.is_valid for s in g.scores] for g in groups], atol
    )
    return [groups[i] for i in part.kept], [groups[i] for i in part.dropped]


def drop_zero_advantage_micro_batches(
    micro_batches: Sequence[Sequence[int]], advantages: Sequence[float] | Any
) -> tuple[list[list[int]], int]:
    """Drop micro-batches whose sequences all have advantage 0 (``|A| < 1e-12``).

    ``micro_batches`` is the ordered list of micro-batches, each a list of sequence indices into
    ``advantages`` (a list or a 1-D tensor, one value per sequence). Returns the kept ones (in
    order) and the number dropped. An empty micro-batch has no signal and is dropped (and counted).
    """
    kept: list[list[int]] = []
    dropped = 0
    for batch in micro_batches:
        if any(abs(float(advantages[i])) >= ZERO_ADVANTAGE_ATOL for i in batch):
            kept.append(list(batch))
        else:
            dropped += 1
    return kept, dropped
