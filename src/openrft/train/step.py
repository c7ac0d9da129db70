"""One training step: micro-batches -> log-probs -> policy loss -> gradients.

The step's loss is normalised by the whole step's denominator (valid tokens for
token-mean, sequences for seq-mean-token-mean), so splitting it into micro-batches
changes memory, never the gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openrft.algo.filtering import drop_zero_advantage_chunks
from openrft.algo.losses import aggregation_mode, kl_coefficient, policy_loss, step_denominator
from openrft.train.batching import MicroBatch, TrainSequence, collate, plan_micro_batches
from openrft.train.logprobs import completion_logprobs
from openrft.train.policy import reference_policy

# metrics combined across micro-batches by min / max instead of a weighted mean
_MIN_KEYS, _MAX_KEYS = {"ratio/min"}, {"ratio/max"}
_COUNT_KEYS = {"tokens", "sequences"}


@dataclass(frozen=True)
class LossSettings:
    method: str
    kl_beta: float
    length_norm: bool
    temperature: float  # rollout temperature: log-probs are of logits / T, as sampled

    @property
    def kl_coef(self) -> float:
        return kl_coefficient(self.method, self.kl_beta)


def plan_step(
    sequences: Sequence[TrainSequence], micro_batch_tokens: int, pad_token_id: int
) -> tuple[list[MicroBatch], int]:
    """Length-bucket a step into micro-batches and drop the ones with no advantage signal."""
    chunks = plan_micro_batches(sequences, micro_batch_tokens)
    chunks, dropped = drop_zero_advantage_chunks(chunks, [s.advantage for s in sequences])
    return [collate([sequences[i] for i in chunk], pad_token_id) for chunk in chunks], dropped


def accumulate_gradients(
    model: torch.nn.Module, batches: Sequence[MicroBatch], settings: LossSettings, scale: float = 1.0
) -> dict[str, float]:
    """Backpropagate the step's loss (times ``scale``) through every micro-batch; return its metrics."""
    mode = aggregation_mode(settings.method, settings.length_norm)
    denominator = step_denominator(mode, [b.completion_mask_RC for b in batches])
    kl_beta = settings.kl_beta or None
    needs_ref = settings.kl_coef > 0
    parts: list[dict[str, float]] = []
    step_loss = 0.0
    for batch in batches:
        ref_RC = None
        if needs_ref:
            with torch.no_grad(), reference_policy(model):
                ref_RC = batch_logprobs(model, batch, settings.temperature)
        logp_RC = batch_logprobs(model, batch, settings.temperature)
        loss, metrics = policy_loss(
            settings.method,
            logp_RC,
            batch.old_logprobs_RC,
            batch.advantages_R,
            batch.completion_mask_RC,
            ref_logprobs=ref_RC,
            kl_beta=kl_beta,
            length_norm=settings.length_norm,
            denominator=denominator,
        )
        (loss * scale).backward()
        step_loss += float(loss.detach())
        parts.append(metrics)
    combined = combine_metrics(parts, weight_key="tokens" if mode == "token-mean" else "sequences")
    combined["loss/step"] = step_loss
    return combined


def batch_logprobs(model: torch.nn.Module, batch: MicroBatch, temperature: float) -> torch.Tensor:
    """``[R, C]`` log-probs of a micro-batch's completions under ``model`` at ``temperature``."""
    return completion_logprobs(
        model, batch.prompt_ids_GP, batch.prompt_mask_GP, batch.row_group_R, batch.completion_ids_RC,
        batch.completion_mask_RC, temperature,
    )  # fmt: skip


def combine_metrics(parts: Sequence[dict[str, float]], weight_key: str = "tokens") -> dict[str, float]:
    """Weighted mean of per-micro-batch metrics (min/max for ratio extremes, sum for counts)."""
    if not parts:
        return {}
    out: dict[str, float] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if key in _MIN_KEYS:
            out[key] = min(values)
        elif key in _MAX_KEYS:
            out[key] = max(values)
        elif key in _COUNT_KEYS:
            out[key] = sum(values)
        else:
            weights = [p.get(weight_key, 1.0) for p in parts]
            total = sum(weights) or 1.0
            out[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    return out


def clip_and_step(
    params: Sequence[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float
) -> dict[str, float]:
    """Clip the gradient norm, take one optimizer step, advance the schedule, zero the gradients."""
    if max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    else:
        grads = [p.grad.norm() for p in params if p.grad is not None]
        grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"grad/norm": grad_norm, "lr": lr}


@contextlib.contextmanager
def training_mode(model: torch.nn.Module):
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
