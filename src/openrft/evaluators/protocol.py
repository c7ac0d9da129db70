"""openrft's evaluator API, field-compatible with the eval-protocol package.

An evaluator written against these models runs unchanged under eval-protocol
(swap the import), and the other way round::

    from openrft import EvaluateResult, EvaluationRow, evaluation_test

    @evaluation_test(mode="pointwise", max_concurrent_evaluations=16)
    def exact_match(row: EvaluationRow) -> EvaluationRow:
        answer = row.last_assistant_message().content.strip()
        ok = answer == str(row.ground_truth)
        row.evaluation_result = EvaluateResult(score=float(ok), reason="match" if ok else "no match")
        return row

The models keep eval-protocol's field names and meanings (``messages``,
``ground_truth``, ``evaluation_result``, ``input_metadata``, ``tools``,
``execution_metadata``), and, like it, allow extra fields: every other field of a
dataset row is available as an attribute (``row.my_field``). ``metrics`` values
may be :class:`MetricResult` objects or plain numbers.

The decorator does not change the function: it only records the header
(``mode``, concurrency limits, default dataset, dataset adapter) on it for
:func:`openrft.evaluators.load_evaluator`. Header parameters of eval-protocol that
concern its own test runner (``completion_params``, ``rollout_processor``,
``num_runs``, ``passed_threshold``, ...) are accepted and kept, but unused here; the rollout
processor of a file decorated with eval-protocol's own ``evaluation_test`` does run (each
candidate through it, against the policy: docs/agents.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openrft.errors import EvaluatorError

Mode = Literal["pointwise", "groupwise"]
MODES = ("pointwise", "groupwise")
HEADER_ATTR = "__openrft_evaluator__"


class Message(BaseModel):
    """One chat message (an OpenAI chat-completion message)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[Any] | None = ""
    reasoning_content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any | None = None

    def text(self) -> str:
        """The content as plain text (text parts of a multi-part content joined)."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        parts = [p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in self.content]
        return "".join(str(p) for p in parts)


class MetricResult(BaseModel):
    """One component of a score."""

    model_config = ConfigDict(extra="allow")

    score: float
    reason: str = ""
    is_score_valid: bool = True
    data: dict[str, Any] = Field(default_factory=dict)


class EvaluateResult(BaseModel):
    """An evaluator's verdict on one row.

    ``score`` (usually in [0, 1]) is the reward; ``is_score_valid=False`` marks a
    score that must not be trained on; ``metrics`` are named components that are
    logged (numbers or :class:`MetricResult`).
    """

    model_config = ConfigDict(extra="allow")

    score: float
    is_score_valid: bool = True
    reason: str | None = None
    metrics: dict[str, MetricResult] = Field(default_factory=dict)
    error: str | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _numbers_are_metrics(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for key, metric in value.items():
            if isinstance(metric, bool | int | float):
                out[key] = MetricResult(score=float(metric))
            else:
                out[key] = metric
        return out


class InputMetadata(BaseModel):
    """Where a row came from: ``row_id`` identifies the dataset row (the prompt)."""

    model_config = ConfigDict(extra="allow")

    row_id: str | None = None
    completion_params: dict[str, Any] = Field(default_factory=dict)
    dataset_info: dict[str, Any] | None = None
    session_data: dict[str, Any] | None = None


class ExecutionMetadata(BaseModel):
    """How the response was produced: ``rollout_id`` names the candidate, ``finish_reason`` why it ended."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str | None = None
    run_id: str | None = None
    finish_reason: str | None = None


class EvaluationRow(BaseModel):
    """A prompt, one sampled response (the last assistant message), the ground truth and the verdict."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    input_metadata: InputMetadata = Field(default_factory=InputMetadata)
    ground_truth: Any = None
    evaluation_result: EvaluateResult | None = None
    execution_metadata: ExecutionMetadata = Field(default_factory=ExecutionMetadata)

    def get_assistant_messages(self) -> list[Message]:
        return [m for m in self.messages if m.role == "assistant"]

    def get_user_messages(self) -> list[Message]:
        return [m for m in self.messages if m.role == "user"]

    def last_assistant_message(self) -> Message | None:
        found = self.get_assistant_messages()
        return found[-1] if found else None

    def get_first_user_message(self) -> Message | None:
        found = self.get_user_messages()
        return found[0] if found else None

    def get_system_message(self) -> Message:
        found = [m for m in self.messages if m.role == "system"]
        return found[0] if found else Message(role="system", content="")

    def get_conversation_length(self) -> int:
        return len(self.messages)


# ----------------------------------------------------------------------------- decorator


@dataclass(frozen=True)
class EvaluatorHeader:
    """What ``@evaluation_test(...)`` records on a function."""

    mode: Mode = "pointwise"
    max_concurrent_rollouts: int | None = None
    max_concurrent_evaluations: int | None = None
    input_dataset: str | None = None
    dataset_adapter: Callable[[list[dict[str, Any]]], Any] | None = None
    other: dict[str, Any] = field(default_factory=dict)


def evaluation_test(
    *,
    mode: Mode = "pointwise",
    max_concurrent_rollouts: int | None = None,
    max_concurrent_evaluations: int | None = None,
    input_dataset: str | Sequence[str] | None = None,
    dataset_adapter: Callable[[list[dict[str, Any]]], Any] | None = None,
    **other: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a function as an evaluator and record its header.

    ``mode="pointwise"``: ``f(row: EvaluationRow) -> EvaluationRow`` scores one
    response. ``mode="groupwise"``: ``f(rows: list[EvaluationRow]) -> list[EvaluationRow]``
    scores all candidates of one prompt together. Either may be ``async def``.
    Set ``row.evaluation_result`` and return the row(s).

    ``max_concurrent_rollouts`` / ``max_concurrent_evaluations`` become a job's
    defaults when the matching flags are unset; ``input_dataset`` (a JSONL path, or
    a list whose first entry is used) is the default ``--dataset``;
    ``dataset_adapter(list[dict]) -> list[EvaluationRow | dict]`` converts raw rows
    of a custom format into evaluation rows.
    """
    if mode not in MODES:
        raise EvaluatorError(f"@evaluation_test: mode must be 'pointwise' or 'groupwise', not {mode!r}")
    for name, value in (
        ("max_concurrent_rollouts", max_concurrent_rollouts),
        ("max_concurrent_evaluations", max_concurrent_evaluations),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise EvaluatorError(f"@evaluation_test: {name} must be a whole number >= 1, not {value!r}")
    if input_dataset is not None and not isinstance(input_dataset, str):
        input_dataset = next(iter(input_dataset), None)
    header = EvaluatorHeader(
        mode=mode,
        max_concurrent_rollouts=max_concurrent_rollouts,
        max_concurrent_evaluations=max_concurrent_evaluations,
        input_dataset=input_dataset,
        dataset_adapter=dataset_adapter,
        other=dict(other),
    )

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        check_row_signature(fn, mode, getattr(fn, "__name__", "evaluator"))
        setattr(fn, HEADER_ATTR, header)
        return fn

    return decorate


def check_row_signature(fn: Callable[..., Any], mode: str, name: str) -> None:
    """A row evaluator takes exactly one required argument: the row (pointwise) or the rows (groupwise)."""
    what = "row: EvaluationRow" if mode == "pointwise" else "rows: list[EvaluationRow]"
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise EvaluatorError(f"evaluator {name!r} is not a function: {exc}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not positional or len(required) > 1:
        raise EvaluatorError(
            f"{mode} evaluator {name!r} must take one argument ({what}); its signature is "
            f"{name}{inspect.signature(fn)}"
        )


__all__ = [
    "EvaluateResult",
    "EvaluationRow",
    "EvaluatorHeader",
    "ExecutionMetadata",
    "InputMetadata",
    "Message",
    "MetricResult",
    "evaluation_test",
]
