"""RayScorer's bookkeeping without a cluster: how groups are cut into tasks, the bound on
concurrent evaluator calls, and the deadline of a slow but healthy task."""

from __future__ import annotations

import itertools
import types

import pytest

from openrft.distributed.scoring import _split
from openrft.records import Prompt, Score


@pytest.mark.parametrize(("n", "parts"), list(itertools.product(range(13), range(1, 6))))
def test_split_sends_every_group_exactly_once_in_near_equal_contiguous_batches(n, parts):
    batches = _split(list(range(n)), parts)
    assert sum(batches, []) == list(range(n))  # no group left unscored, none twice, order kept
    assert len(batches) <= parts
    if batches:
        sizes = [len(b) for b in batches]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


class FakeRay:
    """Just enough of ``ray`` for RayScorer: tasks finish after ``seconds_per_call`` simulated seconds
    per call divided by their concurrency; ``clock`` replaces time.monotonic."""

    class exceptions:  # noqa: N801 - mirrors ray.exceptions
        class RayError(Exception):
            pass

    def __init__(self, cpus, seconds_per_call=0.0):
        self.cpus, self.seconds_per_call = cpus, seconds_per_call
        self.now = 0.0
        self.tasks = {}  # ref -> (finish time, scores)
        self.concurrency = []  # per launched task
        self.cancelled = []
        self._ids = itertools.count()

    def clock(self):
        return self.now

    def put(self, value):
        return value

    def cluster_resources(self):
        return {"CPU": float(self.cpus)}

    def remote(self, fn):
        ray = self

        class Remote:
            def options(self, **options):
                return self

            def remote(self, digest, blob, folders, groups, concurrency, timeout):
                ray.concurrency.append(concurrency)
                calls = sum(len(cs) for _, cs in groups)
                waves = -(-calls // concurrency)
                ref = next(ray._ids)
                ray.tasks[ref] = (
                    ray.now + waves * ray.seconds_per_call,
                    [[Score(1.0)] * len(cs) for _, cs in groups],
                )
                return ref

        return Remote()

    def wait(self, refs, num_returns, timeout):
        soonest = min(refs, key=lambda r: self.tasks[r][0])
        finish = self.tasks[soonest][0]
        if finish <= self.now + timeout:
            self.now = max(self.now, finish)
            return [soonest], [r for r in refs if r != soonest]
        self.now += timeout
        return [], refs

    def get(self, ref):
        return self.tasks[ref][1]

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)


def _groups(count, size):
    return [(Prompt(f"p{i}", ({"role": "user", "content": "1+1"},)), [object()] * size) for i in range(count)]


def _scorer(monkeypatch, ray, limit, timeout=5.0):
    pytest.importorskip("ray")  # pack_evaluator pickles with ray.cloudpickle
    from openrft.distributed import scoring
    from openrft.evaluators import load_evaluator

    monkeypatch.setattr(scoring, "time", types.SimpleNamespace(monotonic=ray.clock))
    return scoring.RayScorer(
        load_evaluator("arithmetic"), max_concurrent_evaluations=limit, timeout=timeout, ray=ray
    )


@pytest.mark.parametrize(("cpus", "limit", "count"), [(4, 8, 8), (3, 7, 10), (8, 8, 3)])
def test_all_tasks_together_run_at_most_max_concurrent_evaluations_calls(monkeypatch, cpus, limit, count):
    ray = FakeRay(cpus)
    scores = _scorer(monkeypatch, ray, limit).score_groups(_groups(count, 4))
    assert [len(s) for s in scores] == [4] * count and all(x.is_valid for s in scores for x in s)
    assert len(ray.concurrency) > 1  # the groups went out in several tasks at once
    assert sum(ray.concurrency) <= limit


def test_a_task_whose_calls_each_finish_within_the_timeout_is_never_cancelled(monkeypatch):
    # one task, one call at a time, 8 calls of 9 s each under a 10 s timeout: 72 s in all is healthy
    ray = FakeRay(cpus=1, seconds_per_call=9.0)
    scorer = _scorer(monkeypatch, ray, limit=1, timeout=10.0)
    scores = scorer.score_groups(_groups(2, 4))
    assert scorer.task_failures == 0 and ray.cancelled == []
    assert all(x.is_valid for s in scores for x in s)


def _scored(prompt_id, values):
    from openrft.records import Completion, ScoredGroup

    completions = tuple(
        Completion(prompt_id, i, (1,), (2, 3), "x", (-0.1, -0.2), "stop") for i in range(len(values))
    )
    prompt = Prompt(prompt_id, ({"role": "user", "content": "q"},))
    return ScoredGroup(prompt, completions, tuple(Score(v) for v in values))


def test_preflight_counts_all_failed_groups_as_low_and_all_solved_groups_as_high():
    from openrft.config import build_config
    from openrft.train.preflight import summarize_groups

    settings = build_config({}, {})[0].settings()
    failed, mixed, solved = (
        _scored("a", [0.0] * 4),
        _scored("b", [0.0, 1.0, 0.0, 1.0]),
        _scored("c", [1.0] * 4),
    )
    report = summarize_groups([failed, mixed, failed, solved], settings, "pointwise")
    assert (report.zero_variance, report.zero_variance_low, report.zero_variance_high) == (3, 2, 1)


def test_a_groupwise_task_s_deadline_counts_one_call_per_group(monkeypatch):
    """A hung groupwise task is given up after its groups' calls could have run, not its completions'."""
    from openrft.distributed.scoring import GRACE_S

    ray = FakeRay(cpus=1, seconds_per_call=1e9)  # never answers
    cancelled_at = []
    ray.cancel = lambda ref, force=False: cancelled_at.append(ray.now)
    scorer = _scorer(monkeypatch, ray, limit=1, timeout=10.0)
    scorer.pointwise = False  # as for a groupwise evaluator: one call scores a whole group
    scores = scorer.score_groups(_groups(4, 8))
    assert cancelled_at[0] == pytest.approx(4 * 10.0 + GRACE_S)  # 4 calls, not 32
    assert all(not x.is_valid and "failed twice" in x.reason for s in scores for x in s)
