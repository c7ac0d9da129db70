"""``openrft evaluate`` stopped with SIGTERM stops the worker processes that run the user's code, even one
stuck inside a long computation (where its own watch of the parent never gets a turn): they used to
be left running, at full CPU, after the command had gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BUSY = {
    "type": "python",
    "name": "busy",
    "source": "def grade(sample, item):\n    x = 9 ** 9 ** 9\n    return 1.0",
}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, not reaped yet


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_sigterm_stops_the_evaluator_workers_with_the_command(tmp_path):
    rows, responses = tmp_path / "rows.jsonl", tmp_path / "responses.jsonl"
    rows.write_text(json.dumps({"id": "1", "messages": [{"role": "user", "content": "q"}]}) + "\n")
    responses.write_text(json.dumps({"prompt_id": "1", "response": "a"}) + "\n")
    env = {**os.environ, "OPENRFT_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-c", "import sys; from openrft.cli import main; sys.exit(main(sys.argv[1:]))",
               "evaluate", "--dataset", str(rows), "--evaluator", json.dumps(BUSY), "--responses", str(responses),
               "--timeout", "600"]  # fmt: skip
    parent = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        assert _wait(lambda: bool(workers.extend(_children(parent.pid)) or workers), 120), "no worker started"
        time.sleep(2)  # the worker is inside grade(): 9 ** 9 ** 9 holds the interpreter
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=60)
        assert parent.returncode == 130
        assert _wait(lambda: all(_gone(w) for w in workers), 30), f"workers left running: {workers}"
    finally:
        parent.kill()
        for worker in workers:
            if not _gone(worker):
                os.kill(worker, signal.SIGKILL)
