"""The server's queue keeps --max-running-jobs while a finished job's worker is still exiting."""

from __future__ import annotations

import subprocess
import sys

from openrft.config import JobConfig
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.server import queue as queue_module
from openrft.server.queue import JobQueue


def test_a_worker_still_exiting_holds_its_slot(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    workers: list[subprocess.Popen] = []

    def spawn(store: JobStore, record) -> int:  # a worker that ends its job, then takes a while to exit
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        workers.append(proc)
        store.set_process(record.id, proc.pid)
        return proc.pid

    monkeypatch.setattr(queue_module, "spawn_worker", spawn)
    for job_id in ("first", "second"):
        store.create(job_id, JobConfig())
    jobs = JobQueue(store, max_running=1)
    try:
        assert jobs.tick() == ["first"]
        store.transition("first", JobState.VALIDATING)
        store.transition("first", JobState.RUNNING)
        assert jobs.tick() == []
        store.transition("first", JobState.COMPLETED)  # recorded before its process has exited
        assert jobs.tick() == []  # the old worker still holds the model's memory
        workers[0].communicate(b"", timeout=30)
        assert jobs.tick() == ["second"]
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
