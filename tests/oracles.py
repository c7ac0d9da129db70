"""Reference implementations the tests compare the project's faster code against."""

from __future__ import annotations

import torch

from openrft.train.logprobs import DEFAULT_HEAD_BLOCK, decoder_and_head, token_logprobs


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids_BL: torch.Tensor,
    attention_mask_BL: torch.Tensor,
    completion_mask_BL: torch.Tensor,
    temperature: float = 1.0,
    block: int = DEFAULT_HEAD_BLOCK,
) -> torch.Tensor:
    """Log-probs of every token where ``completion_mask_BL`` is 1, given everything before it.

    Returns ``logp_BL`` (float32) aligned with ``input_ids_BL``: position l holds
    log p(input_ids[l] | input_ids[:l]) where completion_mask is 1, and 0 elsewhere.
    Sequences are right-padded; the first token of a row is never a target.
    """
    body, weight_VH = decoder_and_head(model)
    hidden_BLH = body(
        input_ids=input_ids_BL, attention_mask=attention_mask_BL, use_cache=False
    ).last_hidden_state
    target_mask_BL = completion_mask_BL.bool().clone()
    target_mask_BL[:, 0] = False
    rows_N, cols_N = target_mask_BL.nonzero(as_tuple=True)
    hidden_NH = hidden_BLH[rows_N, cols_N - 1]  # the state *before* each target predicts it
    targets_N = input_ids_BL[rows_N, cols_N]
    logp_N = token_logprobs(hidden_NH, weight_VH, targets_N, temperature, block)
    logp_BL = torch.zeros(input_ids_BL.shape, dtype=torch.float32, device=input_ids_BL.device)
    return logp_BL.index_put((rows_N, cols_N), logp_N)


def teacher_forced(model, completion, temperature):
    """A completion's log-probs by one plain forward pass over prompt + completion, at ``temperature``."""
    ids = list(completion.prompt_token_ids) + list(completion.completion_token_ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    start = len(completion.prompt_token_ids) - 1
    scaled = torch.log_softmax(logits[start:-1] / temperature, dim=-1)
    return scaled.gather(1, torch.tensor(completion.completion_token_ids)[:, None]).squeeze(1)
