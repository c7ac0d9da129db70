"""What a checkpoint carries across a resume: the loop's state (every field, the pending steps'
sequences with their recomputed log-probs and importance weights), the learning-rate schedule."""

from __future__ import annotations

import json

import pytest

from openrft.records import Completion
from openrft.settings import OptimizerSettings
from openrft.train.batching import TrainSequence
from openrft.train.checkpoint import LoopState, load_checkpoint, save_checkpoint
from openrft.train.policy import attach_lora
from openrft.train.setup import make_optimizer


def test_the_loop_state_survives_its_json_whole():
    agent = Completion(
        "p", 1, (1, 2), (3, 4, 5), "x<tool>", (-0.5, -0.25, -1.0), "length", completion_mask=(1, 0, 1)
    )
    sequences = [TrainSequence(agent, -0.75, 3, old_logprobs=(-0.4, -0.2, -0.9), is_weights=(1.0, 0.5, 2.0)),
                 TrainSequence(Completion("q", 0, (7,), (8,), "y", (-0.1,), "stop"), 1.25, 4)]  # fmt: skip
    state = LoopState(epoch=1, cursor=40, round_index=7, step=12, optimizer_step=6, pending=[sequences, sequences[:1]],
                      round_metrics={"reward/mean": 0.5}, epoch_groups_with_signal=9, epoch_groups_total=11,
                      epoch_completions=88, epoch_truncated=3, measure_mismatch=True, outcome="",
                      nonfinite_in_a_row=1, log_position={"metrics": 12}, evaluated_version=5,
                      update_denominator=0.0)  # fmt: skip
    assert LoopState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_the_warm_up_rises_linearly_and_a_resume_continues_the_schedule(tmp_path, tiny_model):
    model, _ = tiny_model
    policy = attach_lora(model, 2, 4, seed=0)
    settings = OptimizerSettings(learning_rate=1e-4, weight_decay=0.0, warmup_steps=4)
    optimizer, scheduler = make_optimizer(settings, policy)
    rates = []
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    path = save_checkpoint(tmp_path, LoopState(step=3, optimizer_step=3), policy, optimizer, scheduler)
    optimizer, scheduler = make_optimizer(settings, policy)  # a resumed job's fresh ones
    load_checkpoint(path, policy, optimizer, scheduler)
    assert scheduler.last_epoch == 3
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 1e-4])  # then constant
    optimizer, _ = make_optimizer(OptimizerSettings(1e-4, 0.0, 0), policy)
    assert optimizer.param_groups[0]["lr"] == 1e-4  # no warm-up: the full rate from the first update


def test_a_resume_takes_the_learning_rate_and_weight_decay_it_is_given_now(tmp_path, tiny_model):
    model, _ = tiny_model
    policy = attach_lora(model, 2, 4, seed=0)
    optimizer, scheduler = make_optimizer(OptimizerSettings(1e-4, 0.0, 4), policy)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    path = save_checkpoint(tmp_path, LoopState(step=2, optimizer_step=2), policy, optimizer, scheduler)
    optimizer, scheduler = make_optimizer(OptimizerSettings(2e-4, 0.01, 4), policy)  # resumed with new values
    load_checkpoint(path, policy, optimizer, scheduler)
    group = optimizer.param_groups[0]
    assert scheduler.last_epoch == 2 and group["weight_decay"] == 0.01
    assert group["lr"] == pytest.approx(2e-4 * 3 / 5)  # the new rate, at the warm-up's third update
