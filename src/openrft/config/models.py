"""The job configuration: one validated pydantic model per parameter group.

Every field's ``description`` is also its ``--help`` text, and its ``valid`` note
(in ``json_schema_extra``) is what an error message says the accepted values are.
Defaults and ranges follow the managed-RFT parameter guide this project mirrors.

Field names are unique across groups, so a job can be written flat (the CLI and
job files use the flag names) while the code reads ``cfg.rollout.temperature``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from openrft.algo.losses import LOSS_METHODS, KLBetaNotSupported, resolve_loss
from openrft.config.agent import AgentConfig
from openrft.config.data import DataConfig
from openrft.config.fields import (  # fmt: skip
    URL,
    Group,
    field,
    kl_beta_help,
    loss_methods_help,
    one_of,
    parse_token_count,
    template_text,
)
from openrft.config.wandb import WandbConfig
from openrft.records import SamplingParams
from openrft.settings import (
    AgentSettings,
    BatchSettings,
    EngineSettings,
    JobSettings,
    ModelSettings,
    OptimizerSettings,
    RaySettings,
    RoundSettings,
    ScheduleSettings,
)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
LORA_RANKS = (4, 8, 16, 32)
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds both accept this range
MAX_CHUNK_SIZE = 10_000  # the service's bound on chunkSize
DType, RolloutEngineName = Literal["auto", "float32", "bfloat16"], Literal["local", "endpoint", "vllm"]


def kl_beta_message(method: str) -> str:
    """The reference service's message for a KL coefficient on a method without KL, word for word."""
    return f"loss_config.kl_beta must be 0/unset when method is {method.upper().replace('-', '_')}"


KL_BETA_ERRORS = {name: kl_beta_message(name) for name, m in LOSS_METHODS.items() if not m.tunable_kl}


class TrainingConfig(Group):
    """How the model learns."""

    base_model: str = field(
        DEFAULT_BASE_MODEL,
        "Base model: 'smollm2-135m-instruct' (embedded, the default), a local Hugging Face model "
        "directory, or a hub id already in the local Hugging Face cache. Nothing is downloaded.",
    )
    warm_start_from: str | None = field(
        None,
        "Start from an existing LoRA adapter directory (PEFT format) instead of a fresh adapter; its "
        "base model is used. Cannot be combined with an explicit --base-model.",
    )
    output_model: str | None = field(
        None, "Directory for the trained adapter and job outputs (default: the job's folder)."
    )
    job_id: str | None = field(
        None,
        "Job id (ASCII letters, digits, '-', '_'; default: generated).",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$",
        valid="1-64 ASCII letters, digits, '-' or '_', starting with a letter or digit",
    )
    epochs: int = field(
        1, "Passes over the training prompts.", valid="a whole number from 1 to 10", ge=1, le=10
    )
    learning_rate: float = field(
        1e-4, "AdamW step size for the LoRA weights.", valid="a number from 1e-5 to 5e-4", ge=1e-5, le=5e-4
    )
    learning_rate_warmup_steps: int = field(0, "Optimizer steps N of linear learning-rate warm-up: update k (from 1) "
                                                "uses k/(N+1) of the rate.", valid="a whole number >= 0", ge=0)  # fmt: skip
    lora_rank: int = field(8, "Rank of the LoRA adapter (trainable capacity).", valid=one_of(LORA_RANKS))
    lora_alpha: int | None = field(
        None, "LoRA scaling numerator alpha (default: 2 x rank).", valid="a whole number >= 1", ge=1
    )
    max_context_length: int | None = field(
        None,
        "Longest prompt + response in tokens (default: the model's context window).",
        valid="a whole number >= 32",
        ge=32,
    )
    batch_size: int = field(
        32768,
        "Tokens (prompt + response) consumed per training step; '32k' and '64k' forms are accepted.",
        valid="a whole number of tokens from 1 to 2147483647 (e.g. 32768 or 32k)",
        ge=1,
        le=2**31 - 1,
    )
    batch_size_samples: int | None = field(
        None, "Optional cap on sequences per training step.", valid="a whole number >= 1", ge=1
    )
    micro_batch_tokens: int = field(
        256,
        "Memory knob: padded tokens per forward/backward micro-batch. Does not change the maths. "
        "Small is not slower on CPU; raise it on a GPU.",
        valid="a whole number >= 64",
        ge=64,
    )
    gradient_accumulation_steps: int = field(
        1,
        "Training steps per optimizer update, whose loss is the mean over all their tokens, as one step's.",
        valid="a whole number >= 1",
        ge=1,
    )
    optimizer_weight_decay: float = field(0.01, "AdamW weight decay.", valid="a number >= 0", ge=0)
    max_grad_norm: float = field(1.0, "Gradient clipping norm (0 = off).", valid="a number >= 0", ge=0)
    chunk_size: int = field(
        200,
        "Prompts per rollout round (dataset chunking, used when the dataset holds more than 1.5 "
        "rounds' worth, e.g. more than 300 prompts at 200); -1 = the whole dataset in one round.",
        valid=f"-1 or a whole number from 1 to {MAX_CHUNK_SIZE}",
    )
    seed: int = field(
        42,
        "Seed for sampling, data order and initialisation.",
        valid=f"a whole number from 0 to {SEED_MAX}",
        ge=0,
        le=SEED_MAX,
    )
    checkpoint_every: int = field(
        10,
        "Save a resumable checkpoint every N optimizer steps (and at the end).",
        valid="a whole number >= 1",
        ge=1,
    )
    eval_every: int = field(
        10,
        "Score the evaluation set every N optimizer steps (and at start and end); 0 = start and end only.",
        valid="a whole number >= 0",
        ge=0,
    )

    device: str = field(
        "auto",
        "Where the model trains and samples: auto (the first CUDA device when there is one, else the CPU), "
        "cpu, cuda or cuda:N.",
        valid="auto, cpu, cuda or cuda:N",
        pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
    )
    dtype: DType = field(
        "auto",
        "Precision of the base weights: auto (bfloat16 on a CUDA GPU that computes in it, Ampere or later; else "
        "float32), float32 or bfloat16. "
        "The LoRA weights, the optimizer state, log-probabilities and the loss stay float32.",
        valid=one_of(get_args(DType)),
    )
    gradient_checkpointing: bool = field(
        False,
        "Recompute activations in the backward pass instead of keeping them: less memory for long "
        "sequences and large models, about a third more compute.",
    )
    chat_template: str | None = field(
        None,
        "A Jinja chat template that renders the prompts and conversations instead of the base model's "
        "own: a file, or the template text itself; saved with the trained adapter's tokenizer.",
        valid="a readable template file, or template text with {% %} or {{ }}",
    )
    deterministic: bool = field(
        False,
        "Bit-exact reruns and resumes: one intra-op thread and deterministic algorithms (slower). "
        "Without it, runs with the same seed agree to float rounding only.",
    )

    eval_candidates: int = field(
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

    @field_validator("chat_template")
    @classmethod
    def _template_text(cls, value: str | None) -> str | None:
        return None if value is None else template_text(value)

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, value: int) -> int:
        if value != -1 and not 1 <= value <= MAX_CHUNK_SIZE:
            raise ValueError("out of range")
        return value


class LossConfig(Group):
    """Which policy-gradient objective to optimise."""

    rl_loss_method: str = field(
        "grpo",
        loss_methods_help(),
        valid=one_of(LOSS_METHODS),
    )
    rl_kl_beta: float = field(
        0.0,
        kl_beta_help(),
        valid="a number >= 0",
        ge=0,
    )
    length_norm: bool = field(
        False,
        "Normalise each response's loss by its own length (seq-mean-token-mean aggregation) whatever the method.",
    )
    dynamic_sampling: bool = field(
        False,
        "DAPO dynamic sampling (opt-in, with any --rl-loss-method): sample further prompts until the "
        "round holds as many non-zero-variance groups as it has prompts.",
    )
    max_sampling_rounds: int = field(
        3,
        "Cap on extra sampling rounds per round with --dynamic-sampling.",
        valid="a whole number >= 1",
        ge=1,
    )
    rollout_is_cap: float = field(
        2.0,
        "Sampler/trainer mismatch correction: when responses are sampled by another engine (vLLM, an "
        "endpoint, the local engine in bfloat16) the trainer recomputes their log-probs, takes the clipped "
        "ratio against those and weights each token by min(p_trainer / p_sampler, CAP) (truncated "
        "importance sampling). 0 leaves out the weights.",
        valid="0 or a number >= 1",
    )
    overlong_penalty: bool = field(
        False,
        "DAPO soft overlong penalty (opt-in, with any --rl-loss-method): linearly penalise responses that "
        "enter the final buffer.",
    )
    overlong_buffer: int | None = field(
        None,
        "Length of the overlong penalty buffer in tokens (default: a quarter of --max-output-tokens).",
        valid="a whole number >= 1",
        ge=1,
    )
    overlong_penalty_factor: float = field(
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

    @field_validator("rollout_is_cap")
    @classmethod
    def _cap(cls, value: float) -> float:
        if value != 0 and value < 1:
            raise ValueError("a cap below 1 would down-weight tokens the sampler and trainer agree on")
        return value

    @field_validator("rl_loss_method")
    @classmethod
    def _registered_method(cls, value: str) -> str:
        if value not in LOSS_METHODS:
            raise ValueError("not a registered loss method")
        return value

    @model_validator(mode="after")
    def _kl_only_where_tunable(self) -> LossConfig:
        try:
            resolve_loss(self.rl_loss_method, self.rl_kl_beta, self.length_norm)
        except KLBetaNotSupported:
            raise ValueError(kl_beta_message(self.rl_loss_method)) from None
        return self


class RolloutConfig(Group):
    """How responses are sampled during training."""

    temperature: float = field(
        0.7,
        "Sampling temperature (must be > 0; near-greedy sampling starves RL of exploration).",
        valid="a number from 0.1 to 2.0",
        ge=0.1,
        le=2.0,
    )
    top_p: float = field(
        1.0, "Nucleus sampling mass; 1.0 = off.", valid="a number from 0 to 1", ge=0.0, le=1.0
    )
    top_k: int = field(
        40,
        "Sample among the k most likely tokens; 0 = off.",
        valid="a whole number from 0 to 100",
        ge=0,
        le=100,
    )
    response_candidates_count: int = field(
        8,
        "Responses sampled per prompt (the group compared to compute advantages).",
        valid="a whole number >= 2",
        flags=("--n",),
        ge=2,
    )
    max_output_tokens: int = field(
        2048, "Longest response in tokens.", valid="a whole number from 16 to 16384", ge=16, le=16384
    )
    stop: tuple[str, ...] = field(
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

    max_concurrent_rollouts: int | None = field(
        None,
        "Sequences sampled in parallel (throughput only); unset = the evaluator header's value.",
        valid="a whole number >= 1",
        ge=1,
    )
    max_concurrent_evaluations: int | None = field(
        None,
        "Evaluator calls run in parallel; unset = the evaluator header's value.",
        valid="a whole number >= 1",
        ge=1,
    )
    rollout_engine: RolloutEngineName = field(
        "local",
        "Where responses are sampled: local (in-process transformers), endpoint (an OpenAI-compatible "
        "server, see --endpoint-url) or vllm (in-process vLLM, GPU only).",
        valid=one_of(get_args(RolloutEngineName)),
    )
    compile: bool = field(
        True,
        "With the local engine on a GPU: compile the decoding step (torch.compile, CUDA graphs) once eager "
        "sampling has taken a minute, about what compiling costs; then each step runs several times faster. "
        "--no-compile keeps every step eager. Not used on a CPU.",
    )
    endpoint_url: str | None = field(None, "Base URL of an OpenAI-compatible server for --rollout-engine endpoint "
                                     "(e.g. http://host:8000/v1).", valid="an http:// or https:// URL", pattern=URL)  # fmt: skip
    ray_address: str | None = field(
        None,
        "Run rollouts and evaluator calls on a Ray cluster: 'auto', HOST:PORT, ray://HOST:PORT or "
        "'local' (start a private one here). Unset = everything in this process.",
    )
    rollout_workers: int = field(
        2, "Rollout actors on the Ray cluster (with --ray-address).", valid="a whole number >= 1", ge=1
    )
    max_staleness: int = field(
        0,
        "Policy versions a rollout may lag behind the trainer (0 = every round samples the latest adapter).",
        valid="a whole number >= 0",
        ge=0,
    )
    vllm_gpu_memory_utilization: float = field(
        0.3,
        "With --rollout-engine vllm on the trainer's GPU: the share of the GPU's memory vLLM may use "
        "(weights and KV cache); the trainer keeps the rest.",
        valid="a number greater than 0 and at most 0.95",
        gt=0,
        le=0.95,
    )
    evaluator_timeout: float = field(
        60.0, "Seconds one evaluator call may take before it is scored invalid.", valid="a number > 0", gt=0
    )
    response_format: str | None = field(
        None,
        "JSON every response must be (structured output, by constrained decoding with the local engine): "
        "'json_object' for any JSON object, or a .json file (or inline JSON) holding a JSON schema or "
        "OpenAI's response_format object. Objects that list their properties admit no others. Graders then "
        "read the reply as sample.output_json. Default: free text.",
    )

    @field_validator("response_format")
    @classmethod
    def _schema(cls, value: str | None) -> str | None:
        if value is not None:
            from openrft.rollout.constrained import job_response_grammar

            job_response_grammar(value)  # readable, and compiles to a grammar
        return value

    @model_validator(mode="after")
    def _engine_combinations(self) -> RolloutConfig:
        if self.response_format and self.rollout_engine != "local":
            raise ValueError(
                f"--response-format needs --rollout-engine local: {self.rollout_engine} sampling is not "
                "constrained here"
            )
        if self.rollout_engine == "endpoint" and not self.endpoint_url:
            raise ValueError("--rollout-engine endpoint needs --endpoint-url (e.g. http://localhost:8000/v1)")
        for name in ("rollout_workers", "max_staleness"):  # set to other than its default, without Ray
            default = type(self).model_fields[name].default
            if name in self.model_fields_set and getattr(self, name) != default and not self.ray_address:
                flag = "--" + name.replace("_", "-")
                raise ValueError(
                    f"{flag} applies to a Ray cluster: give --ray-address too (or leave {flag} out)"
                )
        address = (self.ray_address or "").strip().removeprefix("ray://")
        host, _, port = address.rpartition(":")
        if address and address not in ("auto", "local") and not (host and port.isdigit()):
            raise ValueError(
                f"--ray-address {self.ray_address!r} is not an address: use 'auto', 'local', HOST:PORT "
                "(e.g. 10.0.0.5:6379) or ray://HOST:PORT"
            )
        if self.ray_address and self.rollout_engine == "endpoint":
            raise ValueError(
                "--ray-address runs the rollouts on Ray actors, but --rollout-engine endpoint samples on a "
                "server: use --rollout-engine local (CPU actors) or vllm (GPU actors) with --ray-address"
            )
        return self


GROUPS: dict[str, type[Group]] = {
    "training": TrainingConfig,
    "loss": LossConfig,
    "rollout": RolloutConfig,
    "data": DataConfig,
    "wandb": WandbConfig,
    "agent": AgentConfig,
}
FIELD_GROUP: dict[str, str] = {name: group for group, model in GROUPS.items() for name in model.model_fields}


def flatten(nested: dict[str, Any]) -> dict[str, Any]:
    """``{group: {field: value}}`` (a job.json, a stored config) -> ``{field: value}``; field names are unique."""
    return {
        name: value for group in nested.values() if isinstance(group, dict) for name, value in group.items()
    }


class JobConfig(BaseModel):
    """A whole job: one model per parameter group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)

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
        if r.response_format and self.agent.enabled:
            raise ValueError(
                "--response-format shapes single-turn replies; an agent's calls ask for their own "
                "(response_format in its requests)"
            )
        buffer = self.loss.overlong_buffer
        if self.loss.overlong_penalty and buffer is not None and buffer > r.max_output_tokens:
            raise ValueError(
                f"--overlong-buffer ({buffer}) must not exceed --max-output-tokens ({r.max_output_tokens}): "
                "the buffer is the last part of the allowed response length"
            )
        return self

    def settings(self) -> JobSettings:
        """The typed settings every stage of the job receives (see :mod:`openrft.settings`)."""
        from openrft.algo.dapo import default_overlong_buffer  # imports torch: only when a job runs

        t, lo, r, a = self.training, self.loss, self.rollout, self.agent
        loss_fn, loss_spec = resolve_loss(lo.rl_loss_method, lo.rl_kl_beta, lo.length_norm)
        ray = RaySettings(r.ray_address, r.rollout_workers, r.max_staleness) if r.ray_address else None
        return JobSettings(
            model=ModelSettings(
                t.base_model,
                t.warm_start_from,
                t.lora_rank,
                t.lora_alpha,
                t.max_context_length,
                t.device,
                t.dtype,
                t.gradient_checkpointing,
                t.chat_template,
            ),  # fmt: skip
            loss_fn=loss_fn,
            loss=loss_spec,
            sampling=SamplingParams(
                n=r.response_candidates_count,
                temperature=r.temperature,
                top_p=r.top_p,
                top_k=r.top_k,
                max_tokens=r.max_output_tokens,
                stop=r.stop,
                grammar=response_grammar(r.response_format),
            ),  # fmt: skip
            batching=BatchSettings(
                t.batch_size,
                t.batch_size_samples,
                t.micro_batch_tokens,
                t.gradient_accumulation_steps,
                t.max_grad_norm,
            ),  # fmt: skip
            optimizer=OptimizerSettings(
                t.learning_rate, t.optimizer_weight_decay, t.learning_rate_warmup_steps
            ),
            schedule=ScheduleSettings(
                t.epochs,
                t.chunk_size,
                t.seed,
                t.eval_every,
                t.eval_candidates,
                t.checkpoint_every,
                t.deterministic,
            ),
            rounds=RoundSettings(
                overlong_buffer=(lo.overlong_buffer or default_overlong_buffer(r.max_output_tokens))
                if lo.overlong_penalty
                else None,
                overlong_factor=lo.overlong_penalty_factor,
                dynamic_sampling_rounds=lo.max_sampling_rounds if lo.dynamic_sampling else None,
                rollout_is_cap=lo.rollout_is_cap,
            ),
            agent=AgentSettings(a.agent, a.tools, a.mcp_server, a.max_turns, a.tool_timeout, a.agent_timeout)
            if a.enabled
            else None,
            engine=EngineSettings(
                r.rollout_engine,
                r.endpoint_url,
                r.max_concurrent_rollouts,
                r.max_concurrent_evaluations,
                r.evaluator_timeout,
                ray,
                r.vllm_gpu_memory_utilization,
                r.compile,
            ),  # fmt: skip
        )

    def flat(self) -> dict[str, Any]:
        """Every parameter by field name, typed (secrets stay SecretStr)."""
        return flatten({group: dict(getattr(self, group)) for group in GROUPS})

    def to_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """JSON-ready nested dict (secrets masked unless asked)."""
        data = self.model_dump(mode="json")
        if not reveal_secrets and self.wandb.wandb_api_key is not None:
            data["wandb"]["wandb_api_key"] = "********"
        elif reveal_secrets and self.wandb.wandb_api_key is not None:
            data["wandb"]["wandb_api_key"] = self.wandb.wandb_api_key.get_secret_value()
        return data


def response_grammar(response_format: str | None) -> str | None:
    """The grammar every sampled response follows, from ``--response-format`` (None: free text)."""
    if response_format is None:
        return None
    from openrft.rollout.constrained import job_response_grammar

    return job_response_grammar(response_format)
