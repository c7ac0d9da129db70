"""Agents: chat completions with the openai SDK, agent rollouts on exact tokens, failures, a job round."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout.agents import Agent, AgentEngine
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import BackgroundServer, create_app
from openrft.train.batching import TrainSequence, collate
from openrft.train.logprobs import completion_logprobs

EXAMPLE_AGENT = Path(__file__).resolve().parents[2] / "examples" / "agents" / "retry_agent.py"
TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]  # fmt: skip


class ScriptedEngine:
    """An engine whose every completion is the given text (tool-call parsing without a model)."""

    def __init__(self, tokenizer, text: str, finish: str = "stop"):
        self.tokenizer, self.text, self.finish = tokenizer, text, finish
        self.stop_token_ids = (tokenizer.eos_token_id,)

    def generate_from_ids(self, prompts, params, **_):
        ids = tuple(self.tokenizer(self.text, add_special_tokens=False)["input_ids"])
        ids += (self.tokenizer.eos_token_id,) if self.finish == "stop" else ()
        return [[Completion(name, k, tuple(p), ids, self.text, (-0.5,) * len(ids), self.finish)
                 for k in range(params.n)] for name, p in prompts]  # fmt: skip


def test_serve_answers_the_openai_sdk_with_and_without_tools(tiny_model, tokenizer):
    model, _ = tiny_model
    app = create_app(LocalEngine(model, tokenizer), "tiny", aliases=["policy", "/models/tiny"])
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny", "policy", "/models/tiny"]
        messages = [{"role": "user", "content": "Hello"}]
        plain = client.chat.completions.create(model="policy", messages=messages, max_tokens=6, seed=1,
                                               logprobs=True)  # fmt: skip
        (choice,) = plain.choices
        assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
        assert plain.model == "policy"  # the name asked for, as vLLM echoes it
        assert plain.usage.completion_tokens == len(choice.logprobs.content) <= 6
        again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, seed=1)
        assert again.choices[0].message.content == choice.message.content  # a seed fixes the answer
        with_tools = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=6,
                                                    n=2)  # fmt: skip
        assert len(with_tools.choices) == 2
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, seed=1,
                                                     stream=True))  # fmt: skip
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert (
            streamed == choice.message.content and chunks[-1].choices[0].finish_reason == choice.finish_reason
        )
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="other", messages=messages, max_tokens=4)
        assert client.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                              response_format={"type": "text"}).choices  # fmt: skip
        too_long = [{"role": "user", "content": "hi " * (model.config.max_position_embeddings + 10)}]
        with pytest.raises(openai.BadRequestError) as caught:  # OpenAI's code for a conversation too long
            client.chat.completions.create(model="tiny", messages=too_long)
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
        assert "This model's maximum context length is" in str(caught.value)  # what litellm matches on
        with pytest.raises(openai.BadRequestError) as caught:  # the Responses API names its own field
            client.responses.create(model="tiny", input=too_long[0]["content"])
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "input")
        unset = {"frequency_penalty": None, "presence_penalty": None, "logit_bias": None}  # null = not given
        assert client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, **unset).choices


def test_tool_calls_come_back_openai_shaped_in_the_sdk_and_streamed(tokenizer):
    text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, text), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "What is 17*23?"}]
        answer = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        (choice,) = answer.choices
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.function.name == "calculator" and json.loads(call.function.arguments) == {
            "expression": "17*23"
        }
        chunks = list(
            client.chat.completions.create(model="policy", messages=messages, tools=TOOLS, stream=True)
        )
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert [tc.function.name for tc in calls] == ["calculator"]
        no_tools = client.chat.completions.create(model="policy", messages=messages)
        assert no_tools.choices[0].message.tool_calls is None  # without tools the text is the answer


def assert_trainer_logprobs_are_the_sampled_ones(model, completions, pad_token_id):
    """The trainer's log-probs of (multi-turn) sequences equal the recorded ones on every sampled token;
    returns them and the sampled-token mask."""
    batch = collate([TrainSequence(c, 1.0, 0) for c in completions], pad_token_id)
    with torch.no_grad():
        logp_RC = completion_logprobs(
            model, batch.prompt_ids_GP, batch.prompt_mask_GP, batch.row_group_R, batch.completion_ids_RC,
            batch.completion_mask_RC, 1.0, attention_mask_RC=batch.attention_mask_RC,
        )  # fmt: skip
    mask_RC = batch.completion_mask_RC.bool()
    assert torch.allclose(logp_RC[mask_RC], batch.sampler_logprobs_RC[mask_RC], atol=1e-4)
    return logp_RC, mask_RC


def _two_turn_agent(row, client):
    """Ask, then tell the model to try again: two calls, the second continuing the first."""
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    for _ in range(2):
        reply = client.chat.completions.create(
            model="policy", messages=messages, max_tokens=3, temperature=0.0
        )
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "user", "content": "Try again."})
    row.messages = messages[:-1]
    return row


def _prompts():
    return [
        Prompt(f"p{i}", ({"role": "user", "content": f"Say {i}"},), {"ground_truth": i}) for i in range(2)
    ]


def test_agent_rollouts_train_on_exactly_the_sampled_tokens(tiny_model, tokenizer):
    model, _ = tiny_model
    inner = LocalEngine(model, tokenizer)
    engine = AgentEngine(inner, Agent(_two_turn_agent, False, "test"), max_context=512)
    params = SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=10, seed=5)
    try:
        groups = engine.generate(_prompts(), params)
        again = engine.generate(_prompts()[:1], params)
    finally:
        engine.close()
    assert [len(g) for g in groups] == [2, 2]
    recorded = []
    for group in groups:
        for c in group:
            assert not c.error and not c.continuations and c.agent_metrics["turns"] == 2
            assert 0 in c.completion_mask and c.sampled_tokens == sum(c.completion_mask)
            assert [m["role"] for m in c.conversation] == ["user", "assistant", "user", "assistant"]
            recorded.append(c)
    # same seed, same rollout ids: the same tokens (sampling is a pure function of seed and rollout)
    assert again[0][0].completion_token_ids == groups[0][0].completion_token_ids
    # the trainer's log-probs of the multi-turn sequences equal the recorded ones on every sampled token
    logp_RC, mask_RC = assert_trainer_logprobs_are_the_sampled_ones(model, recorded, tokenizer.pad_token_id)
    assert (logp_RC[~mask_RC] == 0).all()


def test_agents_that_fail_are_marked_and_the_rest_go_on(tiny_model, tokenizer):
    model, _ = tiny_model

    def flaky(row, client):
        if row.ground_truth == 0:
            raise ValueError("tool crashed")
        return _two_turn_agent(row, client)

    async def slow(row, client):
        import asyncio

        await asyncio.sleep(30)

    def silent(row, client):
        return row

    async def cancelled_inside(row, client):
        import asyncio

        asyncio.current_task().cancel()  # what anyio does to the task whose MCP HTTP connection failed
        await asyncio.sleep(1)

    params = SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=1)
    cases = [(Agent(flaky, False, "t"), "ValueError: tool crashed"), (Agent(slow, True, "t"), "--agent-timeout"),
             (Agent(silent, False, "t"), "no call"), (Agent(cancelled_inside, True, "t"), "cancelled from inside")]  # fmt: skip
    for agent, reason in cases:
        engine = AgentEngine(LocalEngine(model, tokenizer), agent, agent_timeout=1.0)
        start = time.monotonic()
        try:
            groups = engine.generate(_prompts(), params)
        finally:
            engine.close()
        assert time.monotonic() - start < 20
        assert all(reason in c.error for c in groups[0])
        if agent.fn is flaky:
            assert all(not c.error and c.completion_token_ids for c in groups[1])


def test_the_context_budget_ends_a_rollout_as_truncated(tiny_model, tokenizer):
    model, _ = tiny_model
    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(_two_turn_agent, False, "t"), max_context=48)
    try:
        (group,) = engine.generate(
            _prompts()[:1], SamplingParams(n=1, temperature=1.0, max_tokens=12, seed=2)
        )
    finally:
        engine.close()
    (c,) = group
    assert c.agent_metrics["truncated"] == 1.0 and "context budget" in c.error
    assert (
        c.finish_reason == "length"
    )  # cut, as one cut at --max-output-tokens (the overlong penalty, metrics)


def test_a_job_with_the_example_openai_agent_trains_a_round(tiny_model_dir, tmp_path, capsys):
    from openrft.cli import main
    from openrft.tracking.sinks import read_jsonl

    fixtures = Path(__file__).parent / "train_fixtures" / "evaluators.py"
    code = main([
        "rftj", "create", "--base-model", str(tiny_model_dir), "--dataset", "arithmetic:count=4",
        "--evaluator", f"{fixtures}::spread", "--agent", f"{EXAMPLE_AGENT}::agent", "--n", "2",
        "--max-output-tokens", "16", "--chunk-size", "2", "--epochs", "1", "--temperature", "1.0", "--seed", "3",
        "--quiet", "--output-model", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    steps = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss/policy" in r]
    assert steps and steps[0]["agent/turns"] >= 1 and "agent/tool_calls" in steps[0]
    assert steps[0]["mismatch/kl"] < 1e-6  # the agent's tokens are the trainer's tokens


def test_agents_run_against_an_endpoint_engine_too(tiny_model, tokenizer):
    from openrft.rollout.endpoint import EndpointEngine

    model, _ = tiny_model
    with BackgroundServer(create_app(LocalEngine(model, tokenizer), "tiny")) as server:
        inner = EndpointEngine(server.url, tokenizer, "tiny")
        engine = AgentEngine(inner, Agent(_two_turn_agent, False, "test"), max_context=512)
        try:
            (group,) = engine.generate(
                _prompts()[:1], SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=4)
            )
        finally:
            engine.close()
    for c in group:
        assert not c.error and c.agent_metrics["turns"] == 2 and 0 in c.completion_mask
    assert_trainer_logprobs_are_the_sampled_ones(model, group, tokenizer.pad_token_id)


def test_serve_reads_only_text_leaves_the_stop_string_out_and_gives_whole_token_bytes(tokenizer):
    text = "二加二 😀</answer>"
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, text), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "Add."}]
        answer = client.chat.completions.create(
            model="policy", messages=messages, stop=["</answer>"], logprobs=True
        )
        (choice,) = answer.choices
        assert choice.message.content == "二加二 😀"  # as OpenAI: the matched stop string is left out
        joined = b"".join(bytes(t.bytes) for t in choice.logprobs.content).decode()
        assert joined == text + tokenizer.eos_token  # a character split over tokens joins whole again
        image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
        with pytest.raises(openai.BadRequestError, match="'image_url' content part cannot be read"):
            client.chat.completions.create(
                model="policy",
                messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}],
            )


def test_parallel_tool_calls_false_leaves_one_tool_call(tokenizer):
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>'
    text = call % "1+1" + "\n" + call % "2+2"
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, text), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "Add twice."}]
        both = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        one = client.chat.completions.create(
            model="policy", messages=messages, tools=TOOLS, parallel_tool_calls=False
        )
    assert len(both.choices[0].message.tool_calls) == 2 and len(one.choices[0].message.tool_calls) == 1


def test_a_reply_cut_at_the_token_limit_says_length_and_keeps_the_cut_call_as_text(tokenizer):
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>'
    cut = '<tool_call>\n{"name": "calculator", "argum'
    engine = ScriptedEngine(tokenizer, call + "\n" + cut, finish="length")
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "Add twice."}]
        (choice,) = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS).choices
        assert choice.finish_reason == "length"  # not "tool_calls": the reply did not end
        assert len(choice.message.tool_calls) == 1 and choice.message.content == cut
        chunks = list(client.chat.completions.create(model="policy", messages=messages, tools=TOOLS,
                                                     stream=True, logprobs=True))  # fmt: skip
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert len(streamed) == len(tokenizer(call + "\n" + cut, add_special_tokens=False)["input_ids"])


def test_a_reply_of_tool_calls_only_streams_its_logprobs(tokenizer):
    text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, text), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        kwargs = {
            "model": "policy",
            "messages": [{"role": "user", "content": "?"}],
            "tools": TOOLS,
            "logprobs": True,
        }
        whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = [
        t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert streamed == [t.token for t in whole] and len(whole) > 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""


def test_errors_and_refusals_are_shaped_as_openai_shapes_them(tokenizer):
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "ok"), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        answer = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}])
        assert answer._request_id.startswith("req_")  # the x-request-id header, as OpenAI sends it
        model = client.models.retrieve("policy")
        assert model.id == "policy" and isinstance(model.created, int) and model.created > 0
        assert [m.created for m in client.models.list().data] == [model.created]
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("nope")
        assert missing.value.code == "model_not_found" and missing.value.type == "invalid_request_error"
        user = {"role": "user", "content": "hi"}
        refused = [
            ("messages[0].role", {"messages": [{"role": "bogus", "content": "hi"}]}),
            ("messages[1].tool_call_id", {"messages": [user, {"role": "tool", "content": "4"}]}),
            ("temperature", {"messages": [user], "temperature": 5}),
            ("top_logprobs", {"messages": [user], "top_logprobs": 3}),  # without logprobs
            ("top_logprobs", {"messages": [user], "logprobs": True, "top_logprobs": 2}),  # not recorded
            ("stream_options", {"messages": [user], "stream_options": {"include_usage": True}}),
            ("functions", {"messages": [user], "functions": [TOOLS[0]["function"]]}),
            ("frequency_penalty", {"messages": [user], "frequency_penalty": 1.5}),  # not applied: refused
            ("logit_bias", {"messages": [user], "logit_bias": {"9466": -100}}),
            ("tool_choice", {"messages": [user], "tools": TOOLS, "tool_choice": "required"}),
        ]
        for param, kwargs in refused:
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model="policy", **kwargs)
            error = caught.value
            assert (error.param, error.type, error.code) == (param, "invalid_request_error", None), param
        body = httpx.post(server.url + "/no/such/route", json={}).json()
        assert (
            body["error"]["type"] == "invalid_request_error" and "/no/such/route" in body["error"]["message"]
        )


def _one_call_agent(row, client):
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    reply = client.chat.completions.create(model="policy", messages=messages, temperature=1.0)
    row.messages = [*messages, reply.choices[0].message.model_dump(exclude_none=True)]
    return row


def test_a_reply_the_context_budget_cuts_ends_the_rollout_as_truncated(tiny_model, tokenizer):
    """Room for 5 of the 12 tokens a reply may have: the reply stops at 5 and the rollout is marked cut
    (the other context test's budget leaves no room at all)."""
    model, _ = tiny_model
    prompt = _prompts()[:1]
    text = tokenizer.apply_chat_template(list(prompt[0].messages), add_generation_prompt=True, tokenize=False)
    room = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    engine = AgentEngine(
        LocalEngine(model, tokenizer), Agent(_one_call_agent, False, "t"), max_context=room + 5
    )
    try:
        (group,) = engine.generate(
            prompt, SamplingParams(n=1, temperature=1.0, top_k=0, max_tokens=12, seed=3)
        )
    finally:
        engine.close()
    (c,) = group
    assert c.sampled_tokens == 5 and c.finish_reason == "length" and c.agent_metrics["truncated"] == 1.0
    assert "--max-context-length" in c.error


SEEN: list[str] = []
ADD = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


async def _twin_calls_agent(row, client):
    """Two calls at once with the same messages: each must sample with a seed of its own."""
    import asyncio

    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    replies = await asyncio.gather(*(client.chat.completions.create(
        model="policy", messages=messages, max_tokens=6, temperature=1.0) for _ in range(2)))  # fmt: skip
    SEEN[:] = [r.choices[0].message.content for r in replies]
    row.messages = [*messages, replies[-1].choices[0].message.model_dump(exclude_none=True)]
    return row


def _none_tools_agent(row, client):
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    reply = client.chat.completions.create(model="policy", messages=messages, tools=ADD, tool_choice="none",
                                           max_tokens=6, temperature=1.0)  # fmt: skip
    row.messages = [*messages, reply.choices[0].message.model_dump(exclude_none=True)]
    return row


def test_calls_of_one_rollout_get_their_own_seeds_and_tool_choice_none_shows_no_tools(tiny_model, tokenizer):
    model, _ = tiny_model
    params = SamplingParams(n=1, temperature=1.0, top_k=0, max_tokens=6, seed=4)

    def run(agent):
        engine = AgentEngine(LocalEngine(model, tokenizer), agent, max_context=512)
        try:
            return engine.generate(_prompts()[:1], params)[0][0]
        finally:
            engine.close()

    run(Agent(_twin_calls_agent, True, "t"))
    assert len(SEEN) == 2 and SEEN[0] != SEEN[1]  # the same prompt twice, two different samples
    no_tools, plain = run(Agent(_none_tools_agent, False, "t")), run(Agent(_one_call_agent, False, "t"))
    assert no_tools.prompt_token_ids == plain.prompt_token_ids  # "none": the tools are not in the prompt
