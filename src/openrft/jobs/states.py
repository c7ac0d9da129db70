"""Job states, as the managed service shows them, and the transitions allowed between them.

::

    PENDING ──> VALIDATING ──> RUNNING ──> COMPLETED
       │            │             ├──────> EARLY_STOPPED   (no learning signal left)
       │            │             ├──────> CANCELLED       (stopped at a step boundary, checkpointed)
       └────────────┴─────────────┴──────> FAILED          (an error, or the process died)

A FAILED job may be resumed (back to PENDING); a CANCELLED one only when forced,
because the reference service does not resume cancelled jobs. COMPLETED and
EARLY_STOPPED jobs have nothing left to continue.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    PENDING = "PENDING"
    VALIDATING = "VALIDATING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EARLY_STOPPED = "EARLY_STOPPED"

    @property
    def is_active(self) -> bool:
        """A process is (or should be) working on the job."""
        return self in ACTIVE

    @property
    def is_terminal(self) -> bool:
        return not self.is_active


ACTIVE = frozenset({JobState.PENDING, JobState.VALIDATING, JobState.RUNNING})


def wall_time(record: Any) -> float:
    """Seconds a job (a :class:`~openrft.jobs.store.JobRecord`) spent VALIDATING or RUNNING, over every
    attempt; an active one's current attempt counts up to now."""
    total, since = 0.0, None
    for t in record.transitions:
        if since is not None:
            total += t.at - since
            since = None
        if t.state in ("VALIDATING", "RUNNING"):
            since = t.at
    if since is not None and record.state.is_active:
        total += time.time() - since
    return total


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.VALIDATING, JobState.FAILED, JobState.CANCELLED}),
    JobState.VALIDATING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EARLY_STOPPED}
    ),
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset({JobState.PENDING}),  # resume --force only
    JobState.COMPLETED: frozenset(),
    JobState.EARLY_STOPPED: frozenset(),
}

# Loop outcome status (openrft.train.loop.Outcome.status) -> final state.
OUTCOME_STATES = {
    "completed": JobState.COMPLETED,
    "cancelled": JobState.CANCELLED,
    "early_stopped": JobState.EARLY_STOPPED,
}

DIED_MESSAGE = "process exited unexpectedly"
# a job queued by `openrft server` (its folder holds SERVER_FILE) whose server died before a worker took it
SERVER_FILE = "server.json"
SERVER_DIED_MESSAGE = (
    "its server stopped while it waited in the queue; `openrft server` queues it again when it restarts"
)
# the same, as versions before 2026-12 worded it (a job resumed after it had run had not "not started")
SERVER_DIED_MESSAGES = (SERVER_DIED_MESSAGE, "its server stopped before it started; `openrft server` queues "
                        "it again when it restarts")  # fmt: skip


def can_transition(current: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[current]


def age(seconds: float) -> str:
    """A duration as the job lists show it: ``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


__all__ = ["JobState", "ACTIVE", "TRANSITIONS", "OUTCOME_STATES", "DIED_MESSAGE", "can_transition", "age"]
