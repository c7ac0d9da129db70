"""OpenAI grader specs as openrft evaluators: ``--evaluator grader.json`` (or ``.yaml``, or inline JSON).

::

    from openrft.evaluators.graders import load_grader

    evaluator = load_grader('{"type": "string_check", "name": "exact", "operation": "eq",'
                            ' "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}')

Every grader type of OpenAI's graders guide is supported: ``string_check``, ``text_similarity``,
``score_model``, ``label_model``, ``python`` and ``multi`` (docs/openai-graders.md). The evaluator
scores one response at a time; a multi grader reports each sub-grader's score as a metric, so a
job logs ``reward/<name>`` for each. Graders that run user code or call a model (``python``,
``score_model``, ``label_model``, cosine similarity) run in the evaluator worker processes; the
others in the job's own process. The model endpoint (``--grader-endpoint``) reaches the workers
through ``OPENRFT_GRADER_ENDPOINT`` / ``OPENRFT_GRADER_MODEL``.
"""

from __future__ import annotations

import os
from typing import Any

from openrft.evaluators.base import Evaluator
from openrft.evaluators.graders.grader import Grader, build, graded
from openrft.evaluators.graders.model import Endpoint
from openrft.evaluators.graders.spec import GRADER_TYPES, looks_like_grader, parse_grader, read_spec
from openrft.evaluators.graders.templates import sample_of

ENDPOINT_ENV, MODEL_ENV = "OPENRFT_GRADER_ENDPOINT", "OPENRFT_GRADER_MODEL"


def load_grader(spec: str, *, endpoint: str | None = None, model: str | None = None) -> Evaluator:
    """The evaluator for a grader spec (inline JSON or a JSON/YAML file).

    ``endpoint`` and ``model`` default to ``$OPENRFT_GRADER_ENDPOINT`` and ``$OPENRFT_GRADER_MODEL``.
    """
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    model = model or os.environ.get(MODEL_ENV) or None
    obj = read_spec(spec)
    parsed = parse_grader(obj)
    label = f"{parsed.type} grader {parsed.name!r}" if parsed.name else f"{parsed.type} grader"
    grader = build(parsed, label, Endpoint(url=endpoint, model=model))
    env = {k: v for k, v in ((ENDPOINT_ENV, endpoint), (MODEL_ENV, model)) if v}
    return Evaluator(
        name=parsed.name or parsed.type,
        fn=_scorer(grader),
        kind="item",
        run_inline=not grader.contained,
        source=spec.strip() if not spec.strip().startswith("{") else "inline grader",
        env=env,
        check_row=_row_check(grader),
    )


def _scorer(grader: Grader) -> Any:
    threshold = getattr(grader.spec, "pass_threshold", None)

    def grade(completion: str, item: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
        result = graded(grader, item, sample_of(completion, finish_reason=finish_reason))
        metrics = dict(result.metrics)
        if (
            threshold is not None and result.valid
        ):  # OpenAI's evals' pass/fail: reward/passed is the pass rate
            metrics["passed"] = float(result.score >= threshold)
        return {"score": result.score, "reason": result.reason, "is_score_valid": result.valid,
                "metrics": metrics}  # fmt: skip

    grade.__name__ = "grade"
    return grade


def _row_check(grader: Grader) -> Any:
    def check(row: dict[str, Any], where: str) -> None:
        grader.check_item(row, where)

    return check


__all__ = ["GRADER_TYPES", "load_grader", "looks_like_grader"]
