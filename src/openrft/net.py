"""Which addresses and ``Host`` headers name this machine only (both servers' local-only checks)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


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


__all__ = ["is_loopback", "host_name", "foreign_host"]
