"""Rollout throughput on Ray: 1 rollout actor against 2, on this machine, in one run.

A Ray instance is started here with ``--cpus`` CPUs (default: the core count). Each
configuration gets the whole machine: 1 actor with all the threads, then 2 actors with
half each (``--workers`` changes the list), with the same total number of sequences in
flight (``--concurrency``, shared between the actors). The in-process local engine is run
too, as the reference the actors should approach. Every configuration samples the same
prompts with the same seed, and sampling is seeded per (prompt, candidate), so they all
produce the same completions: the same work, token for token (the script checks it).
Throughput counts completion tokens per second of wall time for one ``generate`` call,
median of ``--repeats`` calls, after one warm-up call that also ships the adapter.

    .venv/bin/python bench/ray_rollout_scaling.py                     # embedded SmolLM2-135M
    .venv/bin/python bench/ray_rollout_scaling.py --prompts 64 --cpus 16 --workers 1 2 4 8

On 2 cores there is little to gain: two actors with one thread each do about what one
actor with two threads does (the point is that it runs; on a larger machine or a cluster
the actors add up). Measured on 2 shared CPU cores (other jobs running), the embedded
model, 8 prompts x n=4, max 48 tokens, 32 in flight, medians of 2 calls
(``bench/ray_rollout_scaling.py --repeats 2``):

    in-process 63.2 tok/s | 1 actor x 2 threads 62.7 tok/s | 2 actors x 1 thread 59.8 tok/s
    in-process 1.00x | 1 actor x 2 threads 0.99x | 2 actors x 1 thread 0.95x
    2 actors / 1 actor: 0.95x
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch

from openrft.distributed.engine import RayEngine, plan_workers
from openrft.distributed.worker import WorkerSpec
from openrft.models import EMBEDDED_MODEL, end_token_ids, load_model
from openrft.records import Prompt, SamplingParams
from openrft.rollout.local import LocalEngine
from openrft.train import policy as P


def prompts(count: int) -> list[Prompt]:
    return [
        Prompt(
            f"q{i}", ({"role": "user", "content": f"What is {7 * i + 3} + {11 * i + 5}? Explain briefly."},)
        )
        for i in range(count)
    ]


def timed(engine, batch: list[Prompt], params: SamplingParams, repeats: int) -> tuple[float, list]:
    """Median tokens/s over ``repeats`` calls (after a warm-up call) and the last call's completions."""
    engine.generate(batch[:2], params)
    rates, groups = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        groups = engine.generate(batch, params)
        elapsed = time.perf_counter() - start
        rates.append(sum(len(c.completion_token_ids) for g in groups for c in g) / elapsed)
    return statistics.median(rates), groups


def tokens(groups) -> list:
    return [[c.completion_token_ids for c in g] for g in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--concurrency", type=int, default=32, help="sequences in flight, all actors together"
    )
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    model, tokenizer = load_model(args.model)
    model = P.attach_lora(model, 8, seed=0)
    batch = prompts(args.prompts)
    params = SamplingParams(n=args.n, temperature=0.7, top_k=40, max_tokens=args.max_tokens, seed=1)
    torch.set_num_threads(args.cpus)
    rates: dict[str, float] = {}
    rates["in-process"], reference = timed(
        LocalEngine(model, tokenizer, max_concurrent_rollouts=args.concurrency), batch, params, args.repeats
    )
    print(f"in-process local engine, {args.cpus} threads: {rates['in-process']:.1f} tok/s", flush=True)

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        for wanted in args.workers:
            workers, per_actor = plan_workers(wanted, args.concurrency)
            threads = max(1, args.cpus // workers)
            spec = WorkerSpec(
                base_model=args.model,
                lora_config=model.peft_config[P.TRAINABLE],
                max_concurrent_rollouts=per_actor,
                stop_token_ids=end_token_ids(tokenizer, model),
                torch_threads=threads,
            )
            engine = RayEngine(model, tokenizer, spec, workers=workers, actor_options={"num_cpus": threads})
            try:
                name = f"{workers} actor{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}"
                rates[name], groups = timed(engine, batch, params, args.repeats)
            finally:
                engine.close()
            same = "same completions" if tokens(groups) == tokens(reference) else "COMPLETIONS DIFFER"
            print(f"{name}: {rates[name]:.1f} tok/s ({same} as in-process)", flush=True)
    finally:
        ray.shutdown()

    base = rates["in-process"]
    print(" | ".join(f"{name} {rate / base:.2f}x" for name, rate in rates.items()))
    actors = [name for name in rates if name != "in-process"]
    if len(actors) >= 2:
        print(
            f"{actors[-1].split(' x ')[0]} / {actors[0].split(' x ')[0]}: {rates[actors[-1]] / rates[actors[0]]:.2f}x"
        )


if __name__ == "__main__":
    main()
