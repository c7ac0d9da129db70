"""A job's JSONL logs read and cut in blocks (openrft.tracking.jsonl_files), and the running summaries
that read only what a file gained since the last look."""

from __future__ import annotations

import json
import os

import pytest

from openrft.tracking import jsonl_files
from openrft.tracking.jsonl_files import Folded, count_lines, cut_to, iter_jsonl, prefix_bytes
from openrft.tracking.sinks import JsonlSink


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(jsonl_files, "BLOCK", 7)  # lines cross block boundaries


def ends_torn(path) -> bool:
    """Whether ``path`` ends in a line without its newline."""
    data = path.read_bytes()
    return bool(data) and not data.endswith(b"\n")


def lines(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_lines_are_found_and_cut_in_blocks_and_a_torn_line_never_counts(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(lines({"step": 1}, {"step": 2}, {"step": 3}) + '{"step": 4, "tor')
    assert count_lines(path) == 3 and ends_torn(path)
    assert [row["step"] for _, _, row in iter_jsonl(path)] == [1, 2, 3]
    assert prefix_bytes(path, 2) == len(lines({"step": 1}, {"step": 2}))
    assert prefix_bytes(path, 9) == len(lines({"step": 1}, {"step": 2}, {"step": 3}))  # the torn one: no
    inode = path.stat().st_ino
    cut_to(path, prefix_bytes(path, 2))
    assert path.read_text() == lines({"step": 1}, {"step": 2}) and not ends_torn(path)
    assert path.stat().st_ino != inode  # a new file: readers holding an offset start again
    assert count_lines(tmp_path / "missing") == prefix_bytes(tmp_path / "missing", 3) == 0


def test_a_resumed_sink_keeps_exactly_its_checkpoints_lines(tmp_path):
    sink = JsonlSink(tmp_path)
    for step in range(1, 6):
        sink.log(step, {"reward/mean": step / 10})
        sink.log_rollouts(step, [{"completion": "é" * 5, "score": 1.0}, {"completion": "x", "score": 0.0}])
    saved = {"metrics": 3, "rollouts": 6}
    with open(sink.rollouts_path, "a") as handle:
        handle.write('{"step": 6, "completion": "cut sho')  # killed mid-write
    again = JsonlSink(tmp_path)
    assert again.position() == {"metrics": 5, "rollouts": 10}
    again.truncate_to(saved)
    assert again.position() == saved and not ends_torn(again.rollouts_path)
    assert [r["step"] for _, _, r in iter_jsonl(again.metrics_path)] == [1, 2, 3]
    assert [r["step"] for _, _, r in iter_jsonl(again.rollouts_path)] == [1, 1, 2, 2, 3, 3]


def test_a_folded_summary_reads_only_what_a_file_gained(tmp_path):
    path = tmp_path / "m.jsonl"
    seen = []

    def total(state: int, row: dict, start: int, end: int) -> int:
        seen.append(row["step"])
        return state + row["step"]

    folded = Folded(int, total)
    assert folded.get(path) == 0  # not there yet
    path.write_text(lines({"step": 1}, {"step": 2}) + '{"step": 3')
    assert folded.get(path) == 3 and seen == [1, 2]
    with open(path, "a") as handle:
        handle.write(', "x": 1}\n' + lines({"step": 4}))
    assert folded.get(path) == 10 and seen == [1, 2, 3, 4]  # the torn line, once whole, and the new one
    assert folded.get(path) == 10 and seen == [1, 2, 3, 4]  # nothing new: nothing read
    cut_to(path, prefix_bytes(path, 1))  # a resume cut the file back (a new file)
    with open(path, "a") as handle:
        handle.write(lines({"step": 5}, {"step": 6}, {"step": 7}))  # ... and it grew past the old size
    assert folded.get(path) == 1 + 5 + 6 + 7
    os.remove(path)
    assert folded.get(path) == 0


def test_a_steps_rollouts_are_read_alone(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    path.write_text(lines(*({"step": s, "i": i} for s in (2, 4, 4, 7) for i in range(2))))
    steps, step, rows = jsonl_files.rollouts_of_step(path, 4)
    assert steps == [2, 4, 7] and step == 4 and [r["i"] for r in rows] == [0, 1, 0, 1]
    assert jsonl_files.rollouts_of_step(path, 5)[1] == 7  # no rollouts there: the latest
    with open(path, "a") as handle:
        handle.write(lines({"step": 9, "i": 0}))
    assert jsonl_files.rollouts_of_step(path)[1:] == (9, [{"step": 9, "i": 0}])


def test_a_file_rewritten_under_the_same_inode_is_read_again(tmp_path):
    path = tmp_path / "m.jsonl"
    folded = Folded(int, lambda state, row, start, end: state + row["step"])
    path.write_text(lines({"step": 1}, {"step": 2}))
    assert folded.get(path) == 3
    with open(path, "w") as handle:  # the same inode, as a freed inode number can come back after a cut
        handle.write(lines({"step": 10}, {"step": 20}, {"step": 30}))
    assert folded.get(path) == 60  # not 3 + 30 from a stale offset
