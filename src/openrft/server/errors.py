"""API errors in the managed service's shape: ``{"error": {"code": 400, "message": ..., "status": ...}}``.

``status`` is the gRPC code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ``UNAUTHENTICATED``, ...), as the
service's REST gateway reports it; ``code`` the HTTP status.
"""

from __future__ import annotations

from typing import Any

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


__all__ = ["ApiError", "GRPC_NAMES"]
