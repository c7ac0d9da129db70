"""Set up an RFT job from its validated config, run the loop, and write the outputs.

Job folder (``$OPENRFT_HOME/jobs/<id>/`` unless given)::

    job.json          the resolved configuration
    metrics.jsonl     one line per training step (and the evaluations at start and end)
    rollouts.jsonl    sampled prompts, completions, scores and reasons
    checkpoints/      resumable checkpoints (the last two), LATEST points at the newest
    output/           the final adapter (PEFT format), job.json, metrics.jsonl, reward_curve.png
                      (or --output-model DIR)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from openrft.config import JobConfig
from openrft.errors import ConfigError
from openrft.records import Completion, Prompt, Score
from openrft.tracking.progress import ProgressBar
from openrft.tracking.sinks import JsonlSink, MetricsSink, MultiSink
from openrft.train import policy as P
from openrft.train.checkpoint import (
    LoopState,
    atomic_directory,
    atomic_write_text,
    latest_checkpoint,
    load_checkpoint,
)
from openrft.train.loop import Outcome, TrainContext, rounds_per_epoch, train


@dataclass
class JobPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "job.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def output(self, cfg: JobConfig) -> Path:
        return Path(cfg.training.output_model) if cfg.training.output_model else self.root / "output"


def base_model_name(cfg: JobConfig) -> str:
    if cfg.training.warm_start_from:
        return P.adapter_base_model(cfg.training.warm_start_from)
    return cfg.training.base_model


def build_policy(cfg: JobConfig):
    """Load the base model and wrap it with a fresh or warm-start LoRA adapter."""
    from openrft.algo.losses import kl_coefficient
    from openrft.models import load_model

    torch.manual_seed(cfg.training.seed)
    model, tokenizer = load_model(base_model_name(cfg))
    if cfg.training.warm_start_from:
        needs_ref = kl_coefficient(cfg.loss.rl_loss_method, cfg.loss.rl_kl_beta) > 0
        model = P.load_adapter(model, cfg.training.warm_start_from, with_reference=needs_ref)
    else:
        model = P.attach_lora(model, cfg.training.lora_rank, cfg.training.lora_alpha, seed=cfg.training.seed)
    return model, tokenizer


def load_data(cfg: JobConfig, tokenizer, context_length: int, evaluator) -> tuple[list[Prompt], list[Prompt]]:
    """Training prompts and evaluation prompts (a separate file, a seeded carve-out, or none)."""
    from openrft.data import load_prompts, split_carveout
    from openrft.rollout.prompts import encode_messages

    def count_tokens(messages) -> int:
        return len(encode_messages(tokenizer, messages))

    max_prompt = context_length - cfg.rollout.max_output_tokens
    source = cfg.data.dataset or evaluator.input_dataset or "arithmetic"
    options = dict(
        count_tokens=count_tokens, max_prompt_tokens=max_prompt, skip_bad_rows=cfg.data.skip_bad_rows
    )
    adapter = getattr(evaluator, "dataset_adapter", None)
    loaded = load_prompts(source, seed=cfg.training.seed, adapter=adapter, **options)
    if loaded.skipped:
        print(f"warning: --dataset {source}: skipped {loaded.skipped} malformed rows", file=sys.stderr)
    train_prompts = list(loaded)
    eval_prompts: list[Prompt] = []
    if cfg.data.evaluation_dataset:
        eval_prompts = list(load_prompts(cfg.data.evaluation_dataset, seed=cfg.training.seed + 1, **options))
    elif cfg.data.eval_auto_carveout:
        train_prompts, eval_prompts = split_carveout(
            train_prompts, cfg.data.eval_auto_carveout, cfg.training.seed
        )
    if not train_prompts:
        raise ConfigError(f"--dataset {source}: no training prompts left")
    return train_prompts, eval_prompts


def make_scorer(
    cfg: JobConfig, evaluator
) -> Callable[[Sequence[Prompt], list[list[Completion]]], list[list[Score]]]:
    from openrft.evaluators import check_invalid_rate, score_groups

    if cfg.rollout.ray_address:  # evaluator calls as Ray tasks (same contract)
        from openrft.distributed import ray_scorer

        return ray_scorer(cfg, evaluator)
    concurrency = cfg.rollout.max_concurrent_evaluations or evaluator.max_concurrent_evaluations

    def score(prompts: Sequence[Prompt], completions: list[list[Completion]]) -> list[list[Score]]:
        scores = score_groups(
            evaluator,
            list(zip(prompts, completions, strict=True)),
            max_concurrency=concurrency,
            timeout=cfg.rollout.evaluator_timeout,
        )
        check_invalid_rate([s for group in scores for s in group])
        return scores

    return score


def make_engine(cfg: JobConfig, model, tokenizer, evaluator, job_dir: Path):
    """The rollout engine and the hook that hands it each new policy version.

    local: samples from the live adapter in this process, nothing to sync. endpoint: an
    OpenAI-compatible server (vLLM with runtime LoRA loading); after each optimizer step the
    adapter is saved under ``job_dir/adapters/`` and loaded on the server under a new name.
    With ``--ray-address`` the rollouts run on Ray actors (:mod:`openrft.distributed`).
    """
    concurrency = cfg.rollout.max_concurrent_rollouts or evaluator.max_concurrent_rollouts
    if cfg.rollout.ray_address:
        from openrft.distributed import ray_engine

        return ray_engine(cfg, model, tokenizer, concurrency)
    if cfg.rollout.rollout_engine == "endpoint":
        from openrft.rollout import EndpointEngine

        engine = EndpointEngine(
            cfg.rollout.endpoint_url,
            tokenizer,
            base_model_name(cfg),
            max_concurrent_rollouts=concurrency or 32,
        )
        return engine, _endpoint_sync(engine, model, job_dir)
    if cfg.rollout.rollout_engine == "vllm":
        from openrft.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(base_model_name(cfg), tokenizer, max_concurrent_rollouts=concurrency)
        return engine, _endpoint_sync(engine, model, job_dir)
    from openrft.rollout import LocalEngine

    return LocalEngine(model, tokenizer, max_concurrent_rollouts=concurrency), lambda version: None


def _endpoint_sync(engine, model, job_dir: Path) -> Callable[[int], None]:
    """Save the adapter of each policy version and make the engine sample with it."""
    previous: list[str] = []

    def sync(version: int) -> None:
        name = f"{job_dir.name}-v{version:06d}"
        path = job_dir / "adapters" / name
        with atomic_directory(path) as tmp:
            P.save_adapter(model, tmp)
        engine.load_adapter(str(path), name)
        for old in previous:
            with contextlib.suppress(Exception):
                engine.unload_adapter(old)
            shutil.rmtree(job_dir / "adapters" / old, ignore_errors=True)
        previous[:] = [name]

    return sync


def make_optimizer(cfg: JobConfig, model):
    t = cfg.training
    params = P.trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.optimizer_weight_decay)
    warmup = t.learning_rate_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0
    )
    return optimizer, scheduler


def run_training(
    cfg: JobConfig,
    job_dir: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    extra_sinks: Sequence[MetricsSink] = (),
) -> Outcome:
    """Prepare everything, continue from the last checkpoint if asked, train, write outputs."""
    from openrft.evaluators import load_evaluator

    paths = JobPaths(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.config, json.dumps(cfg.to_dict(), indent=2))
    evaluator = load_evaluator(cfg.data.evaluator, dataset=cfg.data.dataset)
    model, tokenizer = build_policy(cfg)
    context = cfg.training.max_context_length or getattr(model.config, "max_position_embeddings", 4096)
    train_prompts, eval_prompts = load_data(cfg, tokenizer, context, evaluator)
    optimizer, scheduler = make_optimizer(cfg, model)
    jsonl = JsonlSink(job_dir)
    state = LoopState()
    checkpoint = latest_checkpoint(paths.checkpoints) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        jsonl.truncate_after(state.step)
    elif paths.metrics.exists():
        jsonl.truncate_after(-1)
    engine, sync_policy = make_engine(cfg, model, tokenizer, evaluator, job_dir)
    engine.policy_version = state.optimizer_step
    sync_policy(state.optimizer_step)
    total_rounds = cfg.training.epochs * rounds_per_epoch(len(train_prompts), cfg.training.chunk_size)
    progress = ProgressBar(total_rounds, enabled=not quiet)
    ctx = TrainContext(
        cfg=cfg,
        model=model,
        pad_token_id=tokenizer.pad_token_id,
        engine=engine,
        score=make_scorer(cfg, evaluator),
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        optimizer=optimizer,
        scheduler=scheduler,
        sink=MultiSink(jsonl, *extra_sinks),
        checkpoint_dir=paths.checkpoints,
        progress=progress,
        on_policy_update=sync_policy,
        should_stop=should_stop,
        eval_candidates=cfg.training.eval_candidates,
    )
    try:
        outcome = train(ctx, state)
    finally:
        progress.close()
        ctx.sink.close()
        getattr(engine, "close", lambda: None)()  # e.g. Ray actors
    write_outputs(cfg, model, paths)
    return outcome


def write_outputs(cfg: JobConfig, model, paths: JobPaths) -> Path:
    """The final adapter, config, metrics and reward curve, replacing the output folder atomically."""
    from openrft.tracking.plots import plot_reward_curve

    target = paths.output(cfg)
    with atomic_directory(target) as tmp:
        P.save_adapter(model, tmp)
        shutil.copy(paths.config, tmp / "job.json")
        if paths.metrics.exists():
            shutil.copy(paths.metrics, tmp / "metrics.jsonl")
            plot_reward_curve(paths.metrics, tmp / "reward_curve.png", title=paths.root.name)
    return target
