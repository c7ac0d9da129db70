"""Code tasks: what a correct reply may rely on (the prompt's imports, MBPP's test imports, APPS's call
arguments) and what a wrong one must not get away with (a crash after the right output, a near number)."""

from __future__ import annotations

import json

from openrft.data.tasks.code import adapt_row, read_tests
from openrft.data.tasks.code_run import outputs_match, run_tests
from openrft.evaluators.builtin import score_code

HUMANEVAL = {"task_id": "HumanEval/0", "entry_point": "closest",
             "prompt": "from typing import List\n\n\ndef closest(xs: List[float], t: float) -> bool:\n"
                       '    """Whether two numbers of xs are closer than t."""\n',
             "test": "def check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0], 0.3)\n"
                     "    assert not candidate([1.0, 2.0, 3.0], 0.5)\n"}  # fmt: skip


def fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}```\nDone."


def test_a_whole_humaneval_function_may_use_the_prompts_imports_without_repeating_them():
    tests = adapt_row(HUMANEVAL)["ground_truth"]
    reply = (
        "def closest(xs: List[float], t: float) -> bool:\n"  # List comes from the prompt's import
        "    return any(abs(a - b) < t for i, a in enumerate(xs) for b in xs[i + 1 :])\n"
    )
    assert score_code(fenced(reply), tests).score == 1.0


def test_mbpp_test_imports_are_available_to_the_asserts():
    row = {"task_id": 9, "text": "Write a function for the area of a circle.", "code": "",
           "test_list": ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)"],
           "test_imports": ["import math"], "test_setup_code": ""}  # fmt: skip
    tests = adapt_row(row)["ground_truth"]
    reply = "def area(r):\n    return 3.14159265 * r * r\n"  # correct, and imports nothing itself
    assert score_code(fenced(reply), tests).score == 1.0


def test_apps_call_arguments_given_as_lines_of_json_are_separate_arguments():
    tests = read_tests(json.dumps({"fn_name": "f", "inputs": ["1\n2", "[1, 2]\n3"], "outputs": [3, 6]}))
    run = run_tests("def f(a, b):\n    return (sum(a) if isinstance(a, list) else a) + b\n", tests)
    assert (run.passed, run.total) == (2, 2)


def test_a_stdio_program_that_prints_the_answer_then_fails_does_not_pass():
    tests = read_tests([{"input": "2\n", "output": "4\n"}])
    assert run_tests("print(int(input()) * 2)\n", tests).passed == 1
    crashed = run_tests("print(int(input()) * 2)\nraise SystemExit(3)\n", tests)
    assert crashed.passed == 0 and "exit status 3" in crashed.reason


def test_numbers_in_outputs_must_agree_within_one_millionth():
    assert outputs_match("1.0000001", "1.0") and outputs_match("2.5e-7", "0")
    assert not outputs_match("1.001", "1.0")
    assert not outputs_match("0.005", "0")
    assert not outputs_match("100.5", "100")
