"""The model graders, ``score_model`` and ``label_model``: a prompt sent to an OpenAI-compatible endpoint.

The grader's ``input`` messages are rendered (``{{ item.* }}``, ``{{ sample.* }}``) and sent to
``--grader-endpoint`` with the ``openai`` client: the API key comes from ``OPENRFT_GRADER_API_KEY``,
else ``OPENAI_API_KEY`` (a local server needs none), each request is limited to
``OPENRFT_GRADER_TIMEOUT`` seconds (default 30) and retried up to ``OPENRFT_GRADER_RETRIES``
times (default 3) on connection errors, timeouts, 429 and 5xx answers. ``--grader-model`` (if set)
replaces the model the spec names, e.g. to grade with a local model instead of an OpenAI one.

The request carries the spec's ``sampling_params`` under the chat API's names (``temperature``,
``top_p``, ``seed``, ``max_completions_tokens`` as ``max_completion_tokens``, which OpenAI's
reasoning models require; ``reasoning_effort`` too, unless ``--grader-model`` sends the prompt to
another model, which may not know it). A message of several text parts is sent as those parts.
A closing system message tells the model the answer format: ``{"result": <number>}`` for
``score_model``, ``{"result": "<label>"}`` for ``label_model``.

A score is read from that JSON object, else from an answer that is just a number. As OpenAI
documents for ``score_model``, a score outside ``range`` is clipped to it and an answer with no
number scores the range's low end (the reason says so), unless the answer was cut off at its token
limit: that is no grade, so the score is invalid and says why. A ``max_completions_tokens`` past what
the served context has room for (OpenAI's examples ask 32768) is lowered to the room the server says
is left (or dropped, when it does not say) and the request sent again. A label must be one of ``labels``; any other answer makes
the score invalid, as any unusable evaluator result does.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from openrft.errors import EvaluatorError
from openrft.evaluators.graders.spec import LabelModel, ScoreModel
from openrft.evaluators.graders.templates import render


class UnparseableAnswer(EvaluatorError):
    """The grader model's answer holds no usable score or label."""


class Answer(str):
    """A grader model's answer; ``cut`` when it stopped at its token limit (``finish_reason`` length)."""

    cut: bool

    def __new__(cls, text: str, cut: bool = False) -> Answer:
        answer = super().__new__(cls, text)
        answer.cut = cut
        return answer


def _cut_off(answer: str) -> UnparseableAnswer:
    return UnparseableAnswer(
        "the grader model's answer was cut off at its token limit before it gave a result (raise "
        f"sampling_params.max_completions_tokens, or ask for the answer first): {_short(answer)}"
    )


def _env_number(name: str, default: str, kind: type, low: float) -> Any:
    """``$name`` as a number >= ``low``, naming the variable when it is not (a model grader reads it when
    it is built, so a bad value fails at job creation)."""
    text = os.environ.get(name, "").strip() or default  # empty: the default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value < math.inf:
        what = "a whole number" if kind is int else "a number of seconds"
        raise EvaluatorError(f"{name}: {text!r} is not valid; expected {what} >= {low:g}")
    return value


@dataclass(frozen=True)
class Endpoint:
    """Where model graders send their prompts (``--grader-endpoint``, ``--grader-model``)."""

    url: str | None = None
    model: str | None = None
    embedding_model: str = "text-embedding-3-large"

    @property
    def timeout(self) -> float:
        return _env_number("OPENRFT_GRADER_TIMEOUT", "30", float, 0.001)

    @property
    def retries(self) -> int:
        return _env_number("OPENRFT_GRADER_RETRIES", "3", int, 0)

    def check(self) -> None:
        """Refuse a bad ``OPENRFT_GRADER_TIMEOUT``/``RETRIES`` now (a model grader calls it when built)."""
        _ = self.timeout, self.retries

    @cached_property
    def client(self) -> Any:
        if not self.url:
            raise EvaluatorError("model graders need an endpoint: pass --grader-endpoint URL")
        from openai import OpenAI

        key = os.environ.get("OPENRFT_GRADER_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        return OpenAI(
            base_url=self.url,
            api_key=key,
            timeout=self.timeout,
            max_retries=self.retries,
        )

    def chat(self, spec: ScoreModel | LabelModel, messages: list[dict[str, Any]]) -> str:
        params = spec.sampling_params
        extra: dict[str, Any] = {}
        if params is not None:
            for key in ("temperature", "top_p", "seed"):
                if getattr(params, key) is not None:
                    extra[key] = getattr(params, key)
            if params.token_limit is not None:
                extra["max_completion_tokens"] = params.token_limit
            if params.reasoning_effort is not None and not self.model:
                extra["reasoning_effort"] = params.reasoning_effort
        try:
            try:
                reply = self.client.chat.completions.create(
                    model=self.model or spec.model, messages=messages, **extra
                )
            except Exception as exc:
                # a limit written for OpenAI's models (32768) past a smaller served context: the
                # server's own limit, the rest of its context, instead (vLLM and openrft serve refuse it)
                if "max_completion_tokens" not in extra or "context length" not in str(exc):
                    raise
                room = _room_left(str(exc))  # vLLM and openrft serve say how much there is
                if room is not None and room > 0:
                    extra["max_completion_tokens"] = min(extra["max_completion_tokens"], room)
                else:
                    extra.pop("max_completion_tokens")
                reply = self.client.chat.completions.create(
                    model=self.model or spec.model, messages=messages, **extra
                )
        except Exception as exc:  # openai.APIError and its kinds, after the client's own retries
            raise EvaluatorError(f"grader endpoint {self.url}: {type(exc).__name__}: {exc}") from None
        if not reply.choices:
            return Answer("")
        choice = reply.choices[0]
        return Answer(choice.message.content or "", cut=choice.finish_reason == "length")

    def embed(self, texts: list[str]) -> list[list[float]]:
        try:
            reply = self.client.embeddings.create(model=self.model or self.embedding_model, input=texts)
        except Exception as exc:
            raise EvaluatorError(
                f"grader endpoint {self.url} (embeddings): {type(exc).__name__}: {exc}"
            ) from None
        return [d.embedding for d in reply.data]


def _room_left(message: str) -> int | None:
    """The tokens a refused request's context had left for the answer, from the server's message
    ("maximum context length is 8192 tokens ... (101 in the messages, ...)"), if it says."""
    found = re.search(r"maximum context length is (\d+) tokens.*?\((\d+) in the messages", message, re.DOTALL)
    return int(found.group(1)) - int(found.group(2)) if found else None


def prompt(spec: ScoreModel | LabelModel, item: dict[str, Any], sample: Any) -> list[dict[str, Any]]:
    """The grader's messages, rendered, followed by the answer-format instruction."""
    messages = []
    for message in spec.input:
        role = "system" if message.role == "developer" else message.role
        texts = [render(t, item, sample) for t in message.texts()]
        content: Any = texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts]
        messages.append({"role": role, "content": content})
    if isinstance(spec, ScoreModel):
        low, high = spec.range
        note = f'Answer with only a JSON object {{"result": <number from {low:g} to {high:g}>}}.'
    else:
        note = 'Answer with only a JSON object {"result": "<label>"}, the label one of: ' + ", ".join(
            spec.labels
        )
    messages.append({"role": "system", "content": note})
    return messages


def parse_score(answer: str, spec: ScoreModel) -> tuple[float, str]:
    """The score in a grader model's answer and how it was read (see the module docstring)."""
    value = _result(answer)
    if value is None:
        value = _strip_thinking(answer).strip().rstrip(".").strip("\"'` ")
    try:
        score = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        score = math.nan
    low, high = spec.range
    if math.isnan(score) and getattr(answer, "cut", False):  # not the judge's grade: invalid
        raise _cut_off(answer)
    if math.isnan(score):  # the lowest grade the range allows (0 for the default [0, 1])
        return (
            low,
            f"no number in the grader model's answer, so the range's lowest, {low:g}: {_short(answer)}",
        )
    if not low <= score <= high:
        clipped = min(max(score, low), high)
        return clipped, f"the grader model's score {score:g} clipped to the range [{low:g}, {high:g}]"
    return score, f"grader model's score {score:g}"


def parse_label(answer: str, spec: LabelModel) -> str:
    """The label in a grader model's answer, one of ``spec.labels``."""
    value = _result(answer)
    text = str(value) if value is not None else _strip_thinking(answer)
    wanted = text.strip().strip("\"'`.").strip()
    for label in spec.labels:
        if wanted.lower() == label.lower():
            return label
    if getattr(answer, "cut", False):
        raise _cut_off(answer)
    raise UnparseableAnswer(
        f"the grader model's answer is not one of the labels {spec.labels}: {_short(answer)}"
    )


def _strip_thinking(answer: str) -> str:
    return re.sub(r"<think>.*?</think>", "", answer, flags=re.DOTALL)


def _result(answer: str) -> Any:
    """The ``result`` (or ``score``/``label``) of the last JSON object in the answer that has one:
    prose around it may hold braces of its own (``\\boxed{12}``, a set ``{a, b}``, an earlier draft)."""
    text, decoder, found = _strip_thinking(answer), json.JSONDecoder(), None
    start = text.find("{")
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        key = next((k for k in ("result", "score", "label") if k in obj), None)  # a "{" starts an object
        found = obj[key] if key is not None else found
        start = text.find("{", end)  # not inside it: its own "steps" may hold other keys
    return found


def _short(answer: str) -> str:
    text = " ".join(answer.split())
    return repr(text[:120] + ("..." if len(text) > 120 else ""))


__all__ = ["Answer", "Endpoint", "UnparseableAnswer", "parse_label", "parse_score", "prompt"]
