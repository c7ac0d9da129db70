"""TRL's side of ``bench/vs_trl.py``: ``GRPOTrainer`` on the spec's configuration, timed step by step.

The settings mirror openrft's (see ``trl_config``): fp32 on CPU, DAPO loss with the same
clip range and no KL, the same LoRA, sampling and learning rate, a constant learning rate
with AdamW weight decay 0.01 and gradient clipping at 1.0 (openrft's defaults), and one
optimizer step per ``prompts_per_step x generations`` fresh completions.

Timing, observed without changing behaviour:

* a ``TrainerCallback``: a step runs from ``on_step_begin`` to ``on_step_end`` (generation,
  scoring, loss, backward, clipping, optimizer); the optimizer alone from
  ``on_pre_optimizer_step`` to ``on_optimizer_step``;
* a subclass times ``_generate`` (chat template, ``model.generate``, decoding: the rollout),
  ``_calculate_rewards`` (scoring), ``_generate_and_score_completions`` (rollout, scoring and
  the batch preparation around them) and ``training_step`` (that plus forward and backward).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _vs_trl_common import LORA_TARGETS, ordered_prompts, path_parameters, run_side


class Recorder:
    """Per-step timings and counts, filled by the trainer subclass and the callback."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.first_prompt_ids: list[list[int]] | None = None
        self.current: dict[str, Any] = {}

    def begin(self) -> None:
        self.current = {
            "start": time.perf_counter(),
            "rollout_s": 0.0,
            "score_s": 0.0,
            "generate_and_score_s": 0.0,
            "training_step_s": 0.0,
            "optimizer_s": 0.0,
            "completion_tokens": 0,
            "trained_tokens": 0,
            "computed_tokens": 0,
            "padded_tokens": 0,
            "trained_sequences": 0,
            "rewards": [],
        }

    def add(self, key: str, value: float) -> None:
        if self.current:
            self.current[key] += value

    def end(self) -> None:
        step = self.current
        step["wall_s"] = time.perf_counter() - step.pop("start")
        rewards = step.pop("rewards")
        step["reward_mean"] = sum(rewards) / len(rewards) if rewards else None
        self.records.append(step)
        self.current = {}


def make_trainer_class(recorder: Recorder, generations: int):
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            start = time.perf_counter()
            out = super()._generate(prompts)
            recorder.add("rollout_s", time.perf_counter() - start)
            prompt_ids, completion_ids = out[0], out[1]
            if recorder.first_prompt_ids is None:
                recorder.first_prompt_ids = [list(ids) for ids in prompt_ids[::generations]]
            completion = sum(len(ids) for ids in completion_ids)
            recorder.add("completion_tokens", completion)
            recorder.add("trained_tokens", completion + sum(len(ids) for ids in prompt_ids))
            recorder.add("computed_tokens", completion + sum(len(ids) for ids in prompt_ids))
            recorder.add("trained_sequences", len(completion_ids))
            longest = max(len(ids) for ids in prompt_ids) + max(len(ids) for ids in completion_ids)
            recorder.add("padded_tokens", len(completion_ids) * longest)
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            start = time.perf_counter()
            rewards_BF = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            recorder.add("score_s", time.perf_counter() - start)
            if recorder.current:
                recorder.current["rewards"].extend(rewards_BF.nansum(dim=1).tolist())
            return rewards_BF

        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            recorder.add("generate_and_score_s", time.perf_counter() - start)
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            start = time.perf_counter()
            out = super().training_step(model, inputs, num_items_in_batch)
            recorder.add("training_step_s", time.perf_counter() - start)
            return out

    return TimedGRPOTrainer


def make_callback(recorder: Recorder):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            recorder.begin()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._optimizer_start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            recorder.add("optimizer_s", time.perf_counter() - self._optimizer_start)

        def on_step_end(self, args, state, control, **kwargs):
            recorder.end()

    return StepTimer()


def trl_config(spec: dict[str, Any], output_dir: Path):
    """GRPOConfig: one optimizer step = ``prompts_per_step x generations`` completions, generated fresh."""
    from trl import GRPOConfig

    per_step = spec["prompts_per_step"] * spec["generations"]
    micro = spec.get("trl_micro_batch") or per_step
    if per_step % micro:
        raise ValueError(f"--trl-micro-batch {micro} must divide the {per_step} completions of a step")
    accumulation = per_step // micro
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=spec["gradient_checkpointing"],
        # one generation of `per_step` completions feeds exactly one optimizer step
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_generations=spec["generations"],
        num_iterations=1,
        max_completion_length=spec["max_completion_length"],
        temperature=spec["temperature"],
        top_k=spec["top_k"],
        top_p=spec["top_p"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        weight_decay=0.01,
        optim="adamw_torch",
        max_grad_norm=1.0,
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        beta=0.0,
        scale_rewards="group",
        max_steps=spec["steps"],
        seed=spec["seed"],
        data_seed=spec["seed"],
        shuffle_dataset=False,  # the dataset is already in openrft's epoch order
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
        model_init_kwargs={"dtype": "float32"},
    )
    settings.update(spec.get("trl_args") or {})
    return GRPOConfig(**settings)


def main(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig

    from openrft.evaluators.builtin import score_arithmetic
    from openrft.models import resolve_model_dir

    prompts = ordered_prompts(spec, spec["seed"])
    dataset = Dataset.from_dict(
        {"prompt": [list(p.messages) for p in prompts], "ground_truth": [p.ground_truth for p in prompts]}
    )

    def arithmetic(completions, ground_truth, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [score_arithmetic(t, gt).score for t, gt in zip(texts, ground_truth, strict=True)]

    lora = LoraConfig(
        r=spec["lora_rank"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    recorder = Recorder()
    trainer_class = make_trainer_class(recorder, spec["generations"])
    trainer = trainer_class(
        model=str(resolve_model_dir(spec["model"])),
        reward_funcs=arithmetic,
        args=trl_config(spec, Path(spec["work_dir"]) / "trl"),
        train_dataset=dataset,
        peft_config=lora,
        callbacks=[make_callback(recorder)],
    )
    dtypes = sorted({str(p.dtype) for p in trainer.model.parameters()})
    path, lora_params = path_parameters(trainer.model)
    trainer.train()
    for step in recorder.records:
        step["forward_backward_s"] = step["training_step_s"] - step["generate_and_score_s"]
    return {
        "system": "trl",
        "steps": recorder.records,
        "path_params": path,
        "lora_params": lora_params,
        "param_dtypes": dtypes,
        "first_prompt_ids": recorder.first_prompt_ids,
        "gradient_checkpointing": spec["gradient_checkpointing"],
        "micro_batch": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "notes": [],
    }


if __name__ == "__main__":
    run_side(main)
