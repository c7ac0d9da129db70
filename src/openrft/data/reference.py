"""``--reference-field NAME``: take each row's ground truth from another field of the row.

Some datasets keep the reference answer under a name of their own rather than in
``ground_truth`` (a GSM8K file already in the messages shape keeps the worked solution in
``answer``). :func:`with_reference_field` copies that field into ``ground_truth`` for every
prompt. A text holding ``####`` is a GSM8K solution: the reference is the number after the last
``####`` (``"... #### 1,000"`` gives ``"1000"``). Any other value is used as it is.

A row without the field (or with a GSM8K solution that has no final number) is a bad row: it
fails the load with the usual summary, or is skipped and counted with ``skip_bad_rows``.
"""

from __future__ import annotations

from typing import Any

from openrft.data.jsonl import PromptSet, map_prompts
from openrft.data.tasks import gsm8k
from openrft.records import Prompt


def reference_value(row: dict[str, Any], name: str) -> Any:
    """The ground truth that field ``name`` of ``row`` holds (raises ValueError when there is none)."""
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"no reference answer in field {name!r} (--reference-field)")
    if isinstance(value, str) and "####" in value:
        return gsm8k.final_answer(value)
    return value


def with_reference_field(prompts: PromptSet, name: str, *, skip_bad_rows: bool = False) -> PromptSet:
    """``prompts`` with each row's ``ground_truth`` replaced by :func:`reference_value` of field ``name``."""

    def refer(prompt: Prompt) -> Prompt:
        return Prompt(
            prompt.prompt_id,
            prompt.messages,
            {**prompt.row, "ground_truth": reference_value(prompt.row, name)},
        )

    return map_prompts(prompts, refer, skip_bad_rows=skip_bad_rows)


__all__ = ["reference_value", "with_reference_field"]
