"""The memory estimate of `--dry-run` against the measured peak RSS of real (tiny) CPU jobs of two sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openrft.cli import main

PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from openrft.config import build_config
    from openrft.train.job import prepare, run_training
    flags, job_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    prepared = prepare(build_config({}, flags)[0])
    run_training(prepared, job_dir, quiet=True)
    # this process's own high-water mark (getrusage's ru_maxrss would include the parent's before exec)
    status = Path("/proc/self/status").read_text().splitlines()
    peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps({"estimate": prepared.memory.total, "peak": peak}))
    """
)


@pytest.mark.parametrize("hidden", [256, 1024])
def test_the_estimate_is_within_30_percent_of_the_measured_peak(tmp_path, tokenizer, hidden):
    from openrft.testing import write_tiny_model_dir

    model = write_tiny_model_dir(tmp_path / "model", seed=0, hidden_size=hidden, intermediate_size=3 * hidden,
                                 num_layers=4, num_heads=8, num_kv_heads=4, tokenizer=tokenizer)  # fmt: skip
    flags = dict(
        base_model=str(model), dataset="arithmetic:count=16", evaluator="arithmetic", response_candidates_count=8,
        max_output_tokens=64, max_context_length=160, chunk_size=8, max_concurrent_rollouts=64,
        micro_batch_tokens=256, eval_every=0,
    )  # fmt: skip
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    done = subprocess.run([sys.executable, str(script), json.dumps(flags), str(tmp_path / "job")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.7 <= measured["peak"] / measured["estimate"] <= 1.3, measured


def test_dry_run_prints_the_estimate(tiny_model_dir, capsys):
    assert (
        main(["rftj", "create", "--dry-run", "--base-model", str(tiny_model_dir), "--gradient-checkpointing"])
        == 0
    )
    out = capsys.readouterr().out
    assert "memory estimate on cpu:" in out and "activations (checkpointed)" in out and "peak" in out


def test_a_job_too_large_for_the_cuda_device_is_refused_with_the_numbers(tiny_model_dir, monkeypatch):
    import dataclasses

    import openrft.train.memory as memory
    from openrft.config import build_config
    from openrft.errors import ConfigError
    from openrft.train.job import check_memory

    settings = build_config({}, {"base_model": str(tiny_model_dir)})[0].settings()
    settings = dataclasses.replace(
        settings, model=dataclasses.replace(settings.model, device="cuda:0", dtype="bfloat16")
    )
    monkeypatch.setattr(memory, "device_memory", lambda device: 2**20)  # a 1 MiB "GPU"
    with pytest.raises(ConfigError) as refused:
        check_memory(settings)
    assert refused.value.message.startswith("--device cuda:0: the job needs about")
    assert (
        "more than the 0.0 GiB the device leaves a job's tensors" in refused.value.message
        and "gradient-checkpointing" in refused.value.hint
        and "compiled sampling step's buffers" in refused.value.message
        and "--no-compile" in refused.value.hint
    )
    monkeypatch.setattr(memory, "device_memory", lambda device: 2**40)
    assert check_memory(settings).runtime == 0  # on a GPU the process's own memory is not the device's


def test_gpu_terms_of_the_estimate():
    """On a GPU: the float32 adapter's float32 input copies (bfloat16 base), and the compiled step's buffers."""
    import dataclasses

    from transformers import Qwen2Config

    from openrft.config import build_config
    from openrft.train.memory import estimate_memory

    config = Qwen2Config(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=4096)  # fmt: skip

    def estimate(device: str, dtype: str, **flags):
        values = {"max_output_tokens": 200, "max_context_length": 300, "micro_batch_tokens": 1024, **flags}
        settings = build_config({}, values)[0].settings()
        model = dataclasses.replace(settings.model, device=device, dtype=dtype)
        return estimate_memory(config, dataclasses.replace(settings, model=model))

    tokens, layers, h, kv, mlp = 1024, 2, 64, 2 * 16, 96
    fp32 = estimate("cuda", "float32")
    bf16 = estimate("cuda", "bfloat16")
    assert fp32.activations - 2 * 512 * 1000 * 4 == tokens * layers * 4 * (6 * h + 2 * kv + 4 * mlp)
    # q, k, v, o, gate and up read h wide inputs, down reads the MLP width: 4 bytes each in float32
    assert bf16.activations - 2 * 512 * 1000 * 4 == tokens * layers * (
        2 * (6 * h + 2 * kv + 4 * mlp) + 4 * (6 * h + mlp)
    )
    # 64 slots, 300 columns rounded up to 512, keys and values of 2 layers, 2 bytes
    assert bf16.compiled_buffers == 64 * 512 * 2 * layers * kv * 2
    assert estimate("cuda", "bfloat16", compile=False).compiled_buffers == 0
    assert estimate("cpu", "float32").compiled_buffers == 0
    assert bf16.total - estimate("cuda", "bfloat16", compile=False).total == bf16.compiled_buffers
    # the CPU engine's merged copy: float32 weights only (bfloat16 ones are sampled through peft)
    assert estimate("cpu", "float32").sampling_copy > 0
    assert estimate("cpu", "bfloat16").sampling_copy == 0
