"""One training step: micro-batches -> log-probs -> policy loss -> gradients.

The step's loss is normalised by the whole step's denominator (valid tokens for
token-mean, sequences for seq-mean-token-mean), counted over every sequence of the step,
those of the micro-batches left out for carrying no advantage included: splitting a step
into micro-batches changes memory, never the gradient. Under gradient accumulation the loop
normalises by the whole update's denominator instead (:func:`step_denominator_of`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openrft.algo.filtering import drop_zero_advantage_micro_batches
from openrft.algo.losses import LossFn, LossSpec, step_denominator
from openrft.train.batching import MicroBatch, TrainSequence, collate, plan_micro_batches
from openrft.train.logprobs import completion_logprobs, full_sequence_logprobs
from openrft.train.mismatch import mismatch_metrics
from openrft.train.policy import reference_policy

# metrics combined across micro-batches by min / max instead of a weighted mean
_MIN_KEYS, _MAX_KEYS = {"ratio/min"}, {"ratio/max"}
_COUNT_KEYS = {"loss/tokens", "loss/sequences"}
# loss/* follow the aggregation (per token or per sequence); the rest are means over tokens
_TOKEN_MEANS = ("kl/", "clip/", "ratio/", "mismatch/")


@dataclass(frozen=True)
class StepLoss:
    """The job's loss, resolved once: its function, its spec, and the rollout temperature.

    Log-probabilities are of logits / temperature, as they were sampled.
    """

    fn: LossFn
    spec: LossSpec
    temperature: float
    full_sequences: bool = False  # one forward per row, no shared-prompt cache (gradient checkpointing)
    is_cap: float = 2.0  # --rollout-is-cap, for the mismatch metrics


def plan_step(
    sequences: Sequence[TrainSequence],
    micro_batch_tokens: int,
    pad_token_id: int,
    packed: bool = True,
) -> tuple[list[MicroBatch], int]:
    """Length-bucket a step into micro-batches and drop the ones with no advantage signal (the chunk-level
    zero-variance filter, which the reference applies for every loss method: with grpo's KL penalty such a
    micro-batch would only have pulled toward the reference). The dropped sequences stay in the loss's
    denominator (:func:`step_denominator_of`), so without a KL term the filter never changes the gradient.

    ``packed``: the step runs with completions packed per prompt (not under gradient checkpointing).
    The recomputation of another engine's log-probs plans the same micro-batches
    (:func:`openrft.train.mismatch.recompute_old_logprobs`)."""
    planned = plan_micro_batches(sequences, micro_batch_tokens, packed)
    kept, dropped = drop_zero_advantage_micro_batches(planned, [s.advantage for s in sequences])
    batches = [collate([sequences[i] for i in batch], pad_token_id) for batch in kept]
    trainable = [b for b in batches if bool(b.completion_mask_RC.any())]  # no sampled token: nothing to train
    return trainable, dropped  # (the second: zero-advantage micro-batches only)


def step_denominator_of(aggregation: str, sequences: Sequence[TrainSequence]) -> float:
    """The loss denominator of a step's sequences (all of them, whether or not their micro-batch is
    trained): valid tokens for token-mean, sequences with one for seq-mean-token-mean."""
    counts = [
        sum(s.completion.completion_mask)
        if s.completion.completion_mask
        else len(s.completion.completion_token_ids)
        for s in sequences
    ]
    return float(sum(counts) if aggregation == "token-mean" else sum(1 for n in counts if n > 0))


def accumulate_gradients(
    model: torch.nn.Module,
    batches: Sequence[MicroBatch],
    loss: StepLoss,
    scale: float = 1.0,
    measure_mismatch: bool = False,
    denominator: float | None = None,
) -> dict[str, float]:
    """Backpropagate the step's loss (times ``scale``) through every micro-batch; return its metrics.

    ``denominator``: the step's loss denominator (:func:`step_denominator_of` its sequences; default:
    that of ``batches``). ``measure_mismatch``: the policy has not changed since these completions were
    sampled, so this forward pass also measures the sampler against the trainer (``mismatch/*``).
    """
    spec = loss.spec
    if denominator is None:
        denominator = step_denominator(spec.aggregation, [b.completion_mask_RC for b in batches])
    parts: list[dict[str, float]] = []
    step_loss = 0.0
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        ref_RC = None
        if spec.kl_coef > 0:
            with torch.no_grad(), reference_policy(model):
                ref_RC = batch_logprobs(model, batch, loss.temperature, loss.full_sequences)
        logp_RC = batch_logprobs(model, batch, loss.temperature, loss.full_sequences)
        value, metrics = loss.fn(
            logp_RC, batch.old_logprobs_RC, batch.advantages_R, batch.completion_mask_RC, spec,
            ref_logprobs_BT=ref_RC, weights_BT=batch.is_weights_RC, denominator=denominator,
        )  # fmt: skip
        if measure_mismatch:
            metrics.update(mismatch_metrics(logp_RC.detach(), batch.sampler_logprobs_RC, batch.completion_mask_RC,
                                            loss.is_cap))  # fmt: skip
        (value * scale).backward()
        step_loss += float(value.detach())
        parts.append(metrics)
    combined = combine_metrics(
        parts, weight_key="loss/tokens" if spec.aggregation == "token-mean" else "loss/sequences"
    )
    combined["loss/step"] = step_loss
    return combined


def batch_logprobs(
    model: torch.nn.Module, batch: MicroBatch, temperature: float, full_sequences: bool = False
) -> torch.Tensor:
    """``[R, C]`` log-probs of a micro-batch's completions under ``model`` at ``temperature``."""
    compute = full_sequence_logprobs if full_sequences else completion_logprobs
    return compute(
        model, batch.prompt_ids_GP, batch.prompt_mask_GP, batch.row_group_R, batch.completion_ids_RC,
        batch.completion_mask_RC, temperature, attention_mask_RC=batch.attention_mask_RC,
    )  # fmt: skip


def combine_metrics(parts: Sequence[dict[str, float]], weight_key: str = "loss/tokens") -> dict[str, float]:
    """Weighted mean of per-micro-batch metrics (min/max for ratio extremes, sum for counts): token means
    (``kl/``, ``clip/``, ``ratio/``, ``mismatch/``) by tokens, the rest by ``weight_key``."""
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
            weights = [
                p.get("loss/tokens" if key.startswith(_TOKEN_MEANS) else weight_key, 1.0) for p in parts
            ]
            total = sum(weights) or 1.0
            out[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    return out


def clip_gradients(params: Sequence[torch.nn.Parameter], max_grad_norm: float) -> float:
    """Clip the gradients' global norm to ``max_grad_norm`` (0 = no clipping); the norm before clipping."""
    if max_grad_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    grads = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


@contextlib.contextmanager
def training_mode(model: torch.nn.Module):
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
