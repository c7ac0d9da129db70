"""What the rollout engines send and return: the endpoint engine's requests (its key, each call's own end
tokens, a full context, how long it waits when told to) against a scripted in-memory server; the vLLM
engine's stop strings and end tokens against a scripted ``vllm``; and the text a streamed reply sends."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import httpx
import pytest

from openrft.models import end_token_ids
from openrft.records import SamplingParams
from openrft.rollout.endpoint import EndpointEngine


class ScriptedServer:
    """Answers ``/v1/completions`` with three tokens; ``/v1/models`` with ``cards`` (404 when None).
    Keeps every completion request's body and headers."""

    def __init__(self, cards: list[dict] | None = None):
        self.cards = cards
        self.bodies: list[dict] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            if self.cards is None:
                return httpx.Response(404, json={"error": {"message": "no listing"}})
            return httpx.Response(200, json={"object": "list", "data": self.cards})
        self.bodies.append(json.loads(request.content))
        self.headers.append(request.headers)
        probe = self.bodies[-1]["top_k"] == 1
        choice = {
            "index": 0,
            "text": "abc",
            "finish_reason": "length",
            "logprobs": {"tokens": ["token_id:10", "token_id:11", "token_id:12"],
                         "token_logprobs": [0.0 if probe else -0.5] * 3},
        }  # fmt: skip
        return httpx.Response(200, json={"choices": [choice]})

    def engine(self, tokenizer, **kwargs) -> EndpointEngine:
        kwargs = {"backoff": 0.01, "transport": httpx.MockTransport(self), **kwargs}
        return EndpointEngine("http://fake", tokenizer, "m", **kwargs)


def test_the_api_key_is_sent_as_a_bearer_token(tokenizer):
    server = ScriptedServer()
    server.engine(tokenizer, api_key="sk-123").generate_from_ids([("p", [1, 2, 3])], SamplingParams(n=1))
    assert server.headers[0]["authorization"] == "Bearer sk-123"
    anonymous = ScriptedServer()
    anonymous.engine(tokenizer).generate_from_ids([("p", [1, 2, 3])], SamplingParams(n=1))
    assert "authorization" not in anonymous.headers[0]


def test_a_calls_own_stop_token_ids_replace_the_engines(tokenizer):
    server = ScriptedServer()
    engine = server.engine(tokenizer, stop_token_ids=[2, 3])
    engine.generate_from_ids(
        [("agent-call", [5, 6, 7])], SamplingParams(n=2, max_tokens=4), stop_token_ids=[42]
    )
    assert [b["stop_token_ids"] for b in server.bodies] == [[42], [42]]
    engine.generate_from_ids([("plain", [5, 6, 7])], SamplingParams(n=1, max_tokens=4))
    assert server.bodies[-1]["stop_token_ids"] == [2, 3]


def test_a_prompt_that_exactly_fills_the_context_is_not_sent(tokenizer):
    cards = [{"id": "m", "object": "model", "owned_by": "vllm", "max_model_len": 6}]
    server = ScriptedServer(cards)
    engine = server.engine(tokenizer)
    (group,) = engine.generate_from_ids([("full", [1, 2, 3, 4, 5, 6])], SamplingParams(n=2, max_tokens=4))
    assert [b["top_k"] for b in server.bodies] == [1]  # the log-prob probe only: no request asks 0 tokens
    assert [(c.finish_reason, c.completion_token_ids) for c in group] == [("length", ()), ("length", ())]
    (one,) = engine.generate_from_ids([("room", [1, 2, 3, 4, 5])], SamplingParams(n=1, max_tokens=4))
    assert server.bodies[-1]["max_tokens"] == 1 and one[0].completion_token_ids == (10, 11, 12)


def test_a_servers_retry_after_is_capped_at_the_longest_backoff(tokenizer):
    engine = ScriptedServer().engine(tokenizer, max_backoff=2.0)
    assert engine._delay(0, "3600") == 2.0  # a server asking for an hour does not stall the job
    assert engine._delay(0, "0.5") == 0.5
    assert 0 < engine._delay(3, "soon") <= 2.0 * 1.25


# ----------------------------------------------------------------------------- the vLLM engine


class ScriptedLLM:
    """A stand-in for ``vllm.LLM``: answers each request with the next ``(token ids, finish reason)``
    of ``script`` and keeps the sampling parameters it was given."""

    script: list[tuple[list[int], str]] = []
    sent: list = []

    def __init__(self, **options):
        self.llm_engine = SimpleNamespace(add_lora=lambda request: True, remove_lora=lambda lora_id: True)

    def generate(self, prompts, sampling_params=None, lora_request=None, use_tqdm=True):
        ScriptedLLM.sent.extend(sampling_params)
        outputs = []
        for prompt in prompts:
            ids, reason = ScriptedLLM.script.pop(0)
            logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in ids]
            sample = SimpleNamespace(token_ids=ids, logprobs=logprobs, finish_reason=reason)
            outputs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=[sample]))
        return outputs


@pytest.fixture
def scripted_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.11.0"
    vllm.LLM = ScriptedLLM
    vllm.SamplingParams = lambda **fields: SimpleNamespace(**fields)
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, lora_id, path: SimpleNamespace(lora_name=name, lora_int_id=lora_id)
    for name, module in {
        "vllm": vllm,
        "vllm.lora": types.ModuleType("vllm.lora"),
        "vllm.lora.request": request,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    ScriptedLLM.script, ScriptedLLM.sent = [], []
    return ScriptedLLM


def test_a_vllm_reply_ended_by_a_stop_string_keeps_its_last_token_and_is_cut_after_the_string(
    scripted_vllm, tiny_model_dir, tokenizer
):
    from openrft.rollout.vllm_engine import VLLMEngine

    ids = tokenizer("The answer is 42 and then more", add_special_tokens=False)["input_ids"]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    last = full[len(tokenizer.decode(ids[:-1], skip_special_tokens=True)) :]
    assert len(last) >= 2 and ids[-1] not in end_token_ids(tokenizer)
    stop = full[-len(last) - 3 : -1]  # vLLM stops on the token that completes it, past its end
    scripted_vllm.script = [(list(ids), "stop")]
    engine = VLLMEngine(str(tiny_model_dir), tokenizer)
    (group,) = engine.generate_from_ids([("p", [1, 2, 3])], SamplingParams(n=1, max_tokens=64, stop=(stop,)))
    (reply,) = group
    assert reply.finish_reason == "stop" and reply.completion_token_ids == tuple(ids)
    assert reply.text == full[:-1] and reply.text.endswith(stop)


def test_an_agent_calls_own_stop_token_ids_reach_vllm(scripted_vllm, tiny_model_dir, tokenizer):
    from openrft.rollout.vllm_engine import VLLMEngine

    scripted_vllm.script = [([5, 6, 42], "stop"), ([5, 6], "length")]
    engine = VLLMEngine(str(tiny_model_dir), tokenizer, stop_token_ids=[2])
    (group,) = engine.generate_from_ids(
        [("call", [1, 2, 3])], SamplingParams(n=1, max_tokens=3), stop_token_ids=[42]
    )
    assert scripted_vllm.sent[0].stop_token_ids == [42]
    assert group[0].text == tokenizer.decode([5, 6], skip_special_tokens=True)  # its end token is not text
    engine.generate_from_ids([("plain", [1, 2, 3])], SamplingParams(n=1, max_tokens=2))
    assert scripted_vllm.sent[1].stop_token_ids == [2]


# ----------------------------------------------------------------------------- streamed text


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_requests_own_end_token_never_shows_in_the_streamed_text(tokenizer):
    from openrft.rollout.streaming import TextDeltas

    words = _ids(tokenizer, "Hello there")
    end = _ids(tokenizer, " STOP")[-1]  # an ordinary token a request named in stop_token_ids
    stream = TextDeltas(tokenizer, stop_ids=[end])
    pieces = [stream.push([token]) for token in [*words, end]]
    assert "".join(pieces) == stream.sent_text == tokenizer.decode(words, skip_special_tokens=True)


def test_the_rest_of_a_reply_whose_leading_whitespace_was_read_out_follows_what_was_sent(tokenizer):
    from openrft.rollout.streaming import TextDeltas

    stream = TextDeltas(tokenizer)
    sent = stream.push(_ids(tokenizer, "\n\nHello"))
    assert sent == "\n\nHello"
    assert stream.rest("Hello world") == " world"  # the finished reply lost the leading blank lines
    assert stream.rest("\n\nHello world") == " world"


def test_a_stream_ending_in_a_server_fault_reports_a_server_error_not_a_bad_request():
    from openrft.rollout.streaming import stream_error

    assert stream_error(RuntimeError("CUDA error"))["type"] == "server_error"
    refused = SimpleNamespace(status=400, message="bad stop", param="stop", code=None)
    assert stream_error(refused) == {
        "message": "bad stop",
        "type": "invalid_request_error",
        "param": "stop",
        "code": None,
    }


class BosTokenizer:
    """A Llama-style tokenizer: its chat template writes the BOS token, and so would ``add_special_tokens``."""

    chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "<s>" + "".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens=True):
        ids = [1 if word == "<s>" else 100 + len(word) for word in text.replace("<s>", "<s> ").split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_a_chat_template_that_writes_bos_gets_no_second_one():
    from openrft.rollout.prompts import encode_messages

    ids = encode_messages(BosTokenizer(), [{"role": "user", "content": "two words"}])
    assert ids == [1, 103, 105]


def test_a_prompt_holding_tool_calls_renders_as_a_chat_request_without_a_tools_column(tokenizer):
    from openrft.records import Prompt
    from openrft.rollout.chat import encode_chat
    from openrft.rollout.prompts import encode_prompt

    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    messages = (
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    )
    ids = encode_prompt(tokenizer, Prompt("t", messages))
    assert ids == encode_chat(tokenizer, list(messages), None)
    assert "4" in tokenizer.decode(ids) and "add" in tokenizer.decode(ids)


def test_an_eval_protocol_files_own_routing_never_takes_a_rollout_away_from_the_policy(monkeypatch):
    from openrft.evaluators.base import RolloutSpec
    from openrft.rollout.ep_rollouts import completion_params
    from openrft.rollout.trajectories import ROLLOUT_HEADER

    monkeypatch.delenv("HOSTED_VLLM_API_BASE", raising=False)
    user = {"model": "gpt-4o", "base_url": "https://api.example.com/v1", "custom_llm_provider": "openai",
            "api_key": "sk-user", "temperature": 0.3}  # fmt: skip
    params = completion_params(RolloutSpec(object(), completion_params=user), "http://127.0.0.1:9/v1", "r7")
    assert "base_url" not in params and "custom_llm_provider" not in params
    assert params["extra_headers"] == {ROLLOUT_HEADER: "r7"}  # for processors that keep the headers
    assert params["model"].startswith("hosted_vllm/") and params["model"].endswith("r7")
    assert (params["api_base"], params["api_key"], params["temperature"]) == (
        "http://127.0.0.1:9/v1",
        "openrft",
        0.3,
    )
