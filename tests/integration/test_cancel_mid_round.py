"""A cancel that arrives while a round is being sampled stops it part-way: the round is dropped (nothing
logged, trained or scored), the checkpoint's cursor stays before it, and a resume samples the same
prompts with the same seeds. Each engine stops in its own way: the local one between decoding steps,
the endpoint and agent engines by cancelling the requests still running, Ray's dispatch at its next
wait, vLLM before its one call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from test_engine_contracts import scripted_vllm  # noqa: F401  (a fixture: a scripted ``vllm`` module)

from openrft.errors import RolloutAborted
from openrft.records import SamplingParams
from openrft.tracking.sinks import read_jsonl

FIXTURES = Path(__file__).parent / "train_fixtures" / "evaluators.py"


@pytest.fixture
def every_check(monkeypatch):
    """The round asks for a cancel at every chance instead of every ``ABORT_POLL_S`` (deterministic)."""
    import openrft.train.rounds as rounds

    monkeypatch.setattr(rounds, "ABORT_POLL_S", 0.0)


def _config(model_dir, **extra):
    from openrft.config import build_config

    values = dict(
        base_model=str(model_dir), dataset="arithmetic:count=4", evaluator=f"{FIXTURES}::spread",
        response_candidates_count=2, max_output_tokens=16, chunk_size=2, temperature=1.0, seed=3, **extra,
    )  # fmt: skip
    return build_config({}, values)[0]


def _completions(job_dir: Path) -> list[tuple[int, str, str, float]]:
    rows = read_jsonl(job_dir / "rollouts.jsonl")
    return sorted((r["round"], r["prompt_id"], r["completion"], r["score"]) for r in rows)


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_cancel_while_the_local_engine_decodes_drops_the_round_and_a_resume_samples_it_again(
    tiny_model_dir, tmp_path, every_check, dynamic
):
    from openrft.train.job import prepare, run_training

    cfg = _config(tiny_model_dir, dynamic_sampling=dynamic)
    asked = []

    def should_stop() -> bool:  # asked once at the round's start, then before every decoding step
        asked.append(1)
        return len(asked) >= 4

    job = tmp_path / "job"
    outcome = run_training(prepare(cfg), job, quiet=True, should_stop=should_stop)
    assert outcome.status == "cancelled" and outcome.message == "cancelled at step 0"
    # the loop's check, the engine's before decoding steps 1-3 (the third says stop), the loop's again:
    assert len(asked) == 5  # the engine stopped at the step it was told (responses run to 16 tokens)
    state = outcome.state
    assert (state.step, state.cursor, state.round_index) == (0, 0, 0)  # the round is not consumed
    assert not (job / "rollouts.jsonl").exists() or not read_jsonl(job / "rollouts.jsonl")
    assert not [r for r in read_jsonl(job / "metrics.jsonl") if "loss/policy" in r or "reward/mean" in r]

    resumed = run_training(prepare(cfg), job, quiet=True, resume=True)
    assert resumed.status == "completed" and resumed.state.step == 2
    whole = run_training(prepare(cfg), tmp_path / "whole", quiet=True)
    assert whole.state.step == 2
    assert _completions(job) == _completions(tmp_path / "whole")  # the same prompts, seeds and tokens


AGENT = """
import time
from pathlib import Path

HERE = Path(__file__).parent


def agent(row, client):
    (HERE / "started").write_text("")
    while not (HERE / "release").exists():  # a run that would take 60 s
        time.sleep(0.05)
        if time.monotonic() - START > 60:
            break
    (HERE / "finished").write_text("")
    return row


START = time.monotonic()
"""


def test_a_cancel_while_agents_run_cancels_their_runs_and_drops_the_round(
    tiny_model_dir, tmp_path, every_check
):
    from openrft.train.job import prepare, run_training

    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / "slow_agent.py").write_text(AGENT)
    cfg = _config(tiny_model_dir, agent=f"{folder / 'slow_agent.py'}::agent", agent_timeout=600)
    try:
        outcome = run_training(
            prepare(cfg), tmp_path / "job", quiet=True, should_stop=lambda: (folder / "started").exists()
        )
        assert not (folder / "finished").exists()  # the job did not wait for its agents
    finally:
        (folder / "release").write_text("")  # the cancelled runs' threads end
    assert outcome.status == "cancelled" and outcome.state.step == 0 and outcome.state.cursor == 0
    assert not (tmp_path / "job" / "rollouts.jsonl").exists()


# ----------------------------------------------------------------------------- each engine on its own


def test_gather_or_abort_cancels_what_is_still_running():
    from openrft.rollout.aborting import gather_or_abort

    cancelled = []

    async def slow(k: int) -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(k)
            raise
        return k

    async def fast() -> int:
        return 7

    async def main(answers):
        return await gather_or_abort([fast(), slow(1), slow(2)], lambda: next(answers))

    with pytest.raises(RolloutAborted):
        asyncio.run(main(iter([False, True])))
    assert sorted(cancelled) == [1, 2]
    assert asyncio.run(gather_or_abort_done()) == [1, 2]


async def gather_or_abort_done():
    from openrft.rollout.aborting import gather_or_abort

    async def value(k):
        return k

    return await gather_or_abort([value(1), value(2)], lambda: False)


def test_the_endpoint_engine_stops_waiting_for_its_requests_when_told(tokenizer):
    from openrft.rollout.endpoint import EndpointEngine

    arrived = []

    async def hanging(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(404, json={"error": {"message": "no listing"}})
        arrived.append(1)
        await asyncio.sleep(60)  # a server that never answers within the test
        return httpx.Response(500)

    engine = EndpointEngine("http://fake", tokenizer, "m", transport=httpx.MockTransport(hanging))
    engine.should_abort = lambda: len(arrived) == 2  # both requests are out: nothing will come back
    with pytest.raises(RolloutAborted):
        engine.generate_from_ids([("p", [1, 2, 3])], SamplingParams(n=2, max_tokens=8))


def test_ray_dispatch_stops_at_its_next_wait_and_cancels_the_calls_in_flight():
    from openrft.distributed.engine import _Dispatch

    cancelled = []
    answers = iter([False, True])
    waits = []

    def wait(refs, **options):  # nothing ever finishes
        waits.append(1)
        assert len(waits) < 5, "the dispatch did not stop"
        return [], refs

    ray = SimpleNamespace(wait=wait, cancel=cancelled.append)
    dispatch = _Dispatch.__new__(_Dispatch)
    dispatch.engine = SimpleNamespace(ray=ray, _probes={}, should_abort=lambda: next(answers))
    dispatch.pending, dispatch.in_flight = [], {"ref-1": (0, 0, 0)}
    dispatch._submit = lambda: None
    dispatch._check_stalled = lambda since: since
    with pytest.raises(RolloutAborted):
        dispatch.run()
    assert cancelled == ["ref-1"]


def test_the_vllm_engine_does_not_start_a_round_it_is_told_to_drop(scripted_vllm, tiny_model_dir, tokenizer):  # noqa: F811
    from openrft.rollout.vllm_engine import VLLMEngine

    scripted_vllm.script = [([5, 6], "length")]
    engine = VLLMEngine(str(tiny_model_dir), tokenizer)
    engine.should_abort = lambda: True
    with pytest.raises(RolloutAborted):
        engine.generate_from_ids([("p", [1, 2, 3])], SamplingParams(n=1, max_tokens=2))
    assert scripted_vllm.sent == []  # vLLM was never asked
    engine.should_abort = None
    (group,) = engine.generate_from_ids([("p", [1, 2, 3])], SamplingParams(n=1, max_tokens=2))
    assert group[0].completion_token_ids == (5, 6)
