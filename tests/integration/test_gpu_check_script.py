"""bench/gpu_check.py, the script a GPU session runs once, works: its toy shape on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_its_toy_shape_on_the_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    compiler = shutil.which("g++") is not None  # inductor compiles C++ on a CPU
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
               "--compiled-sizes", *(["tiny"] if compiler else [])]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "measured bf16 matmul peak" in out and "[tiny] rollouts" in out and "ratio" in out
    assert (
        "copy bandwidth" in out
        and "[tiny] decode step, 1 rows" in out
        and "[tiny] decode step, 16 rows" in out
    )
    assert ("[tiny] decode step over a static cache, 16 rows" in out and "compiled" in out) or not compiler
    assert "[tiny] compiled engine over a LoRA model (compiled: True)" in out or not compiler
    assert "FAILED" not in out, out
    assert "[tiny] RFT step:" in out and "[tiny] RFT step (gradient checkpointing):" in out and "MFU" in out
