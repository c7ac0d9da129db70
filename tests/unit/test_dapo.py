"""DAPO extras: soft overlong penalty and dynamic sampling with a fake sampler."""

from __future__ import annotations

import pytest
import torch

from openrft.algo.dapo import (
    apply_overlong_penalty,
    default_overlong_buffer,
    dynamic_sampling,
    overlong_penalties,
)
from openrft.records import Completion, Prompt, Score, ScoredGroup


def overlong_penalty(length, max_tokens, buffer, factor=1.0):
    return float(overlong_penalties([length], max_tokens, buffer, factor)[0])


def test_overlong_penalty_values():
    # max 100, buffer 20: free up to 80, then linear to -factor at 100, -factor beyond
    assert overlong_penalty(10, 100, 20) == 0.0
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(85, 100, 20) == pytest.approx(-0.25)
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == pytest.approx(-1.0)
    assert overlong_penalty(130, 100, 20) == pytest.approx(-1.0)
    assert overlong_penalty(90, 100, 20, factor=0.4) == pytest.approx(-0.2)
    assert str(overlong_penalty(90, 100, 20, factor=0.0)) == "0.0"  # no -0.0
    # the formula of DAPO section 3.4, written out
    for n in range(0, 130, 7):
        expected = 0.0 if n <= 80 else (-1.0 if n > 100 else (80 - n) / 20)
        assert overlong_penalty(n, 100, 20) == pytest.approx(expected, abs=1e-6)
    assert overlong_penalty(1, 1, 1) == -1.0  # buffer == max: every token is in the buffer


def test_overlong_penalties_vectorised():
    lengths = list(range(0, 140, 3))
    vec = overlong_penalties(lengths, 100, 20, factor=0.5)
    assert vec.dtype == torch.float32 and vec.shape == (len(lengths),)
    assert vec.tolist() == pytest.approx(
        [0.5 * min(0.0, max(-1.0, (80 - n) / 20)) for n in lengths], abs=1e-7
    )
    assert overlong_penalties(torch.tensor([85, 100]), 100, 20).tolist() == pytest.approx([-0.25, -1.0])


def test_overlong_bad_settings():
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(10, 100, 0)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalties([10], 100, 101)
    with pytest.raises(ValueError, match="factor"):
        overlong_penalty(10, 100, 20, factor=-1)
    assert default_overlong_buffer(2048) == 512 and default_overlong_buffer(2) == 1


def _group(pid, scores, lengths, valid=None):
    valid = valid or [True] * len(scores)
    prompt = Prompt(pid, ({"role": "user", "content": pid},))
    comps = tuple(
        Completion(pid, i, (1,), tuple(range(n)), "x", (-0.1,) * n, "stop") for i, n in enumerate(lengths)
    )
    return ScoredGroup(prompt, comps, tuple(Score(s, is_valid=v) for s, v in zip(scores, valid, strict=True)))


def test_apply_overlong_penalty_to_scored_groups():
    group = _group("p", [1.0, 1.0, 0.5], [10, 90, 100], valid=[True, True, False])
    (out,) = apply_overlong_penalty([group], max_tokens=100, buffer=20)
    assert [s.score for s in out.scores] == pytest.approx([1.0, 0.5, 0.5])
    assert out.scores[1].metrics["overlong_penalty"] == pytest.approx(-0.5)
    assert out.scores[2] is group.scores[2]  # invalid score untouched
    assert group.scores[1].score == 1.0  # input not mutated


def test_an_agent_s_conversation_is_judged_by_its_longest_call():
    """Three replies of 20 tokens between tool turns (mask 0), within --max-output-tokens 48: no penalty.
    The conversation's 72 tokens were measured before, the maximum penalty."""
    from dataclasses import replace

    mask = (1,) * 20 + (0,) * 6 + (1,) * 20 + (0,) * 6 + (1,) * 20
    talk = Completion("p", 0, (1,), tuple(range(72)), "x", (-0.1,) * 72, "stop", completion_mask=mask)
    long_reply = replace(talk, candidate_index=1, completion_mask=(1,) * 44 + (0,) * 8 + (1,) * 20)
    continued = replace(talk, candidate_index=2, continuations=(replace(talk, completion_mask=(1,) * 72),))
    group = replace(_group("p", [1.0, 1.0, 1.0], [1, 1, 1]), completions=(talk, long_reply, continued))
    (out,) = apply_overlong_penalty([group], max_tokens=48, buffer=16)
    assert [c.longest_call for c in group.completions] == [20, 44, 72]
    assert [s.score for s in out.scores] == pytest.approx([1.0, 1.0 - 12 / 16, 0.0])


class FakeSampler:
    """Prompts are integers; a prompt's group has variance when the prompt is not a multiple of 3."""

    def __init__(self, total=1000):
        self.next, self.total, self.draws = 0, total, []

    def draw(self, n):
        prompts = list(range(self.next, min(self.next + n, self.total)))
        self.next += len(prompts)
        self.draws.append(n)
        return prompts

    @staticmethod
    def sample_and_score(prompts):
        return [{"prompt": p, "scores": [0.0, 0.0] if p % 3 == 0 else [0.0, 1.0]} for p in prompts]


def has_var(group):
    return len(set(group["scores"])) > 1


def test_dynamic_sampling_reaches_target():
    s = FakeSampler()
    kept, stats = dynamic_sampling(6, s.draw, s.sample_and_score, max_rounds=5, has_variance=has_var)
    # round 1: 0..5 -> keep 1,2,4,5 (0,3 dropped); round 2: 2 missing -> 6,7 -> keep 7; round 3: 8 -> keep
    assert [g["prompt"] for g in kept] == [1, 2, 4, 5, 7, 8]
    assert s.draws == [6, 2, 1]
    assert (stats.rounds, stats.extra_rounds, stats.groups_sampled, stats.groups_dropped) == (3, 2, 9, 3)
    assert stats.groups_kept == 6 and not stats.exhausted
    assert stats.as_metrics()["sampling/extra_rounds"] == 2.0


def test_dynamic_sampling_respects_round_cap_and_exhaustion():
    s = FakeSampler()
    kept, stats = dynamic_sampling(6, s.draw, s.sample_and_score, max_rounds=1, has_variance=has_var)
    assert [g["prompt"] for g in kept] == [1, 2, 4, 5, 7]  # short of the target after 1 extra round
    assert stats.rounds == 2 and stats.groups_dropped == 3
    s = FakeSampler(total=4)
    kept, stats = dynamic_sampling(6, s.draw, s.sample_and_score, max_rounds=5, has_variance=has_var)
    assert [g["prompt"] for g in kept] == [1, 2] and stats.exhausted and stats.rounds == 1
    kept, stats = dynamic_sampling(0, s.draw, s.sample_and_score, max_rounds=5, has_variance=has_var)
    assert kept == [] and stats.rounds == 0


def test_dynamic_sampling_truncates_surplus_and_reads_scored_groups():
    def draw(n):
        return [f"p{i}" for i in range(n + 2)]  # hands out more than asked

    def sample(prompts):
        return [_group(p, [0.0, 1.0] if i != 1 else [1.0, 1.0], [5, 5]) for i, p in enumerate(prompts)]

    kept, stats = dynamic_sampling(3, draw, sample, max_rounds=2)  # default has_variance: ScoredGroup
    assert [g.prompt.prompt_id for g in kept] == ["p0", "p2", "p3"]
    assert stats.groups_surplus == 1 and stats.groups_dropped == 1 and stats.groups_kept == 3
    with pytest.raises(TypeError, match="has_variance"):
        dynamic_sampling(1, lambda n: [0], lambda ps: [{"x": 1}], max_rounds=0)
    with pytest.raises(ValueError):
        dynamic_sampling(-1, draw, sample, max_rounds=0)


def test_a_round_applies_the_overlong_penalty_with_the_job_s_buffer_and_factor():
    """The settings reach the round (a round that ignored --overlong-buffer or the factor passed before)."""
    from openrft.records import SamplingParams
    from openrft.settings import RoundSettings
    from openrft.train.rounds import sample_and_score

    class Engine:
        def generate(self, prompts, params):
            return [[Completion(p.prompt_id, i, (1,), tuple(range(n)), "x", (-0.1,) * n, "stop")
                     for i, n in enumerate((2, 7, 8))] for p in prompts]  # fmt: skip

    prompts = [Prompt("p", ({"role": "user", "content": "q"},))]
    score = lambda ps, groups: [[Score(1.0) for _ in g] for g in groups]  # noqa: E731
    params = SamplingParams(n=3, max_tokens=8)
    groups = sample_and_score(
        Engine(), score, prompts, params, RoundSettings(overlong_buffer=4, overlong_factor=0.5), {}
    )
    # 7 tokens: (8 - 4 - 7) / 4 x 0.5 = -0.375; 8 tokens: -1 x 0.5
    assert [s.score for s in groups[0].scores] == pytest.approx([1.0, 0.625, 0.5])
    plain = sample_and_score(Engine(), score, prompts, params, RoundSettings(), {})
    assert [s.score for s in plain[0].scores] == [1.0, 1.0, 1.0]


def test_a_dynamic_sampling_round_counts_its_filter_once_over_every_group_sampled():
    from openrft.records import SamplingParams
    from openrft.settings import RoundSettings
    from openrft.train.rounds import run_round

    class Engine:
        def generate(self, prompts, params):
            return [[Completion(p.prompt_id, i, (1,), (5, 6), "x", (-0.1,) * 2, "stop") for i in range(2)]
                    for p in prompts]  # fmt: skip

    def prompts(*ids):
        return [Prompt(i, ({"role": "user", "content": i},)) for i in ids]

    def score(ps, groups):  # a prompt whose id starts with "z" scores the same for every candidate
        return [[Score(1.0 if p.prompt_id.startswith("z") else float(i)) for i in range(len(g))]
                for p, g in zip(ps, groups, strict=True)]  # fmt: skip

    extra = iter([prompts("z2", "b"), prompts("c")])
    result = run_round(Engine(), score, prompts("a", "z1", "z3"), SamplingParams(n=2, max_tokens=4),
                       RoundSettings(dynamic_sampling_rounds=3), draw_more=lambda n: next(extra))  # fmt: skip
    m = result.metrics
    assert (m["filter/groups"], m["filter/zero_variance_groups"], m["filter/groups_kept"]) == (6, 3, 3)
    assert (
        m["filter/zero_variance_frac"] == 0.5
        and m["sampling/rounds"] == 3
        and m["sampling/groups_sampled"] == 6
    )


def test_a_dynamic_sampling_round_s_time_counts_every_batch_it_sampled(monkeypatch):
    """``time/rollout_s`` sums DAPO's extra batches (throughput/rollout_tokens_per_s divides by it)."""
    from types import SimpleNamespace

    from openrft.records import SamplingParams
    from openrft.settings import RoundSettings
    from openrft.train import rounds

    clock = [0.0]  # a fake clock: each generate call takes 1 s, scoring none
    monkeypatch.setattr(rounds, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Engine:
        def generate(self, prompts, params):
            clock[0] += 1.0
            return [[Completion(p.prompt_id, i, (1,), (5, 6), "x", (-0.1,) * 2, "stop") for i in range(2)]
                    for p in prompts]  # fmt: skip

    def score(ps, groups):  # every group alike: DAPO samples all of its batches
        return [[Score(1.0) for _ in g] for g in groups]

    extra = iter([[Prompt(f"x{i}", ({"role": "user", "content": "q"},))] for i in range(5)])
    result = rounds.run_round(Engine(), score, [Prompt("a", ({"role": "user", "content": "q"},))],
                              SamplingParams(n=2, max_tokens=4), RoundSettings(dynamic_sampling_rounds=3),
                              draw_more=lambda n: next(extra))  # fmt: skip
    assert result.metrics["sampling/rounds"] == 4 and result.metrics["time/rollout_s"] == 4.0  # 1 + 3 more
    assert result.metrics["time/score_s"] == 0.0


def test_an_agent_round_s_failed_fraction_is_over_every_completion():
    """A failed run usually has no agent metrics of its own; it still counts once among all runs."""
    from openrft.train.rounds import agent_metrics

    def run(error="", **metrics):
        return Completion("p", 0, (1,), (2,), "x", (-0.1,), "stop", agent_metrics=metrics, error=error)

    out = agent_metrics([run(turns=2.0), run(turns=4.0), run(error="tool server died"), run(turns=3.0)])
    assert out["agent/failed_frac"] == 0.25 and out["agent/turns"] == 3.0  # turns: the runs that report
    assert agent_metrics([run(), run(error="x")]) == {}  # no agent metrics at all: not an agent round
