"""Agent rollouts: a user's function drives a conversation against the current policy.

``--agent path.py::fn`` names ``fn(row, client) -> row``: ``row`` is an
:class:`~openrft.evaluators.protocol.EvaluationRow` holding the dataset row (messages, tools,
ground truth, ...), ``client`` an ``openai.AsyncOpenAI`` (``async def fn``) or ``openai.OpenAI``
(plain ``def fn``) whose ``base_url`` is the job's policy server, model ``policy``. The function
talks to the model however it likes and returns the row with the whole conversation, which the
evaluator then scores as usual.

:class:`AgentEngine` wraps any engine with ``generate_from_ids`` (local, endpoint, Ray): it
serves that engine on a loopback port (:mod:`openrft.rollout.server`), runs ``n`` independent
agent runs per prompt, and turns each run's recorded calls into a :class:`Completion` of the
exact sampled tokens (:mod:`openrft.rollout.trajectories`). A run that raises, outlives
``agent_timeout`` or exceeds the context budget becomes a completion with ``error`` set:
scored invalid, never trained on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import importlib.util
import inspect
import secrets
import sys
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError
from openrft.paths import user_module_spec
from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout.aborting import gather_or_abort
from openrft.rollout.trajectories import ROLLOUT_HEADER, RolloutLog, RolloutRecorder, trajectory_completion

POLICY_MODEL = "policy"
DEFAULT_AGENT_TIMEOUT = 600.0
CURRENT_ROLLOUT: contextvars.ContextVar[tuple[RolloutRecorder, str] | None] = contextvars.ContextVar(
    "openrft_rollout", default=None
)


def count(name: str, amount: float = 1.0) -> None:
    """Add to a counter of the rollout being run (``agent/<name>`` in the metrics); no-op outside one."""
    current = CURRENT_ROLLOUT.get()
    if current is not None:
        current[0].count(current[1], name, amount)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Agent:
    """A loaded agent function and whether it is a coroutine function."""

    fn: Callable[..., Any]
    is_async: bool
    spec: str


def load_agent(spec: str) -> Agent:
    """``path/to/file.py::function`` -> :class:`Agent`; a clear error naming ``--agent`` otherwise."""
    path, sep, name = spec.rpartition("::")
    if not sep or not path or not name:
        raise ConfigError(f"--agent must be path/to/file.py::function, not '{spec}'")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--agent: no such file: {file}")
    module_name = f"openrft_agent_{abs(hash(str(file.resolve())))}"
    module_spec = user_module_spec(module_name, file)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--agent: cannot import {file}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"--agent: importing {file} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"--agent: {file} has no function '{name}'")
    if len(inspect.signature(fn).parameters) < 2:
        raise ConfigError(f"--agent: {name} must take (row, client), as in fn(row, client) -> row")
    return Agent(fn, inspect.iscoroutinefunction(fn), spec)


# ----------------------------------------------------------------------------- engine


class AgentEngine:
    """A :class:`~openrft.records.RolloutEngine` whose candidates are agent runs (module docstring)."""

    def __init__(
        self,
        inner: Any,
        agent: Agent,
        *,
        max_concurrent: int = 64,
        agent_timeout: float = DEFAULT_AGENT_TIMEOUT,
        max_context: int | None = None,
        served_names: Sequence[str] = (),
    ):
        self.inner, self.agent = inner, agent
        self.max_concurrent, self.agent_timeout = max_concurrent, agent_timeout
        self.recorder = RolloutRecorder(max_context=max_context)
        self.served_names = list(served_names)
        self.needs_adapter_files = getattr(inner, "needs_adapter_files", False)
        self.tokenizer = inner.tokenizer
        self._server: Any = None
        self._should_abort: Callable[[], bool] | None = None

    @property
    def should_abort(self) -> Callable[[], bool] | None:
        """Asked while the round's agent runs go (:class:`~openrft.records.RolloutEngine`); handed to the
        inner engine too, so that the policy server stops decoding the runs' calls as well."""
        return self._should_abort

    @should_abort.setter
    def should_abort(self, check: Callable[[], bool] | None) -> None:
        self._should_abort = check
        if hasattr(self.inner, "should_abort"):
            self.inner.should_abort = check

    # the trainer reaches the model through the inner engine (samples_this_model, memory, ...)
    @property
    def model(self) -> Any:
        return getattr(self.inner, "model", None)

    def set_policy(self, version: int, adapter: Any = None) -> None:
        self.inner.set_policy(version, adapter)

    @property
    def base_url(self) -> str:
        if self._server is None:
            from openrft.rollout.server import BackgroundServer, create_app

            app = create_app(
                self.inner,
                POLICY_MODEL,
                aliases=self.served_names,
                recorder=self.recorder,
                fixed=True,
                local_only=True,
            )
            self._server = BackgroundServer(app).__enter__()
        return self._server.url

    def close(self, *, inner: bool = True) -> None:
        """Stop the policy server (and the wrapped engine unless ``inner=False``). An agent thread still
        running past its timeout is a daemon: it does not keep the process alive, and its calls are
        refused (404), since its rollout is closed."""
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None
        if inner and hasattr(self.inner, "close"):
            self.inner.close()

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` agent runs per prompt, in order; the job's ``params`` govern every model call."""
        self.recorder.params = params
        url = self.base_url
        import openai  # noqa: F401  (imported now, not inside the first runs' --agent-timeout)

        coroutine = self._run_all(list(prompts), params, url)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coroutine).result()

    async def _run_all(
        self, prompts: list[Prompt], params: SamplingParams, url: str
    ) -> list[list[Completion]]:
        semaphore = asyncio.Semaphore(self.max_concurrent)
        runs = [[self._run_one(p, k, url, semaphore) for k in range(params.n)] for p in prompts]
        flat = await gather_or_abort([run for group in runs for run in group], self.should_abort)
        it = iter(flat)
        return [[next(it) for _ in range(params.n)] for _ in prompts]

    async def _run_one(self, prompt: Prompt, k: int, url: str, semaphore: asyncio.Semaphore) -> Completion:
        # The id is unique to this run (a late call of a timed-out run of the same prompt in an earlier
        # round finds its rollout closed) and ASCII (it travels in an HTTP header); the seeds of its
        # calls are named by prompt and candidate, as in any rerun of the job.
        rollout_id = f"{urllib.parse.quote(prompt.prompt_id, safe='')}#{k}.{secrets.token_hex(4)}"
        async with semaphore:
            self.recorder.open(rollout_id, seed_key=f"{prompt.prompt_id}#{k}")
            token = CURRENT_ROLLOUT.set((self.recorder, rollout_id))
            error, messages = "", list(prompt.messages)
            try:
                row = await asyncio.wait_for(self._call_agent(prompt, rollout_id, url), self.agent_timeout)
                messages = conversation_of(row)
            except TimeoutError:
                error = f"the agent did not finish within --agent-timeout ({self.agent_timeout:g} s)"
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this run itself is being cancelled: the job is stopping
                # cancelled from inside: anyio cancels the task whose MCP connection failed (an HTTP
                # server gone); that run is scored invalid, the others go on
                error = "the agent's run was cancelled from inside (an MCP server's connection failed?)"
            except Exception as exc:  # the user's code failed: this run is scored invalid
                error = f"the agent raised {type(exc).__name__}: {str(exc).strip()[:300]}"
            finally:
                CURRENT_ROLLOUT.reset(token)
                log = self.recorder.close(rollout_id)
        return agent_completion(prompt, k, log, messages, error)

    async def _call_agent(self, prompt: Prompt, rollout_id: str, url: str) -> Any:
        import openai

        from openrft.evaluators.protocol import EvaluationRow

        row = EvaluationRow(**_row_fields(prompt))
        headers = {ROLLOUT_HEADER: rollout_id}
        timeout = self.agent_timeout
        context = contextvars.copy_context()
        if self.agent.is_async:  # on an event loop of its own: blocking code in it stalls only this run

            async def run_async() -> Any:
                async with openai.AsyncOpenAI(base_url=url, api_key="openrft", default_headers=headers,
                                              max_retries=0, timeout=timeout) as client:  # fmt: skip
                    return await self.agent.fn(row, client)

            return await in_daemon_thread(context.run, lambda: asyncio.run(run_async()))

        def run() -> Any:
            with openai.OpenAI(base_url=url, api_key="openrft", default_headers=headers, max_retries=0,
                               timeout=timeout) as client:  # fmt: skip
                return self.agent.fn(row, client)

        return await in_daemon_thread(context.run, run)


async def in_daemon_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own, started now (so a timeout around it counts only its own
    time, and runs that arrive together call the policy together). The thread is a daemon: one that
    never returns neither holds a slot other runs wait for nor keeps the process from exiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(outcome: str, value: Any) -> None:
        if not future.done():  # cancelled by a timeout meanwhile
            future.set_result(value) if outcome == "ok" else future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001  (handed to the awaiting coroutine)
            outcome, value = "error", exc
        else:
            outcome, value = "ok", result
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for it any more
            loop.call_soon_threadsafe(settle, outcome, value)

    threading.Thread(target=target, name="openrft-agent", daemon=True).start()
    return await future


def _row_fields(prompt: Prompt) -> dict[str, Any]:
    row = copy.deepcopy(prompt.row)
    fields = {k: v for k, v in row.items() if k not in ("messages", "input_metadata", "execution_metadata")}
    metadata = row.get("input_metadata") if isinstance(row.get("input_metadata"), dict) else {}
    return {**fields, "messages": list(copy.deepcopy(prompt.messages)),
            "input_metadata": {**metadata, "row_id": prompt.prompt_id}}  # fmt: skip


def conversation_of(row: Any) -> list[dict[str, Any]]:
    """The messages of what an agent returned (an EvaluationRow, a dict with messages, or a list)."""
    messages = row.get("messages") if isinstance(row, dict) else getattr(row, "messages", row)
    if not isinstance(messages, list) or not messages:
        raise TypeError(f"an agent must return the row with its messages, not {type(row).__name__}")
    out = []
    for m in messages:
        if hasattr(m, "model_dump"):
            m = m.model_dump(exclude_none=True)
        if not isinstance(m, dict) or "role" not in m:
            raise TypeError("every message an agent returns must have a role")
        out.append(m)
    return out


def agent_completion(prompt: Prompt, k: int, log: RolloutLog, messages: list[dict], error: str) -> Completion:
    """The run's recorded calls as a completion, with its conversation and ``agent/*`` counters."""
    if error and log.refused:  # it did not get past a call refused for the context budget: it ran out
        log.truncated = True
    if not error and not log.calls:
        error = "the agent made no call to the policy"
    if not error and log.truncated:
        error = "the conversation exceeded the context budget (--max-context-length)"
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), {})
    text = last.get("content") or "" if isinstance(last.get("content"), str | None) else str(last["content"])
    completion = trajectory_completion(prompt.prompt_id, k, log, text)
    sampled = [len(c.completion_token_ids) for c in log.calls]
    tool_calls = sum(len(c.reply.get("tool_calls") or []) for c in log.calls)
    metrics = {
        "turns": float(len(log.calls)),
        "tool_calls": float(tool_calls),
        "tool_errors": log.notes.get("tool_errors", 0.0),
        "truncated": float(log.truncated),
        "cut_turns": float(sum(c.finish_reason == "length" for c in log.calls)),  # replies cut at the limit
        "tokens_per_turn": sum(sampled) / len(sampled) if sampled else 0.0,
        **{k: v for k, v in log.notes.items() if k != "tool_errors"},
    }
    import dataclasses

    return dataclasses.replace(completion, conversation=tuple(messages), agent_metrics=metrics, error=error)


__all__ = ["Agent", "AgentEngine", "POLICY_MODEL", "agent_completion", "count", "load_agent"]
