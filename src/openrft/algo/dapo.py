"""Opt-in extras from the DAPO paper (arXiv 2503.14476), off by default.

The reference service implements neither; openrft offers both behind flags, as pure functions
the trainer wires in:

* **Overlong reward shaping** (DAPO section 3.4, "soft overlong punishment"): a length-aware
  penalty added to the score of a response that runs into the last ``buffer`` tokens before the
  length limit ``L_max``:

      R(y) = 0                                   if |y| <= L_max - buffer
      R(y) = factor * ((L_max - buffer) - |y|) / buffer   if L_max - buffer < |y| <= L_max
      R(y) = -factor                             if |y| > L_max

  i.e. ``factor * clamp(((L_max - buffer) - |y|) / buffer, -1, 0)``; linear from 0 to -factor.

* **Dynamic sampling** (DAPO section 3.2): instead of training on a batch shrunk by zero-variance
  filtering, sample further prompts until the batch holds the target number of groups with
  non-zero score variance, with a cap on extra rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from openrft.algo.filtering import group_has_variance
from openrft.records import ScoredGroup

G = TypeVar("G")
P = TypeVar("P")


def default_overlong_buffer(max_tokens: int) -> int:
    """The default buffer: a quarter of the response length limit (at least 1 token)."""
    return max(1, int(max_tokens) // 4)


def _check_overlong(max_tokens: int, buffer: int, factor: float) -> None:
    if max_tokens < 1:
        raise ValueError(f"overlong penalty: max_tokens must be >= 1, got {max_tokens}")
    if not 1 <= buffer <= max_tokens:
        raise ValueError(
            f"overlong penalty: buffer must be from 1 to max_tokens ({max_tokens}), got {buffer}"
        )
    if not 0 <= factor < float("inf"):
        raise ValueError(f"overlong penalty: factor must be a finite number >= 0, got {factor}")


def overlong_penalties(
    lengths_N: Sequence[int] | torch.Tensor, max_tokens: int, buffer: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO soft overlong penalties (<= 0, see the module doc): float32 ``[N]`` for ``[N]`` lengths."""
    _check_overlong(max_tokens, buffer, factor)
    lengths = torch.as_tensor(lengths_N, dtype=torch.float64)  # [N]
    fraction = ((max_tokens - buffer - lengths) / buffer).clamp(-1.0, 0.0)
    return (factor * fraction + 0.0).to(torch.float32)


def apply_overlong_penalty(
    groups: Sequence[ScoredGroup], max_tokens: int, buffer: int, factor: float = 1.0
) -> list[ScoredGroup]:
    """Add the overlong penalty to every valid score, by the length of the candidate's longest model call
    in tokens (its completion; an agent's longest reply, tool results and user turns not counted:
    ``--max-output-tokens`` bounds each call, not the conversation).

    Invalid scores are left alone (they get advantage 0 anyway). The penalty applied is recorded
    in each score's ``metrics["overlong_penalty"]``.
    """
    out = []
    for group in groups:
        lengths = [c.longest_call for c in group.completions]
        penalties = overlong_penalties(lengths, max_tokens, buffer, factor).tolist()
        scores = tuple(
            replace(s, score=s.score + p, metrics={**s.metrics, "overlong_penalty": p}) if s.is_valid else s
            for s, p in zip(group.scores, penalties, strict=True)
        )
        out.append(replace(group, scores=scores))
    return out


@dataclass
class DynamicSamplingStats:
    """What one dynamic-sampling call did."""

    rounds: int = 0  # sampling rounds run, the first included
    groups_sampled: int = 0
    groups_dropped: int = 0  # zero-variance groups thrown away
    groups_kept: int = 0  # groups returned (<= target)
    groups_surplus: int = 0  # non-zero-variance groups beyond the target, discarded
    exhausted: bool = False  # draw_prompts ran out of prompts

    @property
    def extra_rounds(self) -> int:
        return max(0, self.rounds - 1)

    def as_metrics(self) -> dict[str, float]:
        return {
            "sampling/rounds": float(self.rounds),
            "sampling/extra_rounds": float(self.extra_rounds),
            "sampling/groups_sampled": float(self.groups_sampled),
        }  # (the filter's counts are the round's: filter/*; no surplus, as a round draws only the groups missing)


def _scored_group_has_variance(group: Any) -> bool:
    if not isinstance(group, ScoredGroup):
        raise TypeError(
            f"dynamic_sampling: cannot tell whether a {type(group).__name__} has score variance; "
            "pass has_variance=callable"
        )
    return group_has_variance(group)


def dynamic_sampling(
    target_groups: int,
    draw_prompts: Callable[[int], Sequence[P]],
    sample_and_score: Callable[[Sequence[P]], Sequence[G]],
    max_rounds: int,
    has_variance: Callable[[G], bool] | None = None,
) -> tuple[list[G], DynamicSamplingStats]:
    """Sample until ``target_groups`` groups with non-zero score variance are collected.

    Each round asks ``draw_prompts(n)`` for ``n`` = the number of groups still missing (the first
    round: ``target_groups``), turns them into groups with ``sample_and_score(prompts)`` and keeps
    those for which ``has_variance(group)`` is True (default: :class:`ScoredGroup` records judged
    by :func:`openrft.algo.filtering.group_has_variance`). Stops when the target is reached,
    after ``max_rounds`` extra rounds, or when ``draw_prompts`` returns nothing. Returns the kept
    groups in sampling order, truncated to ``target_groups``, and :class:`DynamicSamplingStats`.
    Generic over prompts and groups; no model is involved.
    """
    if target_groups < 0 or max_rounds < 0:
        raise ValueError(
            f"dynamic_sampling: target_groups ({target_groups}) and max_rounds ({max_rounds}) must be >= 0"
        )
    check = has_variance or _scored_group_has_variance
    stats = DynamicSamplingStats()
    kept: list[G] = []
    while len(kept) < target_groups and stats.rounds <= max_rounds:
        prompts = list(draw_prompts(target_groups - len(kept)))
        if not prompts:
            stats.exhausted = True
            break
        groups = list(sample_and_score(prompts))
        stats.rounds += 1
        stats.groups_sampled += len(groups)
        for group in groups:
            if check(group):
                kept.append(group)
            else:
                stats.groups_dropped += 1
    stats.groups_surplus = max(0, len(kept) - target_groups)
    kept = kept[:target_groups]
    stats.groups_kept = len(kept)
    return kept, stats
