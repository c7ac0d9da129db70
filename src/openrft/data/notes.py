"""Rows that load but look like mistakes: warned of at creation, in ``--dry-run`` and in preflight."""

from __future__ import annotations

import json

from openrft.data.jsonl import ID_FIELDS, PromptSet


def content_notes(prompts: PromptSet, shown: int = 5) -> list[str]:
    """Rows that load but look like mistakes: some without a ground_truth while others have one, and
    rows that repeat an earlier row exactly but for their id (each copy is sampled and trained on).
    Nothing for a built-in task's generated rows, which repeat small problems by design."""
    if not isinstance(prompts, PromptSet) or prompts.unit == "generated row":
        return []
    notes, unit = [], prompts.unit
    missing = [n for n, p in zip(prompts.numbers, prompts, strict=True) if p.row.get("ground_truth") is None]
    if missing and len(missing) < len(prompts):
        where = ", ".join(str(n) for n in missing[:shown]) + (" ..." if len(missing) > shown else "")
        have = "rows has" if len(missing) == 1 else "rows have"
        notes.append(f"--dataset {prompts.source}: {len(missing)} of {len(prompts)} {have} no ground_truth "
                     f"({unit} {where}) while the others have one; an evaluator that compares with it "
                     "cannot score those rows")  # fmt: skip
    first: dict[str, int] = {}
    repeats = []
    for number, prompt in zip(prompts.numbers, prompts, strict=True):
        content = {k: v for k, v in prompt.row.items() if k not in (*ID_FIELDS, "input_metadata")}
        seen = first.setdefault(json.dumps(content, sort_keys=True, default=str), number)
        if seen != number:
            repeats.append(f"{number} repeats {seen}")
    if repeats:
        where = ", ".join(repeats[:shown]) + (" ..." if len(repeats) > shown else "")
        repeat = "row repeats" if len(repeats) == 1 else "rows repeat"
        notes.append(f"--dataset {prompts.source}: {len(repeats)} {repeat} an earlier row ({unit} {where}); "
                     "each copy is sampled and trained on, as if it were weighted more")  # fmt: skip
    return notes


__all__ = ["content_notes"]
