"""The loop's schedule, run for real on a tiny model: accumulated updates (the last partial one too), a
cancel that waits for an update's end, early stop from the second epoch, the evaluation cadence and its
candidate count, and distinct round seeds. Scores are a function of the candidate, so every group has
signal unless a test says otherwise."""

from __future__ import annotations

import dataclasses

import torch
from test_learning import ListSink

from openrft.config import build_config
from openrft.records import Prompt, Score
from openrft.rollout.local import LocalEngine
from openrft.testing import tiny_model
from openrft.tracking.progress import ProgressBar
from openrft.train.checkpoint import LoopState
from openrft.train.loop import TrainContext, round_seed, train
from openrft.train.policy import attach_lora
from openrft.train.setup import make_optimizer

PROMPTS = [Prompt(f"p{i}", ({"role": "user", "content": f"Name a colour {i}."},)) for i in range(4)]


class CountingEngine(LocalEngine):
    """The local engine, remembering the candidates asked for each call."""

    asked: list[int]

    def generate(self, prompts, params):
        self.asked.append(params.n)
        return super().generate(prompts, params)


def by_candidate(prompts, completions):
    return [[Score(float(c.candidate_index % 2)) for c in group] for group in completions]


def run(tokenizer, tmp_path, score=by_candidate, should_stop=lambda: False, eval_prompts=(), **values):
    torch.manual_seed(0)
    model, _ = tiny_model(seed=1, tokenizer=tokenizer)
    model = attach_lora(model, rank=2, seed=0)
    values = {"response_candidates_count": 4, "chunk_size": 4, "epochs": 1, "eval_every": 0,
              "checkpoint_every": 1000, "batch_size_samples": 6, **values}  # fmt: skip
    settings = build_config({}, values)[0].settings()
    settings = dataclasses.replace(settings, sampling=dataclasses.replace(settings.sampling, max_tokens=2))
    engine = CountingEngine(model, tokenizer)
    engine.asked = []
    optimizer, scheduler = make_optimizer(settings.optimizer, model)
    sink = ListSink()
    ctx = TrainContext(
        settings=settings, model=model, pad_token_id=tokenizer.pad_token_id, engine=engine, score=score,
        train_prompts=PROMPTS, eval_prompts=list(eval_prompts), optimizer=optimizer, scheduler=scheduler,
        sink=sink, checkpoint_dir=tmp_path / "checkpoints", progress=ProgressBar(0, enabled=False),
        publish_policy=engine.set_policy, should_stop=should_stop,
    )  # fmt: skip
    return train(ctx, LoopState()), engine, sink


def test_the_last_partial_update_is_applied_and_a_cancel_waits_for_the_update_s_end(tokenizer, tmp_path):
    # 16 candidates, at most 6 a step: 3 steps; 2 steps an update: the third is an update of its own
    outcome, engine, sink = run(tokenizer, tmp_path, gradient_accumulation_steps=2)
    assert outcome.status == "completed" and outcome.state.optimizer_step == 2 == engine.policy_version
    assert outcome.state.step == 3  # no step is made up for the short last update
    steps = [(m["step"], m.get("train/optimizer_step"), "grad/norm" in m) for m in sink.lines]
    assert steps == [(1, 0.0, False), (2, 1.0, True), (3, 1.0, False), (3, 2.0, True)]  # its own line
    scored = []

    def score(prompts, completions):  # the cancel arrives once the round is scored, before its first step
        scored.append(1)
        return by_candidate(prompts, completions)

    outcome, _, _ = run(tokenizer, tmp_path / "c", score=score, gradient_accumulation_steps=2,
                        should_stop=lambda: bool(scored))  # fmt: skip
    assert (
        outcome.status == "cancelled" and outcome.state.step == 2 and outcome.message == "cancelled at step 2"
    )
    assert outcome.state.update_denominator == 0.0  # nothing half-accumulated in the checkpoint


def test_an_epoch_with_no_signal_stops_the_job_even_after_one_that_had_some(tokenizer, tmp_path):
    calls = []

    def first_epoch_only(prompts, completions):  # spread in the first round, constant afterwards
        calls.append(1)
        return (
            by_candidate(prompts, completions)
            if len(calls) == 1
            else [[Score(1.0) for _ in g] for g in completions]
        )

    outcome, _, _ = run(tokenizer, tmp_path, score=first_epoch_only, epochs=3)
    assert outcome.status == "early_stopped" and outcome.state.epoch == 1 and "epoch 2" in outcome.message


def test_evaluations_run_every_n_updates_with_the_evaluation_s_own_candidates(tokenizer, tmp_path):
    held_out = [Prompt("e0", ({"role": "user", "content": "Name a fruit."},))]
    outcome, engine, sink = run(tokenizer, tmp_path, eval_prompts=held_out, eval_every=2, eval_candidates=3,
                                epochs=2, batch_size_samples=4)  # 4 updates an epoch, 8 in all  # fmt: skip
    evaluated = [line.get("train/optimizer_step", 0) for line in sink.lines if "eval/reward" in line]
    assert outcome.state.optimizer_step == 8 and evaluated == [0, 2, 4, 6, 8]
    assert engine.asked.count(3) == 5 and set(engine.asked) == {3, 4}  # --eval-candidates, not --n


def test_every_round_samples_with_a_seed_of_its_own():
    assert len({round_seed(3, r) for r in range(1000)}) == 1000
    assert round_seed(3, 5) == round_seed(3, 5) != round_seed(4, 5)
