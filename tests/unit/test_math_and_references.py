"""MATH-style rows and the ``math`` evaluator (boxed answers compared by math-verify), and where
``--reference-field`` finds a reference: dotted paths (verl's reward_model.ground_truth), boxed
solutions, and objects refused instead of compared."""

from __future__ import annotations

import json

import pytest

from openrft.data import load_prompts
from openrft.data.reference import reference_value
from openrft.data.tasks.math import adapt_row, answers_equal, last_boxed
from openrft.evaluators import load_evaluator, score_groups
from openrft.evaluators.loader import default_evaluator_name
from openrft.records import Completion

MATH_ROWS = [
    {"problem": "What is $2x$ if $x+3=10$?", "level": "Level 1", "type": "Algebra",
     "solution": "Subtracting 3 from both sides gives $x = 7$, so $2x = \\boxed{14}$."},
    {"problem": "Simplify $\\frac{10}{12}$.", "solution": "Divide by 2: $\\boxed{\\frac{5}{6}}$."},
    {"problem": "Solve $x^2=4$.", "solution": "...", "answer": "\\{-2, 2\\}"},  # MATH-500 keeps 'answer'
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so $2x = \\boxed{14}$.", "14"),
        ("\\boxed{\\frac{5}{6}} then", "\\frac{5}{6}"),
        ("a \\boxed{1} b \\fbox{2}", "2"),
        ("\\boxed 7.", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{cut off", None),
        ("no box at all", None),
    ],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


def test_math_answers_compare_as_mathematics():
    assert answers_equal("0.5", "\\frac{1}{2}") and answers_equal("\\dfrac{5}{6}", "\\frac{5}{6}")
    assert answers_equal("\\{2,-2\\}", "\\{-2, 2\\}") and answers_equal("x = 7", "x=7")
    assert not answers_equal("15", "14") and not answers_equal(None, "14") and not answers_equal("1", None)


def test_math_rows_load_and_score_with_the_math_evaluator(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in MATH_ROWS) + "\n")
    prompts = load_prompts(str(path))
    assert [p.row["ground_truth"] for p in prompts] == ["14", "\\frac{5}{6}", "\\{-2, 2\\}"]
    assert prompts[0].messages[0]["role"] == "system" and "\\boxed" in prompts[0].messages[0]["content"]
    assert prompts[0].row["level"] == "Level 1" and default_evaluator_name(str(path)) == "math"
    texts = ["2x = \\boxed{14}", "\\boxed{15}", "<answer>14</answer>", "fourteen"]
    group = [Completion(prompts[0].prompt_id, i, (1,), (2,), t, (-0.1,), "stop") for i, t in enumerate(texts)]
    scores = score_groups(load_evaluator("math"), [(prompts[0], group)], timeout=30)[0]
    assert [round(s.score, 3) for s in scores] == [1.0, 0.1, 1.0, 0.0]
    assert scores[1].metrics == {"correct": 0.0, "format": 1.0} and "expected 14" in scores[1].reason
    with pytest.raises(ValueError, match="no \\\\boxed"):
        adapt_row({"problem": "p", "solution": "no final answer"})


def test_reference_fields_follow_dotted_paths_and_refuse_objects():
    row = {"reward_model": {"style": "rule", "ground_truth": "72"}, "solution": "so $\\boxed{\\frac{1}{2}}$",
           "answer": "work\n#### 1,000", "choices": [{"text": "a"}, {"text": "b"}]}  # fmt: skip
    assert reference_value(row, "reward_model.ground_truth") == "72"
    assert reference_value(row, "solution") == "\\frac{1}{2}" and reference_value(row, "answer") == "1000"
    assert reference_value(row, "choices.1.text") == "b"
    with pytest.raises(ValueError, match="holds an object.*--reference-field reward_model.ground_truth"):
        reference_value(row, "reward_model")
    with pytest.raises(ValueError, match="holds a list"):
        reference_value(row, "choices")
    with pytest.raises(ValueError, match="no reference answer in field 'reward_model.missing'"):
        reference_value(row, "reward_model.missing")
    with pytest.raises(ValueError, match="no reference answer in field 'answer'"):
        reference_value({"answer": "  "}, "answer")  # blank: nothing to score against
    with pytest.raises(ValueError, match="no reference answer"):
        reference_value({"x": ["1"]}, "x.1")  # past the list's end: a bad row, not a crash
    assert reference_value({"a.b": "7", "a": {"b": "8"}}, "a.b") == "7"  # a key with a dot is read first
    assert reference_value({"a": "step #### 5\nso #### 1,000"}, "a") == "1000"  # the last '####'


def test_reference_fields_skip_bad_rows_counting_those_already_skipped(tmp_path):
    from openrft.data.reference import with_reference_field

    good = {"messages": [{"role": "user", "content": "q"}]}
    lines = (
        ["{not json", "{also not"]
        + [json.dumps(good)] * 3
        + [json.dumps({**good, "answer": str(i)}) for i in range(5)]
    )
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    prompts = with_reference_field(load_prompts(str(path), skip_bad_rows=True), "answer", skip_bad_rows=True)
    assert len(prompts) == 5 and prompts.skipped == 5  # 5 bad of 10: exactly half is still allowed
    assert [p.row["ground_truth"] for p in prompts] == ["0", "1", "2", "3", "4"]
