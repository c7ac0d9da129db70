"""The compiled step's slot layout (openrft.rollout.slots): widths, buffer sizes and per-call settings.

``torch.compile`` is replaced by the identity here: the slot run itself (fixed buffers, left-aligned
rows) runs eagerly on the CPU, so these stay fast; tests/integration/test_compiled_step.py compiles.
"""

from __future__ import annotations

import pytest
import torch

from openrft.errors import RolloutError
from openrft.records import SamplingParams
from openrft.rollout import decode, slots
from openrft.rollout.local import LocalEngine
from openrft.rollout.slots import SlotRun, SlotShape


@pytest.fixture(autouse=True)
def no_compiler(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


def engines(model, tokenizer) -> tuple[LocalEngine, LocalEngine]:
    """(slot engine, eager engine), both ending rows only at max_tokens (no stop token is ever sampled)."""
    options = {"max_concurrent_rollouts": 4, "stop_token_ids": [len(tokenizer) + 1]}
    slotted = LocalEngine(model, tokenizer, compile_step=True, compile_after=0, **options)
    return slotted, LocalEngine(model, tokenizer, compile_step=False, **options)


def test_the_slot_width_covers_the_longest_prompt_plus_its_response_not_the_shortest(tiny_model):
    model, tokenizer = tiny_model
    slotted, eager = engines(model, tokenizer)
    prompts = [("short", list(range(10, 20))), ("long", list(range(10, 110)))]  # 10 and 100 tokens
    params = SamplingParams(n=1, temperature=1.0, top_k=0, max_tokens=30, seed=3)  # 130 > 128 columns
    got = slotted.generate_from_ids(prompts, params)
    assert slotted.slots is not None and slotted.slots.columns == 256
    expected = eager.generate_from_ids(prompts, params)
    assert [[c.completion_token_ids for c in g] for g in got] == [
        [c.completion_token_ids for c in g] for g in expected
    ]
    assert all(len(c.completion_token_ids) == 30 for g in got for c in g)


def test_slot_buffer_bytes_count_keys_and_values_of_every_layer_slot_and_column():
    shape = SlotShape(layers=3, kv_heads=2, head_dim=8, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert shape.nbytes(slots=5, columns=128) == 2 * 3 * 5 * 2 * 128 * 8 * 2  # keys + values, 2 bytes each


def test_a_slot_run_decodes_under_the_recompile_limit_and_fails_loudly_past_it(tiny_model, monkeypatch):
    model, tokenizer = tiny_model
    seen = []
    original = decode.Run.execute

    def spy(self):
        config = torch._dynamo.config
        seen.append({k: getattr(config, k) for k in ("recompile_limit", "fail_on_recompile_limit_hit")
                     if hasattr(config, k)})  # fmt: skip
        return original(self)

    monkeypatch.setattr(decode.Run, "execute", spy)
    slotted, _ = engines(model, tokenizer)
    slotted.generate_from_ids([("p", list(range(10, 20)))], SamplingParams(n=1, max_tokens=2, seed=0))
    assert seen and seen[0].get("recompile_limit", slots.RECOMPILE_LIMIT) == slots.RECOMPILE_LIMIT
    assert seen[0].get("fail_on_recompile_limit_hit", True) is True


def test_every_prompt_stash_is_dropped_once_all_its_candidates_are_admitted(tiny_model, monkeypatch):
    model, tokenizer = tiny_model
    runs: list[SlotRun] = []
    original = SlotRun.execute

    def spy(self):
        runs.append(self)
        return original(self)

    monkeypatch.setattr(SlotRun, "execute", spy)
    slotted, _ = engines(model, tokenizer)
    prompts = [(f"p{i}", list(range(10 + i, 20 + i))) for i in range(3)]
    slotted.generate_from_ids(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=4, seed=1))
    assert len(runs) == 1 and runs[0].stash == {}


def test_a_prompt_cache_of_another_shape_is_refused_with_a_hint_to_decode_eagerly():
    shape = SlotShape(layers=2, kv_heads=2, head_dim=4, dtype=torch.float32, device=torch.device("cpu"))
    buffers = slots.SlotBuffers(lambda *a: None, lambda m: m, shape, slots=3, columns=128, compile=False)
    fits = [(torch.ones(2, 5, 4), torch.ones(2, 5, 4))] * 2  # [heads, prompt, dim] per layer
    buffers.place(torch.tensor([1]), [fits])
    assert buffers.kv[1][0][1, :, :5].eq(1).all() and buffers.kv[1][0][1, :, 5:].eq(0).all()
    for heads, dim in ((3, 4), (2, 8)):
        other = [(torch.ones(heads, 5, dim), torch.ones(heads, 5, dim))] * 2
        with pytest.raises(RolloutError, match="does not match the compiled step's buffers.*--no-compile"):
            buffers.place(torch.tensor([0]), [other])
