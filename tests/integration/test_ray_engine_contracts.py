"""RayEngine's bookkeeping of actor deaths and of what an actor returns, with fakes (no Ray cluster)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from openrft.distributed.engine import RayEngine, _Dispatch
from openrft.errors import RolloutError
from openrft.records import Completion


def _actor():
    # what actor_failed sends a restarting actor: a probe call that Ray retries until it answers
    return SimpleNamespace(
        info=SimpleNamespace(options=lambda **options: SimpleNamespace(remote=lambda: "probe"))
    )


def _engine(actors, max_restarts):
    engine = RayEngine.__new__(RayEngine)  # no __init__: it would start Ray actors
    engine.max_restarts = max_restarts
    engine.workers = [_actor() for _ in range(actors)]
    engine._alive = [True] * actors
    engine._incarnation = [0] * actors
    engine._probes = {}
    engine.actor_failures = 0
    return engine


def test_an_actor_is_restarted_max_restarts_times_before_it_is_retired():
    engine = _engine(actors=2, max_restarts=2)
    for death in range(2):  # deaths 1 and 2 are within the allowance: probe the restarted actor
        engine.actor_failed(0, death, RuntimeError("actor died"))
        assert engine._alive[0] and 0 in engine._probes
        engine._probes.pop(0)  # the probe answered: the actor works again
    engine.actor_failed(0, 2, RuntimeError("actor died"))  # the third death is one too many
    assert engine._alive == [False, True] and engine.actor_failures == 3


def test_with_one_restart_allowed_a_single_actor_survives_its_first_death():
    engine = _engine(actors=1, max_restarts=1)
    engine.actor_failed(0, 0, RuntimeError("actor died"))
    assert engine._alive == [True] and 0 in engine._probes
    with pytest.raises(RolloutError, match="every rollout actor died"):
        engine.actor_failed(0, 1, RuntimeError("actor died again"))


def test_the_queued_calls_of_one_dead_actor_count_as_one_death():
    engine = _engine(actors=2, max_restarts=3)
    for _ in range(2):  # both calls queued on incarnation 0 fail when it dies
        engine.actor_failed(0, 0, RuntimeError("actor died"))
    assert engine.actor_failures == 1 and engine._incarnation == [1, 0]
    engine.actor_failed(0, 1, RuntimeError("actor died"))  # the restarted actor dying is a new death
    assert engine.actor_failures == 2 and engine._incarnation == [2, 0]


def _completion(prompt_id, version):
    return Completion(prompt_id, 0, (1,), (2,), "x", (-0.1,), "stop", policy_version=version)


def _dispatch(policy_version, max_staleness):
    dispatch = _Dispatch.__new__(_Dispatch)
    dispatch.engine = SimpleNamespace(policy_version=policy_version, max_staleness=max_staleness)
    dispatch.min_version = max(0, policy_version - max_staleness)  # as RayEngine.oldest_version
    return dispatch


def test_completions_older_than_max_staleness_allows_are_refused():
    dispatch = _dispatch(policy_version=5, max_staleness=2)
    parcel = [("a", [1]), ("b", [2])]
    dispatch._check([[_completion("a", 3)], [_completion("b", 5)]], parcel)  # 2 versions behind: allowed
    with pytest.raises(RolloutError, match="policy version 2, older than the 3 allowed"):
        dispatch._check([[_completion("a", 3)], [_completion("b", 2)]], parcel)


def test_groups_returned_for_other_prompts_or_in_another_order_are_refused():
    dispatch = _dispatch(policy_version=0, max_staleness=0)
    parcel = [("a", [1]), ("b", [2])]
    with pytest.raises(RolloutError, match="wrong prompts"):
        dispatch._check([[_completion("b", 0)], [_completion("a", 0)]], parcel)
    with pytest.raises(RolloutError, match="wrong prompts"):
        dispatch._check([[_completion("a", 0)], [_completion("c", 0)]], parcel)
