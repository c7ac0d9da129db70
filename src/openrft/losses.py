"""Public home of the policy losses (the code lives in :mod:`openrft.algo.losses`)."""

from openrft.algo.losses import (
    AGGREGATIONS,
    LOG_RATIO_CLAMP,
    LOSS_METHODS,
    LossMethod,
    aggregate,
    aggregation_mode,
    clipped_surrogate,
    get_method,
    gspo_token_ratio,
    k3_kl,
    kl_coefficient,
    policy_loss,
    step_denominator,
    token_ratio,
)

__all__ = [
    "AGGREGATIONS",
    "LOG_RATIO_CLAMP",
    "LOSS_METHODS",
    "LossMethod",
    "aggregate",
    "aggregation_mode",
    "clipped_surrogate",
    "get_method",
    "gspo_token_ratio",
    "k3_kl",
    "kl_coefficient",
    "policy_loss",
    "step_denominator",
    "token_ratio",
]
