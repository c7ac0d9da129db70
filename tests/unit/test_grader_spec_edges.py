"""The edges of OpenAI grader specs: a ``calculate_output`` formula is computed in floats (an exact
integer power such as ``9 ^ 9 ^ 9`` would stall the trainer for hours), its overflow is a readable
invalid score, a similarity metric never leaves [0, 1] by a rounding error, and a misspelt sample field
is refused when the grader is loaded (it would render empty and score every response 0)."""

from __future__ import annotations

import pytest

from openrft.errors import EvaluatorError
from openrft.evaluators.graders.formula import Formula
from openrft.evaluators.graders.text import similarity


def test_a_formula_is_computed_in_floats():
    assert Formula("floor(c * 10) ^ 2 + ceil(c)", ["c"])({"c": 0.55}) == 26.0
    assert isinstance(Formula("2 ^ 3", ["c"])({"c": 0.0}), float)
    with pytest.raises(EvaluatorError, match="too large for a number"):  # exact, 7^823543 has 695,975 digits
        Formula("7 ^ 7 ^ 7 + c", ["c"])({"c": 0.5})
    with pytest.raises(EvaluatorError, match="too large for a number"):
        Formula("c * 10 ^ 400", ["c"])({"c": 0.5})


def test_bleu_of_a_text_against_itself_is_exactly_one():
    text = "The quick brown fox jumps over the lazy dog"
    assert similarity("bleu", text, text) == 1.0  # sacrebleu says 100.00000000000004


def test_a_misspelt_sample_field_is_refused_before_anything_is_scored():
    import json

    from openrft.evaluators.graders import load_grader

    def check(template: str) -> None:
        spec = {"type": "string_check", "name": "exact", "input": template, "reference": "{{item.answer}}",
                "operation": "eq"}  # fmt: skip
        load_grader(json.dumps(spec)).check_row({"answer": "Paris"}, "row 1")

    for fine in ("{{sample.output_text}}", "{{sample.output_json.city}}", "{{ sample.choices[0].message.content }}",
                 "{{sample.output_tools}}"):  # fmt: skip
        check(fine)
    with pytest.raises(EvaluatorError, match=r"refers to sample.output_txt, which no sample has \(a sample has "
                       r"output_text, output_json"):  # fmt: skip
        check("{{sample.output_txt}}")
    with pytest.raises(EvaluatorError, match="refers to sample.text"):
        check("{{ sample['text'] }}")
