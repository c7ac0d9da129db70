"""One line for each way the job store's database can fail: read-only, busy, a full disk, unopenable,
damaged; each with what to do about it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from openrft.errors import DiskFullError, JobError


def _nearly_full(db_path: Path) -> bool:
    """Whether the disk holding the store has almost no room left (SQLite then reports some writes as a
    'disk I/O error', which is no damage)."""
    try:
        return shutil.disk_usage(db_path.parent).free < 1 << 20
    except OSError:
        return False


def _sound(db_path: Path) -> bool:
    """Whether SQLite's own check, on a read-only connection, finds the database file intact."""
    try:
        # immutable: no lock and no -shm file written, which the same limit would refuse
        with sqlite3.connect(f"file:{db_path}?mode=ro&immutable=1", uri=True, timeout=2) as db:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.Error:
        return False


def store_error(db_path: Path, exc: sqlite3.Error) -> JobError:
    """One line for a database problem: what is wrong with which file, and what to do."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "readonly" in text or "read-only" in text:
        return JobError(
            f"the job store {db_path} is read-only ({text})", hint="make it writable, or set OPENRFT_HOME"
        )
    if "locked" in text or "busy" in text:
        return JobError(
            f"the job store {db_path} is busy ({text})", hint="another openrft command holds it; retry"
        )
    if (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "disk is full" in text
        or _nearly_full(db_path)
    ):
        return DiskFullError(
            f"the disk holding the job store {db_path} is full ({text})",
            hint="free space there; the store itself is not damaged",
        )
    if "disk I/O error" in text and _sound(db_path):  # a write refused (a file-size limit), no damage
        return JobError(
            f"the job store {db_path} could not be written ({text}), though the file itself is sound",
            hint="check the disk: free space, a file-size limit (ulimit -f), its errors in dmesg; nothing "
            "needs repairing",
        )
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in text:
        return JobError(
            f"the job store {db_path} cannot be opened ({text})", hint="check that it is a file you can write"
        )
    return JobError(
        f"the job store {db_path} is damaged ({text})",
        hint="`openrft rftj repair` rebuilds it from the job folders and keeps the damaged file as a backup",
    )


__all__ = ["store_error"]
