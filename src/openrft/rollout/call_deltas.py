"""Tool calls streamed as they are written, as OpenAI and vLLM stream them: a call's id and name once its
name is read, then its arguments piece by piece.

The arguments a finished reply carries are ``json.dumps(arguments, ensure_ascii=False)`` of what the model
wrote (:class:`openrft.rollout.chat.HermesFormat`), not the model's own spacing. So that the pieces join to
exactly that text, :class:`JsonPrefix` reads the JSON as it grows and writes the same value the way
``json.dumps`` would, as far as it is settled: whitespace is dropped and separators written as ``", "``
and ``": "``, each string character is written as ``json.dumps`` escapes it, and a number or literal
(``true``, ``null`` ...) waits until it ends. Since ``json.dumps`` writes a value's parts in the order they
were read, what is written never has to be taken back.

:class:`CallDeltas` finds each call's block in a choice's text, feeds its JSON to a :class:`JsonPrefix` and
sends a call only once its ``arguments`` is seen to be an object (anything else is not a readable call).
When the reply is done, :meth:`CallDeltas.finish` sends what each call's final arguments hold beyond what
was sent, and whole the calls that were not streamed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

_WS = " \t\n\r"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_CLOSERS = {"}": "{", "]": "["}


class JsonPrefix:
    """A JSON text read as it grows, written again as ``json.dumps(..., ensure_ascii=False)`` writes its
    value (:attr:`text`, only ever extended). ``spans`` holds, for each key of the outermost object, where
    its value's text starts and ends (None while it is being read). ``broken``: the text is not JSON."""

    def __init__(self) -> None:
        self.text = ""
        self.stack: list[str] = []  # the open objects ("{") and arrays ("[")
        self.expect = "value"  # value, item-or-end, key, key-or-end, colon, next, end
        self.string: list[str] | None = None  # the characters of the string being read
        self.is_key = False
        self.escape: str | None = None  # the escape being read, after its backslash
        self.high: int | None = None  # a high surrogate waiting for its low half
        self.bare = ""  # the number or literal being read
        self.key: str | None = None  # the outermost object's current key
        self.spans: dict[str, list[int | None]] = {}
        self.broken = False

    def feed(self, raw: str) -> None:
        for ch in raw:
            if self.broken:
                return
            try:
                self._char(ch)
            except ValueError:
                self.broken = True

    def value_text(self, key: str) -> str | None:
        """The outermost object's value under ``key`` as written so far; None before it begins."""
        span = self.spans.get(key)
        return None if span is None else self.text[span[0] : span[1]]

    def done(self, key: str) -> bool:
        span = self.spans.get(key)
        return span is not None and span[1] is not None

    def _char(self, ch: str) -> None:
        if self.string is not None:
            self._string_char(ch)
            return
        if self.bare:
            if ch not in _WS and ch not in ",]}":
                self.bare += ch
                return
            self._end_bare()
        if ch in _WS:
            return
        expect = self.expect
        if expect in ("value", "item-or-end"):
            if ch == "]" and expect == "item-or-end":
                self._close(ch)
            else:
                self._begin_value(ch)
        elif expect in ("key", "key-or-end"):
            if ch == "}" and expect == "key-or-end":
                self._close(ch)
            elif ch == '"':
                self.string, self.is_key, self.text = [], True, self.text + '"'
            else:
                raise ValueError(ch)
        elif expect == "colon" and ch == ":":
            self.text, self.expect = self.text + ": ", "value"
        elif expect == "next" and ch == ",":
            self.text, self.expect = self.text + ", ", "key" if self.stack[-1] == "{" else "value"
        elif expect == "next" and ch in _CLOSERS:
            self._close(ch)
        else:
            raise ValueError(ch)

    def _begin_value(self, ch: str) -> None:
        if self.stack == ["{"] and self.key is not None:
            self.spans[self.key] = [len(self.text), None]
        if ch in "{[":
            self.stack.append(ch)
            self.text += ch
            self.expect = "key-or-end" if ch == "{" else "item-or-end"
        elif ch == '"':
            self.string, self.is_key, self.text = [], False, self.text + '"'
        elif ch in "-0123456789tfnNI":  # numbers, true, false, null (json.loads reads NaN, Infinity too)
            self.bare = ch
        else:
            raise ValueError(ch)

    def _value_done(self) -> None:
        if self.stack == ["{"] and self.key is not None and self.key in self.spans:
            span = self.spans[self.key]
            if span[1] is None:
                span[1] = len(self.text)
        self.expect = "next" if self.stack else "end"

    def _close(self, ch: str) -> None:
        if not self.stack or self.stack[-1] != _CLOSERS[ch]:
            raise ValueError(ch)
        self.stack.pop()
        self.text += ch
        self._value_done()

    def _end_bare(self) -> None:
        value = json.loads(self.bare)  # a JSONDecodeError is a ValueError
        self.bare = ""
        self.text += json.dumps(value)
        self._value_done()

    def _string_char(self, ch: str) -> None:
        if self.escape is not None:
            self.escape += ch
            if self.escape[0] == "u":
                if len(self.escape) == 5:
                    code, self.escape = int(self.escape[1:], 16), None
                    self._add_code(code)
            elif ch in _ESCAPES:
                self.escape = None
                self._add(_ESCAPES[ch])
            else:
                raise ValueError(ch)
        elif ch == "\\":
            self.escape = ""
        elif ch == '"':
            self._flush_high()
            self._end_string()
        elif ord(ch) < 0x20:  # json.loads refuses raw control characters in strings
            raise ValueError(ch)
        else:
            self._add(ch)

    def _add_code(self, code: int) -> None:
        if 0xD800 <= code < 0xDC00:
            self._flush_high()
            self.high = code
        elif 0xDC00 <= code < 0xE000 and self.high is not None:
            pair = 0x10000 + ((self.high - 0xD800) << 10) + (code - 0xDC00)
            self.high = None
            self._add(chr(pair))
        else:
            self._add(chr(code))

    def _flush_high(self) -> None:
        if self.high is not None:
            high, self.high = self.high, None
            self._add(chr(high))

    def _add(self, ch: str) -> None:
        self._flush_high()
        assert self.string is not None
        self.string.append(ch)
        self.text += json.dumps(ch, ensure_ascii=False)[1:-1]

    def _end_string(self) -> None:
        assert self.string is not None
        text, self.string = "".join(self.string), None
        self.text += '"'
        if self.is_key:
            if self.stack == ["{"]:
                self.key = text
            self.expect = "colon"
        else:
            self._value_done()


@dataclass
class Settled:
    """A finished call's place in the stream: its ``index``, what is ``rest`` of its arguments, or
    ``whole`` when it was not streamed (sent whole at the end)."""

    index: int
    rest: str
    whole: bool


class _Call:
    """One call block: its JSON, and what was sent of it (its stream index once its header went)."""

    def __init__(self) -> None:
        self.json = JsonPrefix()
        self.index: int | None = None
        self.sent = 0  # characters of the arguments sent
        self.name: str | None = None
        self.closed = False  # its end tag was read: the reply reads this block as it is now


class CallDeltas:
    """A choice's tool calls as OpenAI's streamed ``tool_calls`` deltas, written by ``start`` ... ``end``
    blocks holding ``{"name": ..., "arguments": {...}}`` (the Hermes format)."""

    def __init__(self, start: str, end: str):
        self.start, self.end = start, end
        self.calls: list[_Call] = []
        self.at = 0  # how far the text was read
        self.inside = False
        self.streamed = 0  # calls whose header went

    def update(self, text: str) -> list[dict[str, Any]]:
        """The deltas that ``text`` (the choice's text so far) adds: a header ``{"index", "id", "type",
        "function": {"name", "arguments": ""}}`` for a call whose name was read, then its arguments. An
        arguments object keeps its closing brace until its block's end tag is read and the block reads as
        a call (each block is read on its own), so a call that turns out unreadable (cut short, a missing
        brace) leaves a client arguments that do not parse, and no framework runs it; a call is whole
        before the next one's header, as OpenAI streams them (the SDK's stream helper relies on it)."""
        self._read(text)
        out = []
        for call in self.calls:
            if call.json.broken:  # not a call the reply will hold
                continue
            arguments = call.json.value_text("arguments")
            if call.index is None:
                if not self._ready(call, arguments):
                    break  # calls are announced in the order written: a later one waits for this one
                call.index, self.streamed = self.streamed, self.streamed + 1
                header = {"name": call.name, "arguments": ""}
                out.append({"index": call.index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": header})  # fmt: skip
            whole = call.closed and self._readable(call)
            shown = len(arguments or "") - (0 if whole else call.json.done("arguments"))
            if shown > call.sent:
                out.append({"index": call.index, "function": {"arguments": arguments[call.sent : shown]}})  # type: ignore[index]
                call.sent = shown
        return out

    def finish(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The deltas that end the stream, given the finished reply's ``calls``: the rest of each streamed
        call's arguments, and each call that was not streamed, whole (under an index of its own)."""
        out = []
        for call, settled in zip(calls, self.settle(calls), strict=True):
            if settled.whole:
                out.append({"index": settled.index, **call})
            elif settled.rest:
                out.append({"index": settled.index, "function": {"arguments": settled.rest}})
        return out

    def settle(self, calls: list[dict[str, Any]]) -> list[Settled]:
        """Where each of the finished reply's ``calls`` stands in the stream. The reply holds the readable
        blocks in order; each is matched with its streamed call (what is left of its arguments), or, not
        streamed, gets the next index after the streamed ones. A streamed call that was not readable in
        the end keeps its index, and nothing more is sent of it (:meth:`unreadable`)."""
        readable = [c for c in self.calls if self._readable(c)]
        fresh, out = self.streamed, []
        for n, call in enumerate(calls):
            function = call["function"]
            mine = readable[n] if n < len(readable) else None
            if mine is None or mine.index is None:
                out.append(Settled(fresh, "", True))
                fresh += 1
                continue
            sent = (mine.json.value_text("arguments") or "")[: mine.sent]
            goes_on = mine.name == function["name"] and function["arguments"].startswith(sent)
            out.append(Settled(mine.index, function["arguments"][len(sent) :] if goes_on else "", False))
        return out

    def finished(self, index: int) -> tuple[str, str] | None:
        """The name and whole arguments of the streamed call at ``index`` once it is done (its block closed,
        readable and all sent), else None."""
        for call in self.calls:
            if call.index == index and call.closed and self._readable(call):
                arguments = call.json.value_text("arguments") or ""
                return (call.name or "", arguments) if call.sent == len(arguments) else None
        return None

    def unreadable(self) -> list[tuple[int, str, str]]:
        """The streamed calls the reply could not read: (index, name, the arguments sent)."""
        return [(c.index, c.name or "", (c.json.value_text("arguments") or "")[: c.sent])
                for c in self.calls if c.index is not None and not self._readable(c)]  # fmt: skip

    def _readable(self, call: _Call) -> bool:
        """Whether the reply reads ``call``'s block as a call: whole JSON, a name, arguments an object."""
        if call.json.broken or call.json.expect != "end":
            return False
        arguments = call.json.value_text("arguments")
        self._ready(call, arguments)
        return call.name is not None and (arguments is None or arguments.startswith("{"))

    def _ready(self, call: _Call, arguments: str | None) -> bool:
        """Whether ``call`` may be announced: its name was read and its arguments begin as an object."""
        if call.name is None and call.json.done("name"):
            name = json.loads(call.json.value_text("name") or "null")
            call.name = name if isinstance(name, str) else None
            if call.name is None:
                call.json.broken = True  # the reply cannot read this call: never sent as streamed
        return call.name is not None and bool(arguments) and arguments[0] == "{"  # type: ignore[index]

    def _read(self, text: str) -> None:
        while True:
            if not self.inside:
                at = text.find(self.start, self.at)
                if at < 0:  # the next search starts where an opening tag could still begin
                    self.at = max(self.at, len(text) - len(self.start) + 1)
                    return
                self.calls.append(_Call())
                self.at, self.inside = at + len(self.start), True
            end = text.find(self.end, self.at)
            if end >= 0:
                self.calls[-1].json.feed(text[self.at : end])
                self.calls[-1].closed = True
                self.at, self.inside = end + len(self.end), False
                continue
            upto = len(text)  # a tail that could still become the end tag waits
            for k in range(min(len(self.end) - 1, upto - self.at), 0, -1):
                if text.endswith(self.end[:k]):
                    upto -= k
                    break
            self.calls[-1].json.feed(text[self.at : upto])
            self.at = upto
            return


__all__ = ["CallDeltas", "JsonPrefix", "Settled"]
