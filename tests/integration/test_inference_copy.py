"""Sampling from an inference copy (adapter merged, weights prepacked): the same distribution as the model."""

from __future__ import annotations

import torch

from openrft.records import Prompt, SamplingParams
from openrft.rollout.inference_copy import InferenceCopy, PackedLinear, prepack_pays
from openrft.rollout.local import LocalEngine
from openrft.train.policy import attach_lora, trainable_parameters
from oracles import teacher_forced

PROMPTS = [
    Prompt("a", ({"role": "user", "content": "What is 3 + 4?"},)),
    Prompt("b", ({"role": "user", "content": "Hi"},)),
]


def test_merged_copy_samples_the_live_adapter_and_follows_each_new_policy(tiny_model):
    model, tokenizer = tiny_model
    policy = attach_lora(model, rank=4, seed=0)
    for p in trainable_parameters(policy):
        p.data.normal_(0, 0.05)
    merged = LocalEngine(policy, tokenizer, inference_copy=True)
    through_peft = LocalEngine(policy, tokenizer)
    params = SamplingParams(n=4, temperature=0.8, top_k=40, max_tokens=10, seed=3)
    for version in (1, 2):
        merged.set_policy(version)
        a, b = merged.generate(PROMPTS, params), through_peft.generate(PROMPTS, params)
        same = total = 0
        for group_a, group_b in zip(a, b, strict=True):
            for ca, cb in zip(group_a, group_b, strict=True):
                # the log-probs are the policy's (the one the trainer computes) to 1e-4
                assert (torch.tensor(ca.logprobs) - teacher_forced(policy, ca, 0.8)).abs().max() <= 1e-4
                same += sum(
                    x == y for x, y in zip(ca.completion_token_ids, cb.completion_token_ids, strict=False)
                )
                total += len(cb.completion_token_ids)
        # same seeds: the same tokens, but for the rare uniform within float rounding of a boundary
        assert same / total >= 0.9
        for p in trainable_parameters(policy):  # an optimizer step: the next version differs
            p.data.add_(torch.randn_like(p) * 0.05)
    assert merged.copy.version == 2
    base = {n: p.clone() for n, p in policy.named_parameters() if "lora_" not in n}
    merged.set_policy(3)
    merged.generate(PROMPTS[:1], params)
    assert all(torch.equal(base[n], p) for n, p in policy.named_parameters() if "lora_" not in n)  # untouched


def test_a_bfloat16_policy_is_sampled_through_peft_not_a_merged_copy(tiny_model):
    model, tokenizer = tiny_model
    policy = attach_lora(model.to(torch.bfloat16), rank=4, seed=0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # an update of the size a few optimizer steps make
            p.data.normal_(0, 2e-3)
    # the reason: merged into bfloat16 weights, most of such an update rounds away
    layer = next(m for m in policy.modules() if hasattr(m, "get_delta_weight"))
    weight_OI = layer.base_layer.weight
    delta_OI = layer.get_delta_weight("default")
    kept = (weight_OI + delta_OI.to(weight_OI.dtype)) - weight_OI
    assert (kept.float() - delta_OI.float()).abs().sum() > 0.3 * delta_OI.float().abs().sum()

    asked = LocalEngine(policy, tokenizer, inference_copy=True)
    assert asked.copy is None
    plain = LocalEngine(policy, tokenizer)
    params = SamplingParams(n=3, temperature=1.0, top_k=20, max_tokens=8, seed=2)
    a, b = asked.generate(PROMPTS, params), plain.generate(PROMPTS, params)
    assert [[c.completion_token_ids for c in g] for g in a] == [
        [c.completion_token_ids for c in g] for g in b
    ]


def test_packed_linear_multiplies_like_the_plain_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 40, bias=True)
    packed = PackedLinear(linear)
    for shape in ((1, 48), (7, 48), (3, 5, 48)):
        x = torch.randn(*shape)
        assert (packed(x) - linear(x)).abs().max() <= 1e-5
    packed.load(linear.weight * 2)  # a new policy: repacked from the new weights
    x = torch.randn(4, 48)
    assert (packed(x) - torch.nn.functional.linear(x, linear.weight * 2, linear.bias)).abs().max() <= 1e-5


def test_inference_copy_of_a_plain_model_prepacks_every_linear_and_keeps_the_log_probs(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, inference_copy=True, prepack=True)
    assert engine.copy.prepacked  # fp32 on a CPU with oneDNN (every CI machine)
    copied = list(engine.copy.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in copied)
    assert sum(isinstance(m, PackedLinear) for m in copied) == sum(
        type(m) is torch.nn.Linear for m in model.modules()
    )  # the model itself keeps its plain layers
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=5)
    for group in engine.generate(PROMPTS, params):
        for c in group:
            assert (torch.tensor(c.logprobs) - teacher_forced(model, c, 1.0)).abs().max() <= 1e-4


def test_the_copy_prepacks_only_where_packed_layers_measure_faster(tiny_model, monkeypatch, tmp_path):
    from openrft.rollout import inference_copy

    model, _ = tiny_model
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    cache = tmp_path / "cache" / "prepack.json"
    plain = InferenceCopy(model, prepack=False)
    assert not plain.prepacked and not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    plain_s, packed_s = inference_copy.time_linear_passes(model, rows=(1, 4), repeats=1)
    assert set(plain_s) == set(packed_s) == {1, 4} and all(
        t > 0 for t in [*plain_s.values(), *packed_s.values()]
    )
    slower = {1: 2.0, 16: 1.0, 64: 1.0}
    monkeypatch.setattr(inference_copy, "time_linear_passes", lambda m: ({1: 1.0, 16: 2.0, 64: 4.0}, slower))
    assert not prepack_pays(model) and not InferenceCopy(model).prepacked
    faster = {1: 0.5, 16: 1.5, 64: 3.5}
    monkeypatch.setattr(inference_copy, "time_linear_passes", lambda m: ({1: 1.0, 16: 2.0, 64: 4.0}, faster))
    assert prepack_pays(model)
    assert not InferenceCopy(
        model
    ).prepacked  # this machine's answer was kept: every job makes the same choice
    cache.unlink()
    assert InferenceCopy(model).prepacked and cache.is_file()
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_packed_layers_must_win_overall_and_lose_at_no_batch_size():
    from openrft.rollout.inference_copy import packed_wins

    plain = {1: 10.0, 16: 20.0, 64: 40.0}
    assert packed_wins(plain, {1: 5.0, 16: 15.0, 64: 30.0})  # the AMD machine: faster everywhere
    assert not packed_wins(plain, {1: 13.0, 16: 14.0, 64: 30.0})  # 0.81x in all, but slower at 1 row
    assert not packed_wins(plain, {1: 9.9, 16: 19.9, 64: 39.9})  # no slower, but not clearly faster
    assert packed_wins(plain, {1: 9.0, 16: 18.0, 64: 36.0}, margin=0.9)
