"""The dashboard's routes: server-rendered pages, the HTML pieces htmx swaps in, and the JSON the
charts poll.

::

    GET  /                          job list (?state=RUNNING filters)
    GET  /dashboard/jobs-table      the list's rows alone (refreshed every few seconds)
    GET  /jobs/{id}                 one job: curves, parameters, history, rollouts, adapter, cancel
    GET  /jobs/{id}/metrics.json    chart points from line ?since=N of metrics.jsonl
    GET  /jobs/{id}/rollouts        the rollouts browser alone (?step=&order=best|worst|sampled)
    POST /jobs/{id}/cancel          request a cancel, back to the job page
    GET  /compare?ids=A&ids=B       parameters that differ, results, curves overlaid
    GET  /create, POST /create      the create form, checked like ``openrft rftj create``

The job store is opened from ``app.state.job_store`` when the application set one, else from
``$OPENRFT_HOME``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from openrft.config import config_defaults
from openrft.errors import JobError, OpenRFTError
from openrft.jobs.resume_from import warm_started_from
from openrft.jobs.store import JobStore
from openrft.server import jobs_api
from openrft.server.auth import server_keys
from openrft.server.dashboard import data, forms
from openrft.server.errors import ApiError
from openrft.server.guard import cross_origin

HERE = Path(__file__).parent
STATIC = HERE / "static"
VENDOR_FILES = ("htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css")
POLL_SECONDS = 3

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def vendored() -> bool:
    """Whether ``make vendor`` has put the front-end libraries in place (else: no live charts)."""
    return all((STATIC / "vendor" / name).is_file() for name in VENDOR_FILES)


def job_store(request: Request) -> JobStore:
    store = getattr(request.app.state, "job_store", None)
    if store is None:
        store = JobStore()
        request.app.state.job_store = store
    return store


# what the job page says after one of its buttons (?done=CODE, a code and never text from the URL;
# any other value says nothing): (kind, sentence)
DONE_OUTCOMES = {
    "cancel-requested": (
        "note",
        "Cancel requested: the job stops at its next step boundary (a round being sampled is dropped) and writes a checkpoint.",
    ),
    "cancel-refused": ("error", "This job could not be cancelled: it is no longer queued or running."),
    "resumed": ("note", "Resumed: the job waits in the queue and continues from its last checkpoint."),
    "resume-refused": ("error", "This job could not be resumed: only a failed or cancelled job continues."),
    "delete-refused": (
        "error",
        "This job could not be deleted: cancel it first and delete it once it has stopped.",
    ),
    "delete-needed": (
        "error",
        "This job could not be deleted: another job starts from its adapter and has yet to finish or can still resume; delete that job first.",
    ),
}


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("vendored", vendored())
    context.setdefault("can_log_out", bool(server_keys(request)))
    context.setdefault("poll_seconds", POLL_SECONDS)
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"  # Back shows the job as it is now (or gone), not as it was
    return response


def cross_site(request: Request) -> bool:
    """Whether a form was posted from another site (browsers name the page's origin on every POST):
    such a request could start or cancel jobs on the user's behalf, so it is refused."""
    return cross_origin(request.headers)  # the API's own rule (openrft.server.guard)


def refused(request: Request) -> HTMLResponse:
    return render(
        request, "error.html", status_code=403, message="a form posted from another site is refused"
    )


def chart_config(request: Request, job_ids: list[str]) -> dict[str, Any]:
    """What dashboard.js needs: each job's metrics URL, the panels, and how often to poll."""
    jobs = [{"id": i, "metrics": str(request.url_for("job_metrics", job_id=i).path)} for i in job_ids]
    return {"jobs": jobs, "panels": data.panels(), "poll": POLL_SECONDS}


def not_found(request: Request, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code=404, message=message)


# ----------------------------------------------------------------------------- job list


@router.get("/", response_class=HTMLResponse)
def job_list(request: Request, state: str = "", page: str = "1") -> HTMLResponse:
    shown = _state(state)
    listing = data.job_list_page(job_store(request), shown or None, _page(page))
    unknown = state.strip() if state.strip() and not shown else None  # said above the list, never a 400
    return render(request, "jobs.html", state=shown, states=data.STATES, unknown_state=unknown, **listing)


@router.get("/dashboard/jobs-table", response_class=HTMLResponse)
def job_table(request: Request, state: str = "", page: str = "1") -> HTMLResponse:
    shown = _state(state)
    listing = data.job_list_page(job_store(request), shown or None, _page(page))
    return render(request, "jobs_refresh.html", state=shown, states=data.STATES, **listing)


def _state(state: str) -> str:
    """A state filter as typed in an address (any case), or "" (every job) for a name that is none."""
    state = state.strip().upper()
    return state if state in data.STATES else ""


def _page(page: str) -> int:
    """A page number from an address; anything that is not one is the first page (as past the end is
    the last), so a mistyped link still shows the list."""
    return int(page) if page.strip().isdecimal() else 1


# ----------------------------------------------------------------------------- one job


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: str, step: str = "", order: str = "best", q: str = "", page: str = "1"
) -> HTMLResponse:
    store = job_store(request)
    try:
        record = store.get(job_id)
    except JobError as exc:
        return not_found(request, str(exc))
    return render(
        request,
        "job.html",
        job=record,
        row=data.job_row(record, time.time()),
        created=data.stamp(record.created_at),
        parameters=data.parameters(record),
        history=data.history(record),
        adapter=data.adapter_usage(record),
        files=data.job_files(record)[0],
        browser=_browser(record, step, order, q, page),
        charts=chart_config(request, [record.id]),
        done=_outcome(store, record, request.query_params.get("done", "")),
    )


def _outcome(store: JobStore, record: Any, code: str) -> tuple[str, str] | None:
    """What a button's outcome ``code`` says on the job page (looked up, never text from the URL)."""
    said = DONE_OUTCOMES.get(code)
    if said is not None and code == "delete-needed" and (needed := warm_started_from(store, record)):
        said = (said[0], f"{said[1]} The job that starts from it: {', '.join(needed)}.")
    return said


@router.get("/jobs/{job_id}/files/{name}", response_model=None)
def job_file(request: Request, job_id: str, name: str) -> Response:
    """One file of the job's adapter folder, or its metrics, rollouts or log, as a download."""
    try:
        path = data.job_files(job_store(request).get(job_id))[1].get(name)
    except JobError as exc:
        return not_found(request, str(exc))
    if path is None:
        return not_found(request, f"job {job_id} has no file {name!r} to download")
    return FileResponse(path, filename=name)


@router.get("/jobs/{job_id}/metrics.json")
def job_metrics(request: Request, job_id: str, since: int = 0) -> JSONResponse:
    try:
        record = job_store(request).get(job_id)
    except JobError as exc:
        return JSONResponse(ApiError(404, str(exc)).body(), status_code=404)
    body = data.metric_points(record.metrics_path, since)
    row = data.job_row(record, time.time())
    body.update(state=record.shown_state, active=record.state.is_active, steps=record.steps,
                progress=row["progress_text"], reward=row["last_reward"], age=row["age"])  # fmt: skip
    return JSONResponse(body)


@router.get("/jobs/{job_id}/rollouts", response_class=HTMLResponse)
def job_rollouts(
    request: Request, job_id: str, step: str = "", order: str = "best", q: str = "", page: str = "1"
) -> HTMLResponse:
    """The browser alone, for htmx; the address bar then shows the job page with the same choice, so
    that it can be linked, reloaded and gone back to."""
    try:
        record = job_store(request).get(job_id)
    except JobError as exc:
        return not_found(request, str(exc))
    browser = _browser(record, step, order, q, page)
    response = render(request, "rollouts.html", job=record, browser=browser)
    response.headers["HX-Push-Url"] = browser_address(request, job_id, browser)
    return response


def _browser(record: Any, step: str, order: str, query: str, page: str) -> dict[str, Any]:
    step_number = int(step) if step.strip().isdecimal() else None  # else the latest step
    order = order if order in ("best", "worst", "sampled") else "best"
    browser = data.rollouts(record, step_number, order, query[:200], _page(page))
    browser["asked"] = step_number if step_number not in (None, browser["step"]) else None  # (said so)
    page_number = browser["page"]  # the pager's links: the same choice, another page
    browser["previous"] = _browser_query(browser, page_number - 1) if page_number > 1 else None
    browser["next"] = _browser_query(browser, page_number + 1) if page_number < browser["pages"] else None
    return browser


def _browser_query(browser: dict[str, Any], page: int) -> str:
    params = {"step": browser["step"], "order": browser["order"], "q": browser["query"], "page": page}
    return urlencode({k: v for k, v in params.items() if v not in (None, "") and (k, v) != ("page", 1)})


def browser_address(request: Request, job_id: str, browser: dict[str, Any]) -> str:
    """The job page's address showing ``browser``'s step, order, search and page."""
    query = _browser_query(browser, browser["page"])
    return f"{request.url_for('job_page', job_id=job_id).path}?{query}#rollouts"


@router.post("/jobs/{job_id}/cancel", response_model=None)
def cancel(request: Request, job_id: str) -> Response:
    """Ask the job to stop at its next step boundary (as ``openrft rftj cancel``)."""
    if cross_site(request):
        return refused(request)
    try:
        job_store(request).request_cancel(job_id)
    except JobError:
        return _back_to_job(request, job_id, "cancel-refused")
    jobs_api.wake_queue(request)
    return _back_to_job(request, job_id, "cancel-requested")


@router.post("/jobs/{job_id}/resume", response_model=None)
def resume(request: Request, job_id: str) -> Response:
    """Queue a stopped job again, continuing from its last checkpoint (as ``openrft rftj resume``; a
    cancelled one after the page's confirmation, as ``--force``)."""
    if cross_site(request):
        return refused(request)
    try:
        jobs_api.requeue(job_store(request), job_id, force=True, account=forms.DEFAULT_ACCOUNT)
    except JobError:
        return _back_to_job(request, job_id, "resume-refused")
    jobs_api.wake_queue(request)
    return _back_to_job(request, job_id, "resumed")


@router.post("/jobs/{job_id}/delete", response_model=None)
def delete(request: Request, job_id: str) -> Response:
    """Remove a stopped job and its folder (as ``openrft rftj delete``)."""
    if cross_site(request):
        return refused(request)
    store = job_store(request)
    try:
        if warm_started_from(store, store.get(job_id)):
            return _back_to_job(request, job_id, "delete-needed")
        store.delete(job_id)
    except JobError:
        return _back_to_job(request, job_id, "delete-refused")
    return RedirectResponse(str(request.url_for("job_list")), status_code=303)


def _back_to_job(request: Request, job_id: str, outcome: str) -> RedirectResponse:
    url = request.url_for("job_page", job_id=job_id).include_query_params(done=outcome)
    return RedirectResponse(str(url), status_code=303)


# ----------------------------------------------------------------------------- compare


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, ids: list[str] = Query(default=[])) -> HTMLResponse:
    store = job_store(request)
    wanted = list(dict.fromkeys(i for part in ids for i in part.split(",") if i.strip()))
    records, missing = [], []
    for job_id in wanted:
        try:
            records.append(store.get(job_id.strip()))
        except JobError:
            missing.append(job_id)
    result = data.comparison(records, config_defaults()) if len(records) >= 2 else None
    return render(
        request,
        "compare.html",
        rows=data.job_rows(store),
        chosen=[r.id for r in records],
        missing=missing,
        result=result,
        charts=chart_config(request, [r.id for r in records]),
    )


# ----------------------------------------------------------------------------- create


@router.get("/create", response_class=HTMLResponse)
def create_form(request: Request) -> HTMLResponse:
    return render(request, "create.html", fields=forms.FIELDS, result=forms.FormResult({}))


@router.post("/create", response_class=HTMLResponse, response_model=None)
async def create_job(request: Request) -> HTMLResponse | RedirectResponse:
    if cross_site(request):
        return refused(request)
    store = job_store(request)
    settings = getattr(request.app.state, "settings", None)
    policy = forms.Policy(store.root, bool(getattr(settings, "allow_local_paths", False)))
    form = await request.form()
    result = forms.validate({k: v for k, v in form.items() if isinstance(v, str)}, policy)
    if result.ok:
        try:
            record = await run_in_threadpool(_submit, store, result)
        except (OpenRFTError, ApiError, ValueError) as exc:
            forms.submission_error(result, exc)
        else:
            jobs_api.wake_queue(request)
            return RedirectResponse(str(request.url_for("job_page", job_id=record.id)), status_code=303)
    return render(request, "create.html", status_code=400, fields=forms.FIELDS, result=result)


def _submit(store: JobStore, result: forms.FormResult):
    """Record the job PENDING for the server's queue (:func:`openrft.server.jobs_api.submit_job`)."""
    return jobs_api.submit_job(store, result.config, job_id=result.config.training.job_id, meta=result.meta,
                      cli_messages=True)  # fmt: skip


__all__ = ["router", "templates", "vendored", "STATIC"]
