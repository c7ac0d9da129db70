"""What the CUDA paths decide, checked on a machine without a GPU by standing in for the answers
``torch.cuda`` would give, and by writing a checkpoint whose tensors say they live on a GPU."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from openrft.models import resolve_device


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one CUDA device of the capability the test sets in ``capability[0]``."""
    capability = [(8, 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    return capability


@pytest.mark.parametrize(("capability", "dtype"), [((7, 0), "float32"), ((7, 5), "float32"),
                                                    ((8, 0), "bfloat16"), ((9, 0), "bfloat16")])  # fmt: skip
def test_dtype_auto_is_bfloat16_only_on_a_gpu_that_computes_in_it(one_gpu, capability, dtype):
    one_gpu[0] = capability  # V100 7.0 and T4 7.5 emulate bfloat16 slowly; A100 8.0 and H100 9.0 have it
    assert resolve_device("auto", "auto") == ("cuda", dtype)
    assert resolve_device("cuda:0", "auto") == ("cuda:0", dtype)
    assert resolve_device("cuda", "bfloat16") == ("cuda", "bfloat16")  # asked for: kept
    assert resolve_device("cpu", "auto") == ("cpu", "float32")


def test_the_memory_a_job_may_use_leaves_the_cuda_context_and_the_allocator_their_share(monkeypatch):
    from openrft.train import memory

    total = 80 * 2**30
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=total)
    )
    usable = memory.device_memory("cuda:0")
    assert usable == int(total * (1 - memory.ALLOCATOR_SHARE)) - memory.CUDA_CONTEXT_BYTES
    assert 75 * 2**30 < usable < 76 * 2**30
    assert memory.device_memory("cpu") is None


def test_deterministic_mode_fixes_the_cublas_workspace_cuda_needs_for_it(monkeypatch):
    from openrft.train.setup import make_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    threads = torch.get_num_threads()
    try:
        make_deterministic()
        assert (
            os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            and torch.are_deterministic_algorithms_enabled()
        )
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own is kept
        make_deterministic()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path, tiny_model, monkeypatch):
    """The optimizer's state is saved where it lived (``cuda:0`` on a GPU job): it must load anywhere."""
    from openrft.settings import OptimizerSettings
    from openrft.train import checkpoint
    from openrft.train.policy import attach_lora
    from openrft.train.setup import make_optimizer

    model, _ = tiny_model
    policy = attach_lora(model, 2, 4, seed=0)
    optimizer, scheduler = make_optimizer(
        OptimizerSettings(learning_rate=1e-3, weight_decay=0.0, warmup_steps=0), policy
    )
    sum(p.sum() for p in policy.parameters() if p.requires_grad).backward()
    optimizer.step()
    saved = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    with monkeypatch.context() as gpu:  # every tensor is written as the GPU's
        gpu.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        path = checkpoint.save_checkpoint(tmp_path, checkpoint.LoopState(step=1, optimizer_step=1),
                                          policy, optimizer, scheduler)  # fmt: skip
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load does here
        torch.load(path / "optim.pt", weights_only=False)
    optimizer.state.clear()
    assert checkpoint.load_checkpoint(path, policy, optimizer, scheduler).step == 1
    state = optimizer.state_dict()["state"][0]
    assert all(torch.equal(state[k], v) and state[k].device.type == "cpu" for k, v in saved.items())
