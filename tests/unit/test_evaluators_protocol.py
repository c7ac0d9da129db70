"""openrft's evaluator models and decorator (eval-protocol field names)."""

from __future__ import annotations

import pytest

import openrft
from openrft.errors import EvaluatorError
from openrft.evaluators.protocol import (
    HEADER_ATTR,
    EvaluateResult,
    EvaluationRow,
    MetricResult,
    evaluation_test,
)


def test_lazy_top_level_exports_are_the_protocol_objects():
    assert openrft.EvaluationRow is EvaluationRow
    assert openrft.evaluation_test is evaluation_test
    assert openrft.Message.__name__ == "Message" and openrft.InputMetadata.__name__ == "InputMetadata"


def test_row_fields_helpers_and_extra_fields():
    row = EvaluationRow(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "one"},
            {"role": "assistant", "content": [{"type": "text", "text": "tw"}, {"type": "text", "text": "o"}]},
        ],
        ground_truth={"answer": 2},
        input_metadata={"row_id": "r1", "dataset_info": {"split": "train"}},
        topic="greetings",
    )
    assert row.last_assistant_message().text() == "two"
    assert row.get_first_user_message().content == "hi"
    assert row.get_system_message().content == "be brief"
    assert row.input_metadata.row_id == "r1"
    assert row.topic == "greetings"  # dataset columns become attributes, as in eval-protocol
    assert row.evaluation_result is None and row.get_conversation_length() == 4
    assert EvaluationRow().get_system_message().content == ""


def test_metrics_accept_numbers_dicts_and_metric_results():
    result = EvaluateResult(
        score=0.5,
        metrics={
            "plain": 1,
            "flag": True,
            "as_dict": {"score": 0.25, "reason": "quarter"},
            "object": MetricResult(score=0.75, reason="three quarters", is_score_valid=False),
        },
    )
    assert {k: v.score for k, v in result.metrics.items()} == {
        "plain": 1.0,
        "flag": 1.0,
        "as_dict": 0.25,
        "object": 0.75,
    }
    assert result.metrics["object"].is_score_valid is False
    assert result.is_score_valid is True and result.reason is None


def test_decorator_records_header_and_leaves_function_callable():
    @evaluation_test(
        mode="pointwise",
        max_concurrent_rollouts=4,
        max_concurrent_evaluations=2,
        input_dataset=["a.jsonl", "b.jsonl"],
        num_runs=3,
    )
    def judge(row: EvaluationRow) -> EvaluationRow:
        row.evaluation_result = EvaluateResult(score=1.0)
        return row

    header = getattr(judge, HEADER_ATTR)
    assert (header.mode, header.max_concurrent_rollouts, header.max_concurrent_evaluations) == (
        "pointwise",
        4,
        2,
    )
    assert header.input_dataset == "a.jsonl" and header.other == {"num_runs": 3}
    assert judge(EvaluationRow()).evaluation_result.score == 1.0


def test_decorator_rejects_bad_headers_and_signatures():
    with pytest.raises(EvaluatorError, match="mode must be"):
        evaluation_test(mode="all")
    with pytest.raises(EvaluatorError, match="max_concurrent_evaluations must be a whole number"):
        evaluation_test(max_concurrent_evaluations=0)
    with pytest.raises(EvaluatorError, match=r"groupwise evaluator 'two' must take one argument \(rows"):

        @evaluation_test(mode="groupwise")
        def two(rows, other):
            return rows

    with pytest.raises(EvaluatorError, match="must take one argument"):

        @evaluation_test()
        def none() -> None:
            return None
