"""The rollout actor: one engine (local on CPU, vLLM on a GPU) and the adapter it samples with.

A :class:`RolloutWorker` is built from a :class:`WorkerSpec` (the base model's name or
directory, the LoRA adapter's structure, the engine and its bound), so a restarted actor
rebuilds itself from the spec alone. It never receives the base weights: only the LoRA
adapter's tensors (an :class:`AdapterSnapshot` in the object store), which it loads
when its own adapter is older than a call allows. Every completion it returns carries
the version of the adapter it sampled with.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openrft.errors import OpenRFTError
from openrft.paths import pid_alive
from openrft.records import Completion, SamplingParams

NO_ADAPTER = -1  # the version of a worker that has not loaded an adapter yet
TRAINABLE = "default"  # the trainer's adapter name (openrft.train.policy.TRAINABLE)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rollout actor needs to build itself (pickled into the actor's constructor)."""

    base_model: str  # a name openrft resolves, or a model directory readable on the worker's node
    lora_config: Any  # the trainer's peft.LoraConfig
    engine: Literal["local", "vllm"] = "local"
    max_concurrent_rollouts: int | None = None  # sequences in flight in this actor
    stop_token_ids: tuple[int, ...] = ()
    torch_threads: int | None = None
    vllm_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterSnapshot:
    """One policy version's adapter tensors, put once into the object store (``ref``)."""

    version: int
    ref: Any  # ObjectRef of {peft state-dict key: CPU tensor}


class RolloutWorker:
    """The body of a rollout actor (wrapped with ``ray.remote`` by :mod:`openrft.distributed.engine`)."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.version = NO_ADAPTER
        self.restarted = _is_restart()
        self._crash_next_call = False
        if spec.torch_threads:
            import torch

            torch.set_num_threads(spec.torch_threads)
        self._adapter_dir = _adapter_dir()
        self._loaded: list[str] = []
        self._startup_error: OpenRFTError | None = None
        try:
            self.engine = self._build_engine()
        except OpenRFTError as exc:  # kept, and raised by every call: the driver shows it as is
            self.engine, self._startup_error = None, exc

    def _build_engine(self) -> Any:
        spec = self.spec
        if spec.engine == "vllm":
            from openrft.models import load_tokenizer
            from openrft.rollout.vllm_engine import VLLMEngine

            rank = int(getattr(spec.lora_config, "r", 32))
            options = {"max_lora_rank": max(rank, 8), **spec.vllm_options}
            return VLLMEngine(
                spec.base_model,
                load_tokenizer(spec.base_model),
                max_concurrent_rollouts=spec.max_concurrent_rollouts,
                stop_token_ids=spec.stop_token_ids or None,
                **options,
            )
        from peft import get_peft_model

        from openrft.models import load_model
        from openrft.rollout.local import LocalEngine

        model, tokenizer = load_model(spec.base_model)
        model = get_peft_model(model, copy.deepcopy(spec.lora_config), adapter_name=TRAINABLE)
        return LocalEngine(
            model,
            tokenizer,
            max_concurrent_rollouts=spec.max_concurrent_rollouts,
            stop_token_ids=spec.stop_token_ids or None,
        )

    # ------------------------------------------------------------------------- calls

    def info(self) -> dict[str, Any]:
        """Process id, adapter version and whether this incarnation is a restart."""
        if self._startup_error is not None:
            raise self._startup_error
        return {"pid": os.getpid(), "version": self.version, "restarted": self.restarted}

    def generate(
        self,
        prompts: Sequence[tuple[str, Sequence[int]]],
        params: SamplingParams,
        adapter: AdapterSnapshot,
        min_version: int,
    ) -> list[list[Completion]]:
        """Sample ``params.n`` candidates per ``(prompt_id, token_ids)``, first loading ``adapter``
        when this actor's adapter is older than ``min_version``."""
        if self._startup_error is not None:
            raise self._startup_error
        if self.version < min_version:
            self.load(adapter)
        if self._crash_next_call:
            os._exit(1)  # the test hook (arm_crash): die in the middle of a round
        self.engine.policy_version = self.version
        return self.engine.generate_from_ids(prompts, params, stop_token_ids=self.spec.stop_token_ids or None)

    def arm_crash(self) -> None:
        """Test hook: this incarnation of the actor exits (as if it crashed) in its next ``generate``."""
        self._crash_next_call = True

    def load(self, adapter: AdapterSnapshot) -> int:
        """Load a snapshot's adapter tensors into the engine; return the new version."""
        state = adapter.ref
        if not isinstance(state, dict):  # an ObjectRef (a plain dict when used without Ray)
            import ray

            state = ray.get(state)
        if self.spec.engine == "vllm":
            self._load_into_vllm(state, adapter.version)
        else:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.engine.model, state, adapter_name=TRAINABLE)
        self.version = adapter.version
        return self.version

    def _load_into_vllm(self, state: dict[str, Any], version: int) -> None:
        """vLLM loads adapters from PEFT directories: write one (config + tensors), register it."""
        from safetensors.torch import save_file

        name = f"policy-v{version:06d}"
        folder = self._adapter_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        self.spec.lora_config.save_pretrained(str(folder))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
        self.engine.load_adapter(str(folder), name)
        for old in self._loaded:
            self.engine.unload_adapter(old)
            shutil.rmtree(self._adapter_dir / old, ignore_errors=True)
        self._loaded = [name]


def _adapter_dir() -> Path:
    """This actor process's folder for adapter files (vLLM loads adapters from disk), under one
    parent per node; folders of actor processes that are gone (``ray.kill`` runs no clean-up) are
    removed first."""
    parent = Path(tempfile.gettempdir()) / "openrft-adapters"
    parent.mkdir(exist_ok=True)
    for old in parent.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))


def _is_restart() -> bool:
    """Whether this process is a restarted incarnation of a Ray actor (False outside Ray)."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    with warnings.catch_warnings():  # the property reads a deprecated field inside Ray
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


__all__ = ["AdapterSnapshot", "NO_ADAPTER", "RolloutWorker", "WorkerSpec"]
