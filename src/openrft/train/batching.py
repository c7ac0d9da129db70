"""Token-budget training steps and length-bucketed micro-batches.

A training *step* consumes at most ``batch_size`` tokens (prompt + completion of the
sequences in it, padding not counted) and at most ``batch_size_samples`` sequences.
A step is run as one or more *micro-batches*, each a right-padded tensor batch whose
padded size (rows x longest row) stays within ``micro_batch_tokens``; sequences are
sorted by length inside a step so little padding is spent. Micro-batching never
changes the maths: the loss is normalised by the whole step's denominator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openrft.records import Completion


@dataclass(frozen=True)
class TrainSequence:
    """One completion ready for the policy-gradient update."""

    completion: Completion
    advantage: float
    group_index: int

    @property
    def num_tokens(self) -> int:
        return self.completion.num_tokens


@dataclass
class MicroBatch:
    """Right-padded tensors for one forward/backward pass; every [B, L] aligned with input_ids."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    completion_mask_BL: torch.Tensor  # 1 on completion tokens (the loss mask)
    old_logprobs_BL: torch.Tensor  # rollout-time log-probs at completion positions, 0 elsewhere
    advantages_B: torch.Tensor
    num_sequences: int
    num_tokens: int  # real (unpadded) tokens


def plan_steps(
    sequences: Sequence[TrainSequence], batch_tokens: int, batch_samples: int | None = None
) -> list[list[int]]:
    """Split sequences, in order, into steps of <= batch_tokens tokens and <= batch_samples sequences.

    A single sequence longer than the budget forms a step of its own (it is never cut).
    """
    steps: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, seq in enumerate(sequences):
        full = current and (
            used + seq.num_tokens > batch_tokens or len(current) == (batch_samples or 1 << 62)
        )
        if full:
            steps.append(current)
            current, used = [], 0
        current.append(index)
        used += seq.num_tokens
    if current:
        steps.append(current)
    return steps


def plan_micro_batches(
    lengths: Sequence[int], indices: Sequence[int], micro_batch_tokens: int
) -> list[list[int]]:
    """Group ``indices`` (sorted longest first) so each group's rows x max-length <= micro_batch_tokens."""
    order = sorted(indices, key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > micro_batch_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def collate(sequences: Sequence[TrainSequence], pad_token_id: int) -> MicroBatch:
    """Right-pad prompt+completion ids; old log-probs sit at the positions of the tokens they score."""
    length = max(seq.num_tokens for seq in sequences)
    batch = len(sequences)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    completion = torch.zeros((batch, length), dtype=torch.float32)
    old = torch.zeros((batch, length), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        c = seq.completion
        prompt_len, total = len(c.prompt_token_ids), c.num_tokens
        input_ids[row, :total] = torch.tensor(c.prompt_token_ids + c.completion_token_ids)
        attention[row, :total] = 1
        completion[row, prompt_len:total] = 1.0
        old[row, prompt_len:total] = torch.tensor(c.logprobs, dtype=torch.float32)
    advantages = torch.tensor([seq.advantage for seq in sequences], dtype=torch.float32)
    return MicroBatch(
        input_ids, attention, completion, old, advantages, batch, int(sum(s.num_tokens for s in sequences))
    )
