"""The endpoint engine against `openrft serve` (real HTTP) and against scripted fake servers."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from openrft.errors import RolloutError
from openrft.records import Prompt, RolloutEngine, SamplingParams
from openrft.rollout.endpoint import EndpointEngine, api_root
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import BackgroundServer, create_app
from oracles import teacher_forced

PROMPTS = [
    Prompt("a", ({"role": "user", "content": "What is 3 + 4?"},)),
    Prompt("b", ({"role": "user", "content": "Name a colour."},)),
]


@pytest.fixture
def served(tiny_model):
    model, tokenizer = tiny_model
    stops = list(range(0, len(tokenizer), 12))  # uneven lengths, some "stop" finishes
    engine = LocalEngine(model, tokenizer, stop_token_ids=stops)
    with BackgroundServer(create_app(engine, "tiny")) as server:
        yield server.url, model, tokenizer, stops


def test_endpoint_engine_against_openrft_serve(served):
    url, model, tokenizer, stops = served
    engine = EndpointEngine(
        url, tokenizer, "tiny", max_concurrent_rollouts=4, stop_token_ids=stops, policy_version=7
    )
    assert isinstance(engine, RolloutEngine)
    params = SamplingParams(n=3, temperature=0.8, top_k=30, top_p=0.95, max_tokens=12, seed=5)
    groups = engine.generate(PROMPTS, params)
    local = LocalEngine(model, tokenizer)
    assert [[c.candidate_index for c in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]
    reasons = set()
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for c in group:
            assert c.prompt_id == prompt.prompt_id and c.policy_version == 7
            assert list(c.prompt_token_ids) == local.encode(prompt)
            assert 1 <= len(c.completion_token_ids) <= 12 and len(c.logprobs) == len(c.completion_token_ids)
            assert (torch.tensor(c.logprobs) - teacher_forced(model, c, 0.8)).abs().max() <= 1e-4
            assert (c.completion_token_ids[-1] in stops) == (c.finish_reason == "stop")
            reasons.add(c.finish_reason)
            body = c.completion_token_ids[:-1] if c.finish_reason == "stop" else c.completion_token_ids
            assert c.text == tokenizer.decode(list(body), skip_special_tokens=True)
    assert reasons == {"stop", "length"}
    # the per-candidate seeds make the result reproducible whatever the request interleaving
    serial = EndpointEngine(url, tokenizer, "tiny", max_concurrent_rollouts=1, stop_token_ids=stops)
    again = serial.generate(PROMPTS, params)
    assert [[c.completion_token_ids for c in g] for g in again] == [
        [c.completion_token_ids for c in g] for g in groups
    ]


def test_top_p_zero_is_sent_as_top_k_one_and_stays_greedy(served):
    url, model, tokenizer, stops = served
    engine = EndpointEngine(url, tokenizer, "tiny", stop_token_ids=stops)
    params = SamplingParams(n=2, temperature=1.0, top_p=0.0, max_tokens=6, seed=1)
    body = engine._body([1, 2], params, "tiny", "p", 0)
    assert (body["top_p"], body["top_k"]) == (1.0, 1)  # vLLM refuses top_p=0
    greedy = LocalEngine(model, tokenizer, stop_token_ids=stops).generate(PROMPTS, params)
    got = engine.generate(PROMPTS, params)
    assert [[c.completion_token_ids for c in g] for g in got] == [
        [c.completion_token_ids for c in g] for g in greedy
    ]


def test_serve_api_surface(served):
    url, model, tokenizer, _ = served
    with httpx.Client(base_url=url) as client:
        assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny"]
        answer = client.post(
            "/completions", json={"prompt": ["Hello", "Bye"], "n": 2, "max_tokens": 3, "seed": 1}
        )
        assert answer.status_code == 200
        body = answer.json()
        assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
        assert body["choices"][0]["logprobs"] is None
        assert body["usage"]["prompt_tokens"] == 2 * (
            len(tokenizer("Hello").input_ids) + len(tokenizer("Bye").input_ids)
        )
        wrong = client.post("/completions", json={"prompt": [1, 2], "model": "nope"})
        assert wrong.status_code == 404 and "nope" in wrong.json()["error"]["message"]
        invalid = client.post("/completions", json={"prompt": [1, 2], "temperature": -1})
        assert invalid.status_code == 400 and "temperature" in invalid.json()["error"]["message"]
        out_of_vocab = client.post("/completions", json={"prompt": [10**9]})
        assert out_of_vocab.status_code == 400
        infinite = client.post(
            "/completions", content=b'{"prompt": [1, 2], "temperature": Infinity}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert infinite.status_code == 400 and "temperature" in infinite.json()["error"]["message"]
        too_long = client.post("/completions", json={"prompt": [1] * 100_000}).json()["error"]
        assert (too_long["code"], too_long["param"]) == ("context_length_exceeded", "prompt")
        limit = model.config.max_position_embeddings  # a prompt must leave room for one token
        full = client.post("/completions", json={"prompt": [1] * limit, "max_tokens": 1})
        assert full.status_code == 400 and full.json()["error"]["code"] == "context_length_exceeded"
        over = client.post("/completions", json={"prompt": [1] * (limit - 1), "max_tokens": 4})
        assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"  # as vLLM: not cut
        one_left = client.post("/completions", json={"prompt": [1] * (limit - 1), "max_tokens": 1})
        assert one_left.status_code == 200 and one_left.json()["usage"]["completion_tokens"] == 1
        negative = client.post("/completions", json={"prompt": [1, 2], "stop_token_ids": [-5]})
        assert negative.status_code == 400 and "stop_token_ids" in negative.json()["error"]["message"]


def test_serve_refuses_a_corrupt_adapter_with_a_400(served, tmp_path):
    url, *_ = served
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}')
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with httpx.Client(base_url=url) as client:
        answer = client.post("/load_lora_adapter", json={"lora_name": "x", "lora_path": str(broken)})
    assert answer.status_code == 400 and str(broken) in answer.json()["error"]["message"]


def test_stop_strings_through_the_endpoint(served):
    url, model, tokenizer, stops = served
    params = SamplingParams(n=3, temperature=1.0, top_k=50, max_tokens=12, seed=9)
    free = EndpointEngine(url, tokenizer, "tiny", stop_token_ids=stops).generate(PROMPTS, params)
    sample = next(c for c in free[0] if len(c.completion_token_ids) >= 4 and c.finish_reason == "length")
    stop = tokenizer.decode(list(sample.completion_token_ids[1:3]))
    assert stop.strip()
    engine = EndpointEngine(url, tokenizer, "tiny", stop_token_ids=stops)
    cut = engine.generate(PROMPTS, SamplingParams(**{**params.__dict__, "stop": (stop,)}))
    first = cut[0][sample.candidate_index]
    assert first.finish_reason == "stop" and first.text.endswith(stop)
    assert sample.completion_token_ids[: len(first.completion_token_ids)] == first.completion_token_ids
    # plain OpenAI semantics when the client does not ask to keep the stop string
    with httpx.Client(base_url=url) as client:
        body = engine._body(list(first.prompt_token_ids), params, "tiny", "a", sample.candidate_index)
        answer = client.post("/completions", json={**body, "stop": stop}).json()
    assert answer["choices"][0]["text"] == first.text[: -len(stop)]


def test_runtime_lora_loading(served, tmp_path):
    from peft import LoraConfig, get_peft_model

    url, model, tokenizer, stops = served
    adapter = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter.save_pretrained(tmp_path / "step-1")
    adapter.unload()  # the served base model stays as it was
    engine = EndpointEngine(url, tokenizer, "tiny", stop_token_ids=stops)
    params = SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=8, seed=3)
    before = engine.generate(PROMPTS, params)
    engine.load_adapter(tmp_path / "step-1", "policy-1")
    assert engine.model_name == "policy-1"
    assert engine.list_models() == ["tiny", "policy-1"]
    after = engine.generate(PROMPTS, params)
    assert [[c.completion_token_ids for c in g] for g in after] != [
        [c.completion_token_ids for c in g] for g in before
    ]
    from openrft.models import load_adapter
    from openrft.testing import tiny_model as build

    fresh, _ = build(seed=0)
    peft_model = load_adapter(fresh, tmp_path / "step-1")
    for c in (c for g in after for c in g):
        assert (torch.tensor(c.logprobs) - teacher_forced(peft_model, c, 1.0)).abs().max() <= 1e-4
    engine.model_name = "tiny"  # the base model is still served unchanged
    base_again = engine.generate(PROMPTS, params)
    assert [[c.completion_token_ids for c in g] for g in base_again] == [
        [c.completion_token_ids for c in g] for g in before
    ]
    with pytest.raises(RolloutError, match="HTTP 400"):
        engine.load_adapter(tmp_path / "missing", "policy-2")


def test_a_resumed_job_reloads_an_adapter_name_the_server_still_has(served, tmp_path):
    """A job that stopped leaves its last adapter loaded; resumed, it saves that version again (new files,
    same name). The server refuses a name it has (vLLM's 400 "already been loaded"): the engine unloads it
    and loads the new files, and samples them."""
    from peft import LoraConfig, get_peft_model

    from openrft.models import load_adapter
    from openrft.testing import tiny_model as build

    url, model, tokenizer, stops = served
    params = SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=8, seed=3)
    for seed, engine in ((0, EndpointEngine(url, tokenizer, "tiny", stop_token_ids=stops)),
                         (1, EndpointEngine(url, tokenizer, "tiny", stop_token_ids=stops))):  # fmt: skip
        torch.manual_seed(seed)
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        adapter = get_peft_model(model, config)
        adapter.save_pretrained(tmp_path / f"run-{seed}")
        adapter.unload()
        engine.load_adapter(tmp_path / f"run-{seed}", "job-v000003")
        sampled = engine.generate(PROMPTS[:1], params)[0]
        fresh, _ = build(seed=0)
        now = load_adapter(fresh, tmp_path / f"run-{seed}")
        assert all(
            (torch.tensor(c.logprobs) - teacher_forced(now, c, 1.0)).abs().max() <= 1e-4 for c in sampled
        )
    assert engine.list_models() == ["tiny", "job-v000003"]


# ----------------------------------------------------------------------------- fake servers


def fake_choice(tokens: int = 3) -> dict:
    return {
        "index": 0,
        "text": "abc",
        "finish_reason": "length",
        "logprobs": {
            "tokens": [f"token_id:{10 + i}" for i in range(tokens)],
            "token_logprobs": [-0.5] * tokens,
        },
    }


class FakeServer:
    """Scripted answers: a list of status codes to return before succeeding; counts calls in flight.
    ``vllm``: ``/v1/models`` lists the model as vLLM does (``owned_by``, ``max_model_len``), and a
    request at ``top_k`` 1 gets the log-prob ``probe`` (processed log-probs: 0; raw ones: not)."""

    def __init__(self, failures: list[int] | None = None, delay: float = 0.0, headers: dict | None = None,
                 vllm: int | None = None, probe: float = 0.0):  # fmt: skip
        self.failures, self.delay, self.headers = list(failures or []), delay, headers or {}
        self.calls = self.in_flight = self.peak = 0
        self.bodies: list[dict] = []
        self.probe = probe
        self.app = FastAPI()
        self.app.post("/v1/completions")(self.completions)
        if vllm is not None:  # a base model, a smaller one beside it, and an adapter on the first (vLLM 0.11)
            cards = [{"id": "base", "object": "model", "owned_by": "vllm", "max_model_len": vllm},
                     {"id": "small", "object": "model", "owned_by": "vllm", "max_model_len": 8},
                     {"id": "m", "object": "model", "owned_by": "vllm", "parent": "base", "max_model_len": None}]  # fmt: skip
            self.app.get("/v1/models")(lambda: {"object": "list", "data": cards})

    async def completions(self, request: Request) -> JSONResponse:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            self.bodies.append(await request.json())
            await asyncio.sleep(self.delay)
            if self.failures:
                status = self.failures.pop(0)
                return JSONResponse(
                    {"error": {"message": f"scripted {status}"}}, status, headers=self.headers
                )
            choice = fake_choice()
            if self.bodies[-1]["top_k"] == 1 and self.probe is None:  # a probe answered with no token
                choice["logprobs"] = {"tokens": [], "token_logprobs": []}
            elif self.bodies[-1]["top_k"] == 1:
                choice["logprobs"]["token_logprobs"][0] = self.probe
            return JSONResponse({"choices": [choice]})
        finally:
            self.in_flight -= 1

    def engine(self, tokenizer, **kwargs) -> EndpointEngine:
        transport = httpx.ASGITransport(app=self.app)
        kwargs = {"backoff": 0.01, "transport": transport, **kwargs}
        return EndpointEngine("http://fake", tokenizer, "m", **kwargs)


def test_requests_in_flight_are_bounded(tokenizer):
    fake = FakeServer(delay=0.02)
    engine = fake.engine(tokenizer, max_concurrent_rollouts=3)
    groups = engine.generate(PROMPTS * 2, SamplingParams(n=4, max_tokens=3, seed=0, top_k=0))
    assert fake.calls == 16 and fake.peak == 3
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    c = groups[0][0]
    assert c.completion_token_ids == (10, 11, 12) and c.logprobs == (-0.5, -0.5, -0.5)
    body = fake.bodies[0]
    assert body["prompt"] == list(c.prompt_token_ids) and body["top_k"] == -1 and body["logprobs"] == 1
    assert body["return_tokens_as_token_ids"] is True and body["max_tokens"] == 3
    seeds = {b["seed"] for b in fake.bodies}
    assert len(seeds) == 8  # one seed per (prompt id, candidate); the repeated prompts reuse theirs


def test_retries_transient_failures(tokenizer):
    fake = FakeServer(failures=[503, 503])
    groups = fake.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert fake.calls == 3 and groups[0][0].completion_token_ids == (10, 11, 12)
    limited = FakeServer(failures=[429], headers={"Retry-After": "0.05"})
    start = time.monotonic()
    limited.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert limited.calls == 2 and time.monotonic() - start >= 0.05


def test_gives_up_after_the_retry_budget(tokenizer):
    fake = FakeServer(failures=[500] * 10)
    with pytest.raises(RolloutError, match="HTTP 500 after 3 attempts: scripted 500"):
        fake.engine(tokenizer, retries=2).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert fake.calls == 3


def test_a_vllm_server_is_checked_for_its_log_probs_and_context_before_the_first_round(tokenizer):
    raw = FakeServer(vllm=4096, probe=-0.6931)  # vLLM's default raw_logprobs: not 0 at top_k 1
    with pytest.raises(RolloutError, match="before temperature scaling") as refused:
        raw.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=2, max_tokens=3))
    assert "--logprobs-mode processed_logprobs" in refused.value.hint and raw.calls == 1
    prompt_length = len(raw.bodies[0]["prompt"])
    fake = FakeServer(vllm=prompt_length + 2)  # processed log-probs, and a context 2 tokens past the prompt
    engine = fake.engine(tokenizer)
    engine.generate(PROMPTS[:1], SamplingParams(n=2, max_tokens=3, top_k=0))
    probe, *sampled = fake.bodies
    assert probe["top_k"] == 1 and probe["temperature"] == 0.5 and probe["max_tokens"] == 1
    assert [b["max_tokens"] for b in sampled] == [2, 2] and engine.max_model_len == prompt_length + 2
    for body in fake.bodies:  # what vLLM would take from the model's generation_config.json otherwise
        assert body["repetition_penalty"] == 1.0 and body["min_p"] == 0.0 and body["presence_penalty"] == 0.0
    engine.max_model_len = 5  # a prompt that fills the context: a cut-off candidate, no request
    (cut,) = engine.generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert cut[0].finish_reason == "length" and cut[0].completion_token_ids == () and fake.calls == 3
    tight = FakeServer(vllm=10)  # a first prompt longer than the context: the probe still asks one token
    tight.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert tight.calls == 1 and tight.bodies[0]["max_tokens"] == 1 and len(tight.bodies[0]["prompt"]) == 9
    with pytest.raises(RolloutError, match="with no token"):
        FakeServer(vllm=4096, probe=None).engine(tokenizer).generate(
            PROMPTS[:1], SamplingParams(n=1, max_tokens=3)
        )
    plain = FakeServer()  # no /v1/models (a 404): nothing checked, nothing clamped
    plain.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert plain.calls == 1 and plain.bodies[0]["max_tokens"] == 3


def test_an_adapter_the_server_cannot_load_is_not_retried(tokenizer):
    fake = FakeServer()
    calls = []

    async def broken(request: Request) -> JSONResponse:  # vLLM 0.34 answers a bad adapter with a 500
        calls.append(await request.json())
        return JSONResponse({"error": {"message": "Invalid LoRA adapter"}}, 500)

    fake.app.post("/v1/load_lora_adapter")(broken)
    with pytest.raises(RolloutError, match="HTTP 500: Invalid LoRA adapter"):
        fake.engine(tokenizer).load_adapter("/nowhere", "v1")
    assert len(calls) == 1


def test_client_errors_are_not_retried(tokenizer):
    fake = FakeServer(failures=[400])
    with pytest.raises(RolloutError, match="HTTP 400: scripted 400"):
        fake.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))
    assert fake.calls == 1


def test_dead_server_fails_fast_with_a_clear_error(tokenizer):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = EndpointEngine(f"http://127.0.0.1:{port}", tokenizer, "m", retries=2, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(RolloutError, match="cannot reach the inference endpoint") as info:
        engine.generate(PROMPTS, SamplingParams(n=2, max_tokens=3))
    assert time.monotonic() - start < 5
    assert "running" in info.value.hint


def test_malformed_answers_are_reported(tokenizer):
    fake = FakeServer()

    async def no_logprobs(request: Request) -> JSONResponse:
        return JSONResponse({"choices": [{"text": "x", "finish_reason": "length"}]})

    fake.app.router.routes.clear()
    fake.app.post("/v1/completions")(no_logprobs)
    with pytest.raises(RolloutError, match="logprobs"):
        fake.engine(tokenizer).generate(PROMPTS[:1], SamplingParams(n=1, max_tokens=3))


def test_api_root_normalisation():
    assert api_root("http://h:8000") == "http://h:8000/v1"
    assert api_root("http://h:8000/v1/") == "http://h:8000/v1"


def test_top_logprobs_through_the_three_apis(served):
    """Chat (``top_logprobs``), Responses (``top_logprobs`` + include) and legacy completions (``logprobs: N``,
    vLLM's shape: the N best plus the sampled token) report the same alternatives, best first."""
    import openai

    url, model, tokenizer, stops = served
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    user = [{"role": "user", "content": "What is 3 + 4?"}]
    chat = client.chat.completions.create(model="tiny", messages=user, logprobs=True, top_logprobs=3,
                                          max_tokens=6, seed=2, temperature=0.9)  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    for t in content:
        values = [a.logprob for a in t.top_logprobs]
        assert values == sorted(values, reverse=True) and t.logprob <= values[0] + 1e-6
        assert all(a.bytes == list(a.token.encode()) for a in t.top_logprobs if "\ufffd" not in a.token)
    response = client.responses.create(model="tiny", input="What is 3 + 4?", top_logprobs=2, max_output_tokens=16,
                                       include=["message.output_text.logprobs"], extra_body={"seed": 2})  # fmt: skip
    assert all(len(t.top_logprobs) == 2 for t in response.output[0].content[0].logprobs)
    with httpx.Client(base_url=url) as http:
        legacy = http.post(
            "/completions",
            json={
                "prompt": "Hi",
                "max_tokens": 5,
                "logprobs": 2,
                "seed": 3,
                "return_tokens_as_token_ids": True,
            },
        ).json()
        logprobs = legacy["choices"][0]["logprobs"]
        for token, sampled, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"],
                                       strict=True):  # fmt: skip
            assert top[token] == pytest.approx(sampled) and len(top) in (2, 3)
        plain = http.post(
            "/completions", json={"prompt": "Hi", "max_tokens": 6, "logprobs": 0, "seed": 3}
        ).json()
        choice = plain["choices"][0]
        tokens, offsets = choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"]
        assert offsets == [len("".join(tokens[:k])) for k in range(len(tokens))]  # each token's place
        too_many = http.post("/completions", json={"prompt": "Hi", "logprobs": 21})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "logprobs"


def test_completions_stream_as_the_sdk_reads_them(served):
    import openai

    url, *_ = served
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    whole = client.completions.create(
        model="tiny", prompt=["Hi", "Bye"], n=2, max_tokens=5, seed=4, logprobs=1
    )
    chunks = list(client.completions.create(model="tiny", prompt=["Hi", "Bye"], n=2, max_tokens=5, seed=4, logprobs=1,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine] == [None, choice.finish_reason]
        assert mine[0].logprobs.token_logprobs == choice.logprobs.token_logprobs
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="Hi", stream_options={"include_usage": True})
    for logprobs in (None, 1):  # streamed as sampled (no log-probs), or whole; no usage chunk unless asked
        plain = list(client.completions.create(model="tiny", prompt=["Hi", "Bye"], n=2, max_tokens=5, seed=4,
                                               logprobs=logprobs, stream=True))  # fmt: skip
        assert all(len(c.choices) == 1 and c.usage is None for c in plain)
        for choice in whole.choices:  # four choices, each its own index: texts never interleave
            mine = "".join(c.choices[0].text for c in plain if c.choices[0].index == choice.index)
            assert mine == choice.text, (logprobs, choice.index)


def test_a_request_s_stop_token_ids_end_its_replies(served):
    """``stop_token_ids`` (vLLM's extension): a token of a free sample, given as a stop id, ends the same
    sample there, streamed or not, and its text stays out of the reply."""
    import openai

    url, _, tokenizer, _ = served
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    ask = {"model": "tiny", "prompt": "Hi", "max_tokens": 8, "seed": 11, "temperature": 1.0}
    free = client.completions.create(**ask, extra_body={"return_token_ids": True}).choices[0]
    ids = free.model_extra["token_ids"]
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # a token not sampled before it
    cut = client.completions.create(**ask, extra_body={"return_token_ids": True, "stop_token_ids": [ids[k]]})
    choice = cut.choices[0]
    assert choice.model_extra["token_ids"] == ids[: k + 1] and choice.finish_reason == "stop"
    assert choice.text == tokenizer.decode(ids[:k], skip_special_tokens=True)
    streamed = client.completions.create(**ask, stream=True, extra_body={"stop_token_ids": [ids[k]]})
    assert "".join(c.choices[0].text for c in streamed) == choice.text
