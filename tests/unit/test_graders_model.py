"""OpenAI's model graders (score_model, label_model, cosine similarity) and how a judge's answer is
read, against a stub OpenAI-compatible server started here (FastAPI in a thread) that answers from a
script: canned texts, or an HTTP status to fail with. Also the rest of the response's reading: the
sample's text without a reasoning model's thoughts, and a pass_threshold's pass rate.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import deque

import pytest
from test_graders import LABEL_MODEL, SCORE_MODEL, STRING_CHECK, TEXT_SIMILARITY, completion

from openrft.errors import EvaluatorError
from openrft.evaluators.graders import load_grader
from openrft.evaluators.loader import load_evaluator
from openrft.evaluators.runner import score_groups
from openrft.records import Prompt

# ----------------------------------------------------------------------------- model graders


class StubServer:
    """An OpenAI-compatible stub: each chat request takes the next scripted answer (text, or an int
    HTTP status to fail with); embeddings are a fixed table."""

    def __init__(self):
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.script: deque = deque()
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            self.requests.append(body)
            answer = self.script.popleft() if self.script else "no script left"
            if isinstance(answer, int):
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=answer)
            if isinstance(answer, tuple) and isinstance(answer[0], int):  # (status, message)
                return JSONResponse({"error": {"message": answer[1]}}, status_code=answer[0])
            answer, finish = answer if isinstance(answer, tuple) else (answer, "stop")  # (text, reason)
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": answer}}]}  # fmt: skip

        @app.post("/v1/embeddings")
        async def embeddings(body: dict):
            table = {"cat": [1.0, 0.0], "kitten": [0.6, 0.8], "car": [0.0, 1.0]}
            data = [
                {"object": "embedding", "index": i, "embedding": table[t]}
                for i, t in enumerate(body["input"])
            ]
            return {"object": "list", "data": data, "model": body["model"]}

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def stub():
    with StubServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setenv("OPENRFT_GRADER_TIMEOUT", "10")
    monkeypatch.setenv("OPENRFT_GRADER_RETRIES", "2")


def test_score_model_documented_example(stub):
    stub.script.extend(['{"result": 0.75}', "0.25.", "I would say 1.0"])
    evaluator = load_grader(json.dumps(SCORE_MODEL), endpoint=stub.url)
    scores = [evaluator.fn("Paris", {"label": "Paris"})["score"] for _ in range(3)]
    assert scores == [
        0.75,
        0.25,
        0.0,
    ]  # an answer that is not a number (or the JSON object): the range's low end
    request = stub.requests[-1]
    assert request["model"] == "o4-mini-2025-04-16" and request["seed"] == 42
    # OpenAI's reasoning models refuse max_tokens; reasoning_effort goes to the spec's own model
    assert request["max_completion_tokens"] == 2048 and "max_tokens" not in request
    assert request["reasoning_effort"] == "medium"
    assert "Reference answer: Paris\n\nModel answer: Paris" in request["messages"][0]["content"]
    assert request["messages"][-1]["role"] == "system" and '"result"' in request["messages"][-1]["content"]


def test_score_model_answer_without_a_number_scores_the_range_s_low_end_and_one_out_of_range_is_clipped(stub):
    """Outputs are clipped to the range; an answer with no number gets the lowest grade the range allows."""
    stub.script.extend(["I cannot decide", '{"result": 7}', "-0.2", "0.25 (on a scale of 0 to 1)"])
    evaluator = load_grader(json.dumps(SCORE_MODEL), endpoint=stub.url)
    results = [evaluator.fn("a", {"label": "b"}) for _ in range(4)]
    assert [r["score"] for r in results] == [0.0, 1.0, 0.0, 0.0]
    assert all(r["is_score_valid"] for r in results)
    assert "no number in the grader model's answer, so the range's lowest, 0" in results[0]["reason"]
    seven = load_grader(json.dumps({**SCORE_MODEL, "range": [1, 7]}), endpoint=stub.url)
    stub.script.append("I would say 6 out of 7")
    assert seven.fn("a", {"label": "b"})["score"] == 1.0  # never 0, which [1, 7] does not allow
    assert "score 7 clipped to the range [0, 1]" in results[1]["reason"]
    ranged = load_grader(json.dumps({**SCORE_MODEL, "range": [0, 10]}), endpoint=stub.url)
    stub.script.append('{"result": 7}')
    assert ranged.fn("a", {"label": "b"})["score"] == 7.0


def test_a_token_limit_past_the_served_context_is_dropped_and_a_cut_answer_is_no_grade(stub):
    spec = {**SCORE_MODEL, "sampling_params": {"max_completions_tokens": 32768}}  # as OpenAI's example
    too_long = "This model's maximum context length is 8192 tokens. However, you requested 32869 tokens"
    stub.script.extend([(400, too_long), '{"result": 0.5}'])
    before = len(stub.requests)
    result = load_grader(json.dumps(spec), endpoint=stub.url).fn("a", {"label": "a"})
    assert result["score"] == 0.5 and result["is_score_valid"]
    sent = stub.requests[before:]
    assert sent[0]["max_completion_tokens"] == 32768 and "max_completion_tokens" not in sent[1]  # unsaid
    said = too_long + " (101 in the messages, 32768 in the completion)."  # as vLLM says it
    stub.script.extend([(400, said), '{"result": 0.5}'])
    before = len(stub.requests)
    assert load_grader(json.dumps(spec), endpoint=stub.url).fn("a", {"label": "a"})["score"] == 0.5
    assert stub.requests[before + 1]["max_completion_tokens"] == 8192 - 101  # the room left, still a bound
    stub.script.extend([("<think>Let me weigh every word of the", "length"), ('{"result": "y', "length")])
    for grader in (SCORE_MODEL, LABEL_MODEL):
        cut = load_grader(json.dumps(grader), endpoint=stub.url).fn("a", {"label": "a", "response": "b"})
        assert not cut["is_score_valid"] and "cut off at its token limit" in cut["reason"], cut


def test_model_grader_retries_after_a_500(stub):
    stub.script.extend([500, '{"result": 1}'])
    before = len(stub.requests)
    result = load_grader(json.dumps(SCORE_MODEL), endpoint=stub.url).fn("a", {"label": "a"})
    assert result["score"] == 1.0 and len(stub.requests) - before == 2


def test_model_grader_gives_up_after_its_retries(stub):
    stub.script.extend([503, 503, 503])
    prompt = Prompt("1", [{"role": "user", "content": "q"}], {"label": "a"})
    (score,) = score_groups(
        load_grader(json.dumps(SCORE_MODEL), endpoint=stub.url), [(prompt, [completion("a")])]
    )[0]
    assert not score.is_valid and "InternalServerError" in score.reason


def test_label_model_documented_example(stub):
    stub.script.extend(['{"result": "positive"}', "neutral", "Negative.", "ecstatic", "POSITIVE"])
    evaluator = load_grader(json.dumps(LABEL_MODEL), endpoint=stub.url, model="local-judge")
    results = [evaluator.fn("", {"response": "I love it"}) for _ in range(5)]
    assert [r["score"] for r in results] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert not results[3]["is_score_valid"] and "not one of the labels" in results[3]["reason"]
    assert all(r["is_score_valid"] for r in (*results[:3], results[4]))  # labels match in any case
    assert "'negative'" in results[2]["reason"]
    request = stub.requests[-1]
    assert request["model"] == "local-judge"  # --grader-model replaces the spec's model
    assert request["messages"][1] == {"role": "user", "content": "Statement: I love it"}


def test_model_grader_request_keeps_text_parts_and_sends_no_reasoning_effort_to_another_model(stub):
    parts = [{"type": "input_text", "text": "Reference: {{ item.label }}."},
             {"type": "input_text", "text": "Model answer: {{ sample.output_text }}"}]  # fmt: skip
    spec = {**SCORE_MODEL, "input": [{"role": "developer", "content": parts}]}
    stub.script.append('{"result": 1}')
    load_grader(json.dumps(spec), endpoint=stub.url, model="local-judge").fn("0.9", {"label": "1.0"})
    request = stub.requests[-1]
    assert request["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "Reference: 1.0."}, {"type": "text", "text": "Model answer: 0.9"}]}  # fmt: skip
    assert "reasoning_effort" not in request and request["max_completion_tokens"] == 2048
    for spelling in ("max_tokens", "max_completion_tokens"):  # the guide's label_model example: max_tokens
        limited = {**SCORE_MODEL, "sampling_params": {spelling: 32}}
        stub.script.append('{"result": 1}')
        load_grader(json.dumps(limited), endpoint=stub.url).fn("0.9", {"label": "1.0"})
        assert stub.requests[-1]["max_completion_tokens"] == 32, spelling


def test_model_grader_refuses_image_parts_in_one_line():
    image = {"type": "input_image", "image_url": "https://example.com/x.png"}
    spec = {
        **SCORE_MODEL,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}, image]}],
    }
    with pytest.raises(EvaluatorError, match="content parts of type 'input_image' cannot be sent"):
        load_grader(json.dumps(spec), endpoint="http://127.0.0.1:9/v1")


def test_model_graders_need_an_endpoint():
    with pytest.raises(EvaluatorError, match="needs a model endpoint"):
        load_grader(json.dumps(SCORE_MODEL))


def test_cosine_with_embedding_endpoint(stub):
    spec = {**TEXT_SIMILARITY, "evaluation_metric": "cosine"}
    evaluator = load_grader(json.dumps(spec), endpoint=stub.url)
    assert evaluator.fn("cat", {"label": "kitten"})["score"] == pytest.approx(0.6)
    assert evaluator.fn("cat", {"label": "car"})["score"] == pytest.approx(0.0)


def test_multi_with_a_model_sub_grader_in_workers(stub, tmp_path):
    """The endpoint reaches the worker processes that score model graders."""
    from openrft.evaluators.isolation import score_contained

    spec = {"type": "multi", "name": "mix", "calculate_output": "(exact + judge) / 2",
            "graders": {"exact": {**STRING_CHECK, "name": "exact"}, "judge": {**SCORE_MODEL, "name": "judge"}}}  # fmt: skip
    evaluator = load_evaluator(json.dumps(spec), grader_endpoint=stub.url)
    assert not evaluator.run_inline and evaluator.env["OPENRFT_GRADER_ENDPOINT"] == stub.url
    stub.script.append('{"result": 0.5}')
    prompt = Prompt("1", [{"role": "user", "content": "q"}], {"label": "Paris"})
    (score,) = score_contained(evaluator, [(prompt, [completion("Paris")])], max_concurrency=1, timeout=30)[0]
    assert (
        score.is_valid and math.isclose(score.score, 0.75) and score.metrics == {"exact": 1.0, "judge": 0.5}
    )


def test_multi_is_invalid_when_a_sub_grader_s_answer_is_unusable(stub):
    """A judge whose answer holds none of the labels makes the whole score invalid, never a valid 0."""
    spec = {"type": "multi", "name": "mix", "calculate_output": "0.5 * exact + 0.5 * judge",
            "graders": {"exact": {**STRING_CHECK, "name": "exact"}, "judge": {**LABEL_MODEL, "name": "judge"}}}  # fmt: skip
    stub.script.append("ecstatic")
    result = load_grader(json.dumps(spec), endpoint=stub.url).fn("Paris", {"label": "Paris", "response": "x"})
    assert not result["is_score_valid"] and result["reason"].startswith("judge: ") and result["score"] == 0.0


def test_a_judges_result_is_its_last_json_object_with_one():
    from openrft.evaluators.graders.model import parse_score
    from openrft.evaluators.graders.spec import parse_grader

    spec = parse_grader({"type": "score_model", "name": "s", "model": "m", "range": None,  # the SDK's dump
                         "input": [{"role": "user", "content": "{{ sample.output_text }}"}]})  # fmt: skip
    assert spec.range == (0.0, 1.0)
    for answer, expected in [
        ('The answer \\boxed{12} equals the reference. {"result": 1}', 1.0),
        ('The set {a, b} is half right. {"result": 0.5}', 0.5),
        ('First {"result": 0.2}, on reflection {"result": 0.9}', 0.9),
        ('{"result": 0.7, "steps": [{"description": "x", "score": 0.1}]}', 0.7),
        ('<think>{"result": 0}</think> 0.8', 0.8),
    ]:
        assert parse_score(answer, spec)[0] == expected, answer


def test_output_text_leaves_a_reasoning_models_thoughts_out():
    from openrft.evaluators.graders.templates import sample_of

    assert sample_of("<think>7+5=12</think>\n\n12")["output_text"] == "12"
    assert sample_of('<think>a</think>{"x": 1}')["output_json"] == {"x": 1}


def test_a_pass_threshold_counts_passing_scores_as_reward_passed():
    spec = {**TEXT_SIMILARITY, "pass_threshold": 0.8}
    evaluator = load_grader(json.dumps(spec))
    row = {"label": "fuzzy wuzzy had no hair"}
    same = evaluator.fn("fuzzy wuzzy had no hair", row)
    other = evaluator.fn("something else entirely", row)
    assert same["metrics"]["passed"] == 1.0 and other["metrics"]["passed"] == 0.0
    assert "passed" not in load_grader(json.dumps(TEXT_SIMILARITY)).fn("x", row)["metrics"]
