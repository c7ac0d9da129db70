"""Which addresses and ``Host`` headers name this machine only (both servers' local-only checks)."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def bare_host(host: str) -> str:
    """``host`` as a server binds it: ``[::1]`` (as URLs write an IPv6 address) -> ``::1``."""
    host = host.strip()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def host_name(header: str) -> str:
    """The name or address in a ``Host`` header (``[::1]:8321`` -> ``::1``)."""
    try:
        return urlsplit(f"//{header}").hostname or header
    except ValueError:
        return header


def foreign_host(header: str) -> bool:
    """Whether a request's ``Host`` names something other than this machine: what a page whose own name
    was pointed at 127.0.0.1 (DNS rebinding) sends. A request without the header (HTTP/1.0) is not."""
    return bool(header) and not is_loopback(host_name(header))


def bearer_token(scope: Any) -> str | None:
    """The key of an ASGI request's ``Authorization: Bearer KEY`` header, if it has one."""
    from fastapi.security.utils import get_authorization_scheme_param
    from starlette.datastructures import Headers

    scheme, token = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def cookie(scope: Any, name: str) -> str | None:
    """The value of an ASGI request's cookie ``name``, if it carries one."""
    from starlette.datastructures import Headers
    from starlette.requests import cookie_parser

    return cookie_parser(Headers(scope=scope).get("cookie", "")).get(name) or None


def authorized(token: str | None, keys: Iterable[str]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time with every key (both servers' check)."""
    if token is None:
        return False
    return any([hmac.compare_digest(token.encode(), key.encode()) for key in keys])  # a list: no early exit


def listen_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port``, as one line naming the flag (a name that does not
    resolve, an address this machine does not have, a port in use), or None: checked before a model is
    loaded, so that a typo does not fail minutes later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # uvicorn's choice of socket
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare_host(host), port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as exc:
        return f"--host {host}: no such address or host name ({getattr(exc, 'strerror', None) or exc})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            return f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})"
    return None


__all__ = [
    "is_loopback",
    "bare_host",
    "url_host",
    "host_name",
    "foreign_host",
    "listen_problem",
    "bearer_token",
    "cookie",
    "authorized",
]
