"""Training raises reward: each loss method, run by the real loop on a tiny model, learns a simple task.

The task: for each prompt, a target token (the base model's 3rd most likely first token, so
its start rate is low but not zero) earns 1 when it is the response's first token. The loop,
the engine, the advantages, the registry's loss and the optimizer are the project's own; only
the scorer (on token ids) and the model (tiny, random, built here) are the test's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openrft.algo.losses import resolve_loss
from openrft.config import build_config
from openrft.records import Prompt, Score
from openrft.rollout.local import LocalEngine
from openrft.rollout.prompts import encode_messages
from openrft.testing import tiny_model
from openrft.tracking.progress import ProgressBar
from openrft.train.batching import TrainSequence, collate
from openrft.train.checkpoint import LoopState
from openrft.train.loop import TrainContext, train
from openrft.train.policy import attach_lora, trainable_parameters
from openrft.train.setup import make_optimizer
from openrft.train.step import StepLoss, accumulate_gradients

PROMPTS, CANDIDATES, ROUNDS = 8, 16, 8


class ListSink:
    def __init__(self) -> None:
        self.lines: list[dict[str, float]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.lines.append({"step": step, **metrics})

    def log_rollouts(self, step, rows) -> None:
        pass

    def close(self) -> None:
        pass


def _policy_and_task(tokenizer):
    model, _ = tiny_model(seed=3, tokenizer=tokenizer)
    prompts = [Prompt(f"p{i}", ({"role": "user", "content": f"Say something about {w}."},)) for i, w in
               enumerate(["cats", "rain", "maps", "tea", "ships", "bread", "snow", "glass"])]  # fmt: skip
    targets = {}
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([encode_messages(tokenizer, p.messages)])
            logits_V = model(input_ids=ids).logits[0, -1]
            targets[p.prompt_id] = int(logits_V.topk(3).indices[2])
    return attach_lora(model, rank=8, seed=0), prompts, targets


def _score(targets):
    def score(prompts, completions):
        return [
            [Score(float(c.completion_token_ids[:1] == (targets[p.prompt_id],))) for c in group]
            for p, group in zip(prompts, completions, strict=True)
        ]

    return score


def _settings(method: str):
    values = {
        "rl_loss_method": method, "response_candidates_count": CANDIDATES, "chunk_size": PROMPTS,
        "epochs": ROUNDS, "temperature": 1.0, "top_k": 8, "eval_every": 0, "checkpoint_every": 1000,
        "seed": 1, "learning_rate": 5e-4,
    }  # fmt: skip
    settings = build_config({}, values)[0].settings()
    sampling = dataclasses.replace(settings.sampling, max_tokens=2)
    # an in-range learning rate learns too slowly for a test; the tiny model takes a larger one
    optimizer = dataclasses.replace(settings.optimizer, learning_rate=2e-2)
    return dataclasses.replace(settings, sampling=sampling, optimizer=optimizer)


@pytest.mark.parametrize("method", ["grpo", "dapo", "gspo-token"])
def test_each_loss_method_raises_the_reward(tokenizer, tmp_path, method):
    torch.manual_seed(0)
    model, prompts, targets = _policy_and_task(tokenizer)
    settings = _settings(method)
    engine = LocalEngine(model, tokenizer)
    optimizer, scheduler = make_optimizer(settings.optimizer, model)
    sink = ListSink()
    ctx = TrainContext(
        settings=settings, model=model, pad_token_id=tokenizer.pad_token_id, engine=engine,
        score=_score(targets), train_prompts=prompts, eval_prompts=[], optimizer=optimizer,
        scheduler=scheduler, sink=sink, checkpoint_dir=tmp_path / "checkpoints",
        progress=ProgressBar(0, enabled=False), publish_policy=engine.set_policy,
    )  # fmt: skip
    outcome = train(ctx, LoopState())
    rewards = [line["reward/mean"] for line in sink.lines if "reward/mean" in line]
    # an epoch (one round here) in which every group scored all 1s ends the job early: learned
    assert outcome.status == "completed" or rewards[-1] > 0.9, (outcome, rewards)
    start, end = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert start < 0.35, rewards  # the target is rarely the first token at first...
    assert end > start + 0.3, rewards  # ...and the policy learned to say it
    assert engine.policy_version == outcome.state.optimizer_step == len(rewards)
    if method == "grpo":
        assert all(line["kl/coef"] == 0.001 for line in sink.lines if "kl/coef" in line)
        assert max(line["kl/mean"] for line in sink.lines if "kl/mean" in line) > 0  # the policy moved


def test_the_three_methods_give_different_gradients_for_the_same_batch(tokenizer):
    torch.manual_seed(0)
    model, prompts, targets = _policy_and_task(tokenizer)
    engine = LocalEngine(model, tokenizer)
    params = dataclasses.replace(_settings("dapo").sampling, seed=5)
    completions = engine.generate(prompts, params)
    scores = _score(targets)(prompts, completions)
    sequences = [
        TrainSequence(c, 1.0 if s.score else -0.5, g)
        for g, (group, group_scores) in enumerate(zip(completions, scores, strict=True))
        for c, s in zip(group, group_scores, strict=True)
    ]
    batch = collate(sequences, tokenizer.pad_token_id)
    # old log-probs below the current ones by 0.22 on first tokens, above by 0.02 on second ones:
    # token ratios 1.25 (inside dapo's clip-higher range 1.28, outside grpo's 1.2) and 0.98, and
    # a sequence ratio e^0.1 = 1.105 (far outside gspo-token's 1 + 4e-4)
    shift_RC = torch.tensor([0.22, -0.02]).expand_as(batch.old_logprobs_RC)
    batch.old_logprobs_RC = (batch.old_logprobs_RC - shift_RC) * batch.completion_mask_RC
    grads = {}
    for method in ("grpo", "dapo", "gspo-token"):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, [batch], StepLoss(*resolve_loss(method), params.temperature))
        grads[method] = torch.cat([p.grad.flatten() for p in trainable_parameters(model)])
    for a, b in [("grpo", "dapo"), ("grpo", "gspo-token"), ("dapo", "gspo-token")]:
        assert not torch.allclose(grads[a], grads[b], rtol=1e-3, atol=1e-9), (a, b)
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_non_finite_updates_are_skipped_counted_and_stop_the_job_when_they_persist(
    tokenizer, tmp_path, monkeypatch
):
    import openrft.train.loop as loop
    from openrft.errors import JobError

    poisoned: set[int] = {2, 5, 6, 7}  # training steps whose gradient is NaN
    real = loop.accumulate_gradients
    calls = [0]

    def poisoning(model, batches, loss, scale=1.0, **options):
        calls[0] += 1
        metrics = real(model, batches, loss, scale, **options)
        if calls[0] in poisoned:
            for p in trainable_parameters(model):
                p.grad.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(loop, "accumulate_gradients", poisoning)
    torch.manual_seed(0)
    model, prompts, targets = _policy_and_task(tokenizer)
    engine = LocalEngine(model, tokenizer)
    settings = _settings("dapo")
    optimizer, scheduler = make_optimizer(settings.optimizer, model)
    sink = ListSink()
    ctx = TrainContext(
        settings=settings, model=model, pad_token_id=tokenizer.pad_token_id, engine=engine,
        score=_score(targets), train_prompts=prompts, eval_prompts=[], optimizer=optimizer,
        scheduler=scheduler, sink=sink, checkpoint_dir=tmp_path / "checkpoints",
        progress=ProgressBar(0, enabled=False), publish_policy=engine.set_policy,
    )  # fmt: skip
    with pytest.raises(JobError, match="not finite in 3 updates in a row"):
        train(ctx, LoopState())
    skipped = [line["loss/nonfinite_skipped"] for line in sink.lines if "loss/nonfinite_skipped" in line]
    assert skipped == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # step 7's failure ended the job before its line
    assert all(torch.isfinite(p).all() for p in trainable_parameters(model))  # nothing non-finite applied
    assert engine.policy_version == 3  # the three good updates only
