"""Blockwise sampled-token log-probs equal the naive full-vocabulary computation, values and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from openrft.train.logprobs import token_logprobs
from oracles import sequence_logprobs


def _llama(vocab=97, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).float()


@pytest.mark.parametrize("block", [1, 3, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_naive_values_and_grads(block, temperature):
    torch.manual_seed(1)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    ours = token_logprobs(hidden, weight, targets, temperature, block)
    naive = torch.log_softmax(hidden @ weight.T / temperature, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(ours.double(), naive, atol=1e-6, rtol=0)
    upstream = torch.randn(7, dtype=torch.float64)
    g_ours = torch.autograd.grad((ours.double() * upstream).sum(), (hidden, weight))
    g_naive = torch.autograd.grad((naive * upstream).sum(), (hidden, weight))
    for a, b in zip(g_ours, g_naive, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sequence_logprobs_match_model_logits_with_padding():
    model = _llama()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    comp = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    logp = sequence_logprobs(model, ids, attn, comp, temperature=0.7, block=2)
    with torch.no_grad():
        ref_all = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits / 0.7, -1)
    for b in range(2):
        for t in range(ids.shape[1]):
            expected = ref_all[b, t - 1, ids[b, t]].item() if comp[b, t] else 0.0
            assert logp[b, t].item() == pytest.approx(expected, abs=1e-5)


def test_sequence_logprobs_gradient_reaches_body_parameters():
    model = _llama()
    ids = torch.tensor([[5, 6, 7, 8]])
    logp = sequence_logprobs(model, ids, torch.ones_like(ids), torch.tensor([[0, 0, 1, 1]]))
    logp.sum().backward()
    naive_model = _llama()
    naive = torch.log_softmax(naive_model(input_ids=ids).logits, -1)
    (naive[0, 1, 7] + naive[0, 2, 8]).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), naive_model.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
