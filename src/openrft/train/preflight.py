"""A preflight: sample and score a job's first prompts as its first round would, without training.

:func:`run_preflight` builds the job's policy (the base model with a fresh adapter, which samples
exactly as the base model, or the warm-start adapter), its rollout engine and its scorer with the
same builders a job uses, then samples ``--preflight-prompts`` prompts of the first round (the
job's seeded order, the round's sampling seed) with the job's sampling parameters and scores them
with its evaluator. Nothing is recorded in the job store and no weight changes.

Timing, measured on this machine:

* **sampling and scoring**: wall time for the sampled prompts, scaled linearly to the round's
  ``--chunk-size`` prompts and to the epoch's training prompts;
* **training**: one forward + backward pass (the job's loss, including grpo's reference pass) over
  a few micro-batches of the sampled sequences, the first one not counted (warm-up). The tokens per
  second measured there are applied to the tokens the round would train on: the sampled
  sequences' mean length x the candidates of the groups that are not zero-variance. The gradients
  are discarded.
* **evaluator latency**: a few calls made one at a time after the scoring pass. A scoring pass
  under 5 s is timed a second time, so that starting the evaluator's worker processes (once per
  job) does not count as per-round time.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openrft.algo.filtering import is_zero_variance
from openrft.data import epoch_order
from openrft.records import ScoredGroup
from openrft.settings import JobSettings
from openrft.train import setup
from openrft.train.job import PreparedJob, build_engine, prompts_that_fit
from openrft.train.preflight_report import PreflightReport, Timing, group_stats

DEFAULT_PROMPTS = 32
LATENCY_CALLS = 3  # evaluator calls timed one at a time
TIMED_MICRO_BATCHES = 4  # forward + backward passes timed for the training estimate (after a warm-up one)
RESCORE_UNDER_S = 5.0  # a scoring pass this short is timed again: the first one started the workers
MISMATCH_FORWARD_FACTOR = (
    4 / 3
)  # another engine's samples: one more forward pass (~1/3 of forward + backward)


def run_preflight(prepared: PreparedJob, prompts: int = DEFAULT_PROMPTS) -> PreflightReport:
    """Sample and score the first ``prompts`` prompts the job would sample; measure rates and times."""
    settings = prepared.settings
    seed = settings.schedule.seed
    if settings.schedule.deterministic:
        setup.make_deterministic()
    model, tokenizer = setup.build_policy(settings.model, settings.loss, seed)
    train_prompts, _ = prompts_that_fit(prepared, model, tokenizer)
    order = epoch_order(len(train_prompts), 0, seed)
    subset = [train_prompts[i] for i in order[: max(1, prompts)]]
    from openrft.train.loop import round_seed
    from openrft.train.rounds import sample_and_score

    params = dataclasses.replace(settings.sampling, seed=round_seed(seed, 0))
    engine, needs_files = build_engine(prepared, model, tokenizer)
    scorer = setup.make_scorer(settings.engine, prepared.evaluator, check_invalid=False)
    timings: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="openrft-preflight-") as tmp:
            adapters = Path(tmp) / "preflight" / "adapters" if needs_files else None
            setup.policy_publisher(engine, model, adapters)(0)
            groups = sample_and_score(engine, scorer, subset, params, settings.rounds, timings)
            latency = time_calls(scorer, groups, prepared.evaluator.mode)
            calls = (
                len(groups)
                if prepared.evaluator.mode == "groupwise"
                else sum(len(g.completions) for g in groups)
            )
            # The first pass started the worker processes (an import of eval-protocol can take 15 s):
            # time it again when that pass was short, or when the warm calls say the second one will be
            if min(timings.get("time/score_s", 0.0), (latency or 0.0) * calls) < RESCORE_UNDER_S:
                start = time.perf_counter()
                scorer([g.prompt for g in groups], [list(g.completions) for g in groups])
                timings["time/score_s"] = time.perf_counter() - start
    finally:
        getattr(engine, "close", lambda: None)()
        getattr(scorer, "close", lambda: None)()
    report = summarize_groups(groups, settings, prepared.evaluator.mode)
    report.base_model = setup.base_model_name(settings.model)
    report.train_prompts = len(train_prompts)
    report.latency_s = latency
    report.sample_wall_s = timings.get("time/rollout_s", 0.0)
    report.score_wall_s = timings.get("time/score_s", 0.0)
    tokens_per_s, method = time_training(model, tokenizer.pad_token_id, groups, settings)
    if not setup.samples_this_model(engine, model) and tokens_per_s:
        tokens_per_s /= MISMATCH_FORWARD_FACTOR
        method += "; divided by 4/3 for the forward pass that recomputes the sampler's log-probs"
    report.timing = estimate_timing(report, groups, settings, tokens_per_s, method)
    return report


def summarize_groups(groups: Sequence[ScoredGroup], settings: JobSettings, mode: str) -> PreflightReport:
    """The report's sampled statistics (the filled-in timing and names come after)."""
    pairs = [[(s.score, s.is_valid) for s in g.scores] for g in groups]
    means, stds = group_stats(pairs)
    valid = sorted({s.score for g in groups for s in g.scores if s.is_valid})
    lowest, highest = (valid[0], valid[-1]) if valid else (0.0, 0.0)
    zero = low = high = 0
    for g in groups:
        if not is_zero_variance([s.score for s in g.scores], [s.is_valid for s in g.scores]):
            continue
        zero += 1
        common = next((s.score for s in g.scores if s.is_valid), None)
        if common is None:
            continue
        if highest - lowest > 1e-9:
            low += abs(common - lowest) <= 1e-9
            high += abs(common - highest) <= 1e-9
        else:  # one score for everything: 0 or less reads as failure, 1 or more as success
            low += common <= 0
            high += common >= 1
    completions = [c for g in groups for c in g.completions]
    scores = [s for g in groups for s in g.scores]
    invalid = [s for s in scores if not s.is_valid]
    s = settings.sampling
    return PreflightReport(
        base_model="", device=settings.model.device, prompts=len(groups), train_prompts=0, n=s.n,
        max_tokens=s.max_tokens, temperature=s.temperature, group_means=means, group_stds=stds,
        zero_variance=zero, zero_variance_low=low, zero_variance_high=high, distinct_scores=valid[:12],
        lengths=[c.sampled_tokens for c in completions],
        truncated=sum(c.finish_reason == "length" for c in completions), scores=len(scores),
        invalid=len(invalid), invalid_example=next((x.reason for x in invalid if x.reason), "no reason given" if invalid else None),
        calls=len(groups) if mode == "groupwise" else len(scores), latency_s=None, sample_wall_s=0.0,
        score_wall_s=0.0,
    )  # fmt: skip


def time_calls(scorer: Callable, groups: Sequence[ScoredGroup], mode: str) -> float | None:
    """Median seconds of a few evaluator calls made one at a time (a call: a response, or a group)."""
    times = []
    for g in groups[:LATENCY_CALLS]:
        completions = list(g.completions) if mode == "groupwise" else [g.completions[0]]
        start = time.perf_counter()
        scorer([g.prompt], [completions])
        times.append(time.perf_counter() - start)
    return statistics.median(times) if times else None


def time_training(
    model: Any, pad_token_id: int, groups: Sequence[ScoredGroup], settings: JobSettings
) -> tuple[float | None, str]:
    """Tokens per second of the job's forward + backward pass on the sampled sequences, and how."""
    from openrft.train.batching import TrainSequence
    from openrft.train.step import StepLoss, accumulate_gradients, plan_step, training_mode

    sequences = [
        TrainSequence(dataclasses.replace(seq, continuations=(), conversation=()), 1.0 - 2.0 * (i % 2), g)
        for g, group in enumerate(groups)
        for i, completion in enumerate(group.completions)
        if not completion.error
        for seq in completion.sequences
        if seq.completion_token_ids
    ]
    packed = not settings.model.gradient_checkpointing
    batches, _ = plan_step(sequences, settings.batching.micro_batch_tokens, pad_token_id, packed)
    batches = batches[: TIMED_MICRO_BATCHES + 1]
    if not batches:
        return None, "no sampled tokens to time a training pass on"
    loss = StepLoss(
        settings.loss_fn, settings.loss, settings.sampling.temperature,
        full_sequences=settings.model.gradient_checkpointing, is_cap=settings.rounds.rollout_is_cap,
    )  # fmt: skip
    measured: list[tuple[int, float]] = []
    with training_mode(model):
        for batch in batches:
            start = time.perf_counter()
            accumulate_gradients(model, [batch], loss)
            measured.append((batch.num_tokens, time.perf_counter() - start))
    model.zero_grad(set_to_none=True)
    timed = measured[1:] or measured  # the first pass warms up allocators and kernels
    tokens, seconds = sum(t for t, _ in timed), sum(s for _, s in timed)
    method = (
        f"forward + backward timed on {len(timed)} micro-batch(es) of the sampled sequences "
        f"({tokens} tokens, --micro-batch-tokens {settings.batching.micro_batch_tokens})"
    )
    return (tokens / seconds if seconds > 0 else None), method


def estimate_timing(
    report: PreflightReport,
    groups: Sequence[ScoredGroup],
    settings: JobSettings,
    tokens_per_s: float | None,
    method: str,
) -> Timing:
    """Seconds per round and per epoch: the measured per-prompt costs scaled to the job's sizes."""
    schedule = settings.schedule
    per_round = schedule.prompts_per_round(report.train_prompts)
    sample_per_prompt = report.sample_wall_s / max(1, report.prompts)
    score_per_prompt = report.score_wall_s / max(1, report.prompts)
    lengths = [seq.num_tokens for g in groups for c in g.completions for seq in c.sequences]
    mean_tokens = sum(lengths) / max(1, len(lengths))
    kept = 1.0 - report.zero_variance_frac
    train_tokens_per_prompt = kept * len(lengths) / max(1, report.prompts) * mean_tokens
    train_per_prompt = train_tokens_per_prompt / tokens_per_s if tokens_per_s else 0.0
    per_prompt = sample_per_prompt + score_per_prompt + train_per_prompt
    return Timing(
        sample_s=sample_per_prompt * per_round, score_s=score_per_prompt * per_round,
        train_s=train_per_prompt * per_round, round_s=per_prompt * per_round,
        epoch_s=per_prompt * report.train_prompts, rounds_per_epoch=schedule.rounds_per_epoch(report.train_prompts),
        prompts_per_round=per_round, train_tokens_per_s=tokens_per_s, train_method=method,
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, cpus=os.cpu_count(),
    )  # fmt: skip


__all__ = ["DEFAULT_PROMPTS", "run_preflight", "summarize_groups", "time_training", "estimate_timing"]
