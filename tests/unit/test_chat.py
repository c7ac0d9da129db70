"""Chat rendering with tools, Hermes tool-call parsing, and merging a rollout's calls into sequences."""

from __future__ import annotations

import json

import pytest

from openrft.rollout.chat import HermesFormat, render_chat, template_takes_tools
from openrft.rollout.trajectories import (
    CallRecord,
    RolloutLog,
    continues,
    joining_text,
    trajectory_completion,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]


def test_hermes_parses_calls_and_keeps_unreadable_ones_visible():
    fmt = HermesFormat()
    reply = fmt.parse('Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n'
                      '</tool_call>')  # fmt: skip
    assert reply.content == "Let me compute."
    (call,) = reply.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "17*23"}
    assert reply.message()["tool_calls"] == [call]

    two = fmt.parse(
        '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b"}</tool_call>'
    )
    assert [c["function"]["name"] for c in two.tool_calls] == ["a", "b"] and two.content is None

    broken = fmt.parse('<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>')
    assert broken.tool_calls == [] and "<tool_call>" in broken.content and len(broken.malformed) == 1
    plain = fmt.parse("The answer is 4.")
    assert plain.content == "The answer is 4." and not plain.tool_calls and not plain.malformed


def test_a_template_without_tools_gets_them_in_the_system_message_and_hermes_turns(tokenizer):
    assert not template_takes_tools(tokenizer)  # SmolLM2's template knows nothing of tools
    messages = [
        {"role": "user", "content": "What is 17*23?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "17*23"}'}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "391"},
    ]  # fmt: skip
    text = render_chat(tokenizer, messages, TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools") and '"name": "calculator"' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n'
        in text
    )
    assert "<|im_start|>user\n<tool_response>\n391\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # without tools the conversation renders exactly as the template does
    plain = [{"role": "user", "content": "hi"}]
    assert render_chat(tokenizer, plain) == tokenizer.apply_chat_template(plain, add_generation_prompt=True,
                                                                          tokenize=False)  # fmt: skip


def _call(messages, reply, prompt, completion, finish="stop"):
    return CallRecord(tuple(messages), reply, "", tuple(prompt), tuple(completion),
                      tuple(-0.1 * (i + 1) for i in range(len(completion))), finish, 0)  # fmt: skip


def test_calls_that_continue_each_other_merge_with_the_turns_between_masked_out():
    first = _call(
        [{"role": "user", "content": "q"}], {"role": "assistant", "content": "a"}, [1, 2, 3], [4, 5]
    )
    second = _call([], {"role": "assistant", "content": "b"}, [1, 2, 3, 4, 5, 6, 7], [8])
    fresh = _call([], {"role": "assistant", "content": "c"}, [1, 9], [10, 11], "length")
    log = RolloutLog(calls=[first, second, fresh])
    c = trajectory_completion("p", 2, log, "c")
    assert c.prompt_token_ids == (1, 2, 3) and c.completion_token_ids == (4, 5, 6, 7, 8)
    assert c.completion_mask == (1, 1, 0, 0, 1)
    assert c.logprobs == (-0.1, -0.2, 0.0, 0.0, -0.1)
    (rest,) = c.continuations
    assert (
        rest.prompt_token_ids == (1, 9)
        and rest.completion_token_ids == (10, 11)
        and rest.completion_mask == ()
    )
    assert c.sampled_tokens == 5 and len(c.sequences) == 2 and c.candidate_index == 2
    empty = trajectory_completion("p", 0, RolloutLog())
    assert empty.completion_token_ids == () and empty.sampled_tokens == 0


def test_a_call_continues_the_last_only_after_its_exact_reply():
    asked = [{"role": "user", "content": "q"}]
    reply = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}  # fmt: skip
    record = _call(asked, reply, [1], [2])
    echoed = {**reply, "content": "", "refusal": None}  # as the openai SDK sends it back
    tool = {"role": "tool", "tool_call_id": "x", "content": "2"}
    assert continues(record, [*asked, echoed, tool])
    assert not continues(record, [*asked, echoed])  # nothing new
    assert not continues(record, [{"role": "user", "content": "other"}, echoed, tool])
    changed = {**reply, "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": '{"a": 2}'}}]}
    assert not continues(record, [*asked, changed, tool])
    # the tools shown are part of the prompt: other tools (or none, with tool_choice "none") start afresh
    from dataclasses import replace

    from openrft.rollout.trajectories import tools_key

    weather = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    shown = replace(record, tools=tools_key(weather))
    assert continues(shown, [*asked, echoed, tool], weather) and not continues(shown, [*asked, echoed, tool])
    assert not continues(record, [*asked, echoed, tool], weather)


def test_joining_text_adds_only_what_the_model_did_not_write():
    assert joining_text("answer<|im_end|>", "<|im_end|>\n") == "\n"
    assert joining_text("cut off mid", "<|im_end|>\n") == "<|im_end|>\n"
    assert joining_text("x<|im_", "<|im_end|>\n") == "end|>\n"


def test_answered_tool_call_turns_read_as_the_text_the_model_writes():
    from openrft.rollout.chat import HermesFormat, tool_calls_text

    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": "Zürich"}'}}]
    text = tool_calls_text(calls)
    parsed = HermesFormat().parse(text)
    assert (
        parsed.tool_calls[0]["function"]["name"] == "f"
        and "Zürich" in parsed.tool_calls[0]["function"]["arguments"]
    )


def test_responses_input_items_become_chat_messages():
    from openrft.rollout.chat_api import HTTPError
    from openrft.rollout.responses_api import chat_tools, input_items, input_messages

    items = [
        {"role": "developer", "content": "Use tools."},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"x": 1}'},
        {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "1"},
    ]
    assert input_messages(items) == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Let me see.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
    ]  # fmt: skip
    lone_call = input_messages([{"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}])
    assert lone_call[0]["role"] == "assistant" and lone_call[0]["content"] is None
    assert chat_tools([{"type": "function", "name": "f", "parameters": {"type": "object"}}]) == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]  # the Responses API's function tools are strict unless they say otherwise
    with pytest.raises(HTTPError, match="role 'tool'"):
        input_messages([{"role": "tool", "content": "x"}])
    with pytest.raises(HTTPError, match="Item with id 'x' not found"):
        input_items([{"type": "item_reference", "id": "x"}])
    with pytest.raises(HTTPError, match="computer_call"):
        input_messages([{"type": "computer_call", "id": "c"}])
    assert input_items("hi")[0]["content"] == [{"type": "input_text", "text": "hi"}]


def test_a_stored_item_outlives_the_responses_that_only_referenced_it():
    from openrft.rollout.response_store import ResponseStore, Stored

    store = ResponseStore()
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}
    store.put("resp_a", Stored([], {"output": [call]}, []))
    store.put("resp_b", Stored([], {"output": []}, [call]))  # resp_b's input referred to resp_a's call
    store.delete("resp_b")
    assert store.item("fc_1") is call and store.call_owner("call_1") == "resp_a"
    store.delete("resp_a")
    assert store.item("fc_1") is None and store.call_owner("call_1") is None


def test_a_default_system_prompt_yields_to_a_system_or_developer_message():
    from openrft.rollout.prompts import with_system

    user = {"role": "user", "content": "hi"}
    assert with_system([user], "Be brief.") == [{"role": "system", "content": "Be brief."}, user]
    for role in ("system", "developer"):
        own = [{"role": role, "content": "Be kind."}, user]
        assert with_system(own, "Be brief.") == own
    assert with_system([user], None) == [user]


def test_a_reply_cut_off_inside_the_end_marker_s_text_is_closed_by_the_end_token(tokenizer):
    """A reply cut at the token limit after "<" or "<|im" did not begin the template's <|im_end|> (one
    special token): the next call's prompt closes the turn with that token, as the template would."""
    from types import SimpleNamespace

    from openrft.rollout.chat_api import _encode

    user, again = {"role": "user", "content": "Say hi"}, {"role": "user", "content": "Again"}
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for sampled, finish in (("Hi <", "length"), ("Hi <|im", "length"), ("Hi", "stop")):
        ids = tokenizer(sampled, add_special_tokens=False)["input_ids"] + ([end] if finish == "stop" else [])
        previous = SimpleNamespace(messages=[user], reply={"role": "assistant", "content": sampled}, tools="",
                                   prompt_token_ids=prompt_ids, completion_token_ids=ids)  # fmt: skip
        recorder = SimpleNamespace(log=lambda rollout_id, p=previous: SimpleNamespace(calls=[p]))
        messages = [user, {"role": "assistant", "content": sampled}, again]
        encoded = _encode(tokenizer, messages, None, None, recorder, "r")
        assert encoded[: len(prompt_ids) + len(ids)] == prompt_ids + ids  # the sampled tokens, as sampled
        gap = encoded[len(prompt_ids) + len(ids) :]
        if finish == "stop":  # the model wrote the end token: the gap goes on after it
            assert end not in gap[:1]
        else:
            assert gap[0] == end, tokenizer.convert_ids_to_tokens(gap[:6])
        assert tokenizer.decode(gap).endswith("Again<|im_end|>\n<|im_start|>assistant\n")

    class Unlisted:  # the end token an added special token only, not in all_special_ids (as Phi-3's <|end|>)
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

        all_special_ids = [i for i in tokenizer.all_special_ids if i != end]

    messages = [user, {"role": "assistant", "content": "Hi"}, again]
    assert _encode(Unlisted(), messages, None, None, recorder, "r") == encoded  # one end token, not two


def test_an_agent_s_replies_cut_at_the_token_limit_are_counted_whichever_turn_they_were():
    from openrft.records import Prompt
    from openrft.rollout.agents import agent_completion
    from openrft.rollout.trajectories import RolloutLog

    user = {"role": "user", "content": "q"}
    cut, done = {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}
    log = RolloutLog(calls=[_call([user], cut, [1], [2, 3], "length"), _call([user], done, [1], [4], "stop")])
    c = agent_completion(Prompt("p", (user,)), 0, log, [user, cut, user, done], "")
    assert c.agent_metrics["cut_turns"] == 1.0


def test_a_longer_call_that_does_not_continue_the_last_starts_its_own_sequence():
    """Only an exact token prefix continues: an agent that rewrote its history sends a prompt the model
    never saw as its context, however long it is."""
    first = _call(
        [{"role": "user", "content": "q"}], {"role": "assistant", "content": "a"}, [1, 2, 3], [4, 5]
    )
    rewritten = _call([], {"role": "assistant", "content": "c"}, [1, 9, 9, 9, 9, 9, 9, 9], [10, 11])
    c = trajectory_completion("p", 0, RolloutLog(calls=[first, rewritten]), "c")
    assert c.completion_token_ids == (4, 5) and len(c.continuations) == 1
    assert c.continuations[0].prompt_token_ids == (1, 9, 9, 9, 9, 9, 9, 9)


def test_a_rollout_s_finish_and_policy_version_come_from_its_whole_log():
    from dataclasses import replace

    first = replace(_call([{"role": "user", "content": "q"}], {"role": "assistant", "content": "a"}, [1], [2]),
                    policy_version=1)  # fmt: skip
    second = replace(_call([], {"role": "assistant", "content": "b"}, [1, 2, 3], [4]), policy_version=2)
    c = trajectory_completion("p", 0, RolloutLog(calls=[first, second]), "b")
    assert c.policy_version == 1 and c.finish_reason == "stop"  # the oldest policy that sampled any of it
    cut = trajectory_completion("p", 0, RolloutLog(calls=[first, second], truncated=True), "b")
    assert cut.finish_reason == "length"  # the context budget ended it


def test_an_agent_s_completion_is_its_last_reply_and_its_row_names_the_prompt():
    from openrft.records import Prompt
    from openrft.rollout.agents import _row_fields, agent_completion

    user = {"role": "user", "content": "q"}
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}  # fmt: skip
    answer = {"role": "assistant", "content": "<answer>4</answer>"}
    log = RolloutLog(calls=[_call([user], call, [1], [2]), _call([], answer, [1, 2, 3], [5])])
    messages = [user, call, {"role": "tool", "content": "4", "tool_call_id": "a"}, answer]
    c = agent_completion(Prompt("p7", (user,)), 0, log, messages, "")
    assert c.text == "<answer>4</answer>"  # what the evaluator scores: not the first reply (a tool call)
    assert _row_fields(Prompt("p7", (user,)))["input_metadata"]["row_id"] == "p7"
