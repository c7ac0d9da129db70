"""Evaluators: load one from a spec, score completions with it, contain its failures.

::

    from openrft.evaluators import load_evaluator, score_groups, check_invalid_rate

    evaluator = load_evaluator("my_eval.py::reward")      # or "pkg.mod:fn", "arithmetic", "gsm8k"
    scores = score_groups(evaluator, [(prompt, completions), ...], max_concurrency=8, timeout=60)
    check_invalid_rate(scores)                           # EvaluatorError if over half are invalid

The names are imported lazily so that ``openrft --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Evaluator": "openrft.evaluators.base",
    "load_evaluator": "openrft.evaluators.loader",
    "default_evaluator_name": "openrft.evaluators.loader",
    "score_groups": "openrft.evaluators.runner",
    "ascore_groups": "openrft.evaluators.runner",
    "check_invalid_rate": "openrft.evaluators.runner",
    "summarize": "openrft.evaluators.runner",
    "to_score": "openrft.evaluators.runner",
    "BUILTINS": "openrft.evaluators.builtin",
    "arithmetic_evaluator": "openrft.evaluators.builtin",
    "gsm8k_evaluator": "openrft.evaluators.builtin",
    "score_arithmetic": "openrft.evaluators.builtin",
    "score_gsm8k": "openrft.evaluators.builtin",
    "evaluation_test": "openrft.evaluators.protocol",
    "EvaluationRow": "openrft.evaluators.protocol",
    "EvaluateResult": "openrft.evaluators.protocol",
    "Message": "openrft.evaluators.protocol",
    "MetricResult": "openrft.evaluators.protocol",
    "InputMetadata": "openrft.evaluators.protocol",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openrft.evaluators' has no attribute {name!r}")
