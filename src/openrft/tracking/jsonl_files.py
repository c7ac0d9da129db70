"""A job's JSONL logs read and cut without holding them in memory.

``rollouts.jsonl`` grows with every round (every candidate's text, a few MB a round at the defaults),
and ``metrics.jsonl`` with every step, so nothing here reads a whole file at once:

- :func:`iter_jsonl` streams a file's objects with the byte offset after each line;
- :func:`count_lines` and :func:`prefix_bytes` find complete lines by scanning in blocks, so a resume
  can cut a file back to what its checkpoint saw (:func:`cut_to`) in constant memory;
- :class:`Folded` keeps a summary of each file (a fold over its lines) and reads only what was
  appended since the last call. A server polled every few seconds for a job's progress, charts or
  rollouts then costs the new lines, not the job's whole history. A file rewritten by a resume (a new
  file under the same name) or grown shorter is read again from its start.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from openrft.paths import atomic_replace

BLOCK = 1 << 20
State = TypeVar("State")


def iter_jsonl(path: Path, start: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(line start, line end, object)`` for each complete line from byte ``start`` that holds a JSON
    object. A torn last line (a crash mid-write) and lines that are not objects are skipped."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        for line in handle:
            begin, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError included
                continue
            if isinstance(row, dict):
                yield begin, offset, row


def count_lines(path: Path) -> int:
    """Newline-terminated lines in ``path`` (0 when it is missing)."""
    count = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK):
                count += block.count(b"\n")
    except FileNotFoundError:
        pass
    return count


def prefix_bytes(path: Path, lines: int) -> int:
    """The size of ``path``'s first ``lines`` complete lines (of all its complete lines when it has
    fewer: a torn last line is never part of it)."""
    offset = end = 0
    if lines <= 0:
        return 0
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            found = block.count(b"\n")
            if found >= lines:
                at = -1
                for _ in range(lines):
                    at = block.index(b"\n", at + 1)
                return offset + at + 1
            if found:
                lines -= found
                end = offset + block.rindex(b"\n") + 1
            offset += len(block)
    return end


def cut_to(path: Path, size: int) -> None:
    """Keep ``path``'s first ``size`` bytes, through a copy and an atomic rename (a crash leaves the old
    file or the new one, and readers see a new file rather than one shrinking under them)."""
    with atomic_replace(path, "wb") as out, open(path, "rb") as src:
        left = size
        while left > 0 and (block := src.read(min(BLOCK, left))):
            out.write(block)
            left -= len(block)


class Folded(Generic[State]):
    """Per file, ``state = step(state, row, start, end)`` over its complete lines, brought up to date on
    each :meth:`get` by reading only the bytes appended since (``start``/``end``: the line's bytes)."""

    def __init__(self, initial: Callable[[], State], step: Callable[[State, dict[str, Any], int, int], State],
                 capacity: int = 256):  # fmt: skip
        self.initial, self.step, self.capacity = initial, step, capacity
        self._files: dict[Path, tuple[tuple[int, int], int, State]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> State:
        with self._lock:
            try:
                stat = path.stat()
            except FileNotFoundError:
                self._files.pop(path, None)
                return self.initial()
            known = self._files.pop(path, None)
            # the same file as last time: same device and inode (a cut makes a new file, but the system
            # may give a freed inode number again), at least as long, and the same bytes before the offset
            if known is None or known[0] != (stat.st_dev, stat.st_ino, _tail(path, known[1])):
                known = ((stat.st_dev, stat.st_ino, b""), 0, self.initial())
            identity, offset, state = known
            for start, end, row in iter_jsonl(path, offset):
                state, offset = self.step(state, row, start, end), end
            if offset != known[1]:  # new lines: the bytes before the new offset
                identity = (stat.st_dev, stat.st_ino, _tail(path, offset))
            self._files[path] = (identity, offset, state)  # latest last
            while len(self._files) > self.capacity:
                self._files.pop(next(iter(self._files)))
            return state


def _tail(path: Path, offset: int, size: int = 64) -> bytes:
    """The ``size`` bytes before ``offset`` (fewer at the start; empty when the file is shorter)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, offset - size))
            data = handle.read(min(size, offset))
    except FileNotFoundError:
        return b""
    return data if len(data) == min(size, offset) else b"\0missing"


def read_spans(path: Path, spans: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The JSON objects at the byte ``spans`` (``(start, end)`` of whole lines) of ``path``."""
    rows = []
    with open(path, "rb") as handle:
        for start, end in spans:
            handle.seek(start)
            try:
                row = json.loads(handle.read(end - start).decode("utf-8"))
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _by_step(index: dict[int, list[tuple[int, int]]], row: dict[str, Any], start: int, end: int) -> dict:
    index.setdefault(int(row.get("step", 0) or 0), []).append((start, end))
    return index


# where each step's lines of a rollouts.jsonl are: {step: [(start, end), ...]}
ROLLOUT_INDEX: Folded[dict[int, list[tuple[int, int]]]] = Folded(dict, _by_step, capacity=32)


def rollouts_of_step(
    path: Path, step: int | None = None
) -> tuple[list[int], int | None, list[dict[str, Any]]]:
    """``(steps, step, rows)``: the steps a rollouts.jsonl has rollouts for, the one picked (``step`` if
    it has any, else the latest), and that step's rows in the order they were written."""
    index = ROLLOUT_INDEX.get(path)
    steps = sorted(index)
    if not steps:
        return [], None, []
    if step not in index:
        step = steps[-1]
    return steps, step, read_spans(path, index[step])


def ordered_rollouts(rows: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """``rows`` best first (``best``), worst first (``worst``), or as sampled; a missing or non-finite
    score (an invalid one) counts as the lowest."""
    if order not in ("best", "worst"):
        return list(rows)

    def score(row: dict[str, Any]) -> float:
        value = row.get("score")
        finite = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if finite else float("-inf")

    return sorted(rows, key=score, reverse=order == "best")


__all__ = ["Folded", "ROLLOUT_INDEX", "count_lines", "cut_to", "iter_jsonl", "ordered_rollouts",
           "prefix_bytes", "read_spans", "rollouts_of_step"]  # fmt: skip
