"""GSM8K: grade-school maths word problems (the user supplies the JSONL file).

A GSM8K row is ``{"question": ..., "answer": "...worked solution...\\n#### 72"}``.
:func:`adapt_row` turns it into an evaluation row whose ``ground_truth`` is the
final number after ``####`` (commas removed, e.g. ``"1000"``); the question and
the worked answer stay in the row, and ``task`` is set to ``"gsm8k"`` (which makes
``gsm8k`` the default evaluator for such a file).

:func:`extract_answer` finds the final number in a model's response: the last
``<answer>...</answer>`` block, else the text after the last ``####``, else the
last number anywhere. Thousands separators, ``$`` and a trailing ``.`` are
tolerated; :func:`numbers_equal` compares numerically (``18.00 == 18``) and, when
the optional ``math-verify`` package is installed, falls back to it.
"""

from __future__ import annotations

import re
from typing import Any

SYSTEM_PROMPT = (
    "Solve the math problem step by step. Then give only the final number inside "
    "<answer></answer> tags, for example <answer>42</answer>."
)
# A number: optional sign and $, digits with optional thousands commas, optional decimals.
# A minus sign counts only where it cannot be a subtraction ("10-5" is 10 and 5).
NUMBER_RE = re.compile(r"(?:(?<![\w.])-)?\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def is_gsm8k_row(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("question"), str) and isinstance(obj.get("answer"), str)


def final_answer(solution: str) -> str:
    """The number after the last ``####`` of a GSM8K solution, normalised (raises ValueError)."""
    if "####" not in solution:
        raise ValueError("GSM8K row: 'answer' has no '####' line with the final number")
    number = normalize_number(solution.rsplit("####", 1)[1])
    if number is None:
        raise ValueError("GSM8K row: no number after '####' in 'answer'")
    return number


def adapt_row(obj: dict[str, Any], *, system_prompt: str = SYSTEM_PROMPT) -> dict[str, Any]:
    """``{"question", "answer"}`` -> ``{"messages", "ground_truth", "question", "answer", ...}``."""
    if not obj["question"].strip():
        raise ValueError("GSM8K row: empty 'question'")
    messages = [{"role": "user", "content": obj["question"].strip()}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    adapted = {"task": "gsm8k", **obj}
    return {**adapted, "messages": messages, "ground_truth": final_answer(obj["answer"])}


def normalize_number(text: str) -> str | None:
    """The first number in ``text`` as a plain string ("1,234.50" -> "1234.5"), or None."""
    match = NUMBER_RE.search(text)
    return _clean(match.group(0)) if match else None


def _clean(token: str) -> str:
    token = token.replace("$", "").replace(",", "").replace(" ", "")
    if "." in token:
        token = token.rstrip("0").rstrip(".")
    if token in ("-0", "", "-"):
        token = "0"
    return token


def last_number(text: str) -> str | None:
    """The last number in ``text``, normalised, or None."""
    found = NUMBER_RE.findall(text)
    return _clean(found[-1]) if found else None


def extract_answer(response: str) -> tuple[str | None, str]:
    """``(number, where)``: where is ``"tags"``, ``"hashes"``, ``"last_number"`` or ``"none"``."""
    tags = ANSWER_TAG_RE.findall(response)
    if tags:
        number = last_number(tags[-1])
        if number is not None:
            return number, "tags"
    if "####" in response:
        number = normalize_number(response.rsplit("####", 1)[1])
        if number is not None:
            return number, "hashes"
    number = last_number(response)
    return (number, "last_number") if number is not None else (None, "none")


def numbers_equal(predicted: str | None, expected: Any) -> bool:
    """Numeric equality of two number strings; math-verify is tried when installed and they differ."""
    if predicted is None or expected is None:
        return False
    if isinstance(expected, str) and "####" in expected:  # a whole GSM8K solution: its final answer
        expected = expected.rsplit("####", 1)[1]
    truth = normalize_number(str(expected))
    if truth is None:
        return False
    try:
        if abs(float(predicted) - float(truth)) <= 1e-6 * max(1.0, abs(float(truth))):
            return True
    except ValueError:
        pass
    return _math_verify(predicted, truth)


def _math_verify(predicted: str, truth: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return bool(verify(parse(truth), parse(predicted)))
    except Exception:
        return False
