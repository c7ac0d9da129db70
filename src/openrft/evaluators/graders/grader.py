"""Turning a checked grader spec into something that scores one response.

:func:`build` returns a :class:`Grader`: called with the dataset row (``item``) and the ``sample``
namespace, it returns a :class:`Grade` (the score, a reason, and for a multi grader each
sub-grader's score as a metric). :meth:`Grader.check_item` renders every template of the spec
against a dataset row before training, so a missing field is found at ``--dry-run`` time.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import numbers
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from openrft.errors import EvaluatorError
from openrft.evaluators.graders import model as model_graders
from openrft.evaluators.graders import text as text_graders
from openrft.evaluators.graders.formula import Formula
from openrft.evaluators.graders.spec import (
    GraderSpec,
    LabelModel,
    Multi,
    Python,
    ScoreModel,
    StringCheck,
    TextSimilarity,
)  # fmt: skip
from openrft.evaluators.graders.templates import (
    SAMPLE_FIELDS,
    AnySample,
    MissingField,
    UnknownSampleField,
    check_syntax,
    render,
)


@dataclass
class Grade:
    score: float
    reason: str = ""
    valid: bool = True
    metrics: dict[str, float] = field(default_factory=dict)


class Grader:
    """One grader of a spec; subclasses implement :meth:`grade`."""

    def __init__(self, spec: GraderSpec, label: str):
        self.spec, self.label = spec, label

    def templates(self) -> list[str]:
        return []

    @property
    def lowest(self) -> float:
        """The lowest score this grader gives."""
        return 0.0

    def grade(self, item: dict[str, Any], sample: Any) -> Grade:
        raise NotImplementedError

    @property
    def contained(self) -> bool:
        """Whether it must run in a worker process (user code, network calls), not in the job's process."""
        return False

    def check_item(self, item: dict[str, Any], where: str) -> None:
        """Render every template against ``item`` (a dataset row); a missing field is an error naming it."""
        for template in self.templates():
            try:
                render(template, item, AnySample())
            except UnknownSampleField as exc:  # a misspelt sample field would render empty for every response
                raise EvaluatorError(
                    f"{self.label}: the template {template!r} refers to sample.{exc.field}, which no sample has "
                    f"(a sample has {', '.join(SAMPLE_FIELDS)})"
                ) from None
            except MissingField as exc:
                raise EvaluatorError(
                    f"{self.label}: the template {template!r} refers to {exc.field!r}, which {where} does not have",
                    hint="add the field to every dataset row, or change the grader's template",
                ) from None


class StringCheckGrader(Grader):
    spec: StringCheck

    def templates(self) -> list[str]:
        return [self.spec.input, self.spec.reference]

    def grade(self, item: dict[str, Any], sample: Any) -> Grade:
        text, reference = render(self.spec.input, item, sample), render(self.spec.reference, item, sample)
        score = text_graders.string_check(self.spec.operation, text, reference)
        verdict = "holds" if score else "fails"
        return Grade(score, f"{self.spec.operation} {verdict}: {_short(text)} vs {_short(reference)}")


class TextSimilarityGrader(Grader):
    spec: TextSimilarity

    def __init__(self, spec: TextSimilarity, label: str, endpoint: model_graders.Endpoint):
        super().__init__(spec, label)
        self.endpoint = endpoint
        if spec.evaluation_metric == "cosine" and not endpoint.url:
            raise EvaluatorError(
                f"{label}: the cosine metric needs an embedding endpoint",
                hint="pass --grader-endpoint URL (an OpenAI-compatible server with /v1/embeddings), or set "
                "OPENRFT_GRADER_ENDPOINT (for `openrft server`: in the server's environment)",
            )

    @property
    def contained(self) -> bool:
        return self.spec.evaluation_metric == "cosine"

    def templates(self) -> list[str]:
        return [self.spec.input, self.spec.reference]

    def grade(self, item: dict[str, Any], sample: Any) -> Grade:
        text, reference = render(self.spec.input, item, sample), render(self.spec.reference, item, sample)
        embed = self.endpoint.embed if self.spec.evaluation_metric == "cosine" else None
        score = text_graders.similarity(self.spec.evaluation_metric, text, reference, embed=embed)
        return Grade(score, f"{self.spec.evaluation_metric} {score:.4f}")


class ModelGrader(Grader):
    spec: ScoreModel | LabelModel

    def __init__(self, spec: ScoreModel | LabelModel, label: str, endpoint: model_graders.Endpoint):
        super().__init__(spec, label)
        self.endpoint = endpoint
        if not endpoint.url:
            raise EvaluatorError(
                f"{label}: a {spec.type} grader needs a model endpoint",
                hint="pass --grader-endpoint URL (an OpenAI-compatible server, e.g. `openrft serve`), or set "
                "OPENRFT_GRADER_ENDPOINT (for `openrft server`: in the server's environment); the API key is read from OPENRFT_GRADER_API_KEY, else OPENAI_API_KEY",
            )
        endpoint.check()

    @property
    def contained(self) -> bool:
        return True

    @property
    def lowest(self) -> float:  # a score model's range may start above 0
        return float(self.spec.range[0]) if isinstance(self.spec, ScoreModel) else 0.0

    def templates(self) -> list[str]:
        return [t for message in self.spec.input for t in message.texts()]

    def grade(self, item: dict[str, Any], sample: Any) -> Grade:
        answer = self.endpoint.chat(self.spec, model_graders.prompt(self.spec, item, sample))
        try:
            if isinstance(self.spec, ScoreModel):
                return Grade(*model_graders.parse_score(answer, self.spec))
            label = model_graders.parse_label(answer, self.spec)
        except model_graders.UnparseableAnswer as exc:
            return Grade(0.0, f"{self.label}: {exc.message}", valid=False)
        passed = label in self.spec.passing_labels
        return Grade(float(passed), f"label {label!r} ({'passing' if passed else 'not passing'})")


def _check_arity(fn: ast.FunctionDef | ast.AsyncFunctionDef, label: str) -> None:
    """``grade`` is called with two arguments, ``grade(sample, item)``: read from the source, so that a
    wrong signature is refused when the grader is loaded rather than on every response."""
    args = fn.args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    keyword_only = sum(default is None for default in args.kw_defaults)  # keyword-only without a default
    if required > 2 or (positional < 2 and args.vararg is None) or keyword_only:
        raise EvaluatorError(f"{label}: grade() must take two arguments, grade(sample, item), as OpenAI calls it "
                             f"(line {fn.lineno})")  # fmt: skip


class PythonGrader(Grader):
    """``grade(sample, item) -> float`` from the spec's source, run in a worker process."""

    spec: Python

    def __init__(self, spec: Python, label: str):
        super().__init__(spec, label)
        try:
            tree = ast.parse(spec.source, filename=f"<{label}>")
        except SyntaxError as exc:
            raise EvaluatorError(f"{label}: syntax error in source, line {exc.lineno}: {exc.msg}") from None
        grade = [
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "grade"
        ]
        if not grade:
            raise EvaluatorError(f"{label}: the source defines no function grade(sample, item)")
        _check_arity(grade[-1], label)
        _check_imports(tree, label)
        self._fn: Any = None

    @property
    def contained(self) -> bool:
        return True

    def _function(self) -> Any:
        if self._fn is None:  # executed on first use: in the worker process, never in the job's
            module = types.ModuleType("_openrft_python_grader")
            sys.modules.setdefault(module.__name__, module)
            exec(compile(self.spec.source, f"<{self.label}>", "exec"), module.__dict__)  # noqa: S102
            self._fn = module.__dict__["grade"]
        return self._fn

    def grade(self, item: dict[str, Any], sample: Any) -> Grade:
        result = self._function()(dict(sample), item)
        kind = getattr(getattr(result, "dtype", None), "kind", None)  # numpy's bool_ is not numbers.Real
        if not isinstance(result, numbers.Real) and not (
            kind in tuple("biuf") and getattr(result, "shape", 0) == ()
        ):
            raise EvaluatorError(f"{self.label}: grade() returned {type(result).__name__}, not a number")
        if isinstance(result, bool) or kind == "b":  # a bool is 1 or 0, as float() reads it
            return Grade(float(result), f"grade() returned {bool(result)}")
        return Grade(float(result), f"grade() returned {float(result):g}")


PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow", "cv2": "opencv-python"}


def _check_imports(tree: ast.Module, label: str) -> None:
    """Refuse a source importing a package this machine lacks (OpenAI's grader image has numpy, scipy,
    sympy, pandas, rapidfuzz, scikit-learn ...): named now, rather than every call failing in training."""
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    for top in sorted({name.partition(".")[0] for name in names}):
        if importlib.util.find_spec(top) is None:
            raise EvaluatorError(
                f"{label}: the source imports {top}, which is not installed here",
                hint=f"install it in openrft's environment (pip install {PIP_NAMES.get(top, top)}); the grader "
                "runs on this machine",
            )


class MultiGrader(Grader):
    spec: Multi

    def __init__(self, spec: Multi, label: str, endpoint: model_graders.Endpoint):
        super().__init__(spec, label)
        self.graders = {
            name: _leaf(sub, f"{label}, sub-grader {name!r}", endpoint) for name, sub in spec.graders.items()
        }
        try:
            self.formula = Formula(spec.calculate_output, self.graders)
        except EvaluatorError as exc:
            raise EvaluatorError(f"{label}: {exc.message}") from None

    @property
    def contained(self) -> bool:
        return any(g.contained for g in self.graders.values())

    def templates(self) -> list[str]:
        return [t for g in self.graders.values() for t in g.templates()]

    def check_item(self, item: dict[str, Any], where: str) -> None:
        for grader in self.graders.values():
            grader.check_item(item, where)

    def grade(self, item: dict[str, Any], sample: Any) -> Grade:
        grades = {name: _sub_graded(g, item, sample) for name, g in self.graders.items()}
        metrics = {name: g.score for name, g in grades.items()}
        invalid = [f"{name}: {g.reason}" for name, g in grades.items() if not g.valid]
        if invalid:
            return Grade(0.0, "; ".join(invalid), valid=False, metrics=metrics)
        score = self.formula(metrics)
        parts = ", ".join(f"{name}={value:g}" for name, value in metrics.items())
        why = "; ".join(f"{name}: {g.reason}" for name, g in grades.items() if g.reason)  # each sub-grader's
        valid = math.isfinite(score)
        reason = f"{self.spec.calculate_output} with {parts} = {score:g}" + (f" ({why})" if why else "")
        return Grade(score if valid else 0.0, reason, valid, metrics)


def _sub_graded(grader: Grader, item: dict[str, Any], sample: Any) -> Grade:
    """A multi grader's sub-grade: one that raises (a python sub-grader's error) is invalid, its reason
    then named after the sub-grader by the multi grader, and the others' scores are kept."""
    try:
        return graded(grader, item, sample)
    except EvaluatorError as exc:  # the data's or the judge's problem, said in one line
        return Grade(0.0, exc.message, valid=False)
    except Exception as exc:  # user code: any error is this sub-grade's
        return Grade(0.0, f"{type(exc).__name__}: {exc}", valid=False)


def graded(grader: Grader, item: dict[str, Any], sample: Any) -> Grade:
    """``grader.grade(item, sample)``; a template field the response lacks (no tool call to read, no
    JSON) scores the grader's lowest score (0, or a score model's range's low end), as the worst answer
    does, so a group still learns from it. A field the dataset row lacks is an :class:`EvaluatorError`
    naming it (the data is at fault, not the response)."""
    try:
        return grader.grade(item, sample)
    except MissingField as exc:
        grader.check_item(item, "the row")
        return Grade(
            grader.lowest, f"the response has no {exc.field!r} for {exc.template!r}, so {grader.lowest:g}"
        )


def build(spec: GraderSpec, label: str, endpoint: model_graders.Endpoint) -> Grader:
    """The grader for a checked spec; templates are checked for syntax here."""
    grader = MultiGrader(spec, label, endpoint) if isinstance(spec, Multi) else _leaf(spec, label, endpoint)
    for template in grader.templates():
        try:
            check_syntax(template)
        except EvaluatorError as exc:
            raise EvaluatorError(f"{label}: {exc.message}") from None
    return grader


def _leaf(spec: GraderSpec, label: str, endpoint: model_graders.Endpoint) -> Grader:
    if isinstance(spec, StringCheck):
        return StringCheckGrader(spec, label)
    if isinstance(spec, TextSimilarity):
        return TextSimilarityGrader(spec, label, endpoint)
    if isinstance(spec, ScoreModel | LabelModel):
        return ModelGrader(spec, label, endpoint)
    if isinstance(spec, Python):
        return PythonGrader(spec, label)
    raise EvaluatorError(f"{label}: a {spec.type} grader cannot be nested here")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


__all__ = ["Grade", "Grader", "build"]
