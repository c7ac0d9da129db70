"""openrft: self-hosted reinforcement fine-tuning of language models.

The evaluator API (``evaluation_test``, ``EvaluationRow``, ``EvaluateResult``,
``Message``) is imported lazily so that ``import openrft`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "evaluation_test": "openrft.evaluators.protocol",
    "EvaluationRow": "openrft.evaluators.protocol",
    "EvaluateResult": "openrft.evaluators.protocol",
    "Message": "openrft.evaluators.protocol",
    "InputMetadata": "openrft.evaluators.protocol",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openrft' has no attribute {name!r}")
