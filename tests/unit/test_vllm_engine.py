"""The vLLM engine's mapping to and from vLLM, against a fake ``vllm`` module (no GPU needed).

The fake records what the engine asks for and answers like vLLM's offline ``LLM``: one
``RequestOutput`` per request, each with one ``CompletionOutput`` holding token ids, per-position
``{token_id: Logprob}`` dicts (the sampled token plus a decoy), and a finish reason.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from openrft.errors import RolloutError
from openrft.models import end_token_ids
from openrft.records import Prompt, SamplingParams
from openrft.rollout.prompts import encode_messages
from openrft.rollout.sampling import row_seed
from openrft.rollout.vllm_engine import VLLMEngine

FIRST_TOKEN = 300  # completion tokens are FIRST_TOKEN + seed % 7, then +1, +2, ...


@dataclass
class Logprob:
    logprob: float
    rank: int = 1


@dataclass
class CompletionOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str
    text: str = "(vLLM's text, unused)"


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: str | list[str] | None = None
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    detokenize: bool = True

    def __post_init__(self):  # vLLM's own checks (vllm/sampling_params.py) and its normalisation
        if not 0.0 < self.top_p <= 1.0 or self.temperature < 0.0 or self.top_k < -1:
            raise ValueError(f"invalid sampling parameters: top_p={self.top_p}, top_k={self.top_k}")
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True")


@dataclass(frozen=True)
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str

    def __post_init__(self):
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")


class FakeEngineCore:
    def __init__(self):
        self.added: list[FakeLoRARequest] = []
        self.removed: list[int] = []
        self.events: list[str] = []

    def add_lora(self, request):
        if "broken" in request.lora_path:  # the multiprocess engine's way of failing: a plain Exception
            raise Exception(f"Call to add_lora method failed: Loading lora {request.lora_name} failed")  # noqa: TRY002
        self.added.append(request)
        self.events.append(f"add_lora({request.lora_name})")
        return "refused" not in request.lora_path

    def remove_lora(self, lora_id):
        self.removed.append(lora_id)
        self.events.append(f"remove_lora({lora_id})")
        return True


class FakeLLM:
    """Answers each request with ``stop_after`` tokens then the stop token, or ``max_tokens`` tokens."""

    instances: list[FakeLLM] = []
    reject: set[str] = set()  # engine options this "vLLM version" does not know

    def __init__(self, **options):
        unknown = self.reject & set(options)
        if unknown:
            raise TypeError(f"__init__() got an unexpected keyword argument '{sorted(unknown)[0]}'")
        if options.get("enable_lora") and options.get("dtype") == "float32":  # its LoRA kernels' assertion
            raise AssertionError("Engine core initialization failed (lora_shrink: inputs.dtype float32)")
        if options.get("gpu_memory_utilization", 0.9) > 0.95:  # as vLLM's start-up memory check fails
            raise ValueError(
                "To serve at least one request with the model's max seq len (32768), (3.5 GiB KV "
                "cache is needed,\nwhich is larger than the available KV cache memory (0.2 GiB)."
            )
        self.dead = False
        self.options = options
        self.llm_engine = FakeEngineCore()
        self.calls: list[dict[str, Any]] = []
        self.stop_after = 3
        self.finish_reason: str | None = None
        self.drop_logprob = False
        self.events: list[str] = []  # sleep, wake_up, generate, add_lora, remove_lora in order
        self.llm_engine.events = self.events
        FakeLLM.instances.append(self)

    def sleep(self, level=1):
        if self.dead:
            raise RuntimeError("cannot send to a dead engine")
        self.events.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.events.append("wake_up")

    def generate(self, prompts, sampling_params=None, lora_request=None, use_tqdm=True):
        self.events.append(f"generate({lora_request.lora_name if lora_request else 'base'})")
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue. See stack trace for the root cause.")
        self.calls.append(
            {"prompts": prompts, "params": sampling_params, "lora": lora_request, "tqdm": use_tqdm}
        )
        return [self._answer(p["prompt_token_ids"], s) for p, s in zip(prompts, sampling_params, strict=True)]

    def _answer(self, prompt_ids, params):
        first = FIRST_TOKEN + (params.seed or 0) % 7
        length = min(self.stop_after, params.max_tokens)
        tokens = [first + i for i in range(length)]
        reason = "length"
        if length < params.max_tokens:
            tokens.append(params.stop_token_ids[0])
            reason = "stop"
        logprobs = [{t: Logprob(-0.25 * (i + 1)), 7: Logprob(-9.0, rank=2)} for i, t in enumerate(tokens)]
        if self.drop_logprob:
            logprobs = logprobs[:-1]
        return RequestOutput(
            list(prompt_ids), [CompletionOutput(tokens, logprobs, self.finish_reason or reason)]
        )


class EngineDeadError(Exception):
    """vLLM's (vllm/v1/engine/exceptions.py): a plain Exception, not a RuntimeError."""


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.11.0"
    vllm.LLM = FakeLLM
    vllm.SamplingParams = FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    FakeLLM.instances, FakeLLM.reject = [], set()
    return vllm


def _prompts(count: int = 2) -> list[Prompt]:
    return [Prompt(f"q{i}", ({"role": "user", "content": f"What is {i} + 1?"},)) for i in range(count)]


def test_sampling_parameters_map_one_to_one(fake_vllm, tiny_model_dir, tokenizer):
    engine = VLLMEngine(str(tiny_model_dir), tokenizer, max_concurrent_rollouts=12, max_lora_rank=16)
    llm = FakeLLM.instances[0]
    assert llm.options["model"] == str(tiny_model_dir) and llm.options["enable_lora"] is True
    assert llm.options["max_num_seqs"] == 12 and llm.options["max_lora_rank"] == 16
    assert llm.options["logprobs_mode"] == "processed_logprobs"

    params = SamplingParams(n=3, temperature=0.9, top_p=0.8, top_k=0, max_tokens=20, seed=5)
    engine.generate(_prompts(2), params)
    call = llm.calls[0]
    assert call["tqdm"] is False and call["lora"] is None  # no adapter loaded yet: the base model
    assert len(call["prompts"]) == 6  # one request per candidate
    assert call["prompts"][3]["prompt_token_ids"] == encode_messages(tokenizer, _prompts(2)[1].messages)
    stops = list(end_token_ids(tokenizer))
    for index, sent in enumerate(call["params"]):
        prompt_id, candidate = f"q{index // 3}", index % 3
        assert sent.n == 1 and sent.temperature == 0.9 and sent.top_p == 0.8 and sent.max_tokens == 20
        assert sent.top_k == -1  # openrft's 0 (off) is vLLM's -1 (off)
        assert sent.seed == row_seed(5, prompt_id, candidate) & 0x7FFFFFFF
        assert sent.stop_token_ids == stops and sent.logprobs == 1 and sent.detokenize is False
        assert sent.stop == []
    assert len({s.seed for s in call["params"]}) == 6  # every candidate its own random stream
    engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=20, stop=("</answer>",)))
    sent = llm.calls[-1]["params"][0]
    assert sent.stop == ["</answer>"] and sent.include_stop_str_in_output and sent.detokenize

    engine.generate(_prompts(1), SamplingParams(n=1, top_k=40, seed=None))
    assert llm.calls[2]["params"][0].top_k == 40 and llm.calls[2]["params"][0].seed is None


def test_completions_carry_the_sampled_tokens_log_probs_and_version(fake_vllm, tiny_model_dir, tokenizer):
    engine = VLLMEngine(str(tiny_model_dir), tokenizer, policy_version=4)
    stop = engine.stop_token_ids[0]
    groups = engine.generate(_prompts(2), SamplingParams(n=2, max_tokens=8, seed=1))
    assert [[(c.prompt_id, c.candidate_index) for c in g] for g in groups] == [
        [("q0", 0), ("q0", 1)],
        [("q1", 0), ("q1", 1)],
    ]
    first = groups[1][1]
    start = FIRST_TOKEN + (row_seed(1, "q1", 1) & 0x7FFFFFFF) % 7
    assert first.completion_token_ids == (start, start + 1, start + 2, stop)  # the end token is kept
    assert first.logprobs == (-0.25, -0.5, -0.75, -1.0)  # the sampled token's entry, never the decoy's
    assert first.finish_reason == "stop" and first.policy_version == 4
    assert first.text == tokenizer.decode([start, start + 1, start + 2], skip_special_tokens=True)
    assert first.prompt_token_ids == tuple(encode_messages(tokenizer, _prompts(2)[1].messages))

    truncated = engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=2, seed=1))[0][0]
    assert truncated.finish_reason == "length" and len(truncated.completion_token_ids) == 2
    assert truncated.text == tokenizer.decode(list(truncated.completion_token_ids), skip_special_tokens=True)
    assert engine.generate([], SamplingParams(n=2)) == []


def test_adapters_are_new_lora_requests_and_can_be_unloaded(fake_vllm, tiny_model_dir, tokenizer, tmp_path):
    engine = VLLMEngine(str(tiny_model_dir), tokenizer)
    llm = FakeLLM.instances[0]
    engine.load_adapter(str(tmp_path / "v1"), "policy-v1")
    engine.load_adapter(str(tmp_path / "v2"), "policy-v2")
    assert [(r.lora_name, r.lora_int_id, r.lora_path) for r in llm.llm_engine.added] == [
        ("policy-v1", 1, str(tmp_path / "v1")),
        ("policy-v2", 2, str(tmp_path / "v2")),
    ]
    engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=4))
    assert llm.calls[-1]["lora"].lora_name == "policy-v2"
    engine.unload_adapter("policy-v1")
    assert llm.llm_engine.removed == [1] and engine.current.lora_name == "policy-v2"
    engine.unload_adapter("policy-v2")
    engine.unload_adapter("never-loaded")  # nothing to do
    assert llm.llm_engine.removed == [1, 2] and engine.current is None


def test_bad_answers_from_vllm_are_rollout_errors(fake_vllm, tiny_model_dir, tokenizer):
    engine = VLLMEngine(str(tiny_model_dir), tokenizer)
    llm = FakeLLM.instances[0]
    llm.drop_logprob = True
    with pytest.raises(RolloutError, match="log-probs for 4 tokens"):
        engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=8))
    llm.drop_logprob, llm.finish_reason = False, "abort"
    with pytest.raises(RolloutError, match="finish_reason='abort'"):
        engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=8))
    with pytest.raises(RolloutError, match="max_concurrent_rollouts"):
        VLLMEngine(str(tiny_model_dir), tokenizer, max_concurrent_rollouts=0)


@pytest.mark.parametrize("version", ["0.9.2", "0.10.1", "0.10.1.post1"])
def test_a_vllm_whose_log_probs_leave_out_temperature_is_refused(
    fake_vllm, tiny_model_dir, tokenizer, version
):
    fake_vllm.__version__ = version
    with pytest.raises(RolloutError, match=rf"vLLM {version} is too old: openrft needs vllm>=0.10.2"):
        VLLMEngine(str(tiny_model_dir), tokenizer)
    fake_vllm.__version__ = "0.10.2"
    VLLMEngine(str(tiny_model_dir), tokenizer)
    fake_vllm.__version__ = "0.12.1.dev45+g1234abc.cu128"
    VLLMEngine(str(tiny_model_dir), tokenizer)


def test_vllm_failures_are_rollout_errors_with_vllm_s_reason(fake_vllm, tiny_model_dir, tokenizer, tmp_path):
    with pytest.raises(RolloutError, match="cannot start vLLM .*larger than the available KV cache memory"):
        VLLMEngine(str(tiny_model_dir), tokenizer, gpu_memory_utilization=0.99)
    engine = VLLMEngine(str(tiny_model_dir), tokenizer, colocate=True)
    llm = FakeLLM.instances[-1]
    engine.generate(_prompts(1), SamplingParams(n=1, top_p=0.0, max_tokens=4))  # vLLM refuses top_p=0:
    sent = llm.calls[-1]["params"][0]
    assert (sent.top_p, sent.top_k) == (1.0, 1)  # openrft's top_p=0 keeps the top token: top-k 1
    assert engine.asleep

    def refuse(**_):
        raise ValueError("invalid sampling parameters: max_tokens must be at least 1, got 0.")

    fake_vllm.SamplingParams = refuse
    with pytest.raises(RolloutError, match="failed to sample: invalid sampling parameters: max_tokens"):
        engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=4))
    fake_vllm.SamplingParams = FakeSamplingParams
    assert engine.asleep  # the GPU is handed back to the trainer even so
    with pytest.raises(RolloutError, match="cannot load the adapter .*Loading lora v1 failed"):
        engine.load_adapter(str(tmp_path / "broken"), "v1")
    with pytest.raises(RolloutError, match="did not load the adapter"):
        engine.load_adapter(str(tmp_path / "refused"), "v2")
    llm.dead = True  # the engine core died: its error, not the failing sleep after it, is reported
    with pytest.raises(RolloutError, match="EngineCore encountered an issue"):
        engine.generate(_prompts(1), SamplingParams(n=1, max_tokens=4))


def test_without_vllm_the_error_says_how_to_install_it(monkeypatch, tiny_model_dir, tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(RolloutError) as caught:
        VLLMEngine(str(tiny_model_dir), tokenizer)
    assert "vllm" in caught.value.message and "openrft[vllm]" in caught.value.hint


def test_a_rollout_worker_hands_each_adapter_to_vllm_as_a_peft_directory(fake_vllm, tiny_model_dir):
    """The Ray rollout actor's vLLM path, without Ray: snapshot tensors -> PEFT folder -> LoRARequest."""
    import torch
    from peft import LoraConfig

    from openrft.distributed.worker import AdapterSnapshot, RolloutWorker, WorkerSpec

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    worker = RolloutWorker(WorkerSpec(base_model=str(tiny_model_dir), lora_config=config, engine="vllm"))
    llm = FakeLLM.instances[-1]
    assert llm.options["max_lora_rank"] == 8 and worker.info()["version"] == -1
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    for version in (1, 2):
        assert worker.load(AdapterSnapshot(version, {key: torch.full((4, 32), float(version))})) == version
    first, second = llm.llm_engine.added
    assert (first.lora_name, second.lora_name) == ("policy-v000001", "policy-v000002")
    assert llm.llm_engine.removed == [first.lora_int_id]  # the older adapter is freed
    from safetensors.torch import load_file

    saved = load_file(f"{second.lora_path}/adapter_model.safetensors")
    assert torch.equal(saved[key], torch.full((4, 32), 2.0))
    assert json.loads(Path(second.lora_path, "adapter_config.json").read_text())["r"] == 4
    assert not Path(first.lora_path).exists()


def test_colocated_vllm_sleeps_while_the_trainer_steps_and_syncs_adapters_on_waking(
    fake_vllm, tiny_model_dir, tokenizer, tmp_path
):
    engine = VLLMEngine(str(tiny_model_dir), tokenizer, colocate=True, gpu_memory_utilization=0.3)
    llm = FakeLLM.instances[0]
    assert llm.options["enable_sleep_mode"] is True and llm.options["gpu_memory_utilization"] == 0.3
    params = SamplingParams(n=2, max_tokens=4, seed=1)
    engine.set_policy(0, tmp_path / "job-v000000")  # before any round: loaded at once (awake)
    engine.generate(_prompts(1), params)  # round 1
    engine.set_policy(1, tmp_path / "job-v000001")  # two optimizer steps while vLLM sleeps:
    engine.set_policy(2, tmp_path / "job-v000002")  # nothing touches the GPU until the next round
    assert llm.events[-1] == "sleep(1)" and engine.asleep
    engine.generate(_prompts(1), params)  # round 2: wake, register only the newest adapter, free the old
    first_id = llm.llm_engine.added[0].lora_int_id
    assert llm.events == [
        "add_lora(job-v000000)", "generate(job-v000000)", "sleep(1)",
        "wake_up", "add_lora(job-v000002)", f"remove_lora({first_id})", "generate(job-v000002)", "sleep(1)",
    ]  # fmt: skip
    assert engine.policy_version == 2 and list(engine.adapters) == ["job-v000002"]
    groups = engine.generate(_prompts(1), params)
    assert all(c.policy_version == 2 for c in groups[0])


def test_a_single_gpu_job_builds_a_colocated_engine(fake_vllm, tiny_model_dir, tokenizer):
    from openrft.config import build_config
    from openrft.train.setup import make_engine

    cfg = build_config({}, {"base_model": str(tiny_model_dir), "rollout_engine": "vllm",
                            "vllm_gpu_memory_utilization": 0.45})[0]  # fmt: skip
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    model.generation_config = types.SimpleNamespace(eos_token_id=[tokenizer.eos_token_id, 7])
    engine, needs_files = make_engine(cfg.settings().engine, model, tokenizer, str(tiny_model_dir), 900)
    llm = FakeLLM.instances[-1]
    assert needs_files and engine.colocate and llm.options["gpu_memory_utilization"] == 0.45
    # the trainer's weight type (vLLM's "auto" samples a float32 checkpoint in float16), a KV cache for the
    # job's longest sequence rather than the model's whole context, and the model's own end tokens
    assert llm.options["dtype"] == "bfloat16" and llm.options["max_model_len"] == 900
    assert 7 in engine.stop_token_ids


def test_agent_calls_reach_vllm_as_the_recorded_token_ids(fake_vllm, tiny_model_dir, tokenizer):
    """An agent over the vLLM engine: its second call is sent as the first call's prompt + sampled
    tokens + the new turn's tokens (token in, token out), and both calls are trained as one sequence."""
    from openrft.rollout.agents import Agent, AgentEngine

    def two_turns(row, client):
        messages = [m.model_dump(exclude_none=True) for m in row.messages]
        for _ in range(2):
            reply = client.chat.completions.create(model="policy", messages=messages)
            messages += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                         {"role": "user", "content": "Again."}]  # fmt: skip
        row.messages = messages[:-1]
        return row

    engine = AgentEngine(
        VLLMEngine(str(tiny_model_dir), tokenizer), Agent(two_turns, False, "t"), max_context=512
    )
    try:
        (group,) = engine.generate(_prompts(1), SamplingParams(n=2, max_tokens=6, seed=3))
    finally:
        engine.close()
    sent = [p["prompt_token_ids"] for call in FakeLLM.instances[0].calls for p in call["prompts"]]
    assert len(sent) == 4  # two conversations, two calls each
    for c in group:
        assert not c.error and c.agent_metrics["turns"] == 2 and not c.continuations
        full = c.prompt_token_ids + c.completion_token_ids
        assert list(c.prompt_token_ids) in sent  # the first call: the rendered row
        # the second call: exactly the first prompt, the sampled tokens and the new turn, as one prefix
        assert any(len(s) > len(c.prompt_token_ids) and tuple(s) == full[: len(s)] for s in sent)
        assert c.completion_mask.index(0) > 0 and c.completion_mask[-1] == 1


def test_a_job_tells_vllm_its_longest_sequence(fake_vllm, tiny_model_dir, tiny_model, tokenizer):
    from openrft.config import build_config
    from openrft.train.job import build_engine

    model, _ = tiny_model
    cfg = build_config(
        {}, {"base_model": str(tiny_model_dir), "rollout_engine": "vllm", "max_output_tokens": 50}
    )[0]
    long_prompt = Prompt("long", ({"role": "user", "content": "one two three " * 20},))
    prepared = types.SimpleNamespace(settings=cfg.settings(), dataset=_prompts(2), evaluation_dataset=[long_prompt],
                                     evaluator=types.SimpleNamespace(rollout=None))  # fmt: skip
    build_engine(prepared, model, tokenizer)
    longest = len(encode_messages(tokenizer, long_prompt.messages))
    assert FakeLLM.instances[-1].options["max_model_len"] == longest + 50
    # a float32 trainer: vLLM's LoRA kernels take half precision only, bfloat16 where the GPU has it
    assert FakeLLM.instances[-1].options["dtype"] == "bfloat16"


def test_a_colocated_vllm_job_under_expandable_segments_is_refused_at_creation(fake_vllm, monkeypatch):
    from openrft.config import build_config
    from openrft.errors import ConfigError
    from openrft.train.job import _require_extras

    cfg = build_config({}, {"rollout_engine": "vllm"})[0]
    _require_extras(cfg)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128, expandable_segments:True")
    with pytest.raises(ConfigError, match="expandable_segments") as refused:
        _require_extras(cfg)
    assert "unset PYTORCH_CUDA_ALLOC_CONF" in refused.value.hint
