"""The job configuration: validated pydantic models (:mod:`.models`) and how they are built (:mod:`.build`).

Every field's ``description`` is its ``--help`` text; :meth:`JobConfig.settings` resolves a
validated job into the typed settings the lower layers receive (:mod:`openrft.settings`).
"""

from openrft.config.build import (
    advise,
    build_config,
    config_defaults,
    field_info,
    flag_name,
    load_job_file,
    normalise_key,
)
from openrft.config.fields import is_template_text
from openrft.config.models import (
    DEFAULT_BASE_MODEL,
    FIELD_GROUP,
    GROUPS,
    KL_BETA_ERRORS,
    LORA_RANKS,
    DataConfig,
    JobConfig,
    LossConfig,
    RolloutConfig,
    TrainingConfig,
    WandbConfig,
    flatten,
    kl_beta_message,
    parse_token_count,
)
from openrft.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_MODEL",
    "FIELD_GROUP",
    "GROUPS",
    "KL_BETA_ERRORS",
    "LORA_RANKS",
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "LossConfig",
    "RolloutConfig",
    "TrainingConfig",
    "WandbConfig",
    "advise",
    "build_config",
    "config_defaults",
    "field_info",
    "flag_name",
    "flatten",
    "is_template_text",
    "kl_beta_message",
    "load_job_file",
    "normalise_key",
    "parse_token_count",
]
