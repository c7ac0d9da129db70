"""Sampler/trainer mismatch: truncated importance weights, the metrics, and the weighted loss, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.algo.losses import resolve_loss
from openrft.train.mismatch import is_weights, mismatch_metrics


def test_weights_are_the_truncated_ratio_of_trainer_to_sampler():
    trainer = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    # the sampler was off by known amounts: r = exp(trainer - sampler) = e^0.1, e^-0.2, e^1.0 (capped), padding
    sampler = trainer - torch.tensor([[0.1, -0.2, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights = is_weights(trainer, sampler, mask, cap=2.0)
    assert weights[0].tolist() == pytest.approx([math.exp(0.1), math.exp(-0.2), 2.0, 1.0], rel=1e-6)
    metrics = mismatch_metrics(trainer, sampler, mask, cap=2.0)
    r = [math.exp(0.1), math.exp(-0.2), math.exp(1.0)]
    k3 = [x - 1 - math.log(x) for x in r]
    assert metrics["mismatch/kl"] == pytest.approx(sum(k3) / 3, rel=1e-5)
    assert metrics["mismatch/is_weight_mean"] == pytest.approx((r[0] + r[1] + 2.0) / 3, rel=1e-6)
    assert metrics["mismatch/is_truncated_frac"] == pytest.approx(1 / 3)


def test_identical_samplers_measure_zero():
    lp = torch.randn(3, 5)
    metrics = mismatch_metrics(lp, lp.clone(), torch.ones(3, 5), cap=2.0)
    assert metrics == {"mismatch/kl": 0.0, "mismatch/is_weight_mean": 1.0, "mismatch/is_truncated_frac": 0.0}
    assert torch.equal(is_weights(lp, lp, torch.ones(3, 5), 2.0), torch.ones(3, 5))


def test_the_weighted_loss_equals_a_hand_computation():
    # dapo, ratio 1 (on-policy against the trainer's old log-probs), advantages +1 / -2, weights w
    lp = torch.tensor([[-1.0, -1.0], [-0.5, -0.5]], requires_grad=True)
    w = torch.tensor([[0.5, 2.0], [1.5, 1.0]])
    fn, spec = resolve_loss("dapo")
    loss, _ = fn(lp, lp.detach(), torch.tensor([1.0, -2.0]), torch.ones(2, 2), spec, weights_BT=w)
    # per token -A * r * w, token-mean over 4 tokens: (-(0.5 + 2.0) + 2 * (1.5 + 1.0)) / 4
    assert loss.item() == pytest.approx((-(0.5 + 2.0) + 2 * (1.5 + 1.0)) / 4)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.flatten().tolist() == pytest.approx([-0.5 / 4, -2.0 / 4, 3.0 / 4, 2.0 / 4])
    unweighted, _ = fn(lp, lp.detach(), torch.tensor([1.0, -2.0]), torch.ones(2, 2), spec)
    assert unweighted.item() == pytest.approx((-2 + 4) / 4)


def test_the_weights_correct_the_policy_term_and_leave_the_kl_to_the_reference_alone():
    """grpo: per token w * pg + beta * k3 (TRL and verl), not w * (pg + beta * k3)."""
    lp = torch.tensor([[-1.0, -0.7], [-0.5, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.2, -0.4], [-0.9, -1.5]])
    w = torch.tensor([[0.5, 2.0], [1.5, 1.0]])
    adv = torch.tensor([1.0, -2.0])
    fn, spec = resolve_loss("grpo", kl_beta=0.3)
    loss, _ = fn(lp, lp.detach(), adv, torch.ones(2, 2), spec, ref_logprobs_BT=ref, weights_BT=w)
    k3 = torch.exp(ref - lp.detach()) - (ref - lp.detach()) - 1
    expected = ((-adv[:, None] * w) + 0.3 * k3).mean()  # ratio 1: pg = -A
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
