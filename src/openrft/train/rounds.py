"""One rollout round: sample K candidates per prompt, score them, turn scores into advantages.

The round's output is a flat list of :class:`TrainSequence` (only groups with signal) and
the round's metrics. Nothing here touches gradients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from openrft.algo.advantages import scored_group_advantages
from openrft.algo.dapo import apply_overlong_penalty, dynamic_sampling
from openrft.algo.filtering import filter_scored_groups
from openrft.records import Prompt, RolloutEngine, SamplingParams, ScoredGroup
from openrft.train.batching import TrainSequence

Scorer = Callable[[Sequence[Prompt], list[list]], list[list]]


@dataclass(frozen=True)
class RoundSettings:
    params: SamplingParams
    overlong_buffer: int | None = None  # None = no overlong penalty
    overlong_factor: float = 1.0
    dynamic_sampling_rounds: int | None = None  # None = off


@dataclass
class RoundResult:
    groups: list[ScoredGroup]  # every group sampled (for metrics and rollout logs)
    sequences: list[TrainSequence]  # sequences of the kept groups, with advantages
    metrics: dict[str, float] = field(default_factory=dict)


def sample_and_score(
    engine: RolloutEngine,
    score: Scorer,
    prompts: Sequence[Prompt],
    settings: RoundSettings,
    timings: dict[str, float],
) -> list[ScoredGroup]:
    """Sample ``params.n`` candidates for each prompt and score every group."""
    start = time.perf_counter()
    completions = engine.generate(list(prompts), settings.params)
    timings["time/rollout_s"] = timings.get("time/rollout_s", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    scores = score(prompts, completions)
    timings["time/score_s"] = timings.get("time/score_s", 0.0) + time.perf_counter() - start
    groups = [
        ScoredGroup(p, tuple(c), tuple(s)) for p, c, s in zip(prompts, completions, scores, strict=True)
    ]
    if settings.overlong_buffer is not None:
        groups = apply_overlong_penalty(
            groups, settings.params.max_tokens, settings.overlong_buffer, settings.overlong_factor
        )
    return groups


def run_round(
    engine: RolloutEngine,
    score: Scorer,
    prompts: Sequence[Prompt],
    settings: RoundSettings,
    draw_more: Callable[[int], Sequence[Prompt]] | None = None,
) -> RoundResult:
    """Sample, score, filter zero-variance groups and compute group-relative advantages."""
    timings: dict[str, float] = {}
    sampled: list[ScoredGroup] = []

    def sample(batch: Sequence[Prompt]) -> list[ScoredGroup]:
        groups = sample_and_score(engine, score, batch, settings, timings)
        sampled.extend(groups)
        return groups

    extra_metrics: dict[str, float] = {}
    if settings.dynamic_sampling_rounds is not None and draw_more is not None:
        first = iter([list(prompts)])
        kept, stats = dynamic_sampling(
            len(prompts),
            lambda n: next(first, None) or draw_more(n),
            sample,
            settings.dynamic_sampling_rounds,
        )
        extra_metrics = stats.as_metrics()
    else:
        kept, _ = filter_scored_groups(sample(prompts))
    advantages = scored_group_advantages(kept)
    sequences = [
        TrainSequence(completion, float(adv), group_index)
        for group_index, (group, adv_K) in enumerate(zip(kept, advantages, strict=True))
        for completion, adv in zip(group.completions, adv_K.tolist(), strict=True)
    ]
    metrics = {**round_metrics(sampled, len(kept), settings.params), **timings, **extra_metrics}
    return RoundResult(sampled, sequences, metrics)


def round_metrics(
    groups: Sequence[ScoredGroup], groups_kept: int, params: SamplingParams
) -> dict[str, float]:
    """reward/*, completion/*, filter/zero_variance_*, throughput/rollout_tokens_per_s of a round."""
    valid = [s.score for g in groups for s in g.scores if s.is_valid]
    all_scores = [s for g in groups for s in g.scores]
    lengths = [len(c.completion_token_ids) for g in groups for c in g.completions]
    truncated = [c.finish_reason == "length" for g in groups for c in g.completions]
    scores_t = torch.tensor(valid, dtype=torch.float64) if valid else torch.zeros(1, dtype=torch.float64)
    metrics = {
        "reward/mean": float(scores_t.mean()),
        "reward/std": float(scores_t.std(unbiased=False)),
        "reward/max": float(scores_t.max()),
        "reward/min": float(scores_t.min()),
        "reward/invalid_frac": 1.0 - len(valid) / max(1, len(all_scores)),
        "completion/mean_len": sum(lengths) / max(1, len(lengths)),
        "completion/max_len": float(max(lengths, default=0)),
        "completion/truncated_frac": sum(truncated) / max(1, len(truncated)),
        "filter/zero_variance_groups": float(len(groups) - groups_kept),
        "filter/zero_variance_frac": (len(groups) - groups_kept) / max(1, len(groups)),
        "filter/groups": float(len(groups)),
        "rollout/completion_tokens": float(sum(lengths)),
    }
    names = {name for s in all_scores for name in s.metrics}
    for name in sorted(names):
        values = [float(s.metrics[name]) for s in all_scores if name in s.metrics and s.is_valid]
        if values:
            metrics[f"reward/{name}"] = sum(values) / len(values)
    return metrics


def evaluate(
    engine: RolloutEngine, score: Scorer, prompts: Sequence[Prompt], params: SamplingParams
) -> dict[str, float]:
    """Score the evaluation prompts with the current policy: ``eval/reward`` and per-metric means."""
    if not prompts:
        return {}
    completions = engine.generate(list(prompts), params)
    scores = [s for group in score(prompts, completions) for s in group]
    valid = [s for s in scores if s.is_valid]
    metrics = {"eval/reward": sum(s.score for s in valid) / max(1, len(valid))}
    for name in sorted({n for s in valid for n in s.metrics}):
        values = [float(s.metrics[name]) for s in valid if name in s.metrics]
        metrics[f"eval/{name}"] = sum(values) / len(values)
    metrics["eval/invalid_frac"] = 1.0 - len(valid) / max(1, len(scores))
    return metrics
