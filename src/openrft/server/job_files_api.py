"""What a job wrote as it ran, for ``openrft rftj rollouts|plot|compare --server`` (openrft's own
calls beside the managed service's job endpoints, under the same account rules)::

    GET /v1/accounts/{account}/reinforcementFineTuningJobs/{id}:rollouts[?step&order&limit]
    GET /v1/accounts/{account}/reinforcementFineTuningJobs/{id}:metrics

``:rollouts`` answers one step's rollouts (the latest by default) as ``rollouts.jsonl`` holds them,
best or worst first or as sampled, at most ``limit``; ``:metrics`` the job's ``metrics.jsonl`` lines,
its shown state, its time spent running and its parameters (the secrets and routing fields left out),
which is what a comparison reads.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from openrft.jobs.states import wall_time
from openrft.server.errors import ApiError
from openrft.server.jobs_api import BASE, _get, _store
from openrft.tracking.compare import NOT_COMPARED
from openrft.tracking.jsonl_files import ordered_rollouts, rollouts_of_step
from openrft.tracking.sinks import read_metrics

router = APIRouter()
MAX_ROLLOUTS = 1000  # rows one answer holds at most (a step at the defaults holds 128)


@router.get(BASE + "/{job_id}:rollouts")
def job_rollouts(
    request: Request,
    account: str,
    job_id: str,
    step: int | None = Query(None, ge=0),
    order: Literal["best", "worst", "sampled"] = "sampled",
    limit: int = Query(10, ge=1, le=MAX_ROLLOUTS),
) -> dict[str, Any]:
    record = _get(_store(request), job_id, account)
    steps, shown, rows = rollouts_of_step(record.rollouts_path, step)
    if step is not None and steps and shown != step:
        raise ApiError(404, f"job {record.id} has no rollouts for step {step} (steps with rollouts: "
                       f"{', '.join(map(str, steps[-20:]))})")  # fmt: skip
    return {
        "job": record.id,
        "steps": steps,
        "step": shown,
        "rollouts": ordered_rollouts(rows, order)[:limit],
    }


@router.get(BASE + "/{job_id}:metrics")
def job_metrics(request: Request, account: str, job_id: str) -> dict[str, Any]:
    record = _get(_store(request), job_id, account)
    parameters = {k: v for k, v in record.flat_config().items() if k not in NOT_COMPARED}
    return {"job": record.id, "state": record.shown_state, "wallSeconds": round(wall_time(record), 3),
            "parameters": parameters, "metrics": read_metrics(record.metrics_path)}  # fmt: skip


__all__ = ["router", "MAX_ROLLOUTS"]
