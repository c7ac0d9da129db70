"""The built-in calculator task: rows, its tool, its evaluator."""

from __future__ import annotations

import json

import pytest

from openrft.data import load_prompts
from openrft.data.tasks import calculator
from openrft.data.tasks.calculator_tools import calculator as calc_tool
from openrft.errors import DataError
from openrft.evaluators import load_evaluator
from openrft.evaluators.protocol import EvaluationRow
from openrft.rollout.chat import tool_format


def test_rows_are_seeded_products_whose_prompt_spells_out_a_parsable_call():
    rows = calculator.generate_rows(5, seed=3)
    assert rows == calculator.generate_rows(5, seed=3) and rows != calculator.generate_rows(5, seed=4)
    for row in rows:
        a, b = map(int, row["expression"].split(" * "))
        assert 10 <= a <= 99 and 10 <= b <= 99 and row["ground_truth"] == a * b
        call = row["messages"][0]["content"].split("reply with ", 1)[1].split(" and nothing else")[0]
        (parsed,) = tool_format().parse(call).tool_calls
        assert parsed["function"]["name"] == "calculator"
        assert json.loads(parsed["function"]["arguments"]) == {"expression": row["expression"]}


def test_the_source_takes_a_count_and_nothing_else():
    assert len(load_prompts("calculator:count=7")) == 7
    for bad, message in [("calculator:count=0", "count must be >= 1"), ("calculator:digits=2", "not understood"),
                         ("calculator:count=x", "whole number")]:  # fmt: skip
        with pytest.raises(DataError, match=message):
            load_prompts(bad)


def test_the_tool_evaluates_arithmetic_only():
    assert calc_tool("59 * 63") == "59 * 63 = 3717. Now give the answer as <answer>3717</answer>"
    assert calc_tool(" (2 + 4) / 3 ").startswith("(2 + 4) / 3 = 2.")
    for bad in ["__import__('os')", "2 ** 8", "abs(-2)"]:
        with pytest.raises((ValueError, SyntaxError)):
            calc_tool(bad)


def _row(*messages):
    return EvaluationRow(messages=list(messages), ground_truth=3717)


USER = {"role": "user", "content": "What is 59 * 63?"}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "59 * 63"}'}}]}  # fmt: skip


@pytest.mark.parametrize(
    "messages, score, correct",
    [
        ([USER, CALL, {"role": "tool", "content": "59 * 63 = 3717"}, {"role": "assistant", "content": "<answer>3717</answer>"}], 1.0, 1.0),
        ([USER, CALL, {"role": "tool", "content": "59 * 63 = 3717"}, {"role": "assistant", "content": "<answer>3716</answer>"}], 0.5, 0.0),
        ([USER, CALL, {"role": "tool", "content": "error: ValueError"}, {"role": "assistant", "content": "<answer>3717</answer>"}], 0.5, 1.0),
        ([USER, {"role": "assistant", "content": "<answer>3717</answer>"}], 0.5, 1.0),
        ([USER, {"role": "assistant", "content": "3717"}], 0.0, 0.0),
        ([USER, CALL, {"role": "tool", "content": "59 * 63 = 3717"}], 0.5, 0.0),
    ],
    ids=["solved", "wrong-answer", "failed-call", "no-call", "no-tags", "no-final-reply"],
)  # fmt: skip
def test_the_evaluator_scores_the_conversation(messages, score, correct):
    evaluator = load_evaluator(None, dataset="calculator")
    assert evaluator.name == "calculator"
    result = evaluator.fn(_row(*messages)).evaluation_result
    assert result.score == score
    assert result.metrics["correct_in_tags"].score == correct
    assert result.metrics["tool_called"].score == float(score - 0.5 * correct == 0.5)
