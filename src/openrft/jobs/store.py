"""The local job store: SQLite records under ``$OPENRFT_HOME/jobs.db`` and a folder per job.

::

    $OPENRFT_HOME/
      jobs.db                 one row per job (state, config, pid, progress) + every state change
      jobs/<id>/              the job's artefacts (see openrft.train.job), job.log when detached,
                              secrets.json (mode 0600) when the job has a W&B API key

Several ``openrft`` processes may use the store at once (a detached job writing its
progress while ``openrft rftj list`` reads): the database runs in WAL mode, every
operation opens its own short transaction, and writes take the lock up front
(``BEGIN IMMEDIATE``) so that read-modify-write steps are atomic.

A job that is PENDING, VALIDATING or RUNNING records the pid (and start time) of
the process working on it. Whenever the store is read, such a job whose process
is gone is marked FAILED with "process exited unexpectedly".
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.config import flatten
from openrft.errors import JobError
from openrft.jobs.outcome import read_outcome
from openrft.jobs.processes import process_alive, process_start_time
from openrft.jobs.states import DIED_MESSAGE, SERVER_DIED_MESSAGE, SERVER_FILE, JobState, can_transition
from openrft.jobs.store_errors import store_error
from openrft.models import warm_start_values
from openrft.paths import folder_in_use, openrft_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    job_dir TEXT NOT NULL,
    config_json TEXT NOT NULL,     -- the resolved configuration (secrets masked)
    given_json TEXT NOT NULL,      -- the values the user set (to rebuild the config on resume)
    base_model TEXT,
    method TEXT,
    pid INTEGER,
    pid_started REAL,
    message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    detached INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    last_reward REAL,
    output_dir TEXT
);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_id, seq);
"""
SECRETS_FILE = "secrets.json"
CANCEL_DIED_MESSAGE = (
    "cancelled: its process exited before it stopped at a step boundary (resume --force continues from "
    "the last checkpoint)"
)
LOG_FILE = "job.log"


@dataclass(frozen=True)
class Transition:
    state: JobState
    at: float
    message: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job as the store knows it."""

    id: str
    state: JobState
    created_at: float
    updated_at: float
    job_dir: Path
    config: dict[str, Any]  # nested by group, secrets masked
    given: dict[str, Any]  # flat {field_name: value} the user set
    base_model: str | None = None
    method: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    message: str | None = None
    cancel_requested: bool = False
    resume: bool = False
    detached: bool = False
    steps: int = 0
    last_reward: float | None = None
    output_dir: Path | None = None
    transitions: tuple[Transition, ...] = field(default=())

    @property
    def shown_state(self) -> str:
        """The state as ``list`` and ``get`` show it: CANCELLING while a cancel request is pending."""
        return "CANCELLING" if self.cancel_requested and self.state.is_active else str(self.state)

    @property
    def log_path(self) -> Path:
        return self.job_dir / LOG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.job_dir / "metrics.jsonl"

    @property
    def rollouts_path(self) -> Path:
        return self.job_dir / "rollouts.jsonl"

    def flat_config(self) -> dict[str, Any]:
        """``{field_name: value}`` over all groups."""
        return flatten(self.config)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": str(self.state),
            "shown_state": self.shown_state,
            "message": self.message,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "job_dir": str(self.job_dir),
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "log": str(self.log_path) if self.log_path.is_file() else None,
            "base_model": self.base_model,
            "method": self.method,
            "pid": self.pid,
            "detached": self.detached,
            "cancel_requested": self.cancel_requested,
            "steps": self.steps,
            "last_reward": self.last_reward,
            "config": self.config,
            "transitions": [
                {"state": str(t.state), "at": t.at, "message": t.message} for t in self.transitions
            ],
        }


# ----------------------------------------------------------------------------- config values


def missing_job_hint() -> str:
    """Where to look for a job this machine's store does not hold."""
    server = os.environ.get("OPENRFT_SERVER")
    if server:  # the commands that reach a server are told so; the others read this machine's store
        return (f"this command reads this machine's jobs; OPENRFT_SERVER={server} is used only by rftj "
                "create, list, get, cancel, resume and delete (this machine's jobs: OPENRFT_SERVER= openrft rftj list)")  # fmt: skip
    return "see the jobs with: openrft rftj list"


def config_values(cfg) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """``(resolved, given, secrets)`` of a JobConfig: what the store keeps of it.

    ``resolved`` is the nested config with secrets masked; ``given`` the flat values
    the user set explicitly (rebuilding from these re-applies the same defaults and
    cross-field rules); ``secrets`` the values that must not be stored in the database.
    """
    resolved = cfg.to_dict()
    resolved["training"].update(warm_start_values(cfg.training.warm_start_from))  # what it trains
    revealed = cfg.to_dict(reveal_secrets=True)
    given: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for group, values in revealed.items():
        for name in getattr(cfg, group).model_fields_set:
            if name == "wandb_api_key":
                if values[name] is not None:
                    secrets[name] = values[name]
                continue
            given[name] = values[name]
    return resolved, given, secrets


# ----------------------------------------------------------------------------- the store


class JobStore:
    """Job records in SQLite plus a folder per job (``root`` defaults to ``$OPENRFT_HOME``)."""

    def __init__(self, root: Path | None = None, *, timeout: float = 30.0, rebuilding: bool = False):
        if root is None:
            root = openrft_home()
        self.root = Path(root)
        self.db_path = self.root / "jobs.db"
        self.jobs_dir = self.root / "jobs"
        self.timeout = timeout
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(
                f"OPENRFT_HOME {self.root} cannot be used: {exc.strerror or exc}",
                hint="set OPENRFT_HOME to a writable folder (default ~/.openrft)",
            ) from None
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise JobError(
                f"OPENRFT_HOME {self.root} is not a writable folder",
                hint="set OPENRFT_HOME to a writable folder (default ~/.openrft)",
            )
        lost = not self.db_path.exists() or (self.db_path.is_file() and self.db_path.stat().st_size == 0)
        if lost and not rebuilding and self.jobs_dir.is_dir() and any(self.jobs_dir.glob("*/job.json")):
            raise JobError(  # opening it would show no jobs at all
                f"the job store {self.db_path} is missing or empty, but job folders exist in {self.jobs_dir}",
                hint="`openrft rftj repair` rebuilds it from the job folders and keeps the empty file as a backup",
            )
        with self._connect() as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    # ---- connections

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This process's connection (kept open: closing the last one checkpoints the WAL, slowly).

        A damaged, unreadable or read-only database raises one :class:`JobError` saying what to do.
        """
        with self._lock:
            try:
                if self._db is None or self._db_pid != os.getpid():
                    self._db = sqlite3.connect(
                        self.db_path, timeout=self.timeout, isolation_level=None, check_same_thread=False
                    )
                    self._db.row_factory = sqlite3.Row
                    self._db.execute("PRAGMA synchronous=NORMAL")
                    self._db_pid = os.getpid()
                yield self._db
            except sqlite3.Error as exc:
                self._db = None
                raise store_error(self.db_path, exc) from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._db_pid == os.getpid():
                self._db.close()
            self._db = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction that holds the write lock from its first statement."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- creating

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def create(
        self,
        job_id: str,
        cfg,
        *,
        job_dir: Path | None = None,
        pid: int | None = None,
        detached: bool = False,
        resume: bool = False,
        created_at: float | None = None,
    ) -> JobRecord:
        """Record a new PENDING job (``JobError`` if the id is taken); ``created_at`` for a job
        recorded again (repair), else now."""
        resolved, given, secrets = config_values(cfg)
        job_dir = Path(job_dir) if job_dir else self.job_dir(job_id)
        now = time.time()
        pid = os.getpid() if pid is None else pid
        with self._write() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                raise JobError(
                    f"job {job_id} already exists",
                    hint="choose another --job-id, resume it (openrft rftj resume ID) or delete it",
                )
            db.execute(
                "INSERT INTO jobs (id, state, created_at, updated_at, job_dir, config_json, given_json,"
                " base_model, method, pid, pid_started, detached, resume) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    JobState.PENDING.value,
                    now if created_at is None else created_at,
                    now,
                    str(job_dir),
                    json.dumps(resolved),
                    json.dumps(given),
                    _base_model(resolved),
                    resolved["loss"]["rl_loss_method"],
                    pid,
                    process_start_time(pid),
                    int(detached),
                    int(resume),
                ),
            )
            db.execute(
                "INSERT INTO transitions (job_id, state, at) VALUES (?,?,?)",
                (job_id, JobState.PENDING.value, now),
            )
        job_dir.mkdir(parents=True, exist_ok=True)
        self._write_secrets(job_dir, secrets)
        return self.get(job_id)

    def update_config(self, job_id: str, cfg) -> JobRecord:
        """Replace a job's stored configuration (``create --resume-from`` with changed flags)."""
        resolved, given, secrets = config_values(cfg)
        with self._write() as db:
            self._row(db, job_id)
            db.execute(
                "UPDATE jobs SET config_json = ?, given_json = ?, base_model = ?, method = ?, updated_at = ?"
                " WHERE id = ?",
                (
                    json.dumps(resolved),
                    json.dumps(given),
                    _base_model(resolved),
                    resolved["loss"]["rl_loss_method"],
                    time.time(),
                    job_id,
                ),
            )
        record = self.get(job_id)
        self._write_secrets(record.job_dir, secrets)
        return record

    # ---- reading

    def get(self, job_id: str, *, check_process: bool = True) -> JobRecord:
        """The job's record (``JobError`` if unknown); a job whose process died is marked FAILED first."""
        with self._connect() as db:
            row = self._row(db, job_id)
            record = self._record(db, row)
        if check_process and self._reconcile(record):
            return self.get(job_id, check_process=False)
        return record

    def list(self) -> list[JobRecord]:
        """Every job, newest first (dead processes reconciled)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC, id").fetchall()
            records = [self._record(db, row, with_transitions=False) for row in rows]
        if any([self._reconcile(r) for r in records]):
            return self.list()
        return records

    def exists(self, job_id: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def secrets(self, job_id: str) -> dict[str, str]:
        path = self.get(job_id, check_process=False).job_dir / SECRETS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    # ---- changing state

    def transition(
        self,
        job_id: str,
        state: JobState,
        message: str | None = None,
        *,
        expect_pid: int | None = None,
    ) -> JobRecord:
        """Move the job to ``state`` (``JobError`` when the lifecycle does not allow it)."""
        state = JobState(state)
        now = time.time()
        with self._write() as db:
            row = self._row(db, job_id)
            current = JobState(row["state"])
            if expect_pid is not None and row["pid"] != expect_pid:
                raise JobError(f"job {job_id} is now run by process {row['pid']}, not {expect_pid}")
            if not can_transition(current, state):
                raise JobError(f"job {job_id} is {current}; it cannot become {state}")
            _set_state(db, job_id, state, message, now)
        return self.get(job_id, check_process=False)

    def set_process(self, job_id: str, pid: int) -> None:
        """Record the process now working on the job."""
        with self._write() as db:
            self._row(db, job_id)
            db.execute(
                "UPDATE jobs SET pid = ?, pid_started = ?, updated_at = ? WHERE id = ?",
                (pid, process_start_time(pid), time.time(), job_id),
            )

    def request_cancel(self, job_id: str) -> JobRecord:
        """Ask the job to stop at its next step boundary (``JobError`` if it is not active)."""
        record = self.get(job_id)
        if not record.state.is_active:
            raise JobError(
                f"job {job_id} is {record.state}; only PENDING, VALIDATING or RUNNING jobs can be cancelled"
            )
        with self._write() as db:  # a job that ended since the check above keeps no stray request
            current = JobState(self._row(db, job_id)["state"])
            if not current.is_active:
                raise JobError(f"job {job_id} ended ({current}) before the cancel reached it")
            db.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (time.time(), job_id)
            )
        return self.get(job_id, check_process=False)

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def record_progress(self, job_id: str, step: int, reward: float | None) -> None:
        """Latest step and training reward (for ``rftj list``)."""
        with self._write() as db:
            if reward is None:
                db.execute(
                    "UPDATE jobs SET steps = ?, updated_at = ? WHERE id = ?", (step, time.time(), job_id)
                )
            else:
                db.execute(
                    "UPDATE jobs SET steps = ?, last_reward = ?, updated_at = ? WHERE id = ?",
                    (step, reward, time.time(), job_id),
                )

    def set_output(self, job_id: str, output_dir: Path) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET output_dir = ? WHERE id = ?", (str(output_dir), job_id))

    def prepare_resume(
        self, job_id: str, *, force: bool = False, pid: int | None = None, why: str = ""
    ) -> JobRecord:
        """Put a FAILED (or, with ``force``, CANCELLED) job back to PENDING, to continue from its checkpoint."""
        record = self.get(job_id)
        state = record.state
        if state.is_active:
            raise JobError(f"job {job_id} is {state} (process {record.pid}); it is still running")
        if state in (JobState.COMPLETED, JobState.EARLY_STOPPED):
            raise JobError(
                f"job {job_id} is {state}: there is nothing left to resume",
                hint="to train further, start a new job with --warm-start-from on its output adapter",
            )
        if state is JobState.CANCELLED and not force:
            raise JobError(
                f"job {job_id} was cancelled; cancelled jobs are not resumed",
                hint=f"pass --force to resume it anyway: openrft rftj resume {job_id} --force",
            )
        if folder_in_use(record.job_dir) is not None:  # the store says otherwise (rebuilt meanwhile)
            raise JobError(f"job {job_id} is recorded {state}, but a process is training in its folder now")
        pid = os.getpid() if pid is None else pid
        now, message = time.time(), why or f"resumed from {state}"
        with self._write() as db:  # checked and claimed in one transaction: two resumes never both win
            current = JobState(self._row(db, job_id)["state"])
            if current is not state:
                raise JobError(f"job {job_id} became {current} while being resumed; nothing was changed")
            db.execute(
                "UPDATE jobs SET cancel_requested = 0, resume = 1, pid = ?, pid_started = ? WHERE id = ?",
                (pid, process_start_time(pid), job_id),
            )
            _set_state(db, job_id, JobState.PENDING, message, now)
        return self.get(job_id, check_process=False)

    def delete(self, job_id: str) -> JobRecord:
        """Remove the job's record and its folder under the store (``JobError`` while it is running)."""
        record = self.get(job_id)  # (a job whose process died is FAILED from here on)
        with self._write() as db:  # checked and deleted at once: a job resumed meanwhile is not deleted
            current = JobState(self._row(db, job_id)["state"])
            if current.is_active:
                raise JobError(
                    f"job {job_id} is {current}; cancel it first", hint=f"openrft rftj cancel {job_id}"
                )
            db.execute("DELETE FROM transitions WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        if record.job_dir.is_dir() and self.owns_folder(record):
            shutil.rmtree(record.job_dir, ignore_errors=True)
        return record

    def owns_folder(self, record: JobRecord) -> bool:
        """Whether the job's folder is the store's own (a folder elsewhere is never deleted)."""
        return record.job_dir.resolve().parent == self.jobs_dir.resolve()

    # ---- internals

    def _row(self, db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job with id {job_id!r}", hint=missing_job_hint())
        return row

    def _record(
        self, db: sqlite3.Connection, row: sqlite3.Row, *, with_transitions: bool = True
    ) -> JobRecord:
        transitions: tuple[Transition, ...] = ()
        if with_transitions:
            rows = db.execute(
                "SELECT state, at, message FROM transitions WHERE job_id = ? ORDER BY seq", (row["id"],)
            ).fetchall()
            transitions = tuple(Transition(JobState(r["state"]), r["at"], r["message"]) for r in rows)
        return JobRecord(
            id=row["id"],
            state=JobState(row["state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            job_dir=Path(row["job_dir"]),
            config=json.loads(row["config_json"]),
            given=json.loads(row["given_json"]),
            base_model=row["base_model"],
            method=row["method"],
            pid=row["pid"],
            pid_started=row["pid_started"],
            message=row["message"],
            cancel_requested=bool(row["cancel_requested"]),
            resume=bool(row["resume"]),
            detached=bool(row["detached"]),
            steps=row["steps"],
            last_reward=row["last_reward"],
            output_dir=Path(row["output_dir"]) if row["output_dir"] else None,
            transitions=transitions,
        )

    def _reconcile(self, record: JobRecord) -> bool:
        """Mark an active job whose process is gone as FAILED (CANCELLED when a cancel had been asked for
        and the process recorded no error); True if it changed."""
        if not record.state.is_active or process_alive(record.pid, record.pid_started):
            return False
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT state, pid FROM jobs WHERE id = ?", (record.id,)).fetchone()
            if row is None or row["state"] != record.state.value or row["pid"] != record.pid:
                return True  # someone else changed it meanwhile: re-read
            outcome = read_outcome(record.job_dir)  # what it could not record itself
            queued = record.state is JobState.PENDING and (record.job_dir / SERVER_FILE).is_file()
            state, message = JobState.FAILED, outcome or (SERVER_DIED_MESSAGE if queued else DIED_MESSAGE)
            if outcome is None and record.cancel_requested:  # stopped (killed) while it was cancelling
                state, message = JobState.CANCELLED, CANCEL_DIED_MESSAGE
            db.execute(
                "UPDATE jobs SET state = ?, message = ?, updated_at = ? WHERE id = ?",
                (state.value, message, now, record.id),
            )
            db.execute(
                "INSERT INTO transitions (job_id, state, at, message) VALUES (?,?,?,?)",
                (record.id, state.value, now, message),
            )
        return True

    @staticmethod
    def _write_secrets(job_dir: Path, secrets: dict[str, str]) -> None:
        path = job_dir / SECRETS_FILE
        if not secrets:
            return
        tmp = path.with_name(f".{SECRETS_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(secrets, handle)
        os.replace(tmp, path)


def _set_state(db: sqlite3.Connection, job_id: str, state: JobState, message: str | None, now: float) -> None:
    db.execute(
        "UPDATE jobs SET state = ?, message = ?, updated_at = ? WHERE id = ?",
        (state.value, message, now, job_id),
    )
    db.execute(
        "INSERT INTO transitions (job_id, state, at, message) VALUES (?,?,?,?)",
        (job_id, state.value, now, message),
    )


def _base_model(resolved: dict[str, Any]) -> str:
    training = resolved["training"]
    if training.get("warm_start_from"):
        return f"adapter:{training['warm_start_from']}"
    return training["base_model"]


__all__ = [
    "JobStore",
    "JobRecord",
    "Transition",
    "config_values",
    "process_alive",
    "process_start_time",
    "SECRETS_FILE",
    "LOG_FILE",
]
