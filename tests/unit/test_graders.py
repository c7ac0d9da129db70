"""OpenAI grader specs (openrft.evaluators.graders): every grader type with the example of OpenAI's
graders guide, scored on hand-checked responses, and the malformed specs each refused in one line.
The model graders, against a stub server, are in test_graders_model.py.
"""

from __future__ import annotations

import json

import pytest

from openrft.errors import EvaluatorError
from openrft.evaluators.graders import load_grader
from openrft.evaluators.graders.formula import Formula
from openrft.evaluators.loader import load_evaluator
from openrft.evaluators.runner import score_groups, summarize
from openrft.records import Completion, Prompt

# ----------------------------------------------------------------------------- the guide's examples

STRING_CHECK = {
    "type": "string_check",
    "name": "Example string check grader",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
TEXT_SIMILARITY = {
    "type": "text_similarity",
    "name": "Example text similarity grader",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "evaluation_metric": "fuzzy_match",
}
SCORE_MODEL = {
    "type": "score_model",
    "name": "Example score model grader",
    "input": [
        {
            "role": "user",
            "content": "Score how close the reference answer is to the model answer. Score 1.0 if they are "
            "the same and 0.0 if they are different. Return just a floating point score\n\n"
            "Reference answer: {{ item.label }}\n\nModel answer: {{ sample.output_text }}",
        }
    ],
    "model": "o4-mini-2025-04-16",
    "range": [0, 1],
    "sampling_params": {
        "temperature": 1,
        "top_p": 1,
        "seed": 42,
        "max_completions_tokens": 2048,
        "reasoning_effort": "medium",
    },  # fmt: skip
}
LABEL_MODEL = {
    "name": "First label grader",
    "type": "label_model",
    "model": "gpt-4o-2024-08-06",
    "input": [
        {"type": "message", "role": "system", "content": {"type": "input_text",
         "text": "Classify the sentiment of the following statement as one of positive, neutral, or negative"}},
        {"type": "message", "role": "user", "content": {"type": "input_text", "text": "Statement: {{ item.response }}"}},
    ],
    "passing_labels": ["positive"],
    "labels": ["positive", "neutral", "negative"],
}  # fmt: skip
PYTHON_SOURCE = """\
from rapidfuzz import fuzz, utils

def grade(sample, item) -> float:
    output_text = sample["output_text"]
    reference_answer = item["reference_answer"]
    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0
"""
ROME_VS_PARIS = 2 / 9  # rapidfuzz ratio of "rome" and "paris": 1 common character, 2 * 1 / (4 + 5)
PYTHON = {
    "type": "python",
    "name": "Example python grader",
    "source": PYTHON_SOURCE,
    "image_tag": "2025-05-08",
}
MULTI = {
    "type": "multi",
    "name": "tool call grader",
    "graders": {
        "name": {"name": "name", "type": "string_check", "input": "{{ sample.output_tools[0].function.name }}",
                 "reference": "{{ item.name }}", "operation": "eq"},
        "arguments": {"name": "arguments", "type": "string_check",
                      "input": "{{ sample.output_tools[0].function.arguments }}",
                      "reference": "{{ item.arguments }}", "operation": "eq"},
    },
    "calculate_output": "0.5 * name + 0.5 * arguments",
}  # fmt: skip


def grade(spec: dict, text: str, **row) -> dict:
    return load_grader(json.dumps(spec)).fn(text, row)


# ----------------------------------------------------------------------------- string_check


@pytest.mark.parametrize(
    ("operation", "text", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0),
        ("ne", "Rome", "Paris", 1.0), ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0), ("like", "the capital is paris.", "Paris", 0.0),
        ("ilike", "the capital is PARIS.", "paris", 1.0), ("ilike", "Rome", "paris", 0.0),
    ],
)  # fmt: skip
def test_string_check_operations(operation, text, reference, expected):
    spec = {**STRING_CHECK, "operation": operation}
    result = grade(spec, text, label=reference, messages=[])
    assert result["score"] == expected and result["is_score_valid"]


def test_string_check_documented_example_and_numbers_render_as_text():
    assert grade(STRING_CHECK, "42", label=42)["score"] == 1.0
    assert grade(STRING_CHECK, "41", label=42)["score"] == 0.0


# ----------------------------------------------------------------------------- text_similarity


def similarity(metric: str, text: str, reference: str) -> float:
    return grade({**TEXT_SIMILARITY, "evaluation_metric": metric}, text, label=reference)["score"]


def test_text_similarity_documented_example_fuzzy_match():
    assert similarity("fuzzy_match", "Paris", "paris") == 1.0  # default processing lowercases
    assert similarity("fuzzy_match", "hello", "hallo") == pytest.approx(0.8)  # 1 edit in 10 chars


def test_text_similarity_identical_text_scores_one_with_every_local_metric():
    text = "the cat sat on the mat"
    for metric in (
        "fuzzy_match",
        "bleu",
        "gleu",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ):
        assert similarity(metric, text, text) == pytest.approx(1.0), metric


def test_text_similarity_hand_checked_values():
    # rouge_1: 3 of 3 candidate words in the 4-word reference: P=1, R=3/4, F=6/7
    assert similarity("rouge_1", "the cat sat", "the cat sat down") == pytest.approx(6 / 7)
    # rouge_2: bigrams "the cat", "cat sat" both in the reference's 3: P=1, R=2/3, F=0.8
    assert similarity("rouge_2", "the cat sat", "the cat sat down") == pytest.approx(0.8)
    assert similarity("rouge_5", "the cat sat", "the cat sat down") == 0.0  # no 5-grams
    assert similarity("rouge_l", "the cat sat", "the cat sat down") == pytest.approx(6 / 7)
    # gleu: min(precision, recall) over 1-4-grams: 6 of 9 candidate n-grams, 6 of 9 reference ones
    assert similarity("gleu", "the cat sat", "the cat sat") == 1.0
    assert similarity("bleu", "completely different words here", "the cat sat on the mat") == 0.0


def test_meteor_uses_wordnet_synonyms():
    # identical 6 words: one chunk, penalty 0.5 * (1/6)^3
    assert similarity("meteor", "the cat sat on the mat", "the cat sat on the mat") == pytest.approx(
        1 - 0.5 / 216
    )
    # "car" and "auto" share a WordNet synset: 3 matches in one chunk, penalty 0.5 * (1/3)^3
    assert similarity("meteor", "a red car", "a red auto") == pytest.approx(1 - 0.5 / 27)


def test_cosine_needs_an_embedding_endpoint():
    with pytest.raises(EvaluatorError, match="cosine metric needs an embedding endpoint"):
        load_grader(json.dumps({**TEXT_SIMILARITY, "evaluation_metric": "cosine"}))
    from openrft.evaluators.graders.text import cosine

    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0  # an empty embedding matches nothing, not everything
    assert cosine([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0) and cosine([1, 0], [-1, 0]) == pytest.approx(
        -1.0
    )


# ----------------------------------------------------------------------------- python


def test_python_documented_example():
    result = grade(PYTHON, "Paris", reference_answer="paris")
    assert result["score"] == 1.0
    evaluator = load_grader(json.dumps(PYTHON))
    assert not evaluator.run_inline  # user code: scored in the evaluator worker processes


def test_python_grader_runs_contained_in_a_worker(tmp_path):
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(PYTHON))
    evaluator = load_evaluator(str(path))
    assert evaluator.spec == str(path.resolve())
    from openrft.evaluators.isolation import score_contained

    prompt = Prompt("1", [{"role": "user", "content": "capital of France?"}], {"reference_answer": "Paris"})
    scores = score_contained(evaluator, [(prompt, [completion("Paris"), completion("Rome", 1)])],
                             max_concurrency=1, timeout=30)  # fmt: skip
    assert [s.score for s in scores[0]] == [1.0, pytest.approx(ROME_VS_PARIS)]


def test_a_python_grader_may_return_a_bool_and_take_a_pass_threshold():
    source = "def grade(sample, item):\n    return sample['output_text'].strip() == item['answer']\n"
    spec = {"type": "python", "name": "same", "source": source, "pass_threshold": 0.5}
    evaluator = load_evaluator(json.dumps(spec))
    prompt = Prompt("1", [{"role": "user", "content": "q"}], {"answer": "Paris"})
    from openrft.evaluators import score_groups

    scores = score_groups(evaluator, [(prompt, [completion("Paris"), completion("Rome")])], timeout=5)[0]
    assert [s.score for s in scores] == [1.0, 0.0] and all(s.is_valid for s in scores)
    for result, value in (("np.isclose(1.0, 1.0)", 1.0), ("np.float32(0.25)", 0.25), ("np.array(0.5)", 0.5)):
        spec = {
            "type": "python",
            "name": "np",
            "source": f"import numpy as np\ndef grade(sample, item):\n    return {result}\n",
        }
        (score,) = score_groups(load_evaluator(json.dumps(spec)), [(prompt, [completion("a")])], timeout=5)[0]
        assert score.is_valid and score.score == value, (result, score.reason)  # numpy's bool_ too
    spec["source"] = "import numpy as np\ndef grade(sample, item):\n    return np.array([1.0])\n"
    (score,) = score_groups(load_evaluator(json.dumps(spec)), [(prompt, [completion("a")])], timeout=5)[0]
    assert not score.is_valid and "not a number" in score.reason


def test_python_grader_that_hangs_times_out_and_one_that_raises_is_invalid(tmp_path):
    from openrft.evaluators.isolation import score_contained

    hang = {
        "type": "python",
        "name": "hang",
        "source": "import time\ndef grade(sample, item):\n    time.sleep(60)\n",
    }
    bad = {"type": "python", "name": "bad", "source": "def grade(sample, item):\n    return 'x'\n"}
    prompt = Prompt("1", [{"role": "user", "content": "q"}], {})
    for spec, reason in ((hang, "timeout"), (bad, "not a number")):
        evaluator = load_evaluator(json.dumps(spec))
        (score,) = score_contained(evaluator, [(prompt, [completion("a")])], max_concurrency=1, timeout=1)[0]
        assert not score.is_valid and reason in score.reason


def completion(text: str, index: int = 0) -> Completion:
    return Completion("1", index, (), (), text, (), "stop")


# ----------------------------------------------------------------------------- multi


def test_multi_documented_example_and_metrics():
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    wrong = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    row = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert grade(MULTI, call, **row)["score"] == 1.0
    result = grade(MULTI, wrong, **row)
    assert result["score"] == 0.5 and result["metrics"] == {"name": 1.0, "arguments": 0.0}
    # no tool call at all: output_tools[0] is not there, which scores 0 (a valid, wrong answer: the
    # group learns from it), while a row without the reference's field is an error
    prompt = Prompt("1", [{"role": "user", "content": "weather?"}], row)
    scores = score_groups(
        load_grader(json.dumps(MULTI)), [(prompt, [completion(call), completion("no call", 1)])]
    )
    assert scores[0][0].score == 1.0 and (scores[0][1].score, scores[0][1].is_valid) == (0.0, True)
    assert scores[0][1].metrics == {"name": 0.0, "arguments": 0.0}
    assert "(name: the response has no" in scores[0][1].reason  # each sub-grader's own reason, too
    stats = summarize(scores)
    assert stats["reward/name"] == 0.5 and stats["reward/arguments"] == 0.5
    bad_row = Prompt("2", [{"role": "user", "content": "weather?"}], {"name": "get_weather"})
    (scored,) = score_groups(load_grader(json.dumps(MULTI)), [(bad_row, [completion(call)])])[0]
    assert not scored.is_valid and "arguments" in scored.reason


def test_multi_is_invalid_when_its_formula_is_not_a_finite_number():
    """Never a valid 0 to train on (a sub-grader that is invalid: test_graders_model)."""
    endless = {
        "type": "python",
        "name": "py",
        "source": "def grade(sample, item):\n    return float('inf')\n",
    }
    spec = {"type": "multi", "name": "m", "graders": {"py": endless}, "calculate_output": "py"}
    prompt = Prompt("1", [{"role": "user", "content": "q"}], {"label": "a"})
    (score,) = score_groups(load_grader(json.dumps(spec)), [(prompt, [completion("a")])], timeout=5)[0]
    assert not score.is_valid and score.score == 0.0 and "= inf" in score.reason


def test_multi_accepts_a_single_sub_grader_as_the_sdk_types_it():
    spec = {
        "type": "multi",
        "name": "one",
        "graders": {**STRING_CHECK, "name": "exact"},
        "calculate_output": "exact",
    }
    assert grade(spec, "a", label="a")["metrics"] == {"exact": 1.0}


def test_formula_functions_and_power():
    formula = Formula("min(a, b) + max(a, b) ^ 2 + abs(-a) + floor(1.5) + ceil(0.2) + exp(0) + sqrt(4) + log(1)",
                      ["a", "b"])  # fmt: skip
    assert formula({"a": 0.5, "b": 1.0}) == pytest.approx(0.5 + 1 + 0.5 + 1 + 1 + 1 + 2 + 0)
    assert Formula("a ** 2", ["a"])({"a": 3}) == 9
    with pytest.raises(EvaluatorError, match="math domain error"):
        Formula("sqrt(a)", ["a"])({"a": -1})
    with pytest.raises(EvaluatorError, match="not a real number"):
        Formula("(a - 1) ^ 0.5", ["a"])({"a": 0})
    with pytest.raises(EvaluatorError, match="calculate_output '10 \\*\\* a'"):
        Formula("10 ** a", ["a"])({"a": 400})
    assert Formula("log(a, 2)", ["a"])({"a": 8}) == pytest.approx(3)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("0.5 * name + 0.5 * nope", "uses 'nope', which is not a sub-grader"),
        ("__import__('os').system('true')", "a call of something other than a named function"),
        ("__import__('os')", "calls __import__(), which is not allowed"),
        ("name.__class__", "attribute 'name.__class__', which is not allowed"),
        ("name if name else 0", "ifexp"),
        ("[name][0]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("'a' * 3", "the constant 'a'"),
        ("name < 1", "not allowed"),
        ("round(name)", "calls round(), which is not allowed"),
        ("name +", "is not a valid formula"),
        ("min(name)", "min() takes at least 2 arguments, not 1"),
        ("abs(name, 1)", "abs() takes 1 argument, not 2"),
        ("sqrt()", "sqrt() takes 1 argument, not 0"),
    ],
)
def test_formula_refuses_unknown_names_and_disallowed_constructs(formula, message):
    spec = {**MULTI, "calculate_output": formula}
    with pytest.raises(EvaluatorError) as info:
        load_grader(json.dumps(spec))
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("multi grader 'tool call grader'")


# ----------------------------------------------------------------------------- malformed specs


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**STRING_CHECK, "type": "regex_check"}, "unknown grader type 'regex_check'"),
        ({"name": "untyped", "input": "x"}, "grader 'untyped': no 'type' field"),
        (
            {**STRING_CHECK, "operation": "contains"},
            "operation: Input should be 'eq', 'ne', 'like' or 'ilike'",
        ),
        ({**TEXT_SIMILARITY, "evaluation_metric": "rouge_9"}, "evaluation_metric"),
        ({k: v for k, v in STRING_CHECK.items() if k != "reference"}, "missing field 'reference'"),
        ({**STRING_CHECK, "referense": "x"}, "unknown field 'referense'"),
        ({**STRING_CHECK, "input": "{{ sample.output_text"}, "is not valid"),
        ({**LABEL_MODEL, "passing_labels": ["great"]}, "passing_labels ['great'] are not among the labels"),
        ({**SCORE_MODEL, "range": [1, 0]}, "low < high"),
        ({**PYTHON, "source": "def grade(sample, item):\n  return (\n"}, "syntax error in source"),
        ({**PYTHON, "source": "def score(sample, item):\n    return 1\n"}, "defines no function grade"),
        (
            {**MULTI, "graders": {"a": {**STRING_CHECK, "type": "nope"}}},
            "sub-grader 'a': unknown grader type",
        ),
        ({**MULTI, "graders": {"a": MULTI}}, "they do not nest"),
    ],
)
def test_malformed_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(EvaluatorError) as info:
        load_grader(json.dumps(spec), endpoint="http://127.0.0.1:9/v1")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_spec_files_yaml_and_unreadable(tmp_path):
    import yaml

    path = tmp_path / "grader.yaml"
    path.write_text(yaml.safe_dump(STRING_CHECK))
    assert load_evaluator(str(path)).fn("a", {"label": "a"})["score"] == 1.0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EvaluatorError, match="not valid JSON"):
        load_evaluator(str(bad))
    with pytest.raises(EvaluatorError, match="grader file not found"):
        load_evaluator(str(tmp_path / "missing.json"))
    with pytest.raises(EvaluatorError, match="not valid JSON"):
        load_evaluator('{"type": "string_check",')


def test_missing_template_field_named_at_check_time_and_scoring_time():
    evaluator = load_grader(json.dumps(STRING_CHECK))
    with pytest.raises(EvaluatorError) as info:
        evaluator.check_row({"messages": [], "answer": "x"}, "row 1 of data.jsonl")
    text = str(info.value)
    assert "'Example string check grader'" in text and "'label'" in text and "row 1 of data.jsonl" in text
    evaluator.check_row({"label": "x"}, "row 1")  # sample fields are not known yet: never refused
    result = score_groups(
        evaluator, [(Prompt("1", [{"role": "user", "content": "q"}], {}), [completion("a")])]
    )
    assert not result[0][0].is_valid and "'label'" in result[0][0].reason


def test_templates_are_sandboxed_and_read_fields_before_methods():
    spec = {**STRING_CHECK, "input": "{{ item.items }}", "reference": "{{ sample.output_json.answer }}"}
    assert grade(spec, '{"answer": "7"}', items="7")["score"] == 1.0
    unsafe = {**STRING_CHECK, "input": "{{ sample.output_text.__class__.__mro__ }}"}
    with pytest.raises(EvaluatorError, match="is not allowed: access to attribute '__class__'"):
        grade(unsafe, "x", label="x")  # the sandbox refuses Python internals


def test_a_field_name_with_a_hyphen_is_read_as_one_name():
    spec = {**STRING_CHECK, "input": "{{ sample.output_text }}", "reference": "{{ item.reference-answer }}"}
    assert grade(spec, "Paris", **{"reference-answer": "Paris"})["score"] == 1.0
    nested = {**STRING_CHECK, "input": "{{sample.output_json.final-answer}}", "reference": "{{ item.a.b-c }}"}
    assert grade(nested, '{"final-answer": 3}', a={"b-c": 3})["score"] == 1.0
    with pytest.raises(EvaluatorError, match="refers to 'other-name'"):
        grade({**spec, "reference": "{{ item.other-name }}"}, "Paris", **{"reference-answer": "Paris"})
    from openrft.evaluators.graders.templates import render

    assert render("{{ item.n-1 }}", {"n": 5}, {}) == "4"  # a hyphen before a digit: still a subtraction
    assert (
        render("{{ 'item.a-b' ~ item.a-b }}", {"a-b": "!"}, {}) == "item.a-b!"
    )  # string literals as written


def check(template: str, text: str, expected: str, **row) -> None:
    """``template`` renders to ``expected`` for response ``text`` and dataset row ``row``."""
    spec = {**STRING_CHECK, "input": template, "reference": expected}
    result = grade(spec, text, **row)
    assert result["score"] == 1.0, result["reason"]


def test_sample_has_every_field_of_openai_sample():
    call = '<tool_call>{"name": "weather", "arguments": {"city": "Zürich"}}</tool_call>'
    check("{{ sample.choices[0].message.content }}|{{ sample.choices[0].finish_reason }}", "hi", "hi|stop")
    check("{{ sample.output_audio }}", "hi", "null")
    check("{{ sample.output_json.answer + 1 }}", '{"answer": 0.5}', "1.5")  # a JSON object, as OpenAI's
    check("{{ sample.output_json }}", "0.5", "null")  # structured output: a bare value is text
    check("{{ sample.output_json }}", "not json", "null")
    # a tool call is shaped like message.tool_calls; the text beside it is output_text
    check("{{ sample.output_tools[0].id }}|{{ sample.output_tools[0].function.arguments }}|{{ sample.output_text }}",
          f"Let me look. {call}", 'call_0|{"city": "Zürich"}|Let me look.')  # fmt: skip
    check("{{ sample.choices[0].finish_reason }}", call, "tool_calls")
    # the guide's arguments check holds for non-ASCII arguments written as they are
    row = {"name": "weather", "arguments": '{"city": "Zürich"}'}
    assert grade(MULTI, call, **row)["score"] == 1.0
    # a path on into the arguments (a JSON string, as in chat completions) reads inside them, as
    # OpenAI's tools cookbook writes it
    deep = '<tool_call>{"name": "f", "arguments": {"symbols": [{"name": "Evals"}]}}</tool_call>'
    check("{{ sample.output_tools[0].function.arguments.symbols[0].name }}", deep, "Evals")
    check("{{ sample.output_tools[0].function.arguments['symbols'] }}", deep, '[{"name": "Evals"}]')


def test_a_reply_cut_at_the_token_limit_finishes_with_length():
    spec = {**STRING_CHECK, "input": "{{ sample.choices[0].finish_reason }}", "reference": "length"}
    cut, whole = Completion("1", 0, (), (), "half an ans", (), "length"), completion("a whole answer", 1)
    prompt = Prompt("1", [{"role": "user", "content": "q"}], {"messages": [], "reference_answer": "x"})
    scores = score_groups(load_grader(json.dumps(spec)), [(prompt, [cut, whole])])[0]
    assert [s.score for s in scores] == [1.0, 0.0]


def test_item_is_the_row_as_written_with_every_field():
    row = {"messages": [{"role": "user", "content": "q"}], "completion": "C", "prompt_id": "P", "ok": True}
    check("{{ item.completion }}|{{ item.prompt_id }}|{{ item.ok }}|{{ item.messages[0].content }}",
          "x", "C|P|true|q", **row)  # fmt: skip
    prompt = Prompt("row-7", [{"role": "user", "content": "q"}], row)
    spec = {**STRING_CHECK, "input": "{{ item.completion }}-{{ item.prompt_id }}", "reference": "C-P"}
    (score,) = score_groups(load_grader(json.dumps(spec)), [(prompt, [completion("x")])])[0]
    assert score.is_valid and score.score == 1.0, score.reason


def test_only_double_braces_are_placeholders():
    text = "{#rubric} 5 {% of %} {# apples #}"
    check(text + " {{ sample.output_text }}", "ok", text + " ok")


def test_python_grader_may_return_numpy_numbers(tmp_path):
    source = "import numpy as np\ndef grade(sample, item):\n    return np.float32(0.5) + np.int64(0)\n"
    assert grade({"type": "python", "name": "np", "source": source}, "x")["score"] == 0.5


def test_a_python_grader_importing_a_missing_package_is_refused_when_loaded():
    import importlib.util

    if importlib.util.find_spec("sklearn") is not None:
        pytest.skip("scikit-learn is installed here")
    source = "import numpy\nfrom sklearn.metrics import f1_score\ndef grade(sample, item):\n    return 1.0\n"
    with pytest.raises(EvaluatorError, match="imports sklearn, which is not installed") as caught:
        load_grader(json.dumps({**PYTHON, "source": source}))
    assert "pip install scikit-learn" in caught.value.hint
    assert load_grader(json.dumps({**PYTHON, "source": "import json, rapidfuzz.fuzz\n" + PYTHON["source"]}))


def test_a_bad_grader_timeout_or_retry_count_is_refused_when_the_grader_loads(monkeypatch):
    spec = {"type": "score_model", "name": "judge", "model": "m", "range": [0, 1],
            "input": [{"role": "user", "content": "{{ sample.output_text }}"}]}  # fmt: skip
    for name, value in (
        ("OPENRFT_GRADER_TIMEOUT", "x"),
        ("OPENRFT_GRADER_TIMEOUT", "0"),
        ("OPENRFT_GRADER_RETRIES", "-1"),
    ):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(EvaluatorError, match=f"^{name}: '{value}' is not valid"):
                load_grader(json.dumps(spec), endpoint="http://localhost:9/v1")
    monkeypatch.setenv("OPENRFT_GRADER_TIMEOUT", "x")  # a grader that calls no model does not read it
    load_grader(json.dumps(STRING_CHECK))
    monkeypatch.setenv("OPENRFT_GRADER_TIMEOUT", "2.5")
    monkeypatch.setenv("OPENRFT_GRADER_RETRIES", "")  # empty: the default
    from openrft.evaluators.graders.model import Endpoint

    client = Endpoint(url="http://localhost:9/v1").client
    assert (client.timeout, client.max_retries) == (2.5, 3)
