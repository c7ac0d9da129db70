"""Prompt datasets: JSONL files in the evaluation-row shape and built-in tasks.

The trainer's entry points::

    prompts = load_prompts("train.jsonl", count_tokens=..., max_prompt_tokens=..., skip_bad_rows=True)
    prompts.skipped                      # malformed rows left out (PromptSet is a list subclass)
    train, held_out = split_carveout(prompts, 0.1, seed)
    for epoch in range(epochs):
        for i in epoch_order(len(train), epoch, seed): ...

``source`` is a JSONL path (see :mod:`openrft.data.jsonl` for the row format; GSM8K
rows are adapted automatically) or a built-in task: ``arithmetic`` (optionally with
options, ``arithmetic:digits=2,ops=+-,count=200,few_shot=1``) or ``calculator`` (a multi-turn
task with a tool, ``calculator:count=200``).
"""

from __future__ import annotations

from openrft.data.jsonl import (
    Adapter,
    CountTokens,
    PromptSet,
    check_prompt_lengths,
    load_jsonl_prompts,
    prompts_from_rows,
    read_jsonl,
    write_jsonl,
)
from openrft.data.split import epoch_order, split_carveout
from openrft.data.tasks import arithmetic, calculator
from openrft.errors import DataError

BUILTIN_TASKS = ("arithmetic", "calculator")


def is_builtin(source: str) -> bool:
    """True for a built-in task name (with or without ``:options``)."""
    return source.partition(":")[0] in BUILTIN_TASKS


def load_prompts(
    source: str,
    *,
    count_tokens: CountTokens | None = None,
    max_prompt_tokens: int | None = None,
    skip_bad_rows: bool = False,
    seed: int = 0,
    limit: int | None = None,
    adapter: Adapter | None = None,
    open_ended: bool = False,
) -> PromptSet:
    """Load and validate prompts from a JSONL file or a built-in task.

    ``count_tokens(prompt) -> int`` (the chat-template token count) together with
    ``max_prompt_tokens`` makes over-long prompts bad rows. Bad rows raise one
    :class:`DataError` summary, or with ``skip_bad_rows`` are left out and counted in
    the result's ``.skipped`` (a mostly broken file still fails). ``seed`` seeds
    generated tasks; ``limit`` keeps the first N prompts; ``adapter`` is an
    evaluator's ``dataset_adapter`` (raw rows -> evaluation rows); ``open_ended`` rows need not end
    with a user message (an agent or environment supplies the next turn).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, not {limit}")
    if is_builtin(source):
        if source.partition(":")[0] == "calculator":
            rows = calculator.generate_rows(calculator.parse_source(source), seed=seed)
        else:
            rows = arithmetic.generate_rows(arithmetic.parse_source(source), seed=seed)
        prompts = prompts_from_rows(
            list(enumerate(rows, start=1)),
            source=source,
            count_tokens=count_tokens,
            max_prompt_tokens=max_prompt_tokens,
            skip_bad_rows=skip_bad_rows,
            unit="generated row",
        )
    elif source == "gsm8k":
        raise DataError(
            "GSM8K is not shipped with openrft: give the path of your GSM8K JSONL file",
            hint='rows {"question": ..., "answer": "... #### 42"} are adapted automatically',
        )
    else:
        prompts = load_jsonl_prompts(
            source,
            count_tokens=count_tokens,
            max_prompt_tokens=max_prompt_tokens,
            skip_bad_rows=skip_bad_rows,
            adapter=adapter,
            open_ended=open_ended,
        )
    if limit is not None and len(prompts) > limit:
        prompts = PromptSet(
            prompts[:limit], source=prompts.source, bad_rows=prompts.bad_rows,
            numbers=prompts.numbers[:limit], unit=prompts.unit,
        )  # fmt: skip
    return prompts


__all__ = [
    "BUILTIN_TASKS",
    "PromptSet",
    "check_prompt_lengths",
    "epoch_order",
    "is_builtin",
    "load_prompts",
    "read_jsonl",
    "split_carveout",
    "write_jsonl",
]
