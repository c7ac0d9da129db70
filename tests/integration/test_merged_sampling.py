"""Sampling from a merged copy of the adapter: the same distribution as sampling through peft."""

from __future__ import annotations

import torch

from openrft.records import Prompt, SamplingParams
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
    merged = LocalEngine(policy, tokenizer, merge_adapter=True)
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
    assert merged.merged.version == 2
    base = {n: p.clone() for n, p in policy.named_parameters() if "lora_" not in n}
    merged.set_policy(3)
    merged.generate(PROMPTS[:1], params)
    assert all(torch.equal(base[n], p) for n, p in policy.named_parameters() if "lora_" not in n)  # untouched
