"""Zero-variance filtering: groups and micro-batches."""

from __future__ import annotations

import torch

from openrft.algo.advantages import group_advantages
from openrft.algo.filtering import (
    drop_zero_advantage_micro_batches,
    filter_scored_groups,
    group_has_variance,
    is_zero_variance,
    partition_groups,
)
from openrft.records import Completion, Prompt, Score, ScoredGroup


def make_group(pid: str, scores: list[float], valid: list[bool] | None = None) -> ScoredGroup:
    valid = valid or [True] * len(scores)
    prompt = Prompt(pid, ({"role": "user", "content": pid},))
    comps = tuple(Completion(pid, i, (1,), (2,), "x", (-0.5,), "stop") for i in range(len(scores)))
    return ScoredGroup(prompt, comps, tuple(Score(s, is_valid=v) for s, v in zip(scores, valid, strict=True)))


def test_is_zero_variance():
    assert is_zero_variance([1.0, 1.0, 1.0, 1.0])
    assert is_zero_variance([0.0, 0.0])
    assert not is_zero_variance([0.0, 1.0, 0.0])
    assert is_zero_variance([0.5, 0.5 + 1e-12])  # within atol
    assert not is_zero_variance([0.5, 0.5 + 1e-6])
    # only valid scores count: the differing one is invalid
    assert is_zero_variance([1.0, 0.0, 1.0], [True, False, True])
    assert is_zero_variance([1.0, 0.0], [True, False])  # one valid score
    assert is_zero_variance([1.0, float("nan"), 1.0])
    assert is_zero_variance([])
    assert is_zero_variance(torch.tensor([2.0, 2.0]))


def test_zero_variance_agrees_with_all_zero_advantages():
    cases = [
        ([1.0, 1.0, 1.0], None),
        ([0.0, 1.0], None),
        ([1.0, 0.0, 1.0], [True, False, True]),
        ([3.0], None),
    ]
    for scores, valid in cases:
        adv = group_advantages(scores, valid)
        assert is_zero_variance(scores, valid) == bool((adv == 0).all())


def test_partition_groups_counts_and_order():
    scores = [[1, 0, 1], [1, 1, 1], [0, 0, 0], [0.2, 0.9, 0.9], [1, 0, 1]]
    valid = [None, None, None, None, [True, False, True]]
    part = partition_groups(scores, valid)
    assert part.kept == (0, 3) and part.dropped == (1, 2, 4)
    assert (part.n_kept, part.n_dropped) == (2, 3)


def test_filter_scored_groups_drops_without_replacing():
    groups = [
        make_group("a", [1.0, 0.0]),
        make_group("b", [0.0, 0.0]),
        make_group("c", [1.0, 0.0], [True, False]),
        make_group("d", [0.3, 0.7]),
    ]
    kept, dropped = filter_scored_groups(groups)
    assert [g.prompt.prompt_id for g in kept] == ["a", "d"]
    assert [g.prompt.prompt_id for g in dropped] == ["b", "c"]
    assert group_has_variance(groups[0]) and not group_has_variance(groups[1])


def test_drop_zero_advantage_micro_batches():
    # 6 sequences: a group split across micro-batches; sequences 2, 3 and 5 have advantage 0
    advantages = torch.tensor([0.8, -0.8, 0.0, 0.0, 1e-13, 0.0])
    micro_batches = [[0, 1], [2, 3], [4, 5], [1, 2], []]
    kept, dropped = drop_zero_advantage_micro_batches(micro_batches, advantages)
    assert kept == [[0, 1], [1, 2]]
    assert dropped == 3  # [2, 3], [4, 5] (|1e-13| < 1e-12), and the empty one
    kept, dropped = drop_zero_advantage_micro_batches([[0], [1]], [0.5, -0.5])
    assert kept == [[0], [1]] and dropped == 0
