"""Each term of the memory estimate, computed from the formulas in openrft.train.memory's docstring
on a small Qwen2 shape (built on the meta device: nothing is allocated)."""

from __future__ import annotations

import dataclasses

import pytest

VOCAB, H, LAYERS, HEADS, KV_HEADS, MLP = 1000, 64, 2, 4, 2, 96
KV = KV_HEADS * (H // HEADS)  # the key/value width n_kv * d
HEAD = 2 * 512 * VOCAB * 4  # the blockwise LM head's float32 logits and exponentials


def _config(tied=False):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=KV_HEADS, intermediate_size=MLP, max_position_embeddings=8192,
                       tie_word_embeddings=tied)  # fmt: skip


def estimate(device="cuda", dtype="float32", tied=False, **flags):
    from openrft.config import build_config
    from openrft.train.memory import estimate_memory

    values = {"max_output_tokens": 200, "max_context_length": 300, "micro_batch_tokens": 1024, **flags}
    settings = build_config({}, values)[0].settings()
    model = dataclasses.replace(settings.model, device=device, dtype=dtype)
    return estimate_memory(_config(tied), dataclasses.replace(settings, model=model))


def per_token_layer(b):
    return b * (6 * H + 2 * KV + 4 * MLP)


@pytest.mark.parametrize("rank", [4, 16])
def test_the_adapter_counts_16_bytes_per_lora_parameter_on_every_block_linear(rank):
    # q, o: h -> h; k, v: h -> n_kv d; gate, up: h -> mlp; down: mlp -> h
    widths = 2 * (H + H) + 2 * (H + KV) + 3 * (H + MLP)
    assert estimate(lora_rank=rank).adapter == 16 * rank * widths * LAYERS


def test_activations_cover_a_whole_context_longer_than_the_micro_batch():
    est = estimate(micro_batch_tokens=256, max_context_length=2048)  # a sequence is never split
    assert est.activations == 2048 * LAYERS * per_token_layer(4) + HEAD


def test_checkpointed_activations_keep_each_layers_input_and_one_whole_layer():
    tokens = 1024
    est = estimate(gradient_checkpointing=True)
    expected = tokens * LAYERS * H * 4 + tokens * per_token_layer(4) + HEAD
    assert est.activations_checkpointed == expected and est.training == expected
    assert estimate(gradient_checkpointing=False).training == est.activations


def test_the_kv_cache_holds_keys_and_values_of_every_in_flight_rollout():
    assert estimate(dtype="bfloat16").kv_cache == 64 * 300 * 2 * LAYERS * KV * 2  # 64 rollouts when unset
    assert estimate(max_concurrent_rollouts=8).kv_cache == 8 * 300 * 2 * LAYERS * KV * 4


def test_the_peak_counts_the_kv_cache_when_it_is_larger_than_the_training_activations():
    est = estimate(max_concurrent_rollouts=4096, compile=False)
    assert est.kv_cache > est.training and est.runtime == 0 and est.sampling_copy == 0
    assert est.total == est.weights + est.adapter + est.kv_cache
    small = estimate(max_concurrent_rollouts=1, compile=False)
    assert small.total == small.weights + small.adapter + small.training


def test_the_cpu_sampling_copy_holds_a_tied_lm_head_of_its_own():
    tied, untied = estimate("cpu", tied=True), estimate("cpu", tied=False)
    assert untied.weights - tied.weights == VOCAB * H * 4  # the tied model has no separate head weight
    assert untied.sampling_copy == untied.weights
    # prepacked float32 copy: the head no longer shares the embedding's storage
    assert tied.sampling_copy == tied.weights + VOCAB * H * 4
