"""openrft's side of ``bench/vs_trl.py``: the real training loop, timed step by step.

Runs ``openrft.train.job.run_training`` on the spec's configuration (one round of
``prompts_per_step`` prompts = one optimizer step) and stops it after ``steps`` steps.

Timing, observed without changing behaviour:

* a metrics sink added to the job receives each step's metrics line (the same dict
  ``metrics.jsonl`` gets) and stamps the time it arrives;
* a wrapper around the loop's ``start_round`` stamps when sampling for the next step begins:
  a step's wall time runs from there to its metrics line (sampling, scoring, advantages,
  training, optimizer, logging; model loading and start-up are outside);
* a wrapper around the loop's ``plan_step`` counts the tokens the micro-batches really run
  (each prompt once per group, padding not counted, zero-advantage micro-batches dropped);
* a wrapper around ``rounds.sample_and_score`` adds up rollout and scoring seconds and the
  completion tokens generated, so a round whose groups were all filtered out (no training
  step of its own) is charged to the step that follows it.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

from _vs_trl_common import dataset_source, path_parameters, run_side


class StepRecorder:
    """A metrics sink that turns the loop's callbacks into one timing record per step."""

    def __init__(self, steps: int):
        self.steps = steps
        self.records: list[dict[str, Any]] = []
        self.first_prompt_ids: list[list[int]] | None = None
        self._reset()

    def _reset(self) -> None:
        self.start: float | None = None
        self.rounds = 0
        self.rollout_s = self.score_s = 0.0
        self.completion_tokens = 0
        self.computed_tokens = self.padded_tokens = 0

    def round_started(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        self.rounds += 1

    def sampled(self, rollout_s: float, score_s: float, completion_tokens: int) -> None:
        self.rollout_s += rollout_s
        self.score_s += score_s
        self.completion_tokens += completion_tokens

    def planned(self, batches) -> None:
        from openrft.train.packing import plan_packing

        for b in batches:
            self.computed_tokens += int(b.prompt_mask_GP.sum() + b.completion_mask_RC.sum())
            seen_RC = b.completion_mask_RC if b.attention_mask_RC is None else b.attention_mask_RC
            rows = plan_packing(b.row_group_R, seen_RC.sum(-1).long(), b.completion_ids_RC.shape[1]).rows
            # the rows the trainer runs: each prompt once, then its completions packed together
            self.padded_tokens += (
                b.prompt_ids_GP.numel() + min(rows, len(b.row_group_R)) * b.completion_ids_RC.shape[1]
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if "time/train_s" not in metrics or self.start is None:  # an evaluation line, not a step
            return
        self.records.append(
            {
                "wall_s": time.perf_counter() - self.start,
                "rollout_s": self.rollout_s,
                "score_s": self.score_s,
                "loop_train_s": metrics["time/train_s"],  # the loop's own: plan, forward/backward, optimizer
                "completion_tokens": self.completion_tokens,
                "trained_tokens": metrics.get("batch/tokens", 0.0),
                "trained_sequences": metrics.get("batch/sequences", 0.0),
                "computed_tokens": self.computed_tokens,
                "padded_tokens": self.padded_tokens,
                "reward_mean": metrics.get("reward/mean"),
                "rounds": self.rounds,
                "zero_variance_groups": metrics.get("filter/zero_variance_groups", 0.0),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
            }
        )
        self._reset()

    def log_rollouts(self, step: int, rows) -> None:
        pass

    def close(self) -> None:
        pass

    def done(self) -> bool:
        return len(self.records) >= self.steps


def _instrument(recorder: StepRecorder, captured: dict[str, Any]) -> None:
    """Wrap the loop's round start, sampling and policy construction (observation only)."""
    import openrft.train.loop as loop
    import openrft.train.rounds as rounds
    import openrft.train.setup as setup

    for module, name in [
        (loop, "start_round"),
        (loop, "plan_step"),
        (rounds, "sample_and_score"),
        (setup, "build_policy"),
    ]:
        if not callable(getattr(module, name, None)):
            raise RuntimeError(
                f"{module.__name__}.{name} is gone: openrft's loop changed, update bench/_vs_trl_openrft.py"
            )
    start_round, sample_and_score, build_policy = (
        loop.start_round,
        rounds.sample_and_score,
        setup.build_policy,
    )
    plan_step = loop.plan_step
    signature = inspect.signature(sample_and_score)

    def timed_start_round(*args, **kwargs):
        recorder.round_started()
        return start_round(*args, **kwargs)

    def timed_sample_and_score(*args, **kwargs):
        timings = signature.bind(*args, **kwargs).arguments["timings"]  # the round's timing dict
        before = dict(timings)
        groups = sample_and_score(*args, **kwargs)
        if recorder.first_prompt_ids is None:
            recorder.first_prompt_ids = [list(g.completions[0].prompt_token_ids) for g in groups]
        recorder.sampled(
            timings.get("time/rollout_s", 0.0) - before.get("time/rollout_s", 0.0),
            timings.get("time/score_s", 0.0) - before.get("time/score_s", 0.0),
            sum(len(c.completion_token_ids) for g in groups for c in g.completions),
        )
        return groups

    def counting_plan_step(*args, **kwargs):
        batches, dropped = plan_step(*args, **kwargs)
        recorder.planned(batches)
        return batches, dropped

    def capturing_build_policy(*args, **kwargs):
        model, tokenizer = build_policy(*args, **kwargs)
        captured["model"] = model
        return model, tokenizer

    loop.start_round = timed_start_round
    rounds.sample_and_score = timed_sample_and_score
    setup.build_policy = capturing_build_policy
    loop.plan_step = counting_plan_step


def openrft_flags(spec: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """The job flags matching the spec; a round of ``prompts_per_step`` prompts is one step."""
    flags = {
        "dataset": dataset_source(spec),
        "evaluator": "arithmetic",
        "rl_loss_method": "dapo",
        "response_candidates_count": spec["generations"],
        "max_output_tokens": spec["max_completion_length"],
        "temperature": spec["temperature"],
        "top_k": spec["top_k"],
        "top_p": spec["top_p"],
        "learning_rate": spec["learning_rate"],
        "lora_rank": spec["lora_rank"],
        "lora_alpha": spec["lora_alpha"],
        "chunk_size": spec["prompts_per_step"],
        "batch_size": 1 << 30,  # every sequence of a round in one optimizer step
        "gradient_accumulation_steps": 1,
        "eval_every": 0,
        "checkpoint_every": 1 << 30,
        "epochs": 1,
        "seed": spec["seed"],
        "output_model": str(job_dir / "output"),
    }
    flags.update(spec.get("openrft_flags") or {})
    return flags


def main(spec: dict[str, Any]) -> dict[str, Any]:
    from openrft.config import build_config
    from openrft.train.job import prepare, run_training

    job_dir = Path(spec["work_dir"]) / "job"
    cfg, _ = build_config({}, openrft_flags(spec, job_dir))
    recorder = StepRecorder(spec["steps"])
    captured: dict[str, Any] = {}
    _instrument(recorder, captured)
    outcome = run_training(
        prepare(cfg), job_dir, quiet=True, should_stop=recorder.done, extra_sinks=[recorder]
    )
    model = captured["model"]
    path, lora = path_parameters(model)
    notes = []
    if len(recorder.records) < spec["steps"]:
        notes.append(
            f"only {len(recorder.records)} of {spec['steps']} steps trained ({outcome.status}: "
            f"{outcome.message or 'ran out of prompts with signal'})"
        )
    wasted = sum(r["rounds"] - 1 for r in recorder.records)
    if wasted:
        notes.append(
            f"{wasted} round(s) had no group with score variance; their sampling time is charged to the next step"
        )
    return {
        "system": "openrft",
        "steps": recorder.records,
        "path_params": path,
        "lora_params": lora,
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "first_prompt_ids": recorder.first_prompt_ids,
        "config": cfg.to_dict(),
        "status": outcome.status,
        "notes": notes,
    }


if __name__ == "__main__":
    run_side(main)
