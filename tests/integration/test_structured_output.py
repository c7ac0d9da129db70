"""Constrained decoding: response_format (json_schema, json_object) and forced tool calls, through the SDK."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
import torch
from pydantic import BaseModel, ConfigDict
from test_agents import ScriptedEngine
from test_local_engine import teacher_forced

from openrft.records import Prompt, SamplingParams
from openrft.rollout.constrained import (
    Constraints,
    json_grammar,
    request_grammar,
    strict_call_grammar,
    tool_call_grammar,
)
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import BackgroundServer, create_app

TOOLS = [
    {"type": "function", "function": {"name": "weather", "description": "The weather in a city.", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}}, "required": ["city"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "description": "Add two digits.", "parameters": {
        "type": "object", "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": [4, 5]}}, "required": ["a", "b"],
        "additionalProperties": False}}},
]  # fmt: skip
USER = [{"role": "user", "content": "Plan a trip."}]
STRICT = [
    {"type": "function", "function": {**TOOLS[0]["function"], "strict": True}},
    {"type": "function", "function": {"name": "note", "parameters": {"type": "object", "properties": {
        "text": {"type": "string"}}}}},  # not strict
]  # fmt: skip


class Trip(BaseModel):
    city: Literal["Paris", "Rome", "Oslo"]
    nights: Literal[1, 2, 3]
    train: bool


@pytest.fixture
def client(tiny_model):
    model, tokenizer = tiny_model
    with BackgroundServer(create_app(LocalEngine(model, tokenizer), "tiny")) as server:
        yield openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)


def test_the_sdk_parses_a_json_schema_reply_and_a_seed_repeats_it(client):
    replies = []
    for _ in range(2):
        answer = client.chat.completions.parse(model="tiny", messages=USER, response_format=Trip, n=3, seed=5,
                                               max_tokens=40, temperature=1.0)  # fmt: skip
        assert all(c.finish_reason == "stop" and isinstance(c.message.parsed, Trip) for c in answer.choices)
        replies.append([c.message.content for c in answer.choices])
    assert replies[0] == replies[1] and len(set(replies[0])) > 1  # seeded, and still sampled
    assert json.loads(replies[0][0]).keys() == {"city", "nights", "train"}


def test_forced_tool_calls_named_and_required(client):
    named = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, max_tokens=60, seed=1,
                                           tool_choice={"type": "function", "function": {"name": "add"}})  # fmt: skip
    (choice,) = named.choices
    assert choice.finish_reason == "tool_calls"
    for call in choice.message.tool_calls:
        assert call.function.name == "add"
        arguments = json.loads(call.function.arguments)
        assert arguments["a"] in (1, 2, 3) and arguments["b"] in (4, 5)
    single = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, max_tokens=60, n=4, seed=2)  # fmt: skip
    for choice in single.choices:
        (call,) = choice.message.tool_calls
        assert call.function.name in ("weather", "add") and choice.finish_reason == "tool_calls"
    offered = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, parallel_tool_calls=False,
                                             tool_choice="required", max_tokens=60, seed=2, logprobs=True)  # fmt: skip
    tokens = "".join(t.token for t in offered.choices[0].logprobs.content)
    assert tokens.endswith(
        "</tool_call>"
    )  # sampling ends at the first call: a rollout records nothing after it


def test_refusals_name_the_field(client, tokenizer):
    bad = [
        ("tool_choice", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        ("tool_choice", {"tool_choice": "required"}),  # no tools
        ("response_format.type", {"response_format": {"type": "xml"}}),
        ("response_format.json_schema", {"response_format": {"type": "json_schema", "json_schema": {}}}),
    ]
    for param, kwargs in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny", messages=USER, **kwargs)
        assert caught.value.param == param, param
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "{}"), "policy")) as server:
        other = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="constrained decoding") as caught:
            other.chat.completions.create(
                model="policy", messages=USER, response_format={"type": "json_object"}
            )
        assert caught.value.param == "response_format"


def test_the_responses_api_takes_text_format_and_a_flat_tool_choice(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="x", text={"format": {"type": "xml"}})
    assert caught.value.param == "text.format.type"  # the Responses API's own field
    endless = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError) as caught:  # its format is flat: no json_schema level
        client.responses.create(model="tiny", input="x", text={"format": {"type": "json_schema", "name": "x",
                                                                           "schema": endless}})  # fmt: skip
    assert caught.value.param == "text.format.schema" and "json_schema" not in caught.value.message
    answer = client.responses.parse(
        model="tiny", input="Plan a trip.", text_format=Trip, max_output_tokens=40
    )
    assert isinstance(answer.output_parsed, Trip) and answer.text.format.type == "json_schema"
    flat = [{"type": "function", **t["function"]} for t in TOOLS]
    forced = client.responses.create(model="tiny", input="Plan a trip.", tools=flat, max_output_tokens=60,
                                     tool_choice={"type": "function", "name": "weather"})  # fmt: skip
    assert [item.name for item in forced.output if item.type == "function_call"][:1] == ["weather"]


def test_every_token_follows_the_grammar_and_log_probs_stay_the_models(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=3)  # rows join mid-run: matchers follow
    grammars = [json_grammar({"type": "object"}), tool_call_grammar(TOOLS, "required", None),
                strict_call_grammar(STRICT, None)]  # fmt: skip
    prompts = [Prompt(f"p{i}", ({"role": "user", "content": f"Question {i}"},)) for i in range(2)]
    checker = Constraints(tokenizer, engine.constraints.vocab_size, engine.stop_token_ids)
    for grammar in grammars:
        params = SamplingParams(n=3, temperature=0.9, top_k=0, max_tokens=24, seed=3, grammar=grammar)
        for c in (c for group in engine.generate(prompts, params) for c in group):
            tokens = list(c.completion_token_ids)
            assert checker.matcher(grammar).validate_tokens(tokens) == len(tokens)  # every token allowed
            assert (torch.tensor(c.logprobs) - teacher_forced(model, c, 0.9)).abs().max() <= 1e-4
            if c.finish_reason == "stop":
                assert tokens[-1] in engine.stop_token_ids


def test_with_tools_offered_a_json_schema_reply_may_also_be_a_tool_call(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer)
    grammar, param = request_grammar(TOOLS, None, None, {"type": "json_schema", "json_schema": {
        "name": "trip", "schema": Trip.model_json_schema()}})  # fmt: skip
    assert param == "response_format"
    checker = Constraints(tokenizer, engine.constraints.vocab_size, engine.stop_token_ids)
    call = tokenizer('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 4}}\n</tool_call>')["input_ids"]
    answer = tokenizer('{"city": "Oslo", "nights": 2, "train": false}')["input_ids"]
    for tokens in (call, answer):  # either is allowed, whole
        matcher = checker.matcher(grammar)
        assert matcher.consume_tokens(tokens) and matcher.is_accepting()
    assert request_grammar(TOOLS, "none", None, {"type": "json_object"})[0] == json_grammar(
        {"type": "object"}
    )


class Pet(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as strict tools have it

    kind: Literal["cat", "dog"]
    legs: Literal[3, 4]


class Owner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pet: Pet  # pydantic writes {"$defs": {"Pet": ...}, "properties": {"pet": {"$ref": "#/$defs/Pet"}}}
    nights: Literal[1, 2]


def test_tool_schemas_with_definitions_are_forced_as_pydantic_writes_them(client):
    tools = [
        {"type": "function", "function": {"name": name, "parameters": Owner.model_json_schema()}}
        for name in ("book", "cancel")  # two tools with the same definition names
    ]
    named = client.chat.completions.create(model="tiny", messages=USER, tools=tools, max_tokens=80, seed=4,
                                           tool_choice={"type": "function", "function": {"name": "book"}})  # fmt: skip
    (call,) = named.choices[0].message.tool_calls  # a named function is called once
    assert call.function.name == "book" and Owner.model_validate_json(call.function.arguments)
    either = client.chat.completions.create(model="tiny", messages=USER, tools=tools, max_tokens=80, seed=5,
                                            tool_choice="required", parallel_tool_calls=False)  # fmt: skip
    (call,) = either.choices[0].message.tool_calls
    assert call.function.name in ("book", "cancel") and Owner.model_validate_json(call.function.arguments)


def test_objects_listing_their_properties_admit_no_others_as_on_vllm(tiny_model):
    from openrft.rollout.constrained import closed_objects

    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer)
    checker = Constraints(tokenizer, engine.constraints.vocab_size, engine.stop_token_ids)
    smolagents_tool = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
    grammar = tool_call_grammar(smolagents_tool, "required", False)

    def accepts(grammar: str, text: str) -> bool:
        matcher, tokens = checker.matcher(grammar), tokenizer(text)["input_ids"]
        return matcher.validate_tokens(tokens) == len(tokens) and matcher.consume_tokens(tokens) and \
            matcher.is_accepting()  # fmt: skip

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"%s}}\n</tool_call>'
    assert accepts(grammar, call % "") and not accepts(grammar, call % ', "type": "function"')
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "meta": {"type": "object"},
              "pet": {"allOf": [{"properties": {"kind": {"type": "string"}}}]}}}  # fmt: skip
    closed = closed_objects(schema)
    assert (
        closed["additionalProperties"] is False and "additionalProperties" not in closed["properties"]["meta"]
    )
    assert "additionalProperties" not in closed["properties"]["pet"]["allOf"][0]  # an allOf member stays open
    assert closed_objects({**schema, "additionalProperties": True})["additionalProperties"] is True
    form = request_grammar(
        None, None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )[0]
    assert accepts(form, '{"name": "a", "meta": {"any": 1}}') and not accepts(
        form, '{"name": "a", "extra": 1}'
    )


def test_a_jobs_response_format_takes_every_form_a_user_has(tmp_path):
    from openrft.config import build_config
    from openrft.errors import ConfigError
    from openrft.rollout.constrained import job_response_schema

    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    closed = {**schema, "additionalProperties": False}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    forms = [
        json.dumps(schema),  # a plain JSON schema, inline
        str(tmp_path / "schema.json"),  # or in a file
        json.dumps({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}),  # chat's
        json.dumps({"type": "json_schema", "name": "a", "schema": schema}),  # the Responses API's text.format
    ]
    assert all(job_response_schema(form) == closed for form in forms)
    assert job_response_schema("json_object") == {"type": "object"}
    cfg, _ = build_config({}, {"response_format": forms[1]})
    assert cfg.settings().sampling.grammar is not None
    for values, message in [
        ({"response_format": "nope.json"}, "is not 'json_object', inline JSON or a JSON file"),
        ({"response_format": "json_object", "rollout_engine": "vllm"}, "needs --rollout-engine local"),
        ({"response_format": "json_object", "agent": "a.py::run"}, "an agent's calls ask for their own"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config({}, values)


def test_strict_tools_hold_the_models_calls_to_their_schemas_under_auto(tiny_model, tokenizer):
    from openrft.rollout.responses_api import chat_tools

    model, _ = tiny_model
    engine = LocalEngine(model, tokenizer)
    checker = Constraints(tokenizer, engine.constraints.vocab_size, engine.stop_token_ids)
    grammar = strict_call_grammar(STRICT, None)
    assert strict_call_grammar(TOOLS, None) is None  # no strict tool: sampling is left free
    assert request_grammar(STRICT, "auto", None, None) == request_grammar(STRICT, None, None, None) == (
        grammar, "tools")  # fmt: skip
    assert request_grammar(STRICT, "none", None, None)[0] is None

    def accepts(grammar: str, text: str) -> bool:
        matcher, tokens = checker.matcher(grammar), tokenizer(text)["input_ids"]
        return matcher.validate_tokens(tokens) == len(tokens) and matcher.consume_tokens(tokens) and \
            matcher.is_accepting()  # fmt: skip

    call = '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
    rome, note = call % ("weather", '{"city": "Rome"}'), call % ("note", '{"text": "hi", "more": [1]}')
    for text in (
        "Just text: < and <tool but no call.",
        f"Sure. {rome}",
        note,
        f"{rome}\n{note}",
        f"{rome} Done.",
    ):
        assert accepts(grammar, text), text
    for text in (call % ("weather", '{"city": "Lima"}'), call % ("weather", '{"city": "Rome", "days": 2}'),
                 call % ("other", "{}"), "Text <tool_call>\nnot a call", f"{rome} then <tool_call>"):  # fmt: skip
        assert not accepts(grammar, text), text
    single = strict_call_grammar(STRICT, False)
    assert accepts(single, rome) and not accepts(single, f"{rome}\n{note}")
    # the Responses API's function tools are strict unless they say otherwise, as OpenAI's are
    flat = [{"type": "function", "name": "f"}, {"type": "function", "name": "g", "strict": False}]
    assert [t["function"]["strict"] for t in chat_tools(flat)] == [True, False]
    # an engine that cannot constrain sampling leaves strict tools to the model (as vLLM's server does)
    with BackgroundServer(create_app(ScriptedEngine(tokenizer, "{}"), "policy")) as server:
        other = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        reply = other.chat.completions.create(model="policy", messages=USER, tools=STRICT)
        assert reply.choices[0].message.content == "{}"


def _call_checkers(tools, tokenizer, tiny_model):
    """For the forced ("required") and the strict ("auto") call grammar of ``tools``: whether it accepts a text."""
    model, _ = tiny_model
    engine = LocalEngine(model, tokenizer)
    checker = Constraints(tokenizer, engine.constraints.vocab_size, engine.stop_token_ids)
    for grammar in (tool_call_grammar(tools, "required", None), strict_call_grammar(tools, None)):
        yield lambda text, g=grammar: checker.matcher(g).consume_tokens(tokenizer(text)["input_ids"])


def test_schemas_that_refer_to_their_own_root_are_held_as_written(client, tokenizer, tiny_model):
    from openrft.rollout.responses_api import chat_tools

    tree = {
        "type": "object",
        "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2},
        },
        "required": ["value", "children"],
    }  # recursive
    zod = {"type": "object", "properties": {"home": {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}, "work": {"$ref": "#/properties/home"}}, "required": ["home", "work"]}  # fmt: skip
    tools = [{"type": "function", "function": {"name": n, "parameters": p, "strict": True}}
             for n, p in (("chain", tree), ("addr", zod))]  # fmt: skip
    call = '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
    for accepts in _call_checkers(tools, tokenizer, tiny_model):
        assert accepts(call % ("chain", '{"value": 1, "children": [{"value": 2, "children": []}]}'))
        assert not accepts(call % ("chain", '{"value": 1, "children": [{"name": "chain", "arguments": {}}]}'))
        assert accepts(call % ("addr", '{"home": {"city": "Rome"}, "work": {"city": "Oslo"}}'))
        assert not accepts(call % ("addr", '{"home": {"city": "Rome"}, "work": {"town": "Oslo"}}'))
    for bad, param in (
        ([{"type": "function", "function": {"name": "f", "parameters": "oops", "strict": True}}],
         "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "strict": True}},
          {"type": "function", "function": {"name": "f"}}], "tools[1].function.name"),
    ):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny", messages=USER, tools=bad, max_tokens=4)
        assert caught.value.param == param
    text = {"type": "function", "name": "f", "parameters": {"type": "string"}}  # arguments are an object
    chat_tool = {"type": "function", "function": {k: v for k, v in text.items() if k != "type"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=4, tools=[chat_tool])
    assert caught.value.param == "tools[0].function.parameters" and 'not "string"' in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # Responses tools are flat, and so are its fields
        client.responses.create(model="tiny", input="hi", tools=[text], max_output_tokens=16)
    assert caught.value.param == "tools[0].parameters" and "function." not in caught.value.message
    assert chat_tools([{"type": "function", "name": "f", "strict": None}])[0]["function"]["strict"] is True


def test_references_keep_their_meaning_wherever_they_are_in_a_tool_schema(tokenizer, tiny_model):
    """References inside definitions, a root ``$id``, escaped names, and names that two tools (or
    ``definitions`` and ``$defs``) share: each tool's references mean what they do in its own schema."""
    item = {
        "type": "object",
        "properties": {"sub": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["sub"],
    }
    cases = {  # name: (parameters, a call that follows them, one that does not)
        "root_in_def": ({"type": "object", "properties": {"v": {"type": "integer"}, "items": {"type": "array",
                         "items": {"$ref": "#/$defs/Item"}, "maxItems": 1}}, "required": ["v", "items"],
                         "$defs": {"Item": item}},
                        '{"v": 1, "items": [{"sub": {"v": 2, "items": []}}]}',
                        '{"v": 1, "items": [{"sub": {"name": "x", "arguments": {}}}]}'),
        "property_in_def": ({"type": "object", "properties": {"home": {"type": "object", "properties": {"s":
                             {"type": "string"}}, "required": ["s"]}, "others": {"type": "array", "items":
                             {"$ref": "#/$defs/P"}, "maxItems": 1}}, "required": ["home", "others"], "$defs":
                             {"P": {"type": "object", "properties": {"addr": {"$ref": "#/properties/home"}},
                             "required": ["addr"]}}},
                            '{"home": {"s": "a"}, "others": [{"addr": {"s": "b"}}]}',
                            '{"home": {"s": "a"}, "others": [{"addr": {"t": "b"}}]}'),
        "both_tables": ({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}, "b": {"$ref":
                         "#/$defs/A"}}, "required": ["a", "b"], "definitions": {"A": {"type": "integer"}},
                         "$defs": {"A": {"type": "string"}}}, '{"a": 1, "b": "x"}', '{"a": 1, "b": 1}'),
        "a": ({"type": "object", "properties": {"x": {"$ref": "#/$defs/b__X"}}, "required": ["x"],
               "$defs": {"b__X": {"type": "integer"}}}, '{"x": 5}', '{"x": "5"}'),
        "a__b": ({"type": "object", "properties": {"y": {"$ref": "#/$defs/X"}}, "required": ["y"],
                  "$defs": {"X": {"type": "string"}}}, '{"y": "5"}', '{"y": 5}'),
        "escaped": ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a~1b"}}, "required": ["a"],
                     "$defs": {"a/b": {"type": "integer"}}}, '{"a": 3}', '{"a": "3"}'),
        "with_id": ({"$id": "https://example.com/t", "type": "object", "properties": {"v": {"type": "integer"},
                     "k": {"type": "array", "items": {"$ref": "#"}, "maxItems": 1}}, "required": ["v", "k"]},
                    '{"v": 1, "k": [{"v": 2, "k": []}]}', '{"v": 1, "k": [{"name": "with_id", "arguments": {}}]}'),
        "keyword_names": ({"type": "object", "properties": {"default": {"$ref": "#/$defs/enum"}},
                           "required": ["default"], "$defs": {"enum": {"type": "integer"}}},
                          '{"default": 3}', '{"default": "3"}'),  # a field named like a keyword
        "const_data": ({"type": "object", "properties": {"c": {"const": {"$ref": "#"}}}, "required": ["c"]},
                       '{"c": {"$ref": "#"}}', '{"c": {"$ref": "#/$defs/tool7"}}'),
    }  # fmt: skip
    tools = [{"type": "function", "function": {"name": n, "parameters": p, "strict": True}}
             for n, (p, _, _) in cases.items()]  # fmt: skip
    call = '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
    for accepts in _call_checkers(tools, tokenizer, tiny_model):
        for name, (_, good, bad) in cases.items():
            assert accepts(call % (name, good)), name
            assert not accepts(call % (name, bad)), name


def test_schemas_whose_references_never_end_are_refused_and_recursion_that_can_stop_is_not(client):
    from openrft.rollout.constrained import ConstraintError, check_finite

    endless = {
        "root_required": {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
        "cycle": {"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}}, "required": ["x"],
                  "$defs": {"A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}, "required": ["b"]},
                            "B": {"type": "array", "items": {"$ref": "#/$defs/A"}, "minItems": 1}}},
        "self": {"$ref": "#/$defs/S", "$defs": {"S": {"allOf": [{"$ref": "#/$defs/S"}]}}},
        "no_way_out": {"type": "object", "properties": {"n": {"anyOf": [{"$ref": "#"}, {"$ref": "#/properties/n"}]}},
                       "required": ["n"]},
        "inherited": {"type": "object", "allOf": [{"properties": {"n": {"$ref": "#"}}, "required": ["n"]}]},  # object
        "inherited_any": {"type": "object", "anyOf": [{"properties": {"n": {"$ref": "#"}}, "required": ["n"]}]},
        "other_keys": {"type": "object", "required": ["x"], "additionalProperties": {"$ref": "#"}},
        "prefix": {"type": "array", "prefixItems": [{"$ref": "#"}], "minItems": 1},
    }  # fmt: skip
    finite = {
        "tree": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
                 "required": ["children"]},  # an empty list ends it
        "optional": {"type": "object", "properties": {"next": {"$ref": "#"}}},  # not required
        "either": {"type": "object", "properties": {"n": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
                   "required": ["n"]},
        "missing": {"type": "object", "properties": {"x": {"$ref": "#/$defs/Gone"}}, "required": ["x"]},
        "escaped": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a~1b"}}, "required": ["a"],
                    "$defs": {"a/b": {"type": "integer"}}},
        "nullable": {"type": ["object", "null"], "properties": {"a": {"$ref": "#"}}, "required": ["a"]},  # OpenAI's
        "untyped": {"properties": {"a": {"$ref": "#"}}, "required": ["a"]},  # any type: null ends it
        "scalar": {"type": "string", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},  # binds objects only
        "untyped_def": {"$defs": {"A": {"properties": {"m": {"$ref": "#/$defs/A"}}, "required": ["m"]}}, "type": "object",
                        "properties": {"a": {"type": "object", "allOf": [{"$ref": "#/$defs/A"}]}}, "required": ["a"]},
        "prefix_then_none": {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"$ref": "#"}, "minItems": 1},
    }  # fmt: skip
    for name, schema in endless.items():
        with pytest.raises(ConstraintError, match="no finite value"):
            check_finite(schema, name)
    for schema in finite.values():
        check_finite(schema, "fine")
    cycle = [{"type": "function", "function": {"name": "f", "parameters": endless["cycle"], "strict": True}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=USER, tools=cycle, max_tokens=4)
    assert caught.value.param == "tools[0].function.parameters"
    loose = [{"type": "function", "function": {"name": "f", "parameters": endless["cycle"]}}]  # not strict
    with pytest.raises(openai.BadRequestError) as caught:  # forced: its schema constrains the call
        client.chat.completions.create(
            model="tiny", messages=USER, tools=loose, tool_choice="required", max_tokens=4
        )
    assert caught.value.param == "tools[0].function.parameters"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": endless["root_required"]}})  # fmt: skip
    assert caught.value.param == "response_format.json_schema.schema"


def test_a_tool_whose_schema_cannot_be_used_is_named(client):
    good = {"type": "object", "properties": {"x": {"type": "integer"}}}
    bad = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}}  # a lookbehind
    tools = [{"type": "function", "function": {"name": n, "parameters": p, "strict": True}}
             for n, p in (("fine", good), ("broken", bad))]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=USER, tools=tools, max_tokens=4)
    assert caught.value.param == "tools[1].function.parameters" and "(broken)" in str(caught.value)


def test_a_named_tool_choice_allows_one_call_and_required_several_unless_parallel_is_off():
    named = tool_call_grammar(TOOLS, {"type": "function", "function": {"name": "add"}}, None)
    assert named.startswith("start: call\n")  # exactly one call of the tool named
    assert tool_call_grammar(TOOLS, "required", None).startswith('start: call ("\\n" call)*\n')
    assert tool_call_grammar(TOOLS, "required", False).startswith("start: call\n")
    assert tool_call_grammar(TOOLS, "auto", None) is None and tool_call_grammar(TOOLS, "none", None) is None
