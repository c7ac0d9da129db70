"""openrft against TRL's GRPOTrainer: same model, prompts, reward and settings, one run, ratios printed.

Both systems train a LoRA adapter on the embedded SmolLM2-135M-Instruct (fp32, CPU) for a
fixed number of optimizer steps on the built-in arithmetic task, scored by openrft's
``score_arithmetic``, with the same settings: LoRA rank 8 / alpha 16 / dropout 0 on every
block linear, K generations per prompt, max completion length, temperature 0.7, top-k 40,
top-p 1.0, learning rate 1e-4 (constant, AdamW, weight decay 0.01, clip 1.0), DAPO loss
(clip 0.8..1.28, no KL), and ``prompts-per-step x generations`` fresh completions per
optimizer step. Both are given the same prompts in the same order. TRL runs with gradient
checkpointing on (its default) and off.

Every run is its own process (peak RSS is per system); all use ``--threads`` torch threads.
Per-step times exclude model loading and start-up. See docs/benchmarks.md.

    python bench/vs_trl.py                    # defaults: 4 prompts x 8 generations, 64 tokens, 3 steps
    python bench/vs_trl.py --quick            # 1 prompt x 8 generations, 32 tokens, 2 steps, TRL gc on
    python bench/vs_trl.py --seeds 3 --skip-trl-gc-off     # reward after the run: mean +- std of 3 seeds

Needs the bench extra (``pip install -e '.[bench]'``, i.e. trl==1.16.0).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUSY_WARNING_CORES = 0.3  # other processes' average CPU use during a run that makes its timings suspect
LOAD_WARNING = 1.5


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--steps", type=int, help="optimizer steps per run (default 3; --quick 2)")
    add("--prompts-per-step", type=int, help="prompts per optimizer step (default 4; --quick 1)")
    add("--generations", type=int, help="completions per prompt (default 8)")
    add("--max-completion-length", type=int, help="max new tokens per completion (default 64; --quick 32)")
    add("--quick", action="store_true", help="a small configuration, TRL with gradient checkpointing only")
    add("--seeds", type=int, default=1, help="runs per system with seeds --seed, --seed+1, ... (default 1)")
    add("--seed", type=int, default=42, help="first seed (default 42)")
    add("--threads", type=int, default=2, help="torch threads for every process (default 2)")
    add("--temperature", type=float, default=0.7)
    add("--top-k", type=int, default=40)
    add("--top-p", type=float, default=1.0)
    add("--learning-rate", type=float, default=1e-4)
    add("--lora-rank", type=int, default=8)
    add("--lora-alpha", type=int, help="default: 2 x rank")
    add("--task", default="arithmetic:digits=1,ops=+", help="built-in task (count is added)")
    add("--trl-gc", choices=["both", "on", "off"], help="TRL gradient checkpointing variants (default both)")
    add("--skip-trl-gc-off", action="store_true", help="same as --trl-gc on")
    add("--only", choices=["openrft", "trl"], help="run one system only")
    add(
        "--trl-micro-batch",
        type=int,
        help="TRL per-device batch; the step is accumulated (default: whole step)",
    )
    add("--openrft-flag", action="append", default=[], metavar="KEY=VALUE", help="extra openrft job flag")
    add("--trl-arg", action="append", default=[], metavar="KEY=VALUE", help="extra GRPOConfig argument")
    add("--matmul-size", type=int, default=2048, help="matrix size of the fp32 matmul rate test")
    add("--timeout", type=float, default=3600, help="seconds one run may take (default 3600)")
    add("--json", type=Path, help="also write every measurement to this JSON file")
    add("--keep-work", action="store_true", help="keep the runs' folders and logs")
    args = p.parse_args(argv)
    quick = args.quick
    for name, normal, small in [
        ("steps", 3, 2),
        ("prompts_per_step", 4, 1),
        ("generations", 8, 8),
        ("max_completion_length", 64, 32),
    ]:
        if getattr(args, name) is None:
            setattr(args, name, small if quick else normal)
    if args.trl_gc is None:
        args.trl_gc = "on" if quick or args.skip_trl_gc_off else "both"
    if args.lora_alpha is None:
        args.lora_alpha = 2 * args.lora_rank
    for name in ("steps", "prompts_per_step", "generations", "max_completion_length", "seeds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.generations < 2:
        p.error("--generations must be >= 2 (group-relative advantages need a group)")
    return args


def key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict; values are read as JSON when they parse (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


# ----------------------------------------------------------------------------- running


def base_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": "smollm2-135m-instruct",
        "task": args.task,
        # twice the prompts the steps need: a round whose groups are all filtered out costs openrft
        # prompts, and both systems still see the same list in the same order
        "num_prompts": 2 * args.prompts_per_step * args.steps,
        "prompts_per_step": args.prompts_per_step,
        "generations": args.generations,
        "max_completion_length": args.max_completion_length,
        "steps": args.steps,
        "threads": args.threads,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "learning_rate": args.learning_rate,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "trl_micro_batch": args.trl_micro_batch,
        "openrft_flags": key_values(args.openrft_flag, "--openrft-flag"),
        "trl_args": key_values(args.trl_arg, "--trl-arg"),
    }


def variants(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, side script, spec additions) of every system variant to run."""
    out = []
    if args.only != "trl":
        out.append(("openrft", "_vs_trl_openrft.py", {}))
    if args.only != "openrft":
        for gc in ("on", "off"):
            if args.trl_gc in ("both", gc):
                out.append((f"TRL gc {gc}", "_vs_trl_trl.py", {"gradient_checkpointing": gc == "on"}))
    return out


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def system_busy_s() -> float:
    """CPU seconds all processes have used (every core), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = handle.readline().split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(cmd: list[str], folder: Path, threads: int, timeout: float) -> dict[str, Any]:
    """Run one process; its JSON result plus how busy the rest of the machine was meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    result_path, log_path = folder / "result.json", folder / "log.txt"
    start, busy0, ours0 = time.perf_counter(), system_busy_s(), children_cpu_s()
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(
                [*cmd, str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=child_env(threads),
                timeout=timeout, cwd=HERE.parent,
            )  # fmt: skip
            code: int | str = proc.returncode
            if proc.returncode == -9:
                code = "killed by SIGKILL (out of memory? see --skip-trl-gc-off, --trl-micro-batch)"
        except subprocess.TimeoutExpired:
            code = f"timed out after {timeout:g} s"
    wall = time.perf_counter() - start
    others = max(0.0, (system_busy_s() - busy0) - (children_cpu_s() - ours0)) / max(wall, 1e-9)
    result: dict[str, Any] = {}
    if result_path.exists():
        result = json.loads(result_path.read_text())
    if code != 0 or not result.get("ok"):
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        result = {
            **result,
            "ok": False,
            "error": result.get("error") or f"exit {code}",
            "log_tail": tail,
        }
    result.update(run_wall_s=wall, other_cpu_cores=others, load_before=load_before, log=str(log_path))
    return result


def run_all(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The matmul rate, then each seed's runs of every variant (interleaved, so drift hits all alike).

    Ctrl-C stops the run in progress (subprocess.run kills it) and returns what has finished.
    """
    cmd = [sys.executable, str(HERE / "_vs_trl_common.py"), "matmul"]
    cmd += ["--threads", str(args.threads), "--size", str(args.matmul_size)]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants(args)}
    matmul: dict[str, Any] = {"ok": False, "error": "interrupted"}
    try:
        print(f"measuring the fp32 matmul rate ({args.matmul_size}^3, {args.threads} threads)...", flush=True)
        matmul = run_child(cmd, work / "matmul", args.threads, args.timeout)
        for seed in range(args.seed, args.seed + args.seeds):
            for label, script, extra in variants(args):
                runs[label].append(run_variant(args, work, label, script, {**extra, "seed": seed}))
    except KeyboardInterrupt:
        print("\ninterrupted: reporting the runs that finished", flush=True)
    return matmul, runs


def run_variant(args: argparse.Namespace, work: Path, label: str, script: str, extra: dict) -> dict[str, Any]:
    seed = extra["seed"]
    if script == "_vs_trl_trl.py" and importlib.util.find_spec("trl") is None:
        return {"ok": False, "error": "trl is not installed: pip install -e '.[bench]' (trl==1.16.0)"}
    folder = work / f"{label.replace(' ', '-')}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**base_spec(args), **extra, "work_dir": str(folder / "run")}
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    print(f"running {label}, seed {seed}...", flush=True)
    cmd = [sys.executable, str(HERE / script), str(spec_path)]
    result = run_child(cmd, folder, args.threads, args.timeout)
    status = "ok" if result.get("ok") else f"FAILED: {result.get('error')}"
    print(f"  {label} seed {seed}: {status} ({result['run_wall_s']:.0f} s)", flush=True)
    return result


# ----------------------------------------------------------------------------- summarising


def summarise(results: list[dict[str, Any]], flops_per_token_param: float, matmul_gflops: float | None):
    """Aggregate one variant's runs: medians of per-step times (all seeds pooled), totals for rates."""
    good = [r for r in results if r.get("ok") and r.get("steps")]
    if not good:
        return None
    steps = [s for r in good for s in r["steps"]]
    total = {k: sum(float(s.get(k) or 0.0) for s in steps) for k in steps[0] if k != "metrics"}
    path_params = good[0]["path_params"]
    train_s = sum(s["wall_s"] - s["rollout_s"] - s["score_s"] for s in steps)  # the training phase
    computed = total.get("computed_tokens") or total["trained_tokens"]
    train_gflops = flops_per_token_param * path_params * computed / train_s / 1e9 if train_s > 0 else math.nan
    finals = [r["steps"][-1]["reward_mean"] for r in good if r["steps"][-1]["reward_mean"] is not None]
    startup = [r["process_s"] - sum(s["wall_s"] for s in r["steps"]) for r in good]
    return {
        "runs": len(good),
        "steps_measured": len(steps),
        "step_s": statistics.median(s["wall_s"] for s in steps),
        "rollout_s": statistics.median(s["rollout_s"] for s in steps),
        "score_s": statistics.median(s["score_s"] for s in steps),
        "train_s": statistics.median(s["wall_s"] - s["rollout_s"] - s["score_s"] for s in steps),
        "completion_tokens_per_step": total["completion_tokens"] / len(steps),
        "rollout_tokens_per_s": total["completion_tokens"] / total["rollout_s"]
        if total["rollout_s"]
        else math.nan,
        "step_tokens_per_s": total["completion_tokens"] / total["wall_s"],
        "trained_sequences_per_step": total["trained_sequences"] / len(steps),
        "trained_tokens_per_step": total["trained_tokens"] / len(steps),
        "computed_tokens_per_step": computed / len(steps),
        "padded_tokens_per_step": total.get("padded_tokens", math.nan) / len(steps),
        "trained_tokens_per_train_s": total["trained_tokens"] / train_s if train_s > 0 else math.nan,
        "train_gflops": train_gflops,
        "flop_utilisation": train_gflops / matmul_gflops if matmul_gflops else math.nan,
        "peak_rss_gb": max(r["peak_rss_gb"] for r in good),
        "final_reward": statistics.mean(finals) if finals else math.nan,
        "final_reward_std": statistics.stdev(finals) if len(finals) > 1 else math.nan,
        "startup_s": statistics.median(startup),
        "path_params": path_params,
        "lora_params": good[0]["lora_params"],
        "rewards_by_step": [[s["reward_mean"] for s in r["steps"]] for r in good],
        "step_walls": [[round(s["wall_s"], 2) for s in r["steps"]] for r in good],
        "other_cpu_cores": max(r["other_cpu_cores"] for r in good),
    }


ROWS = [  # (key, label, format, lower is better)
    ("step_s", "median step, s", "{:.2f}", True),
    ("rollout_s", "  rollout, s", "{:.2f}", True),
    ("score_s", "  scoring, s", "{:.3f}", True),
    ("train_s", "  training (step - rollout - scoring), s", "{:.2f}", True),
    ("completion_tokens_per_step", "completion tokens per step", "{:.0f}", None),
    ("rollout_tokens_per_s", "completion tokens/s in rollout", "{:.1f}", False),
    ("step_tokens_per_s", "completion tokens/s over the step", "{:.1f}", False),
    ("trained_sequences_per_step", "sequences trained per step", "{:.1f}", None),
    ("trained_tokens_per_step", "tokens trained per step (prompt + completion)", "{:.0f}", None),
    ("computed_tokens_per_step", "  of which run through the model", "{:.0f}", None),
    ("padded_tokens_per_step", "  padded positions run", "{:.0f}", None),
    ("trained_tokens_per_train_s", "trained tokens per training second", "{:.1f}", False),
    ("train_gflops", "training GFLOP/s (6 x N x tokens run)", "{:.2f}", False),
    ("flop_utilisation", "training FLOP utilisation", "{:.1%}", False),
    ("peak_rss_gb", "peak RSS, GB", "{:.2f}", True),
    ("startup_s", "start-up and shut-down (not in steps), s", "{:.1f}", True),
    ("final_reward", "final-step mean reward", "{:.3f}", None),
]


def fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)


def print_table(summaries: dict[str, dict[str, Any] | None]) -> None:
    labels = [label for label, s in summaries.items() if s is not None]
    if not labels:
        print("  no run finished")
        return
    trl_labels = [label for label in labels if label.startswith("TRL")]
    has_openrft = "openrft" in labels
    head = ["", *labels, *([f"openrft/{t}" for t in trl_labels] if has_openrft else [])]
    rows = [head]
    for key, name, pattern, lower in ROWS:
        cells = [fmt(summaries[label][key], pattern) for label in labels]
        if key == "final_reward":
            cells = [
                cell + ("" if not math.isfinite(summaries[lb]["final_reward_std"]) else
                        f" +- {summaries[lb]['final_reward_std']:.3f}")
                for cell, lb in zip(cells, labels, strict=True)
            ]  # fmt: skip
        if has_openrft:
            for t in trl_labels:
                mine, theirs = summaries["openrft"][key], summaries[t][key]
                ok = lower is not None and theirs and math.isfinite(theirs) and math.isfinite(mine)
                cells.append(f"{mine / theirs:.3f}" if ok else "")
        direction = {True: " [lower is better]", False: " [higher is better]"}.get(lower, "")
        rows.append([name + direction, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print(
            "  "
            + "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def print_checks(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """Same prompts, same trainable path, fp32 everywhere, the number of steps asked for."""
    good = {label: [r for r in rs if r.get("ok")] for label, rs in runs.items()}
    firsts = {label: rs[0] for label, rs in good.items() if rs}
    if len(firsts) > 1:
        prompts = {label: json.dumps(r.get("first_prompt_ids")) for label, r in firsts.items()}
        params = {label: (r.get("path_params"), r.get("lora_params")) for label, r in firsts.items()}
        same_prompts = len(set(prompts.values())) == 1
        same_params = len(set(params.values())) == 1
        print(f"  first step's prompt token ids identical across systems: {'yes' if same_prompts else 'NO'}")
        print(
            f"  trainable-path / LoRA parameters identical: {'yes' if same_params else 'NO ' + str(params)}"
        )
    for label, rs in good.items():
        for r in rs:
            dtypes = r.get("param_dtypes", [])
            if dtypes != ["torch.float32"]:
                print(f"  WARNING {label}: parameters are {dtypes}, not only fp32")
            if len(r.get("steps", [])) != args.steps:
                print(f"  WARNING {label}: {len(r.get('steps', []))} steps measured, {args.steps} asked")
            for note in r.get("notes", []):
                print(f"  note {label}: {note}")
            if r["other_cpu_cores"] > BUSY_WARNING_CORES:
                print(
                    f"  WARNING {label}: other processes used {r['other_cpu_cores']:.2f} cores on average "
                    "during this run: its timings are not meaningful"
                )


def print_failures(runs: dict[str, list[dict[str, Any]]], keep: bool) -> None:
    for label, rs in runs.items():
        for r in rs:
            if not r.get("ok"):
                print(f"\n{label} FAILED: {r.get('error')}")
                tail = (r.get("traceback") or r.get("log_tail") or "").rstrip()
                if tail:
                    print("\n".join("    " + line for line in tail.splitlines()[-25:]))
                if r.get("log") and keep:
                    print(f"    (full log: {r['log']})")


def print_notes(summaries: dict[str, dict[str, Any] | None]) -> None:
    if not any(summaries.values()):
        return
    n = next(s["path_params"] for s in summaries.values() if s)
    print(
        "  Training FLOPs = 6 x N x tokens run through the model (unpadded), N = all base parameters but the\n"
        f"  embedding matrix, plus LoRA (N = {n:,}). openrft runs each prompt once per group and skips groups\n"
        "  whose rewards are all equal; TRL runs the prompt again for every sequence. With frozen base weights\n"
        "  the real cost is nearer 4 x N per token, so 6 x N overstates utilisation by about 1.5x.\n"
        "  Times are medians over all steps of all seeds; token rates are totals over totals."
    )
    for label, s in summaries.items():
        if s is not None:
            rewards = [[None if x is None else round(x, 3) for x in seed] for seed in s["rewards_by_step"]]
            print(f"  {label}: step walls {s['step_walls']}  rewards by step {rewards}")


def print_learning_check(summaries: dict[str, dict[str, Any] | None]) -> None:
    """openrft's final reward against each TRL variant's, with the seeds' standard error."""
    mine = summaries.get("openrft")
    for label, theirs in summaries.items():
        if mine is None or theirs is None or label == "openrft":
            continue
        diff = mine["final_reward"] - theirs["final_reward"]
        if mine["runs"] < 2 or theirs["runs"] < 2:
            print(f"  learning check vs {label}: final reward difference {diff:+.3f} (one seed: run --seeds 3 "
                  "to know the noise)")  # fmt: skip
            continue
        se = math.sqrt(
            mine["final_reward_std"] ** 2 / mine["runs"] + theirs["final_reward_std"] ** 2 / theirs["runs"]
        )
        verdict = "openrft lower beyond noise" if diff < -2 * se else "within noise or better"
        print(
            f"  learning check vs {label}: final reward difference {diff:+.3f}, standard error {se:.3f}: {verdict}"
        )


def print_report(args, matmul, runs, summaries, load_start: float) -> None:
    per_step = args.prompts_per_step * args.generations
    print()
    print(
        f"openrft vs TRL GRPOTrainer: embedded SmolLM2-135M-Instruct, fp32, CPU, {args.threads} torch threads\n"
        f"  {args.prompts_per_step} prompts x {args.generations} generations = {per_step} completions per "
        f"optimizer step, <= {args.max_completion_length} new tokens, T={args.temperature:g} "
        f"top-k {args.top_k} top-p {args.top_p:g}\n"
        f"  LoRA r{args.lora_rank}/alpha {args.lora_alpha} on q,k,v,o,gate,up,down; lr {args.learning_rate:g}; "
        f"DAPO (clip 0.2/0.28, beta 0); {args.steps} steps x {args.seeds} seed(s) from {args.seed}; "
        f"task {args.task}"
    )
    rate = matmul.get("gflops") if matmul.get("ok") else None
    mm = f"{rate:.1f} GFLOP/s" if rate else f"not measured ({matmul.get('error')})"
    print(f"  machine: fp32 matmul {args.matmul_size}^3 with {args.threads} threads: {mm}; "
          f"1-min load average at start {load_start:.2f}")  # fmt: skip
    if load_start > LOAD_WARNING:
        print(
            f"  WARNING: load average {load_start:.2f} > {LOAD_WARNING} at start: timings are not meaningful"
        )
    print()
    print_table(summaries)
    print()
    print_notes(summaries)
    print_learning_check(summaries)
    print()
    print_checks(runs, args)
    print_failures(runs, args.keep_work)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="vs_trl-"))
    try:
        matmul, runs = run_all(args, work)
        rate = matmul.get("gflops") if matmul.get("ok") else None
        summaries = {label: summarise(rs, 6.0, rate) for label, rs in runs.items()}
        print_report(args, matmul, runs, summaries, load_start)
        if args.json:
            data = {"args": vars(args) | {"json": str(args.json)}, "matmul": matmul, "runs": runs,
                    "summaries": summaries, "load_start": load_start}  # fmt: skip
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, args.json)
    finally:
        if args.keep_work:
            print(f"\nruns' folders and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    complete = all(len(rs) == args.seeds for rs in runs.values())
    return 0 if complete and all(r.get("ok") for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
