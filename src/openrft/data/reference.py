"""``--reference-field NAME``: take each row's ground truth from another field of the row.

Some datasets keep the reference answer under a name of their own rather than in
``ground_truth`` (a GSM8K file already in the messages shape keeps the worked solution in
``answer``). :func:`with_reference_field` copies that field into ``ground_truth`` for every
prompt. ``NAME`` may be a dotted path into nested objects (``reward_model.ground_truth``, where verl
keeps it). A text holding ``####`` is a GSM8K solution: the reference is the number after the last
``####`` (``"... #### 1,000"`` gives ``"1000"``). A text holding ``\\boxed{}`` is a MATH solution: the
reference is the last box's content. Any other text or number is used as it is; an object or list is
refused.

A row without the field (or with a GSM8K solution that has no final number) is a bad row: it
fails the load with the usual summary, or is skipped and counted with ``skip_bad_rows``.
"""

from __future__ import annotations

from typing import Any

from openrft.data.jsonl import PromptSet, map_prompts
from openrft.data.tasks import gsm8k
from openrft.data.tasks import math as math_task
from openrft.records import Prompt


def reference_value(row: dict[str, Any], name: str) -> Any:
    """The ground truth that field ``name`` of ``row`` holds (raises ValueError when there is none).

    ``name`` may be a dotted path into nested objects (``reward_model.ground_truth``, verl's layout;
    a number indexes a list). A GSM8K solution gives its final number, a text with ``\\boxed{}`` (a MATH
    solution) the last box's content; an object or a list is refused: it is not an answer.
    """
    value = _lookup(row, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"no reference answer in field {name!r} (--reference-field)")
    if isinstance(value, dict | list):
        keys = (
            [k for k in ("ground_truth", "answer", "solution") if k in value]
            if isinstance(value, dict)
            else []
        )
        inner = f": name one of its keys, e.g. --reference-field {name}.{(keys or list(value))[0]}" if isinstance(
            value, dict) and value else ""  # fmt: skip
        raise ValueError(f"field {name!r} holds {'an object' if isinstance(value, dict) else 'a list'}, "
                         f"not an answer (--reference-field){inner}")  # fmt: skip
    if isinstance(value, str) and "####" in value:
        return gsm8k.final_answer(value)
    if isinstance(value, str) and (boxed := math_task.last_boxed(value)) is not None:
        return boxed
    return value


def _lookup(row: dict[str, Any], name: str) -> Any:
    """``row[name]``, or the value at dotted path ``name`` (``a.b.0``) when the row has no such key."""
    if name in row or "." not in name:
        return row.get(name)
    value: Any = row
    for part in name.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
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
