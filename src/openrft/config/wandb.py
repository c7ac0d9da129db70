"""The W&B group: whether and where a job logs to Weights & Biases."""

from __future__ import annotations

from pydantic import SecretStr

from openrft.config.fields import Group, field


class WandbConfig(Group):
    """Weights & Biases tracking (optional extra)."""

    wandb: bool = field(False, "Log the job to Weights & Biases (offline when no API key or network).")
    wandb_project: str | None = field(None, "W&B project (default: openrft).")
    wandb_entity: str | None = field(None, "W&B entity (team or user).")
    wandb_api_key: SecretStr | None = field(None, "W&B API key (default: WANDB_API_KEY or offline mode).")
    wandb_run_id: str | None = field(None, "W&B run id, to resume logging into an existing run.")


__all__ = ["WandbConfig"]
