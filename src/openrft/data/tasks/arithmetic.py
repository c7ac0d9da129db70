"""The built-in ``arithmetic`` task: seeded, procedurally generated sums.

Each row asks one question such as ``What is 7 + 5?`` and tells the model to put
the final answer inside ``<answer></answer>`` tags; ``ground_truth`` is the
integer answer. Options:

- ``digits``: operand size (1 -> 0..9, 2 -> 10..99, ...);
- ``ops``: operations to draw from, any of ``+``, ``-``, ``*`` (subtraction keeps
  the result non-negative);
- ``few_shot``: worked example exchanges (user question, assistant answer in
  tags) placed before the question, 0 by default. A small model rarely uses the
  tags unprompted, so one example is the practical choice for a tiny model.

The same ``seed`` always gives the same rows. A dataset source string may carry
options: ``arithmetic:digits=2,ops=+-,count=200,few_shot=1`` (see :func:`parse_source`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from typing import Any

from openrft.errors import DataError

OPS = ("+", "-", "*")
# The format instruction is in both turns: with it in the system turn only, the embedded model almost
# never uses the tags, and RL has nothing to reinforce (measurements: docs/benchmarks.md, "defaults").
SYSTEM_PROMPT = "Always give the final answer inside <answer></answer> tags, like <answer>42</answer>."


@dataclass(frozen=True)
class ArithmeticTask:
    """Options of the arithmetic generator (see the module docstring)."""

    count: int = 500
    digits: int = 1
    ops: str = "+"
    few_shot: int = 0
    system_prompt: str = SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if self.count < 1:
            raise DataError(f"arithmetic: count must be >= 1, not {self.count}")
        if not 1 <= self.digits <= 9:
            raise DataError(f"arithmetic: digits must be from 1 to 9, not {self.digits}")
        if not self.ops or any(op not in OPS for op in self.ops):
            raise DataError(f"arithmetic: ops must be made of '+', '-', '*', not {self.ops!r}")
        if not 0 <= self.few_shot <= 8:
            raise DataError(f"arithmetic: few_shot must be from 0 to 8, not {self.few_shot}")


def draw_problem(rng: random.Random, digits: int, ops: str) -> tuple[int, str, int, int]:
    """``(a, op, b, answer)`` with ``digits``-digit operands."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    high = 10**digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    op = rng.choice(ops)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    return a, op, b, answer


def question(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}? Put the answer in <answer></answer> tags."


def worked_answer(a: int, op: str, b: int, answer: int) -> str:
    return f"{a} {op} {b} = {answer}. <answer>{answer}</answer>"


def generate_rows(task: ArithmeticTask | None = None, *, seed: int = 0) -> list[dict[str, Any]]:
    """``task.count`` evaluation rows (messages, integer ground_truth, the operands)."""
    task = task or ArithmeticTask()
    rng = random.Random(f"openrft-arithmetic:{seed}")
    rows = []
    for index in range(task.count):
        messages: list[dict[str, str]] = []
        if task.system_prompt:
            messages.append({"role": "system", "content": task.system_prompt})
        for _ in range(task.few_shot):
            ex = draw_problem(rng, task.digits, task.ops)
            messages.append({"role": "user", "content": question(*ex[:3])})
            messages.append({"role": "assistant", "content": worked_answer(*ex)})
        a, op, b, answer = draw_problem(rng, task.digits, task.ops)
        messages.append({"role": "user", "content": question(a, op, b)})
        rows.append(
            {
                "id": f"arithmetic-{seed}-{index}",
                "messages": messages,
                "ground_truth": answer,
                "task": "arithmetic",
                "expression": f"{a} {op} {b}",
            }
        )
    return rows


def parse_source(source: str) -> ArithmeticTask:
    """``"arithmetic"`` or ``"arithmetic:key=value,..."`` -> task options (raises DataError)."""
    name, _, options = source.partition(":")
    if name != "arithmetic":
        raise DataError(f"not an arithmetic source: {source!r}")
    task = ArithmeticTask()
    if not options:
        return task
    known = {f.name: f.type for f in fields(ArithmeticTask) if f.name != "system_prompt"}
    updates: dict[str, Any] = {}
    for item in options.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in known:
            raise DataError(
                f"arithmetic option {item!r} not understood",
                hint=f"use key=value pairs with keys {', '.join(known)}, e.g. arithmetic:digits=2,ops=+-",
            )
        try:
            updates[key] = value.strip() if key == "ops" else int(value)
        except ValueError:
            raise DataError(f"arithmetic option {key} needs a whole number, not {value!r}") from None
    return replace(task, **updates)
