"""Group-relative advantages: unbiased std, invalid scores, degenerate groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openrft.algo.advantages import group_advantages, group_advantages_batch, scored_group_advantages
from openrft.records import Completion, Prompt, Score, ScoredGroup


def test_hand_computed_unbiased_std():
    # scores 0, 0, 1, 1: mean 0.5, unbiased variance = 4 * 0.25 / 3 = 1/3, std = 0.57735
    adv = group_advantages([0.0, 0.0, 1.0, 1.0])
    std = math.sqrt(1 / 3)
    expected = [-0.5 / (std + 1e-6)] * 2 + [0.5 / (std + 1e-6)] * 2
    assert adv.dtype == torch.float32 and adv.shape == (4,)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-6)
    assert adv.tolist()[2] == pytest.approx(0.866024, abs=1e-5)  # not 1.0, which a biased std would give


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    for k in (2, 3, 8, 16):
        scores = rng.normal(size=k)
        expected = (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)
        np.testing.assert_allclose(group_advantages(scores.tolist()).numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            group_advantages(torch.tensor(scores)).numpy(), expected, rtol=1e-5, atol=1e-6
        )


def test_invalid_scores_excluded_and_given_zero():
    scores = [1.0, 100.0, 0.0, 0.5]
    valid = [True, False, True, True]
    adv = group_advantages(scores, valid)
    kept = np.array([1.0, 0.0, 0.5])
    expected = (kept - kept.mean()) / (kept.std(ddof=1) + 1e-6)
    assert adv[1].item() == 0.0
    np.testing.assert_allclose(adv[[0, 2, 3]].numpy(), expected, rtol=1e-6)
    # non-finite and missing scores count as invalid too
    adv_nan = group_advantages([1.0, float("nan"), 0.0, 0.5])
    np.testing.assert_allclose(adv_nan.numpy(), adv.numpy())
    assert group_advantages([1.0, None, 0.0, 0.5]).tolist() == adv.tolist()


def test_degenerate_groups_are_all_zero():
    assert group_advantages([0.7, 0.7, 0.7]).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages([0.3, 0.9], [True, False]).tolist() == [0.0, 0.0]  # one valid score
    assert group_advantages([0.3, 0.9], [False, False]).tolist() == [0.0, 0.0]
    assert group_advantages([]).tolist() == []
    assert group_advantages([5.0]).tolist() == [0.0]


def test_batch_and_scored_groups():
    out = group_advantages_batch(
        [[0.0, 1.0], [2.0, 2.0, 2.0], [1.0, 0.0, 3.0]], [None, None, [True, True, False]]
    )
    assert [t.shape[0] for t in out] == [2, 3, 3]
    # scores 0 and 1: mean 0.5, unbiased std sqrt(0.5)
    half = 0.5 / (math.sqrt(0.5) + 1e-6)
    np.testing.assert_allclose(out[0].numpy(), [-half, half], rtol=1e-6)
    assert out[1].tolist() == [0.0, 0.0, 0.0]
    assert out[2][2].item() == 0.0 and out[2][0].item() == pytest.approx(-out[2][1].item())
    with pytest.raises(ValueError):
        group_advantages_batch([[0.0, 1.0]], [None, None])
    with pytest.raises(ValueError, match="validity"):
        group_advantages([0.0, 1.0], [True])

    prompt = Prompt("p0", ({"role": "user", "content": "hi"},))
    comps = tuple(Completion("p0", i, (1,), (2, 3), "x", (-0.1, -0.2), "stop") for i in range(3))
    group = ScoredGroup(prompt, comps, (Score(1.0), Score(0.0), Score(9.0, is_valid=False)))
    (adv,) = scored_group_advantages([group])
    assert adv[2].item() == 0.0 and adv[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6), rel=1e-6)
