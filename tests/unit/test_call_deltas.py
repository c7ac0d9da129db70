"""Tool calls streamed as written: JSON read as it grows and written as ``json.dumps`` writes it, and the
calls' deltas joining to the finished reply's calls."""

from __future__ import annotations

import json
import random

import pytest

from openrft.rollout.call_deltas import CallDeltas, JsonPrefix
from openrft.rollout.chat import tool_format

DOCUMENTS = [
    '{"a":1,"b":[1, 2.50 ,{"c":"x\\"y\\u00e9\\ud83d\\ude00\\n"}],"d":true,"e":null,"f":-1e5,"g":{}, "h":[]}',
    '{ "city" : "Paris" , "n": 0 , "deep": {"x": [[], [{}]], "y": false}}',
    "{}",
    '{"s": "\\/\\\\\\t", "lone": "\\ud83d!", "big": 12345678901234567890, "e": 1E-7}',
    '{"k": NaN, "i": -Infinity, "u": "漢字 🌊"}',
]


def pieces(text: str, rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        j = i + rng.randint(1, 5)
        out.append(text[i:j])
        i = j
    return out


@pytest.mark.parametrize("document", DOCUMENTS)
def test_json_is_written_as_json_dumps_writes_it_and_never_taken_back(document):
    want = json.dumps(json.loads(document), ensure_ascii=False)
    rng = random.Random(0)
    for _ in range(40):
        reader, before = JsonPrefix(), ""
        for piece in pieces(document, rng):
            reader.feed(piece)
            assert reader.text.startswith(before) and want.startswith(reader.text)
            before = reader.text
        assert reader.text == want and not reader.broken


def test_the_outer_objects_values_are_located():
    reader = JsonPrefix()
    reader.feed('{"name": "f", "arguments": {"x": [1, {"name": 2}]}, "other": 3')
    assert reader.value_text("name") == '"f"' and reader.done("arguments")
    assert reader.value_text("arguments") == '{"x": [1, {"name": 2}]}'
    assert reader.value_text("other") == "" and not reader.done("other")  # a number waits for its end


@pytest.mark.parametrize(
    "bad", ['{"a": tru}', '{"a" 1}', '{"a": "x\ny"}', '{"a": [1,]}', '{"a": 1}}', "[1]]"]
)
def test_text_that_is_not_json_is_marked_broken(bad):
    reader = JsonPrefix()
    reader.feed(bad + " ")
    assert reader.broken


def joined(deltas: list[dict]) -> list[dict]:
    """Deltas accumulated by index, as a client does."""
    calls: dict[int, dict] = {}
    for delta in deltas:
        call = calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": ""})
        call["id"] = call["id"] or delta.get("id")
        function = delta.get("function", {})
        call["name"] = call["name"] or function.get("name")
        call["arguments"] += function.get("arguments") or ""
    return [calls[k] for k in sorted(calls)]


def stream(text: str, rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    fmt = tool_format()
    calls, so_far, live = CallDeltas(fmt.call_start, fmt.call_end), "", []
    for piece in pieces(text, rng):
        so_far += piece
        live += calls.update(so_far)
    final = fmt.parse(text).tool_calls
    return live, live + calls.finish(final), final


def test_calls_stream_name_first_then_arguments_and_join_to_the_parsed_reply():
    """Each call whole before the next one starts, as OpenAI streams them: the SDK's stream helper closes a
    call (and, for a strict tool, parses its arguments) as soon as a delta of the next index arrives."""
    text = (
        'Let me check.\n<tool_call>\n{"name": "weather", "arguments": {"city":"Paris", "days":3}}\n'
        '</tool_call>\n<tool_call>\n{"arguments": {"q": "x"}, "name": "search"}\n</tool_call>'
    )
    rng = random.Random(1)
    for _ in range(30):
        live, deltas, final = stream(text, rng)
        assert live[0]["function"] == {"name": "weather", "arguments": ""} and live[0]["id"].startswith(
            "call_"
        )
        assert len([d for d in live if d["index"] == 0]) > 2  # the arguments came in pieces
        assert [(c["name"], c["arguments"]) for c in joined(deltas)] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in final
        ]
        order = [d["index"] for d in deltas]
        assert order == sorted(order), order  # never back to index 0 once index 1 began
        first = joined([d for d in live if d["index"] == 0])[0]["arguments"]
        assert json.loads(first) == {"city": "Paris", "days": 3}  # whole before the reply ends


def test_a_call_that_cannot_be_read_as_streamed_comes_whole_at_the_end():
    rng = random.Random(2)
    for text in [
        '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>',  # arguments as a string
        '<tool_call>\n{"name": 7, "arguments": {}}\n</tool_call><tool_call>{"name": "g"}</tool_call>',
    ]:
        live, deltas, final = stream(text, rng)
        assert not live
        assert [(c["name"], c["arguments"]) for c in joined(deltas)] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in final
        ]


def test_calls_are_announced_in_the_order_written():
    text = ('<tool_call>{"name": "f"}</tool_call>\n<tool_call>{"name": "g", "arguments": {"x": 1}}</tool_call>'
            '\n<tool_call>{"name": "h", "arguments": {"y": [2]}}</tool_call>')  # fmt: skip
    live, deltas, final = stream(text, random.Random(3))
    assert not live  # f has no arguments: it comes whole at the end, and the calls after it too
    assert [(c["name"], c["arguments"]) for c in joined(deltas)] == [
        ("f", "{}"),
        ("g", '{"x": 1}'),
        ("h", '{"y": [2]}'),
    ]
    live, deltas, final = stream(
        text.replace('{"name": "f"}', '{"arguments": {}, "name": "f"}'), random.Random(4)
    )
    assert [d["function"]["name"] for d in live if "id" in d] == ["f", "g", "h"]
    assert [(c["name"], c["arguments"]) for c in joined(deltas)] == [
        ("f", "{}"),
        ("g", '{"x": 1}'),
        ("h", '{"y": [2]}'),
    ]


def test_a_partial_end_tag_is_not_read_as_json():
    fmt = tool_format()
    calls = CallDeltas(fmt.call_start, fmt.call_end)
    calls.update('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool')
    assert not calls.calls[0].json.broken
    calls.update('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    assert calls.calls[0].json.expect == "end" and not calls.calls[0].json.broken


def test_a_call_that_proves_unreadable_leaves_arguments_that_do_not_parse():
    """The arguments' closing brace waits for the reply to be read: a call the reply does not hold
    (its outer brace missing) never reaches a client as a runnable call."""
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}\n</tool_call>'
    live, deltas, final = stream(text, random.Random(5))
    assert final == [] and joined(live)[0]["name"] == "add"
    sent = joined(deltas)[0]["arguments"]
    assert sent == '{"a": 2, "b": 3'
    with pytest.raises(json.JSONDecodeError):
        json.loads(sent)


def test_a_broken_call_keeps_its_index_and_the_next_one_gets_its_own():
    fmt = tool_format()
    text = ('<tool_call>{"name": "add", "arguments": {"a": 2,}}</tool_call>'
            '<tool_call>{"name": "ping", "arguments": {}}</tool_call>')  # fmt: skip
    calls = CallDeltas(fmt.call_start, fmt.call_end)
    live = calls.update(text[: text.index("2,") + 2]) + calls.update(text)  # add announced, then broken
    final = fmt.parse(text).tool_calls
    assert [c["function"]["name"] for c in final] == ["ping"]
    assert [(s.index, s.whole) for s in calls.settle(final)] == [(1, False)]  # ping was streamed as index 1
    assert calls.unreadable() == [(0, "add", '{"a": 2, ')]
    ping = [c for c in joined(live + calls.finish(final)) if c["name"] == "ping"]
    assert ping and ping[0]["arguments"] == "{}"


def test_text_before_a_stop_string_is_what_a_call_may_show(tokenizer):
    from openrft.rollout.streaming import TextDeltas

    stream = TextDeltas(tokenizer, stops=("Par",))
    for token in tokenizer('{"city": "Pa', add_special_tokens=False)["input_ids"]:
        stream.push([token])
    assert stream.before_stop() == '{"city": "'  # "Pa" may still become the stop
    for token in tokenizer("ris", add_special_tokens=False)["input_ids"]:
        stream.push([token])
    assert stream.before_stop() == '{"city": "'
