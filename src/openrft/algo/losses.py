"""Policy-gradient losses: GRPO, DAPO and GSPO-token as data plus small tensor functions.

A loss is built from three independent pieces, in the spirit of verl's ``core_algos``:

1. an importance **ratio** per token (token level for GRPO/DAPO, sequence level broadcast to
   tokens for GSPO-token),
2. a **per-token objective**: the clipped surrogate ``-min(r*A, clip(r)*A)`` plus, for GRPO, a
   KL penalty,
3. one **aggregation** that reduces the ``[B, T]`` per-token loss to a scalar
   (``token-mean`` or ``seq-mean-token-mean``).

The methods differ only in data (clip range, KL coefficient, ratio level, aggregation), held in
:data:`LOSS_METHODS` and keyed by the command-line names.

Numerics: log-ratios are computed in (at least) float32, and every log-ratio is clamped to
``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` (+-20) before ``exp``. The clamp only matters for a
policy that is wildly off the behaviour policy (ratio beyond e^20 ~ 5e8); there its gradient
is zero instead of inf/NaN. Padding positions (``mask == 0``) are replaced by zeros before any
arithmetic, so an ``inf``/``NaN`` stored in padding never reaches the loss or the gradients.

Shapes: ``B`` sequences, ``T`` completion positions (right padding is conventional but any
mask pattern works).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from openrft.config import KL_BETA_ERRORS
from openrft.errors import ConfigError

RatioLevel = Literal["token", "sequence"]
Aggregation = Literal["token-mean", "seq-mean-token-mean"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean")
LOG_RATIO_CLAMP = 20.0


@dataclass(frozen=True)
class LossMethod:
    """One policy loss as data.

    The ratio is clipped to ``[1 - clip_low, 1 + clip_high]``; ``kl_coef`` is the default weight
    of the k3 KL penalty (0 = no KL term); ``ratio_level`` says whether the importance ratio is
    per token or per sequence; ``aggregation`` is the default reduction of the per-token loss.
    """

    name: str
    clip_low: float
    clip_high: float
    kl_coef: float
    ratio_level: RatioLevel
    aggregation: Aggregation

    @property
    def ratio_low(self) -> float:
        return 1.0 - self.clip_low

    @property
    def ratio_high(self) -> float:
        return 1.0 + self.clip_high


LOSS_METHODS: dict[str, LossMethod] = {
    # GRPO, arXiv 2402.03300: symmetric clip, small k3 KL to the reference policy.
    "grpo": LossMethod("grpo", 0.2, 0.2, 0.001, "token", "token-mean"),
    # DAPO, arXiv 2503.14476: "clip-higher" (asymmetric clip), no KL.
    "dapo": LossMethod("dapo", 0.2, 0.28, 0.0, "token", "token-mean"),
    # GSPO-token, arXiv 2507.18071: sequence-level ratio, very tight clip, no KL.
    "gspo-token": LossMethod("gspo-token", 3e-4, 4e-4, 0.0, "sequence", "seq-mean-token-mean"),
}


def get_method(method: str | LossMethod) -> LossMethod:
    """The :class:`LossMethod` for a CLI name (or the method itself)."""
    if isinstance(method, LossMethod):
        return method
    try:
        return LOSS_METHODS[method]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown loss method {method!r}; expected one of {', '.join(LOSS_METHODS)}",
            field="rl_loss_method",
        ) from None


def kl_coefficient(method: str | LossMethod, kl_beta: float | None = None) -> float:
    """The KL coefficient a method uses.

    grpo: ``kl_beta`` when it is > 0, else the method's default 0.001. dapo and gspo-token run
    without KL: ``kl_beta`` must be None or 0, otherwise :class:`ConfigError` is raised with the
    reference service's message (``openrft.config.KL_BETA_ERRORS``).
    """
    spec = get_method(method)
    beta = 0.0 if kl_beta is None else float(kl_beta)
    if beta < 0 or beta != beta:
        raise ConfigError(f"--rl-kl-beta: {kl_beta} is not valid; expected a number >= 0", field="rl_kl_beta")
    if beta == 0:
        return spec.kl_coef
    if spec.name in KL_BETA_ERRORS:
        raise ConfigError(KL_BETA_ERRORS[spec.name], field="rl_kl_beta")
    return beta


def aggregation_mode(method: str | LossMethod, length_norm: bool = False) -> str:
    """The aggregation a loss uses: ``seq-mean-token-mean`` when ``length_norm``, else the method's."""
    return "seq-mean-token-mean" if length_norm else get_method(method).aggregation


def step_denominator(mode: str, mask_BT: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """The denominator ``D`` of :func:`aggregate` for a whole training step.

    ``mask_BT`` is the step's mask, or the list of its micro-batches' masks (their ``T`` may
    differ). token-mean: the number of valid tokens; seq-mean-token-mean: the number of
    sequences with at least one valid token. Passing this ``D`` to every micro-batch's
    :func:`policy_loss` makes the micro-batch losses (and gradients) sum to the whole step's.
    """
    _check_mode(mode)
    masks = [mask_BT] if isinstance(mask_BT, torch.Tensor) else list(mask_BT)
    total = 0.0
    for mask in masks:
        valid_BT = mask.detach() != 0
        if mode == "token-mean":
            total += float(valid_BT.sum())
        else:
            total += float(valid_BT.any(dim=-1).sum())
    return total


def aggregate(
    per_token_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, denominator: float | None = None
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the valid tokens of ``mask_BT``.

    token-mean:          sum_{i,t} m_it * l_it / D,  D = denominator or sum_{i,t} m_it
    seq-mean-token-mean: sum_i (sum_t m_it * l_it / n_i) / D,  n_i = sum_t m_it,
                         D = denominator or #{i : n_i >= 1}

    A sequence without valid tokens contributes exactly 0 (no NaN, in values or gradients); with
    no valid token at all the result is 0. ``denominator`` lets a trainer split one step into
    micro-batches: see :func:`step_denominator`.
    """
    _check_mode(mode)
    if per_token_BT.shape != mask_BT.shape or per_token_BT.dim() != 2:
        raise ValueError(
            f"aggregate: per_token {tuple(per_token_BT.shape)} and mask {tuple(mask_BT.shape)} must both be [B, T]"
        )
    valid_BT = mask_BT != 0
    masked_BT = torch.where(valid_BT, per_token_BT, torch.zeros_like(per_token_BT))
    if mode == "token-mean":
        total = masked_BT.sum()
        count = float(valid_BT.sum())
    else:
        n_B = valid_BT.sum(dim=-1)  # [B]
        per_seq_B = masked_BT.sum(dim=-1) / n_B.clamp(min=1).to(masked_BT.dtype)
        total = per_seq_B.sum()
        count = float((n_B > 0).sum())
    if denominator is None or float(denominator) <= 0:
        if denominator is not None and count > 0:
            raise ValueError(f"aggregate: denominator must be > 0 when tokens are valid, got {denominator}")
        d = max(count, 1.0)  # nothing valid: the sum is 0 and so is the result
    else:
        d = float(denominator)
    return total / d


def token_ratio(logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """Per-token importance ratio r_t = exp(clamp(logp_t - old_t, +-20)), ``[B, T]`` (GRPO, DAPO)."""
    log_ratio_BT = (logprobs_BT - old_logprobs_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio_BT)


def gspo_token_ratio(
    logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """GSPO-token ratio (arXiv 2507.18071, eq. for GSPO-token), ``[B, T]``.

    s_i   = exp( (1/|y_i|) * sum_t m_it (logp_it - old_it) )     (clamped to +-20 in log space)
    s_i,t = sg[s_i] * exp(logp_it - sg[logp_it])

    In value s_i,t == s_i for every token; in gradient d s_i,t / d logp_it = s_i, so each token
    gets its own gradient while the sequence shares one ratio. ``sg`` is ``detach``.
    Expects padding already zeroed (as :func:`policy_loss` does).
    """
    valid_BT = mask_BT != 0
    n_B = valid_BT.sum(dim=-1).clamp(min=1).to(logprobs_BT.dtype)  # [B]
    diff_BT = torch.where(valid_BT, logprobs_BT - old_logprobs_BT, torch.zeros_like(logprobs_BT))
    log_s_B = (diff_BT.sum(dim=-1) / n_B).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B]
    log_s_BT = log_s_B.detach().unsqueeze(-1) + (logprobs_BT - logprobs_BT.detach())
    return torch.exp(log_s_BT)


def clipped_surrogate(
    ratio_BT: torch.Tensor, advantages_B: torch.Tensor, clip_low: float, clip_high: float
) -> torch.Tensor:
    """PPO clipped surrogate as a loss, per token ``[B, T]``.

    l_it = -min(r_it * A_i, clip(r_it, 1 - clip_low, 1 + clip_high) * A_i)

    With A > 0 the gradient vanishes once r > 1 + clip_high; with A < 0 once r < 1 - clip_low.
    """
    adv_B1 = advantages_B.unsqueeze(-1)
    unclipped_BT = ratio_BT * adv_B1
    clipped_BT = ratio_BT.clamp(1.0 - clip_low, 1.0 + clip_high) * adv_B1
    return -torch.minimum(unclipped_BT, clipped_BT)


def k3_kl(logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token, ``[B, T]`` (Schulman; used by GRPO, 2402.03300).

    d = clamp(ref - logp, +-20);  k3 = exp(d) - d - 1  (>= 0, unbiased, low variance; verl's low_var_kl)
    """
    d_BT = (ref_logprobs_BT - logprobs_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d_BT) - d_BT - 1.0


def policy_loss(
    method: str | LossMethod,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    kl_beta: float | None = None,
    length_norm: bool = False,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy-gradient loss of one (micro-)batch and its metrics.

    Args:
        method: ``"grpo"`` | ``"dapo"`` | ``"gspo-token"`` (or a :class:`LossMethod`).
        logprobs: ``[B, T]`` current-policy log-probs of the sampled tokens (carries the graph).
        old_logprobs: ``[B, T]`` behaviour-policy log-probs recorded at rollout time.
        advantages: ``[B]`` one advantage per sequence.
        mask: ``[B, T]`` 1 for completion tokens that count, 0 for padding.
        ref_logprobs: ``[B, T]`` reference-policy log-probs; required when the KL coefficient is
            > 0 (grpo), otherwise only used for the ``kl/mean`` metric.
        kl_beta: None or 0 = the method's KL coefficient; > 0 overrides it (grpo only, see
            :func:`kl_coefficient`).
        length_norm: aggregate with seq-mean-token-mean whatever the method.
        denominator: the whole step's denominator (see :func:`step_denominator`) when the step is
            split into micro-batches; None = this batch's own.

    Per token:  l_it = -min(r_it A_i, clip(r_it, 1-eps_low, 1+eps_high) A_i) + beta * k3_it
    where r_it is :func:`token_ratio` (grpo, dapo) or :func:`gspo_token_ratio` (gspo-token); the
    loss is ``aggregate(l, mask, mode, denominator)``.

    Metrics (python floats, over this call's valid tokens, detached): ``loss/policy``,
    ``loss/kl``, ``loss/total`` (aggregated with this call's own denominator, so they are
    comparable across calls; the returned tensor alone uses ``denominator``), ``kl/mean`` (mean
    k3, whenever ``ref_logprobs`` is given, else 0), ``kl/coef``, ``clip/low_frac`` (r < 1-eps_low
    with A < 0), ``clip/high_frac`` (r > 1+eps_high with A > 0), ``clip/frac``, ``ratio/mean``,
    ``ratio/min``, ``ratio/max``, and the counts ``tokens`` and ``sequences`` for weighting
    metrics across micro-batches.
    """
    spec = get_method(method)
    beta = kl_coefficient(spec, kl_beta)
    mode = aggregation_mode(spec, length_norm)
    _check_shapes(logprobs, old_logprobs, advantages, mask, ref_logprobs)
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"policy_loss: {spec.name} uses a KL penalty ({beta:g}) and needs ref_logprobs")

    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    valid_BT = mask != 0
    zeros_BT = torch.zeros(logprobs.shape, dtype=dtype, device=logprobs.device)
    logp_BT = torch.where(valid_BT, logprobs.to(dtype), zeros_BT)
    old_BT = torch.where(valid_BT, old_logprobs.detach().to(dtype), zeros_BT)
    adv_B = advantages.detach().to(dtype=dtype, device=logprobs.device)

    if spec.ratio_level == "sequence":
        ratio_BT = gspo_token_ratio(logp_BT, old_BT, valid_BT)
    else:
        ratio_BT = token_ratio(logp_BT, old_BT)
    pg_BT = clipped_surrogate(ratio_BT, adv_B, spec.clip_low, spec.clip_high)
    per_token_BT = pg_BT
    kl_BT = None
    if ref_logprobs is not None:
        ref_BT = torch.where(valid_BT, ref_logprobs.detach().to(dtype), zeros_BT)
        kl_BT = k3_kl(logp_BT if beta > 0 else logp_BT.detach(), ref_BT)
        if beta > 0:
            per_token_BT = pg_BT + beta * kl_BT
    loss = aggregate(per_token_BT, valid_BT, mode, denominator)
    metrics = _metrics(spec, mode, beta, valid_BT, ratio_BT, adv_B, pg_BT, kl_BT)
    return loss, metrics


@torch.no_grad()
def _metrics(
    spec: LossMethod,
    mode: str,
    beta: float,
    valid_BT: torch.Tensor,
    ratio_BT: torch.Tensor,
    adv_B: torch.Tensor,
    pg_BT: torch.Tensor,
    kl_BT: torch.Tensor | None,
) -> dict[str, float]:
    tokens = float(valid_BT.sum())
    n_tok = max(tokens, 1.0)
    adv_BT = adv_B.unsqueeze(-1).expand_as(ratio_BT)
    low_BT = valid_BT & (ratio_BT < spec.ratio_low) & (adv_BT < 0)
    high_BT = valid_BT & (ratio_BT > spec.ratio_high) & (adv_BT > 0)
    valid_ratios = ratio_BT[valid_BT]
    policy = float(aggregate(pg_BT.detach(), valid_BT, mode))
    kl_mean = float(torch.where(valid_BT, kl_BT, 0).sum()) / n_tok if kl_BT is not None else 0.0
    kl_loss = beta * float(aggregate(kl_BT, valid_BT, mode)) if (kl_BT is not None and beta > 0) else 0.0
    return {
        "loss/policy": policy,
        "loss/kl": kl_loss,
        "loss/total": policy + kl_loss,
        "kl/mean": kl_mean,
        "kl/coef": beta,
        "clip/low_frac": float(low_BT.sum()) / n_tok,
        "clip/high_frac": float(high_BT.sum()) / n_tok,
        "clip/frac": float(low_BT.sum() + high_BT.sum()) / n_tok,
        "ratio/mean": float(valid_ratios.mean()) if tokens else 1.0,
        "ratio/min": float(valid_ratios.min()) if tokens else 1.0,
        "ratio/max": float(valid_ratios.max()) if tokens else 1.0,
        "tokens": tokens,
        "sequences": float(valid_BT.any(dim=-1).sum()),
    }


def _check_mode(mode: str) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")


def _check_shapes(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"policy_loss: logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    named = {"old_logprobs": old_logprobs, "mask": mask}
    if ref_logprobs is not None:
        named["ref_logprobs"] = ref_logprobs
    for name, tensor in named.items():
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"policy_loss: {name} has shape {tuple(tensor.shape)}, expected {tuple(logprobs.shape)} like logprobs"
            )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"policy_loss: advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}"
        )
