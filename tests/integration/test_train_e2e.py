"""End-to-end RFT jobs on a tiny random model through the command line: every loss method, filtering,
outputs that load with peft, and exact resume after a kill."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from openrft.cli import main
from openrft.tracking.sinks import read_jsonl

FIXTURES = Path(__file__).parent / "train_fixtures" / "evaluators.py"


def _flags(model_dir, tmp_path, method="grpo", evaluator="spread", *extra):
    return [
        "--base-model", str(model_dir), "--dataset", "arithmetic:count=6", "--evaluator", f"{FIXTURES}::{evaluator}",
        "--rl-loss-method", method, "--n", "4", "--max-output-tokens", "16", "--chunk-size", "2",
        "--batch-size", "160", "--micro-batch-tokens", "128", "--eval-auto-carveout", "0.34", "--eval-every", "2",
        "--checkpoint-every", "2", "--temperature", "1.0", "--learning-rate", "5e-4", "--seed", "3", "--quiet",
        "--output-model", str(tmp_path / "out"), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["grpo", "dapo", "gspo-token"])
def test_each_method_trains_and_writes_outputs(tiny_model_dir, tmp_path, method, capsys):
    code = main(["rftj", "create", *_flags(tiny_model_dir, tmp_path, method)])
    err = capsys.readouterr().err
    assert code == 0, err
    out = tmp_path / "out"
    rows = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in rows if "loss/policy" in r]
    assert len(steps) >= 2
    for key in ("reward/mean", "loss/policy", "clip/low_frac", "clip/high_frac", "ratio/mean",
                "filter/zero_variance_groups", "batch/tokens", "time/rollout_s", "train/lr", "train/epoch",
                "train/round", "train/optimizer_step", "loss/tokens", "loss/sequences"):  # fmt: skip
        assert key in steps[0], key
    assert all(r["batch/tokens"] <= 160 or r["batch/sequences"] == 1 for r in steps)
    epochs = [r["train/epoch"] for r in steps]  # a round's prompts count as its steps train them
    assert all(a < b for a, b in zip(epochs, epochs[1:], strict=False)) and epochs[-1] == 1.0, epochs
    assert [r for r in rows if "eval/reward" in r][0]["step"] == 0  # evaluated before training
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir() if f.is_file()}
    assert modes["adapter_model.safetensors"] == 0o644 and set(modes.values()) == {
        0o644
    }  # vLLM may be another user
    if method == "grpo":  # KL 0.001 x k3 to the base model: zero while the adapter is fresh, then > 0
        assert all(r["kl/coef"] == 0.001 for r in steps)
        assert steps[0]["kl/mean"] == pytest.approx(0.0, abs=1e-7)
        assert max(r["kl/mean"] for r in steps[1:]) > 0 and max(r["loss/kl"] for r in steps[1:]) > 0
    else:  # no KL term, and no reference pass
        assert all(r["kl/coef"] == 0.0 and r["loss/kl"] == 0.0 and "kl/mean" not in r for r in steps)
    # the local engine samples this very model in float32: sampler and trainer agree (mismatch ~0)
    measured = [r for r in steps if "mismatch/kl" in r]
    assert measured and all(
        r["mismatch/kl"] < 1e-6 and r["mismatch/is_truncated_frac"] == 0.0 for r in measured
    )
    assert all(r["mismatch/is_weight_mean"] == pytest.approx(1.0, abs=1e-3) for r in measured)
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert json.loads((out / "job.json").read_text())["loss"]["rl_loss_method"] == method
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter moved


def test_zero_variance_groups_are_filtered_and_counted(tiny_model_dir, tmp_path):
    assert main(["rftj", "create", *_flags(tiny_model_dir, tmp_path, "dapo", "half_constant")]) == 0
    rows = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss/policy" in r]
    assert sum(r["filter/zero_variance_groups"] for r in rows) > 0
    assert all(r["filter/zero_variance_groups"] <= r["filter/groups"] for r in rows)


def test_constant_evaluator_stops_early(tiny_model_dir, tmp_path, capsys):
    assert main(["rftj", "create", *_flags(tiny_model_dir, tmp_path, "dapo", "constant")]) == 0
    err = capsys.readouterr().err
    assert "EARLY_STOPPED" in err and "--temperature" in err


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from openrft.config import build_config
    from openrft.train.job import prepare, run_training
    flags, job_dir, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    cfg, _ = build_config({}, __import__("json").loads(flags))
    def maybe_die():
        lines = (job_dir / "metrics.jsonl").read_text().splitlines() if (job_dir / "metrics.jsonl").exists() else []
        if kill_at and sum('"loss/policy"' in l for l in lines) >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return False
    run_training(prepare(cfg), job_dir, resume=sys.argv[4] == "resume", quiet=True, should_stop=maybe_die)
    """
)


def test_killed_job_resumes_to_the_same_result(tiny_model_dir, tmp_path):
    flags = dict(
        base_model=str(tiny_model_dir), dataset="arithmetic:count=8", evaluator=f"{FIXTURES}::spread",
        rl_loss_method="grpo", response_candidates_count=4, max_output_tokens=16, chunk_size=2, batch_size=100,
        micro_batch_tokens=128, checkpoint_every=2, eval_every=0, temperature=1.0, learning_rate=5e-4, seed=5,
    )  # fmt: skip
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    def run(job_dir, kill_at, mode):
        return subprocess.run(
            [sys.executable, str(script), json.dumps(flags), str(job_dir), str(kill_at), mode], env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    whole = run(tmp_path / "whole", 0, "fresh")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run(tmp_path / "killed", 3, "fresh")  # dies after step 3; the last checkpoint is step 2
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "checkpoints" / "LATEST").read_text().strip() == "step-000002"
    resumed = run(tmp_path / "killed", 0, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def load(job):
        from safetensors.torch import load_file

        return load_file(str(tmp_path / job / "output" / "adapter_model.safetensors"))

    a, b = load("whole"), load("killed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    # a damaged newest checkpoint: the one before it is taken, to the same result
    assert run(tmp_path / "damaged", 5, "fresh").returncode == -signal.SIGKILL
    optim = tmp_path / "damaged" / "checkpoints" / "step-000004" / "optim.pt"
    optim.write_bytes(optim.read_bytes()[:100])
    resumed = run(tmp_path / "damaged", 0, "resume")
    assert resumed.returncode == 0 and "step-000004 cannot be read" in resumed.stderr, resumed.stderr[-2000:]
    c = load("damaged")
    for key in a:
        torch.testing.assert_close(a[key], c[key], atol=1e-6, rtol=1e-5)

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]  # noqa: E731

    ra, rb = (
        strip(read_jsonl(tmp_path / "whole" / "metrics.jsonl")),
        strip(read_jsonl(tmp_path / "killed" / "metrics.jsonl")),
    )
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k


def test_warm_start_continues_from_an_adapter_with_it_as_reference(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    assert main(["rftj", "create", *_flags(tiny_model_dir, first, "dapo")]) == 0
    adapter = first / "out"
    second = tmp_path / "second"
    flags = _flags(
        tiny_model_dir, second, "grpo", "spread", "--warm-start-from", str(adapter), "--rl-kl-beta", "0.05"
    )
    i = flags.index("--base-model")
    del flags[i : i + 2]  # the adapter names its base model
    assert main(["rftj", "create", *flags]) == 0
    rows = [r for r in read_jsonl(second / "out" / "metrics.jsonl") if "loss/policy" in r]
    # the reference policy is the warm-start adapter: KL starts at exactly 0, then moves
    assert rows[0]["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0]["kl/coef"] == 0.05
    assert max(r["kl/mean"] for r in rows) > 0
    from safetensors.torch import load_file

    a = load_file(str(adapter / "adapter_model.safetensors"))
    b = load_file(str(second / "out" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_training_through_an_endpoint_syncs_the_adapter_each_step(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from openrft.models import load_tokenizer
    from openrft.rollout.local import LocalEngine
    from openrft.rollout.server import BackgroundServer, create_app

    served_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    served = LocalEngine(served_model, load_tokenizer(str(tiny_model_dir)))
    with BackgroundServer(create_app(served, str(tiny_model_dir))) as server:
        flags = _flags(
            tiny_model_dir,
            tmp_path,
            "dapo",
            "spread",
            "--rollout-engine",
            "endpoint",
            "--endpoint-url",
            server.url,
        )
        flags[flags.index("--batch-size") + 1] = "100000"  # one step per round: every step starts on-policy
        assert main(["rftj", "create", *flags]) == 0
    rows = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss/policy" in r]
    assert len(rows) == 2  # 4 training prompts, rounds of 2
    # the server sampled with the adapter the trainer had just produced, so each step starts at ratio 1
    for row in rows:
        assert row["ratio/mean"] == pytest.approx(1.0, abs=1e-3), row["step"]
        # another engine sampled: the trainer recomputed the old log-probs and measured the difference
        assert 0.0 <= row["mismatch/kl"] < 1e-3 and row["mismatch/is_weight_mean"] == pytest.approx(
            1.0, abs=0.05
        )


CHECKPOINT_KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    import openrft.train.checkpoint as C
    import openrft.train.loop as L
    from openrft.config import build_config
    from openrft.train.job import prepare, run_training
    flags, job_dir, when, nth, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    calls = [0]
    save, write = L.save_checkpoint, C.atomic_write_text
    def counted_save(*args, **kwargs):
        calls[0] += 1
        out = save(*args, **kwargs)
        if when == "after" and calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # the checkpoint is complete, LATEST points at it
        return out
    def dying_write(path, text):
        if when == "during" and calls[0] == nth and path.name == "state.json":
            os.kill(os.getpid(), signal.SIGKILL)  # the adapter and optimizer are written, in a .tmp folder
        return write(path, text)
    L.save_checkpoint, C.atomic_write_text = counted_save, dying_write
    cfg, _ = build_config({}, json.loads(flags))
    run_training(prepare(cfg), job_dir, resume=mode == "resume", quiet=True)
    (job_dir / "saves").write_text(str(calls[0]))
    """
)


@pytest.mark.parametrize("when", ["after", "during"])
def test_kill_at_a_checkpoint_resumes_with_every_line_once_and_the_same_adapter(
    tiny_model_dir, tmp_path, when
):
    flags = dict(
        base_model=str(tiny_model_dir), dataset="arithmetic:count=9", evaluator=f"{FIXTURES}::spread",
        rl_loss_method="grpo", response_candidates_count=4, max_output_tokens=16, chunk_size=2, batch_size=100,
        micro_batch_tokens=128, checkpoint_every=2, eval_every=0, eval_auto_carveout=0.2, temperature=1.0,
        learning_rate=5e-4, seed=5, deterministic=True,
    )  # fmt: skip
    script = tmp_path / "job.py"
    script.write_text(CHECKPOINT_KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    def run(job_dir, nth, mode):
        return subprocess.run(
            [sys.executable, str(script), json.dumps(flags), str(job_dir), when, str(nth), mode], env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    whole = run(tmp_path / "whole", 0, "fresh")
    assert whole.returncode == 0, whole.stderr[-2000:]
    saves = int((tmp_path / "whole" / "saves").read_text())
    assert saves >= 3  # periodic checkpoints and the final one
    for nth in (1, saves):  # the first periodic checkpoint, and the final one (after the last evaluation)
        job = tmp_path / f"killed-{nth}"
        killed = run(job, nth, "fresh")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        if when == "during":
            assert list((job / "checkpoints").glob(".step-*.tmp"))  # half-written, under its temporary name
        resumed = run(job, 0, "resume")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert not list((job / "checkpoints").glob(".step-*"))  # leftovers removed on resume
        whole_rows = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
        rows = (job / "metrics.jsonl").read_text().splitlines()

        def strip(lines):
            return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "throughput/"))}
                    for x in lines]  # fmt: skip

        assert strip(rows) == strip(whole_rows)  # every step and evaluation exactly once, same values
        steps = [r["step"] for r in strip(rows) if "loss/policy" in r]
        assert steps == list(range(1, len(steps) + 1))
        assert sum("eval/reward" in r and "loss/policy" not in r for r in strip(rows)) == 2  # start and end
        from safetensors.torch import load_file

        a = load_file(str(tmp_path / "whole" / "output" / "adapter_model.safetensors"))
        b = load_file(str(job / "output" / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-exact


@pytest.mark.parametrize("cap", ["2", "0"])
def test_a_bfloat16_job_starts_every_round_at_ratio_one_even_for_gspo(tiny_model_dir, tmp_path, capsys, cap):
    # in bfloat16 the engine's decoding and the trainer's pass round differently: the trainer's own old
    # log-probs (with the importance weights or, cap 0, without) keep GSPO's tight clip range (3e-4 /
    # 4e-4) from clipping anything before a round's first update. (That they are taken in each step's own
    # micro-batches matters on real models: tests/integration/test_mismatch_recompute.py.)
    flags = _flags(tiny_model_dir, tmp_path, "gspo-token", "spread", "--dtype", "bfloat16", "--device", "cpu",
                   "--rollout-is-cap", cap)  # fmt: skip
    flags[flags.index("--micro-batch-tokens") + 1] = "64"
    assert main(["rftj", "create", *flags]) == 0, capsys.readouterr().err
    rows = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss/policy" in r]
    firsts = {}
    for row in rows:  # several steps per round, of several micro-batches each: the first is on-policy
        firsts.setdefault(row["train/round"], row)
    assert len(firsts) >= 2 and len(rows) > len(firsts)
    assert max(r["batch/micro_batches"] for r in rows) >= 2
    for row in firsts.values():
        assert row["ratio/min"] == pytest.approx(1.0, abs=1e-6) and row["ratio/max"] == pytest.approx(
            1.0, abs=1e-6
        )
        assert row["clip/frac"] == 0.0
        assert "mismatch/kl" in row  # measured by the recomputation


def test_a_bfloat16_job_on_the_cpu_trains_a_float32_adapter(tiny_model_dir, tmp_path, capsys):
    flags = _flags(tiny_model_dir, tmp_path, "grpo", "spread", "--dtype", "bfloat16", "--device", "cpu")
    assert main(["rftj", "create", *flags]) == 0, capsys.readouterr().err
    rows = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss/policy" in r]
    assert rows and all(
        math.isfinite(r["loss/policy"]) and math.isfinite(r["grad/norm"]) for r in rows if "grad/norm" in r
    )
    measured = [r["mismatch/kl"] for r in rows if "mismatch/kl" in r]
    assert measured and max(measured) < 1e-2  # bf16 sampler and trainer: the same forward, small rounding
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapter.values())
    assert json.loads((tmp_path / "out" / "job.json").read_text())["training"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, dtype):
    from openrft.algo.losses import resolve_loss
    from openrft.models import load_model
    from openrft.records import Completion
    from openrft.train.batching import TrainSequence, collate
    from openrft.train.policy import (
        attach_lora,
        enable_checkpointing,
        keep_adapter_float32,
        trainable_parameters,
    )
    from openrft.train.step import StepLoss, accumulate_gradients

    sequences = [
        TrainSequence(Completion(str(p), c, tuple(range(5 + p, 12 + 2 * p)), tuple(range(30 + c, 36 + 3 * c)), "",
                                 (-1.0,) * (6 + 3 * c - c), "length"), (-1.0) ** c * (c + 1), p)
        for p in range(2) for c in range(3)
    ]  # fmt: skip
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        base, tokenizer = load_model(str(tiny_model_dir), dtype=dtype)
        model = attach_lora(base, rank=4, seed=0)
        keep_adapter_float32(model)
        for p in trainable_parameters(model):  # a moved adapter, so that every gradient is non-trivial
            p.data.normal_(0, 0.05)
        if checkpointing:
            enable_checkpointing(model)
        model.train()
        batch = collate(sequences, tokenizer.pad_token_id)
        loss = StepLoss(*resolve_loss("grpo"), 0.7, full_sequences=checkpointing)
        accumulate_gradients(model, [batch], loss)
        grads[checkpointing] = torch.cat([p.grad.flatten() for p in trainable_parameters(model)])
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    assert grads[False].abs().sum() > 0
    torch.testing.assert_close(
        grads[True], grads[False], rtol=tolerance, atol=tolerance * grads[False].abs().max()
    )


def test_a_resume_never_logs_an_evaluation_twice(tiny_model_dir, tmp_path):
    """A job cancelled right after its start evaluation, then resumed, logs that evaluation once; so does
    the final one of a job resumed from the checkpoint written with its last step's evaluation."""
    from openrft.config import build_config
    from openrft.train.job import prepare, run_training

    flags = dict(
        base_model=str(tiny_model_dir), dataset="arithmetic:count=8", evaluator=f"{FIXTURES}::spread",
        eval_auto_carveout=0.25, response_candidates_count=2, max_output_tokens=16, chunk_size=3, batch_size=100,
        micro_batch_tokens=128, checkpoint_every=1, eval_every=2, temperature=1.0, seed=5,
    )  # fmt: skip
    prepared = prepare(build_config({}, flags)[0])
    job = tmp_path / "job"
    assert run_training(prepared, job, quiet=True, should_stop=lambda: True).status == "cancelled"
    run_training(prepared, job, resume=True, quiet=True)
    rows = read_jsonl(job / "metrics.jsonl")
    evals = [r["step"] for r in rows if "eval/reward" in r]
    assert evals.count(0) == 1 and len(evals) == len(set(evals)), evals
    last = max(r["step"] for r in rows)
    assert last in evals  # the last step was evaluated, once
