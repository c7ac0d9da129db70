"""Run a validated job in the foreground: pick its id and folder, train, report where the outputs are."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

from openrft.config import JobConfig
from openrft.errors import JobError


def jobs_root() -> Path:
    from openrft.models import openrft_home

    return openrft_home() / "jobs"


def new_job_id() -> str:
    return time.strftime("rftj-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def create_and_run(cfg: JobConfig, args: argparse.Namespace) -> int:
    """``openrft rftj create``: a new job folder (or --resume-from an existing one), then train."""
    from openrft.train.job import run_training

    resume_from = getattr(args, "resume_from", None)
    if resume_from:
        job_dir = Path(resume_from) if Path(resume_from).is_dir() else jobs_root() / resume_from
        if not (job_dir / "checkpoints").is_dir():
            raise JobError(f"--resume-from {resume_from}: no checkpoints found in {job_dir}")
    else:
        job_id = cfg.training.job_id or new_job_id()
        job_dir = jobs_root() / job_id
        if (job_dir / "job.json").exists():
            raise JobError(f"job {job_id} already exists", hint="choose another --job-id or resume it")
    print(f"job {job_dir.name}: {job_dir}", file=sys.stderr)
    outcome = run_training(cfg, job_dir, resume=bool(resume_from), quiet=getattr(args, "quiet", False))
    print(f"job {job_dir.name} {outcome.status.upper()} after {outcome.state.step} steps", file=sys.stderr)
    if outcome.message:
        print(outcome.message, file=sys.stderr)
    return 0
