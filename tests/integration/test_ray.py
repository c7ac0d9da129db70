"""Rollouts on Ray actors and evaluator calls as Ray tasks, on a real 2-CPU Ray instance started here.

One Ray instance serves the whole module, and one 2-actor engine all the engine tests (starting
actors costs seconds); the job test runs first, while the 2 CPUs are free for its own actors. Engine
tests never reuse a policy version for different weights, since actors keep their adapter between
calls. Skipped when ray is not installed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import textwrap
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from openrft.config import build_config  # noqa: E402
from openrft.distributed.engine import RayEngine  # noqa: E402
from openrft.distributed.scoring import RayScorer  # noqa: E402
from openrft.distributed.worker import WorkerSpec  # noqa: E402
from openrft.errors import ConfigError  # noqa: E402
from openrft.evaluators import load_evaluator, score_groups  # noqa: E402
from openrft.models import end_token_ids, load_model  # noqa: E402
from openrft.records import Completion, Prompt, SamplingParams  # noqa: E402
from openrft.rollout.local import LocalEngine  # noqa: E402
from openrft.tracking.sinks import read_jsonl  # noqa: E402
from openrft.train import policy as P  # noqa: E402

FIXTURES = Path(__file__).parent / "train_fixtures" / "evaluators.py"
PARAMS = SamplingParams(n=3, temperature=1.0, top_k=20, max_tokens=10, seed=11)


@contextlib.contextmanager
def one_thread():
    """Sample in-process with the actors' thread count, so forward passes round identically."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _local(model, tokenizer, prompts, params=PARAMS):
    with one_thread():
        return LocalEngine(model, tokenizer).generate(prompts, params)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """The trainer's side: the tiny base model with a LoRA adapter whose weights matter."""
    model, tokenizer = load_model(str(tiny_model_dir))
    model = P.attach_lora(model, 4, seed=1)
    _perturb(model, seed=0)
    return model, tokenizer


@pytest.fixture(scope="module")
def engine(cluster, policy, tiny_model_dir):
    model, tokenizer = policy
    spec = WorkerSpec(
        base_model=str(tiny_model_dir),
        lora_config=model.peft_config[P.TRAINABLE],
        stop_token_ids=end_token_ids(tokenizer, model),
        torch_threads=1,
    )
    engine = RayEngine(model, tokenizer, spec, workers=2, actor_options={"num_cpus": 1}, start_timeout=120)
    yield engine
    engine.close()


def _perturb(model, seed: int) -> None:
    """Move the adapter (a new policy) by a seeded random step."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)


def _prompts(count: int) -> list[Prompt]:
    return [Prompt(f"p{i}", ({"role": "user", "content": f"What is {i} + {2 * i}?"},)) for i in range(count)]


def _assert_same(ray_groups: list[list[Completion]], local_groups: list[list[Completion]]) -> None:
    assert len(ray_groups) == len(local_groups)
    for got, want in zip(ray_groups, local_groups, strict=True):
        assert [(c.prompt_id, c.candidate_index) for c in got] == [
            (c.prompt_id, c.candidate_index) for c in want
        ]
        for a, b in zip(got, want, strict=True):
            assert a.completion_token_ids == b.completion_token_ids and a.text == b.text
            assert a.prompt_token_ids == b.prompt_token_ids and a.finish_reason == b.finish_reason
            assert a.logprobs == pytest.approx(b.logprobs, rel=5e-4, abs=1e-4)  # batch rounding


def _bump(engine: RayEngine, model, seed: int) -> int:
    """A training step: new adapter weights, next policy version."""
    _perturb(model, seed)
    engine.set_policy(engine.policy_version + 1)
    return engine.policy_version


# ----------------------------------------------------------------------------- a whole job


def _job_values(model_dir: Path, **extra) -> dict:
    return dict(
        base_model=str(model_dir), dataset="arithmetic:count=6", evaluator=f"{FIXTURES}::spread",
        rl_loss_method="grpo", response_candidates_count=4, max_output_tokens=16, chunk_size=2, batch_size=160,
        micro_batch_tokens=128, eval_auto_carveout=0.34, eval_every=2, checkpoint_every=100, temperature=1.0,
        learning_rate=5e-4, seed=3, **extra,
    )  # fmt: skip


RAY_ONLY = (
    "rollout/actor_failures",
    "rollout/requeued_prompts",
    "rollout/adapter_snapshots",
    "rollout/policy_lag_max",
)


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/")) and k not in RAY_ONLY}
            for r in rows]  # fmt: skip


def test_a_job_on_two_ray_actors_trains_like_the_in_process_job_even_when_one_dies(
    cluster, tiny_model_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from openrft.train.job import prepare, run_training

    rounds: list[dict] = []  # one per generate call: what the trainer asked for and what came back
    original = RayEngine.generate_from_ids

    def recording(self, items, params):
        if len(rounds) == 1:  # the first training round: one actor dies in the middle of it
            ray.get(self.workers[0].arm_crash.remote())
        groups = original(self, items, params)
        rounds.append(
            {
                "version": self.policy_version,
                "sampled": {c.policy_version for g in groups for c in g},
                "asked": [pid for pid, _ in items],
                "got": [[c.prompt_id for c in g] for g in groups],
                "n": params.n,
                "failures": self.actor_failures,
                "requeued": self.requeued_prompts,
            }
        )
        return groups

    monkeypatch.setattr(RayEngine, "generate_from_ids", recording)
    local_cfg, _ = build_config({}, _job_values(tiny_model_dir))
    ray_cfg, _ = build_config({}, _job_values(tiny_model_dir, ray_address="local", rollout_workers=2))
    with one_thread():  # the trainer's arithmetic is the same in both jobs; so is the actors' sampling
        local = run_training(prepare(local_cfg), tmp_path / "local", quiet=True)
        distributed = run_training(prepare(ray_cfg), tmp_path / "ray", quiet=True)

    assert local.status == distributed.status == "completed"
    local_rows = read_jsonl(tmp_path / "local" / "metrics.jsonl")
    ray_rows = read_jsonl(tmp_path / "ray" / "metrics.jsonl")
    assert len(local_rows) == len(ray_rows) >= 3
    for want, got in zip(_comparable(local_rows), _comparable(ray_rows), strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    a = load_file(str(tmp_path / "local" / "output" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ray" / "output" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in b.items() if "lora_B" in k)

    # every round (and evaluation) sampled with the trainer's current adapter: --max-staleness 0
    assert len(rounds) >= 4 and max(r["version"] for r in rounds) >= 2
    assert all(r["sampled"] == {r["version"]} for r in rounds)
    # the actor that died mid-round was restarted; its prompts were sampled again, none lost or doubled
    assert rounds[0]["failures"] == 0 and rounds[1]["failures"] == rounds[-1]["failures"] == 1
    assert rounds[1]["requeued"] >= 1
    logged = [r for r in ray_rows if "rollout/actor_failures" in r]  # and the job's metrics say so
    assert (
        logged and logged[-1]["rollout/actor_failures"] == 1 and logged[-1]["rollout/requeued_prompts"] >= 1
    )
    assert all(r["rollout/policy_lag_max"] == 0 for r in logged)
    assert all(r["got"] == [[pid] * r["n"] for pid in r["asked"]] for r in rounds)
    assert json.loads((tmp_path / "ray" / "job.json").read_text())["rollout"]["ray_address"] == "local"

    gc.collect()  # the job's engine is gone: its actors are killed and their CPUs free again
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert math.isclose(ray.available_resources().get("CPU", 0), 2)


def test_the_endpoint_engine_is_refused_with_ray(tiny_model_dir):
    with pytest.raises(ConfigError, match="rollout-engine"):  # at job creation, before any model loads
        build_config(
            {},
            {"base_model": str(tiny_model_dir), "ray_address": "local", "rollout_engine": "endpoint",
             "endpoint_url": "http://localhost:1/v1"},
        )  # fmt: skip


# ----------------------------------------------------------------------------- evaluation

FLAKY = """
import os
from pathlib import Path

MARK = Path({mark!r})


def flaky(completion, prompt_id=None, **row):
    if prompt_id == "p1" and not MARK.exists():
        MARK.write_text("crashed once")
        os._exit(1)  # the worker process dies in the middle of the task
    return len(completion) % 3 / 2


def deadly(completion, prompt_id=None, **row):
    if prompt_id == "p1":
        os._exit(1)
    return 1.0


def one_deadly(completion, prompt_id=None, **row):
    if prompt_id == "p1" and completion == "xx":
        os._exit(1)
    return 1.0
"""


def _scored_groups(count: int, k: int = 2):
    return [
        (
            prompt,
            [Completion(prompt.prompt_id, c, (1,), (2,) * (i + c + 1), "x" * (i + c), (-0.5,) * (i + c + 1), "stop")
             for c in range(k)],
        )
        for i, prompt in enumerate(_prompts(count))
    ]  # fmt: skip


def test_scoring_tasks_match_in_process_scores_and_retry_a_crash_once(cluster, tmp_path):
    source = tmp_path / "flaky_eval.py"
    source.write_text(textwrap.dedent(FLAKY.format(mark=str(tmp_path / "mark"))))
    groups = _scored_groups(4)
    spread = load_evaluator(f"{FIXTURES}::spread")
    scorer = RayScorer(spread, max_concurrent_evaluations=4, timeout=30, ray=ray)
    assert scorer.score_groups(groups) == score_groups(spread, groups)

    flaky = RayScorer(load_evaluator(f"{source}::flaky"), max_concurrent_evaluations=4, timeout=30, ray=ray)
    scores = flaky.score_groups(groups)
    assert flaky.task_failures == 1 and (tmp_path / "mark").exists()
    assert all(s.is_valid for g in scores for s in g)  # the retry succeeded
    assert [[s.score for s in g] for g in scores] == [[len(c.text) % 3 / 2 for c in cs] for _, cs in groups]

    deadly = RayScorer(load_evaluator(f"{source}::deadly"), max_concurrent_evaluations=4, timeout=30, ray=ray)
    scores = deadly.score_groups(groups)
    assert deadly.task_failures == 3  # the first try, then each of p1's two calls alone
    assert [s.is_valid for s in scores[1]] == [False, False]
    assert "failed twice" in scores[1][0].reason and scores[1][0].score == 0.0
    assert all(s.is_valid and s.score == 1.0 for i, g in enumerate(scores) if i != 1 for s in g)
    one = RayScorer(
        load_evaluator(f"{source}::one_deadly"), max_concurrent_evaluations=4, timeout=30, ray=ray
    )
    scores = one.score_groups(groups)  # only the call that kills its worker scores invalid, as in process
    assert [s.is_valid for s in scores[1]] == [True, False] and all(s.is_valid for g in scores[:1] for s in g)


def test_the_job_s_ray_scorer_follows_the_in_process_scoring_rules(cluster):
    import dataclasses

    from openrft.errors import EvaluatorError
    from openrft.train.setup import make_scorer

    settings = build_config({}, {"ray_address": "local"})[0].settings().engine
    groups = _scored_groups(2)
    prompts = [p for p, _ in groups]
    failed = [[dataclasses.replace(c, error="agent crashed") if c.candidate_index == 0 else c for c in cs]
              for _, cs in groups]  # fmt: skip
    score = make_scorer(settings, load_evaluator(f"{FIXTURES}::spread"))
    scores = score(prompts, failed)  # a failed rollout scores invalid, whatever the evaluator says
    assert [(s.score, s.is_valid, s.reason) for s in scores[0]][0] == (0.0, False, "agent crashed")
    assert all(s.is_valid for g in scores for s in g[1:])
    broken = load_evaluator(f"{FIXTURES}::broken")
    with pytest.raises(EvaluatorError) as caught:
        make_scorer(settings, broken)(prompts, [cs for _, cs in groups])
    assert len(caught.value.scored) == 2  # the failing round's rollouts go with the error
    lenient = make_scorer(settings, broken, check_invalid=False)  # the preflight reports the rate instead
    assert not any(s.is_valid for g in lenient(prompts, [cs for _, cs in groups]) for s in g)


# ----------------------------------------------------------------------------- rollouts


def test_two_actors_sample_what_the_in_process_engine_samples(engine, policy):
    model, tokenizer = policy
    prompts = _prompts(8)
    got = engine.generate(prompts, PARAMS)
    want = _local(model, tokenizer, prompts)
    _assert_same(got, want)
    assert {c.policy_version for g in got for c in g} == {engine.policy_version}
    assert len({info["pid"] for info in engine.worker_info()}) == 2  # both actors took part
    assert all(info["version"] == engine.policy_version for info in engine.worker_info())
    assert engine.adapter_bytes > 0 and engine.generate([], PARAMS) == []


def test_each_round_samples_the_latest_adapter_unless_staleness_allows(engine, policy):
    model, tokenizer = policy
    prompts = _prompts(4)
    engine.max_staleness = 0
    try:
        version = _bump(engine, model, seed=1)
        fresh = engine.generate(prompts, PARAMS)  # round k+1 after step k: the new weights
        assert {c.policy_version for g in fresh for c in g} == {version}
        at_version = _local(model, tokenizer, prompts)
        _assert_same(fresh, at_version)

        engine.max_staleness = 1  # one version of lag allowed: the snapshot of `version` is kept
        snapshots = engine.snapshots
        newer = _bump(engine, model, seed=2)
        lagging = engine.generate(prompts, PARAMS)
        assert {c.policy_version for g in lagging for c in g} == {version} and newer == version + 1
        _assert_same(lagging, at_version)  # really the older weights, not the live ones
        assert engine.snapshots == snapshots

        newest = _bump(engine, model, seed=3)  # two behind: too stale, a new snapshot is shipped
        caught_up = engine.generate(prompts, PARAMS)
        assert {c.policy_version for g in caught_up for c in g} == {newest}
        _assert_same(caught_up, _local(model, tokenizer, prompts))
        assert engine.snapshots == snapshots + 1
    finally:
        engine.max_staleness = 0


def test_agent_rollouts_run_on_the_actors(engine, policy):
    """An agent's calls go through the job's policy server to the actors; the recorded tokens
    are what the trainer's model gives the same log-probs to."""
    from test_agents import assert_trainer_logprobs_are_the_sampled_ones

    from openrft.rollout.agents import Agent, AgentEngine

    def two_turns(row, client):
        messages = [m.model_dump(exclude_none=True) for m in row.messages]
        for _ in range(2):
            reply = client.chat.completions.create(model="policy", messages=messages)
            messages += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                         {"role": "user", "content": "Again."}]  # fmt: skip
        row.messages = messages[:-1]
        return row

    model, tokenizer = policy
    engine.max_staleness = 0
    agents = AgentEngine(engine, Agent(two_turns, False, "test"), max_context=512)
    try:
        groups = agents.generate(_prompts(2), SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=2))
    finally:
        agents.close(inner=False)  # the module's actors stay up
    runs = [c for g in groups for c in g]
    assert all(not c.error and c.agent_metrics["turns"] == 2 and 0 in c.completion_mask for c in runs)
    assert_trainer_logprobs_are_the_sampled_ones(model, runs, tokenizer.pad_token_id)


def test_a_cancel_stops_the_wait_for_actors_that_cannot_start(cluster, policy, tiny_model_dir):
    """Ctrl-C, SIGTERM or `rftj cancel` while the actors wait for CPUs the cluster has not got free: the
    job stops at once (the wait used to run on until the actors started, up to its 15 minutes)."""
    from openrft.errors import RolloutAborted

    model, tokenizer = policy
    spec = WorkerSpec(base_model=str(tiny_model_dir), lora_config=model.peft_config[P.TRAINABLE],
                      stop_token_ids=end_token_ids(tokenizer, model), torch_threads=1)  # fmt: skip
    asked = []
    started = time.monotonic()
    with pytest.raises(RolloutAborted, match="waiting for the rollout actors"):
        RayEngine(model, tokenizer, spec, workers=1, actor_options={"num_cpus": 3}, start_timeout=120,
                  stop_waiting=lambda: asked.append(1) or len(asked) >= 2)  # fmt: skip
    assert time.monotonic() - started < 30 and len(asked) == 2
