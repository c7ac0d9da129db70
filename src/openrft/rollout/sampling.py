"""Token sampling: temperature, then top-k, then top-p (vLLM's order), by inverse CDF.

Each row brings its own uniform number ``u`` in [0, 1), drawn from that row's private
generator, so the token a row samples depends only on its logits and its own random
stream, never on which other rows share the batch. The token is the first one whose
cumulative (truncated, unnormalised) probability exceeds ``u`` times the kept mass.

The log-probability recorded for the sampled token is taken under the full
temperature-scaled distribution ``log_softmax(logits / T)``, before top-k/top-p
truncation: the quantity the trainer recomputes, so its importance ratio starts at 1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from openrft.errors import ConfigError
from openrft.records import SamplingParams

MAX_TOP_LOGPROBS = 20  # alternatives per token at most (OpenAI's limit for top_logprobs)


@dataclass(frozen=True)
class Truncation:
    """The per-batch sampling settings (``temperature == 0`` means greedy)."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0

    @classmethod
    def from_params(cls, params: SamplingParams) -> Truncation:
        return cls(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


def vllm_truncation(params: SamplingParams) -> tuple[float, int]:
    """``(top_p, top_k)`` as vLLM takes them: -1 is its "no top-k", and since it refuses ``top_p=0``
    (its range is (0, 1]), openrft's ``top_p=0`` (keep only the most likely token) is sent as top-k 1."""
    if params.top_p == 0.0:
        return 1.0, 1
    return params.top_p, params.top_k if params.top_k > 0 else -1


def check_params(params: SamplingParams) -> None:
    """Reject sampling settings no engine can honour (the job config checks tighter ranges)."""
    problems = []
    if params.n < 1:
        problems.append(f"n must be >= 1 (got {params.n})")
    if params.temperature < 0:
        problems.append(f"temperature must be >= 0 (got {params.temperature})")
    if params.top_k < 0:
        problems.append(f"top_k must be >= 0, 0 = off (got {params.top_k})")
    if not 0.0 <= params.top_p <= 1.0:
        problems.append(f"top_p must be in [0, 1], 1 = off (got {params.top_p})")
    if params.max_tokens < 1:
        problems.append(f"max_tokens must be >= 1 (got {params.max_tokens})")
    if any(not s for s in params.stop):
        problems.append("stop strings must be non-empty")
    if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
        problems.append(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}] (got {params.top_logprobs})")
    if problems:
        raise ConfigError("invalid sampling parameters: " + "; ".join(problems))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to and including the earliest stop string in it (all of it when there is none)."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def stop_string_enders(tokenizer, stops: tuple[str, ...], vocab_size: int) -> torch.Tensor | None:
    """``[V]`` bool: the tokens that can complete one of ``stops``, or ``None`` when any token can.

    A stop string first appears when the token holding its last character is sampled, so only
    tokens whose text contains one of those last characters need the (per-row, Python) check
    of the decoded tail. A token whose text alone is cut short (``\ufffd``: part of a multi-byte
    character) may complete a character in context and stays a candidate, as do ids past the
    tokenizer's vocabulary. Tokenizers may drop or tidy spaces when a token is decoded alone, so a
    stop string ending in whitespace disables the filter.
    """
    last_chars = {text[-1] for text in stops if text}
    if not last_chars or any(char.isspace() for char in last_chars):
        return None
    known = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(known)])
    enders_V = torch.ones(vocab_size, dtype=torch.bool)
    enders_V[:known] = torch.tensor(
        ["\ufffd" in text or any(c in text for c in last_chars) for text in texts]
    )
    return enders_V


def row_seed(seed: int, prompt_id: str, candidate_index: int) -> int:
    """A 63-bit seed for one candidate, a pure function of (seed, prompt id, candidate index)."""
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_id}\x1f{candidate_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_uniforms(seed: int, prompt_id: str, candidate_index: int, count: int) -> torch.Tensor:
    """The first ``count`` uniforms of one candidate's private random stream. # [count] fp64"""
    generator = torch.Generator().manual_seed(row_seed(seed, prompt_id, candidate_index))
    return torch.rand(count, generator=generator, dtype=torch.float64)


def top_alternatives(logits_BV: torch.Tensor, how: Truncation, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely next tokens of each row, best first: ``(token_ids_BK, logprobs_BK)`` (fp32).

    Their log-probs are under the distribution the sampled token's is recorded from: ``logits / T``
    before truncation, unscaled when greedy (so the sampled token's log-prob is among them when it
    ranks in the top ``k``).
    """
    scale = how.temperature if how.temperature > 0 else 1.0
    logprobs_BK, token_ids_BK = torch.topk(torch.log_softmax(logits_BV.float() / scale, dim=-1), k, dim=-1)
    return token_ids_BK, logprobs_BK


def sample_tokens(
    logits_BV: torch.Tensor, uniforms_B: torch.Tensor, how: Truncation
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return ``(token_ids_B, logprobs_B)`` (logprobs fp32, untruncated).

    ``uniforms_B`` holds each row's uniform in [0, 1). ``how.temperature == 0`` is
    greedy decoding; its log-probs are under the unscaled distribution.
    """
    logits_BV = logits_BV.float()
    if how.temperature == 0:
        token_ids_B = logits_BV.argmax(dim=-1)
        logprobs_BV = torch.log_softmax(logits_BV, dim=-1)
        return token_ids_B, logprobs_BV.gather(-1, token_ids_B[:, None]).squeeze(-1)

    logprobs_BV = torch.log_softmax(logits_BV / how.temperature, dim=-1)
    vocab = logprobs_BV.shape[-1]
    candidates_BK: torch.Tensor | None  # token id of each candidate column (None = the identity)
    if 0 < how.top_k < vocab:
        cand_logprobs_BK, candidates_BK = torch.topk(logprobs_BV, how.top_k, dim=-1)
    elif how.top_p < 1.0:
        cand_logprobs_BK, candidates_BK = torch.sort(logprobs_BV, dim=-1, descending=True)
    else:
        cand_logprobs_BK, candidates_BK = logprobs_BV, None
    probs_BK = cand_logprobs_BK.double().exp()
    if how.top_p < 1.0:
        probs_BK = probs_BK / probs_BK.sum(dim=-1, keepdim=True)  # renormalise after top-k
        mass_before_BK = _cumsum(probs_BK) - probs_BK
        keep_BK = mass_before_BK < how.top_p
        keep_BK[:, 0] = True  # the most likely token always survives (top_p = 0 is greedy)
        probs_BK = probs_BK * keep_BK
    cdf_BK = _cumsum(probs_BK)
    target_B1 = uniforms_B.to(cdf_BK.dtype)[:, None] * cdf_BK[:, -1:]
    column_B = torch.searchsorted(cdf_BK, target_B1, right=True).squeeze(-1)
    column_B = column_B.clamp_(max=cdf_BK.shape[-1] - 1)
    if candidates_BK is None:
        token_ids_B = column_B
    else:
        token_ids_B = candidates_BK.gather(-1, column_B[:, None]).squeeze(-1)
    return token_ids_B, logprobs_BV.gather(-1, token_ids_B[:, None]).squeeze(-1)


def _cumsum(x_BK: torch.Tensor) -> torch.Tensor:
    """Running sums along the last dimension. CUDA has no deterministic floating-point cumsum, so under
    ``torch.use_deterministic_algorithms`` (``--deterministic``) a CUDA tensor's is taken on the CPU."""
    if x_BK.is_cuda and torch.are_deterministic_algorithms_enabled():
        return x_BK.cpu().cumsum(dim=-1).to(x_BK.device)
    return x_BK.cumsum(dim=-1)


__all__ = [
    "vllm_truncation",
    "Truncation",
    "check_params",
    "row_seed",
    "row_uniforms",
    "sample_tokens",
    "top_alternatives",
    "MAX_TOP_LOGPROBS",
    "stop_string_enders",
]
