"""The small typed settings the lower layers receive, resolved once from a job's configuration.

:meth:`openrft.config.JobConfig.settings` turns the validated, flag-shaped configuration into
these frozen records; the training loop, the rounds, the engines and the Ray code read only
them (``train/job.py`` is the one reader of the configuration itself). Each record holds
what one stage needs, under the names that stage uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from openrft.algo.losses import LossFn, LossSpec
from openrft.records import SamplingParams

EngineKind = Literal["local", "endpoint", "vllm"]


@dataclass(frozen=True)
class ModelSettings:
    """Which model and adapter to train."""

    base_model: str
    warm_start_from: str | None
    lora_rank: int
    lora_alpha: int | None
    max_context_length: int | None
    device: str = "cpu"  # "auto" until the job's inputs are checked: then cpu, cuda or cuda:N
    dtype: str = "float32"  # of the base weights: "auto" until checked, then float32 or bfloat16
    gradient_checkpointing: bool = False
    chat_template: str | None = None  # replaces the tokenizer's own (--chat-template)


@dataclass(frozen=True)
class BatchSettings:
    """How a round's sequences become optimizer updates."""

    step_tokens: int  # --batch-size: prompt + response tokens per training step
    step_sequences: int | None  # --batch-size-samples
    micro_batch_tokens: int  # padded tokens per forward/backward pass (memory only)
    accumulation_steps: int  # training steps per optimizer update
    max_grad_norm: float


@dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float
    weight_decay: float
    warmup_steps: int


@dataclass(frozen=True)
class ScheduleSettings:
    """How prompts are visited, and when the loop evaluates and checkpoints."""

    epochs: int
    chunk_size: int  # --chunk-size: prompts per rollout round, -1 = all
    seed: int
    eval_every: int
    eval_candidates: int
    checkpoint_every: int
    deterministic: bool = False  # one intra-op thread, deterministic algorithms: bit-exact reruns

    def prompts_per_round(self, num_prompts: int) -> int:
        """The round size: ``--chunk-size``; every prompt when it is -1 or the set holds at most 1.5
        rounds' worth (the service chunks a dataset only above 300 prompts at its default of 200)."""
        if self.chunk_size == -1 or 2 * num_prompts <= 3 * self.chunk_size:
            return max(1, num_prompts)
        return self.chunk_size

    def rounds_per_epoch(self, num_prompts: int) -> int:
        return max(1, -(-num_prompts // self.prompts_per_round(num_prompts)))


@dataclass(frozen=True)
class RoundSettings:
    """What is done to each round's samples: DAPO's opt-in extras (None = off), the mismatch correction."""

    overlong_buffer: int | None = None
    overlong_factor: float = 1.0
    dynamic_sampling_rounds: int | None = None
    rollout_is_cap: float = 2.0  # truncated importance weights for another engine's samples (0 = off)


@dataclass(frozen=True)
class RaySettings:
    address: str
    workers: int
    max_staleness: int


@dataclass(frozen=True)
class EngineSettings:
    """Where responses are sampled and scored; None concurrency = the evaluator's own."""

    kind: EngineKind
    endpoint_url: str | None
    max_concurrent_rollouts: int | None
    max_concurrent_evaluations: int | None
    evaluator_timeout: float
    ray: RaySettings | None
    vllm_gpu_memory_utilization: float = 0.3
    compile: bool = True  # the local engine's decoding step, on a GPU


@dataclass(frozen=True)
class AgentSettings:
    """Multi-turn rollouts: the user's agent (``path.py::fn``) or the built-in tool loop's tools."""

    agent: str | None
    tools: str | None
    mcp_server: tuple[str, ...] | str | None  # the servers (one as text, or none, as older records hold)
    max_turns: int = 8
    tool_timeout: float = 30.0
    agent_timeout: float = 600.0

    def __post_init__(self) -> None:
        servers = self.mcp_server
        object.__setattr__(
            self, "mcp_server", (servers,) if isinstance(servers, str) else tuple(servers or ())
        )


@dataclass(frozen=True)
class JobSettings:
    """Everything a job's stages need, resolved from one validated configuration."""

    model: ModelSettings
    loss_fn: LossFn
    loss: LossSpec
    sampling: SamplingParams  # the training rollouts' parameters (seeded per round)
    batching: BatchSettings
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    rounds: RoundSettings
    engine: EngineSettings
    agent: AgentSettings | None = None  # None: one sampled response per candidate


__all__ = [
    "AgentSettings",
    "BatchSettings",
    "EngineKind",
    "EngineSettings",
    "JobSettings",
    "ModelSettings",
    "OptimizerSettings",
    "RaySettings",
    "RoundSettings",
    "ScheduleSettings",
]
