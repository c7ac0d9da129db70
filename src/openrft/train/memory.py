"""How much memory a job needs, estimated from the model's config before any weight is loaded.

    peak = weights + adapter + runtime + compiled step's buffers
           + max(activations (or checkpointed activations), rollout KV cache)

(a round samples, then trains: the rollouts' KV cache is freed before the training activations exist)

* **weights**: every base parameter in ``--dtype`` (counted on a ``meta``-device copy of the model).
* **adapter**: the LoRA weights in float32 with their gradients and AdamW's two moments (16 bytes
  per adapter parameter), rank ``--lora-rank`` on every linear layer of the blocks.
* **activations** of the largest micro-batch, ``T = max(--micro-batch-tokens, context)`` tokens:
  per token and layer ``b * (6h + 2 n_kv d + 4i)`` bytes kept for the backward pass (the inputs of
  the attention and MLP projections, the attention output, the SwiGLU intermediates; ``b`` bytes
  per element, ``h`` hidden, ``i`` MLP width, ``n_kv d`` the key/value width), plus the blockwise
  LM head's float32 logits. With bfloat16 weights, also each adapted projection's input cast to
  float32 for the float32 adapter (peft casts it per module and the adapter's backward keeps it:
  ``4 * (6h + i)`` bytes per token and layer on a Llama/Qwen block, as much again as the rest on a
  Qwen2.5 shape; without it the estimate was 1.65-1.69x under the peaks measured on an H200).
  With ``--gradient-checkpointing``: each layer's input only, plus one layer's full activations
  (recomputed in the backward pass).
* **KV cache** of the rollouts: ``--max-concurrent-rollouts`` sequences (64 when unset) of
  ``context`` tokens, ``2 * layers * n_kv * d`` elements each.
* **compiled step's buffers**: on a GPU the local engine's compiled decoding step
  (:mod:`openrft.rollout.slots`) keeps a KV cache for every in-flight slot, ``context`` rounded up
  to a power of two wide, allocated between rounds too (while the trainer steps).
* **sampling copy**: on the CPU the local engine samples from a copy of float32 weights with the
  adapter merged in and the linear weights prepacked (:mod:`openrft.rollout.inference_copy`): the base
  weights once more (none for bfloat16 weights, which it samples through peft).
* **runtime**: on the CPU, what this process already holds (Python, torch, transformers).

``context`` is ``--max-context-length``, else ``--max-output-tokens`` + 512 prompt tokens. The
measured error is in ``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openrft.rollout.slots import bucket_columns
from openrft.settings import JobSettings

GiB = 2**30
ASSUMED_PROMPT_TOKENS = 512
LM_HEAD_BLOCK = 512  # positions whose logits the blockwise LM head holds at once
DEFAULT_IN_FLIGHT = 64


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    sampling_copy: int
    adapter: int
    activations: int
    activations_checkpointed: int
    kv_cache: int
    compiled_buffers: int
    runtime: int
    checkpointing: bool
    device: str

    @property
    def training(self) -> int:
        return self.activations_checkpointed if self.checkpointing else self.activations

    @property
    def total(self) -> int:
        """The peak: rollouts and training take turns, so the larger of the two counts."""
        return (
            self.weights
            + self.sampling_copy
            + self.adapter
            + self.runtime
            + self.compiled_buffers
            + max(self.training, self.kv_cache)
        )

    def lines(self) -> list[str]:
        """A small table for ``--dry-run``."""
        rows = [
            ("base weights", self.weights),
            *([("inference copy for sampling", self.sampling_copy)] if self.sampling_copy else []),
            ("LoRA weights, gradients, AdamW state", self.adapter),
            (f"activations{' (checkpointed)' if self.checkpointing else ''}", self.training),
            ("rollout KV cache", self.kv_cache),
            *([("compiled sampling step's buffers", self.compiled_buffers)] if self.compiled_buffers else []),
        ]
        if self.runtime:
            rows.append(("Python, torch and libraries", self.runtime))
        out = [f"memory estimate on {self.device}:"]
        out += [f"  {name:<40} {size / GiB:8.2f} GiB" for name, size in rows]
        out.append(f"  {'peak (rollouts and training take turns)':<40} {self.total / GiB:8.2f} GiB")
        other = self.activations if self.checkpointing else self.activations_checkpointed
        state = "without" if self.checkpointing else "with"
        out.append(f"  (activations {state} --gradient-checkpointing: {other / GiB:.2f} GiB)")
        return out


def estimate_memory(config: Any, settings: JobSettings) -> MemoryEstimate:
    """The estimate for a job on a model of ``config`` (a transformers config)."""
    import psutil

    m, b = settings.model, 2 if settings.model.dtype == "bfloat16" else 4
    base_params, adapter_params, adapted_inputs = _parameter_counts(config, m.lora_rank)
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    mlp = getattr(config, "intermediate_size", None) or 4 * h
    context = m.max_context_length or settings.sampling.max_tokens + ASSUMED_PROMPT_TOKENS
    tokens = max(settings.batching.micro_batch_tokens, context)
    per_token_layer = b * (6 * h + 2 * kv_heads * head_dim + 4 * mlp)
    if b != 4:  # the float32 adapter's own float32 copies of its inputs
        per_token_layer += 4 * adapted_inputs // layers
    head = 2 * LM_HEAD_BLOCK * config.vocab_size * 4  # a block of float32 logits and their exponentials
    in_flight = settings.engine.max_concurrent_rollouts or DEFAULT_IN_FLIGHT
    return MemoryEstimate(
        weights=base_params * b,
        sampling_copy=_sampling_copy_params(config, base_params, prepacked=b == 4) * b
        if m.device == "cpu" and settings.engine.kind == "local" and not settings.engine.ray and b == 4
        else 0,
        adapter=adapter_params * 16,
        activations=tokens * layers * per_token_layer + head,
        activations_checkpointed=tokens * layers * h * b + tokens * per_token_layer + head,
        kv_cache=in_flight * context * 2 * layers * kv_heads * head_dim * b,
        compiled_buffers=in_flight * bucket_columns(context) * 2 * layers * kv_heads * head_dim * b
        if m.device != "cpu"
        and settings.engine.kind == "local"
        and settings.engine.compile
        and not settings.engine.ray
        else 0,
        runtime=psutil.Process().memory_info().rss if m.device == "cpu" else 0,
        checkpointing=m.gradient_checkpointing,
        device=m.device,
    )


def _sampling_copy_params(config: Any, base_params: int, *, prepacked: bool) -> int:
    """The inference copy's parameters: the base ones, plus a tied LM head's own weight when the copy
    is prepacked (fp32 on a CPU: the packed head no longer shares the embedding's storage)."""
    tied = prepacked and getattr(config, "tie_word_embeddings", False)
    return base_params + (config.vocab_size * config.hidden_size if tied else 0)


def _parameter_counts(config: Any, rank: int) -> tuple[int, int, int]:
    """``(base parameters, LoRA parameters, summed input width of the adapted linears)`` from a model
    built on the ``meta`` device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from openrft.train.policy import lora_target_modules

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    base = sum(p.numel() for p in model.parameters())
    targets = set(lora_target_modules(model))
    head = model.get_output_embeddings()
    adapted = [
        module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and name.rsplit(".", 1)[-1] in targets
    ]
    adapter = sum(rank * (module.in_features + module.out_features) for module in adapted)
    return base, adapter, sum(module.in_features for module in adapted)


CUDA_CONTEXT_BYTES = 2**29  # the CUDA context, cuBLAS' workspaces and kernels: about half a GiB
ALLOCATOR_SHARE = 0.05  # what the caching allocator's fragmentation keeps from use, at a guess


def device_memory(device: str) -> int | None:
    """Bytes of a CUDA device a job's tensors can use (None on the CPU): its total memory less the CUDA
    context and a share for the allocator's fragmentation, neither of which the estimate counts. Not the
    memory free now: a job checked while another one runs is not refused for the memory it will free."""
    if not device.startswith("cuda"):
        return None
    import torch

    total = torch.cuda.get_device_properties(int(device.partition(":")[2] or 0)).total_memory
    return int(total * (1 - ALLOCATOR_SHARE)) - CUDA_CONTEXT_BYTES


__all__ = ["MemoryEstimate", "device_memory", "estimate_memory"]
