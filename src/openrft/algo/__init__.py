"""The algorithms of openrft as small pure functions: losses, advantages, filtering, DAPO extras.

Every function takes tensors or plain Python values and returns new ones; nothing here knows
about models, tokenizers or the job configuration object.
"""

from openrft.algo.advantages import (
    ADVANTAGE_EPS,
    group_advantages,
    group_advantages_batch,
    scored_group_advantages,
)
from openrft.algo.dapo import (
    DynamicSamplingStats,
    apply_overlong_penalty,
    default_overlong_buffer,
    dynamic_sampling,
    overlong_penalties,
    overlong_penalty,
)
from openrft.algo.filtering import (
    FilterStats,
    GroupPartition,
    drop_zero_advantage_chunks,
    filter_scored_groups,
    group_has_variance,
    is_zero_variance,
    partition_groups,
)
from openrft.algo.losses import (
    AGGREGATIONS,
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
    "ADVANTAGE_EPS",
    "AGGREGATIONS",
    "LOSS_METHODS",
    "DynamicSamplingStats",
    "FilterStats",
    "GroupPartition",
    "LossMethod",
    "aggregate",
    "aggregation_mode",
    "apply_overlong_penalty",
    "clipped_surrogate",
    "default_overlong_buffer",
    "drop_zero_advantage_chunks",
    "dynamic_sampling",
    "filter_scored_groups",
    "get_method",
    "group_advantages",
    "group_advantages_batch",
    "group_has_variance",
    "gspo_token_ratio",
    "is_zero_variance",
    "k3_kl",
    "kl_coefficient",
    "overlong_penalties",
    "overlong_penalty",
    "partition_groups",
    "policy_loss",
    "scored_group_advantages",
    "step_denominator",
    "token_ratio",
]
