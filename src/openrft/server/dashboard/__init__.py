"""The web dashboard served at ``/``: server-rendered pages with small vendored front-end libraries.

The pages (:mod:`.pages`) read the job store and the job folders directly (:mod:`.data`); the
create form (:mod:`.forms`) checks its values as ``openrft rftj create`` does and submits through
the server's job API. htmx and uPlot are fetched from the npm registry by ``make vendor`` into
``static/vendor/`` (never committed); without them the pages still render, without live charts.
"""

from __future__ import annotations

from typing import Any

from fastapi.staticfiles import StaticFiles

from openrft.server.dashboard import login
from openrft.server.dashboard.pages import STATIC, router

STATIC_URL = "/dashboard/static"


def install(app: Any) -> None:
    """Add the dashboard's pages and its static files to ``app``."""
    app.include_router(router)
    app.include_router(login.router)
    app.mount(STATIC_URL, StaticFiles(directory=str(STATIC)), name="dashboard-static")


__all__ = ["install", "router", "STATIC_URL"]
