"""The local engine's compiled decoding step: when it starts, what it samples, and its fallbacks.

The slot run's sampling contract is checked by every test of test_local_engine.py (run once with the
fixed-slot step). Here ``torch.compile`` runs for real where a C++ compiler is present (inductor's CPU
backend needs one; `make test` installs g++ as root).
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from test_local_engine import make_prompts, teacher_forced, tokens_of

from openrft.records import SamplingParams
from openrft.rollout import local
from openrft.rollout.local import LocalEngine
from openrft.rollout.slots import bucket_columns

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None, reason="inductor needs a C++ compiler on a CPU"
)
PARAMS = SamplingParams(n=3, temperature=1.0, top_k=0, max_tokens=12, seed=4)


def stops_of(tokenizer) -> list[int]:
    return list(range(0, len(tokenizer), 7))  # uneven lengths: slots free up and are refilled


def engine_of(model, tokenizer, **options) -> LocalEngine:
    return LocalEngine(
        model, tokenizer, max_concurrent_rollouts=4, stop_token_ids=stops_of(tokenizer), **options
    )


def test_columns_are_powers_of_two_from_128():
    assert [bucket_columns(n) for n in (1, 128, 129, 300, 1000, 1024, 1025)] == [
        128,
        128,
        256,
        512,
        1024,
        1024,
        2048,
    ]


def test_compiling_starts_after_the_eager_budget(tiny_model):
    model, tokenizer = tiny_model
    assert not engine_of(model, tokenizer, compile_after=0).compiling()  # auto: CUDA only
    assert not engine_of(model, tokenizer, compile_step=False, compile_after=0).compiling()
    engine = engine_of(model, tokenizer, compile_step=True, compile_after=1e9)
    engine.generate(make_prompts(2), PARAMS)
    assert engine.eager_seconds > 0 and not engine.compiling() and engine.slots is None
    engine.compile_after = engine.eager_seconds  # the eager budget is spent: the next call compiles
    assert engine.compiling()


@needs_compiler
def test_compiled_step_samples_what_the_eager_step_samples(tiny_model):
    model, tokenizer = tiny_model
    eager = engine_of(model, tokenizer, compile_step=False)
    compiled = engine_of(model, tokenizer, compile_step=True, compile_after=0)
    expected = eager.generate(make_prompts(3), PARAMS)
    first = compiled.generate(make_prompts(3), PARAMS)
    buffers = compiled.slots
    assert buffers is not None and buffers.compiled  # compiled, not fallen back
    second = compiled.generate(make_prompts(3), PARAMS)
    assert compiled.slots is buffers  # the same shape reuses its buffers and graph
    assert tokens_of(first) == tokens_of(second) == tokens_of(expected)
    for got, want in zip((c for g in first for c in g), (c for g in expected for c in g), strict=True):
        assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs, strict=True)) < 1e-4
        assert got.finish_reason == want.finish_reason and got.text == want.text
    assert eager.eager_seconds > 0 and compiled.eager_seconds == 0


@needs_compiler
def test_compiled_step_reads_the_adapter_as_it_is_trained(tiny_model):
    """The trainer updates the LoRA weights in place between calls: the compiled step must see them."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_model
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    policy = get_peft_model(model, config)
    engine = engine_of(policy, tokenizer, compile_step=True, compile_after=0)
    before = engine.generate(make_prompts(2), PARAMS)
    with torch.no_grad():  # an optimizer step: the same tensors, new values
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    after = engine.generate(make_prompts(2), PARAMS)
    assert engine.slots is not None and engine.slots.compiled
    assert tokens_of(after) != tokens_of(before)
    for c in (c for g in after for c in g):
        assert (torch.tensor(c.logprobs) - teacher_forced(policy, c, 1.0)).abs().max() <= 1e-4


def test_a_failed_compilation_falls_back_to_eager_steps(tiny_model, monkeypatch, caplog):
    model, tokenizer = tiny_model
    expected = engine_of(model, tokenizer, compile_step=False).generate(make_prompts(2), PARAMS)

    def broken(fn, **kwargs):
        def run():
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    engine = engine_of(model, tokenizer, compile_step=True, compile_after=0)
    with caplog.at_level(logging.WARNING, logger="openrft.rollout.slots"):
        got = engine.generate(make_prompts(2), PARAMS)
    assert "compiling the decoding step failed (RuntimeError: no compiler here)" in caplog.text
    assert tokens_of(got) == tokens_of(expected)
    assert engine.slots is not None and not engine.slots.compiled


@needs_compiler
def test_past_the_recompile_limit_the_step_says_so_and_runs_eagerly(tiny_model, monkeypatch, caplog):
    """torch would run a variant past its limit uncompiled without a word: the step must notice."""
    from openrft.rollout import slots

    model, tokenizer = tiny_model
    torch._dynamo.reset()
    monkeypatch.setattr(slots, "RECOMPILE_LIMIT", 1)
    engine = engine_of(model, tokenizer, compile_step=True, compile_after=0)
    expected = engine_of(model, tokenizer, compile_step=False)
    params = [SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=m, seed=1) for m in (8, 200)]
    assert tokens_of(engine.generate(make_prompts(1), params[0])) == tokens_of(
        expected.generate(make_prompts(1), params[0])
    )
    assert engine.slots.compiled and "failed" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="openrft.rollout.slots"):
        wider = engine.generate(make_prompts(1), params[1])  # new buffers: a second variant
    assert "compiling the decoding step failed" in caplog.text and not engine.slots.compiled
    assert tokens_of(wider) == tokens_of(expected.generate(make_prompts(1), params[1]))
    torch._dynamo.reset()


def test_buffers_that_would_not_fit_leave_the_call_eager(tiny_model, monkeypatch, caplog):
    model, tokenizer = tiny_model
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(local, "SLOT_MEMORY_SHARE", 1e-12)
    engine = engine_of(model, tokenizer, compile_step=True, compile_after=0)
    with caplog.at_level(logging.WARNING, logger="openrft.rollout.local"):
        engine.generate(make_prompts(2), PARAMS)
    assert "this call decodes eagerly" in caplog.text
    assert engine.slots is None and engine.eager_seconds > 0


def test_an_allocation_that_fails_leaves_the_call_eager(tiny_model, monkeypatch, caplog):
    model, tokenizer = tiny_model

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(local, "SlotBuffers", out_of_memory)
    engine = engine_of(model, tokenizer, compile_step=True, compile_after=0)
    expected = engine_of(model, tokenizer, compile_step=False).generate(make_prompts(2), PARAMS)
    with caplog.at_level(logging.WARNING, logger="openrft.rollout.local"):
        assert tokens_of(engine.generate(make_prompts(2), PARAMS)) == tokens_of(expected)
    assert "this call decodes eagerly" in caplog.text and engine.slots is None


def test_the_buffers_only_grow(tiny_model, monkeypatch):
    """A narrower call reuses wider buffers (one compiled shape), a wider one replaces them."""
    model, tokenizer = tiny_model
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    engine = engine_of(model, tokenizer, compile_step=True, compile_after=0)
    expected = engine_of(model, tokenizer, compile_step=False)
    widths = []
    for max_tokens in (8, 200, 8, 400, 8):  # prompt + response under 128, 256, 128, 512, 128
        params = SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=max_tokens, seed=1)
        got = engine.generate(make_prompts(1), params)
        assert tokens_of(got) == tokens_of(expected.generate(make_prompts(1), params))
        widths.append(engine.slots.columns)
    assert widths == [128, 256, 256, 512, 512]


def test_no_compile_flag_keeps_the_job_engine_eager(tiny_model):
    from openrft.config import build_config
    from openrft.train.setup import make_engine

    model, tokenizer = tiny_model
    for flags, wanted in (({}, None), ({"compile": False}, False)):
        settings = build_config({}, flags)[0].settings()
        engine, _ = make_engine(settings.engine, model, tokenizer, "tiny")
        assert engine.compile_step is wanted


@needs_compiler
def test_a_job_sampled_by_the_compiled_step_trains_the_eager_jobs_adapter(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A whole job (rounds, training between them, evaluations) with every call compiled, against eager."""
    from safetensors.torch import load_file
    from test_train_e2e import _flags

    from openrft.cli import main
    from openrft.tracking.sinks import read_jsonl

    def job(name: str) -> tuple[list, dict]:
        out = tmp_path / name
        assert main(["rftj", "create", *_flags(tiny_model_dir, out, "dapo")]) == 0
        rewards = [
            row["reward/mean"] for row in read_jsonl(out / "out" / "metrics.jsonl") if "reward/mean" in row
        ]
        return rewards, load_file(out / "out" / "adapter_model.safetensors")

    eager_rewards, eager_adapter = job("eager")
    compiled_engines: list[LocalEngine] = []
    monkeypatch.setattr(LocalEngine, "compiling", lambda self: compiled_engines.append(self) or True)
    rewards, adapter = job("compiled")
    assert compiled_engines and all(e.slots is not None and e.slots.compiled for e in compiled_engines)
    assert rewards == pytest.approx(eager_rewards, abs=1e-6) and len(rewards) >= 3
    assert adapter.keys() == eager_adapter.keys()
    for name, weight in adapter.items():
        assert torch.allclose(weight, eager_adapter[name], atol=1e-5), name
