"""The managed service's reinforcement-fine-tuning-job endpoints, over openrft's job store and queue.

::

    POST   /v1/accounts/{account}/reinforcementFineTuningJobs[?reinforcementFineTuningJobId=ID]
    GET    /v1/accounts/{account}/reinforcementFineTuningJobs[?pageSize&pageToken&filter&orderBy]  (filtering.py)
    GET    /v1/accounts/{account}/reinforcementFineTuningJobs/{id}
    DELETE /v1/accounts/{account}/reinforcementFineTuningJobs/{id}
    POST   /v1/accounts/{account}/reinforcementFineTuningJobs/{id}:cancel
    POST   /v1/accounts/{account}/reinforcementFineTuningJobs/{id}:resume

The store is shared with the command line: every job in it is listed, whatever account the URL names.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from openrft.config import JobConfig
from openrft.errors import JobError, OpenRFTError
from openrft.evaluators.loader import default_evaluator_name
from openrft.jobs.resume_from import warm_started_from
from openrft.jobs.runner import new_job_id, validate, with_absolute_paths
from openrft.jobs.snapshot import write_snapshot
from openrft.jobs.store import JobRecord, JobStore, config_values
from openrft.server import filtering, wire
from openrft.server.errors import ApiError
from openrft.server.job_object import job_object
from openrft.server.uploads import ID_RE

router = APIRouter()
BASE = "/v1/accounts/{account}/reinforcementFineTuningJobs"
MAX_PAGE = 200
DEFAULT_PAGE = 50
# The top-level fields of a job object (filter terms may name any of them, or fields inside them).
JOB_FIELDS = frozenset({
    "name", "displayName", "state", "status", "createTime", "completedTime", "dataset", "evaluator",
    "evaluationDataset", "evalAutoCarveout", "trainingConfig", "inferenceParameters", "wandbConfig",
    "lossConfig", "chunkSize", "maxConcurrentRollouts", "maxConcurrentEvaluations", "mcpServer",
    "nodeCount", "jobProgress", "outputModelPath",
})  # fmt: skip


# ----------------------------------------------------------------------------- for the other modules


# One job checked at a time: creates arrive on the thread pool, and the first check imports transformers,
# whose lazy module fails an import that another thread started ("cannot import name 'AutoConfig'");
# one at a time also bounds the memory concurrent checks take (each reads its dataset and tokenizer).
VALIDATING = threading.Lock()


def submit_job(
    store: JobStore,
    cfg: JobConfig,
    job_id: str | None = None,
    *,
    meta: dict[str, Any] | None = None,
    cli_messages: bool = False,
) -> JobRecord:
    """Check a job like ``openrft rftj create`` and queue it (PENDING, owned by this server).

    Nothing is recorded when a check fails: ``ApiError`` 400 with the check's message, 409 when the
    id is taken. The server's queue starts the job when a slot is free.
    """
    job_id = job_id or cfg.training.job_id or new_job_id()
    refuse_taken(store, job_id)
    cfg = with_absolute_paths(cfg)
    refs = (meta or {}).get("refs") or {}
    if not cfg.data.evaluator:
        try:
            default_evaluator_name(cfg.data.dataset)
        except OpenRFTError:
            raise ApiError(400, f"evaluator: required for dataset {refs.get('dataset') or cfg.data.dataset}: name "
                           "an evaluator (accounts/ACCOUNT/evaluators/ID), a built-in one or a grader; only "
                           "the built-in tasks bring their own") from None  # fmt: skip
    try:
        with VALIDATING:
            validate(cfg)
    except OpenRFTError as exc:
        if cli_messages:  # the dashboard's form: its fields are the flags, each error goes beside its own
            raise
        message = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        raise ApiError(400, wire.public_message(message, cfg, refs)) from None  # fields, not flags or paths
    try:
        record = store.create(job_id, cfg, pid=os.getpid(), detached=True)
    except JobError as exc:
        raise ApiError(409, exc.message) from None
    write_snapshot(record.job_dir, config_values(cfg)[1])
    wire.write_meta(record.job_dir, {"account": "", "refs": {}, **(meta or {})})
    return record


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


def wake_queue(request: Request) -> None:
    """Tell the server's queue (when it runs one) to look at the store now rather than at its next poll."""
    queue = getattr(request.app.state, "job_queue", None)
    if queue is not None:
        queue.wake()


def requeue(store: JobStore, job_id: str, *, force: bool, account: str) -> JobRecord:
    """Put a stopped job back in this server's queue, to continue from its last checkpoint
    (``JobError`` when it cannot be); a job made on the command line becomes ``account``'s."""
    record = store.prepare_resume(job_id, force=force, pid=os.getpid())
    if not (record.job_dir / wire.SERVER_FILE).is_file():
        wire.write_meta(record.job_dir, {"account": account, "refs": {}})
    return record


def _get(store: JobStore, job_id: str, account: str) -> JobRecord:
    """The job, if ``account`` may see it (:func:`_visible`); a 404 otherwise."""
    try:
        record = store.get(job_id)
    except JobError as exc:
        if store.exists(job_id):
            raise ApiError(500, exc.message) from None
        record = None
    if record is None or not _visible(record, account):
        raise ApiError(404, f"reinforcement fine-tuning job {job_id!r} not found in account {account!r} "
                       "(a job created through the API is seen under its own account only)")  # fmt: skip
    return record


def _visible(record: JobRecord, account: str) -> bool:
    """A job created through the API belongs to the account it was created under, as with the
    service; one created on this machine's command line (no account) is seen under every account."""
    owner = wire.read_meta(record).get("account")
    return owner is None or owner == account


def _context(request: Request, account: str) -> wire.WireContext:
    from openrft.server import resources_api

    settings = request.app.state.settings
    return wire.WireContext(
        account=account,
        home=_store(request).root,
        allow_local_paths=settings.allow_local_paths,
        dataset_path=getattr(resources_api, "dataset_path", None),
        evaluator_spec=getattr(resources_api, "evaluator_spec", None),
    )


# ----------------------------------------------------------------------------- routes


@router.post(BASE)
async def create_job(request: Request, account: str) -> dict[str, Any]:
    job_id = request.query_params.get("reinforcementFineTuningJobId") or None
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to read
        raise ApiError(400, "the request body is not valid JSON") from None
    ctx = _context(request, account)
    record = await run_in_threadpool(_create, _store(request), body, ctx, job_id)
    wake_queue(request)
    return job_object(record, account)


def refuse_taken(store: JobStore, job_id: str) -> None:
    """A 409 when ``job_id`` names a job (or a folder) already."""
    if store.exists(job_id) or (store.job_dir(job_id) / "job.json").exists():
        raise ApiError(409, f"job {job_id} already exists")


def _create(store: JobStore, body: Any, ctx: wire.WireContext, job_id: str | None) -> JobRecord:
    # a taken id is said first, before the body's checks; only a safe one path segment is looked up here
    # (a malformed id is refused by those checks)
    if job_id is not None and ID_RE.fullmatch(job_id):
        refuse_taken(store, job_id)
    translated = wire.body_to_values(body, ctx)
    values = dict(translated.values)
    if job_id is not None:
        values["job_id"] = job_id
    cfg = wire.build(values)
    return submit_job(store, cfg, job_id, meta=translated.meta)


@router.get(BASE + "/{job_id}")
def get_job(
    request: Request, account: str, job_id: str, read_mask: str = Query("", alias="readMask")
) -> dict[str, Any]:
    return filtering.masked(
        job_object(_get(_store(request), job_id, account), account), read_mask, JOB_FIELDS
    )


@router.get(BASE)
def list_jobs(
    request: Request,
    account: str,
    page_size: int = Query(DEFAULT_PAGE, alias="pageSize"),
    page_token: str = Query("", alias="pageToken"),
    filter_: str = Query("", alias="filter"),
    order_by: str = Query("", alias="orderBy"),
    read_mask: str = Query("", alias="readMask"),
) -> dict[str, Any]:
    jobs = [job_object(r, account) for r in _store(request).list() if _visible(r, account)]
    return filtering.list_page(
        jobs, "reinforcementFineTuningJobs", JOB_FIELDS, size=page_size, token=page_token, filter_=filter_,
        order_by=order_by, read_mask=read_mask, default=DEFAULT_PAGE, most=MAX_PAGE,
    )  # fmt: skip


@router.delete(BASE + "/{job_id}")
def delete_job(request: Request, account: str, job_id: str) -> dict[str, Any]:
    store = _store(request)
    record = _get(store, job_id, account)
    if record.state.is_active:
        first = "" if record.cancel_requested else "cancel it first and "  # (CANCELLING: it was)
        raise ApiError(
            400,
            f"job {job_id} is {record.shown_state}; {first}delete it once it has stopped",
            "FAILED_PRECONDITION",
        )
    if needed := warm_started_from(store, record):
        raise ApiError(
            400,
            f"job {job_id}'s adapter is the warmStartFrom of job {', '.join(needed)}, which has yet to finish "
            "or can still resume (it needs that adapter); nothing was deleted: delete that job first",
            "FAILED_PRECONDITION",
        )
    try:
        store.delete(job_id)
    except JobError as exc:
        raise ApiError(400, exc.message, "FAILED_PRECONDITION") from None
    return {}


@router.post(BASE + "/{job_id}:cancel")
def cancel_job(request: Request, account: str, job_id: str) -> dict[str, Any]:
    store = _store(request)
    record = _get(store, job_id, account)
    if not record.state.is_active:
        raise ApiError(
            400, f"job {job_id} is {record.state}; only queued or running jobs can be cancelled",
            "FAILED_PRECONDITION",
        )  # fmt: skip
    try:
        store.request_cancel(job_id)
    except JobError as exc:
        raise ApiError(400, exc.message, "FAILED_PRECONDITION") from None
    wake_queue(request)
    return {}


@router.post(BASE + "/{job_id}:resume")
async def resume_job(request: Request, account: str, job_id: str) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - {"force"})
    if unknown:
        raise ApiError(400, f"{unknown[0]}: unknown field; a resume request accepts only 'force'")
    if not isinstance(body.get("force", False), bool):
        raise ApiError(400, f"force: expected true or false, got {body['force']!r}")
    store = _store(request)
    if (current := _get(store, job_id, account)).state.is_active:  # the store's message names its process
        raise ApiError(400, f"job {job_id} is {current.shown_state}; only a stopped job can be resumed",
                       "FAILED_PRECONDITION")  # fmt: skip
    try:
        record = requeue(store, job_id, force=body.get("force", False), account=account)
    except JobError as exc:
        hint = ' (send {"force": true} to resume it anyway)' if "cancelled jobs" in exc.message else ""
        raise ApiError(400, exc.message + hint, "FAILED_PRECONDITION") from None
    wake_queue(request)
    return job_object(record, account)


# ----------------------------------------------------------------------------- listing helpers


__all__ = ["router", "requeue", "submit_job", "JOB_FIELDS"]
