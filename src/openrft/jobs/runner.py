"""Run jobs through the store: PENDING -> VALIDATING -> RUNNING -> a final state, every step recorded.

``openrft rftj create`` records a PENDING job and then either runs it in this
process (with the progress bar) or, with ``--detach``, starts
``python -m openrft.jobs.worker ID`` in its own session with its output in the
job folder's ``job.log`` and prints the id at once. ``openrft rftj resume ID``
puts a FAILED (or, forced, CANCELLED) job back to PENDING and runs it the same way,
continuing from its last checkpoint.

Stopping: ``openrft rftj cancel ID`` sets a flag in the store; the training loop
polls it at step boundaries, writes a checkpoint and ends CANCELLED. SIGTERM to a
worker and a first Ctrl-C in the foreground do the same; a second Ctrl-C aborts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openrft.config import JobConfig, build_config
from openrft.errors import ConfigError, DiskFullError, JobError, OpenRFTError
from openrft.jobs.outcome import DISK_FULL, failure_message, record_outcome, reserve_outcome
from openrft.jobs.resume_from import (
    changed_names,
    find_job,
    folder_resume_config,
    no_resume_target,
    stored_resume_config,
)
from openrft.jobs.snapshot import absolute_paths, resumed_values, write_snapshot
from openrft.jobs.states import OUTCOME_STATES, JobState
from openrft.jobs.store import JobRecord, JobStore, config_values
from openrft.paths import folder_in_use, folder_lock, output_dir, remove_stale_temporaries

ERROR_LOG = "error.log"


def new_job_id() -> str:
    return time.strftime("rftj-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


# ----------------------------------------------------------------------------- entry points


def create_and_run(
    cfg: JobConfig,
    *,
    detach: bool = False,
    quiet: bool = False,
    resume_from: str | None = None,
    config_file: str | None = None,
    flag_values: dict[str, Any] | None = None,
) -> int:
    """``openrft rftj create``: check the job, record it, then run it here or in a detached worker.

    A new job is validated before anything is recorded or detached: a refused job leaves no
    record and no folder, and ``--detach`` never reports success for a job that cannot start.
    ``resume_from`` (a job id or folder) continues an earlier job with ``config_file`` and
    ``flag_values`` (the values set on this command line) applied to its configuration.
    """
    store = JobStore()
    prepared = None
    if resume_from:
        record = _resume_from(store, cfg, resume_from, config_file, flag_values or {}, detach)
    else:
        job_id = cfg.training.job_id or new_job_id()
        while not cfg.training.job_id and (store.exists(job_id) or store.job_dir(job_id).exists()):
            job_id = new_job_id()  # a generated id is never one already taken
        job_dir = store.job_dir(job_id)
        if not store.exists(job_id) and (job_dir / "job.json").exists():
            raise ConfigError(
                f"--job-id {job_id}: the job folder {job_dir} already exists but is not in the job store",
                field="job_id", hint="choose another --job-id, or continue it with --resume-from " + str(job_dir),
            )  # fmt: skip
        if store.exists(job_id):
            raise ConfigError(
                f"--job-id {job_id}: job {job_id} already exists", field="job_id",
                hint="choose another --job-id, resume it (openrft rftj resume ID) or delete it",
            )  # fmt: skip
        cfg = with_absolute_paths(cfg)
        prepared = validate(cfg)
        record = store.create(job_id, cfg, detached=detach)
        _snapshot_or_undo(store, record, cfg)
        if cfg.training.output_model:  # claimed now: a second job naming it is refused from here on
            _claim_output(Path(cfg.training.output_model), record.job_dir)
    return start(store, record, detach=detach, quiet=quiet, prepared=prepared)


def _claim_output(folder: Path, job_dir: Path) -> None:
    """Mark ``folder`` (a new job's ``--output-model``) as the job's from its creation on: another job
    naming it is refused while this one exists, before either has written an adapter."""
    from openrft.paths import OWNER_FILE, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / OWNER_FILE, f"{job_dir.resolve()}\n")


def _snapshot_or_undo(store: JobStore, record: JobRecord, cfg: JobConfig) -> None:
    """Write the new job's snapshot; if that fails (a full disk), the job is not created at all: no
    record, no folder, and one line saying why."""
    try:
        write_snapshot(record.job_dir, config_values(cfg)[1])
    except OSError as exc:
        with contextlib.suppress(Exception):
            store.transition(record.id, JobState.FAILED, "its snapshot could not be written")
            store.delete(record.id)
        full = exc.errno == errno.ENOSPC
        disk = "no space left on the disk holding the job store" if full else str(exc)
        raise (DiskFullError if full else JobError)(f"job {record.id} was not created: its snapshot could not be written ({disk})",
                       hint="free space (or set OPENRFT_HOME elsewhere) and create it again") from None  # fmt: skip


def resume_job(job_id: str, *, force: bool = False, detach: bool = False, quiet: bool = False) -> int:
    """``openrft rftj resume ID``: continue a FAILED (or, forced, CANCELLED) job from its checkpoint."""
    store = JobStore()
    record = store.prepare_resume(job_id, force=force)
    if detach:  # inputs checked here, where the user sees the answer, not in a background worker's log
        try:
            validate(rebuild_config(store, record), record.job_dir)
        except OpenRFTError as exc:
            _finish(store, job_id, JobState.FAILED, exc.message)
            raise
        except Exception as exc:  # a damaged file in the job folder: one line, the job left resumable
            message = failure_message(exc)
            _finish(store, job_id, JobState.FAILED, message)
            raise JobError(f"job {job_id} cannot resume: {message}") from None
    return start(store, record, detach=detach, quiet=quiet)


EXIT_CANCELLED = 9  # a foreground job cancelled from elsewhere (`rftj cancel`, the server, the dashboard)
EXIT_INTERRUPTED = 130  # ... or by Ctrl-C here (the shell's code for SIGINT)


def start(store: JobStore, record: JobRecord, *, detach: bool, quiet: bool, prepared: Any = None) -> int:
    if record.resume and not _has_checkpoint(record.job_dir):
        print(f"job {record.id}: no checkpoint yet, so it starts from the beginning", file=sys.stderr)
    if detach:
        pid = spawn_worker(store, record)
        print(record.id)
        print(
            f"job {record.id} running in the background (pid {pid})\n"
            f"  log:    {record.log_path}\n"
            f"  status: openrft rftj get {record.id}\n"
            f"  stop:   openrft rftj cancel {record.id}",
            file=sys.stderr,
        )
        return 0
    # stdout holds the id alone, as with --detach: `JOB=$(openrft rftj create ...)`
    print(record.id, flush=True)
    print(f"job {record.id}: {record.job_dir}", file=sys.stderr)
    with graceful_interrupt(on_stop=lambda: store.request_cancel(record.id)) as interrupted:
        final = run_job(store, record.id, quiet=quiet, local_stop=interrupted, prepared=prepared)
    print(f"job {final.id} {final.state} after {final.steps} steps", file=sys.stderr)
    if final.message:
        print(final.message, file=sys.stderr)
    if final.output_dir:
        print(f"outputs: {final.output_dir}", file=sys.stderr)
    if final.state is JobState.CANCELLED:  # not finished: `create ... && export` must not go on
        return EXIT_INTERRUPTED if any(interrupted) else EXIT_CANCELLED
    return 0


def _resume_from(
    store: JobStore,
    cfg: JobConfig,
    target: str,
    config_file: str | None,
    flag_values: dict[str, Any],
    detach: bool,
) -> JobRecord:
    """``create --resume-from ID_OR_DIR``: the earlier job continues, with any flags given now applied."""
    record = find_job(store, target)
    if record is None:
        job_dir = Path(target).expanduser()
        if not (job_dir / "checkpoints").is_dir():
            raise no_resume_target(target)
        if folder_in_use(job_dir) is not None:
            raise JobError(f"--resume-from {target}: a process is training in that folder now",
                           hint="wait for it to end, or stop it first")  # fmt: skip
        job_id = cfg.training.job_id or job_dir.name
        cfg = with_absolute_paths(folder_resume_config(job_dir, config_file, flag_values) or cfg)
        return store.create(job_id, cfg, job_dir=job_dir.resolve(), resume=True, detached=detach)
    merged = stored_resume_config(store, record, config_file, flag_values)
    changed = changed_names(record.flat_config(), config_values(merged)[0])
    resumed = store.prepare_resume(record.id, force=True)  # refused (and nothing changed) if it cannot
    if changed:
        store.update_config(record.id, merged)
        print(f"job {record.id}: continuing with changed {', '.join(changed)}", file=sys.stderr)
        resumed = store.get(record.id)
    return resumed


# ----------------------------------------------------------------------------- running


class StopFlag:
    """``should_stop`` for the loop: a cancel request in the store, or a local signal."""

    def __init__(self, store: JobStore, job_id: str, local: list[bool] | None = None):
        self.store, self.job_id, self.local = store, job_id, local if local is not None else [False]

    def __call__(self) -> bool:
        return self.local[0] or self.store.cancel_requested(self.job_id)


def run_job(store: JobStore, job_id: str, **options: Any) -> JobRecord:
    """Validate (unless ``prepared`` already is) and train job ``job_id`` here; return its final record.

    Errors are recorded as FAILED and re-raised (anything that is not an
    :class:`OpenRFTError` as a :class:`JobError`, its traceback kept in the job
    folder's ``error.log``). The job folder is locked while it runs: a second process never trains it.
    """
    record = store.get(job_id, check_process=False)
    record.job_dir.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(record.job_dir):
            # a killed run's half-written files
            for folder in (record.job_dir, record.job_dir / "checkpoints"):
                remove_stale_temporaries(folder)
            return _run_locked(store, record, **options)
    except BlockingIOError:
        raise JobError(
            f"job {job_id}: another process is training in its folder {record.job_dir}",
            hint="wait for it to end, or stop it (openrft rftj cancel); two writers would mix their checkpoints",
        ) from None


def _run_locked(
    store: JobStore,
    record: JobRecord,
    *,
    quiet: bool = False,
    log_steps: bool = False,
    local_stop: list[bool] | None = None,
    prepared: Any = None,
) -> JobRecord:
    job_id = record.id
    reserve_outcome(record.job_dir)
    log_steps = log_steps or (not quiet and not _is_terminal(sys.stderr))  # plain lines where no bar shows
    if record.pid != os.getpid():
        store.set_process(job_id, os.getpid())
    stop = StopFlag(store, job_id, local_stop)
    sinks: list[Any] = []
    ended = JobState.FAILED  # unless the job reaches an outcome

    def say(text: str) -> None:
        if log_steps:
            print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True)

    try:
        store.transition(job_id, JobState.VALIDATING)
        say("VALIDATING: evaluator, datasets, base model")
        cfg = prepared.cfg if prepared is not None else rebuild_config(store, record)
        if prepared is None and not stop():
            prepared = validate(cfg, record.job_dir)
        if prepared is None or stop():
            return store.transition(job_id, JobState.CANCELLED, "cancelled before training started")
        store.transition(job_id, JobState.RUNNING)
        say(
            "RUNNING: loading the model, then training"
            + (" from the last checkpoint" if record.resume else "")
        )
        sinks = make_sinks(store, record, cfg, log_steps=log_steps, resolved=resolved_values(prepared))
        from openrft.train.job import run_training

        outcome = run_training(
            prepared, record.job_dir, resume=record.resume, quiet=quiet or log_steps, lines=log_steps,
            should_stop=stop, extra_sinks=sinks,
        )  # fmt: skip
        store.record_progress(job_id, outcome.state.step, None)
        store.set_output(job_id, output_dir(record.job_dir, cfg.training.output_model))
        message = outcome.message or None
        if OUTCOME_STATES[outcome.status] is not JobState.CANCELLED and stop():  # asked during the last step
            message = "; ".join(filter(None, [message, "a cancel came after the last step had begun: the job "
                                              "finished and its outputs are complete"]))  # fmt: skip
        final = store.transition(job_id, OUTCOME_STATES[outcome.status], message)
        ended = final.state
        return final
    except OpenRFTError as exc:
        _finish(store, job_id, JobState.FAILED, exc.message, record.job_dir)
        raise
    except KeyboardInterrupt:
        ended = JobState.CANCELLED
        _finish(store, job_id, JobState.CANCELLED, "interrupted")
        raise
    except Exception as exc:
        log = record.job_dir / ERROR_LOG
        message = failure_message(exc)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            hint = f"the traceback is in {log}"
        except OSError:  # a full disk or a vanished folder: the job's state still gets recorded
            hint = "the traceback could not be written to the job folder"
        _finish(store, job_id, JobState.FAILED, message, record.job_dir)
        kind = DiskFullError if message.startswith(DISK_FULL) else JobError
        raise kind(f"job {job_id} failed: {message}", hint=hint) from None
    finally:
        for sink in sinks:  # a W&B run ends as the job did
            getattr(sink, "job_ended", lambda _: None)(str(ended))
            sink.close()


def _finish(store: JobStore, job_id: str, state: JobState, message: str, job_dir: Path | None = None) -> None:
    """Record a final state unless the job already has one (e.g. a cancel reached it first). When the
    store cannot take it (a full disk), the reason is kept in ``job_dir``'s reserved room, where the
    store finds it once it sees the process gone (not "exited unexpectedly", which a server would
    queue again)."""
    try:
        if store.get(job_id, check_process=False).state.is_active:
            store.transition(job_id, state, message)
    except JobError:
        if job_dir is not None and state is JobState.FAILED:
            record_outcome(job_dir, message)


def rebuild_config(store: JobStore, record: JobRecord) -> JobConfig:
    """The job's config from the values its user set (and its stored secrets); code files changed or
    removed since the job was created are replaced by the job's snapshot of them."""
    given = resumed_values(
        record.job_dir, record.given, lambda text: print(f"warning: {text}", file=sys.stderr)
    )
    cfg, _ = build_config({}, {**given, **store.secrets(record.id)})
    swapped = {name.replace("_", "-") for name in given if given[name] != record.given.get(name)}
    changed = [
        name for name in changed_names(record.flat_config(), config_values(cfg)[0]) if name not in swapped
    ]
    if changed:  # (a snapshot copy in place of a changed file was announced above, not a new resolution)
        print(
            f"warning: this openrft version resolves {', '.join(changed)} differently from when job "
            f"{record.id} was created",
            file=sys.stderr,
        )
    return cfg


def with_absolute_paths(cfg: JobConfig) -> JobConfig:
    """``cfg`` with every relative path to an existing file or folder made absolute (see
    :mod:`openrft.jobs.snapshot`): the stored job then resolves the same files from any directory."""
    _, given, secrets = config_values(cfg)
    absolute = absolute_paths(given, Path.cwd())
    if absolute == given:
        return cfg
    return build_config({}, {**absolute, **secrets})[0]


def validate(cfg: JobConfig, job_dir: Path | None = None):
    """Every check possible before a model loads (``--dry-run`` runs the same); the prepared job.
    ``job_dir``: the folder of a job being resumed (its own earlier output may be replaced)."""
    from openrft.train.job import prepare

    return prepare(cfg, job_dir)


def make_sinks(
    store: JobStore,
    record: JobRecord,
    cfg: JobConfig,
    *,
    log_steps: bool,
    resolved: dict[str, Any] | None = None,
) -> list[Any]:
    sinks: list[Any] = [StoreSink(store, record.id)]
    if log_steps:
        sinks.append(PrintSink())
    if cfg.wandb.wandb:
        sinks.append(start_wandb(cfg, job_id=record.id, job_dir=record.job_dir, resuming=bool(record.resume),
                                 resolved=resolved))  # fmt: skip
    return sinks


def resolved_values(prepared: Any) -> dict[str, Any]:
    """What the job runs with where its parameters leave it to a default elsewhere: the loss method's own
    clip range and KL coefficient (``--rl-kl-beta 0`` is GRPO's 0.001), and the evaluator header's
    concurrency. W&B shows them beside the parameters as given."""
    settings = getattr(prepared, "settings", None)
    if settings is None:
        return {}
    loss, engine = settings.loss, settings.engine
    return {
        "kl_coef": loss.kl_coef, "clip_low": loss.clip_low, "clip_high": loss.clip_high,
        "aggregation": loss.aggregation, "max_concurrent_rollouts": engine.max_concurrent_rollouts,
        "max_concurrent_evaluations": engine.max_concurrent_evaluations,
    }  # fmt: skip


def start_wandb(cfg: JobConfig, *, job_id: str, job_dir: Path, resolved: dict[str, Any] | None = None,
                **options: Any):  # fmt: skip
    """The job's W&B sink, configured from its W&B parameters (``options`` go to ``WandbSink.start``);
    ``resolved`` (:func:`resolved_values`) joins the config as ``resolved``."""
    from openrft.tracking.wandb_sink import WandbSink

    w = cfg.wandb
    return WandbSink.start(
        job_id=job_id,
        job_dir=job_dir,
        config={**cfg.to_dict(), **({"resolved": resolved} if resolved else {})},
        project=w.wandb_project,
        entity=w.wandb_entity,
        api_key=w.wandb_api_key.get_secret_value() if w.wandb_api_key else None,
        run_id=w.wandb_run_id,
        **options,
    )


class StoreSink:
    """Keeps the job's step count and latest training reward in the store (for ``rftj list``), from
    every line with either: a round that trained nothing still has a reward."""

    def __init__(self, store: JobStore, job_id: str):
        self.store, self.job_id = store, job_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        reward = metrics.get("reward/mean")
        if step > 0 or reward is not None:
            self.store.record_progress(self.job_id, step, reward)

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class PrintSink:
    """One plain line per step, per evaluation and per round that trained nothing, on stderr: for a
    detached job's log or output piped to a file (no progress bar there)."""

    KEYS = (("reward/mean", "reward"), ("eval/reward", "eval"), ("loss/policy", "loss"), ("kl/mean", "kl"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        parts = [f"{label} {metrics[key]:.4f}" for key, label in self.KEYS if metrics.get(key) is not None]
        if metrics.get("completion/truncated_frac") is not None:
            parts.append(f"truncated {100 * metrics['completion/truncated_frac']:.0f}%")
        if metrics.get("reward/invalid_count"):  # the evaluator failed on some (see rollouts.jsonl's reason)
            parts.append(
                f"invalid scores {metrics['reward/invalid_count']:.0f}/{metrics.get('reward/count', 0):.0f}"
            )
        if metrics.get("filter/groups") is not None:
            parts.append(
                f"zero-variance groups {metrics.get('filter/zero_variance_groups', 0):.0f}"
                f"/{metrics['filter/groups']:.0f}"
            )
        if metrics.get("filter/round_skipped"):
            head = f"round {metrics.get('train/round', 0):.0f}: no update (every group's candidates scored alike)"
        else:
            head = f"step {step}"
        print(time.strftime("%H:%M:%S"), head, "  ".join(parts), file=sys.stderr, flush=True)

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- processes


def worker_command(job_id: str) -> list[str]:
    return [sys.executable, "-m", "openrft.jobs.worker", job_id]


def spawn_worker(store: JobStore, record: JobRecord) -> int:
    """Start the job in a background process of its own session; its output goes to job.log."""
    record.job_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OPENRFT_HOME": str(store.root),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the log gets one line per step instead
        "TQDM_DISABLE": "1",
    }
    with open(record.log_path, "ab") as log:
        proc = subprocess.Popen(
            worker_command(record.id),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    store.set_process(record.id, proc.pid)
    return proc.pid


class graceful_interrupt:
    """First Ctrl-C (or SIGTERM): stop at the next step boundary (with a checkpoint); a second one
    aborts. Either way the job's own clean-up runs (an MCP gym's server, evaluator workers).

    ``on_stop`` runs once, on a thread of its own (never inside the handler, which may have interrupted
    a store write), after the first: it records the request, so ``rftj list`` shows CANCELLING.
    """

    def __init__(self, on_stop: Callable[[], Any] | None = None) -> None:
        self.flag = [False]
        self._previous: Any = None
        self._on_stop = on_stop

    def _notify(self) -> None:
        with contextlib.suppress(Exception):  # the job may have ended meanwhile: nothing to record
            self._on_stop()  # type: ignore[misc]

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag[0]:
            raise KeyboardInterrupt
        self.flag[0] = True
        if self._on_stop is not None:
            threading.Thread(target=self._notify, name="record-cancel", daemon=True).start()
        again = "Ctrl-C" if signum == signal.SIGINT else "another SIGTERM"  # (the signal that came)
        print(
            f"\nstopping at the next step boundary (a checkpoint is written); {again} to abort",
            file=sys.stderr,
        )

    def __enter__(self) -> list[bool]:
        try:
            self._previous = {
                sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
            }
        except ValueError:  # not the main thread
            self._previous = None
        return self.flag

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- helpers


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _has_checkpoint(job_dir: Path) -> bool:
    return any((job_dir / "checkpoints").glob("step-*/state.json"))


__all__ = [
    "create_and_run",
    "resume_job",
    "run_job",
    "spawn_worker",
    "worker_command",
    "rebuild_config",
    "validate",
    "new_job_id",
    "StopFlag",
    "StoreSink",
    "PrintSink",
]
