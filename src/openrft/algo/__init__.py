"""The algorithms of openrft as small pure functions: losses, advantages, filtering, DAPO extras.

Every function takes tensors or plain Python values and returns new ones; nothing here knows
about models, tokenizers, files or the job configuration. Errors are ``ValueError``.
"""

import importlib
from typing import Any

# Each name is imported from its module on first use, so that reading the loss registry
# (openrft.algo.losses, torch-free at import) does not load torch for the command line.
_EXPORTS = {
    "ADVANTAGE_EPS": "openrft.algo.advantages",
    "AGGREGATIONS": "openrft.algo.losses",
    "DynamicSamplingStats": "openrft.algo.dapo",
    "GroupPartition": "openrft.algo.filtering",
    "KLBetaNotSupported": "openrft.algo.losses",
    "LOSS_METHODS": "openrft.algo.losses",
    "LossFn": "openrft.algo.losses",
    "LossMethod": "openrft.algo.losses",
    "LossSpec": "openrft.algo.losses",
    "aggregate": "openrft.algo.losses",
    "apply_overlong_penalty": "openrft.algo.dapo",
    "clipped_surrogate": "openrft.algo.losses",
    "default_overlong_buffer": "openrft.algo.dapo",
    "drop_zero_advantage_micro_batches": "openrft.algo.filtering",
    "dynamic_sampling": "openrft.algo.dapo",
    "filter_scored_groups": "openrft.algo.filtering",
    "group_advantages": "openrft.algo.advantages",
    "group_advantages_batch": "openrft.algo.advantages",
    "group_has_variance": "openrft.algo.filtering",
    "gspo_token_ratio": "openrft.algo.losses",
    "is_zero_variance": "openrft.algo.filtering",
    "k3_kl": "openrft.algo.losses",
    "overlong_penalties": "openrft.algo.dapo",
    "partition_groups": "openrft.algo.filtering",
    "policy_loss": "openrft.algo.losses",
    "register_loss": "openrft.algo.losses",
    "resolve_loss": "openrft.algo.losses",
    "scored_group_advantages": "openrft.algo.advantages",
    "step_denominator": "openrft.algo.losses",
    "token_ratio": "openrft.algo.losses",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openrft.algo' has no attribute {name!r}")
