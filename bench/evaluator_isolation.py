"""The cost of running an evaluator in worker processes instead of the job's process.

    .venv/bin/python bench/evaluator_isolation.py [--calls 256] [--workers 8]

Scores the same completions with the built-in arithmetic evaluator (a pure function of the text) in
process and through :class:`openrft.evaluators.isolation.EvaluatorPool`, and prints the time per call
of each and their ratio. The pool's start (one interpreter per worker, importing the evaluator) is
reported apart from the steady-state calls.
"""

from __future__ import annotations

import argparse
import time

from openrft.data import load_prompts
from openrft.evaluators import load_evaluator, score_groups
from openrft.evaluators.isolation import EvaluatorPool
from openrft.records import Completion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    prompts = list(load_prompts(f"arithmetic:count={args.calls // 8}", seed=0))
    groups = [
        (
            p,
            [
                Completion(p.prompt_id, i, (1,), (2,), f"<answer>{i}</answer>", (-0.1,), "stop")
                for i in range(8)
            ],
        )
        for p in prompts
    ]
    evaluator = load_evaluator("arithmetic")
    start = time.perf_counter()
    score_groups(evaluator, groups)
    inline = (time.perf_counter() - start) / args.calls
    start = time.perf_counter()
    with EvaluatorPool(evaluator, workers=args.workers, timeout=60) as pool:
        pool.score_groups(groups[:1])
        started = time.perf_counter() - start
        start = time.perf_counter()
        pool.score_groups(groups)
        isolated = (time.perf_counter() - start) / args.calls
    print(f"in process:    {inline * 1e6:8.1f} us per call")
    print(
        f"worker pool:   {isolated * 1e6:8.1f} us per call ({args.workers} workers; starting them took {started:.2f} s)"
    )
    print(f"pool / in-process: {isolated / inline:.1f}x")


if __name__ == "__main__":
    main()
