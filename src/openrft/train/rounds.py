"""One rollout round: sample K candidates per prompt, score them, turn scores into advantages.

The round's output is a flat list of :class:`TrainSequence` (only groups with signal) and
the round's metrics. Nothing here touches gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from openrft.algo.advantages import scored_group_advantages
from openrft.algo.dapo import apply_overlong_penalty, dynamic_sampling
from openrft.algo.filtering import filter_scored_groups, group_has_variance
from openrft.errors import RolloutAborted
from openrft.evaluators.runner import summarize
from openrft.records import Prompt, RolloutEngine, SamplingParams, ScoredGroup
from openrft.settings import RoundSettings
from openrft.train.batching import TrainSequence

Scorer = Callable[[Sequence[Prompt], list[list]], list[list]]
ABORT_POLL_S = 0.5  # a cancel request is read at most this often while a round samples and scores


@dataclass
class RoundResult:
    groups: list[ScoredGroup]  # every group sampled (for metrics and rollout logs)
    sequences: list[TrainSequence]  # sequences of the kept groups, with advantages
    metrics: dict[str, float] = field(default_factory=dict)


def sample_and_score(
    engine: RolloutEngine,
    score: Scorer,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    settings: RoundSettings,
    timings: dict[str, float],
) -> list[ScoredGroup]:
    """Sample ``params.n`` candidates for each prompt and score every group."""
    start = time.perf_counter()
    completions = engine.generate(list(prompts), params)
    timings["time/rollout_s"] = timings.get("time/rollout_s", 0.0) + time.perf_counter() - start
    abort = getattr(engine, "should_abort", None)
    if abort is not None and abort():  # cancelled while sampling: not worth scoring
        raise RolloutAborted()
    start = time.perf_counter()
    # a scorer that can stop its calls part-way (make_scorer's) is handed the cancel check too
    takes_abort = abort is not None and "abort" in inspect.signature(score).parameters
    scores = score(prompts, completions, abort=abort) if takes_abort else score(prompts, completions)
    timings["time/score_s"] = timings.get("time/score_s", 0.0) + time.perf_counter() - start
    groups = [
        ScoredGroup(p, tuple(c), tuple(s)) for p, c, s in zip(prompts, completions, scores, strict=True)
    ]
    if settings.overlong_buffer is not None:
        groups = apply_overlong_penalty(
            groups, params.max_tokens, settings.overlong_buffer, settings.overlong_factor
        )
    return groups


def run_round(
    engine: RolloutEngine,
    score: Scorer,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    settings: RoundSettings = RoundSettings(),
    draw_more: Callable[[int], Sequence[Prompt]] | None = None,
    abort: Callable[[], bool] | None = None,
) -> RoundResult:
    """Sample, score, filter zero-variance groups and compute group-relative advantages.

    ``abort``, when given, is asked as the round goes (by an engine that can stop part-way, see
    :class:`RolloutEngine`, and before scoring); once it answers True the round raises
    :class:`RolloutAborted` and nothing of it is kept.
    """
    with abortable(engine, abort):
        return _run_round(engine, score, prompts, params, settings, draw_more)


@contextlib.contextmanager
def abortable(engine: RolloutEngine, abort: Callable[[], bool] | None) -> Iterator[None]:
    """Hand ``abort`` (read at most every :data:`ABORT_POLL_S`) to ``engine`` for the block."""
    if abort is None or not hasattr(engine, "should_abort"):
        yield
        return
    engine.should_abort = polled(abort, ABORT_POLL_S)
    try:
        yield
    finally:
        engine.should_abort = None


def polled(check: Callable[[], bool], every_s: float) -> Callable[[], bool]:
    """``check``, asked at most once every ``every_s`` seconds (its last answer in between); once it has
    answered True it is not asked again."""
    last = [float("-inf"), False]

    def answer() -> bool:
        now = time.monotonic()
        if not last[1] and now - last[0] >= every_s:
            last[:] = [now, bool(check())]
        return bool(last[1])

    return answer


def _run_round(
    engine: RolloutEngine,
    score: Scorer,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    settings: RoundSettings,
    draw_more: Callable[[int], Sequence[Prompt]] | None,
) -> RoundResult:
    timings: dict[str, float] = {}
    sampled: list[ScoredGroup] = []

    def sample(batch: Sequence[Prompt]) -> list[ScoredGroup]:
        groups = sample_and_score(engine, score, batch, params, settings, timings)
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
        TrainSequence(
            dataclasses.replace(sequence, continuations=(), conversation=()), float(adv), group_index
        )
        for group_index, (group, adv_K) in enumerate(zip(kept, advantages, strict=True))
        for completion, adv in zip(group.completions, adv_K.tolist(), strict=True)
        if not completion.error  # a failed agent run: scored invalid, nothing to train on
        for sequence in completion.sequences
        if sequence.completion_token_ids
    ]
    metrics = {**round_metrics(sampled, len(kept)), **timings, **extra_metrics}
    if hasattr(engine, "round_metrics"):  # a cluster's own (Ray: actor failures, policy lag)
        metrics.update(engine.round_metrics([c for g in sampled for c in g.completions]))
    return RoundResult(sampled, sequences, metrics)


def round_metrics(groups: Sequence[ScoredGroup], groups_kept: int) -> dict[str, float]:
    """reward/* (the score summary), completion/*, filter/zero_variance_*, rollout/* of a round."""
    lengths = [c.sampled_tokens for g in groups for c in g.completions]
    truncated = [c.finish_reason == "length" for g in groups for c in g.completions]
    zero = sum(not group_has_variance(g) for g in groups)  # (a surplus group DAPO discards is not one)
    return {
        **agent_metrics([c for g in groups for c in g.completions]),
        **summarize([g.scores for g in groups], prefix="reward"),
        "completion/mean_len": sum(lengths) / max(1, len(lengths)),
        "completion/max_len": float(max(lengths, default=0)),
        "completion/truncated_frac": sum(truncated) / max(1, len(truncated)),
        "filter/zero_variance_groups": float(zero),
        "filter/zero_variance_frac": zero / max(1, len(groups)),
        "filter/groups": float(len(groups)),
        "filter/groups_kept": float(groups_kept),
        "rollout/completion_tokens": float(sum(lengths)),
    }


def agent_metrics(completions: Sequence) -> dict[str, float]:
    """agent/* means over the round's agent rollouts (none when no completion came from an agent)."""
    runs = [c.agent_metrics for c in completions if c.agent_metrics]
    if not runs:
        return {}
    names = sorted({name for run in runs for name in run})
    out = {f"agent/{name}": sum(run.get(name, 0.0) for run in runs) / len(runs) for name in names}
    out["agent/failed_frac"] = sum(bool(c.error) for c in completions) / len(completions)
    return out


def evaluate(
    engine: RolloutEngine, score: Scorer, prompts: Sequence[Prompt], params: SamplingParams
) -> dict[str, float]:
    """Score the evaluation prompts with the current policy: the score summary under ``eval/``.

    The mean is logged as ``eval/reward`` (the evaluation's headline in plots and comparisons).
    """
    if not prompts:
        return {}
    staleness = getattr(engine, "max_staleness", 0)
    try:  # an evaluation scores the policy as it is now, never an older snapshot (Ray's --max-staleness)
        if staleness:
            engine.max_staleness = 0  # type: ignore[attr-defined]
        completions = engine.generate(list(prompts), params)
    finally:
        if staleness:
            engine.max_staleness = staleness  # type: ignore[attr-defined]
    metrics = summarize(score(prompts, completions), prefix="eval")
    metrics["eval/reward"] = metrics.pop("eval/mean")
    return metrics
