"""The web dashboard served at ``/``: server-rendered pages with small vendored front-end libraries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter()


def install(app: Any) -> None:
    """Add the dashboard's pages (and its static files) to ``app``."""
    app.include_router(router)
