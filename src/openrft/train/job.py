"""A job from its validated configuration: check its inputs, build its parts, train, write the outputs.

This is the one module below :mod:`openrft.jobs` that reads a :class:`~openrft.config.JobConfig`:
:func:`prepare` checks everything knowable without loading a model and resolves the typed
settings (:mod:`openrft.settings`) the rest of the job receives; :func:`run_training` loads
the model, builds the engine and the scorer from those settings and runs the loop.

Job folder (``$OPENRFT_HOME/jobs/<id>/`` unless given)::

    job.json          the resolved configuration
    metrics.jsonl     one line per training step (and the evaluations at start and end)
    rollouts.jsonl    sampled prompts, completions, scores and reasons
    checkpoints/      resumable checkpoints (the last two), LATEST points at the newest
    adapters/         the adapter an inference server samples with (endpoint and vllm engines)
    output/           the final adapter (PEFT format), job.json, metrics.jsonl, reward_curve.png
                      (or --output-model DIR)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.config import JobConfig
from openrft.data import PromptSet, check_prompt_lengths, load_prompts, split_carveout
from openrft.errors import ConfigError, DataError, EvaluatorError, OpenRFTError, RolloutAborted, input_error
from openrft.models import warm_start_values
from openrft.paths import atomic_write_text, openrft_home, output_dir
from openrft.records import Prompt
from openrft.settings import JobSettings
from openrft.tracking.progress import ProgressBar
from openrft.tracking.sinks import JsonlSink, MetricsSink, MultiSink
from openrft.train import setup
from openrft.train.checkpoint import fresh_state, restore_state
from openrft.train.loop import Outcome, TrainContext, train
from openrft.train.output_folder import check_output_folder


@dataclass(frozen=True)
class PreparedJob:
    """A job whose inputs were checked: its settings, evaluator and prompts, loaded once."""

    cfg: JobConfig
    settings: JobSettings  # concurrency already resolved with the evaluator's defaults
    evaluator: Any
    dataset: PromptSet
    evaluation_dataset: PromptSet | None
    carveout: float | None
    memory: Any = None  # the MemoryEstimate printed by --dry-run

    def split(self, dataset: PromptSet) -> tuple[list[Prompt], list[Prompt]]:
        """Training and evaluation prompts (a separate file, a seeded carve-out, or none)."""
        if self.evaluation_dataset is not None:
            return list(dataset), list(self.evaluation_dataset)
        if self.carveout:
            return split_carveout(dataset, self.carveout, self.settings.schedule.seed)
        return list(dataset), []


def prepare(cfg: JobConfig, job_dir: Path | None = None) -> PreparedJob:
    """Check every input a job needs before any model loads, and resolve its settings (``job_dir``: the
    folder of the job being resumed, None for a new one).

    The evaluator (file, function, signature, imports), the training and evaluation datasets
    (file, JSON, rows), the carve-out, the base model or warm-start adapter, and the optional
    packages the job asks for (W&B, Ray). Any problem is a :class:`ConfigError` naming its flag.
    """
    from openrft.models import check_model_available, resolve_device

    settings = cfg.settings()
    with input_error("--device"):
        device, dtype = resolve_device(settings.model.device, settings.model.dtype)
    settings = dataclasses.replace(
        settings, model=dataclasses.replace(settings.model, device=device, dtype=dtype)
    )
    d = cfg.data
    evaluator, dataset, evaluation = check_inputs(cfg, settings)
    source = d.dataset or evaluator.input_dataset or "arithmetic"
    _check_round_fits(settings, len(dataset))
    prepared = PreparedJob(cfg, _with_evaluator_defaults(settings, evaluator), evaluator, dataset, evaluation,
                           d.eval_auto_carveout)  # fmt: skip
    with input_error("--eval-auto-carveout"):
        prepared.split(dataset)
    m = settings.model
    if m.warm_start_from:
        check_adapter_folder(Path(m.warm_start_from))
        check_adapter_shape(Path(m.warm_start_from), cfg)
    else:
        with input_error("--base-model"):
            check_model_available(m.base_model)
    _require_extras(cfg)
    if settings.agent is not None:
        with input_error("--agent" if settings.agent.agent else "--tools"):
            setup.agent_of(settings.agent)  # the file, the function, the tools' schemas
        if settings.agent.mcp_server and not settings.agent.agent:
            from openrft.rollout.mcp_client import check_server
            from openrft.rollout.tools import python_tools

            with input_error(
                "--mcp-server"
            ):  # it starts and lists its tools, and no name clashes with --tools
                check_server(
                    settings.agent.mcp_server,
                    python_tools(settings.agent.tools) if settings.agent.tools else None,
                )
    elif prepared.evaluator.rollout is not None:
        _require_eval_protocol_rollouts(prepared.evaluator)
    if cfg.training.output_model:
        check_output_folder(Path(cfg.training.output_model), job_inputs(cfg, source), job_dir)
    prepared = check_prompts_fit(prepared)
    return dataclasses.replace(prepared, memory=check_memory(prepared.settings))


def check_inputs(cfg: JobConfig, settings: Any) -> tuple[Any, PromptSet, PromptSet | None]:
    """The evaluator and the datasets a job reads, loaded and checked against each other: the evaluator
    (file, function, signature, imports), each dataset (file, JSON, rows, the reference field) and that
    every row holds what the evaluator reads. Any problem is a :class:`ConfigError` naming its flag."""
    from openrft.evaluators import load_evaluator

    seed, d = settings.schedule.seed, cfg.data
    if d.dataset and not d.evaluator:  # the dataset would name the evaluator: first say that it is missing
        from openrft.data import is_builtin

        with input_error("--dataset"):
            if not is_builtin(d.dataset) and not Path(d.dataset).expanduser().exists():
                raise DataError(f"{d.dataset}: no such file, nor a built-in task (arithmetic, calculator)")
    with input_error("--evaluator"):
        evaluator = load_evaluator(
            d.evaluator, dataset=d.dataset, grader_endpoint=d.grader_endpoint, grader_model=d.grader_model
        )
    source = d.dataset or evaluator.input_dataset or "arithmetic"
    open_ended = settings.agent is not None or evaluator.rollout is not None  # an agent takes the next turn
    with input_error("--dataset"):
        dataset = load_prompts(
            source, seed=seed, adapter=evaluator.dataset_adapter, skip_bad_rows=d.skip_bad_rows,
            open_ended=open_ended,
        )  # fmt: skip
    with input_error("--reference-field"):
        dataset = _referenced(dataset, d.reference_field, d.skip_bad_rows)
    check_evaluator_fits(evaluator, dataset)
    evaluation = None
    if d.evaluation_dataset:
        with input_error("--evaluation-dataset"):
            evaluation = load_prompts(
                d.evaluation_dataset, seed=seed + 1, skip_bad_rows=d.skip_bad_rows, open_ended=open_ended
            )
        with input_error("--reference-field"):
            evaluation = _referenced(evaluation, d.reference_field, d.skip_bad_rows)
        check_evaluator_fits(evaluator, evaluation)  # its rows are scored too
    return evaluator, dataset, evaluation


def model_context(config: Any) -> int | None:
    """The longest context a model's config supports: its ``max_position_embeddings``, times the factor
    of a rope scaling (YaRN, linear, dynamic) that stretches it, as vLLM derives it; None if unknown."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    scaling = getattr(config, "rope_scaling", None)
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    return int(positions * factor) if isinstance(factor, int | float) and factor > 1 else positions


def check_prompts_fit(prepared: PreparedJob) -> PreparedJob:
    """Every prompt, rendered by the model's chat template, must leave ``--max-output-tokens`` of the
    context: checked here, before a job is recorded (and by ``--dry-run``), as the job checks it
    again with the loaded model. Too long prompts are bad rows (skipped with --skip-bad-rows)."""
    from openrft.models import load_config, load_tokenizer
    from openrft.rollout.prompts import encode_prompt

    settings = prepared.settings
    name = setup.base_model_name(settings.model)
    flag = "--warm-start-from" if settings.model.warm_start_from else "--base-model"  # (its recorded base)
    with input_error(flag):
        config = load_config(name)
    context = settings.model.max_context_length or getattr(config, "max_position_embeddings", 4096)
    supported = model_context(config)
    if settings.model.max_context_length and supported and settings.model.max_context_length > supported:
        raise ConfigError(f"--max-context-length: {settings.model.max_context_length} is more than {name} "
                          f"supports ({supported} tokens, from its config)", field="max_context_length",
                          hint=f"leave it unset (the model's {supported}) or lower it")  # fmt: skip
    if settings.sampling.max_tokens >= context:
        raise ConfigError(
            f"--max-output-tokens: {settings.sampling.max_tokens} leaves no room for a prompt in the "
            f"{context}-token context of {name}",
            field="max_output_tokens",
            hint=f"lower --max-output-tokens, or train a model with a longer context than {context}",
        )
    with input_error(flag):
        tokenizer = load_tokenizer(name)
    if settings.model.chat_template:
        tokenizer.chat_template = settings.model.chat_template
        try:
            tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          tokenize=False)  # fmt: skip
        except Exception as exc:  # jinja2's TemplateError and whatever the template raises
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--chat-template: the template does not render: {first}",
                              field="chat_template") from None  # fmt: skip

    def count(prompt: Prompt) -> int:
        return len(encode_prompt(tokenizer, prompt))

    skip = prepared.cfg.data.skip_bad_rows
    with input_error("--dataset"):
        dataset = check_prompt_lengths(prepared.dataset, count, context - settings.sampling.max_tokens,
                                       skip_bad_rows=skip)  # fmt: skip
    evaluation = prepared.evaluation_dataset
    if evaluation is not None:
        with input_error("--evaluation-dataset"):
            evaluation = check_prompt_lengths(evaluation, count, context - settings.sampling.max_tokens,
                                              skip_bad_rows=skip)  # fmt: skip
    return dataclasses.replace(prepared, dataset=dataset, evaluation_dataset=evaluation)


def check_memory(settings: JobSettings):
    """The job's memory estimate; on CUDA, a job that cannot fit on the device is refused with the numbers."""
    from openrft.models import load_config
    from openrft.train.memory import device_memory, estimate_memory

    with input_error("--base-model"):
        estimate = estimate_memory(load_config(setup.base_model_name(settings.model)), settings)
    available = device_memory(settings.model.device)
    if available is not None and estimate.total > available:
        raise ConfigError(
            f"--device {settings.model.device}: the job needs about {estimate.total / 2**30:.1f} GiB, more than "
            f"the {available / 2**30:.1f} GiB the device leaves a job's tensors ("
            + "; ".join(line.strip() for line in estimate.lines()[1:-2])
            + ")",
            field="device",
            hint="lower --micro-batch-tokens, --max-concurrent-rollouts or --max-context-length, turn on "
            "--gradient-checkpointing"
            + (", sample with --no-compile" if estimate.compiled_buffers else "")
            + ", or use a smaller model",
        )
    return estimate


def job_inputs(cfg: JobConfig, dataset: str) -> list[Path]:
    """The files and folders a job reads: its outputs must never replace one of them."""
    t, d = cfg.training, cfg.data
    named = [
        dataset,
        d.evaluation_dataset,
        t.warm_start_from,
        t.base_model,
        (d.evaluator or "").split("::")[0],
    ]
    return [Path(p).expanduser().resolve() for p in named if p and Path(p).expanduser().exists()]


def check_adapter_folder(folder: Path) -> None:
    """A warm-start adapter must be a readable PEFT folder: its config parses, its weights open."""
    flag = f"--warm-start-from {folder}"
    hint = "give the folder of a PEFT LoRA adapter, e.g. an earlier job's output folder"
    config = folder / "adapter_config.json"
    if not folder.is_dir():
        raise ConfigError(f"{flag}: no such folder", field="warm_start_from",
                          hint="give an adapter folder: a job's is its output folder, "
                          f"{openrft_home() / 'jobs' / 'JOB_ID' / 'output'} (or its --output-model)")  # fmt: skip
    if not config.is_file():
        raise ConfigError(f"{flag}: no adapter_config.json there", field="warm_start_from", hint=hint)
    weights = folder / "adapter_model.safetensors"
    for path, read in (
        (config, lambda: json.loads(config.read_text())),
        (weights, lambda: _open_weights(weights)),
    ):
        try:
            read()
        except Exception as exc:  # JSON, I/O and safetensors' own errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{flag}: {path.name} cannot be read: {first}", field="warm_start_from",
                              hint=hint) from None  # fmt: skip


def check_adapter_shape(folder: Path, cfg: JobConfig) -> None:
    """A warm-started job keeps its adapter's rank and alpha: a --lora-rank or --lora-alpha given that
    differs from them is refused (one that agrees, as a client filling in every field sends, is not)."""
    from openrft.models import adapter_shape

    given = cfg.training.model_fields_set
    for name, kept in adapter_shape(folder).items():
        value = getattr(cfg.training, name)
        if name in given and value != kept:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: {value} differs from the --warm-start-from adapter's ({kept}), which it "
                              "keeps", field=name, hint=f"leave {flag} out (or give {kept})")  # fmt: skip


def _open_weights(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        handle.keys()


def _referenced(prompts: PromptSet, field_name: str | None, skip_bad_rows: bool) -> PromptSet:
    if not field_name:
        return prompts
    from openrft.data.reference import with_reference_field

    return with_reference_field(prompts, field_name, skip_bad_rows=skip_bad_rows)


def check_evaluator_fits(evaluator: Any, dataset: PromptSet) -> None:
    """Every row holds what the evaluator reads (its parameters, a built-in's ground_truth, a grader's
    template fields): a ConfigError naming the first row that does not, and how many do not."""
    from openrft.evaluators.runner import missing_fields

    if evaluator.check_row is not None:  # a grader spec's templates, against every row
        _check_grader_rows(evaluator, dataset)
    lacking = [
        (i, missing) for i, prompt in enumerate(dataset) if (missing := missing_fields(evaluator, prompt))
    ]
    if lacking:
        first, missing = lacking[0]
        where = (
            f"{dataset.unit} {dataset.numbers[first]}"
            if dataset.numbers
            else f"row {dataset[first].prompt_id}"
        )
        share = "every row" if len(lacking) == len(dataset) else f"{len(lacking)} of {len(dataset)} rows"
        verb = "lacks" if len(lacking) == len(dataset) else "lack"
        raise ConfigError(
            f"--evaluator: {evaluator.name}() needs {', '.join(missing)}, which {share} of {dataset.source} "
            f"{verb} (the first: {where})",
            field="evaluator",
            hint=_fields_hint(evaluator),
        )


def _fields_hint(evaluator: Any) -> str:
    if evaluator.kind == "verl":
        return "verl's compute_score reads each row's reward_model.ground_truth (or its ground_truth field)"
    if evaluator.kind == "trl":
        return ("add the columns to those rows or drop them; a TRL reward function receives each row "
                "column by name (one value per completion), beside prompts, completions and completion_ids")  # fmt: skip
    from openrft.evaluators.builtin import BUILTINS

    if evaluator.spec in BUILTINS:  # openrft's own: its signature is not the user's to change
        return "add the fields to those rows or drop them"
    hint = "add the fields to those rows or drop them, or take **row_fields"
    if evaluator.kind == "plain":  # a default would hide a signature that expects the response elsewhere
        first = next(iter(inspect.signature(evaluator.fn).parameters))
        hint += f"; the first parameter ({first}) receives the response, the others row fields by name"
    return hint


def _check_grader_rows(evaluator: Any, dataset: PromptSet) -> None:
    """A grader's templates against every row: the first row that lacks a field, and how many do."""
    failed = []
    for prompt in dataset:
        try:
            evaluator.check_row(prompt.row, f"row {prompt.prompt_id} of {dataset.source}")
        except OpenRFTError as exc:
            failed.append(exc)
    if failed:
        count = f" ({len(failed)} of {len(dataset)} rows fail this check)" if len(dataset) > 1 else ""
        with input_error("--evaluator"):
            raise type(failed[0])(failed[0].message + count, hint=failed[0].hint)


BYTES_PER_SAMPLED_TOKEN = 64  # a token id, its log-prob and the Python objects around them


def _check_round_fits(settings: JobSettings, num_prompts: int) -> None:
    """Refuse a round whose samples alone cannot fit in this machine's memory, with the numbers."""
    import psutil

    prompts = settings.schedule.prompts_per_round(num_prompts)
    n, tokens = settings.sampling.n, settings.sampling.max_tokens
    needed = prompts * n * tokens * BYTES_PER_SAMPLED_TOKEN
    total = psutil.virtual_memory().total
    if needed > total:
        raise ConfigError(
            f"--response-candidates-count {n}: a round of {prompts} prompts x {n} responses of up to {tokens} "
            f"tokens needs about {needed / 2**30:,.0f} GiB to hold its samples, more than this machine's "
            f"{total / 2**30:,.0f} GiB",
            field="response_candidates_count",
            hint="lower --response-candidates-count, --chunk-size or --max-output-tokens",
        )


def _with_evaluator_defaults(settings: JobSettings, evaluator: Any) -> JobSettings:
    """Concurrency the flags leave unset comes from the evaluator's header."""
    e = settings.engine
    engine = dataclasses.replace(
        e,
        max_concurrent_rollouts=e.max_concurrent_rollouts or evaluator.max_concurrent_rollouts,
        max_concurrent_evaluations=e.max_concurrent_evaluations or evaluator.max_concurrent_evaluations,
    )
    return dataclasses.replace(settings, engine=engine)


def _require_extras(cfg: JobConfig) -> None:
    if cfg.wandb.wandb:
        from openrft.tracking.wandb_sink import check_mode, import_wandb

        with input_error("--wandb"):
            import_wandb()
            check_mode()
    if cfg.rollout.ray_address:
        from openrft.distributed import check_address, require_ray

        with input_error("--ray-address"):
            require_ray()
            check_address(cfg.rollout.ray_address)
    elif cfg.rollout.rollout_engine == "vllm":  # with Ray, vLLM runs on the actors' nodes instead
        from openrft.rollout.vllm_engine import import_vllm

        with input_error("--rollout-engine"):
            import_vllm()
        if (
            "expandable_segments:true"
            in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "").replace(" ", "").lower()
        ):
            raise ConfigError(
                "--rollout-engine vllm: vLLM's sleep mode, which shares the trainer's GPU, does not start "
                "under PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
                field="rollout_engine",
                hint="unset PYTORCH_CUDA_ALLOC_CONF for this job, or sample on another GPU (--ray-address) "
                "or server (--rollout-engine endpoint)",
            )


def _require_eval_protocol_rollouts(evaluator: Any) -> None:
    """The evaluator file's rollout processor can run here (litellm routes its calls to the policy)."""
    spec = evaluator.rollout
    with input_error("--evaluator"):
        if not callable(spec.processor):
            raise EvaluatorError(f"{evaluator.source}: rollout_processor {spec.name} is not callable")
        try:
            import litellm  # noqa: F401  (eval-protocol's processors call the model through it)
        except ImportError:
            raise EvaluatorError(
                f"{evaluator.source}: {spec.name} needs litellm, which is not installed"
            ) from None


def run_training(
    prepared: PreparedJob,
    job_dir: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    lines: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    extra_sinks: Sequence[MetricsSink] = (),
) -> Outcome:
    """Load the model, continue from the last checkpoint if asked, train, write the outputs.

    ``quiet``: no progress bar; ``lines``: a plain line on stderr as each round starts instead.
    """
    cfg, settings = prepared.cfg, prepared.settings
    if settings.schedule.deterministic:
        setup.make_deterministic()
    if quiet:  # no bar at all: transformers draws its own while it loads the weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    job_dir.mkdir(parents=True, exist_ok=True)
    shown = cfg.to_dict()
    shown["training"].update(warm_start_values(cfg.training.warm_start_from))  # what it trains
    atomic_write_text(job_dir / "job.json", json.dumps(shown, indent=2))
    model, tokenizer = setup.build_policy(settings.model, settings.loss, settings.schedule.seed)
    train_prompts, eval_prompts = _prompts_that_fit(prepared, model, tokenizer, say_notes=True)
    optimizer, scheduler = setup.make_optimizer(settings.optimizer, model)
    jsonl = JsonlSink(job_dir)
    checkpoints = job_dir / "checkpoints"
    state = restore_state(checkpoints, model, optimizer, scheduler, jsonl) if resume else fresh_state(jsonl)
    if resume:  # a W&B run gets the lines it missed (a killed process's last ones), then skips what it has
        for sink in extra_sinks:
            getattr(sink, "catch_up", lambda _: None)(jsonl.metrics_path)
    try:
        engine, needs_files = build_engine(prepared, model, tokenizer, stop_waiting=should_stop)
    except RolloutAborted:  # cancelled while Ray's actors waited for free CPUs
        jsonl.close()
        return Outcome(
            "cancelled", state, f"cancelled at step {state.step}, before its rollout actors started"
        )
    publish = setup.policy_publisher(engine, model, job_dir / "adapters" if needs_files else None)
    publish(state.optimizer_step)
    scorer = setup.make_scorer(settings.engine, prepared.evaluator)
    rounds = settings.schedule.rounds_per_epoch(len(train_prompts))
    progress = ProgressBar(settings.schedule.epochs * rounds, enabled=not quiet, lines=lines)
    ctx = TrainContext(
        settings=settings,
        model=model,
        pad_token_id=tokenizer.pad_token_id,
        engine=engine,
        score=scorer,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        optimizer=optimizer,
        scheduler=scheduler,
        sink=MultiSink(jsonl, *extra_sinks),
        checkpoint_dir=job_dir / "checkpoints",
        progress=progress,
        publish_policy=publish,
        should_stop=should_stop,
        sampler_is_trainer=setup.samples_this_model(engine, model),
    )
    try:
        outcome = train(ctx, state)
    finally:
        progress.close()
        jsonl.close()  # the caller's sinks are the caller's to close, once it knows how the job ended
        getattr(engine, "close", lambda: None)()  # e.g. Ray actors
        getattr(scorer, "close", lambda: None)()  # the evaluator's worker processes
    unfinished = (f"it was cancelled at step {outcome.state.step}, before its last epoch ended; "
                  f"`openrft rftj resume {job_dir.name} --force` continues it"
                  if outcome.status == "cancelled" else None)  # fmt: skip
    setup.write_outputs(model, job_dir, output_dir(job_dir, cfg.training.output_model), tokenizer, unfinished)
    return outcome


def longest_prompt(prepared: PreparedJob, tokenizer: Any) -> int:
    """The most tokens a prompt of the job (training or evaluation) renders to."""
    from openrft.rollout.prompts import encode_prompt

    prompts = [*prepared.dataset, *(prepared.evaluation_dataset or ())]
    return max((len(encode_prompt(tokenizer, p)) for p in prompts), default=1)


def build_engine(
    prepared: PreparedJob, model: Any, tokenizer: Any, stop_waiting: Callable[[], bool] | None = None
) -> tuple[Any, bool]:
    """The job's rollout engine (wrapped for agent runs when it has an agent), and whether it loads
    adapters from disk."""
    settings = prepared.settings
    base_model = setup.base_model_name(settings.model)
    context = settings.model.max_context_length or getattr(model.config, "max_position_embeddings", 4096)
    agentic = settings.agent is not None or prepared.evaluator.rollout is not None
    longest = None
    if settings.engine.kind == "vllm":  # vLLM sizes its KV cache for the longest sequence it is told of
        longest = (
            context
            if agentic
            else min(context, longest_prompt(prepared, tokenizer) + settings.sampling.max_tokens)
        )
    engine, needs_files = setup.make_engine(
        settings.engine, model, tokenizer, base_model, longest, stop_waiting
    )
    if agentic:
        engine = setup.with_agent(
            engine, settings.agent, settings.engine.max_concurrent_rollouts, context, base_model,
            prepared.evaluator,
        )  # fmt: skip
    return engine, needs_files


def prompts_that_fit(prepared: PreparedJob, model: Any, tokenizer: Any) -> tuple[list[Prompt], list[Prompt]]:
    """Training and evaluation prompts, over-long ones dropped (``--skip-bad-rows``) or refused."""
    return _prompts_that_fit(prepared, model, tokenizer)


def _prompts_that_fit(
    prepared: PreparedJob, model: Any, tokenizer: Any, *, say_notes: bool = False
) -> tuple[list[Prompt], list[Prompt]]:
    """Drop (with --skip-bad-rows) or refuse prompts too long for the context, then split; with
    ``say_notes`` (a job; a preflight has said them), the rows skipped and those that look wrong."""
    from openrft.rollout.prompts import encode_prompt
    from openrft.train.preflight_report import input_notes

    settings = prepared.settings
    context = settings.model.max_context_length or getattr(model.config, "max_position_embeddings", 4096)
    max_prompt = context - settings.sampling.max_tokens
    skip = prepared.cfg.data.skip_bad_rows

    def count_tokens(prompt: Prompt) -> int:
        return len(encode_prompt(tokenizer, prompt))

    dataset = check_prompt_lengths(prepared.dataset, count_tokens, max_prompt, skip_bad_rows=skip)
    for note in input_notes(dataset, prepared.evaluator) if say_notes else ():
        print(f"warning: {note}", file=sys.stderr)
    evaluation = prepared.evaluation_dataset
    if evaluation is not None:
        evaluation = check_prompt_lengths(evaluation, count_tokens, max_prompt, skip_bad_rows=skip)
    train_prompts, eval_prompts = dataclasses.replace(prepared, evaluation_dataset=evaluation).split(dataset)
    if not train_prompts:
        raise ConfigError(f"--dataset {dataset.source}: no training prompts left")
    return train_prompts, eval_prompts
