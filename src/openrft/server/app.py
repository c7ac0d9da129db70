"""The FastAPI application behind ``openrft server``: the job API, datasets and evaluators, the dashboard.

Errors leave in the managed service's shape (:class:`~openrft.server.errors.ApiError`); a request
FastAPI itself cannot read (a malformed query parameter, say) is a 400 naming the parameter.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from openrft.jobs.store import JobStore
from openrft.server import (
    dashboard,
    graders_api,
    job_files_api,
    jobs_api,
    models_api,
    resource_updates_api,
    resources_api,
)
from openrft.server.auth import BearerAuth, KeyFailures
from openrft.server.errors import ApiError, error_for
from openrft.server.guard import RequestGuard
from openrft.server.queue import JobQueue
from openrft.server.settings import ServerSettings
from openrft.server.uploads import UploadLimits


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The application for ``settings`` (checked first: a public bind needs an API key).

    ``app.state`` holds ``settings``, ``job_store`` and, once started, ``job_queue``.
    """
    settings = settings or ServerSettings()
    settings.check()
    store = JobStore(settings.home)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue = None
        if settings.run_queue:
            queue = JobQueue(store, max_running=settings.max_running_jobs, interval=settings.poll_interval)
            queue.start()
            app.state.job_queue = queue
        try:
            yield
        finally:
            if queue is not None:
                queue.stop()

    app = FastAPI(title="openrft", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.job_store = store
    app.state.job_queue = None
    app.state.key_failures = KeyFailures()  # wrong keys by client, the API's and the login form's
    app.add_middleware(BearerAuth, keys=settings.api_keys, failures=app.state.key_failures)
    limits = lambda: getattr(app.state, "upload_limits", None) or UploadLimits.from_env()  # noqa: E731
    app.add_middleware(RequestGuard, keys=settings.api_keys, limits=limits)  # added last: runs first
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, internal_error)  # anything else: a 500 in the same shape
    app.include_router(job_files_api.router)  # first: its ":method" paths would match "{id}"
    app.include_router(jobs_api.router)
    app.include_router(graders_api.router)  # OpenAI's grader test calls
    resources_api.configure_resources(app, home=settings.home)
    app.include_router(models_api.router)  # first: its model downloads before the generic signed route
    app.include_router(resource_updates_api.router)  # first: its ":method" paths would match "{id}"
    app.include_router(resources_api.router)
    dashboard.install(app)
    return app


async def api_error(request: Request, exc: Any) -> JSONResponse:
    return exc.response()


async def validation_error(request: Request, exc: Any) -> JSONResponse:
    """FastAPI's 422 -> the service's 400, naming the parameter that could not be read."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return ApiError(400, f"{where}: {first.get('msg', 'invalid value')}").response()


async def http_error(request: Request, exc: Any) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in the service's shape."""
    message = {404: f"no such resource: {request.url.path}", 405: f"{request.method} is not allowed here"}
    error = error_for(request.url.path, exc.status_code, message.get(exc.status_code, str(exc.detail)))
    return error.response(headers=getattr(exc, "headers", None))


async def client_gone(request: Request, exc: Exception) -> Response:
    """A client that left mid-request (an upload cut off): nobody reads the answer, nothing to log."""
    return Response(status_code=499)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """An error no route expected, in the service's shape (the traceback goes to the server's log)."""
    error = ApiError(500, f"internal error ({type(exc).__name__}): see the server's log")
    return error.response()


__all__ = ["create_app", "ServerSettings"]
