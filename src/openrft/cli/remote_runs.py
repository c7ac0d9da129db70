"""``openrft rftj rollouts|plot|compare --server URL``: what a job on a server wrote as it ran, read
through the server's ``:rollouts`` and ``:metrics`` calls and shown as the local commands show it
(plots are drawn here, from the metrics fetched into a temporary folder)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from openrft.cli.jobs import rollout_order, show_comparison, show_rollouts
from openrft.errors import JobError


def remote_rollouts(remote: Any, args: argparse.Namespace) -> int:
    params = {"order": rollout_order(args), "limit": min(args.limit, 1000)}
    if args.step is not None:
        params["step"] = args.step
    found = remote.call("GET", remote.path(args.job_id, "rollouts"), params=params)
    if not found.get("steps"):
        print(f"job {found.get('job', args.job_id)} has no sampled rollouts yet")
        return 0
    return show_rollouts(found["job"], found["step"], found["rollouts"], args)


def fetched_metrics(remote: Any, job_ids: list[str], folder: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(job id, metrics file, the :metrics answer)`` of each job, its lines written under ``folder``."""
    runs = []
    for job_id in job_ids:
        answer = remote.call("GET", remote.path(job_id, "metrics"))
        path = folder / f"{len(runs)}" / "metrics.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps(row) + "\n" for row in answer.get("metrics") or []))
        runs.append((answer.get("job", job_id), path, answer))
    return runs


def remote_plot(remote: Any, args: argparse.Namespace) -> int:
    from openrft.tracking.plots import plot_jobs

    with tempfile.TemporaryDirectory(prefix="openrft-plot-") as folder:
        runs = fetched_metrics(remote, args.job_ids, Path(folder))
        out = plot_jobs([(label, path) for label, path, _ in runs], Path(args.out))
    print(f"wrote {out}")
    return 0


def remote_compare(remote: Any, args: argparse.Namespace) -> int:
    from openrft.tracking.compare import summarize_run

    if len(args.job_ids) < 2:
        raise JobError("compare needs at least two jobs", hint="openrft rftj compare ID_A ID_B --server URL")
    with tempfile.TemporaryDirectory(prefix="openrft-compare-") as folder:
        runs = fetched_metrics(remote, args.job_ids, Path(folder))
        summaries = [summarize_run(label, path, state=answer.get("state", ""), wall_s=answer.get("wallSeconds"))
                     for label, path, answer in runs]  # fmt: skip
        configs = [answer.get("parameters") or {} for _, _, answer in runs]
        return show_comparison([(label, path) for label, path, _ in runs], configs, summaries, args.out)


__all__ = ["remote_compare", "remote_plot", "remote_rollouts"]
