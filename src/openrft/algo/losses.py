"""Policy-gradient losses: a registry of small pure functions, one per method.

Every method is one function registered by name with :func:`register_loss`, sharing one
signature::

    fn(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, spec, *, ref_logprobs_BT=None,
       weights_BT=None, denominator=None) -> (loss, metrics)

``spec`` is the method's :class:`LossSpec` (clip range, KL coefficient, aggregation), a small
frozen record resolved once per job by :func:`resolve_loss`; the function reads nothing else.
Adding a method is adding one registered function. The methods share three pieces, in the
spirit of verl's ``core_algos``:

1. an importance **ratio** per token (:func:`token_ratio`, or :func:`gspo_token_ratio` for a
   sequence-level ratio broadcast to tokens),
2. a **per-token objective**: the clipped surrogate (:func:`clipped_surrogate`) plus, when the
   spec has a KL coefficient, ``beta * k3`` (:func:`k3_kl`),
3. one **aggregation** (:func:`aggregate`) that reduces the ``[B, T]`` per-token loss to a scalar:
   ``token-mean`` or ``seq-mean-token-mean``.

Numerics: log-ratios are computed in (at least) float32 and clamped to ``+-LOG_RATIO_CLAMP``
(20) before ``exp``; the clamp only matters for a policy wildly off the behaviour policy (ratio
beyond e^20), where the gradient becomes zero instead of inf/NaN. Padding positions
(``mask == 0``) are replaced by zeros before any arithmetic, so an ``inf``/``NaN`` stored in
padding never reaches the loss or its gradients.

Errors are ``ValueError``; the job configuration turns them into flag-named messages.
Shapes: ``B`` sequences, ``T`` completion positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

if TYPE_CHECKING:  # torch is imported where a function needs it: the job configuration reads
    import torch  # this registry, and the command line must not wait for torch to load

Aggregation = Literal["token-mean", "seq-mean-token-mean"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean")
LOG_RATIO_CLAMP = 20.0


@dataclass(frozen=True)
class LossSpec:
    """The parameters of one policy loss, resolved for a job.

    The ratio is clipped to ``[1 - clip_low, 1 + clip_high]``; ``kl_coef`` weighs the k3 KL
    penalty to the reference policy (0 = none); ``aggregation`` reduces the per-token loss.
    """

    method: str
    clip_low: float
    clip_high: float
    kl_coef: float = 0.0
    aggregation: Aggregation = "token-mean"

    @property
    def ratio_low(self) -> float:
        return 1.0 - self.clip_low

    @property
    def ratio_high(self) -> float:
        return 1.0 + self.clip_high


class LossFn(Protocol):
    def __call__(
        self,
        logprobs_BT: torch.Tensor,
        old_logprobs_BT: torch.Tensor,
        advantages_B: torch.Tensor,
        mask_BT: torch.Tensor,
        spec: LossSpec,
        *,
        ref_logprobs_BT: torch.Tensor | None = None,
        weights_BT: torch.Tensor | None = None,
        denominator: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class LossMethod:
    """A registered method: its loss function, its default spec, and whether KL is tunable."""

    name: str
    fn: LossFn
    defaults: LossSpec
    tunable_kl: bool


LOSS_METHODS: dict[str, LossMethod] = {}


class KLBetaNotSupported(ValueError):
    """A non-zero KL coefficient was asked of a method that runs without KL."""

    def __init__(self, method: str):
        super().__init__(f"the {method} loss has no KL term; kl_beta must be 0")
        self.method = method


def register_loss(
    name: str,
    *,
    clip_low: float,
    clip_high: float,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "token-mean",
    tunable_kl: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Register ``fn`` as loss method ``name`` with its default parameters."""

    def register(fn: LossFn) -> LossFn:
        if name in LOSS_METHODS:
            raise ValueError(f"loss method {name!r} is already registered")
        spec = LossSpec(name, clip_low, clip_high, kl_coef, aggregation)
        LOSS_METHODS[name] = LossMethod(name, fn, spec, tunable_kl)
        return fn

    return register


def resolve_loss(method: str, kl_beta: float = 0.0, length_norm: bool = False) -> tuple[LossFn, LossSpec]:
    """The function and spec of ``method`` for a job.

    ``kl_beta`` > 0 overrides the KL coefficient of a method whose KL is tunable (grpo) and
    raises :class:`KLBetaNotSupported` for the others; 0 keeps the method's default.
    ``length_norm`` switches the aggregation to ``seq-mean-token-mean``.
    """
    if method not in LOSS_METHODS:
        raise ValueError(f"unknown loss method {method!r}; expected one of {', '.join(LOSS_METHODS)}")
    entry = LOSS_METHODS[method]
    beta = float(kl_beta or 0.0)
    if not beta >= 0 or beta == float("inf"):
        raise ValueError(f"kl_beta must be a finite number >= 0, got {kl_beta}")
    spec = entry.defaults
    if beta > 0:
        if not entry.tunable_kl:
            raise KLBetaNotSupported(method)
        spec = replace(spec, kl_coef=beta)
    if length_norm:
        spec = replace(spec, aggregation="seq-mean-token-mean")
    return entry.fn, spec


def policy_loss(
    spec: LossSpec,
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    ref_logprobs_BT: torch.Tensor | None = None,
    weights_BT: torch.Tensor | None = None,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Call the registered function of ``spec.method`` (a convenience for one-off calls)."""
    return LOSS_METHODS[spec.method].fn(
        logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, spec,
        ref_logprobs_BT=ref_logprobs_BT, weights_BT=weights_BT, denominator=denominator,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the methods


@register_loss("grpo", clip_low=0.2, clip_high=0.2, kl_coef=0.001, tunable_kl=True)
def grpo_loss(
    logprobs_BT,
    old_logprobs_BT,
    advantages_B,
    mask_BT,
    spec,
    *,
    ref_logprobs_BT=None,
    weights_BT=None,
    denominator=None,
):
    """GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): token ratio, symmetric clip, k3 KL.

    r_it = exp(logp_it - old_it)
    l_it = -min(r_it A_i, clip(r_it, 1 - 0.2, 1 + 0.2) A_i) + beta * k3(logp_it, ref_it)
    loss = token-mean over valid tokens,   beta = 0.001 unless kl_beta overrides it
    """
    x = _Inputs.of(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, ref_logprobs_BT, weights_BT)
    ratio_BT = token_ratio(x.logp_BT, x.old_BT)
    pg_BT = clipped_surrogate(ratio_BT, x.adv_B, spec.clip_low, spec.clip_high)
    return _finish(spec, x, ratio_BT, pg_BT, denominator)


@register_loss("dapo", clip_low=0.2, clip_high=0.28)
def dapo_loss(
    logprobs_BT,
    old_logprobs_BT,
    advantages_B,
    mask_BT,
    spec,
    *,
    ref_logprobs_BT=None,
    weights_BT=None,
    denominator=None,
):
    """DAPO (Yu et al. 2025, arXiv 2503.14476): token ratio, "clip-higher", no KL, token-mean.

    r_it = exp(logp_it - old_it)
    l_it = -min(r_it A_i, clip(r_it, 1 - 0.2, 1 + 0.28) A_i)
    loss = sum_it m_it l_it / sum_it m_it      (every token of the step weighs the same)
    """
    x = _Inputs.of(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, ref_logprobs_BT, weights_BT)
    ratio_BT = token_ratio(x.logp_BT, x.old_BT)
    pg_BT = clipped_surrogate(ratio_BT, x.adv_B, spec.clip_low, spec.clip_high)
    return _finish(spec, x, ratio_BT, pg_BT, denominator)


@register_loss("gspo-token", clip_low=3e-4, clip_high=4e-4, aggregation="seq-mean-token-mean")
def gspo_token_loss(
    logprobs_BT,
    old_logprobs_BT,
    advantages_B,
    mask_BT,
    spec,
    *,
    ref_logprobs_BT=None,
    weights_BT=None,
    denominator=None,
):
    """GSPO-token (Zheng et al. 2025, arXiv 2507.18071): sequence ratio broadcast to tokens, no KL.

    s_i   = exp((1/|y_i|) sum_t m_it (logp_it - old_it))
    s_it  = sg[s_i] * exp(logp_it - sg[logp_it])      (value s_i, gradient s_i per token)
    l_it  = -min(s_it A_i, clip(s_it, 1 - 3e-4, 1 + 4e-4) A_i)
    loss  = seq-mean-token-mean:  (1/B) sum_i (1/|y_i|) sum_t m_it l_it
    """
    x = _Inputs.of(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, ref_logprobs_BT, weights_BT)
    ratio_BT = gspo_token_ratio(x.logp_BT, x.old_BT, x.valid_BT)
    pg_BT = clipped_surrogate(ratio_BT, x.adv_B, spec.clip_low, spec.clip_high)
    return _finish(spec, x, ratio_BT, pg_BT, denominator)


# ----------------------------------------------------------------------------- the pieces


def token_ratio(logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """Per-token importance ratio r_t = exp(clamp(logp_t - old_t, +-20)), ``[B, T]``."""
    log_ratio_BT = (logprobs_BT - old_logprobs_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return log_ratio_BT.exp()


def gspo_token_ratio(
    logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """GSPO-token ratio ``[B, T]``: the sequence ratio in value, a per-token gradient.

    s_i   = exp( (1/|y_i|) * sum_t m_it (logp_it - old_it) )     (clamped to +-20 in log space)
    s_i,t = sg[s_i] * exp(logp_it - sg[logp_it])

    d s_i,t / d logp_it = s_i, so each token gets its own gradient while the sequence shares one
    ratio. ``sg`` is ``detach``. Expects padding already zeroed.
    """
    valid_BT = mask_BT != 0
    n_B = valid_BT.sum(dim=-1).clamp(min=1).to(logprobs_BT.dtype)
    diff_BT = (logprobs_BT - old_logprobs_BT).where(valid_BT, logprobs_BT.new_zeros(()))
    log_s_B = (diff_BT.sum(dim=-1) / n_B).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    log_s_BT = log_s_B.detach().unsqueeze(-1) + (logprobs_BT - logprobs_BT.detach())
    return log_s_BT.exp()


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
    return -unclipped_BT.minimum(clipped_BT)


def k3_kl(logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token ``[B, T]`` (Schulman 2020; used by GRPO).

    d = clamp(ref - logp, +-20);  k3 = exp(d) - d - 1   (>= 0, unbiased, low variance)
    """
    d_BT = (ref_logprobs_BT - logprobs_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return d_BT.exp() - d_BT - 1.0


def step_denominator(aggregation: str, mask_BT: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """The denominator ``D`` of :func:`aggregate` for a whole training step.

    ``mask_BT`` is the step's mask or the list of its micro-batches' masks (their ``T`` may
    differ). token-mean: the number of valid tokens; seq-mean-token-mean: the number of
    sequences with at least one valid token. Passing this ``D`` to every micro-batch's loss
    makes the micro-batch losses (and gradients) sum to the whole step's.
    """
    _check_aggregation(aggregation)
    masks = list(mask_BT) if isinstance(mask_BT, list | tuple) else [mask_BT]
    total = 0.0
    for mask in masks:
        valid_BT = mask.detach() != 0
        total += float(valid_BT.sum() if aggregation == "token-mean" else valid_BT.any(dim=-1).sum())
    return total


def aggregate(
    per_token_BT: torch.Tensor, mask_BT: torch.Tensor, aggregation: str, denominator: float | None = None
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the valid tokens of ``mask_BT``.

    token-mean:          sum_{i,t} m_it * l_it / D,  D = denominator or sum_{i,t} m_it
    seq-mean-token-mean: sum_i (sum_t m_it * l_it / n_i) / D,  n_i = sum_t m_it,
                         D = denominator or #{i : n_i >= 1}

    A sequence without valid tokens contributes exactly 0 (no NaN in values or gradients);
    with no valid token at all the result is 0.
    """
    _check_aggregation(aggregation)
    if per_token_BT.shape != mask_BT.shape or per_token_BT.dim() != 2:
        raise ValueError(
            f"aggregate: per_token {tuple(per_token_BT.shape)} and mask {tuple(mask_BT.shape)} must both be [B, T]"
        )
    valid_BT = mask_BT != 0
    masked_BT = per_token_BT.where(valid_BT, per_token_BT.new_zeros(()))
    if aggregation == "token-mean":
        total = masked_BT.sum()
        count = float(valid_BT.sum())
    else:
        n_B = valid_BT.sum(dim=-1)
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


# ----------------------------------------------------------------------------- shared plumbing


class _Inputs(NamedTuple):
    """A loss's inputs in (at least) float32, padding zeroed, old/ref/advantages detached."""

    logp_BT: torch.Tensor
    old_BT: torch.Tensor
    adv_B: torch.Tensor
    valid_BT: torch.Tensor
    ref_BT: torch.Tensor | None
    weights_BT: torch.Tensor | None

    @classmethod
    def of(
        cls, logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, ref_logprobs_BT, weights_BT=None
    ) -> _Inputs:
        import torch

        _check_shapes(logprobs_BT, old_logprobs_BT, advantages_B, mask_BT, ref_logprobs_BT, weights_BT)
        dtype = torch.promote_types(logprobs_BT.dtype, torch.float32)
        valid_BT = mask_BT != 0
        zeros_BT = torch.zeros(logprobs_BT.shape, dtype=dtype, device=logprobs_BT.device)

        def clean(t: torch.Tensor) -> torch.Tensor:
            return torch.where(valid_BT, t.to(dtype), zeros_BT)

        ref_BT = None if ref_logprobs_BT is None else clean(ref_logprobs_BT.detach())
        weights = None if weights_BT is None else clean(weights_BT.detach())
        adv_B = advantages_B.detach().to(dtype=dtype, device=logprobs_BT.device)
        return cls(clean(logprobs_BT), clean(old_logprobs_BT.detach()), adv_B, valid_BT, ref_BT, weights)


def _finish(
    spec: LossSpec, x: _Inputs, ratio_BT: torch.Tensor, pg_BT: torch.Tensor, denominator: float | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Add the KL term when the spec has one, aggregate, and measure."""
    if spec.kl_coef > 0 and x.ref_BT is None:
        raise ValueError(f"{spec.method} uses a KL penalty ({spec.kl_coef:g}) and needs ref_logprobs_BT")
    # truncated importance weights for a sampler that is not the trainer: they correct the policy term
    # (whose samples came from the sampler), not the KL to the reference, as in TRL and verl
    weighted_BT = pg_BT if x.weights_BT is None else pg_BT * x.weights_BT
    per_token_BT, kl_BT = weighted_BT, None
    if x.ref_BT is not None:
        kl_BT = k3_kl(x.logp_BT if spec.kl_coef > 0 else x.logp_BT.detach(), x.ref_BT)
        if spec.kl_coef > 0:
            per_token_BT = per_token_BT + spec.kl_coef * kl_BT
    loss = aggregate(per_token_BT, x.valid_BT, spec.aggregation, denominator)
    # loss/policy is the term optimised: with the weights (verl's pg_loss has them too)
    return loss, loss_metrics(spec, x.valid_BT, ratio_BT, x.adv_B, weighted_BT, kl_BT)


def loss_metrics(
    spec: LossSpec,
    valid_BT: torch.Tensor,
    ratio_BT: torch.Tensor,
    adv_B: torch.Tensor,
    pg_BT: torch.Tensor,
    kl_BT: torch.Tensor | None,
) -> dict[str, float]:
    """``loss/*``, ``kl/*``, ``clip/*``, ``ratio/*`` over this call's valid tokens, plus counts.

    ``loss/*`` use this call's own denominator (comparable across calls); ``tokens`` and
    ``sequences`` weigh metrics across micro-batches.
    """
    import torch

    with torch.no_grad():
        return _loss_metrics(spec, valid_BT, ratio_BT, adv_B, pg_BT, kl_BT)


def _loss_metrics(
    spec: LossSpec, valid_BT: Any, ratio_BT: Any, adv_B: Any, pg_BT: Any, kl_BT: Any
) -> dict[str, float]:
    tokens = float(valid_BT.sum())
    n_tok = max(tokens, 1.0)
    adv_BT = adv_B.unsqueeze(-1).expand_as(ratio_BT)
    low_BT = valid_BT & (ratio_BT < spec.ratio_low) & (adv_BT < 0)
    high_BT = valid_BT & (ratio_BT > spec.ratio_high) & (adv_BT > 0)
    valid_ratios = ratio_BT[valid_BT]
    policy = float(aggregate(pg_BT.detach(), valid_BT, spec.aggregation))
    kl_loss = 0.0
    if kl_BT is not None and spec.kl_coef > 0:
        kl_loss = spec.kl_coef * float(aggregate(kl_BT, valid_BT, spec.aggregation))
    measured = {}  # the KL is only measured where the reference model is run (a KL term): never a made-up 0
    if kl_BT is not None:
        measured["kl/mean"] = float(kl_BT.where(valid_BT, kl_BT.new_zeros(())).sum()) / n_tok
    return {
        "loss/policy": policy,
        "loss/kl": kl_loss,
        "loss/total": policy + kl_loss,
        **measured,
        "kl/coef": spec.kl_coef,
        "clip/low_frac": float(low_BT.sum()) / n_tok,
        "clip/high_frac": float(high_BT.sum()) / n_tok,
        "clip/frac": float(low_BT.sum() + high_BT.sum()) / n_tok,
        "ratio/mean": float(valid_ratios.mean()) if tokens else 1.0,
        "ratio/min": float(valid_ratios.min()) if tokens else 1.0,
        "ratio/max": float(valid_ratios.max()) if tokens else 1.0,
        "loss/tokens": tokens,
        "loss/sequences": float(valid_BT.any(dim=-1).sum()),
    }


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")


def _check_shapes(logprobs, old_logprobs, advantages, mask, ref_logprobs, weights=None) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"policy loss: logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    named = {"old_logprobs": old_logprobs, "mask": mask}
    if ref_logprobs is not None:
        named["ref_logprobs"] = ref_logprobs
    if weights is not None:
        named["weights"] = weights
    for name, tensor in named.items():
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"policy loss: {name} has shape {tuple(tensor.shape)}, expected {tuple(logprobs.shape)} like logprobs"
            )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"policy loss: advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}"
        )
