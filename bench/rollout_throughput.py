"""Rollout throughput: openrft's LocalEngine against plain ``model.generate``, in one run.

Both sample the same model (the embedded SmolLM2-135M-Instruct by default) on the same
chat prompts with the same n, temperature, top-k, top-p and max output tokens, keeping
the same number of sequences in flight (``--concurrency``; ``generate`` gets
``concurrency / n`` prompts per call with ``num_return_sequences=n``). Throughput counts
the useful completion tokens, up to and including the end-of-turn token, per second
of wall time. The two are run alternately ``--repeats`` times; medians are reported.

Each rate is also printed as a share of the matmul-bound limit (the fp32 peak of a 2048^3 product
over the FLOPs of a token's linear layers). The last live-model run also records the batch size of
every forward pass, and the linear layers alone are then timed at those sizes. That is the best any fp32
engine could do with the same batches: no attention, no sampling, no Python.

    .venv/bin/python bench/rollout_throughput.py                      # arithmetic prompts
    .venv/bin/python bench/rollout_throughput.py --gsm8k /path/to/gsm8k/train.jsonl

Measured on 2 quiet CPU cores, n=8, T=0.7, top-k 40 (defaults): openrft 120.8 tok/s, generate
29.8 tok/s, 4.06x. Earlier, on 2 shared cores (other jobs running; OMP_WAIT_POLICY=PASSIVE):

    24 prompts, max 256 tokens, 64 in flight:  openrft 51.9 tok/s, generate 15.5 tok/s, 3.34x
    16 prompts, max 128 tokens, 32 in flight:  openrft 25.3 tok/s, generate 13.7 tok/s, 1.85x

The gain grows with the spread of response lengths (generate keeps decoding finished rows
until the longest in its batch ends) and with the number of prompts per call (the last,
longest responses of a call decode in a small batch, which costs nearly as much per step).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch

from openrft.models import EMBEDDED_MODEL, end_token_ids, load_model
from openrft.records import Prompt, SamplingParams
from openrft.rollout.inference_copy import time_linear_passes
from openrft.rollout.local import LocalEngine


def arithmetic_prompts(count: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(["+", "-", "*"])
        messages = ({"role": "user", "content": f"What is {a} {op} {b}? Give the answer as a number."},)
        prompts.append(Prompt(f"arith-{i}", messages))
    return prompts


def gsm8k_prompts(path: str, count: int, seed: int) -> list[Prompt]:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rng = random.Random(seed)
    picked = rng.sample(rows, count)
    return [
        Prompt(f"gsm8k-{i}", ({"role": "user", "content": row["question"]},)) for i, row in enumerate(picked)
    ]


def run_openrft(model, tokenizer, prompts, params, concurrency, *, copy: bool = True) -> tuple[int, float]:
    """The local engine; with ``copy``, sampling its inference copy as a CPU job does (built inside the timing)."""
    start = time.perf_counter()
    engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=concurrency, inference_copy=copy)
    groups = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return sum(len(c.completion_token_ids) for g in groups for c in g), elapsed


def run_openrft_live(model, tokenizer, prompts, params, concurrency) -> tuple[int, float]:
    """The local engine sampling the given model itself (no copy: how it samples on a GPU)."""
    return run_openrft(model, tokenizer, prompts, params, concurrency, copy=False)


def matmul_peak() -> float:
    """fp32 FLOP/s of a 2048^3 product: the better of torch's default mm and oneDNN with a prepacked weight."""
    a, w = torch.randn(2048, 2048), torch.randn(2048, 2048)
    packed = torch.ops.mkldnn._reorder_linear_weight(w) if torch.backends.mkldnn.is_available() else None
    candidates = [lambda: torch.nn.functional.linear(a, w)]
    if packed is not None:
        candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = float("inf")
    for fn in candidates:
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best = min(best, statistics.median(times))
    return 2 * 2048**3 / best


def flops_per_token(model) -> int:
    """2 x the weights every decoded token multiplies (all linear layers, the LM head included);
    attention over the cache and the prompts' prefill are left out, so the fraction below is a floor."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


class StepLog:
    """The batch sizes of a run's forward passes: decoding steps (one token per row) and prefills."""

    def __init__(self, model):
        self.decode_rows: list[int] = []  # rows of each decoding step
        self.prefill_tokens: list[tuple[int, int]] = []  # (prompts, padded tokens) of each prefill
        self.handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        rows, length = input_ids.shape
        if length == 1:
            self.decode_rows.append(rows)
        else:
            self.prefill_tokens.append((rows, rows * length))

    def close(self) -> None:
        self.handle.remove()


def linear_bound(model, log: StepLog, peak: float) -> tuple[float, float]:
    """Seconds the linear layers alone need for a run's passes: ``(decoding, prefill)``.

    Decoding steps are timed: one pass over every linear layer at each batch size the run used
    (the better of plain and prepacked weights, best of three), summed over its steps. Prefills,
    large products, are counted at the peak rate (their LM head sees only the last positions).
    Nothing else a step does (attention over the cache, norms, sampling) is counted, so no engine
    sampling these batch sizes in fp32 can beat this time.
    """
    sizes = tuple(sorted(set(log.decode_rows)))
    plain, packed = time_linear_passes(model, rows=sizes) if sizes else ({}, {})
    decoding = sum(min(plain[r], packed[r]) for r in log.decode_rows)
    head = model.get_output_embeddings().weight.numel()
    body = flops_per_token(model) // 2 - head
    prefill = sum(2 * (tokens * body + rows * head) for rows, tokens in log.prefill_tokens) / peak
    return decoding, prefill


def run_generate(model, tokenizer, prompts, params, concurrency) -> tuple[int, float]:
    """``model.generate`` over batches of ``concurrency // n`` prompts (left padding)."""
    stops = list(end_token_ids(tokenizer, model))
    per_call = max(1, concurrency // params.n)
    tokenizer.padding_side = "left"
    tokens = 0
    start = time.perf_counter()
    for lo in range(0, len(prompts), per_call):
        texts = [
            tokenizer.apply_chat_template(list(p.messages), add_generation_prompt=True, tokenize=False)
            for p in prompts[lo : lo + per_call]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                max_new_tokens=params.max_tokens,
                num_return_sequences=params.n,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        for row in new.tolist():
            ends = [i for i, t in enumerate(row) if t in stops]
            tokens += ends[0] + 1 if ends else len(row)
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--gsm8k", metavar="JSONL", help="use GSM8K questions from this file")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64, help="sequences in flight (both sides)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    prompts = (
        gsm8k_prompts(args.gsm8k, args.prompts, args.seed)
        if args.gsm8k
        else arithmetic_prompts(args.prompts, args.seed)
    )
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    print(
        f"model={args.model} prompts={len(prompts)} ({'gsm8k' if args.gsm8k else 'arithmetic'}) n={args.n} "
        f"T={args.temperature} top_k={args.top_k} top_p={args.top_p} max_tokens={args.max_tokens} "
        f"concurrency={args.concurrency} threads={torch.get_num_threads()} "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    peak, per_token = matmul_peak(), flops_per_token(model)
    limit = peak / per_token
    print(
        f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, {per_token / 1e6:.0f} MFLOP per token: "
        f"matmul-bound limit {limit:.0f} tokens/s"
    )
    runs = (("openrft", run_openrft), ("live", run_openrft_live), ("generate", run_generate))
    rates: dict[str, list[float]] = {name: [] for name, _ in runs}
    for repeat in range(args.repeats):
        for name, fn in runs:
            logged = name == "live" and repeat == args.repeats - 1  # its batch sizes, for the bound below
            log = StepLog(model) if logged else None
            tokens, seconds = fn(model, tokenizer, prompts, params, args.concurrency)
            if log is not None:
                log.close()
                live_run = log, tokens, seconds
            rates[name].append(tokens / seconds)
            print(
                f"  [{repeat + 1}] {name:8s} {tokens:6d} tokens in {seconds:7.1f} s = {tokens / seconds:7.1f} tok/s"
            )
    log, tokens, seconds = live_run
    decoding, prefill = linear_bound(model, log, peak)
    bound = decoding + prefill
    ours, live, theirs = (statistics.median(rates[name]) for name in ("openrft", "live", "generate"))
    print(
        f"the live run's passes: {len(log.decode_rows)} decoding steps "
        f"({sum(r <= 8 for r in log.decode_rows)} of them with <= 8 rows), {len(log.prefill_tokens)} prefills; "
        f"its linear layers alone take {decoding:.1f} s decoding + {prefill:.1f} s prefill = "
        f"{tokens / bound:.1f} tokens/s at best, {tokens / bound / limit:.1%} of the limit "
        f"(this run: {seconds:.1f} s, {bound / seconds:.0%} of its time)"
    )
    print(f"openrft LocalEngine (inference copy) : {ours:8.1f} tokens/s  {ours / limit:6.1%} of the limit")
    print(f"openrft LocalEngine (live model)     : {live:8.1f} tokens/s  {live / limit:6.1%} of the limit")
    print(
        f"model.generate                       : {theirs:8.1f} tokens/s  {theirs / limit:6.1%} of the limit"
    )
    print(f"ratio (inference copy / generate)    : {ours / theirs:8.2f}x")
    print(f"ratio (live model / generate)        : {live / theirs:8.2f}x")


if __name__ == "__main__":
    main()
