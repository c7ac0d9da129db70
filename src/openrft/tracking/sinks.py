"""Where metrics go: a JSONL file per job, W&B, or nowhere. The loop never needs an ``if``.

A sink receives one flat dict of namespaced metrics per optimizer step
(``reward/mean``, ``loss/policy``, ``clip/low_frac``, ``filter/zero_variance_groups``,
``time/rollout_s``, ...) and, now and then, a few sampled rollouts to show.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from openrft.paths import atomic_write_text
from openrft.tracking.jsonl_files import count_lines, cut_to, iter_jsonl, prefix_bytes


class MetricsSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class MultiSink:
    """Fans every call out to several sinks."""

    def __init__(self, *sinks: MetricsSink):
        self.sinks = [s for s in sinks if s is not None]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        for sink in self.sinks:
            sink.log_rollouts(step, rows)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def position(self) -> dict[str, int]:
        """The position of the first sink that keeps one (the job's JSONL files)."""
        for sink in self.sinks:
            if hasattr(sink, "position"):
                return sink.position()
        return {}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlSink:
    """``metrics.jsonl`` (one line per step) and ``rollouts.jsonl`` in a job folder.

    Each line is flushed and fsynced, so a killed job loses at most the line being written.
    :meth:`position` counts the complete lines of each file; a checkpoint records it, and a
    resumed job :meth:`truncate_to` it, so that every step appears exactly once however the
    job was stopped.
    """

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = directory / "metrics.jsonl"
        self.rollouts_path = directory / "rollouts.jsonl"
        self._paths = {"metrics": self.metrics_path, "rollouts": self.rollouts_path}
        self._lines = {name: count_lines(path) for name, path in self._paths.items()}

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self._paths[name], "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._lines[name] += 1

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._append("metrics", {"step": step, **{k: _clean(v) for k, v in metrics.items()}})

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self._append("rollouts", {"step": step, **row})

    def position(self) -> dict[str, int]:
        """Complete lines written so far, per file."""
        return dict(self._lines)

    def truncate_to(self, position: dict[str, int]) -> None:
        """Keep exactly the first ``position[name]`` complete lines of each file (a torn line goes too),
        reading and copying in blocks: a long job's rollouts take hundreds of MB."""
        for name, path in self._paths.items():
            if not path.is_file():
                self._lines[name] = 0
                continue
            size = prefix_bytes(path, position.get(name, 0))
            if size != path.stat().st_size:  # lines past the checkpoint, or a torn one
                cut_to(path, size)
            self._lines[name] = count_lines(path)

    def truncate_after(self, step: int) -> None:
        """Keep the lines of steps <= ``step`` (for checkpoints written before positions were recorded)."""
        for name, path in self._paths.items():
            if path.is_file():
                kept = [(a, b) for a, b, row in iter_jsonl(path) if row.get("step", 0) <= step]
                with open(path, "rb") as src:  # the kept lines, copied as written
                    text = b"".join(_span(src, a, b) for a, b in kept).decode("utf-8")
                atomic_write_text(path, text)
                self._lines[name] = len(kept)

    def close(self) -> None:
        pass


def _span(handle: Any, start: int, end: int) -> bytes:
    handle.seek(start)
    return handle.read(end - start)


# Keys that older versions wrote without a namespace, and their names now. Reading a metrics file
# through read_metrics renames them, so a job made before the rename (or resumed across it) reads
# like a new one.
LEGACY_METRIC_KEYS = {
    "epoch": "train/epoch",
    "round": "train/round",
    "optimizer_step": "train/optimizer_step",
    "lr": "train/lr",
    "tokens": "loss/tokens",
    "sequences": "loss/sequences",
}


def current_names(row: dict[str, Any]) -> dict[str, Any]:
    """One metrics line with any :data:`LEGACY_METRIC_KEYS` renamed."""
    return {LEGACY_METRIC_KEYS.get(key, key): value for key, value in row.items()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (torn last line skipped), keys as this version names them."""
    return [current_names(row) for row in read_jsonl(path)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line; a line that is not one is skipped (a line torn
    by a crash mid-write, even in the middle of a multi-byte character)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError included
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
