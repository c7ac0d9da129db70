"""API errors in the managed service's shape: ``{"error": {"code": 400, "message": ..., "status": ...}}``.

``status`` is the gRPC code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ``UNAUTHENTICATED``, ...), as the
service's REST gateway reports it; ``code`` the HTTP status. A failed precondition (a dataset not
uploaded yet, an evaluator not ACTIVE) is a 400 with status ``FAILED_PRECONDITION``, as the gateway maps
it (:func:`precondition`), so SDK users catch it as ``BadRequestError``. A refusal that a retry cannot
change carries ``x-should-retry: false``: the service's SDK retries 409s by default.
"""

from __future__ import annotations

import html
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse, Response

GRPC_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """An error answered to the client: HTTP ``status_code`` and one clear ``message``."""

    def __init__(self, status_code: int, message: str, grpc_status: str | None = None):
        super().__init__(message)
        self.status_code, self.message = status_code, message
        self.grpc_status = grpc_status or GRPC_NAMES.get(status_code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status_code, "message": self.message, "status": self.grpc_status}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The error as the HTTP response sent to the client."""
        final = 400 <= self.status_code < 500 and self.status_code not in (408, 429)  # a retry gets the same
        extra = {"x-should-retry": "false"} if final else {}
        return JSONResponse(self.body(), status_code=self.status_code, headers={**extra, **(headers or {})})

    def response_for(self, scope: Any, headers: dict[str, str] | None = None) -> Response:
        """:meth:`response`, or for a browser asking for a page (not the ``/v1`` API) the same message
        on a small page of its own, so that a person does not read raw JSON."""
        sent = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if str(scope.get("path", "")).startswith("/v1/") or "text/html" not in sent.get("accept", ""):
            return self.response(headers)
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>openrft: '
            f"{self.status_code}</title>"
            '<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head><body><main>'
            f'<h1>{self.status_code}</h1><p class="error" role="alert">{html.escape(self.message)}</p>'
            '<p><a href="/">Back to the jobs</a></p></main></body></html>'
        )
        return HTMLResponse(page, status_code=self.status_code, headers=headers)


class OpenAIError(ApiError):
    """A refusal in OpenAI's error shape (``message``, ``type``, ``param``, ``code``), as its SDK reads it."""

    def __init__(self, message: str, param: str | None = None, status_code: int = 400):
        super().__init__(status_code, message)
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": None}}  # fmt: skip


OPENAI_PATHS = ("/v1/fine_tuning/",)  # OpenAI's own calls (the grader tests): errors in OpenAI's shape


def error_for(path: str, status_code: int, message: str) -> ApiError:
    """The error for a request to ``path``: OpenAI's shape on OpenAI's paths, else the service's."""
    if path.startswith(OPENAI_PATHS):
        return OpenAIError(message, status_code=status_code)
    return ApiError(status_code, message)


def precondition(message: str) -> ApiError:
    """A request the resource is not ready for (``FAILED_PRECONDITION``): HTTP 400, as the gateway maps it."""
    return ApiError(400, message, "FAILED_PRECONDITION")


__all__ = ["ApiError", "GRPC_NAMES", "OpenAIError", "error_for", "precondition"]
