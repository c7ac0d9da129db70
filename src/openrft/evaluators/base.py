"""The :class:`Evaluator` record: a loaded evaluator, whatever form it was written in.

Its own module so that both the loader and the built-in evaluators can use it
(``builtin`` -> ``base`` <- ``loader`` -> ``builtin``) without importing each other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from openrft.evaluators.protocol import EvaluationRow

Kind = Literal["row", "plain", "item", "messages", "trl", "verl"]


@dataclass(frozen=True)
class RolloutSpec:
    """How an eval-protocol file rolls out its rows: its rollout processor and that processor's
    settings (``mcp_config_path`` already resolved to a file). openrft runs the processor once per
    candidate, its model calls pointed at the policy being trained (:mod:`openrft.rollout.ep_rollouts`).
    """

    processor: Any
    mcp_config_path: str | None = None
    server_script_path: str | None = None  # an MCP gym's server (MCPGymRolloutProcessor)
    steps: int = 30
    kwargs: dict[str, Any] = field(default_factory=dict)
    completion_params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return type(self.processor).__name__


@dataclass(frozen=True)
class Evaluator:
    """A loaded evaluator, whatever form it was written in.

    ``kind="row"``: ``fn`` takes an ``EvaluationRow`` (pointwise) or a list of them
    (groupwise) of class ``row_cls``; ``call_by_keyword`` passes it as ``row=``/
    ``rows=`` (eval-protocol's convention). ``kind="plain"``: ``fn(completion_text,
    **row_fields)``. ``kind="item"``: ``fn(completion_text, row)``, the dataset row as it was
    read (an OpenAI grader's ``item``), and ``finish_reason=`` the completion's. ``kind="messages"``: reward-kit's ``fn(messages=[...prompt, reply],
    ground_truth=..., **other_row_fields)``. ``kind="verl"``: verl's ``compute_score(data_source, solution_str,
    ground_truth, extra_info)``, the ground truth read from the row's ``reward_model.ground_truth`` (or its
    ``ground_truth``). ``call_kwargs`` go with every call (eval-protocol's
    ``evaluation_test_kwargs``); ``completion_params`` reach rows as ``input_metadata.completion_params``.
    ``run_inline`` marks fast built-ins called without a worker
    thread. The header values are ``None`` when the evaluator does not set them. ``spec`` and
    ``spec_dataset`` let a worker process load the same evaluator again.
    """

    name: str
    fn: Callable[..., Any]
    mode: Literal["pointwise", "groupwise"] = "pointwise"
    kind: Kind = "row"
    max_concurrent_rollouts: int | None = None
    max_concurrent_evaluations: int | None = None
    input_dataset: str | None = None
    dataset_adapter: Callable[[list[dict[str, Any]]], Any] | None = None
    row_cls: type = EvaluationRow
    call_by_keyword: bool = False
    run_inline: bool = False
    source: str = ""
    spec: str = ""  # what it was loaded from (load_evaluator's arguments): to load it again elsewhere
    spec_dataset: str | None = None
    rollout: RolloutSpec | None = None  # an eval-protocol rollout processor other than single-turn
    env: dict[str, str] = field(default_factory=dict, compare=False)  # set in its worker processes
    call_kwargs: dict[str, Any] = field(default_factory=dict, compare=False)
    completion_params: dict[str, Any] = field(default_factory=dict, compare=False)
    # Checks one dataset row (and where it is, for the message) before training; raises EvaluatorError.
    check_row: Callable[[dict[str, Any], str], None] | None = field(default=None, compare=False)
    # a file's other functions that could score, passed over because this one is decorated (said to the user)
    passed_over: tuple[str, ...] = field(default=(), compare=False)
    required_fields: tuple[
        str, ...
    ] = ()  # row fields every row must hold, not null (a built-in's ground_truth)

    @property
    def is_async(self) -> bool:
        call = type(self.fn).__call__ if not inspect.isroutine(self.fn) else None
        return inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(call)


__all__ = ["Evaluator", "Kind", "RolloutSpec"]
