"""Policy losses: hand-computed cases and an independent loop/numpy reference (values and gradients)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from openrft.algo.losses import (
    LOSS_METHODS,
    KLBetaNotSupported,
    LossSpec,
    aggregate,
    gspo_token_ratio,
    policy_loss,
    register_loss,
    resolve_loss,
    step_denominator,
)
from openrft.config import ConfigError, build_config

CLIPS = {"grpo": (0.2, 0.2), "dapo": (0.2, 0.28), "gspo-token": (3e-4, 4e-4)}
KL_DEFAULT = {"grpo": 0.001, "dapo": 0.0, "gspo-token": 0.0}


def reference_loss(method, lp, old, adv, mask, ref=None, beta=None, length_norm=False, denom=None):
    """Loop version written from the papers' formulas: returns (loss, dloss/dlp) as numpy float64."""
    lo, hi = 1 - CLIPS[method][0], 1 + CLIPS[method][1]
    beta = (beta if beta else KL_DEFAULT[method]) if ref is not None else 0.0
    seq_mean = length_norm or method == "gspo-token"
    B, T = lp.shape
    lengths = [int(sum(mask[i])) for i in range(B)]
    if denom is None:
        denom = sum(1 for n in lengths if n > 0) if seq_mean else sum(lengths)
    denom = denom or 1
    loss, grad = 0.0, np.zeros((B, T))
    for i in range(B):
        if lengths[i] == 0:
            continue
        if method == "gspo-token":
            s = math.exp(sum(lp[i, t] - old[i, t] for t in range(T) if mask[i][t]) / lengths[i])
        for t in range(T):
            if not mask[i][t]:
                continue
            r = s if method == "gspo-token" else math.exp(lp[i, t] - old[i, t])
            a = adv[i]
            clipped = min(max(r, lo), hi)
            obj = min(r * a, clipped * a)
            # the gradient flows only through the unclipped branch when it is the minimum,
            # or when the ratio lies inside the clip interval
            active = r * a <= clipped * a or lo <= r <= hi
            tok_loss, tok_grad = -obj, (-a * r if active else 0.0)
            if beta:
                d = ref[i, t] - lp[i, t]
                tok_loss += beta * (math.exp(d) - d - 1)
                tok_grad += beta * (1 - math.exp(d))
            w = 1.0 / (denom * (lengths[i] if seq_mean else 1))
            loss += w * tok_loss
            grad[i, t] = w * tok_grad
    return loss, grad


def run(method, lp, old, adv, mask, ref=None, kl_beta=None, length_norm=False, denominator=None):
    lp_t = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float64)  # noqa: E731
    fn, spec = resolve_loss(method, kl_beta or 0.0, length_norm)
    loss, metrics = fn(
        lp_t, t(old), t(adv), torch.tensor(mask), spec, ref_logprobs_BT=t(ref), denominator=denominator
    )
    (grad,) = torch.autograd.grad(loss, lp_t)
    return loss.item(), grad.numpy(), metrics


def random_batch(seed=0, lengths=(5, 3, 1, 0), T=5, spread=0.3):
    rng = np.random.default_rng(seed)
    B = len(lengths)
    lp = rng.normal(-1.5, 0.5, (B, T))
    old = lp + rng.normal(0, spread, (B, T))
    ref = lp + rng.normal(0, spread, (B, T))
    adv = rng.normal(0, 1, B)
    mask = [[1 if t < n else 0 for t in range(T)] for n in lengths]
    return lp, old, adv, mask, ref


# ----------------------------------------------------------------------------- the table


def test_method_table_matches_reference_guide():
    def row(name):
        spec = LOSS_METHODS[name].defaults
        return (spec.method, spec.clip_low, spec.clip_high, spec.kl_coef, spec.aggregation)

    assert row("grpo") == ("grpo", 0.2, 0.2, 0.001, "token-mean")
    assert row("dapo") == ("dapo", 0.2, 0.28, 0.0, "token-mean")
    assert row("gspo-token") == ("gspo-token", 3e-4, 4e-4, 0.0, "seq-mean-token-mean")
    d = LOSS_METHODS["dapo"].defaults
    assert (d.ratio_low, d.ratio_high) == pytest.approx((0.8, 1.28))
    assert set(LOSS_METHODS) == {"grpo", "dapo", "gspo-token"}
    assert [m.tunable_kl for m in LOSS_METHODS.values()] == [True, False, False]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.clip_low = 0.5  # type: ignore[misc]


def test_each_method_is_one_documented_function():
    for name, entry in LOSS_METHODS.items():
        doc = entry.fn.__doc__ or ""
        assert "arXiv" in doc and "l_it" in doc, name  # the paper and the formula
    assert LOSS_METHODS["gspo-token"].fn.__name__ == "gspo_token_loss"


def test_resolve_loss_aggregation_and_length_norm():
    assert resolve_loss("grpo")[1].aggregation == "token-mean"
    assert resolve_loss("dapo")[1].aggregation == "token-mean"
    assert resolve_loss("gspo-token")[1].aggregation == "seq-mean-token-mean"
    assert resolve_loss("grpo", length_norm=True)[1].aggregation == "seq-mean-token-mean"
    assert resolve_loss("dapo", length_norm=True)[0] is LOSS_METHODS["dapo"].fn


def test_a_fourth_method_is_one_registered_function():
    name = "test-unclipped"

    @register_loss(name, clip_low=10.0, clip_high=10.0)
    def unclipped(
        logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, spec, *, ref_logprobs_BT=None, denominator=None
    ):
        return policy_loss(LossSpec("dapo", spec.clip_low, spec.clip_high), logprobs_BT, old_logprobs_BT,
                           advantages_B, mask_BT, denominator=denominator)  # fmt: skip

    try:
        fn, spec = resolve_loss(name)
        assert fn is unclipped and spec.clip_high == 10.0
        cfg, _ = build_config({}, {"rl_loss_method": name})
        assert cfg.loss.rl_loss_method == name
        lp = torch.tensor([[0.0, 0.0]], requires_grad=True)
        loss, m = fn(lp, torch.tensor([[-1.0, -1.0]]), torch.tensor([1.0]), torch.ones(1, 2), spec)
        assert loss.item() == pytest.approx(-math.e) and m["clip/frac"] == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register_loss(name, clip_low=0.1, clip_high=0.1)(unclipped)
    finally:
        del LOSS_METHODS[name]


# ----------------------------------------------------------------------------- hand-computed


def test_grpo_hand_computed_value_and_gradient():
    # one sequence, A = 2; token 0: r = 1.1 (inside), token 1: r = 1.5 (> 1.2, clipped, A > 0)
    lp = [[math.log(1.1), math.log(1.5)]]
    old = [[0.0, 0.0]]
    loss, grad, m = run("grpo", lp, old, [2.0], [[1, 1]], ref=lp)  # ref == policy: KL is 0
    # per token: -(1.1*2) = -2.2 and -(1.2*2) = -2.4; token-mean = -2.3
    assert loss == pytest.approx(-2.3, abs=1e-12)
    # d/dlp0 = -A*r/N = -2*1.1/2 = -1.1; token 1 clipped -> 0
    np.testing.assert_allclose(grad, [[-1.1, 0.0]], atol=1e-12)
    assert m["clip/high_frac"] == 0.5 and m["clip/low_frac"] == 0.0
    assert m["kl/mean"] == 0.0 and m["loss/kl"] == 0.0
    assert m["ratio/max"] == pytest.approx(1.5) and m["ratio/min"] == pytest.approx(1.1)
    assert m["loss/tokens"] == 2.0


def test_negative_advantage_hand_computed():
    # A = -1; token 0: r = 0.5 (< 0.8, clipped for A < 0), token 1: r = 1.5 (> 1.28, NOT clipped for A < 0)
    lp = [[math.log(0.5), math.log(1.5)]]
    loss, grad, m = run("dapo", lp, [[0.0, 0.0]], [-1.0], [[1, 1]])
    # per token: -min(-0.5, -0.8) = 0.8 and -min(-1.5, -1.28) = 1.5; mean 1.15
    assert loss == pytest.approx(1.15, abs=1e-12)
    np.testing.assert_allclose(grad, [[0.0, 1.5 / 2]], atol=1e-12)
    assert m["clip/low_frac"] == 0.5 and m["clip/high_frac"] == 0.0


def test_ratio_exactly_one_when_logprobs_equal_old():
    lp, _, adv, mask, _ = random_batch(1)
    for method in LOSS_METHODS:
        loss, grad, m = run(method, lp, lp, adv, mask, ref=lp)
        assert m["ratio/mean"] == 1.0 and m["ratio/min"] == 1.0 and m["ratio/max"] == 1.0
        assert m["clip/low_frac"] == 0.0 and m["clip/high_frac"] == 0.0
        assert m["kl/mean"] == 0.0
        ref_loss, ref_grad = reference_loss(method, np.array(lp), np.array(lp), adv, mask, ref=np.array(lp))
        assert loss == pytest.approx(ref_loss, abs=1e-12)
        np.testing.assert_allclose(grad, ref_grad, atol=1e-12)


# ----------------------------------------------------------------------------- clip boundaries


@pytest.mark.parametrize("method", ["grpo", "dapo", "gspo-token"])
@pytest.mark.parametrize("adv", [1.5, -1.5])
@pytest.mark.parametrize("where", ["below", "just-inside-low", "one", "just-inside-high", "above"])
def test_clip_boundaries(method, adv, where):
    clip_low, clip_high = CLIPS[method]
    lo, hi = 1 - clip_low, 1 + clip_high
    delta = 1e-5 if method == "gspo-token" else 1e-3
    r = {
        "below": lo - delta,
        "just-inside-low": lo + delta,
        "one": 1.0,
        "just-inside-high": hi - delta,
        "above": hi + delta,
    }[where]
    # three tokens sharing the same log-ratio, so gspo-token's sequence ratio is r as well
    lp = [[-1.0, -2.0, -0.5]]
    old = [[x - math.log(r) for x in lp[0]]]
    loss, grad, m = run(method, lp, old, [adv], [[1, 1, 1]], ref=lp)
    clipped = (adv > 0 and where == "above") or (adv < 0 and where == "below")
    expected = -min(r * adv, min(max(r, lo), hi) * adv)
    assert loss == pytest.approx(expected, rel=1e-9)
    expected_grad = 0.0 if clipped else -adv * r / 3
    np.testing.assert_allclose(grad, [[expected_grad] * 3], rtol=1e-9, atol=1e-15)
    assert m["clip/high_frac"] == (1.0 if clipped and adv > 0 else 0.0)
    assert m["clip/low_frac"] == (1.0 if clipped and adv < 0 else 0.0)
    assert m["ratio/mean"] == pytest.approx(r, rel=1e-9)


# ----------------------------------------------------------------------------- against the loop reference


@pytest.mark.parametrize("method", ["grpo", "dapo", "gspo-token"])
@pytest.mark.parametrize("length_norm", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_with_unequal_lengths_and_padding_row(method, length_norm, seed):
    lp, old, adv, mask, ref = random_batch(seed, lengths=(5, 3, 1, 0, 4))
    # gspo-token: make sequence ratios land both inside and outside its tiny clip interval
    if method == "gspo-token":
        old = lp + np.random.default_rng(seed).normal(0, 2e-4, lp.shape)
    loss, grad, m = run(method, lp, old, adv, mask, ref=ref, length_norm=length_norm)
    ref_loss, ref_grad = reference_loss(method, lp, old, adv, mask, ref=ref, length_norm=length_norm)
    assert loss == pytest.approx(ref_loss, abs=1e-12)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-12)
    assert np.all(grad[3] == 0.0) and np.all(grad[np.array(mask) == 0] == 0.0)
    assert m["loss/tokens"] == 13.0 and m["loss/sequences"] == 4.0
    assert m["loss/total"] == pytest.approx(loss, abs=1e-9)


def test_grpo_gradient_matches_finite_differences():
    # away from clip kinks, the analytic gradient of every method is the gradient of its value
    # (for gspo-token too: with one advantage per sequence its token gradient equals GSPO's)
    lp, old, adv, mask, ref = random_batch(3, spread=0.02)
    old_gspo = lp + np.random.default_rng(3).normal(0, 1e-5, lp.shape)
    for method, o in [("grpo", old), ("dapo", old), ("gspo-token", old_gspo)]:
        _, grad, _ = run(method, lp, o, adv, mask, ref=ref)
        h = 1e-7
        numeric = np.zeros_like(lp)
        for idx in np.ndindex(lp.shape):
            up, down = lp.copy(), lp.copy()
            up[idx] += h
            down[idx] -= h
            numeric[idx] = (
                run(method, up, o, adv, mask, ref=ref)[0] - run(method, down, o, adv, mask, ref=ref)[0]
            ) / (2 * h)
        np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_padding_garbage_never_reaches_loss_or_gradient():
    lp, old, adv, mask, ref = random_batch(4)
    pad = np.array(mask) == 0
    lp_bad, old_bad, ref_bad = lp.copy(), old.copy(), ref.copy()
    lp_bad[pad], old_bad[pad], ref_bad[pad] = -np.inf, np.nan, np.inf
    for method in LOSS_METHODS:
        for length_norm in (False, True):
            clean = run(method, lp, old, adv, mask, ref=ref, length_norm=length_norm)
            dirty = run(method, lp_bad, old_bad, adv, mask, ref=ref_bad, length_norm=length_norm)
            assert dirty[0] == pytest.approx(clean[0], abs=1e-12)
            np.testing.assert_allclose(dirty[1], clean[1], atol=1e-12)
            assert all(math.isfinite(v) for v in dirty[2].values())


def test_all_padding_batch_is_zero_without_nan():
    for method in LOSS_METHODS:
        for length_norm in (False, True):
            loss, grad, m = run(
                method,
                [[-1.0, -2.0]],
                [[-1.1, -2.0]],
                [1.0],
                [[0, 0]],
                ref=[[0.0, 0.0]],
                length_norm=length_norm,
            )
            assert loss == 0.0 and np.all(grad == 0.0)
            assert m["loss/tokens"] == 0.0 and m["ratio/mean"] == 1.0 and m["kl/mean"] == 0.0


# ----------------------------------------------------------------------------- gspo-token


def test_gspo_token_ratio_equals_sequence_ratio_with_per_token_gradients():
    lp = torch.tensor(
        [[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.7, 0.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    old = torch.tensor([[-1.2, -1.9, -0.4, 9.0], [-0.1, -0.7, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ratio = gspo_token_ratio(lp, old, mask)
    s0 = math.exp(((-1.0 + 1.2) + (-2.0 + 1.9) + (-0.5 + 0.4)) / 3)  # = exp(0) = 1.0
    s1 = math.exp(((-0.3 + 0.1) + 0.0) / 2)  # = exp(-0.1)
    assert ratio[0, :3].tolist() == pytest.approx([s0] * 3, abs=1e-15)
    assert ratio[1, :2].tolist() == pytest.approx([s1] * 2, abs=1e-15)
    weights = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=torch.float64)
    (grad,) = torch.autograd.grad((ratio * weights * mask).sum(), lp)
    # d s_it / d lp_t = s_i for the token's own position only
    expected = [[s0 * 1, s0 * 2, s0 * 3, 0.0], [s1 * 5, s1 * 6, 0.0, 0.0]]
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-14)


def test_gspo_token_clips_whole_sequence():
    # mean log-ratio 2e-4 is inside [1-3e-4, 1+4e-4]; 1e-3 is outside on the high side
    lp = [[0.0, 0.0], [0.0, 0.0]]
    old = [[-1e-4, -3e-4], [-1e-3, -1e-3]]
    loss, grad, m = run("gspo-token", lp, old, [1.0, 1.0], [[1, 1], [1, 1]])
    s0, s1 = math.exp(2e-4), math.exp(1e-3)
    assert loss == pytest.approx((-s0 - (1 + 4e-4)) / 2, abs=1e-12)
    np.testing.assert_allclose(grad, [[-s0 / 4, -s0 / 4], [0.0, 0.0]], atol=1e-14)
    assert m["clip/high_frac"] == 0.5
    assert m["ratio/max"] == pytest.approx(s1, rel=1e-12)


# ----------------------------------------------------------------------------- aggregation


def test_token_mean_and_seq_mean_token_mean_differ_as_they_should():
    per_token = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    # token-mean: (4 + 0 + 0 + 0) / 4 tokens = 1.0; seq-mean: (4/1 + 0/3) / 2 sequences = 2.0
    assert aggregate(per_token, mask, "token-mean").item() == 1.0
    assert aggregate(per_token, mask, "seq-mean-token-mean").item() == 2.0
    # equal lengths: the two coincide
    full = torch.ones(2, 3)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    assert aggregate(x, full, "token-mean").item() == pytest.approx(
        aggregate(x, full, "seq-mean-token-mean").item()
    )


def test_length_norm_changes_policy_loss_exactly_by_the_aggregation():
    # ratio 1 everywhere: per-token loss is -A_i; lengths 1 and 3, A = (+1, -1)
    lp = [[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]
    mask = [[1, 0, 0], [1, 1, 1]]
    token_mean = run("dapo", lp, lp, [1.0, -1.0], mask)[0]
    seq_mean = run("dapo", lp, lp, [1.0, -1.0], mask, length_norm=True)[0]
    assert token_mean == pytest.approx((-1 + 3 * 1) / 4)  # 0.5: the long negative answer dominates
    assert seq_mean == pytest.approx((-1 + 1) / 2)  # 0.0: each answer weighs the same


def test_aggregate_all_padding_row_has_no_nan_gradient():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]])
    for mode in ("token-mean", "seq-mean-token-mean"):
        out = aggregate(x, mask, mode)
        (grad,) = torch.autograd.grad(out, x)
        assert out.item() == pytest.approx(1.5)
        assert torch.isfinite(grad).all() and grad[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, mask, "sum")


@pytest.mark.parametrize("method", ["grpo", "dapo", "gspo-token"])
@pytest.mark.parametrize("length_norm", [False, True])
def test_micro_batches_with_step_denominator_sum_to_the_whole_step(method, length_norm):
    lp, old, adv, mask, ref = random_batch(5, lengths=(4, 2, 0, 5, 1, 3))
    if method == "gspo-token":
        old = lp + np.random.default_rng(5).normal(0, 2e-4, lp.shape)
    whole_loss, whole_grad, _ = run(method, lp, old, adv, mask, ref=ref, length_norm=length_norm)
    mode = resolve_loss(method, length_norm=length_norm)[1].aggregation
    halves = [slice(0, 3), slice(3, 6)]
    denom = step_denominator(mode, [torch.tensor(mask[s]) for s in halves])
    assert denom == (15.0 if mode == "token-mean" else 5.0)
    assert step_denominator(mode, torch.tensor(mask)) == denom
    total, grads = 0.0, []
    for s in halves:
        part = run(
            method, lp[s], old[s], adv[s], mask[s], ref=ref[s], length_norm=length_norm, denominator=denom
        )
        total += part[0]
        grads.append(part[1])
    assert total == pytest.approx(whole_loss, abs=1e-12)
    np.testing.assert_allclose(np.concatenate(grads), whole_grad, atol=1e-12)


# ----------------------------------------------------------------------------- KL


def test_grpo_kl_coefficient_default_and_override():
    # ratio 1 so the policy term is the same for grpo and dapo; ref - lp = log 2 -> k3 = 2 - log 2 - 1
    lp = [[-1.0, -2.0]]
    ref = [[-1.0 + math.log(2), -2.0 + math.log(2)]]
    k3 = 1.0 - math.log(2)
    base = run("dapo", lp, lp, [0.5], [[1, 1]], ref=ref)
    for beta, coef in [(None, 0.001), (0.0, 0.001), (0.05, 0.05)]:
        loss, grad, m = run("grpo", lp, lp, [0.5], [[1, 1]], ref=ref, kl_beta=beta)
        assert loss - base[0] == pytest.approx(coef * k3, abs=1e-12)
        # d k3 / d lp = 1 - exp(ref - lp) = 1 - 2 = -1, token-mean over 2 tokens
        np.testing.assert_allclose(grad - base[1], [[-coef / 2, -coef / 2]], atol=1e-12)
        assert m["kl/coef"] == coef
        assert m["kl/mean"] == pytest.approx(k3)
        assert m["loss/kl"] == pytest.approx(coef * k3)
    assert base[2]["kl/mean"] == pytest.approx(k3) and base[2]["loss/kl"] == 0.0
    assert resolve_loss("grpo", 0.0)[1].kl_coef == 0.001
    assert resolve_loss("grpo", 0.05)[1].kl_coef == 0.05


@pytest.mark.parametrize("method", ["dapo", "gspo-token"])
def test_non_zero_kl_beta_rejected_with_reference_message(method):
    with pytest.raises(KLBetaNotSupported):
        resolve_loss(method, 0.01)
    # the job configuration turns the algorithm's ValueError into the reference's message
    with pytest.raises(ConfigError) as info:
        build_config({}, {"rl_loss_method": method, "rl_kl_beta": 0.01})
    expected = "DAPO" if method == "dapo" else "GSPO_TOKEN"
    assert str(info.value) == f"loss_config.kl_beta must be 0/unset when method is {expected}"
    assert resolve_loss(method, 0.0)[1].kl_coef == 0.0


def test_grpo_without_reference_logprobs_is_an_error():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(resolve_loss("grpo")[1], z, z, torch.ones(1), torch.ones(1, 2))
    _, m = policy_loss(resolve_loss("dapo")[1], z, z, torch.ones(1), torch.ones(1, 2))
    assert "kl/mean" not in m and m["loss/kl"] == 0.0  # not measured: no made-up 0 on the KL plot


# ----------------------------------------------------------------------------- inputs and numerics


def test_bad_inputs_raise_clear_errors():
    z = torch.zeros(2, 3)
    dapo = resolve_loss("dapo")[1]
    with pytest.raises(ValueError, match="unknown loss method"):
        resolve_loss("ppo")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(dapo, z, z, torch.ones(3), z)
    with pytest.raises(ValueError, match="mask"):
        policy_loss(dapo, z, z, torch.ones(2), torch.ones(2, 4))
    for beta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="kl_beta"):
            resolve_loss("grpo", beta)


def test_low_precision_inputs_and_huge_log_ratios_stay_finite():
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16, requires_grad=True)
    old = torch.tensor([[-101.0, 60.0]], dtype=torch.bfloat16)
    grpo = resolve_loss("grpo")[1]
    loss, m = policy_loss(grpo, lp, old, torch.tensor([-1.0]), torch.ones(1, 2), ref_logprobs_BT=old)
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.dtype == torch.float32
    assert math.isfinite(loss.item()) and torch.isfinite(grad.float()).all()
    assert m["ratio/max"] == pytest.approx(math.exp(20.0), rel=1e-5)  # log-ratio clamped at +20
