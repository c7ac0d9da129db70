"""Grader specs: OpenAI's JSON grader objects, read and checked.

The field names follow the ``openai`` SDK's ``openai.types.graders`` models, so a grader written
for OpenAI's fine-tuning API is accepted as it is. Unknown ``type`` values, operations and metrics
are refused with one line naming the grader; fields OpenAI uses only on its own platform
(``image_tag``) are accepted and ignored where noted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from openrft.errors import EvaluatorError

GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
METRICS = (
    "fuzzy_match", "bleu", "gleu", "meteor", "cosine",
    "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
)  # fmt: skip


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""


class StringCheck(_Spec):
    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarity(_Spec):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: Literal[METRICS]  # type: ignore[valid-type]
    pass_threshold: float | None = None  # the score is the reward; reward/passed counts scores >= it


class ContentPart(BaseModel):
    """One part of a message's content; only text parts can be sent to a grader model here."""

    model_config = ConfigDict(extra="allow")

    type: Literal["input_text", "output_text", "text"] = "input_text"
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[str | ContentPart]
    type: Literal["message"] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else [content]:
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind not in ("input_text", "output_text", "text"):
                raise ValueError(
                    f"content parts of type {kind!r} cannot be sent: grader prompts are text only here "
                    "(input_text parts)"
                )
        return content

    def texts(self) -> list[str]:
        """The template strings of the content, in order."""
        parts = self.content if isinstance(self.content, list) else [self.content]
        return [p if isinstance(p, str) else p.text for p in parts]


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt limit would drop the limit without a word

    temperature: float | None = Field(None, ge=0, le=2)  # the ranges OpenAI's API accepts
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    max_completions_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the same limit as the chat API spells it
    max_tokens: int | None = Field(None, ge=1)  # as OpenAI's graders guide writes it in an example
    # sent only to the spec's own model (see graders.model); the values OpenAI's API takes
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None

    @property
    def token_limit(self) -> int | None:
        """The answer's token limit, however the spec spells it."""
        spellings = (self.max_completions_tokens, self.max_completion_tokens, self.max_tokens)
        return next((n for n in spellings if n is not None), None)


class ScoreModel(_Spec):
    type: Literal["score_model"]
    input: list[Message]
    model: str
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None

    @field_validator("range", mode="before")
    @classmethod
    def _default_range(cls, value: Any) -> Any:
        return (0.0, 1.0) if value is None else value  # the SDK's model_dump() writes "range": null

    @model_validator(mode="after")
    def _range_order(self) -> ScoreModel:
        if not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high] with low < high")
        low, high = self.range
        if self.pass_threshold is not None and not low <= self.pass_threshold <= high:
            raise ValueError(f"pass_threshold {self.pass_threshold:g} is outside the range [{low:g}, {high:g}]: "
                             "no score could pass it")  # fmt: skip
        return self


class LabelModel(_Spec):
    type: Literal["label_model"]
    input: list[Message]
    model: str
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)
    sampling_params: SamplingParams | None = None

    @model_validator(mode="after")
    def _passing_subset(self) -> LabelModel:
        extra = [label for label in self.passing_labels if label not in self.labels]
        if extra:
            raise ValueError(f"passing_labels {extra} are not among the labels {self.labels}")
        return self


class Python(_Spec):
    type: Literal["python"]
    source: str
    image_tag: str | None = None  # OpenAI's sandbox image; here the grader runs in this Python
    pass_threshold: float | None = None  # the evals API's python grader has one


Leaf = Annotated[
    Union[StringCheck, TextSimilarity, ScoreModel, LabelModel, Python], Field(discriminator="type")  # noqa: UP007
]


class Multi(_Spec):
    type: Literal["multi"]
    graders: dict[str, Leaf]
    calculate_output: str


GraderSpec = Union[StringCheck, TextSimilarity, ScoreModel, LabelModel, Python, Multi]  # noqa: UP007
_MODELS: dict[str, type[BaseModel]] = {
    "string_check": StringCheck, "text_similarity": TextSimilarity, "score_model": ScoreModel,
    "label_model": LabelModel, "python": Python, "multi": Multi,
}  # fmt: skip


# ----------------------------------------------------------------------------- reading


def looks_like_grader(spec: str) -> bool:
    """Whether ``--evaluator spec`` names a grader spec: inline JSON, or a .json/.yaml/.yml file."""
    text = spec.strip()
    return text.startswith("{") or text.lower().endswith(SPEC_SUFFIXES)


def read_spec(spec: str) -> dict[str, Any]:
    """The grader object of ``spec``: parsed inline JSON, or the content of a JSON/YAML file."""
    text = spec.strip()
    if text.startswith("{"):
        origin, content = "the inline grader", text
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise EvaluatorError(f"grader file not found: {path}")
        origin, content = str(path), path.read_text(encoding="utf-8-sig")  # (a BOM, as Notepad writes)
    try:
        if text.lower().endswith((".yaml", ".yml")):
            import yaml

            obj = yaml.safe_load(content)
        else:
            obj = json.loads(content)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvaluatorError(f"{origin}: not valid {'YAML' if origin.endswith(('yaml', 'yml')) else 'JSON'}: "
                             f"{first}") from None  # fmt: skip
    if not isinstance(obj, dict):
        raise EvaluatorError(f"{origin}: a grader spec must be a JSON object, not {type(obj).__name__}")
    return obj


def parse_grader(obj: dict[str, Any], *, where: str = "") -> GraderSpec:
    """A checked grader spec; any problem is one :class:`EvaluatorError` line naming the grader."""
    label = _label(obj, where)
    kind = obj.get("type")
    if kind not in _MODELS:
        problem = f"unknown grader type {kind!r}" if "type" in obj else "no 'type' field"
        raise EvaluatorError(f"{label}: {problem}", hint=f"the grader types are {', '.join(GRADER_TYPES)}")
    if kind == "multi":
        graders = obj.get("graders")
        if isinstance(graders, dict) and isinstance(
            graders.get("type"), str
        ):  # one grader, as the SDK types it
            graders = {str(graders.get("name") or graders["type"]): graders}
            obj = {**obj, "graders": graders}
        if not isinstance(graders, dict) or not graders:
            raise EvaluatorError(f"{label}: 'graders' must be an object of named sub-graders")
        for name, sub in graders.items():
            if not isinstance(sub, dict):
                raise EvaluatorError(f"{label}: sub-grader {name!r} must be a JSON object")
            if sub.get("type") == "multi":
                raise EvaluatorError(f"{label}: sub-grader {name!r} is a multi grader; they do not nest")
            parse_grader(sub, where=f"{label}, sub-grader {name!r}")
    try:
        return _MODELS[kind].model_validate(obj)  # type: ignore[return-value]
    except ValidationError as exc:
        raise EvaluatorError(f"{label}: {_first_problem(exc)}") from None


def _label(obj: dict[str, Any], where: str) -> str:
    if where:
        return where
    name, kind = obj.get("name"), obj.get("type")
    kind = f"{kind} grader" if isinstance(kind, str) and kind else "grader"
    return f"{kind} {name!r}" if name else f"the {kind}" if kind == "grader" else kind


MISSPELLINGS = {
    "sampling_parameters": "sampling_params",
    "metric": "evaluation_metric",
    "formula": "calculate_output",
}


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith(("function-", "tagged-")))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        meant = MISSPELLINGS.get(str(error["loc"][-1]))
        return f"unknown field {loc!r}" + (f" (the field is {meant!r})" if meant else "")
    if error["type"] == "missing":
        return f"missing field {loc!r}"
    got = f" (got {error['input']!r})" if error["type"] in ("literal_error", "enum") else ""
    return f"{loc}: {message}{got}" if loc else message
