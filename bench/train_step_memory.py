"""Peak memory and time of one LoRA policy-gradient step: openrft's chunked path vs the naive one.

Both variants run on the embedded SmolLM2-135M-Instruct (fp32, LoRA r=8 on every block linear)
over the same random batch (default 32 sequences x 160 tokens: 32 prompt + 128 completion),
each in its own subprocess so peak RSS is measured separately:

* naive:   model(ids).logits -> log_softmax over the whole vocabulary -> gather, one batch
* openrft: decoder hidden states -> chunked LM-head log-probs, length-bucketed micro-batches

    python bench/train_step_memory.py [--sequences 32] [--tokens 160] [--micro-batch-tokens 256]

Prints peak RSS (GB) and step seconds for both, and the openrft/naive ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_variant(variant: str, sequences: int, tokens: int, micro_batch_tokens: int) -> dict:
    import torch

    from openrft.algo.losses import resolve_loss
    from openrft.models import load_model
    from openrft.records import Completion
    from openrft.train.batching import TrainSequence
    from openrft.train.policy import attach_lora
    from openrft.train.step import StepLoss, accumulate_gradients, plan_step

    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m-instruct")
    model = attach_lora(model, rank=8)
    model.train()
    prompt_len = 32
    ids = torch.randint(100, 40000, (sequences, tokens))
    old = torch.full((sequences, tokens - prompt_len), -2.0)
    adv = torch.randn(sequences)
    start = time.perf_counter()
    if variant == "naive":
        logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1]  # [B, T, V]
        logp = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
        dapo_loss, dapo = resolve_loss("dapo")
        loss, _ = dapo_loss(logp, old, adv, torch.ones_like(old), dapo)
        loss.backward()
    else:
        seqs = [
            TrainSequence(
                Completion(
                    str(i),
                    0,
                    tuple(ids[i, :prompt_len].tolist()),
                    tuple(ids[i, prompt_len:].tolist()),
                    "",
                    tuple(old[i].tolist()),
                    "length",
                ),
                float(adv[i]),
                i,
            )
            for i in range(sequences)
        ]
        batches, _ = plan_step(seqs, micro_batch_tokens, tokenizer.pad_token_id)
        accumulate_gradients(model, batches, StepLoss(*resolve_loss("dapo"), 0.7))
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"variant": variant, "peak_rss_gb": peak_gb, "step_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--micro-batch-tokens", type=int, default=256)
    parser.add_argument("--variant", choices=["naive", "openrft"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--skip-naive", action="store_true", help="only run openrft (the naive path needs ~21 GB)"
    )
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.sequences, args.tokens, args.micro_batch_tokens)))
        return
    results = {}
    for variant in ("openrft",) if args.skip_naive else ("openrft", "naive"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--sequences",
            str(args.sequences),
            "--tokens",
            str(args.tokens),
            "--micro-batch-tokens",
            str(args.micro_batch_tokens),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{variant}: failed (exit {out.returncode}); last lines:\n{out.stderr[-800:]}")
            continue
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"one LoRA step, {args.sequences} x {args.tokens} tokens, embedded SmolLM2-135M fp32")
    for name, r in results.items():
        print(f"  {name:8s} peak RSS {r['peak_rss_gb']:6.2f} GB   step {r['step_s']:6.2f} s")
    if len(results) == 2:
        o, n = results["openrft"], results["naive"]
        print(
            f"  ratio openrft/naive: memory {o['peak_rss_gb'] / n['peak_rss_gb']:.3f}  time {o['step_s'] / n['step_s']:.3f}"
        )


if __name__ == "__main__":
    main()
