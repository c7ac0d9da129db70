"""Token-budget training steps and length-bucketed micro-batches.

A training *step* consumes at most ``batch_size`` tokens (prompt + completion of the
sequences in it, padding not counted) and at most ``batch_size_samples`` sequences.
A step is run as one or more *micro-batches*. Inside a micro-batch the candidates of
one prompt share a single forward pass over that prompt: prompts are stacked once
(left-padded, ``[G, P]``), their key/value cache is gathered for each completion row,
and only the completions (right-padded, ``[R, C]``) are run per row; the trainer packs the
completions of a prompt into shared rows (``B <= R`` of them, :mod:`openrft.train.packing`). The
padded size ``G x P + B x C`` stays within ``micro_batch_tokens``. Micro-batching never changes
the maths: the loss is normalised by the whole step's denominator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openrft.records import Completion
from openrft.train.packing import first_fit_rows


@dataclass(frozen=True)
class TrainSequence:
    """One completion ready for the policy-gradient update."""

    completion: Completion
    advantage: float
    group_index: int
    old_logprobs: tuple[float, ...] | None = None  # the trainer's, when the sampler is another engine
    is_weights: tuple[float, ...] | None = None  # truncated importance weights per token (idem)

    @property
    def num_tokens(self) -> int:
        return self.completion.num_tokens


@dataclass
class MicroBatch:
    """Tensors for one forward/backward pass: G shared prompts, R completion rows."""

    prompt_ids_GP: torch.Tensor  # left-padded prompts
    prompt_mask_GP: torch.Tensor  # 1 on real prompt tokens
    row_group_R: torch.Tensor  # index of the prompt each completion row continues
    completion_ids_RC: torch.Tensor  # right-padded completions
    completion_mask_RC: torch.Tensor  # 1 on sampled completion tokens (the loss mask; 0 on tool/user turns)
    old_logprobs_RC: torch.Tensor  # the behaviour policy's (the trainer's when recomputed), 0 on padding
    advantages_R: torch.Tensor
    num_sequences: int
    num_tokens: int  # real (unpadded) prompt + completion tokens, prompts counted once per row
    sampler_logprobs_RC: torch.Tensor | None = None  # as the sampler recorded them
    attention_mask_RC: torch.Tensor | None = None  # 1 on every real completion token (None: the loss mask)
    is_weights_RC: torch.Tensor | None = None  # per-token loss weights (None: all 1)

    def to(self, device: torch.device | str) -> MicroBatch:
        """The same micro-batch with its tensors on ``device`` (itself when they are there already)."""
        if self.completion_ids_RC.device == torch.device(device):
            return self
        moved = {
            name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for name, value in vars(self).items()
        }
        return MicroBatch(**moved)


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


def padded_cost(sequences: Sequence[TrainSequence], packed: bool = True) -> int:
    """Padded tokens a micro-batch of these sequences runs: G x longest prompt + B x longest completion,
    B the rows its completions take once the completions of each prompt are packed together
    (:mod:`openrft.train.packing`), or one row each when not ``packed`` (the full-sequence pass that
    gradient checkpointing runs)."""
    prompts = [s.completion.prompt_token_ids for s in sequences]
    longest_prompt = max(len(p) for p in prompts)
    lengths = [len(s.completion.completion_token_ids) for s in sequences]
    rows = len(first_fit_rows(prompts, lengths, max(lengths))[2]) if packed else len(sequences)
    return len(set(prompts)) * longest_prompt + rows * max(lengths)


def plan_micro_batches(
    sequences: Sequence[TrainSequence], micro_batch_tokens: int, packed: bool = True
) -> list[list[int]]:
    """Group sequence indices so each group's padded cost stays <= micro_batch_tokens.

    Two greedy plans are made and the cheaper one (fewer padded tokens in total) is kept:
    candidates of a prompt kept together (they share the prompt's forward pass), or all
    sequences sorted by completion length (less completion padding, prompts repeated).
    """

    def prompt_of(i: int) -> tuple[int, ...]:
        return sequences[i].completion.prompt_token_ids

    def length_of(i: int) -> int:
        return len(sequences[i].completion.completion_token_ids)

    by_prompt = sorted(range(len(sequences)), key=lambda i: (len(prompt_of(i)), prompt_of(i), -length_of(i)))
    by_length = sorted(range(len(sequences)), key=lambda i: (-length_of(i), len(prompt_of(i)), prompt_of(i)))
    plans = [_fill(sequences, order, micro_batch_tokens, packed) for order in (by_prompt, by_length)]
    return min(
        plans, key=lambda plan: sum(padded_cost([sequences[i] for i in group], packed) for group in plan)
    )


def _fill(
    sequences: Sequence[TrainSequence], order: Sequence[int], micro_batch_tokens: int, packed: bool
) -> list[list[int]]:
    """Greedily cut ``order`` into groups whose padded cost stays within the budget."""
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and padded_cost([sequences[i] for i in [*current, index]], packed) > micro_batch_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def collate(sequences: Sequence[TrainSequence], pad_token_id: int) -> MicroBatch:
    """Stack each distinct prompt once (left-padded) and every completion (right-padded)."""
    prompts: dict[tuple[int, ...], int] = {}
    for seq in sequences:
        prompts.setdefault(seq.completion.prompt_token_ids, len(prompts))
    longest_prompt = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), longest_prompt), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), longest_prompt), dtype=torch.long)
    for ids, g in prompts.items():
        prompt_ids[g, longest_prompt - len(ids) :] = torch.tensor(ids)
        prompt_mask[g, longest_prompt - len(ids) :] = 1
    rows, longest = len(sequences), max(len(s.completion.completion_token_ids) for s in sequences)
    completion_ids = torch.full((rows, longest), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((rows, longest), dtype=torch.float32)
    attention_mask = torch.zeros((rows, longest), dtype=torch.float32)
    old = torch.zeros((rows, longest), dtype=torch.float32)
    sampler = torch.zeros((rows, longest), dtype=torch.float32)
    weighted = any(s.is_weights is not None for s in sequences)
    weights = torch.ones((rows, longest), dtype=torch.float32)
    for r, seq in enumerate(sequences):
        c = seq.completion
        n = len(c.completion_token_ids)
        completion_ids[r, :n] = torch.tensor(c.completion_token_ids)
        completion_mask[r, :n] = (
            torch.tensor(c.completion_mask, dtype=torch.float32) if c.completion_mask else 1.0
        )
        attention_mask[r, :n] = 1.0
        sampler[r, :n] = torch.tensor(c.logprobs, dtype=torch.float32)
        old[r, :n] = torch.tensor(seq.old_logprobs or c.logprobs, dtype=torch.float32)
        if seq.is_weights is not None:
            weights[r, :n] = torch.tensor(seq.is_weights, dtype=torch.float32)
    return MicroBatch(
        prompt_ids_GP=prompt_ids,
        prompt_mask_GP=prompt_mask,
        row_group_R=torch.tensor([prompts[s.completion.prompt_token_ids] for s in sequences]),
        completion_ids_RC=completion_ids,
        completion_mask_RC=completion_mask,
        old_logprobs_RC=old,
        advantages_R=torch.tensor([s.advantage for s in sequences], dtype=torch.float32),
        num_sequences=rows,
        num_tokens=int(sum(s.num_tokens for s in sequences)),
        sampler_logprobs_RC=sampler,
        attention_mask_RC=attention_mask if any(s.completion.completion_mask for s in sequences) else None,
        is_weights_RC=weights if weighted else None,
    )
