"""Wire details of the chat, Responses and legacy completions APIs that clients read field by field:
usage counts, token ids, call ids, stream events, list cursors, refusals and boundaries."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from test_agents import TOOLS, ScriptedEngine

from openrft.records import Completion, SamplingParams
from openrft.rollout.chat import encode_chat
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import create_app
from openrft.rollout.trajectories import ROLLOUT_HEADER, RolloutRecorder

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>'
TWO_CALLS = f"{CALL % '17*23'}\n{CALL % '2+2'}"
RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]
USER = [{"role": "user", "content": "What is 17*23?"}]


class BudgetedEngine(ScriptedEngine):
    """A scripted engine that, like a model that never stops, writes until the token budget."""

    def generate_from_ids(self, prompts, params, **_):
        ids = tuple(self.tokenizer(self.text, add_special_tokens=False)["input_ids"])[: params.max_tokens]
        return [[Completion(name, k, tuple(p), ids, self.tokenizer.decode(list(ids)), (-0.5,) * len(ids),
                            "length") for k in range(params.n)] for name, p in prompts]  # fmt: skip


class TokenStreamingEngine(ScriptedEngine):
    """A scripted engine that reports its reply token by token, so a stream is sent as it is sampled."""

    streams_tokens = True

    def generate_from_ids(self, prompts, params, on_tokens=None, **_):
        groups = super().generate_from_ids(prompts, params)
        for token in groups[0][0].completion_token_ids:
            if on_tokens is not None:
                on_tokens([((p, k), token) for p in range(len(prompts)) for k in range(params.n)])
        return groups


def _client(engine, **kwargs) -> TestClient:
    # a keyless server answers requests addressed to this machine only
    return TestClient(create_app(engine, "policy", **kwargs), base_url="http://127.0.0.1")


def _events(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


def test_each_function_call_of_one_response_has_its_own_ids(tokenizer):
    """A client pairs each function_call_output with its call by call_id: two calls need two ids,
    whether the reply is sent whole or streamed as sampled (where the ids are announced early)."""
    request = {"model": "policy", "input": "17*23 and 2+2?", "tools": RESPONSES_TOOLS}
    with _client(ScriptedEngine(tokenizer, TWO_CALLS)) as http:
        whole = http.post("/v1/responses", json=request).json()["output"]
    with _client(TokenStreamingEngine(tokenizer, TWO_CALLS)) as http:
        events = _events(http.post("/v1/responses", json={**request, "stream": True}).text)
        stored = http.get(f"/v1/responses/{events[-1]['response']['id']}").json()["output"]
    streamed = events[-1]["response"]["output"]
    assert events[-1]["type"] == "response.completed"
    for output in (whole, streamed):
        assert [o["type"] for o in output] == ["function_call", "function_call"]
        assert len({o["call_id"] for o in output}) == 2 and len({o["id"] for o in output}) == 2
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(a["id"], a["call_id"]) for a in added] == [(o["id"], o["call_id"]) for o in streamed]
    assert [o["call_id"] for o in stored] == [o["call_id"] for o in streamed]  # the ids the client saw


def test_return_token_ids_gives_the_prompt_and_completion_token_ids(tokenizer):
    with _client(ScriptedEngine(tokenizer, "Sure.")) as http:
        body = http.post(
            "/v1/chat/completions", json={"model": "policy", "messages": USER, "return_token_ids": True}
        ).json()
    (choice,) = body["choices"]
    sampled = tokenizer("Sure.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert choice["token_ids"] == sampled
    assert body["prompt_token_ids"] == encode_chat(tokenizer, USER)  # vLLM's place: the response's top level
    assert choice["prompt_token_ids"] == body["prompt_token_ids"]  # and each choice's, as openrft sent before
    assert body["usage"]["prompt_tokens"] == len(body["prompt_token_ids"])


def test_a_streamed_chat_reply_with_logprobs_carries_one_logprob_per_token(tiny_model, tokenizer):
    model, _ = tiny_model
    engine = LocalEngine(model, tokenizer)
    assert engine.streams_tokens  # without logprobs this engine's replies stream as sampled
    request = {"model": "policy", "messages": USER, "max_tokens": 6, "seed": 1, "logprobs": True}
    with _client(engine) as http:
        whole = http.post("/v1/chat/completions", json=request).json()
        chunks = _events(http.post("/v1/chat/completions", json={**request, "stream": True}).text)
    expected = [t["token"] for t in whole["choices"][0]["logprobs"]["content"]]
    assert len(expected) == whole["usage"]["completion_tokens"] > 0
    streamed = [
        t["token"]
        for c in chunks
        if c["choices"] and c["choices"][0].get("logprobs")
        for t in c["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == expected


def test_chat_usage_counts_the_prompt_once_and_totals_prompt_and_completion(tokenizer):
    text = "The answer is 391."
    with _client(ScriptedEngine(tokenizer, text)) as http:
        one = http.post("/v1/chat/completions", json={"model": "policy", "messages": USER}).json()
        three = http.post(
            "/v1/chat/completions", json={"model": "policy", "messages": USER, "n": 3, "logprobs": True}
        ).json()
    sampled = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # the end-of-turn token too
    assert one["usage"]["prompt_tokens"] == len(encode_chat(tokenizer, USER))
    assert one["usage"]["completion_tokens"] == sampled
    assert one["usage"]["total_tokens"] == one["usage"]["prompt_tokens"] + sampled
    usage = three["usage"]
    assert len(three["choices"]) == 3
    assert usage["prompt_tokens"] == one["usage"]["prompt_tokens"]  # n choices share one prompt
    assert usage["completion_tokens"] == sum(len(c["logprobs"]["content"]) for c in three["choices"])
    assert usage["completion_tokens"] == 3 * sampled
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_responses_usage_total_is_input_plus_output(tokenizer):
    with _client(ScriptedEngine(tokenizer, "Sure.")) as http:
        usage = http.post("/v1/responses", json={"model": "policy", "input": "Hi"}).json()["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_input_items_list_in_either_order_with_a_cursor_and_has_more(tokenizer):
    given = [{"type": "message", "role": "user", "content": t} for t in ("one", "two", "three")]
    with _client(ScriptedEngine(tokenizer, "Sure.")) as http:
        response_id = http.post("/v1/responses", json={"model": "policy", "input": given}).json()["id"]
        url = f"/v1/responses/{response_id}/input_items"

        def listed(**params):
            return http.get(url, params=params).json()

        ascending = listed(order="asc")
        texts = [item["content"] for item in ascending["data"]]
        ids = [item["id"] for item in ascending["data"]]
        assert texts == ["one", "two", "three"] and ascending["has_more"] is False
        assert [item["id"] for item in listed()["data"]] == ids[::-1]  # newest first by default
        first = listed(order="asc", limit=1)
        assert [item["id"] for item in first["data"]] == ids[:1] and first["has_more"] is True
        assert first["first_id"] == first["last_id"] == ids[0]
        rest = listed(order="asc", after=first["last_id"])
        assert [item["id"] for item in rest["data"]] == ids[1:] and rest["has_more"] is False
        newest = listed(after=ids[2], limit=1)  # descending: the item after the newest is the middle one
        assert [item["id"] for item in newest["data"]] == [ids[1]] and newest["has_more"] is True


def test_a_training_rollout_call_asking_for_several_choices_is_refused(tokenizer):
    recorder = RolloutRecorder(SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=0))
    recorder.open("r1")
    with _client(ScriptedEngine(tokenizer, "ok"), recorder=recorder) as http:
        headers = {ROLLOUT_HEADER: "r1"}
        request = {"model": "policy", "messages": USER}
        refused = http.post("/v1/chat/completions", json={**request, "n": 2}, headers=headers)
        assert refused.status_code == 400 and "n > 1" in refused.json()["error"]["message"]
        assert http.post("/v1/chat/completions", json=request, headers=headers).status_code == 200


def test_a_stream_sent_whole_opens_with_a_response_that_has_no_output_yet(tokenizer):
    request = {"model": "policy", "input": "Hi", "stream": True, "include": ["message.output_text.logprobs"]}
    with _client(ScriptedEngine(tokenizer, "Sure.")) as http:
        events = _events(http.post("/v1/responses", json=request).text)
    created, in_progress = events[0], events[1]
    assert created["type"] == "response.created" and created["response"]["status"] == "in_progress"
    assert created["response"]["output"] == [] and in_progress["response"]["output"] == []
    assert created["response"]["usage"] is None
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["output"]


def test_presence_penalty_is_refused_rather_than_ignored(tokenizer):
    with _client(ScriptedEngine(tokenizer, "ok")) as http:
        answer = http.post(
            "/v1/chat/completions", json={"model": "policy", "messages": USER, "presence_penalty": 0.5}
        )
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == "presence_penalty"
    assert error["type"] == "invalid_request_error"


def test_max_completion_tokens_wins_over_the_deprecated_max_tokens(tokenizer):
    text = "one two three four five six seven eight nine ten"
    with _client(BudgetedEngine(tokenizer, text, "length")) as http:
        both = {"model": "policy", "messages": USER, "max_tokens": 2, "max_completion_tokens": 5}
        usage = http.post("/v1/chat/completions", json=both).json()["usage"]
        alone = {"model": "policy", "messages": USER, "max_tokens": 2}
        deprecated = http.post("/v1/chat/completions", json=alone).json()["usage"]
    assert usage["completion_tokens"] == 5
    assert deprecated["completion_tokens"] == 2


def test_a_chat_prompt_exactly_as_long_as_the_context_is_refused(tokenizer):
    """A prompt that fills the context leaves no room for one token of reply."""
    engine = ScriptedEngine(tokenizer, "ok")
    engine.max_positions = len(encode_chat(tokenizer, USER))
    with _client(engine) as http:
        full = http.post("/v1/chat/completions", json={"model": "policy", "messages": USER})
        engine.max_positions += 1
        room_for_one = http.post("/v1/chat/completions", json={"model": "policy", "messages": USER})
    error = full.json()["error"]
    assert full.status_code == 400 and (error["code"], error["param"]) == (
        "context_length_exceeded",
        "messages",
    )
    assert room_for_one.status_code == 200


@pytest.mark.parametrize("return_ids", [False, True])
def test_completions_text_offsets_add_up_and_logprobs_0_gives_no_top_logprobs(tokenizer, return_ids):
    text = "Hello, wonderful world of tokens."
    with _client(ScriptedEngine(tokenizer, text, "length")) as http:
        request = {"model": "policy", "prompt": "Hi", "logprobs": 0, "return_tokens_as_token_ids": return_ids}
        choice = http.post("/v1/completions", json=request).json()["choices"][0]
    logprobs = choice["logprobs"]
    pieces = [tokenizer.decode([t]) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert len({len(p) for p in pieces}) > 1  # tokens of different lengths: offsets must accumulate
    assert logprobs["text_offset"] == [len("".join(pieces[:k])) for k in range(len(pieces))]
    assert logprobs["top_logprobs"] is None  # logprobs 0: the sampled token's log-prob only (vLLM)
    assert len(logprobs["token_logprobs"]) == len(pieces)
