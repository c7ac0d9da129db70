"""Completions of one prompt packed into shared rows give the unpacked log-probs and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from openrft.train.logprobs import completion_logprobs, full_sequence_logprobs
from openrft.train.packing import plan_packing


def _llama(attention: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         attn_implementation=attention)  # fmt: skip
    return LlamaForCausalLM(config)  # float32 (transformers' eager mask turns float64 padding rows into NaN)


def _batch():
    """Two prompts (5 and 3 tokens, left-padded) with 4 completions each, 1 to 9 tokens long."""
    torch.manual_seed(1)
    prompt_mask_GP = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    prompt_ids_GP = torch.randint(1, 97, (2, 5)) * prompt_mask_GP
    lengths_R = torch.tensor([9, 2, 1, 5, 3, 9, 4, 1])
    row_group_R = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    mask_RC = (torch.arange(9)[None, :] < lengths_R[:, None]).float()
    completion_ids_RC = torch.randint(1, 97, (8, 9)) * mask_RC.long()
    return prompt_ids_GP, prompt_mask_GP, row_group_R, completion_ids_RC, mask_RC


def test_first_fit_decreasing_by_prompt():
    packing = plan_packing(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([9, 2, 1, 5, 3, 9, 4, 1]), 9)
    assert packing.rows == 4  # prompt 0: [9], [5 2 1]; prompt 1: [9], [4 3 1]
    assert packing.group_B.tolist() == [0, 0, 1, 1]
    assert packing.row_R.tolist() == [0, 1, 1, 1, 3, 2, 3, 3]
    assert packing.offset_R.tolist() == [0, 5, 7, 0, 4, 0, 0, 7]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_rows_give_the_unpacked_logprobs_and_gradients(attention, temperature, monkeypatch):
    from openrft.train import logprobs

    model = _llama(attention)
    batch = _batch()
    assert plan_packing(batch[2], batch[4].sum(-1), 9).rows == 4  # 8 completions in 4 rows

    def values_and_gradients():
        logp_RC = completion_logprobs(model, *batch, temperature)
        upstream_RC = torch.linspace(-1, 1, logp_RC.numel()).reshape(logp_RC.shape)
        parameters = [p for p in model.parameters() if p.requires_grad]
        return logp_RC, torch.autograd.grad((logp_RC * upstream_RC).sum(), parameters)

    packed, packed_grads = values_and_gradients()
    monkeypatch.setattr(logprobs, "plan_packing", lambda group_R, lengths_R, width: _NoPacking(len(group_R)))
    alone, alone_grads = values_and_gradients()
    torch.testing.assert_close(packed, alone, atol=2e-6, rtol=0)
    assert (packed[batch[4] == 0] == 0).all()
    for ours, theirs in zip(packed_grads, alone_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    if attention == "sdpa":  # and an independent path: one uncached row per completion
        full = full_sequence_logprobs(model, *batch, temperature)
        torch.testing.assert_close(packed, full, atol=2e-6, rtol=0)


class _NoPacking:
    def __init__(self, rows: int):
        self.rows = rows


def test_the_planner_counts_packed_rows_unless_full_sequences_run():
    from openrft.records import Completion
    from openrft.train.batching import TrainSequence, padded_cost, plan_micro_batches

    prompt = tuple(range(1, 11))  # 10 tokens
    sequences = [
        TrainSequence(Completion("p", c, prompt, tuple(range(n)), "", (0.0,) * n, "stop"), 1.0, 0)
        for c, n in enumerate([9, 2, 1, 5])
    ]
    assert padded_cost(sequences) == 10 + 2 * 9  # [9], [5 2 1]
    assert padded_cost(sequences, packed=False) == 10 + 4 * 9
    assert plan_micro_batches(sequences, 28) == [[0, 3, 1, 2]]  # one micro-batch when packed
    assert len(plan_micro_batches(sequences, 28, packed=False)) == 2
