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
A dataset smaller than two chunks is sampled in a single round per epoch.
If a whole epoch produces no group with score variance, the job stops early.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from openrft.config import JobConfig
from openrft.data import epoch_order
from openrft.records import Prompt, RolloutEngine, SamplingParams
from openrft.tracking.progress import ProgressBar
from openrft.tracking.sinks import MetricsSink
from openrft.train.batching import TrainSequence, plan_steps
from openrft.train.checkpoint import LoopState, save_checkpoint
from openrft.train.rounds import RoundSettings, Scorer, evaluate, run_round
from openrft.train.step import LossSettings, accumulate_gradients, clip_and_step, plan_step, training_mode

EARLY_STOP_MESSAGE = (
    "every candidate of every prompt in epoch {epoch} received the same score, so there is no learning "
    "signal. Try a higher --temperature (e.g. 0.8-1.0), more --response-candidates-count, or an evaluator "
    "that returns a range of scores rather than only 0 and 1."
)
MAX_ROLLOUT_ROWS_PER_ROUND = 128


@dataclass
class TrainContext:
    """Everything the loop works with, built by :mod:`openrft.train.job`."""

    cfg: JobConfig
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
    on_policy_update: Callable[[int], None] = lambda version: None  # e.g. push the adapter to vLLM
    should_stop: Callable[[], bool] = lambda: False  # a cancel request, checked at step boundaries
    eval_candidates: int = 1
    last_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    status: Literal["completed", "cancelled", "early_stopped"]
    state: LoopState
    message: str = ""


def round_seed(seed: int, round_index: int) -> int:
    """Sampling seed of a round: deterministic, so resuming re-creates the same rollouts."""
    return (seed * 1_000_003 + round_index * 7_919) % (2**31)


def rounds_per_epoch(num_prompts: int, chunk_size: int) -> int:
    chunk = num_prompts if chunk_size == -1 or chunk_size * 2 > num_prompts else chunk_size
    return max(1, -(-num_prompts // max(1, chunk)))


def train(ctx: TrainContext, state: LoopState) -> Outcome:
    cfg, t = ctx.cfg, ctx.cfg.training
    rollout_params = sampling_params(cfg)
    loss_settings = LossSettings(
        cfg.loss.rl_loss_method, cfg.loss.rl_kl_beta, cfg.loss.length_norm, cfg.rollout.temperature
    )
    n_prompts = len(ctx.train_prompts)
    chunk = n_prompts if t.chunk_size == -1 or t.chunk_size * 2 > n_prompts else t.chunk_size
    per_epoch = rounds_per_epoch(n_prompts, t.chunk_size)

    if state.step == 0:
        log_eval(ctx, state)
    while state.epoch < t.epochs:
        order = epoch_order(n_prompts, state.epoch, t.seed)
        while state.pending or state.cursor < n_prompts:
            # ---- a new round: sample, score, advantages, filter, plan steps
            if not state.pending:
                start_round(ctx, state, order, chunk, rollout_params)
                if not state.pending:
                    continue
            # ---- one training step
            step_metrics = train_step(ctx, state, loss_settings)
            ctx.progress.update(
                rounds_done=state.epoch * per_epoch + -(-state.cursor // chunk),
                step=state.step,
                epoch=state.epoch,
                metrics=step_metrics,
            )
            if ctx.should_stop() and at_update_boundary(state, t.gradient_accumulation_steps):
                save_checkpoint(ctx.checkpoint_dir, state, ctx.model, ctx.optimizer, ctx.scheduler)
                return Outcome("cancelled", state, f"cancelled at step {state.step}")
        if state.epoch_groups_total and not state.epoch_groups_with_signal:
            flush_gradients(ctx, state)
            save_checkpoint(ctx.checkpoint_dir, state, ctx.model, ctx.optimizer, ctx.scheduler)
            return Outcome("early_stopped", state, EARLY_STOP_MESSAGE.format(epoch=state.epoch + 1))
        state.epoch, state.cursor = state.epoch + 1, 0
        state.epoch_groups_total = state.epoch_groups_with_signal = 0

    flush_gradients(ctx, state)
    log_eval(ctx, state, final=True)
    save_checkpoint(ctx.checkpoint_dir, state, ctx.model, ctx.optimizer, ctx.scheduler)
    return Outcome("completed", state)


def sampling_params(cfg: JobConfig, seed: int | None = None, n: int | None = None) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        n=n or r.response_candidates_count,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_tokens=r.max_output_tokens,
        seed=seed,
        stop=r.stop,
    )


def start_round(
    ctx: TrainContext, state: LoopState, order: list[int], chunk: int, params: SamplingParams
) -> None:
    """Sample and score the next chunk of prompts; queue its token-budget steps in ``state.pending``."""
    cfg, t = ctx.cfg, ctx.cfg.training

    def draw(n: int) -> list[Prompt]:  # the next n prompts of this epoch's order
        picked = [ctx.train_prompts[i] for i in order[state.cursor : state.cursor + n]]
        state.cursor += len(picked)
        return picked

    prompts = draw(chunk)
    settings = RoundSettings(
        params=dataclasses.replace(params, seed=round_seed(t.seed, state.round_index)),
        overlong_buffer=(cfg.loss.overlong_buffer or max(1, cfg.rollout.max_output_tokens // 4))
        if cfg.loss.overlong_penalty
        else None,
        overlong_factor=cfg.loss.overlong_penalty_factor,
        dynamic_sampling_rounds=cfg.loss.max_sampling_rounds if cfg.loss.dynamic_sampling else None,
    )
    result = run_round(ctx.engine, ctx.score, prompts, settings, draw_more=draw)
    state.round_index += 1
    groups_kept = len({s.group_index for s in result.sequences})
    state.epoch_groups_total += len(result.groups)
    state.epoch_groups_with_signal += groups_kept
    rollout_rows(ctx, state, result.groups)
    steps = plan_steps(result.sequences, t.batch_size, t.batch_size_samples)
    state.pending = [[result.sequences[i] for i in step] for step in steps]
    if not state.pending:  # every group filtered: count them on the next step that trains
        state.skipped_zero_variance_groups += len(result.groups)
        return
    state.round_metrics = {**result.metrics, "round": float(state.round_index)}
    state.round_metrics["filter/zero_variance_groups"] += state.skipped_zero_variance_groups
    state.skipped_zero_variance_groups = 0


def rollout_rows(ctx: TrainContext, state: LoopState, groups) -> None:
    rows = []
    for g in groups:
        prompt = next((m["content"] for m in reversed(g.prompt.messages) if m.get("role") == "user"), "")
        for c, s in zip(g.completions, g.scores, strict=True):
            rows.append(
                {
                    "round": state.round_index,
                    "prompt_id": g.prompt.prompt_id,
                    "prompt": prompt,
                    "completion": c.text,
                    "score": s.score,
                    "valid": s.is_valid,
                    "reason": s.reason,
                    "finish_reason": c.finish_reason,
                }
            )
    ctx.sink.log_rollouts(state.step + 1, rows[:MAX_ROLLOUT_ROWS_PER_ROUND])


def train_step(ctx: TrainContext, state: LoopState, loss_settings: LossSettings) -> dict[str, float]:
    """Gradients of the next pending step; an optimizer update when accumulation is complete."""
    t = ctx.cfg.training
    sequences: list[TrainSequence] = state.pending.pop(0)
    start = time.perf_counter()
    batches, dropped_chunks = plan_step(sequences, t.micro_batch_tokens, ctx.pad_token_id)
    metrics: dict[str, float] = {}
    if batches:
        with training_mode(ctx.model):
            metrics = accumulate_gradients(
                ctx.model, batches, loss_settings, scale=1.0 / t.gradient_accumulation_steps
            )
    state.step += 1
    updated = at_update_boundary(state, t.gradient_accumulation_steps)
    if updated:
        metrics.update(optimizer_update(ctx, state))
    elapsed = time.perf_counter() - start
    trained_tokens = sum(b.num_tokens for b in batches)
    metrics.update(
        {
            **state.round_metrics,
            "filter/zero_advantage_chunks": float(dropped_chunks),
            "batch/sequences": float(sum(b.num_sequences for b in batches)),
            "batch/tokens": float(trained_tokens),
            "batch/micro_batches": float(len(batches)),
            "time/train_s": elapsed,
            "throughput/tokens_per_s": trained_tokens / elapsed if elapsed > 0 else 0.0,
            "throughput/rollout_tokens_per_s": state.round_metrics.get("rollout/completion_tokens", 0.0)
            / max(1e-9, state.round_metrics.get("time/rollout_s", 0.0)),
            "epoch": float(state.epoch),
            "optimizer_step": float(state.optimizer_step),
        }
    )
    metrics.setdefault("lr", ctx.optimizer.param_groups[0]["lr"])
    if updated and t.eval_every and state.optimizer_step % t.eval_every == 0:
        metrics.update(run_eval(ctx))
    ctx.sink.log(state.step, metrics)
    ctx.last_metrics = metrics
    return metrics


def at_update_boundary(state: LoopState, accumulation: int) -> bool:
    return state.step % accumulation == 0


def optimizer_update(ctx: TrainContext, state: LoopState) -> dict[str, float]:
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    metrics = clip_and_step(params, ctx.optimizer, ctx.scheduler, ctx.cfg.training.max_grad_norm)
    state.optimizer_step += 1
    ctx.engine.policy_version = state.optimizer_step
    ctx.on_policy_update(state.optimizer_step)
    if state.optimizer_step % ctx.cfg.training.checkpoint_every == 0:
        save_checkpoint(ctx.checkpoint_dir, state, ctx.model, ctx.optimizer, ctx.scheduler)
    return metrics


def flush_gradients(ctx: TrainContext, state: LoopState) -> None:
    """Apply gradients still accumulating when the data runs out."""
    if not at_update_boundary(state, ctx.cfg.training.gradient_accumulation_steps):
        state.step += (-state.step) % ctx.cfg.training.gradient_accumulation_steps
        optimizer_update(ctx, state)
        ctx.last_metrics.pop("eval/reward", None)  # the policy changed after the last evaluation


def run_eval(ctx: TrainContext) -> dict[str, float]:
    params = sampling_params(ctx.cfg, seed=ctx.cfg.training.seed + 104_729, n=ctx.eval_candidates)
    start = time.perf_counter()
    metrics = evaluate(ctx.engine, ctx.score, ctx.eval_prompts, params)
    if metrics:
        metrics["time/eval_s"] = time.perf_counter() - start
    return metrics


def log_eval(ctx: TrainContext, state: LoopState, final: bool = False) -> None:
    """Evaluation at start and end, logged as its own line (step 0 at start)."""
    if not ctx.eval_prompts or (final and "eval/reward" in ctx.last_metrics):
        return  # no evaluation set, or the last step already evaluated this exact policy
    metrics = run_eval(ctx)
    ctx.sink.log(
        state.step, {**metrics, "epoch": float(state.epoch), "optimizer_step": float(state.optimizer_step)}
    )
    ctx.last_metrics = {**ctx.last_metrics, **metrics}
