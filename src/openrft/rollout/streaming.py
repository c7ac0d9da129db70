"""Streamed replies as they are sampled: the engine reports each decoding step's tokens
(:mod:`openrft.rollout.batching`), and each choice's text is sent as it grows.

:class:`TextDeltas` turns one choice's tokens into the text a client may see so far. It decodes
incrementally (a character split across tokens waits for its last byte), stops at the first stop string
or marker (a tool call's opening tag: calls stream through :mod:`openrft.rollout.call_deltas`), and holds
back a tail that may still become one, so that nothing sent is ever taken back. When the reply is done, :meth:`TextDeltas.rest`
gives what the finished answer's text holds beyond what was sent: the streamed pieces join to the text a
non-streamed request gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

from fastapi.responses import StreamingResponse

from openrft.rollout.batching import Tokens


class TextDeltas:
    """One choice's visible text, piece by piece.

    ``stops`` end the text and are left out of it (OpenAI's stop strings); ``kept_stops`` end it and stay in
    it; ``markers`` end what is sent as text (the rest comes with the finished answer); ``trim`` holds back
    trailing whitespace (text before a tool call loses it when the call is read out). ``stop_ids``: the
    tokens that end a reply, never part of its text (as in the answer sent whole).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        stops: tuple[str, ...] = (),
        kept_stops: tuple[str, ...] = (),
        markers: tuple[str, ...] = (),
        trim: bool = False,
        stop_ids: Collection[int] = (),
    ):
        self.tokenizer, self.trim, self.stops = tokenizer, trim, tuple(s for s in stops if s)
        self.stop_ids = frozenset(stop_ids)
        self.cuts = [(s, 0) for s in (*stops, *markers) if s] + [(s, len(s)) for s in kept_stops if s]
        self.held = [s for s in (*stops, *markers) if s]  # texts whose beginning is held back
        self.ids: list[int] = []
        self.prefix = 0  # token offsets of vLLM's incremental detokenization
        self.read = 0
        self.text = ""  # the decoded text so far (whole characters only)
        self.sent = 0  # characters of ``text`` already sent
        self.closed = False  # a stop or marker was reached: nothing more is sent before the end

    def push(self, token_ids: list[int]) -> str:
        """Take the newly sampled ``token_ids``; the text that may now be sent (often "")."""
        self.ids.extend(t for t in token_ids if t not in self.stop_ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        if self.closed:
            return ""
        end = self._sendable()
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def _sendable(self) -> int:
        """How far into ``text`` may be sent now (closing the stream at a stop or marker)."""
        text, end = self.text, len(self.text)
        for s, keep in self.cuts:  # nothing sent holds a stop or marker: search from there on
            at = text.find(s, max(0, self.sent - len(s)))
            if at >= 0 and at + keep < end:
                end, self.closed = at + keep, True
        if not self.closed:
            for s in self.held:  # a tail that could still become a stop or marker waits
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if text.endswith(s[:k], 0, end):
                        end -= k
                        break
        if self.trim:
            end = self.sent + len(text[self.sent : end].rstrip())
        return max(end, self.sent)

    def before_stop(self) -> str:
        """The text up to the first stop string, less a tail that may still become one: what a tool call
        being streamed may show (the finished reply is cut there)."""
        text = self.text
        end = min([len(text), *(at for s in self.stops if (at := text.find(s)) >= 0)])
        if end == len(text):
            for s in self.stops:
                end = min(end, next((end - k for k in range(min(len(s) - 1, end), 0, -1)
                                     if text.endswith(s[:k], 0, end)), end))  # fmt: skip
        return text[:end]

    @property
    def sent_text(self) -> str:
        return self.text[: self.sent]

    def rest(self, final: str | None) -> str:
        """What the finished answer's text ``final`` holds beyond what was sent. A reply whose calls
        were read out loses the leading whitespace sent before them; the rest then follows the rest."""
        final, sent = final or "", self.sent_text
        if final.startswith(sent):
            return final[len(sent) :]
        stripped = sent.lstrip()
        return final[len(stripped) :] if final.startswith(stripped) else ""


class LiveReply:
    """The link between a streamed request and its sampling: started once the request is accepted
    (before that, a refusal is an ordinary error answer), then fed each step's tokens."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Tokens | None] = asyncio.Queue()
        self.started = asyncio.Event()
        self.name = ""  # the model that answers

    def start(self, name: str) -> None:
        self.name = name
        self.started.set()

    def push(self, tokens: Tokens) -> None:
        self.queue.put_nowait(tokens)

    async def begun(self, task: asyncio.Future) -> bool:
        """Wait until the request is accepted and sampling (True), or ``task`` ended first (False)."""
        waiter = asyncio.ensure_future(self.started.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return self.started.is_set()

    async def steps(self, task: asyncio.Future) -> AsyncIterator[Tokens]:
        """Each step's tokens until ``task`` (the request) is done; every token arrives before its end."""
        task.add_done_callback(lambda _: self.queue.put_nowait(None))
        while (tokens := await self.queue.get()) is not None:
            yield tokens


DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The client closed its connection before its reply was ready (answered 499, which nobody reads)."""


async def unless_disconnected(http: Any, awaitable: Any) -> Any:
    """``awaitable``'s result, or :class:`ClientGone` once the client has left: the work is cancelled
    then, so an abandoned request stops taking decoding steps (as vLLM aborts one)."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await http.is_disconnected():
                task.cancel()
                raise ClientGone()
    except asyncio.CancelledError:
        task.cancel()
        raise


class LiveStream(StreamingResponse):
    """A server-sent event stream fed while ``task`` samples; once the response ends, however it ends (the
    client left mid-stream included), ``task`` is cancelled if still running: sampling for it stops."""

    def __init__(self, events: AsyncIterator[str], task: asyncio.Future):
        super().__init__(events, media_type="text/event-stream")
        self.task = task

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.task.done():
                self.task.cancel()


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The error object that ends a stream that has already begun (OpenAI sends ``{"error": {...}}``): a
    request's error (one with a 4xx ``status``) as it would have been answered, anything else a server error."""
    client = getattr(exc, "status", 500) < 500
    return {
        "message": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
        "type": "invalid_request_error" if client else "server_error",
        "param": getattr(exc, "param", None),
        "code": getattr(exc, "code", None),
    }


def settle(task: asyncio.Future) -> None:
    """Mark ``task``'s outcome as seen: a client that left mid-stream never reads it."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


__all__ = [
    "ClientGone",
    "LiveReply",
    "LiveStream",
    "TextDeltas",
    "settle",
    "stream_error",
    "unless_disconnected",
]
