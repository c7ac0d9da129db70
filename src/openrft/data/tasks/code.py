"""Programming problems whose answers are run against tests (the user supplies the file).

:func:`adapt_row` reads the layouts of the common Python code datasets into an evaluation row: the
problem as the user message after a system prompt asking for one fenced Python block, ``ground_truth``
the tests in one of the forms :func:`openrft.data.tasks.code_run.run_tests` runs, and ``task`` ``"code"``
(which makes ``code`` the file's default evaluator):

* MBPP (``text`` or ``prompt``, ``test_list``, optional ``test_setup_code`` / ``test_imports``): the
  asserts; the prompt shows the first one, as MBPP's own prompt does, so the model knows the function's
  name and signature;
* HumanEval (``prompt`` holding the signature and docstring, ``test``, ``entry_point``): its ``check``;
* APPS / TACO (``question``, ``input_output`` as JSON text with ``inputs``, ``outputs`` and optional
  ``fn_name``, optional ``starter_code``): standard input and output, or calls of ``fn_name``.

A row that already has ``messages`` or a ``prompt`` list keeps them; its ``ground_truth`` (or
``--reference-field``, e.g. verl's ``reward_model.ground_truth``) may be any of the three test forms,
as an object or JSON text, or a list of assert statements.
"""

from __future__ import annotations

import json
import re
from typing import Any

SYSTEM_PROMPT = (
    "Write a correct, efficient Python 3 solution. Give the complete program in one ```python code block."
)
FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def is_code_row(obj: dict[str, Any]) -> bool:
    if "messages" in obj:
        return False
    humaneval = {"prompt", "test", "entry_point"} <= obj.keys() and isinstance(obj["prompt"], str)
    mbpp = isinstance(obj.get("test_list"), list) and isinstance(obj.get("text", obj.get("prompt")), str)
    apps = isinstance(obj.get("question"), str) and "input_output" in obj
    return humaneval or mbpp or apps


def adapt_row(obj: dict[str, Any], *, system_prompt: str = SYSTEM_PROMPT) -> dict[str, Any]:
    """A MBPP, HumanEval or APPS row -> ``{"messages", "ground_truth", "task": "code", ...the row}``."""
    if {"test", "entry_point"} <= obj.keys():
        task, tests = _humaneval(obj)
    elif "test_list" in obj:
        task, tests = _mbpp(obj)
    else:
        task, tests = _apps(obj)
    messages = [{"role": "user", "content": task}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"task": "code", **obj, "messages": messages, "ground_truth": tests}


def _mbpp(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    asserts = [t for t in obj["test_list"] if isinstance(t, str) and t.strip()]
    if not asserts:
        raise ValueError("MBPP row: 'test_list' holds no test")
    setup = obj.get("test_setup_code") or "\n".join(obj.get("test_imports") or [])
    text = str(obj.get("text", obj.get("prompt"))).strip()
    return f"{text}\nYour code should pass this test:\n\n{asserts[0]}", {"asserts": asserts, "setup": setup}


def _humaneval(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    prompt = obj["prompt"]
    task = (
        f"Complete this Python function; give the whole function, imports included.\n\n```python\n{prompt}```"
    )
    # the prompt's imports and helpers stay available to a reply that rewrites only the function
    head = prompt.split(f"def {obj['entry_point']}", 1)[0]
    return task, {"check": obj["test"], "entry_point": obj["entry_point"], "setup": head, "prompt": prompt}


def _apps(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    raw = obj["input_output"]
    try:
        spec = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise ValueError("APPS row: 'input_output' is not valid JSON") from None
    if (
        not isinstance(spec, dict)
        or not spec.get("inputs")
        or len(spec["inputs"]) != len(spec.get("outputs") or [])
    ):
        raise ValueError("APPS row: 'input_output' needs as many 'inputs' as 'outputs' (and at least one)")
    question, starter = obj["question"].strip(), (obj.get("starter_code") or "").strip()
    if spec.get("fn_name"):
        task = f"{question}\n\nWrite the function `{spec['fn_name']}`" + (
            f", starting from:\n\n```python\n{starter}\n```" if starter else "."
        )
    else:
        task = f"{question}\n\nRead the input from standard input and print the answer to standard output."
    tests = {"inputs": spec["inputs"], "outputs": spec["outputs"]}
    return task, tests | ({"fn_name": spec["fn_name"]} if spec.get("fn_name") else {})


def read_tests(ground_truth: Any) -> dict[str, Any]:
    """A row's tests in :func:`openrft.data.tasks.code_run.run_tests`'s forms, from an object, JSON text
    or a list of asserts (raises ValueError naming what is accepted)."""
    tests = ground_truth
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError:
            tests = [line for line in tests.splitlines() if line.strip()]  # assert statements, one a line
    if isinstance(tests, list) and all(isinstance(t, dict) for t in tests) and tests:
        tests = {"inputs": [t.get("input") for t in tests], "outputs": [t.get("output") for t in tests]}
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests) and tests:
        return {"asserts": tests, "setup": ""}
    if isinstance(tests, dict):
        if isinstance(tests.get("asserts"), list) and tests["asserts"]:
            return tests
        if isinstance(tests.get("check"), str) and isinstance(tests.get("entry_point"), str):
            return tests
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if isinstance(inputs, list) and isinstance(outputs, list) and inputs and len(inputs) == len(outputs):
            return tests
    raise ValueError(
        "the code evaluator's reference must be tests: a list of assert statements, {'inputs': [...], "
        "'outputs': [...]} (optionally with 'fn_name'), or HumanEval's {'check', 'entry_point'}"
    )


def extract_code(text: str) -> str | None:
    """The program in a reply: its last ```python block (or last unlabelled one; a block cut off by the
    token limit runs to the end), else the whole reply when it has no fence at all."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    blocks = FENCE_RE.findall(text)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    plain = [code for lang, code in blocks if not lang]
    chosen = (python or plain or [None])[-1]
    if chosen is None and "```" not in text:
        chosen = text
    return chosen if chosen and chosen.strip() else None


def program_for(code: str, tests: dict[str, Any]) -> str:
    """What runs: HumanEval replies that give only the body are joined to the prompt, as its harness does."""
    if "check" in tests and not re.search(rf"def\s+{re.escape(tests['entry_point'])}\s*\(", code):
        return tests.get("prompt", "") + code
    return code


__all__ = ["adapt_row", "extract_code", "is_code_row", "program_for", "read_tests"]
