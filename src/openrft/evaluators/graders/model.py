"""The model graders, ``score_model`` and ``label_model``: a prompt sent to an OpenAI-compatible endpoint.

The grader's ``input`` messages are rendered (``{{ item.* }}``, ``{{ sample.* }}``) and sent to
``--grader-endpoint`` with the ``openai`` client: the API key comes from ``OPENRFT_GRADER_API_KEY``,
else ``OPENAI_API_KEY`` (a local server needs none), each request is limited to
``OPENRFT_GRADER_TIMEOUT`` seconds (default 30) and retried up to ``OPENRFT_GRADER_RETRIES``
times (default 3) on connection errors, timeouts, 429 and 5xx answers. ``--grader-model`` (if set)
replaces the model the spec names, e.g. to grade with a local model instead of an OpenAI one.

A closing system message tells the model the answer format: ``{"result": <number>}`` for
``score_model`` (within ``range``), ``{"result": "<label>"}`` for ``label_model``. The answer is
read as that JSON object, else as a bare number (score) or label; an answer that cannot be read,
a score outside ``range`` or a label not among ``labels`` makes the score invalid, as any
unusable evaluator result does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from openrft.errors import EvaluatorError
from openrft.evaluators.graders.spec import LabelModel, ScoreModel
from openrft.evaluators.graders.templates import render

NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
JSON_RE = re.compile(r"\{.*\}", re.DOTALL)


class UnparseableAnswer(EvaluatorError):
    """The grader model's answer holds no usable score or label."""


@dataclass(frozen=True)
class Endpoint:
    """Where model graders send their prompts (``--grader-endpoint``, ``--grader-model``)."""

    url: str | None = None
    model: str | None = None
    embedding_model: str = "text-embedding-3-large"

    @cached_property
    def client(self) -> Any:
        if not self.url:
            raise EvaluatorError("model graders need an endpoint: pass --grader-endpoint URL")
        from openai import OpenAI

        key = os.environ.get("OPENRFT_GRADER_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        return OpenAI(
            base_url=self.url,
            api_key=key,
            timeout=float(os.environ.get("OPENRFT_GRADER_TIMEOUT", "30")),
            max_retries=int(os.environ.get("OPENRFT_GRADER_RETRIES", "3")),
        )

    def chat(self, spec: ScoreModel | LabelModel, messages: list[dict[str, str]]) -> str:
        params = spec.sampling_params
        extra: dict[str, Any] = {}
        if params is not None:
            for key in ("temperature", "top_p", "seed"):
                if getattr(params, key) is not None:
                    extra[key] = getattr(params, key)
            if params.max_completions_tokens is not None:
                extra["max_tokens"] = params.max_completions_tokens
        try:
            reply = self.client.chat.completions.create(
                model=self.model or spec.model, messages=messages, **extra
            )
        except Exception as exc:  # openai.APIError and its kinds, after the client's own retries
            raise EvaluatorError(f"grader endpoint {self.url}: {type(exc).__name__}: {exc}") from None
        return (reply.choices[0].message.content or "") if reply.choices else ""

    def embed(self, texts: list[str]) -> list[list[float]]:
        try:
            reply = self.client.embeddings.create(model=self.embedding_model, input=texts)
        except Exception as exc:
            raise EvaluatorError(
                f"grader endpoint {self.url} (embeddings): {type(exc).__name__}: {exc}"
            ) from None
        return [d.embedding for d in reply.data]


def prompt(spec: ScoreModel | LabelModel, item: dict[str, Any], sample: Any) -> list[dict[str, str]]:
    """The grader's messages, rendered, followed by the answer-format instruction."""
    messages = []
    for message in spec.input:
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": "".join(render(t, item, sample) for t in message.texts())})
    if isinstance(spec, ScoreModel):
        low, high = spec.range
        note = f'Answer with only a JSON object {{"result": <number from {low:g} to {high:g}>}}.'
    else:
        note = 'Answer with only a JSON object {"result": "<label>"}, the label one of: ' + ", ".join(
            spec.labels
        )
    messages.append({"role": "system", "content": note})
    return messages


def parse_score(answer: str, spec: ScoreModel) -> float:
    """The score in a grader model's answer (see the module docstring)."""
    value = _result(answer)
    if value is None:
        numbers = NUMBER_RE.findall(_strip_thinking(answer))
        value = numbers[-1] if len(numbers) >= 1 else None
    try:
        score = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        score = None
    if score is None:
        raise UnparseableAnswer(f"the grader model's answer has no score: {_short(answer)}")
    low, high = spec.range
    if not low <= score <= high:
        raise UnparseableAnswer(
            f"the grader model's score {score:g} is outside the range [{low:g}, {high:g}]"
        )
    return score


def parse_label(answer: str, spec: LabelModel) -> str:
    """The label in a grader model's answer, one of ``spec.labels``."""
    value = _result(answer)
    text = str(value) if value is not None else _strip_thinking(answer)
    wanted = text.strip().strip("\"'`.").strip()
    for label in spec.labels:
        if wanted.lower() == label.lower():
            return label
    raise UnparseableAnswer(
        f"the grader model's answer is not one of the labels {spec.labels}: {_short(answer)}"
    )


def _strip_thinking(answer: str) -> str:
    return re.sub(r"<think>.*?</think>", "", answer, flags=re.DOTALL)


def _result(answer: str) -> Any:
    match = JSON_RE.search(_strip_thinking(answer))
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except ValueError:
        return None
    if isinstance(obj, dict):
        for key in ("result", "score", "label"):
            if key in obj:
                return obj[key]
    return None


def _short(answer: str) -> str:
    text = " ".join(answer.split())
    return repr(text[:120] + ("..." if len(text) > 120 else ""))


__all__ = ["Endpoint", "UnparseableAnswer", "parse_label", "parse_score", "prompt"]
