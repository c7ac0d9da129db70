"""OpenAI's grader test calls, so that a grader can be tried on this server before a job uses it.

::

    POST /v1/fine_tuning/alpha/graders/validate   {"grader": {...}}                       -> {"grader": {...}}
    POST /v1/fine_tuning/alpha/graders/run        {"grader", "model_sample", "item"?}     -> the grade

These are the paths and bodies of OpenAI's graders API (``client.fine_tuning.alpha.graders`` in the
``openai`` SDK), so code written for it runs against ``openrft server`` by changing ``base_url``. A
grader is checked as ``--evaluator`` checks it (docs/openai-graders.md): a problem is a 400 naming
the grader and the field. ``run`` scores ``model_sample`` as the response (``sample.output_text``,
``sample.output_json`` when it is a JSON object) against ``item`` (the dataset row), with the same
containment as a job: python graders, model graders and cosine similarity in a worker process, at
most the job default's evaluator timeout, a few requests at a time. Model graders call the endpoint
of the server's ``OPENRFT_GRADER_ENDPOINT`` (and ``OPENRFT_GRADER_MODEL``), as its jobs' graders do.
A score the grader could not give is ``reward`` 0 with the matching ``metadata.errors`` flag set, as
OpenAI reports it, not an HTTP error; ``metadata.scores.reason`` says why (or how the score came about),
and a multi grader's ``sub_rewards`` hold each sub-grader's score.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from openrft.config.models import RolloutConfig
from openrft.errors import OpenRFTError
from openrft.evaluators.graders import ENDPOINT_ENV, MODEL_ENV
from openrft.evaluators.isolation import score_contained
from openrft.evaluators.loader import load_evaluator
from openrft.records import Completion, Prompt, Score
from openrft.server.errors import ApiError, OpenAIError
from openrft.server.resources_api import json_body

router = APIRouter()
BASE = "/v1/fine_tuning/alpha/graders"
TIMEOUT_S = float(RolloutConfig.model_fields["evaluator_timeout"].default)
RUNS_AT_ONCE = threading.BoundedSemaphore(4)  # each may start a worker process; the others wait
ERROR_FLAGS = (
    "formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
    "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
    "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
)  # fmt: skip
MODEL_TYPES = ("score_model", "label_model")
NO_ENDPOINT = "http://no-grader-endpoint.invalid/v1"  # validate checks a model grader's spec, calls nothing


@router.post(f"{BASE}/validate")
async def validate(request: Request) -> dict[str, Any]:
    grader = _grader(await _body(request, {"grader"}))
    await run_in_threadpool(_loaded, grader, spec_only=True)
    return {"grader": grader}


@router.post(f"{BASE}/run")
async def run(request: Request) -> dict[str, Any]:
    body = await _body(request, {"grader", "model_sample", "item"})
    grader = _grader(body)
    sample = body.get("model_sample")
    if not isinstance(sample, str):
        problem = "is required" if sample is None else f"must be a string, not {type(sample).__name__}"
        raise OpenAIError(f"model_sample {problem} (the response to grade, as text)", "model_sample")
    item = body.get("item")
    item = {} if item is None else item
    if not isinstance(item, dict):
        raise OpenAIError(f"item must be a JSON object (the dataset row), not {type(item).__name__}", "item")
    return await run_in_threadpool(_run, grader, sample, item)


async def _body(request: Request, fields: set[str]) -> dict[str, Any]:
    try:
        body = await json_body(request)
    except ApiError as exc:
        raise OpenAIError(exc.message) from None
    unknown = sorted(set(body) - fields)
    if unknown:
        raise OpenAIError(
            f"unknown field {unknown[0]!r} (this call takes {', '.join(sorted(fields))})", unknown[0]
        )
    return body


def _grader(body: dict[str, Any]) -> dict[str, Any]:
    grader = body.get("grader")
    if not isinstance(grader, dict):
        problem = "is required" if grader is None else f"must be a JSON object, not {type(grader).__name__}"
        raise OpenAIError(f"grader {problem}", "grader")
    return grader


def _loaded(grader: dict[str, Any], *, spec_only: bool = False) -> Any:
    """The evaluator for ``grader``, or a 400 with the loader's one line (and its hint). With
    ``spec_only`` (validate), a model grader is checked without needing the server's endpoint."""
    endpoint = os.environ.get(ENDPOINT_ENV) or (NO_ENDPOINT if spec_only else None)
    try:  # through the loader, so that the evaluator knows how to load itself again in a worker process
        return load_evaluator(json.dumps(grader), grader_endpoint=endpoint)
    except OpenRFTError as exc:
        raise OpenAIError(exc.message + (f" ({exc.hint})" if exc.hint else ""), "grader") from None


def _run(grader: dict[str, Any], model_sample: str, item: dict[str, Any]) -> dict[str, Any]:
    evaluator = _loaded(grader)
    try:
        evaluator.check_row(item, "the item")
    except OpenRFTError as exc:
        return _answer(grader, Score(0.0, False, exc.message), 0.0, "invalid_variable_error")
    prompt = Prompt("item", (), row=item)
    completion = Completion("item", 0, (), (), model_sample, (), "stop")
    start = time.monotonic()
    with RUNS_AT_ONCE:
        [[score]] = score_contained(evaluator, [(prompt, [completion])], max_concurrency=1, timeout=TIMEOUT_S)
    return _answer(grader, score, time.monotonic() - start, None if score.is_valid else _flag(grader, score))


def _flag(grader: dict[str, Any], score: Score) -> str:
    """Which of OpenAI's error flags an invalid score raises."""
    reason, kind = score.reason, grader.get("type")
    if kind == "multi":  # the first failing sub-grader's kind ("NAME: why; ...")
        subs = grader.get("graders") if isinstance(grader.get("graders"), dict) else {}
        kind = next((s.get("type") for n, s in subs.items() if reason.startswith(f"{n}: ")), None)
    if reason.startswith("timeout after"):
        return "unresponsive_reward_error"
    if "grader endpoint" in reason:
        return "model_grader_server_error"
    if "refers to" in reason:  # a template field the item lacks
        return "invalid_variable_error"
    if kind == "python":
        return "python_grader_runtime_error"
    if kind in MODEL_TYPES:
        return "model_grader_parse_error"
    return "other_error"


def _answer(grader: dict[str, Any], score: Score, seconds: float, flag: str | None) -> dict[str, Any]:
    errors: dict[str, Any] = dict.fromkeys(ERROR_FLAGS, False)
    errors |= {"model_grader_server_error_details": None, "python_grader_runtime_error_details": None,
               "python_grader_server_error_type": None}  # fmt: skip
    if flag:
        errors[flag] = True
        if flag in ("model_grader_server_error", "python_grader_runtime_error"):
            errors[f"{flag}_details"] = score.reason
    kind = str(grader.get("type"))
    subs = {k: v for k, v in score.metrics.items() if k != "passed"} if kind == "multi" else {}
    asked = os.environ.get(MODEL_ENV) or grader.get("model")  # the model that answered
    model = asked if kind in MODEL_TYPES else None
    return {
        "reward": score.score if score.is_valid else 0.0,
        "metadata": {
            "name": str(grader.get("name") or kind),
            "type": kind,
            "errors": errors,
            "execution_time": round(seconds, 3),
            "scores": {"reason": score.reason} if score.reason else {},
            "token_usage": None,
            "sampled_model_name": model,
        },
        "sub_rewards": subs,
        "model_grader_token_usage_per_model": {},
    }
