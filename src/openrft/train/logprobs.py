"""Log-probabilities of sampled tokens without materialising [batch, tokens, vocabulary] logits.

The naive way (``model(ids).logits.log_softmax(-1).gather(...)``) keeps several
``B x L x V`` float tensors alive for backward: for SmolLM2 (V = 49152) and a
32 x 160-token step that is ~1 GB each and ~21 GB peak. Here the decoder body
produces hidden states, only the completion positions are kept, and the frozen
LM head is applied to blocks of positions inside a custom autograd function that
saves just the hidden states and one log-sum-exp per position; backward recomputes
each block's logits. Peak extra memory is O(block x V) whatever the batch.

For position n with hidden state h_n, target token y_n and temperature T:

    z_n = W h_n / T,    logp_n = z_n[y_n] - logsumexp(z_n)
    d logp_n / d h_n = (W[y_n] - softmax(z_n) @ W) / T
"""

from __future__ import annotations

import torch

from openrft.models import attention_mask
from openrft.train.packing import pack_inputs, plan_packing

DEFAULT_HEAD_BLOCK = 512


class _BlockwiseTokenLogProb(torch.autograd.Function):
    """logp_N = log_softmax(hidden_NH @ weight_VH.T / T)[n, targets_N[n]], computed block by block.

    Every block's logits go into one scratch buffer and are turned into probabilities in place, so
    in fp32 a call allocates a single ``[block, V]`` tensor: every pass over ``block x V`` floats and
    every fresh allocation of that size (page faults on first touch) is a large share of a CPU step.
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, targets_N, inv_temperature: float, block: int):
        logp_N = hidden_NH.new_empty(hidden_NH.shape[0], dtype=torch.float32)
        lse_N = hidden_NH.new_empty(hidden_NH.shape[0], dtype=torch.float32)
        scratch = _Scratch(hidden_NH, weight_VH, block)
        for start in range(0, hidden_NH.shape[0], block):
            stop = start + block
            logits_CV = scratch.logits(hidden_NH[start:stop], inv_temperature)
            target_C = logits_CV.gather(1, targets_N[start:stop, None]).squeeze(1)
            max_C = logits_CV.amax(dim=-1)
            lse_C = logits_CV.sub_(max_C[:, None]).exp_().sum(dim=-1).log_().add_(max_C)
            logp_N[start:stop] = target_C - lse_C
            lse_N[start:stop] = lse_C
        ctx.save_for_backward(hidden_NH, weight_VH, targets_N, lse_N)
        ctx.inv_temperature, ctx.block = inv_temperature, block
        return logp_N

    @staticmethod
    def backward(ctx, grad_N):
        hidden_NH, weight_VH, targets_N, lse_N = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden_NH) if need_h else None
        grad_w = torch.zeros_like(weight_VH) if need_w else None
        scratch = _Scratch(hidden_NH, weight_VH, ctx.block)
        for start in range(0, hidden_NH.shape[0], ctx.block):
            stop = start + ctx.block
            h_CH = hidden_NH[start:stop]
            # d logp / d (h W^T) = (onehot(y) - softmax(logits)) / T, times the incoming gradient
            scale_C = grad_N[start:stop] * ctx.inv_temperature
            g_CV = scratch.logits(h_CH, ctx.inv_temperature).sub_(lse_N[start:stop, None]).exp_()
            g_CV.mul_(-scale_C[:, None])
            rows = torch.arange(g_CV.shape[0], device=g_CV.device)
            g_CV[rows, targets_N[start:stop]] += scale_C
            g_CV = g_CV.to(weight_VH.dtype)
            if need_h:
                grad_h[start:stop] = g_CV @ weight_VH
            if need_w:
                grad_w += g_CV.T @ h_CH
        return grad_h, grad_w, None, None, None


class _Scratch:
    """One reusable ``[block, V]`` buffer for the logits of a block (float32, or the weight's wider type)."""

    def __init__(self, hidden_NH: torch.Tensor, weight_VH: torch.Tensor, block: int):
        self.weight_VH = weight_VH
        self.wide = weight_VH.dtype in (torch.float32, torch.float64) and hidden_NH.dtype == weight_VH.dtype
        rows = min(block, hidden_NH.shape[0])
        dtype = weight_VH.dtype if self.wide else torch.float32
        self.buffer_BV = hidden_NH.new_empty((rows, weight_VH.shape[0]), dtype=dtype)

    def logits(self, h_CH: torch.Tensor, inv_temperature: float) -> torch.Tensor:
        """``h_CH @ W.T / T`` in the buffer (with a narrower weight type: the product, widened, then / T)."""
        out_CV = self.buffer_BV[: h_CH.shape[0]]
        if self.wide:  # scaling the few hidden states instead of the many logits: one pass fewer
            h_CH = h_CH if inv_temperature == 1.0 else h_CH * inv_temperature
            return torch.mm(h_CH, self.weight_VH.T, out=out_CV)
        out_CV.copy_(h_CH @ self.weight_VH.T)
        return out_CV if inv_temperature == 1.0 else out_CV.mul_(inv_temperature)


def token_logprobs(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_N: torch.Tensor,
    temperature: float = 1.0,
    block: int = DEFAULT_HEAD_BLOCK,
) -> torch.Tensor:
    """Log-prob of each target under softmax(hidden @ weight.T / temperature); returns float32 [N]."""
    if hidden_NH.shape[0] == 0:
        return hidden_NH.new_zeros(0, dtype=torch.float32)
    return _BlockwiseTokenLogProb.apply(hidden_NH, weight_VH, targets_N, 1.0 / temperature, block)


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor]:
    """The transformer body (embeddings + blocks + final norm) and the LM head weight of a causal LM.

    Works through a peft wrapper: LoRA layers live inside the body's modules, so the body
    returned here runs with the adapter (and honours ``disable_adapter()``).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    if body is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        raise NotImplementedError(f"unsupported architecture for blockwise log-probs: {type(base).__name__}")
    return body, head.weight


def completion_logprobs(
    model: torch.nn.Module,
    prompt_ids_GP: torch.Tensor,
    prompt_mask_GP: torch.Tensor,
    row_group_R: torch.Tensor,
    completion_ids_RC: torch.Tensor,
    completion_mask_RC: torch.Tensor,
    temperature: float = 1.0,
    block: int = DEFAULT_HEAD_BLOCK,
    *,
    attention_mask_RC: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs ``[R, C]`` (float32, 0 off ``completion_mask_RC``) of completions that share prompts.

    ``attention_mask_RC`` marks the completion tokens the model sees (default: the completion
    mask); an agent's tool and user turns are seen but not scored.

    Each of the G (left-padded) prompts runs once; its key/value cache is gathered for the
    completion rows that continue it (``row_group_R``), so gradients reach the adapter
    through the prompt positions exactly as in a full-sequence forward, at 1/K the prompt
    cost for K candidates. Completion token t is predicted by the hidden state before it:
    the prompt's last position for t = 0, completion position t - 1 after that.
    """
    from transformers.cache_utils import DynamicCache

    body, weight_VH = decoder_and_head(model)
    prompt_pos_GP = (prompt_mask_GP.cumsum(-1) - 1).clamp(min=0)
    prompt_out = body(
        input_ids=prompt_ids_GP, attention_mask=prompt_mask_GP, position_ids=prompt_pos_GP,
        cache=DynamicCache(), use_cache=True,
    )  # fmt: skip
    seen_RC = completion_mask_RC if attention_mask_RC is None else attention_mask_RC
    start_R = prompt_mask_GP.sum(-1)[row_group_R]
    packing = plan_packing(row_group_R, seen_RC.sum(-1), completion_ids_RC.shape[1])
    if packing.rows < len(row_group_R):  # fewer rows: several completions of a prompt share one
        ids_BC, positions_BC, allowed_B1CL = pack_inputs(
            packing, completion_ids_RC, seen_RC, start_R, prompt_mask_GP
        )
        packed_cache = _rows_cache(prompt_out.cache, packing.group_B)
        hidden_BCH = body(
            input_ids=ids_BC, attention_mask=attention_mask(body, allowed_B1CL), position_ids=positions_BC,
            cache=packed_cache, use_cache=True,
        ).last_hidden_state  # fmt: skip
        hidden_RCH = packing.unpack(hidden_BCH)
    else:
        attention_RL = torch.cat([prompt_mask_GP[row_group_R], seen_RC.to(prompt_mask_GP.dtype)], dim=1)
        positions_RC = (
            start_R[:, None] + torch.arange(completion_ids_RC.shape[1], device=start_R.device)[None, :]
        )
        hidden_RCH = body(
            input_ids=completion_ids_RC, attention_mask=attention_RL, position_ids=positions_RC,
            cache=_rows_cache(prompt_out.cache, row_group_R), use_cache=True,
        ).last_hidden_state  # fmt: skip
    last_prompt_R1H = prompt_out.last_hidden_state[row_group_R, -1:]
    predictors_RCH = torch.cat([last_prompt_R1H, hidden_RCH[:, :-1]], dim=1)
    return _completion_positions(
        predictors_RCH, weight_VH, completion_ids_RC, completion_mask_RC, temperature, block
    )


def _rows_cache(cache, group_R: torch.Tensor):
    """A cache whose row ``r`` holds prompt ``group_R[r]``'s keys and values."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache(
        ddp_cache_data=[(layer.keys[group_R], layer.values[group_R]) for layer in cache.layers]
    )


def full_sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids_GP: torch.Tensor,
    prompt_mask_GP: torch.Tensor,
    row_group_R: torch.Tensor,
    completion_ids_RC: torch.Tensor,
    completion_mask_RC: torch.Tensor,
    temperature: float = 1.0,
    block: int = DEFAULT_HEAD_BLOCK,
    *,
    attention_mask_RC: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same ``[R, C]`` log-probs as :func:`completion_logprobs`, one forward pass per row.

    Each row is its prompt (left-padded) followed by its completion (right-padded), run without a
    key/value cache: the form gradient checkpointing needs (it drops caches while it recomputes),
    at the price of running each prompt once per candidate.
    """
    body, weight_VH = decoder_and_head(model)
    ids_RL = torch.cat([prompt_ids_GP[row_group_R], completion_ids_RC], dim=1)
    seen_RC = completion_mask_RC if attention_mask_RC is None else attention_mask_RC
    mask_RL = torch.cat([prompt_mask_GP[row_group_R], seen_RC.to(prompt_mask_GP.dtype)], dim=1)
    positions_RL = (mask_RL.cumsum(-1) - 1).clamp(min=0)
    hidden_RLH = body(input_ids=ids_RL, attention_mask=mask_RL, position_ids=positions_RL, use_cache=False)
    prompt_len = prompt_ids_GP.shape[1]
    predictors_RCH = hidden_RLH.last_hidden_state[:, prompt_len - 1 : -1]  # the state before each token
    return _completion_positions(
        predictors_RCH, weight_VH, completion_ids_RC, completion_mask_RC, temperature, block
    )


def _completion_positions(
    predictors_RCH, weight_VH, completion_ids_RC, completion_mask_RC, temperature, block
):
    """``[R, C]`` log-probs (float32, 0 on padding) from the hidden state before each completion token."""
    rows_N, cols_N = completion_mask_RC.bool().nonzero(as_tuple=True)
    logp_N = token_logprobs(
        predictors_RCH[rows_N, cols_N], weight_VH, completion_ids_RC[rows_N, cols_N], temperature, block
    )
    logp_RC = torch.zeros(completion_ids_RC.shape, dtype=torch.float32, device=completion_ids_RC.device)
    return logp_RC.index_put((rows_N, cols_N), logp_N)
