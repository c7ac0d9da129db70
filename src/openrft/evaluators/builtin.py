"""Built-in evaluators: ``arithmetic``, ``gsm8k``, ``math`` and ``calculator``.

Both give graded scores in [0, 1] rather than only 0/1, so that a group of
candidates usually differs and carries a learning signal even before the model
gets answers right.

``arithmetic`` (weights are keyword arguments of :func:`score_arithmetic`):

====================================================  =================
one ``<answer>N</answer>`` pair, with a number inside   + ``format_weight`` (0.2)
the last number inside the (last) tags is correct        + ``correct_weight`` (0.8)
not correct in tags, but the last number in the text is  + ``partial_weight`` (0.1)
====================================================  =================

``gsm8k``: + ``format_weight`` (0.1) when the answer is marked (``<answer>`` tags
or ``####``), + ``correct_weight`` (0.9) when the extracted final number is right.

``math``: + ``format_weight`` (0.1) for an answer in ``\\boxed{}`` (or ``<answer>`` tags),
+ ``correct_weight`` (0.9) when it is the reference's mathematics (math-verify).

Options after the name override the weights: ``--evaluator arithmetic:partial_weight=0``
(what the quickstart uses: with partial credit, answering with a bare number is a local
optimum that a small model can settle in before it finds the tags).

``calculator`` (the multi-turn task with a tool) scores the conversation: 0.5 for a successful
tool call, 0.5 for the right number in tags in the last reply.

Each score carries 0/1 metrics, among them ``correct_in_tags`` (arithmetic) and
``correct`` (gsm8k): the strict accuracy a report should quote.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from openrft.data.tasks.code import extract_code, program_for, read_tests
from openrft.data.tasks.code_run import Limits, run_tests
from openrft.data.tasks.gsm8k import ANSWER_TAG_RE, extract_answer, last_number, numbers_equal
from openrft.data.tasks.math import answers_equal, last_boxed
from openrft.errors import EvaluatorError
from openrft.evaluators.base import Evaluator
from openrft.evaluators.protocol import EvaluateResult, EvaluationRow


def score_arithmetic(
    completion: str,
    ground_truth: Any = None,
    *,
    format_weight: float = 0.2,
    correct_weight: float = 0.8,
    partial_weight: float = 0.1,
) -> EvaluateResult:
    """Graded score of an arithmetic answer (see the module docstring)."""
    lowered = completion.lower()
    tags = ANSWER_TAG_RE.findall(completion)
    # exactly one pair of tags, and a number inside it: empty tags (an echoed instruction) do not count
    well_formed = (
        len(tags) == 1
        and lowered.count("<answer>") == 1
        and lowered.count("</answer>") == 1
        and last_number(tags[0]) is not None
    )
    correct_in_tags = bool(tags) and numbers_equal(last_number(tags[-1]), ground_truth)
    last_correct = numbers_equal(last_number(completion), ground_truth)
    score = format_weight * well_formed + correct_weight * correct_in_tags
    if not correct_in_tags and last_correct:
        score += partial_weight
    if correct_in_tags:
        reason = "correct answer in <answer> tags" + ("" if well_formed else " (tags used more than once)")
    elif tags:
        reason = "wrong number in <answer> tags" + (", but the last number is right" if last_correct else "")
    elif last_correct:
        reason = "right number, but not inside <answer></answer> tags"
    else:
        reason = "no correct answer"
    return EvaluateResult(
        score=score,
        reason=reason,
        metrics={
            "format": float(well_formed),
            "correct_in_tags": float(correct_in_tags),
            "last_number_correct": float(last_correct),
        },
    )


def score_gsm8k(
    completion: str,
    ground_truth: Any = None,
    *,
    format_weight: float = 0.1,
    correct_weight: float = 0.9,
) -> EvaluateResult:
    """Graded score of a GSM8K answer: the final number (tags, else ``####``, else the last number)."""
    number, where = extract_answer(completion)
    correct = numbers_equal(number, ground_truth)
    marked = where in ("tags", "hashes")
    score = format_weight * marked + correct_weight * correct
    verdict = "correct" if correct else "wrong"
    reason = f"{verdict}: found {number} ({where}), expected {ground_truth}" if number else "no number found"
    return EvaluateResult(
        score=score,
        reason=reason,
        metrics={
            "correct": float(correct),
            "format": float(marked),
            "correct_in_tags": float(correct and where == "tags"),
        },
    )


def score_math(
    completion: str,
    ground_truth: Any = None,
    *,
    format_weight: float = 0.1,
    correct_weight: float = 0.9,
) -> EvaluateResult:
    """Graded score of a MATH-style answer: the last ``\\boxed{}`` (else ``<answer>`` tags), compared as
    mathematics with the reference (math-verify: ``\\frac{1}{2}`` = ``0.5``, equal sets and intervals)."""
    answer, where = last_boxed(completion), "boxed"
    if answer is None:
        tags = ANSWER_TAG_RE.findall(completion)
        answer, where = (tags[-1].strip() or None, "tags") if tags else (None, "none")
    correct = answers_equal(answer, ground_truth)
    marked = answer is not None
    score = format_weight * marked + correct_weight * correct
    verdict = "correct" if correct else "wrong"
    reason = (
        f"{verdict}: found {answer} ({where}), expected {ground_truth}" if marked else "no \\boxed{} answer"
    )
    return EvaluateResult(
        score=score, reason=reason, metrics={"correct": float(correct), "format": float(marked)}
    )


def score_code(
    completion: str,
    ground_truth: Any = None,
    *,
    partial: float = 1.0,
    timeout: float = 5.0,
    time_limit: float = 40.0,
    memory_mb: float = 2048.0,
) -> EvaluateResult:
    """The share of a programming problem's tests that the reply's Python passes, each run in a child
    process (:mod:`openrft.data.tasks.code_run`: ``timeout`` seconds a test, ``time_limit`` the row,
    ``memory_mb``). ``partial`` 1 scores the share passed, 0 only all or nothing, between the two mixed."""
    tests = read_tests(ground_truth)
    code = extract_code(completion)
    if code is None:
        return EvaluateResult(score=0.0, reason="no Python code in the reply",
                              metrics={"passed": 0.0, "all_passed": 0.0, "has_code": 0.0})  # fmt: skip
    run = run_tests(program_for(code, tests), tests, Limits(timeout, time_limit, memory_mb))
    share, everything = run.passed / run.total, float(run.passed == run.total)
    reason = f"passed {run.passed} of {run.total} tests" + (f"; {run.reason}" if run.reason else "")
    return EvaluateResult(score=partial * share + (1 - partial) * everything, reason=reason,
                          metrics={"passed": share, "all_passed": everything, "has_code": 1.0})  # fmt: skip


SCORERS: dict[str, Callable[..., EvaluateResult]] = {
    "arithmetic": score_arithmetic,
    "code": score_code,
    "gsm8k": score_gsm8k,
    "math": score_math,
}


def score_calculator(row: EvaluationRow) -> EvaluationRow:
    """The ``calculator`` task's conversation: 0.5 when a tool call succeeded (a tool message that is
    not an error), + 0.5 when the last reply has the right number inside ``<answer>`` tags."""
    called = any(m.role == "tool" and not str(m.content or "").startswith("error") for m in row.messages)
    last = row.messages[-1] if row.messages else None
    text = str(last.content or "") if last is not None and last.role == "assistant" else ""
    tags = ANSWER_TAG_RE.findall(text)
    correct = bool(tags) and numbers_equal(last_number(tags[-1]), row.ground_truth)
    reason = ("called the calculator" if called else "no successful tool call") + (
        ", right answer in <answer> tags" if correct else ", no right answer in <answer> tags"
    )
    row.evaluation_result = EvaluateResult(
        score=0.5 * called + 0.5 * correct,
        reason=reason,
        metrics={"tool_called": float(called), "correct_in_tags": float(correct)},
    )
    return row


def calculator_evaluator() -> Evaluator:
    """The ``calculator`` evaluator: scores the whole conversation (:func:`score_calculator`)."""
    return Evaluator(name="calculator", fn=score_calculator, run_inline=True, source="built-in",
                     required_fields=("ground_truth",))  # fmt: skip


def _plain(
    name: str, scorer: Callable[..., EvaluateResult], weights: dict[str, float], inline: bool = True
) -> Evaluator:
    def evaluate(completion: str, ground_truth: Any = None) -> EvaluateResult:
        return scorer(completion, ground_truth, **weights)

    evaluate.__name__ = name
    return Evaluator(name=name, fn=evaluate, kind="plain", run_inline=inline, source="built-in",
                     required_fields=("ground_truth",), check_row=_check_answer_row)  # fmt: skip


def _check_answer_row(row: dict[str, Any], where: str) -> None:
    """A row's ``ground_truth`` must be an answer (a number or a text): an object, a list or a boolean
    would be compared by the first number of its Python text, and every response scored wrong."""
    value = row.get("ground_truth")
    if isinstance(value, dict | list | bool):
        kind = {dict: "an object", list: "a list", bool: "a boolean"}[type(value)]
        keys = [k for k in ("answer", "ground_truth", "solution") if isinstance(value, dict) and k in value]
        hint = f" (--reference-field ground_truth.{keys[0]} reads it)" if keys else ""
        raise EvaluatorError(f"{where}: ground_truth holds {kind}, not an answer{hint}")


def arithmetic_evaluator(**weights: float) -> Evaluator:
    """The ``arithmetic`` evaluator; ``weights`` override :func:`score_arithmetic`'s keyword arguments."""
    return _plain("arithmetic", SCORERS["arithmetic"], weights)


def gsm8k_evaluator(**weights: float) -> Evaluator:
    """The ``gsm8k`` evaluator; ``weights`` override :func:`score_gsm8k`'s keyword arguments."""
    return _plain("gsm8k", SCORERS["gsm8k"], weights)


def math_evaluator(**weights: float) -> Evaluator:
    """The ``math`` evaluator; ``weights`` override :func:`score_math`'s keyword arguments. It runs in
    worker threads, under the evaluator timeout: comparing expressions may take sympy a while."""
    return _plain("math", SCORERS["math"], weights, inline=False)


def code_evaluator(**options: float) -> Evaluator:
    """The ``code`` evaluator; ``options`` override :func:`score_code`'s keyword arguments. It runs in
    worker threads, each test in a child process; every row's tests are checked when a job is created."""
    return dataclasses.replace(
        _plain("code", SCORERS["code"], options, inline=False), check_row=_check_code_row
    )


def _check_code_row(row: dict[str, Any], where: str) -> None:
    try:
        read_tests(row.get("ground_truth"))
    except ValueError as exc:
        raise EvaluatorError(f"{where}: {exc}") from None


def parse_weights(name: str, options: str) -> dict[str, float]:
    """``"partial_weight=0,format_weight=0.3"`` -> keyword weights of the built-in ``name``'s scorer."""
    scorer = SCORERS[name]
    allowed = [p.name for p in inspect.signature(scorer).parameters.values() if p.kind is p.KEYWORD_ONLY]
    weights: dict[str, float] = {}
    for item in options.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in allowed:
            raise EvaluatorError(
                f"unknown option {key!r} for the built-in evaluator {name!r}",
                hint=f"options: {', '.join(allowed)} (e.g. {name}:{allowed[-1]}=0)",
            )
        try:
            weights[key] = float(value)
        except ValueError:
            raise EvaluatorError(
                f"option {key} of evaluator {name!r} must be a number, got {value!r}"
            ) from None
    return weights


BUILTINS: dict[str, Callable[..., Evaluator]] = {
    "arithmetic": arithmetic_evaluator,
    "calculator": calculator_evaluator,
    "code": code_evaluator,
    "gsm8k": gsm8k_evaluator,
    "math": math_evaluator,
}
