"""The parts of a job, built from its settings: policy, optimizer, rollout engine, scorer, outputs.

Nothing here reads the job configuration; :mod:`openrft.train.job` passes each builder the
settings record it needs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from openrft.algo.losses import LossSpec
from openrft.errors import EvaluatorError, JobError
from openrft.models import end_token_ids, full_precision
from openrft.paths import OWNER_FILE, atomic_directory, readable_by_all
from openrft.records import Completion, Prompt, RolloutEngine, Score
from openrft.settings import AgentSettings, EngineSettings, ModelSettings, OptimizerSettings
from openrft.train import policy as P


def make_deterministic() -> None:
    """One intra-op thread and deterministic kernels: the same seed gives the same bits, resumed or not.

    With several threads, reductions are split differently from run to run and results agree to
    float rounding only (about 1e-6 relative on the adapter after a step). On CUDA, cuBLAS is deterministic
    only with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its first handle is made): without
    it PyTorch refuses the first matmul.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def base_model_name(model: ModelSettings) -> str:
    """The base model: the warm-start adapter's own, or ``--base-model``."""
    if model.warm_start_from:
        return P.adapter_base_model(model.warm_start_from)
    return model.base_model


def build_policy(model: ModelSettings, loss: LossSpec, seed: int) -> tuple[Any, Any]:
    """Load the base model and wrap it with a fresh (seeded) or warm-start LoRA adapter."""
    from openrft.models import load_model

    torch.manual_seed(seed)
    base, tokenizer = load_model(base_model_name(model), dtype=model.dtype, device=model.device)
    if model.chat_template:  # every engine renders with this tokenizer; the adapter saves it
        tokenizer.chat_template = model.chat_template
    if model.warm_start_from:
        # a KL penalty needs the reference policy: the warm-start adapter, frozen
        policy = P.load_adapter(base, model.warm_start_from, with_reference=loss.kl_coef > 0)
    else:
        policy = P.attach_lora(base, model.lora_rank, model.lora_alpha, seed=seed)
    P.keep_adapter_float32(policy)  # LoRA weights and their optimizer state stay fp32 over bf16 weights
    if model.gradient_checkpointing:
        P.enable_checkpointing(policy)
    return policy, tokenizer


def make_optimizer(settings: OptimizerSettings, model: Any):
    """AdamW over the adapter's weights, with a linear warm-up of ``warmup_steps`` updates."""
    params = P.trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = settings.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0
    )
    return optimizer, scheduler


def make_engine(
    settings: EngineSettings,
    model: Any,
    tokenizer: Any,
    base_model: str,
    max_model_len: int | None = None,
    stop_waiting: Callable[[], bool] | None = None,
) -> tuple[RolloutEngine, bool]:
    """The rollout engine, and whether it loads each policy's adapter from disk.

    local: samples the live adapter in this process, on its device. endpoint: an OpenAI-compatible
    server (vLLM or ``openrft serve`` with runtime LoRA loading). vllm: vLLM in this process on the
    trainer's GPU (colocated, sleeping while the trainer steps), in the trainer's weight type, its
    KV cache sized for ``max_model_len`` tokens (the longest prompt and response the job samples)
    rather than the model's whole context.
    With a Ray address the rollouts run on Ray actors (:mod:`openrft.distributed`).
    """
    concurrency = settings.max_concurrent_rollouts
    vllm_options = vllm_settings(model, max_model_len)
    if settings.ray is not None:
        from openrft.distributed import ray_engine

        engine: RolloutEngine = ray_engine(  # (a cancel stops its wait for busy CPUs)
            settings.ray, settings.kind, model, tokenizer, base_model, concurrency, vllm_options, stop_waiting
        )
    elif settings.kind == "endpoint":
        from openrft.rollout import EndpointEngine

        engine = EndpointEngine(
            settings.endpoint_url, tokenizer, base_model, max_concurrent_rollouts=concurrency or 32
        )
    elif settings.kind == "vllm":
        from openrft.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(  # on the trainer's GPU, asleep while the trainer steps
            base_model, tokenizer, max_concurrent_rollouts=concurrency, colocate=True,
            stop_token_ids=end_token_ids(tokenizer, model),
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization, **vllm_options,
        )  # fmt: skip
    else:
        from openrft.rollout import LocalEngine

        # on a CPU the engine samples an inference copy of float32 weights (adapter merged, weights prepacked:
        # faster decoding steps for one more copy of the weights); on a GPU the copy would cost device memory
        on_cpu = next(model.parameters()).device.type == "cpu"
        engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=concurrency, inference_copy=on_cpu,
                             compile_step=None if settings.compile else False)  # fmt: skip
    return engine, engine.needs_adapter_files


def vllm_settings(model: Any, max_model_len: int | None) -> dict[str, Any]:
    """What vLLM is told of the job: the trainer's weight type (vLLM's "auto" would sample a float32
    checkpoint in float16) and the longest sequence it samples."""
    options: dict[str, Any] = {"max_model_len": max_model_len} if max_model_len else {}
    if model is not None:
        options["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return options


def _blame_agent(error: EvaluatorError, completions: Sequence[Completion], invalid: int) -> EvaluatorError:
    """``error`` (too many, ``invalid``, invalid scores), or one naming the agent when at least half of
    them are agent runs that failed (an exception, a timeout, a conversation past the context): the
    evaluator never saw those."""
    failed = [c.error for c in completions if c.error]
    if not failed or 2 * len(failed) < invalid:  # most invalid scores are the evaluator's own
        return error
    example = failed[0] if len(failed[0]) <= 300 else failed[0][:300] + "..."
    return EvaluatorError(
        f"{len(failed)} of {len(completions)} agent runs failed, so more than half the candidates are "
        f"invalid; one example: {example}",
        hint="run the agent on one row by hand against `openrft serve`; a conversation that outgrows "
        "--max-context-length, or runs past --agent-timeout, fails too",
    )


def agent_of(settings: AgentSettings | None, evaluator: Any = None) -> Any:
    """The agent a job runs: the user's (``--agent``), the built-in tool loop's (``--tools``,
    ``--mcp-server``) or, with neither, the eval-protocol rollout processor of the evaluator file."""
    from openrft.rollout.agents import Agent, load_agent

    if settings is None or not (settings.agent or settings.tools or settings.mcp_server):
        from openrft.rollout.ep_rollouts import processor_agent

        return processor_agent(evaluator.rollout)
    if settings.agent:
        return load_agent(settings.agent)
    from openrft.rollout.mcp_client import mcp_tools
    from openrft.rollout.tools import builtin_agent, combine, python_tools

    toolsets = ([python_tools(settings.tools)] if settings.tools else []) + [
        mcp_tools(server) for server in settings.mcp_server
    ]
    fn = builtin_agent(combine(toolsets), settings.max_turns, settings.tool_timeout)
    return Agent(fn, True, "built-in tool loop")


def with_agent(
    engine: RolloutEngine,
    settings: AgentSettings | None,
    concurrency: int | None,
    max_context: int,
    base_model: str,
    evaluator: Any = None,
) -> RolloutEngine:
    """``engine`` wrapped so that each candidate is an agent run against it (exact tokens recorded)."""
    from openrft.rollout import DEFAULT_MAX_CONCURRENT
    from openrft.rollout.agents import DEFAULT_AGENT_TIMEOUT, AgentEngine

    short = Path(str(base_model).rstrip("/")).name
    return AgentEngine(
        engine, agent_of(settings, evaluator), max_concurrent=concurrency or DEFAULT_MAX_CONCURRENT,
        agent_timeout=settings.agent_timeout if settings is not None else DEFAULT_AGENT_TIMEOUT,
        max_context=max_context, served_names=[short],
    )  # fmt: skip


def samples_this_model(engine: RolloutEngine, model: Any) -> bool:
    """Whether ``engine``'s log-probs are the trainer's own (else they are recomputed and corrected, see
    :mod:`openrft.train.mismatch`): the local engine's are, when it samples this very model in float32.
    In bfloat16 its KV-cache decoding and the trainer's packed pass round differently (~0.04 nats a
    token), enough to clip GSPO's tight ratios before any update. Ray actors, vLLM and servers hold copies."""
    from openrft.rollout.local import LocalEngine

    engine = getattr(engine, "inner", engine)  # an agent engine samples through the one it wraps
    return isinstance(engine, LocalEngine) and engine.model is model and full_precision(model)


def policy_publisher(engine: RolloutEngine, model: Any, adapters_dir: Path | None) -> Callable[[int], None]:
    """``publish(version)``: hand policy ``version`` to the engine (the one channel for it).

    For an engine that loads adapters from disk, the live adapter is saved first under
    ``adapters_dir/<job>-vNNNNNN`` (atomically) and the previous version's folder removed.
    """
    previous: list[Path] = []

    def publish(version: int) -> None:
        if adapters_dir is None:
            engine.set_policy(version)
            return
        path = adapters_dir / f"{adapters_dir.parent.name}-v{version:06d}"
        with atomic_directory(path) as tmp:
            P.save_adapter(model, tmp)
        engine.set_policy(version, path)
        for old in previous:
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        previous[:] = [path]

    return publish


def make_scorer(
    settings: EngineSettings, evaluator: Any, *, check_invalid: bool = True
) -> Callable[[Sequence[Prompt], list[list[Completion]]], list[list[Score]]]:
    """``score(prompts, completions) -> scores``, failing the step when most scores are invalid
    (unless ``check_invalid`` is False: the preflight reports the rate instead).

    A user's evaluator runs in worker processes (:mod:`openrft.evaluators.isolation`): a hang
    or a crash scores one call invalid. openrft's built-ins run in this process. ``score.close()``
    stops the workers.
    """
    from openrft.evaluators import check_invalid_rate, score_groups
    from openrft.evaluators.isolation import EvaluatorPool
    from openrft.evaluators.runner import DEFAULT_CONCURRENCY

    pool: Any = None
    if settings.ray is not None:  # evaluator calls as Ray tasks (same contract as the pool's)
        from openrft.distributed import ray_scorer

        pool = ray_scorer(
            settings.ray.address, evaluator,
            max_concurrent_evaluations=settings.max_concurrent_evaluations, timeout=settings.evaluator_timeout,
        )  # fmt: skip
    elif not evaluator.run_inline:
        workers = settings.max_concurrent_evaluations or DEFAULT_CONCURRENCY
        pool = EvaluatorPool(evaluator, workers=workers, timeout=settings.evaluator_timeout)

    def score(
        prompts: Sequence[Prompt],
        completions: list[list[Completion]],
        abort: Callable[[], bool] | None = None,
    ) -> list[list[Score]]:
        groups = list(zip(prompts, completions, strict=True))
        if isinstance(pool, EvaluatorPool):  # a cancel stops its calls (RolloutAborted)
            scores = pool.score_groups(groups, abort=abort)
        elif pool is not None:
            scores = pool.score_groups(groups)
        else:
            scores = score_groups(
                evaluator, groups, max_concurrency=settings.max_concurrent_evaluations,
                timeout=settings.evaluator_timeout,
            )  # fmt: skip
        scores = [
            [
                Score(0.0, is_valid=False, reason=c.error) if c.error else s
                for c, s in zip(cs, ss, strict=True)
            ]
            for cs, ss in zip(completions, scores, strict=True)
        ]
        if check_invalid:
            try:
                check_invalid_rate([s for group in scores for s in group])
            except EvaluatorError as exc:  # the job fails; the round's scored rollouts go with the error
                invalid = sum(not s.is_valid for group in scores for s in group)
                exc = _blame_agent(exc, [c for cs in completions for c in cs], invalid)
                exc.scored = list(zip(prompts, completions, scores, strict=True))  # type: ignore[attr-defined]
                raise exc from None
        return scores

    score.close = getattr(pool, "close", lambda: None)  # type: ignore[attr-defined]
    return score


def write_outputs(
    model: Any, job_dir: Path, target: Path, tokenizer: Any = None, unfinished: str | None = None
) -> Path:
    """The final adapter, its tokenizer, config, metrics, reward curve and model card (README.md),
    replacing ``target`` atomically.

    An adapter holding a non-finite value is never written (the loop never applies such an update,
    so this is a last guard).
    """
    from openrft.tracking.plots import plot_reward_curve
    from openrft.train.model_card import write_model_card

    bad = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise JobError(
            f"the trained adapter has non-finite weights ({bad[0]} and {len(bad) - 1} more); not written"
        )

    with atomic_directory(target) as tmp:
        P.save_adapter(model, tmp)
        shutil.copy(job_dir / "job.json", tmp / "job.json")
        if (job_dir / "metrics.jsonl").exists():
            shutil.copy(job_dir / "metrics.jsonl", tmp / "metrics.jsonl")
            plot_reward_curve(job_dir / "metrics.jsonl", tmp / "reward_curve.png", title=job_dir.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_model_card(tmp, target, unfinished)  # replaces the empty template PEFT writes
        # whose output this is, and what it wrote: a later job may replace these, never a file added since
        names = sorted(p.name for p in tmp.iterdir())
        (tmp / OWNER_FILE).write_text("".join(f"{line}\n" for line in [job_dir.resolve(), *names]))
        readable_by_all(tmp)
    return target
