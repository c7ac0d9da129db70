"""What a web page in the user's browser must not be able to make the server do.

A browser lets any site send a "simple" cross-origin POST (``Content-Type: text/plain``, no preflight)
to ``127.0.0.1``, and a site can point its own name at ``127.0.0.1`` (DNS rebinding) to read the
answers too. The server runs uploaded evaluators, so either would let a page run code as the user.
:class:`RequestGuard`, the outermost middleware, refuses with a 403 in the service's error shape:

- on a server without API keys (loopback only), a request whose ``Host`` is not this machine
  (``localhost``, ``127.0.0.0/8``, ``[::1]``): what a rebound name sends;
- on any server, a request that changes something (POST, PUT, PATCH, DELETE) sent by a page of
  another origin: its ``Origin`` differs from its ``Host`` (another site, or another port of this
  host), or ``Sec-Fetch-Site`` says it came from another site. Clients that are not browsers (the
  SDK, ``curl``) send neither header.

It also caps a request's body (``max_request_bytes`` of :class:`~openrft.server.uploads.UploadLimits`,
413 past it) everywhere but the upload routes, which have their own limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from openrft.net import foreign_host
from openrft.server.errors import ApiError
from openrft.server.uploads import UploadLimits, is_signed_upload, limited_receive, too_large

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OWN_LIMIT = re.compile(r"/v1/accounts/[^/]+/datasets/[^/:]+:upload")  # a multipart dataset: its own limit


class RequestGuard:
    """ASGI middleware: refuse cross-site writes, rebound host names (keyless servers) and oversized bodies."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], limits: Callable[[], UploadLimits]):
        self.app, self.keys, self.limits = app, keys, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal.response_for(scope)(scope, receive, send)
            return
        own_limit = scope.get("method") == "POST" and OWN_LIMIT.fullmatch(str(scope.get("path", "")))
        if not is_signed_upload(scope) and not own_limit:
            limit = self.limits().max_request_bytes
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                error = too_large("the request body", limit)
                await error.response_for(scope)(scope, receive, send)
                return
            receive = limited_receive(receive, limit, "the request body")
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> ApiError | None:
        host = headers.get("host", "")
        if not self.keys and foreign_host(host):
            return ApiError(403, f"this server has no API key, so it answers only requests addressed to this "
                            f"machine (Host localhost or 127.0.0.1), not Host {host[:100]!r}")  # fmt: skip
        if scope.get("method") in UNSAFE_METHODS and cross_origin(headers):
            origin = headers.get("origin") or headers.get("sec-fetch-site", "")
            return ApiError(403, f"a request from a page of another site ({origin[:100]}) may not change "
                            "anything here")  # fmt: skip
        return None


def cross_origin(headers: dict[str, Any]) -> bool:
    """Whether a browser sent the request from a page of another origin than the server's own."""
    origin = headers.get("origin")
    if origin:
        return origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
    return headers.get("sec-fetch-site") in ("cross-site", "same-site")


__all__ = ["RequestGuard", "cross_origin"]
