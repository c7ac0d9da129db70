"""The RFT loop, top to bottom: sample -> score -> advantages -> filter -> token-budget steps -> log.

    for each epoch (a pass over the prompts, reshuffled with the job seed):
        for each round (the next --chunk-size prompts):
            sample K candidates per prompt with the current policy (old log-probs recorded)
            score every candidate; A_i = (r_i - mean_g) / (std_g + eps) per prompt group
            drop zero-variance groups (not replaced)
            split the round into steps of <= --batch-size tokens
            for each step: micro-batches (zero-advantage ones dropped) -> loss -> backward
                every --gradient-accumulation-steps steps: clip, AdamW, new policy version
                log; evaluate every --eval-every; checkpoint every --checkpoint-every

Only the first step of a round is exactly on-policy; later steps of the same round
are corrected by the clipped importance ratio against the recorded old log-probs.
A dataset holding at most one and a half rounds of --chunk-size prompts is sampled in one round per epoch.
If a whole epoch produces no group with score variance, the job stops early.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from openrft.data import epoch_order
from openrft.errors import EvaluatorError, JobError, RolloutAborted
from openrft.records import Prompt, RolloutEngine, ScoredGroup
from openrft.settings import JobSettings
from openrft.tracking.progress import ProgressBar
from openrft.tracking.sinks import MetricsSink
from openrft.train.batching import TrainSequence, plan_micro_batches, plan_steps
from openrft.train.checkpoint import LoopState, save_checkpoint
from openrft.train.mismatch import recompute_old_logprobs
from openrft.train.rounds import Scorer, evaluate, run_round
from openrft.train.step import (
    StepLoss,
    accumulate_gradients,
    batch_logprobs,
    clip_gradients,
    plan_step,
    step_denominator_of,
    training_mode,
)

EARLY_STOP_MESSAGE = (
    "every candidate of every prompt in epoch {epoch} received the same score, so there is no learning "
    "signal. Try a higher --temperature (e.g. 0.8-1.0), more --response-candidates-count, or an evaluator "
    "that returns a range of scores rather than only 0 and 1."
)
TRUNCATED_STOP_MESSAGE = (
    "every candidate of every prompt in epoch {epoch} received the same score, so there is no learning "
    "signal, and {pct:.0f}% of the responses were cut off at --max-output-tokens before they ended: most "
    "likely they never reached an answer to score. Raise --max-output-tokens (or ask for shorter answers) "
    "first; if that is not it, try a higher --temperature, more --response-candidates-count, or an "
    "evaluator that returns a range of scores."
)
TRUNCATION_BLAME = 0.5  # the share of cut-off responses above which the early stop names truncation
MAX_ROLLOUT_ROWS_PER_ROUND = 128
MAX_NONFINITE_IN_A_ROW = 3
NONFINITE_MESSAGE = (
    "training diverged: the loss or its gradient was not finite in {n} updates in a row (the last at step "
    "{step}); no update with a non-finite value was applied. Try a lower --learning-rate, and check that the "
    "evaluator's scores are of a sensible size."
)


@dataclass
class TrainContext:
    """Everything the loop works with, built by :mod:`openrft.train.job`."""

    settings: JobSettings
    model: torch.nn.Module  # peft model: base + trainable LoRA adapter
    pad_token_id: int
    engine: RolloutEngine
    score: Scorer
    train_prompts: Sequence[Prompt]
    eval_prompts: Sequence[Prompt]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sink: MetricsSink
    checkpoint_dir: Path
    progress: ProgressBar
    publish_policy: Callable[[int], None]  # hands policy version N to the engine (engine.set_policy)
    sampler_is_trainer: bool = True  # the engine samples this very model (else: recompute, correct)
    should_stop: Callable[[], bool] = lambda: False  # a cancel request, checked at step boundaries
    # (and while a round samples, where the engine can stop part-way)


@dataclass(frozen=True)
class Outcome:
    status: Literal["completed", "cancelled", "early_stopped"]
    state: LoopState
    message: str = ""


def round_seed(seed: int, round_index: int) -> int:
    """Sampling seed of a round: deterministic, so resuming re-creates the same rollouts."""
    return (seed * 1_000_003 + round_index * 7_919) % (2**31)


def train(ctx: TrainContext, state: LoopState) -> Outcome:
    schedule = ctx.settings.schedule
    accumulation = ctx.settings.batching.accumulation_steps
    loss = StepLoss(
        ctx.settings.loss_fn, ctx.settings.loss, ctx.settings.sampling.temperature,
        full_sequences=ctx.settings.model.gradient_checkpointing, is_cap=ctx.settings.rounds.rollout_is_cap,
    )  # fmt: skip
    n_prompts = len(ctx.train_prompts)
    per_round = schedule.prompts_per_round(n_prompts)
    per_epoch = schedule.rounds_per_epoch(n_prompts)

    if state.outcome:  # resumed from the checkpoint written as the job ended: nothing is left to do
        return finished(state, state.outcome)
    state.cancelled = False
    if state.step == 0 and state.evaluated_version != state.optimizer_step:  # (a resume may have logged it)
        log_eval(ctx, state)
    while state.epoch < schedule.epochs:
        order = epoch_order(n_prompts, state.epoch, schedule.seed)
        while state.pending or state.cursor < n_prompts:
            # ---- a cancel request: honoured between rounds and steps (and part-way through a round's
            #      sampling and scoring, the round then dropped), on an update boundary
            if ctx.should_stop() and at_update_boundary(state, accumulation):
                state.cancelled = True  # (a resume goes on from here: it clears the mark)
                checkpoint(ctx, state)
                return Outcome("cancelled", state, f"cancelled at step {state.step}")
            # ---- a new round: sample, score, advantages, filter, plan steps
            if not state.pending:
                metrics = start_round(ctx, state, order, per_round, loss)
            # ---- one training step (none when every group of the round was filtered: it is logged)
            if state.pending:
                metrics = train_step(ctx, state, loss)
            ctx.progress.update(
                rounds_done=state.epoch * per_epoch + -(-state.cursor // per_round),
                step=state.step,
                epoch=state.epoch,
                metrics=metrics,
            )
        if state.epoch_groups_total and not state.epoch_groups_with_signal:
            flush_gradients(ctx, state)
            state.outcome = "early_stopped"  # the epoch's counters stay in the checkpoint, for its message
            checkpoint(ctx, state)
            return finished(state, state.outcome)
        state.epoch, state.cursor = state.epoch + 1, 0
        state.epoch_groups_total = state.epoch_groups_with_signal = 0
        state.epoch_completions = state.epoch_truncated = 0

    flush_gradients(ctx, state)
    log_eval(ctx, state, final=True)
    state.outcome = "completed"
    checkpoint(ctx, state)
    return finished(state, state.outcome)


def finished(state: LoopState, status: str) -> Outcome:
    return Outcome(status, state, early_stop_message(state) if status == "early_stopped" else "")


def early_stop_message(state: LoopState) -> str:
    """Why the job stopped: truncation when most answers were cut off, else too little spread in scores."""
    truncated = state.epoch_truncated / max(1, state.epoch_completions)
    if truncated >= TRUNCATION_BLAME:
        return TRUNCATED_STOP_MESSAGE.format(epoch=state.epoch + 1, pct=100 * truncated)
    return EARLY_STOP_MESSAGE.format(epoch=state.epoch + 1)


def start_round(
    ctx: TrainContext, state: LoopState, order: list[int], per_round: int, loss: StepLoss
) -> dict[str, float]:
    """Sample and score the next ``--chunk-size`` prompts; queue the round's steps in ``state.pending``.

    Returns the round's metrics; a round that trains nothing (every group filtered) logs them itself.
    """
    settings = ctx.settings

    def draw(n: int) -> list[Prompt]:  # the next n prompts of this epoch's order
        picked = [ctx.train_prompts[i] for i in order[state.cursor : state.cursor + n]]
        state.cursor += len(picked)
        return picked

    cursor = state.cursor
    prompts = draw(per_round)
    ctx.progress.round_started(state.round_index + 1, len(prompts), settings.sampling.n)
    params = dataclasses.replace(
        settings.sampling, seed=round_seed(settings.schedule.seed, state.round_index)
    )

    def abort() -> bool:  # a cancel stops the round part-way when it would stop the loop right after
        return ctx.should_stop() and at_update_boundary(state, settings.batching.accumulation_steps)

    def draw_more(n: int) -> list[Prompt]:  # DAPO's extra sampling batches stop at a cancel request
        if abort():  # the round is dropped, as when the cancel comes while a batch samples
            raise RolloutAborted()
        return [] if ctx.should_stop() else draw(n)  # (mid-update: the round keeps what it has)

    try:
        result = run_round(
            ctx.engine, ctx.score, prompts, params, settings.rounds, draw_more=draw_more, abort=abort
        )
    except RolloutAborted:  # nothing of the round is kept: a resume samples the same prompts again
        state.cursor = cursor
        return {}
    except EvaluatorError as exc:  # too many invalid scores fail the job: its rollouts stay to inspect
        scored = [ScoredGroup(p, tuple(cs), tuple(ss)) for p, cs, ss in getattr(exc, "scored", [])]
        rollout_rows(ctx, state.step + 1, state.round_index + 1, scored, trained=False)
        raise
    state.round_index += 1
    groups_kept = len({s.group_index for s in result.sequences})
    state.epoch_groups_total += len(result.groups)
    state.epoch_groups_with_signal += groups_kept
    completions = [c for g in result.groups for c in g.completions]
    state.epoch_completions += len(completions)
    state.epoch_truncated += sum(c.finish_reason == "length" for c in completions)
    sequences, mismatch = result.sequences, {}
    steps = plan_steps(sequences, settings.batching.step_tokens, settings.batching.step_sequences)
    state.pending = [[sequences[i] for i in step] for step in steps]
    state.round_start, state.round_steps = cursor, len(state.pending)
    if ctx.sampler_is_trainer:  # measured on the round's first step, from its own forward pass
        state.measure_mismatch = True
    elif sequences:  # another engine sampled: the trainer's old log-probs, and the correction weights
        micro_batch_tokens, packed = settings.batching.micro_batch_tokens, not loss.full_sequences
        state.pending, mismatch = recompute_old_logprobs(
            ctx.model, state.pending,
            lambda model, batch: batch_logprobs(model, batch, loss.temperature, loss.full_sequences),
            lambda step: plan_micro_batches(step, micro_batch_tokens, packed),
            pad_token_id=ctx.pad_token_id, cap=settings.rounds.rollout_is_cap,
        )  # fmt: skip
    metrics = {**result.metrics, **mismatch, "train/round": float(state.round_index)}
    # rollouts are labelled with the step that trains them, or, when none does, the step they followed
    step = state.step + 1 if state.pending else state.step
    rollout_rows(ctx, step, state.round_index, result.groups, trained=bool(state.pending))
    if state.pending:
        state.round_metrics = metrics
        return metrics
    # every group filtered: the round's own line, so that its rewards and counters are not lost
    metrics.update(
        {
            "filter/round_skipped": 1.0,
            "train/epoch": epoch_progress(state, len(ctx.train_prompts)),
            "train/optimizer_step": float(state.optimizer_step),
        }
    )
    ctx.sink.log(state.step, metrics)
    return metrics


def epoch_progress(state: LoopState, n_prompts: int) -> float:
    """Epochs trained so far, fractional: 0.5 halfway through the first, 1.0 when it is finished. A
    round's prompts count as its steps are trained (a one-round epoch is not done at its first step)."""
    done = float(state.cursor)
    if state.pending and state.round_steps:
        done = state.round_start + (state.cursor - state.round_start) * (
            1 - len(state.pending) / state.round_steps
        )
    return state.epoch + done / max(1, n_prompts)


def rollout_rows(ctx: TrainContext, step: int, round_index: int, groups, *, trained: bool) -> None:
    rows = []
    for g in groups:
        prompt = next((m["content"] for m in reversed(g.prompt.messages) if m.get("role") == "user"), "")
        system = next((m.get("content") for m in g.prompt.messages if m.get("role") == "system"), None)
        for c, s in zip(g.completions, g.scores, strict=True):
            rows.append(
                {
                    "round": round_index,
                    "trained": trained,
                    "prompt_id": g.prompt.prompt_id,
                    "prompt": prompt,
                    **({"system": system} if system else {}),  # which instructions this row had
                    "completion": c.text,
                    "score": s.score,
                    "valid": s.is_valid,
                    "reason": s.reason,
                    "finish_reason": c.finish_reason,
                    **(
                        {
                            "conversation": list(c.conversation),
                            "prompt_messages": len(g.prompt.messages),
                            "agent": c.agent_metrics,
                            "error": c.error,
                        }
                        if c.conversation or c.error
                        else {}
                    ),  # fmt: skip
                }
            )
    ctx.sink.log_rollouts(step, rows[:MAX_ROLLOUT_ROWS_PER_ROUND])


def train_step(ctx: TrainContext, state: LoopState, loss: StepLoss) -> dict[str, float]:
    """Gradients of the next pending step; an optimizer update when accumulation is complete."""
    batching, schedule = ctx.settings.batching, ctx.settings.schedule
    sequences: list[TrainSequence] = state.pending.pop(0)
    start = time.perf_counter()
    batches, dropped = plan_step(
        sequences, batching.micro_batch_tokens, ctx.pad_token_id, not loss.full_sequences,
    )  # fmt: skip
    # the loss sums over the update's tokens (or sequences): backpropagated unnormalised, it is divided by
    # the whole update's denominator at the update (optimizer_update), however its steps were split
    denominator = step_denominator_of(loss.spec.aggregation, sequences)
    state.update_denominator += denominator
    metrics: dict[str, float] = {}
    if batches:
        with training_mode(ctx.model):
            metrics = accumulate_gradients(
                ctx.model, batches, loss, scale=denominator, measure_mismatch=state.measure_mismatch,
                denominator=denominator,
            )  # fmt: skip
        if state.measure_mismatch:  # the round's measurement, repeated on its later steps' lines
            state.round_metrics.update({k: v for k, v in metrics.items() if k.startswith("mismatch/")})
            state.measure_mismatch = False
    state.step += 1
    updated = at_update_boundary(state, batching.accumulation_steps)
    if updated:
        metrics.update(optimizer_update(ctx, state))
    elapsed = time.perf_counter() - start
    trained_tokens = sum(b.num_tokens for b in batches)
    metrics.update(
        {
            **state.round_metrics,
            "filter/zero_advantage_micro_batches": float(dropped),
            "batch/sequences": float(sum(b.num_sequences for b in batches)),
            "batch/tokens": float(trained_tokens),
            "batch/micro_batches": float(len(batches)),
            "time/train_s": elapsed,
            "throughput/tokens_per_s": trained_tokens / elapsed if elapsed > 0 else 0.0,
            "throughput/rollout_tokens_per_s": state.round_metrics.get("rollout/completion_tokens", 0.0)
            / max(1e-9, state.round_metrics.get("time/rollout_s", 0.0)),
            "train/epoch": epoch_progress(state, len(ctx.train_prompts)),
            "train/optimizer_step": float(state.optimizer_step),
        }
    )
    metrics.setdefault("train/lr", ctx.optimizer.param_groups[0]["lr"])
    if updated and schedule.eval_every and state.optimizer_step % schedule.eval_every == 0:
        metrics.update(run_eval(ctx))
        state.evaluated_version = state.optimizer_step
    ctx.sink.log(state.step, metrics)
    if updated and state.optimizer_step % schedule.checkpoint_every == 0:
        checkpoint(ctx, state)
    return metrics


def at_update_boundary(state: LoopState, accumulation: int) -> bool:
    return state.step % accumulation == 0


def optimizer_update(ctx: TrainContext, state: LoopState) -> dict[str, float]:
    """Normalise, clip, AdamW step, schedule, then hand the new policy version to the engine.

    The gradients accumulated since the last update are of the loss summed over its steps' tokens (or
    sequences): divided by the update's whole denominator they are the gradient of its token-mean (or
    sequence mean), however many steps, of whatever sizes, it took.
    A non-finite gradient (from a non-finite loss) is never applied: the update is skipped and
    counted (``loss/nonfinite_skipped``); after ``MAX_NONFINITE_IN_A_ROW`` in a row the job fails.
    """
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    denominator, state.update_denominator = state.update_denominator, 0.0
    if denominator > 0:
        for p in params:
            if p.grad is not None:
                p.grad.div_(denominator)
    grad_norm = clip_gradients(params, ctx.settings.batching.max_grad_norm)
    if not math.isfinite(grad_norm):
        ctx.optimizer.zero_grad(set_to_none=True)
        state.nonfinite_in_a_row += 1
        if state.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise JobError(NONFINITE_MESSAGE.format(n=state.nonfinite_in_a_row, step=state.step))
        return {"loss/nonfinite_skipped": 1.0}
    state.nonfinite_in_a_row = 0
    metrics = {
        "grad/norm": grad_norm,
        "train/lr": ctx.optimizer.param_groups[0]["lr"],
        "loss/nonfinite_skipped": 0.0,
    }
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    state.optimizer_step += 1
    ctx.publish_policy(state.optimizer_step)
    return metrics


def checkpoint(ctx: TrainContext, state: LoopState) -> None:
    """Save the loop's state with the position of its logs: written after the step's metrics line,
    so a resume from it neither loses nor repeats a line."""
    position = getattr(ctx.sink, "position", None)
    state.log_position = position() if position else {}
    save_checkpoint(ctx.checkpoint_dir, state, ctx.model, ctx.optimizer, ctx.scheduler)


def flush_gradients(ctx: TrainContext, state: LoopState) -> None:
    """Apply gradients still accumulating when the data runs out (an update of fewer steps than
    --gradient-accumulation-steps), logged on a line of its own under the last step's number: no
    step is added, as no batch was trained."""
    if at_update_boundary(state, ctx.settings.batching.accumulation_steps) or state.update_denominator == 0:
        return
    metrics = optimizer_update(ctx, state)
    metrics |= {"train/optimizer_step": float(state.optimizer_step),
                "train/epoch": epoch_progress(state, len(ctx.train_prompts))}  # fmt: skip
    ctx.sink.log(state.step, metrics)


def run_eval(ctx: TrainContext) -> dict[str, float]:
    schedule = ctx.settings.schedule
    params = dataclasses.replace(
        ctx.settings.sampling, seed=schedule.seed + 104_729, n=schedule.eval_candidates
    )
    start = time.perf_counter()
    metrics = evaluate(ctx.engine, ctx.score, ctx.eval_prompts, params)
    if metrics:
        metrics["time/eval_s"] = time.perf_counter() - start
    return metrics


def log_eval(ctx: TrainContext, state: LoopState, final: bool = False) -> None:
    """Evaluation at start and end, logged as its own line (step 0 at start)."""
    if not ctx.eval_prompts or (final and state.evaluated_version == state.optimizer_step):
        return  # no evaluation set, or this exact policy was evaluated already (a resume knows it too)
    metrics = run_eval(ctx)
    state.evaluated_version = state.optimizer_step
    ctx.sink.log(
        state.step,
        {
            **metrics,
            "train/epoch": epoch_progress(state, len(ctx.train_prompts)),
            "train/optimizer_step": float(state.optimizer_step),
        },
    )
