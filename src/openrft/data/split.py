"""Deterministic splits and orders: the evaluation carve-out and the per-epoch shuffle."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

from openrft.errors import DataError
from openrft.records import Prompt

P = TypeVar("P", bound=Prompt)


def _key(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{text}".encode()).digest()


def carveout_size(rows: int, fraction: float) -> int:
    """How many of ``rows`` prompts :func:`split_carveout` holds out: ``round(fraction * rows)``, at least 1, leaving 1."""
    return min(rows - 1, max(1, round(fraction * rows)))


def question(prompt: Prompt) -> str:
    """What a prompt asks (its messages): rows asking the same thing are one question, whatever their ids."""
    messages = getattr(prompt, "messages", None)
    return json.dumps(messages, sort_keys=True, default=str) if messages else f"id:{prompt.prompt_id}"


def split_carveout(prompts: Sequence[P], fraction: float, seed: int) -> tuple[list[P], list[P]]:
    """Hold out ``round(fraction * N)`` prompts (at least 1, leaving at least 1) for evaluation,
    never a question that is also trained on.

    Each prompt is ranked by a hash of ``(seed, prompt_id)``; going up the ranks, a prompt's question
    (:func:`question`) is held out, with every row that asks it, until at least ``round(fraction * N)``
    rows are; a question whose rows would take the hold-out past half again that size (at least 2 rows
    over) is passed over, and when every question is that large the smallest is held out. Rows that
    repeat a question therefore fall on one side, so the held-out rate measures questions the policy
    never trained on; the hold-out may be a few rows larger (or, when the questions left are large,
    smaller) than asked. When every row asks the same question, single rows are held out. With
    distinct questions the split depends only on the seed and the ids: it is the same on every run and
    does not change for a row when other rows are added or removed (beyond the size of the hold-out).
    Both parts keep the input order.
    """
    if not 0 < fraction < 1:
        raise DataError(f"eval carve-out fraction must be between 0 and 1, not {fraction}")
    if len(prompts) < 2:
        raise DataError(
            f"cannot carve an evaluation set out of {len(prompts)} prompt(s)",
            hint="use more training rows or pass --evaluation-dataset",
        )
    n_eval = carveout_size(len(prompts), fraction)
    asks = [question(p) for p in prompts]
    rows_of = Counter(asks)
    ranked = sorted(range(len(prompts)), key=lambda i: _key(seed, prompts[i].prompt_id))
    limit = n_eval + max(2, n_eval // 2)  # a question that would take the hold-out past this is passed over
    held_questions: set[str] = set()
    held = 0
    for i in ranked:
        if held >= n_eval:
            break
        size = rows_of[asks[i]]
        if asks[i] not in held_questions and held + size <= limit and held + size < len(prompts):
            held_questions.add(asks[i])
            held += size
    if not held_questions and len(rows_of) > 1:  # every question is large: the smallest, whole
        smallest = min((rows_of[asks[i]], rank) for rank, i in enumerate(ranked))[1]
        held_questions.add(asks[ranked[smallest]])
    if not held_questions:  # every row asks one question: rows are all there is to hold out
        held_rows = set(ranked[:n_eval])
        return ([p for i, p in enumerate(prompts) if i not in held_rows],
                [p for i, p in enumerate(prompts) if i in held_rows])  # fmt: skip
    train = [p for p, asked in zip(prompts, asks, strict=True) if asked not in held_questions]
    evaluation = [p for p, asked in zip(prompts, asks, strict=True) if asked in held_questions]
    return train, evaluation


def epoch_order(num_prompts: int, epoch: int, seed: int) -> list[int]:
    """A permutation of ``range(num_prompts)`` for one epoch: new each epoch, the same for the same (seed, epoch)."""
    if num_prompts < 0 or epoch < 0:
        raise ValueError("num_prompts and epoch must be >= 0")
    order = list(range(num_prompts))
    rng = random.Random(int.from_bytes(_key(seed, f"epoch:{epoch}")[:8], "big"))
    rng.shuffle(order)
    return order
