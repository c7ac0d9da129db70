"""Sampler/trainer mismatch: measured every round, corrected by truncated importance sampling.

The log-probabilities a sampler records (vLLM, an endpoint, bf16 kernels) are not exactly the
trainer's own for the same tokens; trained as if they were, on-policy GRPO quietly becomes
off-policy. When the sampler is not the trainer's own forward pass, the trainer recomputes the
old log-probs of each round with one no-grad forward pass and weighs each token's objective by

    w_t = min(pi_trainer(y_t) / pi_sampler(y_t), C)         (truncated importance sampling, C = --rollout-is-cap)

(Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; the
same correction as verl's ``rollout_is`` and TRL's ``vllm_importance_sampling_correction``.)
The clipped ratio of the loss is then taken against the trainer's old log-probs, also with C = 0,
which only leaves out the weights.

Metrics, over the round's completion tokens (``q`` the sampler, ``p`` the trainer, ``r = p / q``):
``mismatch/kl`` = mean(r - 1 - log r), the k3 estimate of KL(q || p) from tokens sampled by q;
``mismatch/is_weight_mean`` = mean(min(r, C)); ``mismatch/is_truncated_frac`` = share with r > C.
For the local engine in float32 (the sampler is the trainer) they are measured on the first step of
each round, for free, and are ~0. In bfloat16 the local engine's KV-cache decoding rounds differently
from the trainer's pass, so its log-probs are recomputed and corrected like another engine's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from openrft.algo.losses import LOG_RATIO_CLAMP
from openrft.train.batching import MicroBatch, TrainSequence, collate


def is_weights(
    trainer_RC: torch.Tensor, sampler_RC: torch.Tensor, mask_RC: torch.Tensor, cap: float
) -> torch.Tensor:
    """``min(exp(trainer - sampler), cap)`` per token, float32, 1 on padding."""
    valid_RC = mask_RC != 0
    log_r_RC = (trainer_RC.float() - sampler_RC.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    weights_RC = log_r_RC.exp().clamp(max=cap)
    return weights_RC.where(valid_RC, weights_RC.new_ones(()))


def mismatch_metrics(
    trainer_RC: torch.Tensor, sampler_RC: torch.Tensor, mask_RC: torch.Tensor, cap: float
) -> dict[str, float]:
    """``mismatch/kl``, ``mismatch/is_weight_mean``, ``mismatch/is_truncated_frac`` over valid tokens."""
    valid_RC = mask_RC != 0
    tokens = float(valid_RC.sum())
    if not tokens:
        return {"mismatch/kl": 0.0, "mismatch/is_weight_mean": 1.0, "mismatch/is_truncated_frac": 0.0}
    log_r_N = (trainer_RC.float() - sampler_RC.float())[valid_RC].clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    r_N = log_r_N.exp()
    capped = cap if cap > 0 else float("inf")
    return {
        "mismatch/kl": float((r_N - 1 - log_r_N).mean()),
        "mismatch/is_weight_mean": float(r_N.clamp(max=capped).mean()),
        "mismatch/is_truncated_frac": float((r_N > capped).float().mean()),
    }


@torch.no_grad()
def recompute_old_logprobs(
    model: torch.nn.Module,
    steps: Sequence[Sequence[TrainSequence]],
    logprobs_fn: Callable[[torch.nn.Module, MicroBatch], torch.Tensor],
    plan: Callable[[Sequence[TrainSequence]], list[list[int]]],
    *,
    pad_token_id: int,
    cap: float,
) -> tuple[list[list[TrainSequence]], dict[str, float]]:
    """The trainer's old log-probs (and, with ``cap`` > 0, the truncated weights) for a round's steps.

    ``logprobs_fn(model, batch) -> [R, C]`` is the trainer's forward pass and ``plan(sequences)`` the
    micro-batches (index groups) a training step cuts its sequences into. Each step's sequences are
    run through the very micro-batches its training pass will use: outside float32, a sequence's
    log-probs depend on what shares its batch (padding, packing), and old log-probs taken in other
    company would put the first step's ratios off 1 before any update. Returns the steps with
    ``old_logprobs`` set and, with ``cap`` > 0, ``is_weights`` (``cap`` 0 leaves them unset: no
    weighting, as verl and TRL do without their correction), and the round's mismatch metrics.
    """
    device = next(model.parameters()).device
    done: list[list[TrainSequence]] = []
    trainer_parts, sampler_parts, mask_parts = [], [], []
    was_training = model.training
    model.eval()
    try:
        for sequences in steps:
            out: dict[int, TrainSequence] = {}
            for group in plan(sequences):
                batch = collate([sequences[i] for i in group], pad_token_id).to(device)
                trainer_RC = logprobs_fn(model, batch).float()
                out.update(_with_old_logprobs(sequences, group, trainer_RC, batch, cap))
                trainer_parts.append(trainer_RC.flatten())
                sampler_parts.append(batch.sampler_logprobs_RC.flatten())
                mask_parts.append(batch.completion_mask_RC.flatten())
            done.append([out[i] for i in range(len(sequences))])
    finally:
        model.train(was_training)
    if not mask_parts:
        return [list(step) for step in steps], {}
    metrics = mismatch_metrics(torch.cat(trainer_parts), torch.cat(sampler_parts), torch.cat(mask_parts), cap)
    return done, metrics


def _with_old_logprobs(
    sequences: Sequence[TrainSequence],
    group: list[int],
    trainer_RC: torch.Tensor,
    batch: MicroBatch,
    cap: float,
) -> dict[int, TrainSequence]:
    """The micro-batch ``group``'s sequences with the trainer's log-probs (and, ``cap`` > 0, the weights)."""
    weights_RC = (
        is_weights(trainer_RC, batch.sampler_logprobs_RC, batch.completion_mask_RC, cap) if cap > 0 else None
    )
    out = {}
    for row, index in enumerate(group):
        n = len(sequences[index].completion.completion_token_ids)
        out[index] = dataclasses.replace(
            sequences[index],
            old_logprobs=tuple(trainer_RC[row, :n].tolist()),
            is_weights=None if weights_RC is None else tuple(weights_RC[row, :n].tolist()),
        )
    return out


__all__ = ["is_weights", "mismatch_metrics", "recompute_old_logprobs"]
