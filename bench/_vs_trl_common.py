"""Pieces shared by the two sides of ``bench/vs_trl.py`` (each side runs in its own process).

A side is started as ``python bench/_vs_trl_<side>.py SPEC.json RESULT.json``: it reads the
run's settings from the spec, trains, and writes one JSON result (atomically). Heavy imports
happen inside functions so the parent process, which only reads results, stays small (its
memory would otherwise show up in a child's peak RSS: Linux keeps ``ru_maxrss`` across exec).

Also runnable on its own for the machine's fp32 matmul rate::

    python bench/_vs_trl_common.py matmul --threads 2 --size 2048 RESULT.json
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The base-model parameters the FLOP estimate leaves out: the token embedding matrix
# (tied to the LM head in SmolLM2). Everything else a token passes through counts.
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_spec() -> tuple[dict[str, Any], Path]:
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} SPEC.json RESULT.json")
    return json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def path_parameters(model) -> tuple[int, int]:
    """(parameters on every token's path: all but the embedding matrix, LoRA parameters)."""
    path = lora = 0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:  # a tied LM head is the embedding matrix again
            continue
        seen.add(id(param))
        if "lora_" in name:
            lora += param.numel()
        if not any(part in name for part in EMBEDDING_NAMES):
            path += param.numel()
    return path, lora


def dataset_source(spec: dict[str, Any]) -> str:
    """The openrft dataset string: the task plus how many prompts to generate."""
    return f"{spec['task']},count={spec['num_prompts']}"


def ordered_prompts(spec: dict[str, Any], seed: int) -> list:
    """The built-in task's prompts in the order openrft's first epoch visits them.

    openrft draws the prompts of its rounds in ``epoch_order(n, 0, seed)``; TRL is given the
    same list in that order with shuffling off, so both train on the same prompts at each step.
    """
    from openrft.data import epoch_order, load_prompts

    prompts = list(load_prompts(dataset_source(spec), seed=seed))
    return [prompts[i] for i in epoch_order(len(prompts), 0, seed)]


def run_side(main: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Run one side: result on success, the error and its traceback tail on failure."""
    spec, out = read_spec()
    started = time.perf_counter()
    try:
        set_threads(spec["threads"])
        result = main(spec)
        result["ok"] = True
    except BaseException as exc:  # report anything, including KeyboardInterrupt and SystemExit
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["process_s"] = time.perf_counter() - started
    result["peak_rss_gb"] = peak_rss_gb()
    write_json(out, result)
    if not result["ok"]:
        sys.exit(1)


def matmul_rate(threads: int, size: int, repeats: int = 8) -> dict[str, Any]:
    """Median fp32 GFLOP/s of ``size x size @ size x size`` with ``threads`` torch threads."""
    import torch

    set_threads(threads)
    a_NN = torch.randn(size, size)
    b_NN = torch.randn(size, size)
    for _ in range(2):  # warm-up: thread pool start, first-touch pages
        a_NN @ b_NN
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a_NN @ b_NN
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"size": size, "threads": threads, "median_s": median, "gflops": 2 * size**3 / median / 1e9}


def _matmul_main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["matmul"])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write_json(args.out, {"ok": True, **matmul_rate(args.threads, args.size)})


if __name__ == "__main__":
    _matmul_main()
