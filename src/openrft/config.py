"""The job configuration: one validated pydantic model per parameter group.

Every field's ``description`` is also its ``--help`` text, and its ``valid`` note
(in ``json_schema_extra``) is what an error message says the accepted values are.
Defaults and ranges follow the managed-RFT parameter guide this project mirrors.

Field names are unique across groups, so a job can be written flat (the CLI and
job files use the flag names) while the code reads ``cfg.rollout.temperature``.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from openrft.errors import ConfigError

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
LOSS_METHOD_NAMES = ("grpo", "dapo", "gspo-token")
LORA_RANKS = (4, 8, 16, 32)
# The error texts the reference service prints, reproduced word for word.
KL_BETA_ERRORS = {
    "dapo": "loss_config.kl_beta must be 0/unset when method is DAPO",
    "gspo-token": "loss_config.kl_beta must be 0/unset when method is GSPO_TOKEN",
}


def _field(
    default: Any, description: str, *, valid: str | None = None, flags: tuple[str, ...] = (), **kw: Any
):
    """A pydantic Field carrying the CLI metadata: accepted-values note and extra flag aliases."""
    extra = {"valid": valid, "flags": list(flags)}
    return Field(default, description=description, json_schema_extra=extra, **kw)


def parse_token_count(value: Any) -> Any:
    """'32k' -> 32768, '1m' -> 1048576; anything else is left for normal validation."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", value)
        if match:
            return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return value


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: Any) -> Any:
        # pydantic's lax mode would read True as 1; a boolean is never a valid number here.
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation not in (bool, bool | None):
            raise ValueError("expected a number, not a boolean")
        return value


class TrainingConfig(_Group):
    """How the model learns."""

    base_model: str = _field(
        DEFAULT_BASE_MODEL,
        "Base model: 'smollm2-135m-instruct' (embedded, the default), a local Hugging Face model "
        "directory, or a hub id already in the local Hugging Face cache. Nothing is downloaded.",
    )
    warm_start_from: str | None = _field(
        None,
        "Start from an existing LoRA adapter directory (PEFT format) instead of a fresh adapter; its "
        "base model is used. Cannot be combined with an explicit --base-model.",
    )
    output_model: str | None = _field(
        None, "Directory for the trained adapter and job outputs (default: the job's folder)."
    )
    job_id: str | None = _field(
        None,
        "Job id (letters, digits, '-', '_'; default: generated).",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$",
        valid="1-64 letters, digits, '-' or '_', starting with a letter or digit",
    )
    epochs: int = _field(
        1, "Passes over the training prompts.", valid="a whole number from 1 to 10", ge=1, le=10
    )
    learning_rate: float = _field(
        1e-4, "AdamW step size for the LoRA weights.", valid="a number from 1e-5 to 5e-4", ge=1e-5, le=5e-4
    )
    learning_rate_warmup_steps: int = _field(
        0, "Optimizer steps of linear learning-rate warm-up from 0.", valid="a whole number >= 0", ge=0
    )
    lora_rank: int = _field(8, "Rank of the LoRA adapter (trainable capacity).", valid="one of 4, 8, 16, 32")
    lora_alpha: int | None = _field(
        None, "LoRA scaling numerator alpha (default: 2 x rank).", valid="a whole number >= 1", ge=1
    )
    max_context_length: int | None = _field(
        None,
        "Longest prompt + response in tokens (default: the model's context window).",
        valid="a whole number >= 32",
        ge=32,
    )
    batch_size: int = _field(
        32768,
        "Tokens (prompt + response) consumed per training step; '32k' and '64k' forms are accepted.",
        valid="a whole number of tokens >= 1 (e.g. 32768 or 32k)",
        ge=1,
    )
    batch_size_samples: int | None = _field(
        None, "Optional cap on sequences per training step.", valid="a whole number >= 1", ge=1
    )
    micro_batch_tokens: int = _field(
        256,
        "Memory knob: padded tokens per forward/backward micro-batch. Does not change the maths. "
        "Small is not slower on CPU (measured 256 to 4096); raise it on a GPU.",
        valid="a whole number >= 64",
        ge=64,
    )
    gradient_accumulation_steps: int = _field(
        1,
        "Training steps whose gradients are summed before one optimizer update.",
        valid="a whole number >= 1",
        ge=1,
    )
    optimizer_weight_decay: float = _field(0.01, "AdamW weight decay.", valid="a number >= 0", ge=0)
    max_grad_norm: float = _field(1.0, "Gradient clipping norm (0 = off).", valid="a number >= 0", ge=0)
    chunk_size: int = _field(
        200,
        "Prompts per rollout round (dataset chunking); -1 = the whole dataset in one round.",
        valid="-1 or a whole number >= 1",
    )
    seed: int = _field(
        42, "Seed for sampling, data order and initialisation.", valid="a whole number >= 0", ge=0
    )
    checkpoint_every: int = _field(
        10,
        "Save a resumable checkpoint every N optimizer steps (and at the end).",
        valid="a whole number >= 1",
        ge=1,
    )
    eval_every: int = _field(
        10,
        "Score the evaluation set every N optimizer steps (and at start and end); 0 = start and end only.",
        valid="a whole number >= 0",
        ge=0,
    )

    eval_candidates: int = _field(
        1,
        "Responses sampled per evaluation prompt (at the rollout temperature, with a fixed seed).",
        valid="a whole number >= 1",
        ge=1,
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _parse_token_count(cls, value: Any) -> Any:
        return parse_token_count(value)

    @field_validator("lora_rank")
    @classmethod
    def _rank_is_power_of_two(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError("not an allowed rank")
        return value

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("out of range")
        return value


class LossConfig(_Group):
    """Which policy-gradient objective to optimise."""

    rl_loss_method: Literal["grpo", "dapo", "gspo-token"] = _field(
        "grpo",
        "Policy loss: grpo (clip 0.8-1.2, KL 0.001, token-mean), dapo (clip 0.8-1.28, no KL, "
        "token-mean) or gspo-token (sequence ratio, clip 1-3e-4..1+4e-4, no KL, seq-mean-token-mean).",
        valid="one of grpo, dapo, gspo-token",
    )
    rl_kl_beta: float = _field(
        0.0,
        "KL penalty coefficient for grpo; 0 = the method's default (0.001). Rejected for dapo and gspo-token.",
        valid="a number >= 0",
        ge=0,
    )
    length_norm: bool = _field(
        False,
        "Normalise each response's loss by its own length (seq-mean-token-mean aggregation) whatever the method.",
    )
    dynamic_sampling: bool = _field(
        False,
        "DAPO dynamic sampling (opt-in): sample further prompts until the round holds as many "
        "non-zero-variance groups as it has prompts.",
    )
    max_sampling_rounds: int = _field(
        3,
        "Cap on extra sampling rounds per round with --dynamic-sampling.",
        valid="a whole number >= 1",
        ge=1,
    )
    overlong_penalty: bool = _field(
        False, "DAPO soft overlong penalty (opt-in): linearly penalise responses that enter the final buffer."
    )
    overlong_buffer: int | None = _field(
        None,
        "Length of the overlong penalty buffer in tokens (default: a quarter of --max-output-tokens).",
        valid="a whole number >= 1",
        ge=1,
    )
    overlong_penalty_factor: float = _field(
        1.0,
        "Largest penalty subtracted from a response that hits the length limit.",
        valid="a number >= 0",
        ge=0,
    )

    @field_validator("rl_loss_method", mode="before")
    @classmethod
    def _normalise_method(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower().replace("_", "-")
        return value

    @model_validator(mode="after")
    def _kl_only_for_grpo(self) -> LossConfig:
        if self.rl_loss_method in KL_BETA_ERRORS and self.rl_kl_beta != 0:
            raise ValueError(KL_BETA_ERRORS[self.rl_loss_method])
        return self


class RolloutConfig(_Group):
    """How responses are sampled during training."""

    temperature: float = _field(
        0.7,
        "Sampling temperature (must be > 0; near-greedy sampling starves RL of exploration).",
        valid="a number from 0.1 to 2.0",
        ge=0.1,
        le=2.0,
    )
    top_p: float = _field(
        1.0, "Nucleus sampling mass; 1.0 = off.", valid="a number from 0 to 1", ge=0.0, le=1.0
    )
    top_k: int = _field(
        40,
        "Sample among the k most likely tokens; 0 = off.",
        valid="a whole number from 0 to 100",
        ge=0,
        le=100,
    )
    response_candidates_count: int = _field(
        8,
        "Responses sampled per prompt (the group compared to compute advantages).",
        valid="a whole number >= 2",
        flags=("--n",),
        ge=2,
    )
    max_output_tokens: int = _field(
        2048, "Longest response in tokens.", valid="a whole number from 16 to 16384", ge=16, le=16384
    )
    stop: tuple[str, ...] = _field(
        (),
        "Text that ends a response as soon as it appears (kept in the response), e.g. '</answer>'. "
        "Repeat the flag for several; the model's end-of-turn token always ends a response.",
        valid="up to 8 non-empty strings",
        max_length=8,
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and any(not isinstance(v, str) or not v for v in value):
            raise ValueError("every stop string must be non-empty text")
        return value

    max_concurrent_rollouts: int | None = _field(
        None,
        "Sequences sampled in parallel (throughput only); unset = the evaluator header's value.",
        valid="a whole number >= 1",
        ge=1,
    )
    max_concurrent_evaluations: int | None = _field(
        None,
        "Evaluator calls run in parallel; unset = the evaluator header's value.",
        valid="a whole number >= 1",
        ge=1,
    )
    rollout_engine: Literal["local", "endpoint", "vllm"] = _field(
        "local",
        "Where responses are sampled: local (in-process transformers), endpoint (an OpenAI-compatible "
        "server, see --endpoint-url) or vllm (in-process vLLM, GPU only).",
        valid="one of local, endpoint, vllm",
    )
    endpoint_url: str | None = _field(
        None,
        "Base URL of an OpenAI-compatible server for --rollout-engine endpoint (e.g. http://host:8000/v1).",
    )
    ray_address: str | None = _field(
        None,
        "Run rollouts and evaluator calls on a Ray cluster: 'auto', HOST:PORT, ray://HOST:PORT or "
        "'local' (start a private one here). Unset = everything in this process.",
    )
    rollout_workers: int = _field(
        2, "Rollout actors on the Ray cluster (with --ray-address).", valid="a whole number >= 1", ge=1
    )
    max_staleness: int = _field(
        0,
        "Policy versions a rollout may lag behind the trainer (0 = every round samples the latest adapter).",
        valid="a whole number >= 0",
        ge=0,
    )
    evaluator_timeout: float = _field(
        60.0, "Seconds one evaluator call may take before it is scored invalid.", valid="a number > 0", gt=0
    )

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> RolloutConfig:
        if self.rollout_engine == "endpoint" and not self.endpoint_url:
            raise ValueError("--rollout-engine endpoint needs --endpoint-url (e.g. http://localhost:8000/v1)")
        return self


class DataConfig(_Group):
    """What to train on and how it is scored."""

    dataset: str | None = _field(
        None,
        "Training prompts: a JSONL file of {messages, ground_truth} rows, or a built-in task "
        "('arithmetic'). Default: the evaluator's input_dataset, else 'arithmetic'.",
    )
    evaluator: str | None = _field(
        None,
        "Scoring function: path/to/file.py::function, module:function, or a built-in "
        "('arithmetic', 'gsm8k'; weights as options, e.g. 'arithmetic:partial_weight=0'). "
        "Default: the dataset's built-in evaluator.",
    )
    evaluation_dataset: str | None = _field(None, "JSONL prompts scored periodically, never trained on.")
    eval_auto_carveout: float | None = _field(
        None,
        "Hold out this fraction of the training prompts (seeded) as the evaluation set.",
        valid="a fraction greater than 0 and at most 0.5",
        gt=0,
        le=0.5,
    )
    skip_bad_rows: bool = _field(False, "Skip (and count) malformed dataset rows instead of failing.")


class WandbConfig(_Group):
    """Weights & Biases tracking (optional extra)."""

    wandb: bool = _field(False, "Log the job to Weights & Biases (offline when no API key or network).")
    wandb_project: str | None = _field(None, "W&B project (default: openrft).")
    wandb_entity: str | None = _field(None, "W&B entity (team or user).")
    wandb_api_key: SecretStr | None = _field(None, "W&B API key (default: WANDB_API_KEY or offline mode).")
    wandb_run_id: str | None = _field(None, "W&B run id, to resume logging into an existing run.")


GROUPS: dict[str, type[_Group]] = {
    "training": TrainingConfig,
    "loss": LossConfig,
    "rollout": RolloutConfig,
    "data": DataConfig,
    "wandb": WandbConfig,
}
FIELD_GROUP: dict[str, str] = {name: group for group, model in GROUPS.items() for name in model.model_fields}


class JobConfig(BaseModel):
    """A whole job: one model per parameter group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _cross_group_rules(self) -> JobConfig:
        t, r = self.training, self.rollout
        if t.warm_start_from and "base_model" in t.model_fields_set:
            raise ValueError(
                "--warm-start-from and --base-model are mutually exclusive: the adapter already names its base model"
            )
        if t.max_context_length is not None and r.max_output_tokens >= t.max_context_length:
            raise ValueError(
                f"--max-output-tokens ({r.max_output_tokens}) must be smaller than --max-context-length "
                f"({t.max_context_length}) to leave room for the prompt"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """Every parameter by field name (secrets stay SecretStr)."""
        return {name: getattr(getattr(self, group), name) for name, group in FIELD_GROUP.items()}

    def to_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """JSON-ready nested dict (secrets masked unless asked)."""
        data = self.model_dump(mode="json")
        if not reveal_secrets and self.wandb.wandb_api_key is not None:
            data["wandb"]["wandb_api_key"] = "********"
        elif reveal_secrets and self.wandb.wandb_api_key is not None:
            data["wandb"]["wandb_api_key"] = self.wandb.wandb_api_key.get_secret_value()
        return data


# ----------------------------------------------------------------------------- building


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def field_info(name: str):
    return GROUPS[FIELD_GROUP[name]].model_fields[name]


def normalise_key(key: str) -> str:
    """Job-file and flag keys: 'learning-rate', '--learning-rate' and 'learning_rate' are the same."""
    key = key.strip().lstrip("-").replace("-", "_")
    return {"n": "response_candidates_count"}.get(key, key)


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a .yaml/.yml/.json job file into {field_name: value}; sections named after groups are flattened."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such job file: {path}", field="config")
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config: cannot parse {path}: {first}", field="config") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"--config: {path} must hold a mapping of parameter names to values", field="config"
        )
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in GROUPS and isinstance(value, dict):
            flat.update({normalise_key(k): v for k, v in value.items()})
        else:
            flat[normalise_key(str(key))] = value
    for key in flat:
        if key not in FIELD_GROUP:
            close = difflib.get_close_matches(key, list(FIELD_GROUP), n=1)
            hint = f" (did you mean {flag_name(close[0])[2:]}?)" if close else ""
            raise ConfigError(
                f"--config: unknown parameter '{key.replace('_', '-')}' in {path}{hint}", field=key
            )
    return flat


def build_config(
    file_values: dict[str, Any] | None = None, flag_values: dict[str, Any] | None = None
) -> tuple[JobConfig, dict[str, str]]:
    """Merge defaults < job file < flags, validate, and report where each value came from.

    Returns the config and ``{field_name: "default" | "config file" | "flag"}``.
    Raises :class:`ConfigError` with one line per rejected value.
    """
    file_values, flag_values = dict(file_values or {}), dict(flag_values or {})
    merged = {**file_values, **flag_values}
    sources = {
        name: "flag" if name in flag_values else "config file" if name in file_values else "default"
        for name in FIELD_GROUP
    }
    nested: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for name, value in merged.items():
        if name not in FIELD_GROUP:
            raise ConfigError(f"unknown parameter {flag_name(name)}", field=name)
        nested[FIELD_GROUP[name]][name] = value
    try:
        return JobConfig(**nested), sources
    except ValidationError as exc:
        raise ConfigError(_explain(exc, merged), field=_first_field(exc)) from None


def _first_field(exc: ValidationError) -> str | None:
    for err in exc.errors():
        if len(err["loc"]) >= 2:
            return str(err["loc"][1])
    return None


def _explain(exc: ValidationError, given: dict[str, Any]) -> str:
    """One line per pydantic error: the flag, the value given and what is accepted."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        name = loc[1] if len(loc) >= 2 and loc[1] in FIELD_GROUP else None
        if err["type"] == "value_error" and name is None:  # a cross-field rule: its message is the line
            lines.append(str(err["ctx"]["error"]))
            continue
        if name is None:
            lines.append(err["msg"])
            continue
        extra = field_info(name).json_schema_extra or {}
        valid = extra.get("valid") or _type_words(field_info(name).annotation)
        value = given.get(name, err.get("input"))
        shown = value if isinstance(value, str) and value.strip() else repr(value)
        flags = " / ".join([flag_name(name), *extra.get("flags", [])])
        lines.append(f"{flags}: {shown} is not valid; expected {valid}")
    return "\n".join(dict.fromkeys(lines))


def _type_words(annotation: Any) -> str:
    return {bool: "true or false", str: "a string"}.get(annotation, "a value of the right type")


# ----------------------------------------------------------------------------- advice


def advise(cfg: JobConfig) -> list[str]:
    """Warnings from the reference's tuning guidance; they never block a job."""
    t, r = cfg.training, cfg.rollout
    notes = []
    if not 0.5e-4 <= t.learning_rate <= 2e-4:
        notes.append(
            f"--learning-rate {t.learning_rate:g} is more than 2x away from the default 1e-4; "
            "large changes often make training unstable or slow"
        )
    if r.temperature <= 0.1:
        notes.append(
            f"--temperature {r.temperature:g} is near-greedy: candidates barely differ, which risks mode collapse "
            "and zero-variance groups"
        )
    if r.top_k > 50:
        notes.append(f"--top-k {r.top_k} is above 50, which slows sampling for little gain")
    if r.response_candidates_count > 32:
        notes.append(
            f"--response-candidates-count {r.response_candidates_count} is above 32: expect memory pressure "
            "in rollouts and training"
        )
    if t.lora_rank == 32:
        notes.append(
            "--lora-rank 32 needs noticeably more memory and compute and is more prone to overfitting"
        )
    if t.epochs > 1:
        notes.append(
            f"--epochs {t.epochs}: more than one pass over the prompts risks overfitting; watch eval reward"
        )
    return notes
