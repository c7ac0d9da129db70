"""Resumable checkpoints, written so that a crash at any moment leaves the last good one intact.

A checkpoint is a directory ``checkpoints/step-NNNNNN/`` holding the adapter (PEFT
format), the optimizer and scheduler state, the RNG states and ``state.json`` (the
loop's position: epoch, round, step counters and the not-yet-trained remainder of
the current round). It is built under a temporary name and renamed into place, then
``checkpoints/LATEST`` is atomically replaced to point at it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openrft.errors import JobError
from openrft.paths import atomic_directory, atomic_write_text, recover_directory
from openrft.records import Completion
from openrft.train.batching import TrainSequence

KEEP_LAST = 2


# ----------------------------------------------------------------------------- loop state


@dataclasses.dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped."""

    epoch: int = 0
    cursor: int = 0  # prompts of this epoch's order already sampled
    round_index: int = 0  # rounds sampled since the job started
    step: int = 0  # training steps done
    optimizer_step: int = 0  # optimizer updates done (= policy version)
    pending: list[list[TrainSequence]] = dataclasses.field(default_factory=list)  # steps left in this round
    round_start: int = 0  # the cursor before this round's prompts were drawn
    round_steps: int = 0  # the steps this round was planned in (its progress: those of them done)
    round_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # of the round being trained
    epoch_groups_with_signal: int = 0
    epoch_groups_total: int = 0
    epoch_completions: int = 0  # candidates sampled this epoch
    epoch_truncated: int = 0  # of which cut off at --max-output-tokens
    measure_mismatch: bool = False  # the next step is the round's first: measure the sampler against it
    outcome: str = ""  # "completed" or "early_stopped" once the job has ended (its last checkpoint)
    nonfinite_in_a_row: int = 0  # consecutive updates skipped for a non-finite loss or gradient
    log_position: dict[str, int] = dataclasses.field(default_factory=dict)  # lines logged when saved
    evaluated_version: int = -1  # the policy version (optimizer step) last evaluated and logged
    update_denominator: float = 0.0  # loss denominator of the steps accumulated since the last update
    cancelled: bool = False  # this checkpoint was written as the job stopped for a cancel (repair reads it)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pending"] = [[_sequence_to_json(s) for s in step] for step in self.pending]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # fields of older versions are dropped
        data["pending"] = [[_sequence_from_json(s) for s in step] for step in data.get("pending", [])]
        return cls(**data)


def _sequence_to_json(seq: TrainSequence) -> dict[str, Any]:
    return {
        "completion": dataclasses.asdict(seq.completion),
        "advantage": seq.advantage,
        "group_index": seq.group_index,
        "old_logprobs": seq.old_logprobs,
        "is_weights": seq.is_weights,
    }


def _completion_from_json(data: dict[str, Any]) -> Completion:
    c = dict(data)
    for key in ("prompt_token_ids", "completion_token_ids", "logprobs", "completion_mask", "conversation"):
        c[key] = tuple(c.get(key) or ())
    c["continuations"] = tuple(_completion_from_json(x) for x in c.get("continuations") or ())
    c["top_logprobs"] = tuple(tuple(tuple(pair) for pair in top) for top in c.get("top_logprobs") or ())
    return Completion(**c)


def _sequence_from_json(data: dict[str, Any]) -> TrainSequence:
    optional = {k: tuple(data[k]) for k in ("old_logprobs", "is_weights") if data.get(k) is not None}
    return TrainSequence(
        _completion_from_json(data["completion"]), data["advantage"], data["group_index"], **optional
    )


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(root: Path, state: LoopState, peft_model, optimizer, scheduler) -> Path:
    """Write ``root/step-NNNNNN`` atomically, point LATEST at it, keep the last few."""
    from openrft.train.policy import save_adapter

    target = root / f"step-{state.optimizer_step:06d}"
    with atomic_directory(target) as tmp:
        save_adapter(peft_model, tmp / "adapter")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt"
        )
        torch.save(_rng_state(), tmp / "rng.pt")
        atomic_write_text(tmp / "state.json", json.dumps(state.to_json()))
    atomic_write_text(root / "LATEST", target.name + "\n")
    for old in sorted(root.glob("step-*"))[:-KEEP_LAST]:
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(root: Path, *, tidy: bool = True) -> Path | None:
    """The directory LATEST points at, if it is complete; else the newest complete one.

    What a killed writer left is put right first (:func:`openrft.paths.recover_directory`): a checkpoint
    it had moved aside to replace comes back, and its half-written folder goes once its writer is dead.
    ``tidy=False`` looks without changing anything (``rftj repair``, on folders a job may be writing).
    """
    names = {p.name[1:].split(".", 1)[0] for p in [*root.glob(".step-*.tmp"), *root.glob(".step-*.old")]}
    for name in sorted(names) if tidy else ():
        recover_directory(root / name)
    pointer = root / "LATEST"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").is_file():
            return candidate
    complete = [p for p in sorted(root.glob("step-*")) if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def load_checkpoint(path: Path, peft_model, optimizer, scheduler) -> LoopState:
    """Restore adapter weights, optimizer, scheduler and RNG states; return the loop state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from openrft.train.policy import TRAINABLE

    weights = path / "adapter" / "adapter_model.safetensors"
    if not weights.is_file():
        raise JobError(f"checkpoint {path} is incomplete (no adapter weights)")
    set_peft_model_state_dict(peft_model, load_file(str(weights)), adapter_name=TRAINABLE)
    # on the CPU: a GPU job's checkpoint resumes on another device or machine; load_state_dict moves the
    # optimizer's state to its parameters' device
    optim = torch.load(path / "optim.pt", weights_only=False, map_location="cpu")
    # the hyperparameters the job has now (a resume may change them), not the checkpoint's: its moments
    # and step count are restored, its learning rate and weight decay are not
    wanted = [(group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups]
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    scheduler.base_lrs = [lr for lr, _ in wanted]
    for group, (lr, decay) in zip(optimizer.param_groups, wanted, strict=True):
        group.update(initial_lr=lr, weight_decay=decay)
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False, map_location="cpu"))
    return LoopState.from_json(json.loads((path / "state.json").read_text()))


def load_latest(root: Path, peft_model, optimizer, scheduler) -> tuple[Path, LoopState] | None:
    """Load the newest checkpoint under ``root`` that can be read (see :func:`load_checkpoint`); a
    damaged one (a truncated file, a disk error) is named on stderr and the one before it is tried.
    None when there is none; a :class:`JobError` naming each one when none can be read."""
    import sys

    newest = latest_checkpoint(root)
    if newest is None:
        return None
    older = [
        p for p in sorted(root.glob("step-*"), reverse=True) if (p / "state.json").is_file() and p != newest
    ]
    problems = []
    for path in [newest, *older]:
        try:
            return path, load_checkpoint(path, peft_model, optimizer, scheduler)
        except Exception as exc:  # noqa: BLE001 - any damage: the one before may still be whole
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            problems.append(f"{path.name} ({type(exc).__name__}: {first})")
            print(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); trying the one before",
                  file=sys.stderr)  # fmt: skip
    raise JobError(f"no checkpoint of the job can be read: {'; '.join(problems)}",
                   hint="resume from the start with `openrft rftj create --config` of the same job")  # fmt: skip


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def restore_state(root: Path, peft_model: Any, optimizer: Any, scheduler: Any, logs: Any) -> LoopState:
    """The loop's state at the newest checkpoint under ``root`` (loaded into the model and optimizer),
    the job's ``logs`` (its JSONL sink) cut back to exactly the lines written before it was saved; a
    fresh state when there is none yet."""
    loaded = load_latest(root, peft_model, optimizer, scheduler)
    if loaded is None:
        return fresh_state(logs)
    state = loaded[1]
    if state.log_position:
        logs.truncate_to(state.log_position)
    else:
        logs.truncate_after(state.step)
    return state


def fresh_state(logs: Any) -> LoopState:
    """A new loop's state; an earlier start's lines (it left no checkpoint) are cleared from ``logs``:
    its rollouts too when it failed before its first metrics line."""
    logs.truncate_after(-1)
    return LoopState()
