"""Programming problems: MBPP, HumanEval and APPS rows load with their tests, and the built-in ``code``
evaluator runs each reply against them in a child process with time, memory and output limits."""

from __future__ import annotations

import json
import os
import time

import pytest

from openrft.cli import main
from openrft.data import load_prompts
from openrft.data.tasks.code import extract_code, read_tests
from openrft.data.tasks.code_run import Limits, outputs_match, run_tests
from openrft.evaluators import load_evaluator, score_groups
from openrft.evaluators.builtin import score_code
from openrft.evaluators.loader import default_evaluator_name
from openrft.records import Completion

MBPP = {"task_id": 2, "text": "Write a function to find the shared elements of two lists.", "code": "",
        "test_list": ["assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == {4, 5}",
                      "assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == {3, 4}"],
        "test_setup_code": "", "challenge_test_list": []}  # fmt: skip
HUMANEVAL = {"task_id": "HumanEval/0", "entry_point": "closest",
             "prompt": "from typing import List\n\n\ndef closest(xs: List[float], t: float) -> bool:\n"
                       '    """Whether two numbers of xs are closer than t."""\n',
             "test": "def check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0], 0.3)\n"
                     "    assert not candidate([1.0, 2.0, 3.0], 0.5)\n"}  # fmt: skip
BODY = "    return any(abs(a - b) < t for i, a in enumerate(xs) for b in xs[i + 1 :])\n"
APPS = {"problem_id": 7, "question": "Print the sum of the two integers on the line.", "starter_code": "",
        "input_output": json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})}  # fmt: skip
APPS_CALL = {"question": "Add two numbers.", "starter_code": "class Solution:\n    def add(self, a, b):",
             "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]})}  # fmt: skip


def fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}```\nDone."


def test_code_rows_load_with_their_tests_and_default_to_the_code_evaluator(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (MBPP, HUMANEVAL, APPS, APPS_CALL)))
    prompts = load_prompts(str(path))
    assert default_evaluator_name(str(path)) == "code"
    assert load_evaluator(None, dataset=str(path)).spec == "code"  # a worker process loads it again by name
    mbpp, humaneval, apps, call = (p.row["ground_truth"] for p in prompts)
    assert (
        mbpp["asserts"] == MBPP["test_list"] and "similar_elements((3, 4" in prompts[0].messages[1]["content"]
    )
    assert humaneval["entry_point"] == "closest" and HUMANEVAL["prompt"] in prompts[1].messages[1]["content"]
    assert apps == {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
    assert call["fn_name"] == "add" and "class Solution" in prompts[3].messages[1]["content"]
    assert all(p.messages[0]["role"] == "system" and "```python" in p.messages[0]["content"] for p in prompts)


def test_replies_score_the_share_of_tests_they_pass():
    mbpp = read_tests(MBPP["test_list"])
    good = "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"
    assert score_code(fenced(good), mbpp).score == 1.0
    half = score_code(fenced("def similar_elements(a, b):\n    return (4, 5)\n"), mbpp)
    assert half.score == 0.5 and {k: m.score for k, m in half.metrics.items()} == {
        "passed": 0.5, "all_passed": 0.0, "has_code": 1.0}  # fmt: skip
    assert half.reason == "passed 1 of 2 tests; test 2: AssertionError"
    assert score_code(fenced("def similar_elements(a, b):\n    return (4, 5)\n"), mbpp, partial=0).score == 0
    none = score_code("I would use sets.```", mbpp)
    assert none.score == 0 and none.reason == "no Python code in the reply"


def test_humaneval_replies_may_give_the_whole_function_or_only_its_body(tmp_path):
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps(HUMANEVAL) + "\n")
    tests = load_prompts(str(path))[0].row["ground_truth"]
    assert score_code(fenced(HUMANEVAL["prompt"] + BODY), tests).score == 1.0
    assert score_code(fenced(BODY), tests).score == 1.0  # joined to the prompt, as HumanEval's harness does
    whole = "def closest(xs, t):\n    return False\n"
    assert score_code(fenced(whole), tests).score == 0.0


def test_standard_input_and_function_call_tests():
    stdio = read_tests(json.loads(APPS["input_output"]))
    assert score_code(fenced("a, b = map(int, input().split())\nprint(a + b)\n"), stdio).score == 1.0
    assert score_code(fenced("print(3)\n"), stdio).reason == "passed 1 of 2 tests; test 2: wrong output"
    call = read_tests(APPS_CALL["input_output"])  # JSON text, as APPS and verl write it
    solution = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert score_code(fenced(solution), call).score == 1.0
    assert score_code(fenced("def add(a, b):\n    return a - b\n"), call).score == 0.0
    pairs = read_tests([{"input": "2\n", "output": "4\n"}])  # a list of cases (TACO, CodeContests)
    assert score_code(fenced("print(int(input()) * 2)\n"), pairs).score == 1.0
    assert outputs_match("1.0000001 x\n", "1.0 x") and not outputs_match("1 2", "1 2 3")


def test_runaway_programs_are_stopped_and_fail_only_their_tests(tmp_path):
    asserts = read_tests(["assert f() == 1", "assert f() == 1"])
    limits = Limits(timeout=0.5, time_limit=3.0, memory_mb=512)
    start = time.monotonic()
    loop = run_tests("def f():\n    while True: pass\n", asserts, limits)
    assert (loop.passed, loop.total) == (0, 2) and "TimeoutError" in loop.reason
    assert time.monotonic() - start < 3.0
    memory = run_tests("def f():\n    return len(bytearray(2 * 1024 ** 3))\n", asserts, limits)
    assert memory.passed == 0 and "MemoryError" in memory.reason
    marker = tmp_path / "survivor"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    spawner = (
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\nwhile True: pass\n"
    )
    stdio = run_tests(spawner, read_tests({"inputs": [""], "outputs": ["x"]}), limits)
    assert stdio.passed == 0 and "timed out" in stdio.reason
    flood = run_tests(
        "while True: print('x' * 4096)\n", read_tests({"inputs": [""], "outputs": ["x"]}), limits
    )
    assert flood.passed == 0
    exits = run_tests("import sys\nsys.exit(0)\n", asserts, limits)
    assert exits.passed == 0 and "before its tests ran" in exits.reason
    broken = run_tests("def f(:\n", asserts, limits)
    assert broken.reason.startswith("the program exited with status 1") and "SyntaxError" in broken.reason
    crash = run_tests("print(undefined)\n", read_tests({"inputs": [""], "outputs": ["x"]}), limits)
    assert crash.reason == "test 1: exit status 1 (NameError: name 'undefined' is not defined)"
    time.sleep(3.5)
    assert not marker.exists()  # the program's own children went with it
    assert not [f for f in os.listdir(tmp_path) if f.startswith("openrft-code-")]


def test_code_extraction():
    assert extract_code("```py\nx = 1\n```\ntext\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("<think>```python\nwrong\n```</think>```\nz = 3\n```") == "z = 3\n"
    assert extract_code("```python\ncut = 1") == "cut = 1"  # cut off by the token limit
    assert extract_code("x = 1") == "x = 1" and extract_code("prose ```bash\nls\n```") is None


def test_the_code_evaluator_scores_a_group_and_refuses_rows_without_tests(tmp_path, capsys):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(MBPP) + "\n")
    prompt = load_prompts(str(path))[0]
    texts = [fenced("def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"), "no code ```"]
    group = [Completion(prompt.prompt_id, i, (1,), (2,), t, (-0.1,), "stop") for i, t in enumerate(texts)]
    scores = score_groups(load_evaluator("code"), [(prompt, group)], timeout=30)[0]
    assert [s.score for s in scores] == [1.0, 0.0]
    rows = tmp_path / "plain.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "q"}], "ground_truth": g}) + "\n"
                            for g in (["assert True"], 42)))  # fmt: skip
    code = main(["rftj", "create", "--dataset", str(rows), "--evaluator", "code", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "row 2 of" in err and "must be tests" in err, err


@pytest.mark.parametrize("bad", [{"inputs": [1], "outputs": []}, "", {"asserts": []}, 3.5])
def test_references_that_are_not_tests_are_named(bad):
    with pytest.raises(ValueError, match="must be tests"):
        read_tests(bad)
