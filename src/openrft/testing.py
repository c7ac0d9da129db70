"""Helpers for tests and benchmarks: tiny, randomly initialised models with the real tokenizer.

A tiny model is a 2-layer Llama with the embedded model's vocabulary, tokenizer and chat
template, built in well under a second, so tests exercise the real code paths (chat
rendering, end-of-turn tokens, LoRA, KV caches) without the real weights.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from openrft.models import EMBEDDED_MODEL, load_tokenizer


@lru_cache(maxsize=1)
def _cached_tokenizer() -> Any:
    return load_tokenizer(EMBEDDED_MODEL)


def embedded_tokenizer() -> Any:
    """The embedded model's tokenizer (read once per process; no model weights are loaded)."""
    return _cached_tokenizer()


def tiny_model(
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 32,
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    initializer_range: float = 0.5,
    max_position_embeddings: int = 4096,
    tokenizer: Any = None,
) -> tuple[Any, Any]:
    """A randomly initialised small Llama (fp32, eval mode, tied embeddings) and the real tokenizer.

    ``initializer_range`` 0.5 makes next-token distributions peaked enough (entropy of a
    few nats) that temperature, top-k and top-p visibly matter; pass 0.02 for the usual
    near-uniform fresh initialisation. The same seed always gives the same weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else embedded_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def write_tiny_model_dir(path: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Save :func:`tiny_model` as a Hugging Face model directory (usable as ``--base-model DIR``)."""
    path = Path(path)
    model, tokenizer = tiny_model(seed, **kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


__all__ = ["embedded_tokenizer", "tiny_model", "write_tiny_model_dir"]
