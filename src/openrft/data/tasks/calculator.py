"""The built-in ``calculator`` task: products of two 2-digit numbers, solved with a tool.

Each row asks for a product such as ``59 * 63``, too hard for a small model to work out in its
head, and spells out the tool call that gets it: the model has to reply with that call, read the
tool's result in the next turn and answer with it inside ``<answer></answer>`` tags. The tool is
:func:`openrft.data.tasks.calculator_tools.calculator` (``--tools`` names that file); the
``calculator`` evaluator gives 0.5 for a successful tool call and 0.5 for the right number in
tags in the last reply. SmolLM2-135M-Instruct does neither on its own (measured rates in
docs/benchmarks.md); it is what ``openrft quickstart --task calculator`` teaches it.

Options, as for ``arithmetic``: ``calculator:count=200``; the same ``seed`` gives the same rows.
"""

from __future__ import annotations

import json
import random
from typing import Any

from openrft.errors import DataError

TOOL_NAME = "calculator"
DEFAULT_COUNT = 500


def tool_call_text(expression: str) -> str:
    """The reply that calls the tool, in the Hermes format the policy server parses."""
    call = {"name": TOOL_NAME, "arguments": {"expression": expression}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def question(a: int, b: int) -> str:
    expression = f"{a} * {b}"
    return (
        f"What is {expression}? First call the calculator: reply with {tool_call_text(expression)} "
        "and nothing else. Then put its result in <answer></answer> tags."
    )


def generate_rows(count: int = DEFAULT_COUNT, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` rows (one user message, the integer ``ground_truth``, the ``expression``)."""
    rng = random.Random(f"openrft-calculator:{seed}")
    rows = []
    for index in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({
            "id": f"calculator-{seed}-{index}",
            "messages": [{"role": "user", "content": question(a, b)}],
            "ground_truth": a * b,
            "task": "calculator",
            "expression": f"{a} * {b}",
        })  # fmt: skip
    return rows


def parse_source(source: str) -> int:
    """``"calculator"`` or ``"calculator:count=N"`` -> the row count (raises DataError)."""
    name, _, options = source.partition(":")
    if name != "calculator":
        raise DataError(f"not a calculator source: {source!r}")
    count = DEFAULT_COUNT
    for item in filter(None, options.split(",")):
        key, eq, value = (part.strip() for part in item.partition("="))
        if key != "count" or not eq:
            raise DataError(
                f"calculator option {item!r} not understood",
                hint="the one option is count, e.g. calculator:count=200",
            )
        try:
            count = int(value)
        except ValueError:
            raise DataError(f"calculator option count needs a whole number, not {value!r}") from None
    if count < 1:
        raise DataError(f"calculator: count must be >= 1, not {count}")
    return count
