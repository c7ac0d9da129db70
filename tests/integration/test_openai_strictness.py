"""Requests the OpenAI API refuses are refused here too, each with the field named (``param``), so an
agent that works against this server works against OpenAI; and what OpenAI accepts works as it does
there: a reply whose text came after its calls, sent back as Responses items, is one assistant turn, and
an agent that catches a refusal for a conversation past its budget goes on unharmed."""

from __future__ import annotations

import openai
import pytest
from test_agents import ScriptedEngine, _prompts

from openrft.records import SamplingParams
from openrft.rollout.agents import Agent, AgentEngine
from openrft.rollout.local import LocalEngine
from openrft.rollout.responses_api import input_messages
from openrft.rollout.server import BackgroundServer, create_app

CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
ADD = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def _refused(client, param: str, **request) -> str:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="policy", max_tokens=4, **request)
    assert refused.value.param == param, refused.value.message
    return refused.value.body["message"]


def test_tool_results_in_another_order_than_openai_allows_are_refused(tokenizer):
    user = {"role": "user", "content": "Add."}
    asked = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "2"}
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "Two."), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        assert 'no call "call_1" is waiting' in _refused(
            client, "messages[1].tool_call_id", messages=[user, answer]
        )
        unanswered = _refused(client, "messages[1].tool_calls", messages=[user, asked, user])
        assert "must be followed by a 'tool' message answering each call" in unanswered
        _refused(client, "messages[1].tool_calls", messages=[user, asked])  # never answered at all
        _refused(client, "messages[3].tool_call_id", messages=[user, asked, answer, answer])  # answered twice
        reply = client.chat.completions.create(model="policy", max_tokens=4, messages=[user, asked, answer])
        assert reply.choices[0].message.content == "Two."


def test_more_than_four_stop_strings_and_a_bad_function_name_are_refused(tokenizer):
    user = [{"role": "user", "content": "Hi."}]
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "Hello."), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        assert "at most 4" in _refused(client, "stop", messages=user, stop=["a", "b", "c", "d", "e"])
        client.chat.completions.create(model="policy", max_tokens=4, messages=user, stop=["a", "b", "c", "d"])
        for name in ("bad name!", "", "x" * 65):
            tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}]
            _refused(client, "tools[0].function.name", messages=user, tools=tools)
        client.chat.completions.create(model="policy", max_tokens=4, messages=user, tools=ADD)
        # a tool that is not a function is refused, never written into the prompt as it came
        assert "only function tools" in _refused(
            client, "tools[1].type", messages=user, tools=[*ADD, {"type": "web_search"}]
        )
        _refused(client, "tools[0].function", messages=user, tools=[{"type": "function"}])


def test_a_reply_whose_text_came_after_its_calls_is_one_assistant_turn_again():
    items = [
        {"type": "message", "role": "user", "content": "Add twice."},
        {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "add", "arguments": "{}"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "<tool_call>"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call_output", "call_id": "c2", "output": "2"},
    ]
    user, turn, *results = input_messages(items)
    assert turn["role"] == "assistant" and turn["content"] == "<tool_call>"
    assert [c["id"] for c in turn["tool_calls"]] == ["c1", "c2"] and len(results) == 2
    text_first = [items[0], items[3], items[1]]  # text, then a call: one turn as well
    assert len(input_messages(text_first)) == 2


def _recovering_agent(row, client):
    """A conversation past the budget is refused; the agent catches it and asks again, shorter."""
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    try:
        client.chat.completions.create(
            model="policy", messages=[*messages, {"role": "user", "content": "x " * 400}]
        )
    except openai.BadRequestError as refused:
        assert refused.code == "context_length_exceeded"
    reply = client.chat.completions.create(model="policy", messages=messages)
    row.messages = [*messages, reply.choices[0].message.model_dump(exclude_none=True)]
    return row


def _two_candidates_agent(row, client):
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    try:
        client.chat.completions.create(model="policy", messages=messages, n=2)
    except openai.BadRequestError as refused:
        assert refused.param == "n"
        raise
    return row


def test_a_refused_call_past_the_budget_does_not_spoil_the_rollout_the_agent_goes_on_with(
    tiny_model, tokenizer
):
    model, _ = tiny_model
    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(_recovering_agent, False, "t"), max_context=120)
    try:
        (group,) = engine.generate(_prompts()[:1], SamplingParams(n=1, temperature=1.0, max_tokens=4, seed=3))
    finally:
        engine.close()
    (c,) = group
    assert not c.error and c.agent_metrics["truncated"] == 0.0 and c.sampled_tokens >= 1
    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(_two_candidates_agent, False, "t"))
    try:
        (group,) = engine.generate(_prompts()[:1], SamplingParams(n=1, temperature=1.0, max_tokens=4, seed=3))
    finally:
        engine.close()
    assert "n > 1 is refused" in group[0].error


def test_a_reply_with_text_after_its_calls_continues_the_same_way_by_either_route(tokenizer):
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    tools = [{"type": "function", "name": "add", "parameters": {"type": "object"}}]
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, f"{call}\n{call}\nthen"), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        first = client.responses.create(model="policy", input="Add twice.", tools=tools)
        assert [o.type for o in first.output] == ["function_call", "function_call", "message"]
        outputs = [{"type": "function_call_output", "call_id": o.call_id, "output": "2"}
                   for o in first.output if o.type == "function_call"]  # fmt: skip
        by_id = client.responses.create(
            model="policy", previous_response_id=first.id, input=outputs, tools=tools
        )
        whole = [{"role": "user", "content": "Add twice."}, *[o.model_dump() for o in first.output], *outputs]
        by_items = client.responses.create(model="policy", input=whole, tools=tools)
        assert by_items.usage.input_tokens == by_id.usage.input_tokens  # the same prompt, token for token


def test_explicit_nulls_are_defaults_and_completions_refuses_what_it_would_ignore(tokenizer):
    import httpx

    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "Hello."), "policy")) as server:
        base = server.url.rstrip("/")
        chat = httpx.post(f"{base}/chat/completions", json={
            "model": "policy", "messages": [{"role": "user", "content": "Hi"}], "temperature": None,
            "top_p": None, "n": None, "max_tokens": None, "logprobs": None, "stream": None})  # fmt: skip
        assert chat.status_code == 200, chat.text
        plain = {"model": "policy", "prompt": "Hi", "max_tokens": 4}
        nulls = httpx.post(
            f"{base}/completions", json={**plain, "max_tokens": None, "temperature": None, "n": None}
        )
        assert nulls.status_code == 200, nulls.text
        neutral = {
            **plain,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "best_of": 1,
        }  # the endpoint engine's
        assert httpx.post(f"{base}/completions", json=neutral).status_code == 200
        for extra, param in (({"frequency_penalty": 0.5}, "frequency_penalty"), ({"logit_bias": {"1": 5}}, "logit_bias"),
                             ({"echo": True}, "echo"), ({"suffix": "x"}, "suffix"), ({"best_of": 3}, "best_of"),
                             ({"temperature": 3}, "temperature")):  # fmt: skip
            refused = httpx.post(f"{base}/completions", json={**plain, **extra})
            assert refused.status_code == 400 and param in refused.text, (extra, refused.text)


def test_a_reply_that_cannot_fit_the_context_is_refused_not_cut_and_the_listing_says_the_context(
    tiny_model, tokenizer
):
    import httpx

    model, _ = tiny_model
    limit = model.config.max_position_embeddings
    with BackgroundServer(create_app(LocalEngine(model, tokenizer), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        assert {m.model_extra.get("max_model_len") for m in client.models.list().data} == {limit}
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=10**7)  # fmt: skip
        assert refused.value.code == "context_length_exceeded" and refused.value.param == "max_tokens"
        assert f"maximum context length is {limit} tokens" in refused.value.body["message"]
        base = server.url.rstrip("/")
        too_long = httpx.post(
            f"{base}/completions", json={"model": "policy", "prompt": "Hi", "max_tokens": 10**7}
        )
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
        fits = client.completions.create(model="policy", prompt="Hi", max_tokens=3)
        assert fits.usage.completion_tokens <= 3


def test_a_refusal_names_the_parameter_as_openai_does(tokenizer):
    import httpx

    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "Hi."), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        _refused(client, "stop", messages=[{"role": "user", "content": "Hi."}], stop=5)  # not "stop.str"
        _refused(client, "messages[0].content", messages=[{"role": "user", "content": 5}])
        broken = httpx.post(f"{server.url}/chat/completions", content=b'{"model": "policy", "messages": [}',
                            headers={"content-type": "application/json"})  # fmt: skip
        error = broken.json()["error"]
        assert broken.status_code == 400 and error["param"] is None  # not the byte offset
        assert error["message"].startswith("the request body is not valid JSON")


def test_what_a_text_model_without_stored_objects_cannot_do_is_refused_not_ignored(tokenizer):
    user = [{"role": "user", "content": "Hi."}]
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "Hello."), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        assert "no reasoning settings" in _refused(
            client, "reasoning_effort", messages=user, reasoning_effort="low"
        )
        assert "text only" in _refused(client, "modalities", messages=user, modalities=["text", "audio"])
        _refused(client, "audio", messages=user, audio={"voice": "alloy", "format": "wav"})
        _refused(client, "web_search_options", messages=user, web_search_options={})
        client.chat.completions.create(model="policy", max_tokens=4, messages=user, modalities=["text"])
        for param, request in (
            ("prompt", {"prompt": {"id": "pmpt_123", "version": "2"}}),  # its instructions would go missing
            ("background", {"background": True}),
            ("include[1]", {"include": ["message.output_text.logprobs", "bogus.thing"]}),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="policy", input="Hi.", max_output_tokens=4, **request)
            assert refused.value.param == param, refused.value.message
        kept = client.responses.create(model="policy", input="Hi.", max_output_tokens=4, background=False,
                                       include=["reasoning.encrypted_content"])  # fmt: skip
        assert kept.output_text == "Hello."
