"""User evaluators in worker processes: a hang, a crash or an exit scores one call invalid, never the job.

:class:`EvaluatorPool` keeps up to ``workers`` processes (fresh interpreters, never forks of a
job that holds a model and torch threads), each loading the evaluator once from the spec it was
loaded from and then running one call at a time. A call is a pointwise completion or a groupwise group;
it is pickled to the worker, so every call gets its own copy of the row. The parent enforces
a hard deadline: a worker that has not answered ``timeout + GRACE_S`` seconds after it got a
call (an ``async def`` that blocks, an infinite loop) is killed and replaced, and the call
scores ``Score(0.0, is_valid=False, reason="timeout after Ns")``. A worker that dies
(``os._exit``, a segfault, the OOM killer) scores its call invalid with the exit code and is
replaced; ``sys.exit`` and ``KeyboardInterrupt`` raised by an evaluator are caught in the
worker like any exception. The job goes on in every case (the invalid-rate check still applies).

The in-process path (:func:`openrft.evaluators.runner.score_groups`) is kept for openrft's own
built-in evaluators (``run_inline``): they are pure functions of the text, and a process
round trip would cost more than the call (measured in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from openrft.errors import EvaluatorError, RolloutAborted
from openrft.evaluators.base import Evaluator
from openrft.records import Completion, Prompt, Score

GRACE_S = 2.0  # beyond the evaluator timeout, before a silent worker is killed
PRINT_LIMIT = 65536  # characters of the evaluator's own output kept from each worker (each stream)
ABORT_POLL_S = 0.5  # how often a cancel is looked for while calls run
START_TIMEOUT_S = 120.0  # a worker imports the evaluator's module (and whatever it imports)

Group = tuple[Prompt, Sequence[Completion]]
WAIT = object()  # no worker is free yet: wait for a busy one


class _Capped:
    """What the evaluator prints, marked as its own (``[evaluator] `` before each line) and at most
    :data:`PRINT_LIMIT` characters from each worker, so that a chatty evaluator cannot bury the job's
    own lines or fill the disk under its log."""

    def __init__(self, stream: Any, limit: int):
        self.stream, self.left, self.at_line_start = stream, limit, True

    def write(self, text: str) -> int:
        if self.left <= 0 or not text:
            return len(text)
        kept, self.left = text[: self.left], self.left - len(text)
        lines = kept.splitlines(keepends=True)
        out = "".join(
            ("[evaluator] " if self.at_line_start or i else "") + line for i, line in enumerate(lines)
        )
        self.at_line_start = kept.endswith("\n")
        if self.left <= 0:
            out += f"{'' if self.at_line_start else chr(10)}[evaluator] (more output left out: {PRINT_LIMIT} characters per worker)\n"
        self.stream.write(out)
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding: the stream's own
        return getattr(self.stream, name)


def _worker_main(conn: Connection, spec: str, dataset: str | None, timeout: float) -> None:
    """A worker process: load the evaluator, then score one call at a time until told to stop."""
    from openrft.evaluators.loader import load_evaluator
    from openrft.evaluators.runner import score_groups

    sys.stdout = _Capped(sys.stdout, PRINT_LIMIT)  # type: ignore[assignment]
    sys.stderr = _Capped(sys.stderr, PRINT_LIMIT)  # type: ignore[assignment]

    try:
        evaluator = dataclasses.replace(load_evaluator(spec, dataset=dataset), run_inline=True)
    except BaseException as exc:  # reported to the parent as the reason of every call
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            return
        try:
            scores = score_groups(evaluator, [message], max_concurrency=1, timeout=timeout)[0]
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: this call's problem only
            reason = f"{type(exc).__name__}: {exc}"
            scores = [Score(0.0, is_valid=False, reason=reason)] * (
                len(message[1]) if evaluator.mode == "groupwise" else 1
            )
        conn.send(("scores", scores))


@dataclasses.dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection


class EvaluatorPool:
    """Score with ``evaluator`` in up to ``workers`` processes (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, *, workers: int, timeout: float):
        if not evaluator.spec:
            raise EvaluatorError(
                f"evaluator {evaluator.name} cannot be reloaded in a worker process (no spec)"
            )
        if workers < 1 or not timeout > 0:
            raise EvaluatorError(f"invalid evaluator pool settings: {workers=}, {timeout=}")
        self.evaluator, self.size, self.timeout = evaluator, workers, timeout
        self._start_error = ""
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self.replaced = 0  # workers killed (timeout) or found dead, and replaced

    # ------------------------------------------------------------------------- public

    def score_groups(
        self, groups: Sequence[Group], abort: Callable[[], bool] | None = None
    ) -> list[list[Score]]:
        """Scores for each group's completions, in order; same contract as the in-process runner.
        ``abort`` is asked while calls run (at most every :data:`ABORT_POLL_S`): once it answers True,
        the calls under way are stopped (their workers killed) and :class:`RolloutAborted` is raised."""
        groupwise = self.evaluator.mode == "groupwise"
        calls = [(g, None) for g in range(len(groups))] if groupwise else [
            (g, c) for g, (_, cs) in enumerate(groups) for c in range(len(cs))
        ]  # fmt: skip
        results: dict[tuple[int, int | None], list[Score]] = {}
        self._start_error = ""  # each batch tries to start workers again (a start may fail for a while)
        self._grow(min(self.size, len(calls)))
        pending = deque(calls)
        busy: dict[Connection, tuple[_Worker, tuple[int, int | None], float]] = {}
        while pending or busy:
            while pending and (worker := self._worker_for_next_call()) is not WAIT:
                key = pending.popleft()
                if worker is None:  # the evaluator cannot even be loaded in a worker
                    results[key] = self._invalid(groups, key, self._start_error)
                    continue
                prompt, completions = groups[key[0]]
                try:
                    worker.conn.send((prompt, list(completions) if key[1] is None else [completions[key[1]]]))
                except OSError:  # it died while idle (killed, crashed): replace it, the call goes again
                    self._retire(worker)
                    pending.appendleft(key)
                    continue
                busy[worker.conn] = (worker, key, time.monotonic() + self.timeout + GRACE_S)
            if busy:
                self._collect(groups, busy, results, ABORT_POLL_S if abort is not None else None)
            if abort is not None and abort():  # a cancel: no waiting for the calls' timeouts
                for worker, _, _ in busy.values():
                    self._retire(worker)
                raise RolloutAborted()
        return [
            results[(g, None)] if groupwise else [results[(g, c)][0] for c in range(len(cs))]
            for g, (_, cs) in enumerate(groups)
        ]

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._all:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in self._all:
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=2)
            worker.conn.close()
        self._all, self._idle = [], []

    def __enter__(self) -> EvaluatorPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------- internals

    def _collect(self, groups, busy, results, poll: float | None = None) -> None:
        """Wait for the first answer or deadline (or ``poll`` seconds); settle what finished, kill
        what overran."""
        soonest = min(deadline for _, _, deadline in busy.values())
        timeout = max(0.0, soonest - time.monotonic())
        for conn in wait(list(busy), timeout=timeout if poll is None else min(timeout, poll)):
            worker, key, _ = busy.pop(conn)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                code = _exit_code(worker.process)
                results[key] = self._invalid(
                    groups, key, f"the evaluator's process exited (exit code {code})"
                )
                self._retire(worker)
                continue
            results[key] = payload
            self._idle.append(worker)
        now = time.monotonic()
        for conn in [c for c, (_, _, deadline) in busy.items() if deadline <= now]:
            worker, key, _ = busy.pop(conn)
            results[key] = self._invalid(groups, key, f"timeout after {self.timeout:g}s")
            self._retire(worker)

    def _worker_for_next_call(self) -> _Worker | None | object:
        """An idle worker, else a new one while there is room; ``WAIT`` while every worker is busy.
        ``None`` when no worker can take the call: the last start failed (the evaluator does not load
        in a worker), and no more are started in this batch, or each call would start an interpreter."""
        if self._idle:
            return self._idle.pop()
        if len(self._all) < self.size and not self._start_error:
            return self._start()
        return WAIT if self._all else None

    def _grow(self, count: int) -> None:
        """Start workers until ``count`` are alive, all at once (each loads the evaluator)."""
        started = [self._spawn() for _ in range(count - len(self._all))]
        for worker in started:
            if self._ready(worker):
                self._all.append(worker)
                self._idle.append(worker)

    def _start(self) -> _Worker | None:
        """One more worker (after one was retired); None when the evaluator cannot be loaded."""
        worker = self._spawn()
        if not self._ready(worker):
            return None
        self._all.append(worker)
        return worker

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        ev = self.evaluator
        args = json.dumps([theirs.fileno(), ev.spec, ev.spec_dataset, self.timeout, os.getpid()])
        # A session of its own: Ctrl-C in the terminal reaches the job, which stops at a step boundary,
        # not the workers (they would die mid-round). A worker exits when the job's end of the socket closes.
        process = subprocess.Popen(
            [sys.executable, "-m", "openrft.evaluators.isolation", args], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, env={**os.environ, **ev.env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )  # fmt: skip
        theirs.close()
        return _Worker(process, Connection(ours.detach()))

    def _ready(self, worker: _Worker) -> bool:
        """Wait for a new worker's first word: ready, or why the evaluator cannot be loaded."""
        if not worker.conn.poll(START_TIMEOUT_S):
            kind, payload = (
                "error",
                f"the evaluator's worker process did not start within {START_TIMEOUT_S:g}s",
            )
        else:
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                kind, payload = (
                    "error",
                    f"the evaluator's worker exited (exit code {_exit_code(worker.process)})",
                )
        if kind != "ready":
            self._start_error = payload
            self._kill(worker)
        return kind == "ready"

    def _retire(self, worker: _Worker) -> None:
        self._kill(worker)
        self._all.remove(worker)
        self.replaced += 1

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(timeout=5)
        worker.conn.close()

    def _invalid(self, groups, key, reason: str) -> list[Score]:
        count = len(groups[key[0]][1]) if key[1] is None else 1
        return [Score(0.0, is_valid=False, reason=reason)] * count


def score_contained(
    evaluator: Evaluator, groups: Sequence[Group], *, max_concurrency: int | None, timeout: float
) -> list[list[Score]]:
    """One batch of scores with the same containment as a job: a user's evaluator in worker processes,
    a built-in in this process (for ``openrft evaluate`` and other one-off scoring)."""
    from openrft.evaluators.runner import DEFAULT_CONCURRENCY, score_groups

    if evaluator.run_inline or not evaluator.spec:
        return score_groups(evaluator, groups, max_concurrency=max_concurrency, timeout=timeout)
    workers = max_concurrency or evaluator.max_concurrent_evaluations or DEFAULT_CONCURRENCY
    calls = len(groups) if evaluator.mode == "groupwise" else sum(len(cs) for _, cs in groups)
    with EvaluatorPool(evaluator, workers=min(workers, max(1, calls)), timeout=timeout) as pool:
        return pool.score_groups(groups)


def _exit_code(process: subprocess.Popen) -> int | None:
    try:
        return process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


__all__ = ["EvaluatorPool", "GRACE_S", "score_contained"]


def _exit_with_parent(parent: int) -> None:
    """End this worker once the job that started it is gone, even killed (its call may never return, and
    nobody would read its answer): a daemon thread watches the parent's pid."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="openrft-parent-watch").start()


PARENT_POLL_S = 1.0

if (
    __name__ == "__main__"
):  # a worker: python -m openrft.evaluators.isolation '[fd, spec, dataset, timeout, parent]'
    fd, spec, dataset, timeout, parent = json.loads(sys.argv[1])
    _exit_with_parent(parent)
    _worker_main(Connection(fd), spec, dataset, timeout)
