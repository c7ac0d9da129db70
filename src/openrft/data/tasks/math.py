"""MATH-style problems: answers in ``\\boxed{...}``, compared as mathematics (the user supplies the file).

A MATH row is ``{"problem": ..., "solution": "... so $x = \\boxed{7}$."}`` (Hendrycks et al.'s layout,
also that of MATH-500 and most competition sets on the Hugging Face Hub). :func:`adapt_row` turns it
into an evaluation row: the problem as the user message after a system prompt asking for a boxed
answer, ``ground_truth`` the content of the solution's last ``\\boxed{}``, and ``task`` ``"math"`` (which
makes ``math`` the file's default evaluator). Rows that already carry an ``answer`` field (MATH-500)
use it as the reference.

:func:`answers_equal` compares with Hugging Face's ``math-verify`` (what TRL's accuracy reward and
open-r1 use): ``\\frac{1}{2}``, ``0.5`` and ``1/2`` agree, as do equal sets, intervals and matrices.
"""

from __future__ import annotations

import logging
from typing import Any

SYSTEM_PROMPT = (
    "Solve the problem step by step. Then give the final answer in LaTeX inside \\boxed{}, for example "
    "\\boxed{\\frac{3}{4}}."
)
BOXES = ("\\boxed", "\\fbox")

# math-verify's own timeouts use SIGALRM, which works in the main thread only; evaluators run in worker
# threads under the runner's own timeout, so they are off, and so is its warning about it on every call.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def is_math_row(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("problem"), str) and isinstance(obj.get("solution"), str)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 7``) in ``text``, braces
    balanced; None when there is none or it was cut off."""
    start = max(text.rfind(box) for box in BOXES)
    if start < 0:
        return None
    box = next(b for b in BOXES if text.startswith(b, start))
    after = text[start + len(box) :]
    if after.startswith("{"):
        depth = 0
        for i, ch in enumerate(after):
            depth += (ch == "{") - (ch == "}")
            if depth == 0:
                return after[1:i].strip() or None
        return None
    if after[:1].isspace():  # "\\boxed 7": one token after a space
        token = after.split(None, 1)
        return token[0].rstrip(".$,") if token else None
    return None


def adapt_row(obj: dict[str, Any], *, system_prompt: str = SYSTEM_PROMPT) -> dict[str, Any]:
    """``{"problem", "solution"}`` -> ``{"messages", "ground_truth", "problem", "solution", ...}``."""
    if not obj["problem"].strip():
        raise ValueError("MATH row: empty 'problem'")
    answer = obj.get("answer")
    truth = answer.strip() if isinstance(answer, str) and answer.strip() else last_boxed(obj["solution"])
    if truth is None:
        raise ValueError("MATH row: 'solution' has no \\boxed{} answer (and the row no 'answer'); a row that "
                         "is not a MATH problem needs 'messages' or a 'prompt'")  # fmt: skip
    messages = [{"role": "user", "content": obj["problem"].strip()}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"task": "math", **obj, "messages": messages, "ground_truth": truth}


def answers_equal(predicted: str | None, expected: Any) -> bool:
    """Whether two answers are the same mathematics (math-verify), else the same text once spaces go."""
    if predicted is None or expected is None:
        return False
    truth = str(expected).strip()
    if predicted.replace(" ", "") == truth.replace(" ", ""):
        return True
    from math_verify import parse, verify

    try:
        gold = parse(f"\\boxed{{{truth}}}", parsing_timeout=None)
        guess = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
        return bool(gold and guess and verify(gold, guess, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - what math-verify cannot read is simply not equal
        return False
