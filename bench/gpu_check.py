"""One GPU run of openrft's GPU path on Qwen2.5-shaped models with random weights (no network, no vLLM).

    PYTHONPATH=src python bench/gpu_check.py                 # 0.5B, 1.5B and 7B shapes on cuda, ~100 s
                                                             # each on an H200, then ~2 min compiling
    PYTHONPATH=src python bench/gpu_check.py --sizes 0.5B 1.5B --rollouts-only --compiled-sizes   # ~4 min
    PYTHONPATH=src python bench/gpu_check.py --tiny --device cpu   # the same code on a toy shape, seconds

Needs torch, transformers, peft and what ``openrft.config`` imports (pydantic). On a GPU machine that
lacks them or has other versions, bring the pinned ones as wheels (``pip download --no-deps`` for the
machine's Python: pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions,
transformers, peft; ~17 MB) and install them with ``pip install --no-deps --target DIR`` first on
``PYTHONPATH``. Per size it prints:

* rollouts: the local engine, with its eager and its compiled decoding step (and how long the compiled
  engine's first call took, compiling included), against ``model.generate`` on the same GPU, n=8
  candidates per prompt: completion tokens per second of each and the ratios;
* one RFT step (the trainer's micro-batched LoRA policy-gradient step), after a first untimed one:
  time, trained tokens per second, and MFU against the bf16 matmul peak this script measures first (model FLOPs counted as
  4 x parameters per token: forward plus input gradients, the base being frozen);
* peak GPU memory of the step against openrft's memory estimate for the same job;
* for the 7B shape, the step with gradient checkpointing too;
* one decoding step (the model's forward over a KV cache, as the local engine calls it) at 1 row and
  at prompts x n rows: its time, the bytes it must read (weights and cache), and that rate as a share
  of the device's memory bandwidth, measured first by a large copy.
* for the ``--compiled-sizes`` (default 0.5B), the same step over a static cache, eager and under
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on a GPU), and how long compiling took: whether
  a compiled engine step would pay on this device; then the compiled engine over a LoRA model whose
  adapter changes in place between two calls (as a job's optimizer changes it): whether it samples the
  changed weights, and how many CUDA graphs PyTorch skipped.

A check that fails prints a line starting ``FAILED`` and the run goes on: it is a GPU session's only try.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

SHAPES = {  # Qwen2.5 configs (hidden, layers, heads, kv heads, MLP width), vocabulary 151,936, tied for 0.5B/1.5B
    "0.5B": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, tie_word_embeddings=True),
}  # fmt: skip


class Tokenizer:
    """Just what the engine needs from a tokenizer when prompts arrive as token ids."""

    def __init__(self, vocab: int):
        self.pad_token_id, self.eos_token_id, self.vocab = 0, vocab - 1, vocab
        self.chat_template = None

    def decode(self, ids, skip_special_tokens=True):
        return ""

    def __len__(self) -> int:
        return self.vocab


def build(shape: str, device: str, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = 151_936 if shape != "tiny" else 1024
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model.eval(), config


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s in ``dtype``."""
    n = 8192 if device.startswith("cuda") else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def copy_bandwidth(device: str) -> float:
    """Measured memory bandwidth in bytes/s: a large device-to-device copy reads and writes every byte."""
    source = torch.empty(
        (1 << 28) if device.startswith("cuda") else (1 << 24), dtype=torch.float32, device=device
    )
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    sync(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        target.copy_(source)
    sync(device)
    return 2 * source.nbytes * reps / (time.perf_counter() - start)


def decode_step(model, config, device: str, rows: int, context: int) -> tuple[float, int]:
    """Seconds of one decoding step of ``rows`` sequences over ``context`` cached positions, and its bytes.

    The bytes are what the step must read at least: every weight but the input embedding (read only
    where tied to the LM head, which reads it whole) and the keys and values of the cache.
    """
    ids_RC = torch.randint(1, config.vocab_size - 1, (rows, context), device=device)
    with torch.no_grad():
        cache = model(ids_RC, use_cache=True).cache
        step_R1 = ids_RC[:, -1:]
        for reps in (3, 10):  # warm-up, then timed
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                model(step_R1, cache=cache, use_cache=True, logits_to_keep=1)
                cache.crop(-1)  # back to `context` positions
            sync(device)
    seconds = (time.perf_counter() - start) / reps
    assert cache.get_seq_length() == context, "the cache was not cropped back after each step"
    embedding = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not config.tie_word_embeddings:
        weights -= embedding.numel() * embedding.element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = (
        2
        * config.num_hidden_layers
        * rows
        * config.num_key_value_heads
        * context
        * head_dim
        * embedding.element_size()
    )
    return seconds, weights + kv


def compiled_decode_step(model, config, device: str, rows: int, context: int) -> tuple[float, float, float]:
    """One decoding step over a static cache, eager and compiled: (eager s, compiled s, compile s).

    What a compiled engine step would run: transformers' ``StaticCache`` (fixed shapes, the write
    position a tensor), the forward under ``torch.compile(mode="reduce-overhead")``, which captures
    it as a CUDA graph on a GPU. Each step writes the same cache column, so every call sees the
    same shapes and one compilation serves them all (the cache is rewound in place between calls).
    """
    from transformers import StaticCache

    ids_RC = torch.randint(1, config.vocab_size - 1, (rows, context), device=device)
    cache = StaticCache(config=config, max_cache_len=context + 1)
    position_11 = torch.tensor([[context]], device=device)
    step_R1 = ids_RC[:, -1:].clone()

    def step():
        return model(step_R1, cache=cache, position_ids=position_11, use_cache=True, logits_to_keep=1).logits

    def rewind() -> None:  # the cache back to `context` positions, in place (its address stays fixed)
        for layer in cache.layers:
            layer.cumulative_length.fill_(context)

    def timed(fn, reps: int = 10) -> float:
        rewind()
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            rewind()
            fn()
        sync(device)
        return (time.perf_counter() - start) / reps

    with torch.no_grad():
        model(ids_RC, cache=cache, use_cache=True)
        eager = timed(step)
        rewind()
        reference = step().clone()
        compiled_step = torch.compile(step, mode="reduce-overhead")
        sync(device)
        start = time.perf_counter()
        rewind()
        first = compiled_step().clone()
        for _ in range(2):  # CUDA graphs are recorded on a later call than the first
            rewind()
            compiled_step()
        sync(device)
        compile_seconds = time.perf_counter() - start
        compiled = timed(compiled_step)
    error = (first.float() - reference.float()).abs().max().item()
    if error >= 0.5:  # said, not asserted: one wrong measurement must not end the run's only try
        print(f"FAILED: the compiled step's logits differ from the eager step's by {error:.3f}")
    return eager, compiled, compile_seconds


def compiled_lora_engine(model, tokenizer, device: str, n: int, tokens: int) -> dict:
    """The local engine's compiled step over a live LoRA model, as a job samples it, with the adapter
    changed in place between two calls, as an optimizer step changes it (CUDA graphs read the weights
    where they are). The second call's log-probs against a teacher-forced pass of the changed policy
    (a small gap) and of the one before the change (a large gap: else the graph kept the old weights),
    and the CUDA graphs PyTorch skipped. Leaves ``model`` without the adapter."""
    from torch._dynamo.utils import counters

    from openrft.records import SamplingParams
    from openrft.rollout.local import LocalEngine
    from openrft.train.policy import attach_lora, keep_adapter_float32, trainable_parameters

    policy = attach_lora(model, rank=16, seed=0)
    keep_adapter_float32(policy)
    policy.eval()
    engine = LocalEngine(policy, tokenizer, max_concurrent_rollouts=n, stop_token_ids=[len(tokenizer) - 1],
                         compile_step=True, compile_after=0.0)  # fmt: skip
    params = SamplingParams(n=n, temperature=1.0, top_k=0, max_tokens=tokens, seed=1)
    prompt = [int(t) for t in torch.randint(1, len(tokenizer) - 1, (64,))]
    engine.generate_from_ids([("0", prompt)], params)  # compiles and records the graphs
    weights = trainable_parameters(policy)
    before = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w in weights:  # lora_B starts at zero: the update makes the adapter matter
            w.add_(torch.randn_like(w) * 0.05)
    after = [w.detach().clone() for w in weights]
    sampled = engine.generate_from_ids([("0", prompt)], params)[0]
    gaps = {}
    for name, values in (("changed", after), ("before", before)):
        with torch.no_grad():
            for w, v in zip(weights, values, strict=True):
                w.copy_(v)
            gaps[name] = max(teacher_forced_gap(policy, c, device) for c in sampled)
    policy.unload()
    skips = counters["inductor"].get("cudagraph_skips", 0)
    return {**gaps, "compiled": engine.slots is not None and engine.slots.compiled, "skips": skips}


def teacher_forced_gap(policy, completion, device: str) -> float:
    """Largest gap between a completion's sampled log-probs and one forward pass over it (T = 1)."""
    ids = list(completion.prompt_token_ids) + list(completion.completion_token_ids)
    with torch.no_grad():
        logits_TV = policy(torch.tensor([ids], device=device)).logits[0].float()
    start = len(completion.prompt_token_ids) - 1
    logprobs_TV = torch.log_softmax(logits_TV[start : len(ids) - 1], dim=-1)
    target_T = torch.tensor(completion.completion_token_ids, device=device)
    forced_T = logprobs_TV.gather(-1, target_T[:, None]).squeeze(-1)
    return float((forced_T - torch.tensor(completion.logprobs, device=device)).abs().max())


def engine_rate(
    model, tokenizer, device: str, ids: list, n: int, tokens: int, compiled: bool
) -> tuple[float, float]:
    """Completion tokens/s of openrft's local engine (eager or compiled step), and its warm-up call's seconds.

    The warm-up call samples one prompt; with ``compiled`` it also compiles the step (CUDA graphs).
    """
    from openrft.records import SamplingParams
    from openrft.rollout.local import LocalEngine

    engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=len(ids) * n, stop_token_ids=[len(tokenizer) - 1],
                         compile_step=compiled, compile_after=0.0)  # fmt: skip
    params = SamplingParams(n=n, temperature=1.0, top_k=0, max_tokens=tokens, seed=1)
    start = time.perf_counter()
    engine.generate_from_ids([(str(i), p) for i, p in enumerate(ids[:1])], params)
    sync(device)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    out = engine.generate_from_ids([(str(i), p) for i, p in enumerate(ids)], params)
    sync(device)
    if compiled and (engine.slots is None or not engine.slots.compiled):
        print("FAILED: the engine asked to compile its step did not (it fell back to eager)")
    return sum(len(c.completion_token_ids) for g in out for c in g) / (time.perf_counter() - start), warm_up


def rollouts(
    model, tokenizer, device: str, prompts: int, n: int, tokens: int
) -> tuple[float, float, float, float]:
    """Completion tokens/s: the local engine eager, compiled (and its warm-up with compiling), ``model.generate``."""
    ids = [[int(t) for t in torch.randint(1, len(tokenizer) - 1, (64,))] for _ in range(prompts)]
    ours, _ = engine_rate(model, tokenizer, device, ids, n, tokens, compiled=False)
    compiled, compiling = engine_rate(model, tokenizer, device, ids, n, tokens, compiled=True)
    batch = torch.tensor(ids, device=device)
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        generated = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True, top_k=0,
                                   num_return_sequences=n, max_new_tokens=tokens, min_new_tokens=tokens,
                                   pad_token_id=0)  # fmt: skip
        sync(device)
    theirs = (generated.shape[1] - batch.shape[1]) * generated.shape[0] / (time.perf_counter() - start)
    return ours, compiled, compiling, theirs


def rft_step(
    model, config, device: str, checkpointing: bool, prompts: int, n: int, tokens: int, budget: int
) -> dict:
    """One LoRA GRPO step over ``prompts x n`` sampled-like sequences; time, tokens/s, peak memory."""
    from openrft.algo.losses import resolve_loss
    from openrft.records import Completion
    from openrft.train.batching import TrainSequence
    from openrft.train.policy import (
        attach_lora,
        enable_checkpointing,
        keep_adapter_float32,
        trainable_parameters,
    )
    from openrft.train.step import StepLoss, accumulate_gradients, plan_step

    policy = attach_lora(model, rank=16, seed=0)
    keep_adapter_float32(policy)
    if checkpointing:
        enable_checkpointing(policy)
    sequences = []
    for p in range(prompts):
        prompt = tuple(int(t) for t in torch.randint(1, config.vocab_size - 1, (128,)))
        for c in range(n):
            completion = tuple(int(t) for t in torch.randint(1, config.vocab_size - 1, (tokens,)))
            sequences.append(TrainSequence(Completion(str(p), c, prompt, completion, "", (-2.0,) * tokens, "length"),
                                           float(c % 2) - 0.5, p))  # fmt: skip
    batches, _ = plan_step(sequences, budget, 0, packed=not checkpointing)
    loss = StepLoss(*resolve_loss("grpo"), 1.0, full_sequences=checkpointing)
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=1e-5)
    policy.train()

    def step() -> float:
        sync(device)
        start = time.perf_counter()
        accumulate_gradients(policy, batches, loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start

    cold = step()  # the first step pays for kernel selection, the allocator's growth and lazy set-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = step()
    trained = sum(b.num_tokens for b in batches)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    recompute_gap = recompute_against_training(policy, batches[0].to(device), loss)
    params = sum(p.numel() for p in policy.parameters())
    policy.unload()  # the base model again, for the next measurement
    return {
        "seconds": seconds,
        "cold": cold,
        "recompute_gap": recompute_gap,
        "tokens": trained,
        "flops": 4 * params * trained / seconds,
        "peak": peak,
    }


def recompute_against_training(policy, batch, loss) -> float:
    """Largest log-prob gap between the no-grad eval pass that recomputes a round's old log-probs
    (bfloat16 jobs, :func:`openrft.train.mismatch.recompute_old_logprobs`) and the training pass over
    the same micro-batch: 0 means every round's first step starts at a ratio of exactly 1."""
    from openrft.train.step import batch_logprobs, training_mode

    policy.eval()
    with torch.no_grad():
        old_RC = batch_logprobs(policy, batch, loss.temperature, loss.full_sequences)
    with training_mode(policy):
        new_RC = batch_logprobs(policy, batch, loss.temperature, loss.full_sequences).detach()
    mask_RC = batch.completion_mask_RC.bool()
    return float((new_RC - old_RC)[mask_RC].abs().max())


def estimate(config, device: str, prompts: int, n: int, tokens: int, budget: int, checkpointing: bool) -> int:
    """openrft's memory estimate for the job :func:`rft_step` runs."""
    from openrft.config import build_config
    from openrft.train.memory import estimate_memory

    values = {
        "max_output_tokens": max(16, tokens),
        "max_context_length": 128 + max(16, tokens) + 1,
        "micro_batch_tokens": budget,
        "max_concurrent_rollouts": prompts * n,
        "gradient_checkpointing": checkpointing,
        "lora_rank": 16,
        "compile": False,
    }  # fmt: skip  (the measured step holds no compiled sampling buffers)
    settings = build_config({}, values)[0].settings()
    import dataclasses

    model = dataclasses.replace(settings.model, device=device, dtype="bfloat16")
    return estimate_memory(config, dataclasses.replace(settings, model=model)).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a toy shape only (to check the script on a CPU)")
    parser.add_argument("--sizes", nargs="*", default=["0.5B", "1.5B", "7B"])
    parser.add_argument("--compiled-sizes", nargs="*", default=["0.5B"],
                        help="sizes whose decoding step is also timed compiled (needs a C++ compiler on a CPU)")  # fmt: skip
    parser.add_argument("--rollouts-only", action="store_true", help="per size, the rollout rates only")
    args = parser.parse_args()
    # every line out at once: a run cut short by its time limit keeps what it measured
    sys.stdout.reconfigure(line_buffering=True)
    device, dtype = args.device, torch.bfloat16
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                 "on a CPU, check the script itself with --device cpu --tiny")  # fmt: skip
    sizes = ["tiny"] if args.tiny else args.sizes
    peak, bandwidth = matmul_peak(device, dtype), copy_bandwidth(device)
    print(f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}), "
          f"measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s, copy bandwidth {bandwidth / 1e9:,.0f} GB/s")  # fmt: skip
    prompts, n, tokens = (8, 8, 256) if not args.tiny else (2, 8, 16)
    for size in sizes:
        start = time.perf_counter()
        model, config = build(size, device, dtype)
        tokenizer = Tokenizer(config.vocab_size)
        ours, compiled, compiling, theirs = rollouts(model, tokenizer, device, prompts, n, tokens)
        print(f"[{size}] rollouts, {prompts} prompts x n={n}, {tokens} tokens: local engine {ours:,.0f} tok/s, "
              f"compiled step {compiled:,.0f} tok/s (its first call, compiling, {compiling:.0f} s), "
              f"model.generate {theirs:,.0f} tok/s; ratios {ours / theirs:.2f}x and {compiled / theirs:.2f}x")  # fmt: skip
        if args.rollouts_only:
            continue
        for rows in (1, prompts * n):
            seconds, read = decode_step(model, config, device, rows, 64 + tokens)
            print(f"[{size}] decode step, {rows} rows x {64 + tokens} cached: {seconds * 1e3:.2f} ms, reads "
                  f"{read / 1e6:,.0f} MB: {read / seconds / 1e9:,.0f} GB/s, {read / seconds / bandwidth:.1%} "
                  f"of the copy bandwidth")  # fmt: skip
        for checkpointing in [False, True] if size in ("7B", "tiny") else [False]:
            budget = 16384 if device.startswith("cuda") else 512
            guess = estimate(config, device, prompts, n, tokens, budget, checkpointing)
            if device.startswith("cuda") and guess > torch.cuda.get_device_properties(0).total_memory:
                print(f"[{size}] RFT step{' (gradient checkpointing)' if checkpointing else ''}: skipped, the "
                      f"estimate {guess / 2**30:.1f} GiB exceeds the device (a job would be refused)")  # fmt: skip
                continue
            step = rft_step(model, config, device, checkpointing, prompts, n, tokens, budget)
            memory = (
                f"peak GPU memory {step['peak'] / 2**30:.1f} GiB vs estimate {guess / 2**30:.1f} GiB "
                f"({step['peak'] / guess:.2f}x)"
                if step["peak"]
                else f"estimate {guess / 2**30:.2f} GiB"
            )
            print(f"[{size}] RFT step{' (gradient checkpointing)' if checkpointing else ''}: "
                  f"{step['seconds']:.2f} s (the first, cold: {step['cold']:.2f} s), "
                  f"{step['tokens'] / step['seconds']:,.0f} trained tok/s, "
                  f"MFU {step['flops'] / peak:.1%}; {memory}; recomputed old log-probs vs the "
                  f"training pass: max gap {step['recompute_gap']:.2e}")  # fmt: skip
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"[{size}] done in {time.perf_counter() - start:.0f} s", flush=True)
    # compiling last: its time is the least predictable, and a run cut short keeps every plain measurement
    for size in ["tiny"] if args.tiny and args.compiled_sizes else args.compiled_sizes:
        model, config = build(size, device, dtype)
        for rows in (1, prompts * n):
            eager, compiled, compiling = compiled_decode_step(model, config, device, rows, 64 + tokens)
            print(f"[{size}] decode step over a static cache, {rows} rows: eager {eager * 1e3:.2f} ms, compiled "
                  f"{compiled * 1e3:.2f} ms ({eager / compiled:.2f}x), compiling took {compiling:.0f} s")  # fmt: skip
        lora = compiled_lora_engine(model, Tokenizer(config.vocab_size), device, n, tokens)
        print(f"[{size}] compiled engine over a LoRA model (compiled: {lora['compiled']}), the adapter changed "
              f"in place between calls: sampled log-probs vs the changed policy, max gap {lora['changed']:.3f}, "
              f"vs the policy before the change {lora['before']:.3f}; CUDA graphs skipped so far in the run: {lora['skips']}")  # fmt: skip
        if not lora["compiled"] or lora["changed"] >= lora["before"]:
            print(f"FAILED: [{size}] the compiled engine did not sample the changed adapter")
        del model


if __name__ == "__main__":
    main()
