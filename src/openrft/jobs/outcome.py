"""Why a job failed, kept in its folder when the job store cannot take it (a full disk): each run sets
aside a small blank file at its start, and a failure is written over its bytes, which needs no new
space; the store reads it once it sees the job's process gone."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path

OUTCOME_FILE = ".outcome"  # room a running job keeps for why it failed, should the store be unwritable
OUTCOME_ROOM = 4096


def reserve_outcome(job_dir: Path) -> None:
    """Set aside the room :func:`record_outcome` writes into (blank): on a disk that fills up later, the
    reason still fits, written over bytes the file already has."""
    with contextlib.suppress(OSError):
        (job_dir / OUTCOME_FILE).write_bytes(b" " * OUTCOME_ROOM)


def record_outcome(job_dir: Path, message: str) -> None:
    """Keep ``message`` (why the job failed) in the job folder when the store could not take it."""
    data = message.encode("utf-8", "replace")[: OUTCOME_ROOM - 1]
    with contextlib.suppress(OSError), open(job_dir / OUTCOME_FILE, "r+b") as f:
        f.write(data.ljust(OUTCOME_ROOM))


def read_outcome(job_dir: Path) -> str | None:
    try:
        text = (job_dir / OUTCOME_FILE).read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None


DISK_FULL = "no space left on the disk holding the job"


def failure_message(exc: BaseException) -> str:
    """What went wrong, in the user's terms where the cause is the disk (torch reports a full disk as
    an ``inline_container`` position mismatch)."""
    chain = [exc, exc.__cause__, exc.__context__]
    text = " ".join(str(e) for e in chain if e is not None)  # safetensors' Rust says "os error 28"
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain) or any(
        words in text for words in ("unexpected pos", "No space left on device", "os error 28")
    ):
        return f"{DISK_FULL} ({type(exc).__name__}: {exc}); free space and resume it"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["DISK_FULL", "failure_message", "read_outcome", "record_outcome", "reserve_outcome"]
