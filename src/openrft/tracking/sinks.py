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


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlSink:
    """``metrics.jsonl`` (one line per step) and ``rollouts.jsonl`` in a job folder.

    Each line is flushed and fsynced, so a killed job loses at most the line being written;
    :meth:`truncate_after` drops lines past a checkpoint when a job resumes.
    """

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = directory / "metrics.jsonl"
        self.rollouts_path = directory / "rollouts.jsonl"

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._append(self.metrics_path, {"step": step, **{k: _clean(v) for k, v in metrics.items()}})

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self._append(self.rollouts_path, {"step": step, **row})

    def truncate_after(self, step: int) -> None:
        for path in (self.metrics_path, self.rollouts_path):
            if path.is_file():
                kept = [line for line in read_jsonl(path) if line.get("step", 0) <= step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        pass


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a torn last line (a crash mid-write)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
