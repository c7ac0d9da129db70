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


def test_a_python_grader_that_cannot_take_sample_and_item_is_refused_at_load():
    import json

    from openrft.evaluators.graders import load_grader

    def spec(source: str) -> str:
        return json.dumps({"type": "python", "name": "p", "source": source})

    for fine in ("def grade(sample, item):\n    return 1", "def grade(sample, item, scale=1):\n    return 1",
                 "def grade(*args):\n    return 1", "def grade(sample, *rest, k=2):\n    return 1"):  # fmt: skip
        load_grader(spec(fine))
    for wrong in ("def grade(sample):\n    return 1", "def grade(a, b, c):\n    return 1",
                  "def grade(sample, item, *, mode):\n    return 1"):  # fmt: skip
        with pytest.raises(EvaluatorError, match=r"grade\(\) must take two arguments"):
            load_grader(spec(wrong))


def test_a_response_without_the_field_a_score_model_reads_gets_the_low_end_of_its_range():
    import json

    from openrft.evaluators.graders import load_grader

    spec = {"type": "score_model", "name": "judge", "model": "m", "range": [1, 5],
            "input": [{"role": "user", "content": "Rate {{sample.output_json.answer}} for {{item.q}}"}]}  # fmt: skip
    evaluator = load_grader(json.dumps(spec), endpoint="http://127.0.0.1:9/v1", model="m")  # never called
    result = evaluator.fn("not JSON at all", {"q": "x"})
    assert result["score"] == 1.0 and result["is_score_valid"] and "so 1" in result["reason"]


def test_a_model_graders_sampling_params_are_checked_and_a_misnamed_field_is_named():
    import json

    from openrft.evaluators.graders import load_grader

    base = {"type": "score_model", "name": "j", "model": "m",
            "input": [{"role": "user", "content": "{{sample.output_text}}"}]}  # fmt: skip

    def load(**extra):
        return load_grader(json.dumps({**base, **extra}), endpoint="http://127.0.0.1:9/v1")

    load(sampling_params={"temperature": 0.5, "top_p": 1, "max_completions_tokens": 64, "seed": 1})
    with pytest.raises(
        EvaluatorError, match="unknown field 'sampling_parameters' \\(the field is 'sampling_params'\\)"
    ):
        load(sampling_parameters={"temperature": 0})
    for bad, field in (({"temperature": 5}, "temperature"), ({"top_p": 0}, "top_p"),
                       ({"max_completions_tokens": -1}, "max_completions_tokens"),
                       ({"reasoning_effort": "extreme"}, "reasoning_effort")):  # fmt: skip
        with pytest.raises(EvaluatorError, match=f"sampling_params.{field}: "):
            load(sampling_params=bad)
    with pytest.raises(EvaluatorError, match="unknown field 'sampling_params.max_completion_token'"):
        load(sampling_params={"max_completion_token": 32})  # misspelt: it would drop the limit
    with pytest.raises(EvaluatorError, match=r"pass_threshold 5 is outside the range \[0, 1\]"):
        load(pass_threshold=5)


def test_a_sub_grader_may_have_a_name_python_reserves_and_a_bom_file_loads(tmp_path):
    assert Formula("0.8 * pass + 0.2 * style", ["pass", "style"])({"pass": 1.0, "style": 0.5}) == 0.9
    with pytest.raises(EvaluatorError, match="'pass' is not one of the sub-graders"):
        Formula("0.8 * pass + 0.2 * style", ["style"])
    from openrft.evaluators.graders import load_grader

    spec = tmp_path / "g.json"  # as Windows PowerShell 5 writes it
    spec.write_bytes(b'\xef\xbb\xbf{"type": "string_check", "name": "s", "operation": "eq", '
                     b'"input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}')  # fmt: skip
    assert load_grader(str(spec)).fn("4", {"answer": "4"})["score"] == 1.0
