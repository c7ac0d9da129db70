"""Bearer-key authentication for every request, in the managed service's error shape.

With keys configured, a request must carry ``Authorization: Bearer <key>`` with one of them;
without keys (allowed only on a loopback bind, see :class:`ServerSettings.check`) nothing is checked.
A browser cannot send that header, so the dashboard's login page (``/login``) exchanges a key for an
HttpOnly, SameSite=Strict cookie (:data:`COOKIE`) that is accepted instead, on the dashboard's pages
only; a page request without either is redirected to the login page, an API request gets the 401.
The cookie holds :func:`session_token` of the key, never the key: whoever reads it cannot call the API.

Guessing is slowed down: a client (by address) that has sent :data:`MAX_FAILURES` wrong keys within
the last minute gets a 429 for any key, right or wrong, until its older failures leave that minute;
other clients are not affected.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import defaultdict, deque
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from openrft.net import authorized, bearer_token, cookie
from openrft.server.errors import ApiError, error_for
from openrft.server.uploads import is_signed_upload

COOKIE = "openrft_key"
OPEN_PATHS = ("/login", "/dashboard/static/")  # reachable without a key: the login page and its styles


MAX_FAILURES = 20  # wrong keys a client may send in a minute


class KeyFailures:
    """The wrong keys each client (by address) sent in the last minute: past :data:`MAX_FAILURES`,
    every key it sends is refused until the oldest failures are a minute old."""

    def __init__(self, window: float = 60.0, limit: int = MAX_FAILURES):
        self.window, self.limit = window, limit
        self.times: dict[str, deque[float]] = defaultdict(deque)

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try a key again (0: now)."""
        times, now = self.times.get(client), time.monotonic()
        while times and now - times[0] > self.window:
            times.popleft()
        return self.window - (now - times[0]) if times and len(times) >= self.limit else 0.0

    def add(self, client: str) -> None:
        self.times[client].append(time.monotonic())
        if len(self.times) > 10_000:  # many addresses: forget the ones with nothing recent
            for name in [k for k in self.times if self.wait(k) == 0.0 and not self.times[k]]:
                del self.times[name]


def session_token(key: str) -> str:
    """What the dashboard's cookie holds for ``key``: an HMAC-SHA256 under the key of a fixed label. It
    opens the dashboard's pages as long as the key is one of the server's (across restarts), and
    neither is the key nor gives it back."""
    return hmac.new(key.encode(), b"openrft dashboard session", hashlib.sha256).hexdigest()


def client_address(scope: Scope) -> str:
    return str((scope.get("client") or ("?",))[0])


def too_many_failures(seconds: float, scope: Scope | None = None) -> Response:
    """The 429 for a client past :data:`MAX_FAILURES` (a page for a browser, given the request's ``scope``)."""
    error = ApiError(429, f"too many wrong API keys from this address; try again in {int(seconds) + 1} s")
    return error.response_for(scope or {}, headers={"Retry-After": str(int(seconds) + 1)})


class BearerAuth:
    """ASGI middleware: a 401 ``UNAUTHENTICATED`` error for any HTTP request without a valid key."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], failures: KeyFailures | None = None):
        self.app, self.keys, self.failures = app, keys, failures or KeyFailures()
        self.sessions = tuple(session_token(key) for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or is_signed_upload(scope):  # token checked by its route
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        path = scope.get("path", "")
        # the dashboard's cookie opens its pages only: a page of another port of this host (same site
        # to a browser, so it sends the cookie) must not reach the API with it
        key_cookie = cookie(scope, COOKIE) if not path.startswith("/v1/") else None
        if (token or key_cookie) and (wait := self.failures.wait(client_address(scope))):
            await too_many_failures(wait, scope)(scope, receive, send)
            return
        known = authorized(token, self.keys) if token else authorized(key_cookie, self.sessions)
        if known or path.startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        to_login = (
            _to_login(scope, dict(scope.get("headers", [])))
            if token is None and not path.startswith("/v1/")
            else None
        )
        if to_login is not None:
            await to_login(scope, receive, send)
            return
        if token or key_cookie:
            self.failures.add(client_address(scope))
        why = "missing API key" if token is None else "invalid API key"
        error = error_for(
            str(scope.get("path", "")), 401, f"{why}: send the header 'Authorization: Bearer <key>'"
        )
        response = error.response(headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def server_keys(request: Any) -> tuple[str, ...]:
    """The API keys of the server handling ``request`` (none: nothing to log in to)."""
    settings = getattr(request.app.state, "settings", None)
    return tuple(getattr(settings, "api_keys", ()) or ())


def _to_login(scope: Scope, headers: dict[bytes, bytes]) -> Response | None:
    """Where a browser without a valid cookie goes: the login form, then back to the page it was on.
    A page is redirected; the page's own refresh (htmx) takes the whole page there (swapping the form
    into a table would leave it empty for good); a form posted after the session ended comes back to
    the page it was posted from. JSON endpoints and API calls get a 401 instead (None)."""
    if headers.get(b"hx-request") == b"true":
        back = _local(headers.get(b"hx-current-url", b"/"))
        return Response(status_code=401, headers={"HX-Redirect": f"/login?next={quote(back, safe='/')}"})
    if headers.get(b"content-type", b"").startswith((b"application/x-www-form", b"multipart/")):
        back = _local(headers.get(b"referer", b"/"))
    elif scope.get("method") == "GET" and not scope.get("path", "").endswith(
        "/metrics.json"
    ):  # a page's poll
        query = scope.get("query_string", b"").decode("latin-1")
        back = scope.get("path", "/") + (f"?{query}" if query else "")
    else:
        return None
    return RedirectResponse(f"/login?next={quote(back, safe='/')}", status_code=303)


def _local(url: bytes) -> str:
    """The path and query of a page's URL (what the login form may send the browser back to)."""
    parts = urlsplit(url.decode("latin-1"))
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


__all__ = [
    "BearerAuth",
    "COOKIE",
    "KeyFailures",
    "OPEN_PATHS",
    "client_address",
    "server_keys",
    "session_token",
    "too_many_failures",
]
