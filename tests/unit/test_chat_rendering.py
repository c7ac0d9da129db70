"""Rendering chat histories for a template that knows nothing of tools, and reading Hermes calls."""

from __future__ import annotations

import json

from test_chat import TOOLS

from openrft.rollout.chat import HermesFormat, render_chat


def _call(call_id: str, expression: str) -> dict:
    arguments = json.dumps({"expression": expression})
    return {"id": call_id, "type": "function", "function": {"name": "calculator", "arguments": arguments}}


def test_assistant_text_before_its_tool_calls_is_kept_when_the_history_is_rendered(tokenizer):
    # the re-rendered turn must read as the model wrote it, or the next prompt no longer extends the last
    messages = [
        {"role": "user", "content": "What is 17*23?"},
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [_call("c1", "17*23")]},
        {"role": "tool", "tool_call_id": "c1", "content": "391"},
    ]
    text = render_chat(tokenizer, messages, TOOLS)
    assert (
        '<|im_start|>assistant\nLet me compute.\n<tool_call>\n{"name": "calculator", '
        '"arguments": {"expression": "17*23"}}\n</tool_call><|im_end|>'
    ) in text


def test_consecutive_tool_results_share_one_user_turn(tokenizer):
    messages = [
        {"role": "user", "content": "17*23 and 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("c1", "17*23"), _call("c2", "2+2")]},
        {"role": "tool", "tool_call_id": "c1", "content": "391"},
        {"role": "tool", "tool_call_id": "c2", "content": "4"},
    ]
    text = render_chat(tokenizer, messages, TOOLS)
    after_calls = text.rsplit("</tool_call><|im_end|>\n", 1)[1]
    assert after_calls == (
        "<|im_start|>user\n<tool_response>\n391\n</tool_response>\n"
        "<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert text.count("<|im_start|>user\n") == 2  # the question and the one turn of results


def test_a_developer_message_renders_as_the_system_message(tokenizer):
    user = {"role": "user", "content": "hi"}
    developer = render_chat(tokenizer, [{"role": "developer", "content": "Be terse."}, user])
    system = render_chat(tokenizer, [{"role": "system", "content": "Be terse."}, user])
    assert developer == system
    assert "developer" not in developer
    with_tools = render_chat(tokenizer, [{"role": "developer", "content": "Be terse."}, user], TOOLS)
    assert with_tools.startswith("<|im_start|>system\nBe terse.\n\n# Tools")


def test_a_call_whose_arguments_are_not_an_object_is_not_a_call():
    fmt = HermesFormat()
    for arguments in ("[1]", '"x"', "3", "null"):
        text = '<tool_call>{"name": "f", "arguments": ' + arguments + "}</tool_call>"
        reply = fmt.parse(text)
        assert reply.tool_calls == [], arguments
        assert len(reply.malformed) == 1 and reply.content == text
