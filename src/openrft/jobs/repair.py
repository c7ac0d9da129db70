"""Rebuild the job store from the job folders: ``openrft rftj repair``.

Every job folder holds its resolved configuration (``job.json``), its metrics and, once it
ended well, its output; the SQLite store is an index over them. When ``jobs.db`` is damaged
(truncated, garbage, emptied: every store command then says so and points here), :func:`repair`
moves it aside as ``jobs.db.broken-<time>`` (with its ``-wal``/``-shm`` files) and records every
folder again: a folder whose last checkpoint says how the job ended (completed, stopped early, or
cancelled) and that holds its output adapter as such, any other as FAILED, so that ``openrft rftj
resume`` can continue it from its last checkpoint (a cancelled one with ``--force``, as before the
repair). It refuses to run while a job is training in its folder (that job keeps writing to the
store it opened). Nothing in the job folders is changed. A store that is not damaged
(SQLite's quick check passes) is left alone unless forced: a full disk, for one, is no damage.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.config import build_config, flatten
from openrft.errors import JobError, OpenRFTError
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.models import WARM_START_KEPT
from openrft.paths import folder_in_use, openrft_home, output_dir
from openrft.tracking.sinks import read_metrics

RESTORED = "restored by `openrft rftj repair` from its folder"


@dataclass
class RepairReport:
    backup: Path | None = None
    restored: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)


def repair(root: Path | None = None, *, force: bool = False) -> RepairReport:
    """Move the damaged store aside and rebuild it from the job folders under ``root``."""
    root = Path(root or openrft_home())
    db = root / "jobs.db"
    backup = None
    if db.exists() and not force and _healthy(db):
        raise JobError(
            f"the job store {db} is not damaged (SQLite's quick check passes); nothing was changed",
            hint="`openrft rftj repair --force` rebuilds it anyway (job history other than the folders is lost)",
        )
    jobs = root / "jobs"
    running = (
        [f.name for f in sorted(jobs.iterdir()) if f.is_dir() and folder_in_use(f, settle=0) is not None]
        if jobs.is_dir()
        else []
    )
    if running:  # they keep writing to the store they opened: the rebuilt one would lose their ends
        raise JobError(
            f"jobs are running in their folders ({', '.join(running)}); nothing was changed",
            hint="repair the store once they have ended (or stop them: their processes, or Ctrl-C)",
        )
    if db.exists():
        backup = db.with_name(f"jobs.db.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            part = db.with_name(db.name + suffix)
            if part.exists():
                os.replace(part, backup.with_name(backup.name + suffix))
    report = rebuild(JobStore(root, rebuilding=True))
    report.backup = backup
    return report


def _healthy(db: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            return (
                ok and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone() is not None
            )
    except sqlite3.Error:
        return False


def rebuild(store: JobStore) -> RepairReport:
    """Record every job folder that the (empty) ``store`` does not know yet."""
    report = RepairReport()
    folders = sorted(p.parent for p in store.jobs_dir.glob("*/job.json")) if store.jobs_dir.is_dir() else []
    for folder in folders:
        if store.exists(folder.name):
            continue
        try:
            _restore(store, folder)
            report.restored.append(folder.name)
        except (OpenRFTError, OSError, ValueError, KeyError, TypeError) as exc:
            report.skipped.append((folder.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return report


def saved_values(folder: Path) -> dict[str, Any]:
    """The values a job folder's ``job.json`` holds, flat and without the unset ones (and without the
    masked W&B key: the secret itself is in the folder's secrets.json)."""
    values = flatten(json.loads((folder / "job.json").read_text()))
    values.pop("wandb_api_key", None)
    if values.get("warm_start_from"):  # these are its adapter's (recorded for the reader), not flags
        for name in WARM_START_KEPT:
            values.pop(name, None)
    return {k: v for k, v in values.items() if v is not None}


def _restore(store: JobStore, folder: Path) -> None:
    cfg, _ = build_config({}, saved_values(folder))
    record = store.create(folder.name, cfg, job_dir=folder, created_at=_created_at(folder))
    out = output_dir(folder, cfg.training.output_model)
    metrics = read_metrics(folder / "metrics.jsonl")
    trained = [m for m in metrics if "loss/policy" in m]
    if trained:
        store.record_progress(record.id, int(trained[-1]["step"]), trained[-1].get("reward/mean"))
    pid = folder_in_use(folder)
    if pid is not None:  # its job is running: recorded so, and it carries on recording itself
        if pid:
            store.set_process(record.id, pid)
        for state in (JobState.VALIDATING, JobState.RUNNING):
            store.transition(record.id, state, RESTORED + " while its process runs")
    elif (out / "adapter_config.json").is_file() and (ended := _ending(folder)) is not None:
        store.set_output(record.id, out)
        for state in (JobState.VALIDATING, JobState.RUNNING, ended[0]):
            store.transition(record.id, state, RESTORED + ended[1])
    else:
        store.transition(
            record.id, JobState.FAILED, RESTORED + "; it had not finished (resume it to continue)"
        )


def _created_at(folder: Path) -> float | None:
    """When the job was created, as near as its folder tells: the oldest of the files a job writes
    once or first (each run rewrites ``job.json``, so a resumed job's is later), so that ``rftj list``
    keeps its jobs in the order they were made."""
    times = []
    for name in ("snapshot/manifest.json", "job.json", "metrics.jsonl", "rollouts.jsonl"):
        with contextlib.suppress(OSError):
            times.append((folder / name).stat().st_mtime)
    return min(times, default=None)


def _ending(folder: Path) -> tuple[JobState, str] | None:
    """How the job ended, as its last checkpoint says (written as it completed, stopped early, or
    stopped for a cancel), with what to add to the restored message; None when it says none of these
    (the job had not finished: FAILED)."""
    from openrft.train.checkpoint import LoopState, latest_checkpoint
    from openrft.train.loop import early_stop_message

    checkpoint = latest_checkpoint(folder / "checkpoints", tidy=False)
    if checkpoint is None:
        return None
    saved = json.loads((checkpoint / "state.json").read_text())
    if saved.get("cancelled"):
        return JobState.CANCELLED, f"; cancelled at step {saved.get('step', 0)}"
    if saved.get("outcome") == "early_stopped":
        return JobState.EARLY_STOPPED, f"; {early_stop_message(LoopState.from_json(saved))}"
    return (JobState.COMPLETED, "") if saved.get("outcome") == "completed" else None


__all__ = ["RepairReport", "rebuild", "repair"]
