"""Agent runs stay apart: concurrent calls, late calls of timed-out runs, stuck agents, abandoned
requests and row ids that are not ASCII never mix into another run's training data."""

from __future__ import annotations

import asyncio
import threading
import time

from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout.agents import Agent, AgentEngine
from openrft.rollout.local import LocalEngine

PARAMS = SamplingParams(n=1, temperature=1.0, top_k=0, max_tokens=8, seed=3)


def prompts(*ids: str) -> list[Prompt]:
    return [Prompt(i, ({"role": "user", "content": f"Say {i}"},), {}) for i in ids]


def one_call(row, client):
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    reply = client.chat.completions.create(model="policy", messages=messages, max_tokens=4)
    row.messages = [*messages, reply.choices[0].message.model_dump(exclude_none=True)]
    return row


def run(engine: AgentEngine, rows: list[Prompt], params: SamplingParams = PARAMS) -> list[Completion]:
    return [c for group in engine.generate(rows, params) for c in group]


def test_calls_made_at_once_are_independent_samples(tiny_model, tokenizer):
    model, _ = tiny_model
    replies: list[str] = []

    async def parallel(row, client):
        messages = [m.model_dump(exclude_none=True) for m in row.messages]
        answers = await asyncio.gather(*[
            client.chat.completions.create(model="policy", messages=messages, max_tokens=8) for _ in range(4)
        ])  # fmt: skip
        replies.extend(a.choices[0].message.content for a in answers)
        row.messages = [*messages, answers[0].choices[0].message.model_dump(exclude_none=True)]
        return row

    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(parallel, True, "t"))
    try:
        (completion,) = run(engine, prompts("p0"))
    finally:
        engine.close()
    assert completion.agent_metrics["turns"] == 4
    assert len(set(replies)) > 1, replies  # each call its own draw, not four copies of one


def test_a_timed_out_run_cannot_write_into_a_later_round(tiny_model, tokenizer):
    """The same prompt in the next round is another run: the late call of the first is refused."""
    model, _ = tiny_model
    state = {"round": 0, "late": None}

    def agent(row, client):
        if state["round"] == 0:
            time.sleep(2.0)  # past the 1 s timeout, then a late call while round 1 runs
            try:
                client.chat.completions.create(
                    model="policy", messages=[{"role": "user", "content": "STALE"}], max_tokens=4
                )
                state["late"] = "recorded"
            except Exception as exc:
                state["late"] = type(exc).__name__
            return row
        time.sleep(2.0)  # round 1's run is open while the late call arrives
        return one_call(row, client)

    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(agent, False, "t"), agent_timeout=1.0)
    try:
        (first,) = run(engine, prompts("p0"))
        state["round"] = 1
        engine.agent_timeout = 30.0
        (second,) = run(engine, prompts("p0"))
    finally:
        engine.close()
    assert "--agent-timeout" in first.error
    assert state["late"] == "NotFoundError"  # its rollout is closed: "no open rollout"
    assert not second.error and second.agent_metrics["turns"] == 1
    assert "STALE" not in tokenizer.decode(list(second.prompt_token_ids))


def test_a_stuck_agent_holds_no_slot_and_leaves_only_daemon_threads(tiny_model, tokenizer):
    model, _ = tiny_model

    def agent(row, client):
        if row.messages[0].content == "Say stuck":
            time.sleep(20)  # a call that never comes back, as far as this round is concerned
        return one_call(row, client)

    engine = AgentEngine(
        LocalEngine(model, tokenizer), Agent(agent, False, "t"), agent_timeout=2.0, max_concurrent=2
    )
    start = time.monotonic()
    try:
        stuck, *others = run(engine, prompts("stuck", "a", "b", "c"))
    finally:
        engine.close()
    assert "--agent-timeout" in stuck.error
    assert all(not c.error for c in others), [c.error for c in others]  # their timeouts start with them
    assert time.monotonic() - start < 15
    leftover = [t for t in threading.enumerate() if t.name == "openrft-agent"]
    assert leftover and all(t.daemon for t in leftover)  # the process may exit without waiting for it


def test_row_ids_that_are_not_ascii_run(tiny_model, tokenizer):
    model, _ = tiny_model
    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(one_call, False, "t"))
    try:
        completions = run(engine, prompts("café-1", "题目-7"))
    finally:
        engine.close()
    assert [c.error for c in completions] == ["", ""]
    assert [c.prompt_id for c in completions] == ["café-1", "题目-7"]


class SlowFirstCall:
    """An engine whose first generation takes longer than the agent's client waits."""

    def __init__(self, inner: LocalEngine, delay: float):
        self.inner, self.delay, self.calls = inner, delay, 0
        self.tokenizer, self.stop_token_ids = inner.tokenizer, inner.stop_token_ids

    def generate_from_ids(self, prompts, params, **kwargs):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.inner.generate_from_ids(prompts, params, **kwargs)


def test_a_call_the_client_gave_up_on_is_not_trained(tiny_model, tokenizer):
    """The openai SDK's documented retry: a request that timed out on the client side is abandoned,
    so only the retried call, whose reply the agent used, is recorded."""
    model, _ = tiny_model

    def retrying(row, client):
        return one_call(row, client.with_options(timeout=0.5, max_retries=2))

    inner = SlowFirstCall(LocalEngine(model, tokenizer), delay=1.5)
    engine = AgentEngine(inner, Agent(retrying, False, "t"), agent_timeout=30.0)
    try:
        (completion,) = run(engine, prompts("p0"))
    finally:
        engine.close()
    assert inner.calls >= 2 and not completion.error
    assert completion.agent_metrics["turns"] == 1


def test_an_async_agent_that_blocks_stalls_only_its_own_run(tiny_model, tokenizer):
    model, _ = tiny_model

    async def agent(row, client):
        if row.messages[0].content == "Say stuck":
            time.sleep(20)  # blocking code in an async agent: its own event loop is the one blocked
        messages = [m.model_dump(exclude_none=True) for m in row.messages]
        reply = await client.chat.completions.create(model="policy", messages=messages, max_tokens=4)
        row.messages = [*messages, reply.choices[0].message.model_dump(exclude_none=True)]
        return row

    engine = AgentEngine(LocalEngine(model, tokenizer), Agent(agent, True, "t"), agent_timeout=2.0)
    start = time.monotonic()
    try:
        stuck, *others = run(engine, prompts("stuck", "a", "b"))
    finally:
        engine.close()
    assert "--agent-timeout" in stuck.error and all(not c.error for c in others)
    assert time.monotonic() - start < 15
