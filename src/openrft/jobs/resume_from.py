"""``rftj create --resume-from ID_OR_DIR``: the configuration an earlier job continues with.

The job's own values (its record, or a folder's ``job.json``), with a job file's and the command
line's applied over them. What its checkpoints are made of, and its dataset, may not change
(:func:`~openrft.jobs.snapshot.refuse_fixed_changes`). ``--dry-run`` shows this configuration and
refuses what a real resume would, without writing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openrft.config import JobConfig, build_config, flatten, load_job_file
from openrft.errors import JobError
from openrft.jobs.snapshot import absolute_paths, refuse_fewer_epochs, refuse_fixed_changes
from openrft.jobs.store import JobRecord, JobStore, config_values
from openrft.paths import openrft_home


def find_job(store: JobStore, target: str) -> JobRecord | None:
    """The stored job ``target`` names: its id, or its folder."""
    if store.exists(target):
        return store.get(target)
    path = Path(target).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        for record in store.list():
            if record.job_dir.resolve() == resolved:
                return record
    return None


def stored_resume_config(
    store: JobStore, record: JobRecord, config_file: str | None, flag_values: dict[str, Any]
) -> JobConfig:
    """A stored job's configuration with the job file's and the flags' values applied (refused where
    a resume may not change it)."""
    if record.state.value in ("COMPLETED", "EARLY_STOPPED"):  # said first, whatever the flags
        raise JobError(
            f"--resume-from {record.id}: job {record.id} is {record.state}: there is nothing left to resume",
            hint="start a new job instead, with --warm-start-from on this job's output adapter",
        )
    file_values = absolute_paths(load_job_file(config_file) if config_file else {}, Path.cwd())
    base = {**record.given, **store.secrets(record.id)}
    merged, _ = build_config({**base, **file_values}, absolute_paths(flag_values, Path.cwd()))
    refuse_fixed_changes(record.flat_config(), flatten(config_values(merged)[0]), record.job_dir)
    refuse_fewer_epochs(merged.training.epochs, record.job_dir)
    return merged


def folder_resume_config(
    job_dir: Path, config_file: str | None, flag_values: dict[str, Any]
) -> JobConfig | None:
    """A job folder's own configuration (its ``job.json``) with the job file's and the flags' values
    applied: the folder's job continues, not one rebuilt from defaults. None for a folder of
    checkpoints alone (the command line's job is taken)."""
    from openrft.jobs.repair import saved_values

    if not (job_dir / "job.json").is_file():
        return None
    try:
        base = saved_values(job_dir)
    except ValueError as exc:
        raise JobError(f"--resume-from {job_dir}: its job.json cannot be read ({exc})") from None
    file_values = absolute_paths(load_job_file(config_file) if config_file else {}, Path.cwd())
    saved = build_config({}, base)[0]
    cfg = build_config({**base, **file_values}, absolute_paths(flag_values, Path.cwd()))[0]
    refuse_fixed_changes(flatten(config_values(saved)[0]), flatten(config_values(cfg)[0]), job_dir)
    refuse_fewer_epochs(cfg.training.epochs, job_dir)
    return cfg


def resume_target_config(
    target: str, config_file: str | None, flag_values: dict[str, Any]
) -> JobConfig | None:
    """``--dry-run``'s check (nothing written): ``--resume-from`` names a stored job or a folder of
    checkpoints, and the flags change nothing a resume may not; the configuration it would continue
    with (None for a folder of checkpoints alone)."""
    store = JobStore(openrft_home()) if (openrft_home() / "jobs.db").is_file() else None
    record = find_job(store, target) if store is not None else None
    if record is not None:
        return stored_resume_config(store, record, config_file, flag_values)
    job_dir = Path(target).expanduser()
    if not (job_dir / "checkpoints").is_dir():
        raise no_resume_target(target)
    return folder_resume_config(job_dir, config_file, flag_values)


def warm_started_from(store: JobStore, record: JobRecord) -> list[str]:
    """The jobs that start from ``record``'s adapter (its folder or output) and may still need it.
    Deleting ``record`` would leave them unable to go on."""
    folders = [p for p in (record.job_dir, record.output_dir) if p is not None]
    return jobs_starting_from(store, folders, but=record.id)


def jobs_starting_from(store: JobStore, folders: list[Path], *, but: str | None = None) -> list[str]:
    """The jobs (other than ``but``) whose warm start is one of ``folders`` or inside one, and that may
    still need it: queued, running, or stopped where they can resume."""
    mine = [Path(p).resolve() for p in folders]
    needed = []
    for other in store.list():
        start = (other.config.get("training") or {}).get("warm_start_from")
        if other.id == but or not start or other.state.value in ("COMPLETED", "EARLY_STOPPED"):
            continue
        path = Path(start).expanduser().resolve()
        if any(path == folder or folder in path.parents for folder in mine):
            needed.append(other.id)
    return needed


def no_resume_target(target: str) -> JobError:
    message = f"--resume-from {target}: neither a job id in the store nor a job folder with checkpoints"
    return JobError(message, hint="see the jobs with: openrft rftj list")


def changed_names(before: dict[str, Any], after_nested: dict[str, Any]) -> list[str]:
    """The flags whose values differ between ``before`` (flat) and ``after_nested`` (by group)."""
    after = flatten(after_nested)
    return [name.replace("_", "-") for name in after if name in before and before[name] != after[name]]


__all__ = ["changed_names", "find_job", "folder_resume_config", "no_resume_target", "resume_target_config",
           "jobs_starting_from", "stored_resume_config", "warm_started_from"]  # fmt: skip
