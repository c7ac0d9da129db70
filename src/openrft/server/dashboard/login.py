"""The dashboard's login: a server with API keys lets a browser in with a key kept in a cookie.

``GET /login`` shows a one-field form; ``POST /login`` checks the key against the server's keys and
sets :data:`openrft.server.auth.COOKIE` to the key's session token (HttpOnly, SameSite=Strict, so other sites cannot send it;
Secure on HTTPS); wrong keys count towards the client's limit as the API's do;
``POST /logout`` clears it. Without keys configured there is nothing to log in to.
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from openrft.net import authorized
from openrft.server.auth import (
    COOKIE,
    KeyFailures,
    client_address,
    server_keys,
    session_token,
    too_many_failures,
)

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """A local path to go back to after logging in (never another site: browsers read ``/\\host`` and
    ``/<tab>/host`` as ``//host``, so backslashes and control characters are refused too)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return "/"
    return target


@router.get("/login", name="login")
async def login_form(request: Request, next: str = "/") -> Response:
    from openrft.server.dashboard.pages import render

    return render(
        request, "login.html", next=safe_next(next), keys=bool(server_keys(request)), can_log_out=False
    )


@router.post("/login")
async def login(request: Request, key: str = Form(""), next: str = Form("/")) -> Response:
    from openrft.server.dashboard.pages import render

    keys = server_keys(request)
    failures = getattr(request.app.state, "key_failures", None) or KeyFailures()
    client = client_address(request.scope)
    if keys and (wait := failures.wait(client)):
        return too_many_failures(wait, request.scope)
    if keys and not authorized(key.strip(), keys):
        failures.add(client)
        return render(
            request, "login.html", status_code=401, next=safe_next(next), keys=True, can_log_out=False,
            error="That key is not one of this server's API keys.",
        )  # fmt: skip
    response = RedirectResponse(safe_next(next), status_code=303)
    if keys:
        secure = request.url.scheme == "https"  # served with --ssl-certfile: never sent in the clear
        token = session_token(key.strip())  # not the key: the cookie cannot call the API
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/", secure=secure)
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


__all__ = ["router", "safe_next"]
