"""Rollout engines: turn prompts into sampled completions with log-probs.

* :class:`LocalEngine` samples in-process from a transformers model (LoRA included),
  with a shared prefill per prompt, a preallocated KV cache and continuous batching.
* :class:`EndpointEngine` asks an OpenAI-compatible server (vLLM, ``openrft serve``).

Both implement :class:`openrft.records.RolloutEngine`. This package imports torch lazily
so the command line stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalEngine", "EndpointEngine", "encode_messages", "DEFAULT_MAX_CONCURRENT"]

# Sequences decoded together when max_concurrent_rollouts is unset (docs/benchmarks.md, "defaults").
DEFAULT_MAX_CONCURRENT = 64


def __getattr__(name: str) -> Any:
    if name == "LocalEngine":
        from openrft.rollout.local import LocalEngine

        return LocalEngine
    if name == "EndpointEngine":
        from openrft.rollout.endpoint import EndpointEngine

        return EndpointEngine
    if name == "encode_messages":
        from openrft.rollout.prompts import encode_messages

        return encode_messages
    raise AttributeError(f"module 'openrft.rollout' has no attribute {name!r}")
