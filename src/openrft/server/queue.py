"""The server's job queue: PENDING jobs wait in the store and start as worker processes when a slot frees.

A job the server accepted is recorded PENDING with the server's own process as its owner (so the
store keeps it while the server lives) and a ``server.json`` in its folder. A background thread
looks at the store about once a second and:

- ends a queued job whose cancel was requested before it started (CANCELLED);
- starts the oldest queued jobs as ``python -m openrft.jobs.worker ID`` processes while fewer than
  ``max_running_jobs`` jobs are VALIDATING or RUNNING (jobs started by ``openrft rftj create`` on
  the same store count too: they use the same device), or have ended while their worker process has
  not exited yet (it still holds the model's memory);
- reaps the workers it started.

Workers run in their own sessions, so they outlive a server restart. On start, the queue takes back
what a previous server left: jobs it had queued show FAILED "its server stopped while it waited in the queue" in
the store (and those whose worker died "process exited unexpectedly"), and are put back to PENDING,
resuming from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from openrft.errors import JobError
from openrft.jobs.runner import spawn_worker
from openrft.jobs.states import DIED_MESSAGE, SERVER_DIED_MESSAGES, JobState
from openrft.jobs.store import JobRecord, JobStore
from openrft.server.wire import SERVER_FILE


class JobQueue:
    """Starts the store's queued jobs, ``max_running`` at a time, from a daemon thread."""

    def __init__(self, store: JobStore, *, max_running: int = 1, interval: float = 1.0):
        self.store, self.max_running, self.interval = store, max_running, interval
        self._children: dict[int, str] = {}  # worker pid -> its job's id
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="openrft-job-queue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Look at the store now rather than at the next tick (a job was queued or resumed)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a busy or broken store: say so and try again next tick
                print(f"openrft server: job queue: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self._wake.wait(self.interval)
            self._wake.clear()

    # ---- one pass

    def is_queued(self, record: JobRecord) -> bool:
        """PENDING and held by this server (not yet handed to a worker)."""
        return record.state is JobState.PENDING and record.pid == os.getpid()

    def tick(self) -> list[str]:
        """Cancel, then start what fits; returns the ids started."""
        self._reap()
        records = self.store.list()
        queued = sorted((r for r in records if self.is_queued(r)), key=lambda r: (r.updated_at, r.id))
        for record in [r for r in queued if r.cancel_requested]:
            with contextlib.suppress(JobError):
                again = record.resume or record.steps  # a resumed job: it had started once
                self.store.transition(
                    record.id,
                    JobState.CANCELLED,
                    "cancelled before it started again" if again else "cancelled before it started",
                )
        queued = [r for r in queued if not r.cancel_requested]
        busy = sum(1 for r in records if r.state.is_active and not self.is_queued(r))
        # a worker whose job has ended but whose process has not (it still holds its memory and device)
        ended = {r.id for r in records if not r.state.is_active}
        busy += sum(1 for job_id in self._children.values() if job_id in ended)
        started = []
        for record in queued[: max(0, self.max_running - busy)]:
            current = self.store.get(record.id)
            if not self.is_queued(current) or current.cancel_requested:
                continue
            self._children[spawn_worker(self.store, current)] = current.id
            started.append(record.id)
        return started

    def recover(self) -> list[str]:
        """Put back to PENDING the server's jobs whose process died (an earlier server, or its worker)."""
        resumed = []
        for record in sorted(self.store.list(), key=lambda r: (r.created_at, r.id)):  # the oldest first again
            if not (record.job_dir / SERVER_FILE).is_file():
                continue
            if record.state is JobState.FAILED and record.message in (DIED_MESSAGE, *SERVER_DIED_MESSAGES):
                with contextlib.suppress(JobError):
                    why = ("queued again as the server restarted" if record.message in SERVER_DIED_MESSAGES
                           else "queued again as the server restarted (its worker had stopped)")  # fmt: skip
                    self.store.prepare_resume(record.id, force=True, pid=os.getpid(), why=why)
                    resumed.append(record.id)
        return resumed

    def _reap(self) -> None:
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.pop(pid, None)


__all__ = ["JobQueue"]
