"""Stopping a round's sampling part-way: what an engine's ``should_abort`` does to concurrent requests.

An engine that sends a round's requests concurrently (an inference endpoint, agent runs) waits for them
with :func:`gather_or_abort`: it asks ``should_abort`` every :data:`POLL_S` while they run and, once it
answers True, cancels every request still running and raises :class:`RolloutAborted`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from openrft.errors import RolloutAborted

POLL_S = 0.2


async def gather_or_abort(
    awaitables: Sequence[Awaitable[Any]], should_abort: Callable[[], bool] | None
) -> list[Any]:
    """``asyncio.gather(*awaitables)``, unless ``should_abort`` answers True first: then every one still
    running is cancelled (and awaited) and :class:`RolloutAborted` is raised."""
    gathered = asyncio.gather(*awaitables)
    if should_abort is None:
        return await gathered
    while True:
        done, _ = await asyncio.wait({gathered}, timeout=POLL_S)
        if done:
            return gathered.result()
        if should_abort():
            gathered.cancel()  # cancels each awaitable still running
            with contextlib.suppress(BaseException):
                await gathered
            raise RolloutAborted()


__all__ = ["POLL_S", "gather_or_abort"]
