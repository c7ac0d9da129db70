"""Recomputed old log-probs in bfloat16: taken in the micro-batches each step trains, they are the step's own."""

from __future__ import annotations

import torch

from openrft.models import EMBEDDED_MODEL, load_model
from openrft.records import Prompt, SamplingParams
from openrft.rollout.local import LocalEngine
from openrft.train.batching import TrainSequence, collate, plan_micro_batches, plan_steps
from openrft.train.mismatch import recompute_old_logprobs
from openrft.train.policy import attach_lora, keep_adapter_float32
from openrft.train.step import batch_logprobs, plan_step, training_mode

QUESTIONS = ("What is 17 * 23?", "Name a prime number above 50.", "Write a haiku about rain.")


def test_old_log_probs_in_bfloat16_equal_the_training_pass_of_each_step():
    base, tokenizer = load_model(EMBEDDED_MODEL, dtype=torch.bfloat16)
    policy = attach_lora(base, rank=8, seed=0)
    keep_adapter_float32(policy)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # an adapter that has moved
            p.data.normal_(0, 0.01)
    prompts = [Prompt(f"p{i}", ({"role": "user", "content": q},)) for i, q in enumerate(QUESTIONS)]
    engine = LocalEngine(policy, tokenizer, compile_step=False)
    groups = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=1))
    sequences = [
        TrainSequence(c, 1.0 if c.candidate_index % 2 else -1.0, g) for g, cs in enumerate(groups) for c in cs
    ]
    steps = [[sequences[i] for i in step] for step in plan_steps(sequences, 200)]
    assert len(steps) >= 2

    def logprobs(model, batch):
        return batch_logprobs(model, batch, 1.0)

    pad = tokenizer.pad_token_id
    done, metrics = recompute_old_logprobs(
        policy, steps, logprobs, lambda step: plan_micro_batches(step, 64), pad_token_id=pad, cap=2.0
    )
    assert metrics["mismatch/kl"] > 0  # bfloat16 decoding and the trainer's pass do differ
    for step in done:
        batches, _ = plan_step(step, 64, pad)
        assert len(batches) >= 2
        with training_mode(policy):
            for batch in batches:  # the training pass, gradients on: exactly the recomputed values
                trained_RC = logprobs(policy, batch).detach()
                mask_RC = batch.completion_mask_RC.bool()
                assert torch.equal(trained_RC[mask_RC], batch.old_logprobs_RC[mask_RC])
    whole = collate([s for step in done for s in step], pad)  # the sampler's, for contrast
    assert not torch.equal(whole.sampler_logprobs_RC, whole.old_logprobs_RC)
