"""The Responses API (``/v1/responses``) through the openai SDK: text, tool calls, stored
conversations, the event stream, and agent rollouts that use it."""

from __future__ import annotations

import json

import openai
import pytest
from test_agents import ScriptedEngine, assert_trainer_logprobs_are_the_sampled_ones

from openrft.records import Prompt, SamplingParams
from openrft.rollout.agents import Agent, AgentEngine
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import BackgroundServer, create_app

TOOLS = [{"type": "function", "name": "calculator", "description": "Evaluate arithmetic.",
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}]  # fmt: skip
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'


def test_text_answers_usage_logprobs_seeds_and_the_stream(tiny_model, tokenizer):
    model, _ = tiny_model
    with BackgroundServer(create_app(LocalEngine(model, tokenizer), "tiny")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        first = client.responses.create(model="tiny", input="Hello", instructions="Be brief.", max_output_tokens=6,
                                        include=["message.output_text.logprobs"], extra_body={"seed": 3})  # fmt: skip
        assert first.object == "response" and first.model == "tiny" and first.instructions == "Be brief."
        (message,) = first.output
        assert message.type == "message" and message.role == "assistant"
        (part,) = message.content
        assert part.type == "output_text" and first.output_text == part.text
        assert first.usage.output_tokens == len(part.logprobs) <= 6 and first.usage.input_tokens > 0
        assert first.usage.input_tokens_details.model_dump() == {"cached_tokens": 0, "cache_write_tokens": 0}
        assert (first.status, first.incomplete_details.reason) == ("incomplete", "max_output_tokens") or (
            first.status == "completed" and first.usage.output_tokens < 6
        )
        again = client.responses.create(model="tiny", input="Hello", instructions="Be brief.", max_output_tokens=6,
                                        extra_body={"seed": 3})  # fmt: skip
        assert again.output_text == first.output_text  # a seed fixes the answer
        events = list(client.responses.create(model="tiny", input="Hello", instructions="Be brief.",
                                              max_output_tokens=6, extra_body={"seed": 3}, stream=True))  # fmt: skip
        assert events[0].type == "response.created" and events[-1].type == f"response.{first.status}"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == first.output_text
        assert events[-1].response.output_text == first.output_text
        # the instructions are the system message: the same prompt as a chat request with one
        chat = client.chat.completions.create(model="tiny", max_tokens=6, seed=3, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])  # fmt: skip
        assert chat.choices[0].message.content == first.output_text
        assert chat.usage.prompt_tokens == first.usage.input_tokens


def test_tool_calls_round_trip_by_items_and_by_previous_response_id(tokenizer):
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, CALL), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        first = client.responses.create(model="policy", input="What is 17*23?", tools=TOOLS)
        assert first.status == "completed"
        (call,) = first.output
        assert call.type == "function_call" and call.name == "calculator" and call.call_id.startswith("call_")
        assert json.loads(call.arguments) == {"expression": "17*23"}
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "391"}
        # the whole conversation sent back, output items as they came (what OpenAI's guide does)
        items = [
            {"role": "user", "content": "What is 17*23?"},
            *[o.model_dump() for o in first.output],
            result,
        ]
        by_items = client.responses.create(model="policy", input=items, tools=TOOLS)
        by_id = client.responses.create(
            model="policy", previous_response_id=first.id, input=[result], tools=TOOLS
        )
        assert by_items.usage.input_tokens == by_id.usage.input_tokens > first.usage.input_tokens
        assert client.responses.retrieve(by_id.id).output[0].call_id == by_id.output[0].call_id
        with client.responses.stream(model="policy", input="What is 17*23?", tools=TOOLS) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        assert "response.function_call_arguments.done" in kinds and final.output[0].name == "calculator"
        listed = client.responses.input_items.list(by_id.id)
        assert [i.type for i in listed.data] == ["function_call_output"]
        referenced = client.responses.create(model="policy", tools=TOOLS, input=[
            {"role": "user", "content": "What is 17*23?"}, {"type": "item_reference", "id": first.output[0].id}, result])  # fmt: skip
        assert referenced.usage.input_tokens == by_items.usage.input_tokens
        client.responses.delete(first.id)
        with pytest.raises(openai.BadRequestError, match="not found") as caught:
            client.responses.create(model="policy", previous_response_id=first.id, input=[result])
        assert caught.value.body["code"] == "previous_response_not_found"
        with pytest.raises(openai.BadRequestError, match="constrained decoding"):  # a scripted engine
            client.responses.create(model="policy", input="x", text={"format": {
                "type": "json_schema", "name": "a", "schema": {"type": "object"}}})  # fmt: skip
        for kwargs in ({"temperature": 3}, {"reasoning": {"effort": "high"}}):  # a 400, never a 500
            with pytest.raises(openai.BadRequestError) as caught:
                client.responses.create(model="policy", input="x", **kwargs)
            assert caught.value.param == next(iter(kwargs))
        with pytest.raises(openai.BadRequestError, match="only function tools"):
            client.responses.create(model="policy", input="x", tools=[{"type": "web_search"}])
        with pytest.raises(openai.BadRequestError, match="input_image"):
            client.responses.create(model="policy", input=[{"role": "user", "content": [
                {"type": "input_image", "image_url": "https://example.com/x.png"}]}])  # fmt: skip
        stored = client.responses.create(model="policy", input="Hi", store=False)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(stored.id)


def _responses_agent(row, client):
    """Two turns through the Responses API, the second continuing the first by its id."""
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    first = client.responses.create(model="policy", input=messages, max_output_tokens=3, temperature=0.0)
    second = client.responses.create(model="policy", previous_response_id=first.id, input="Try again.",
                                     max_output_tokens=3, temperature=0.0)  # fmt: skip
    row.messages = [*messages, {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "Try again."}, {"role": "assistant", "content": second.output_text}]  # fmt: skip
    return row


def test_an_agent_on_the_responses_api_trains_on_one_sequence_of_its_exact_tokens(tiny_model, tokenizer):
    model, _ = tiny_model
    engine = AgentEngine(
        LocalEngine(model, tokenizer), Agent(_responses_agent, False, "test"), max_context=512
    )
    prompts = [Prompt(f"p{i}", ({"role": "user", "content": f"Say {i}"},), {}) for i in range(2)]
    try:
        groups = engine.generate(
            prompts, SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=10, seed=5)
        )
    finally:
        engine.close()
    sequences = [c for group in groups for c in group]
    for c in sequences:  # the second call continued the first: one sequence, the user's turn masked
        assert not c.error and not c.continuations and c.agent_metrics["turns"] == 2
        assert 0 in c.completion_mask and c.sampled_tokens == sum(c.completion_mask)
    assert_trainer_logprobs_are_the_sampled_ones(model, sequences, tokenizer.pad_token_id)


TWO_CALLS = CALL + "\n" + CALL.replace("17*23", "2+2")


def test_parallel_calls_sent_back_one_output_after_each_call_rejoin_their_turn(tokenizer):
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, TWO_CALLS), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        question = {"role": "user", "content": "What are 17*23 and 2+2?"}
        first = client.responses.create(model="policy", input=[question], tools=TOOLS)
        a, b = (o.model_dump() for o in first.output)
        out = [
            {"type": "function_call_output", "call_id": c["call_id"], "output": r}
            for c, r in ((a, "391"), (b, "4"))
        ]
        grouped = client.responses.create(model="policy", input=[question, a, b, *out], tools=TOOLS)
        interleaved = client.responses.create(
            model="policy", input=[question, a, out[0], b, out[1]], tools=TOOLS
        )
        assert interleaved.usage.input_tokens == grouped.usage.input_tokens  # one assistant turn, as written


def test_logprobs_belong_to_the_text_and_its_tokens_only(tokenizer):
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "Sure."), "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        answer = client.responses.create(model="policy", input="Hi", include=["message.output_text.logprobs"])
        (part,) = answer.output[0].content
        assert "".join(lp.token for lp in part.logprobs) == "Sure."  # the end-of-turn token left out
        assert answer.usage.output_tokens == len(part.logprobs) + 1
