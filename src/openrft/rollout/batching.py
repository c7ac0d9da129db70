"""The serving batcher: requests that arrive within a few milliseconds with the same sampling settings
are decoded in one engine call, and a streamed request is told its tokens as they are sampled."""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openrft.records import Completion

# ``((prompt index, candidate index), token id)`` pairs of one decoding step, prompt indexes the request's own
Tokens = list[tuple[tuple[int, int], int]]


@dataclass
class _Pending:
    key: tuple
    prompts: list[tuple[str, list[int]]]
    future: asyncio.Future = field(repr=False)
    sink: Callable[[Tokens], None] | None = None  # called in the event loop with each step's tokens


class Batcher:
    """Collects requests for ``window`` seconds and decodes those with equal settings together through
    ``host.generate(key, prompts, on_tokens, cancelled)`` (``on_tokens`` only when a request in the batch
    streams). A request whose caller stopped waiting (its client left: the awaiting task was cancelled)
    is not decoded, or, once decoding, is named by ``cancelled()`` so the engine ends its rows.

    Every engine call runs on one thread of the batcher's own: a compiled decoding step's CUDA graphs
    belong to the thread that recorded them (PyTorch keeps one graph tree and memory pool per thread),
    so calls spread over a pool's threads would each record, and hold, their own."""

    def __init__(self, host: Any, window: float):
        self.host, self.window = host, window
        self.pending: list[_Pending] = []
        self.worker: asyncio.Task | None = None
        self.thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="openrft-decode"
        )

    async def submit(
        self, key: tuple, prompts: list[tuple[str, list[int]]], sink: Callable[[Tokens], None] | None = None
    ) -> list[list[Completion]]:
        """Each prompt's completions; ``sink``, when given, gets the request's tokens as they are sampled
        (in the event loop, all of them before this returns)."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(key, prompts, future, sink))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.pending:
            await asyncio.sleep(self.window)
            batch, self.pending = self.pending, []
            groups: dict[tuple, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for key, waiting in groups.items():
                items = [item for item in waiting if not item.future.done()]  # the rest were abandoned
                if not items:
                    continue
                prompts = [p for item in items for p in item.prompts]
                on_tokens = _dispatcher(items, asyncio.get_running_loop())
                try:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self.thread, self.host.generate, key, prompts, on_tokens, _abandoned(items)
                    )
                except Exception as exc:  # handed to each waiting request
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                offset = 0
                for item in items:
                    if not item.future.done():
                        item.future.set_result(results[offset : offset + len(item.prompts)])
                    offset += len(item.prompts)


def _abandoned(items: list[_Pending]) -> Callable[[], set[int]]:
    """The engine's ``cancelled``: the batch's prompt indexes whose request stopped waiting. Read from the
    decoding thread: a future's cancelled state is one attribute, set once."""
    spans, offset = [], 0
    for item in items:
        spans.append((item, range(offset, offset + len(item.prompts))))
        offset += len(item.prompts)

    def cancelled() -> set[int]:
        return {p for item, span in spans if item.future.cancelled() for p in span}

    return cancelled


def _dispatcher(items: list[_Pending], loop: asyncio.AbstractEventLoop) -> Callable[[Tokens], None] | None:
    """The engine's ``on_tokens`` for one batch: each step's tokens, split by request and renumbered to
    the request's own prompts, handed to the streaming requests' sinks in the event loop. None when no
    request in the batch streams (the engine then skips the reporting)."""
    if all(item.sink is None for item in items):
        return None
    starts = []
    offset = 0
    for item in items:
        starts.append(offset)
        offset += len(item.prompts)

    def on_tokens(tokens: Tokens) -> None:
        per_item: dict[int, Tokens] = {}
        for (prompt, candidate), token in tokens:
            k = bisect.bisect_right(starts, prompt) - 1
            if items[k].sink is not None:
                per_item.setdefault(k, []).append(((prompt - starts[k], candidate), token))
        for k, part in per_item.items():
            loop.call_soon_threadsafe(items[k].sink, part)  # type: ignore[arg-type]

    return on_tokens


__all__ = ["Batcher", "Tokens"]
