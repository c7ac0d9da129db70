"""Sub-command ``openrft eval``: sample and score models (base, adapters, finished jobs) on a dataset.

The work is done by :mod:`openrft.jobs.model_eval`; this module turns flags into models, prompts,
sampling settings and an evaluator. Heavy imports happen inside :func:`cmd_eval`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from openrft import config as C
from openrft.cli.evaluate import (
    field_help,
    positive_int,
    positive_seconds,
    refuse_output_over_inputs,
    seed_value,
)
from openrft.cli.rollout import ROLLOUT_DEFAULTS, sampling_value_flags
from openrft.config.models import response_grammar

# What a job's stored configuration lends to an evaluation (openrft.jobs.model_eval.SAMPLING_FIELDS).
SAMPLING_NAMES = ("temperature", "top_p", "top_k", "max_output_tokens", "stop", "response_candidates_count")

EVAL_HELP = """\
Sample N responses per prompt from one or more models and score them with an evaluator.

Models: the base model alone by default; each --adapter DIR and --job ID adds a column
(a job's output adapter, sampled with that job's temperature, top-p, top-k, max output
tokens, stop strings and N unless those flags are given); --base adds the base model too.
Every model sees the same prompts, sampling settings and seed.

Printed per model: mean reward, pass@1 and pass@N (unbiased estimator over the N samples
of each prompt; a sample passes when its score is >= --pass-threshold, or with --pass-metric
when that evaluator metric is), the share of responses cut at --max-output-tokens, mean
response tokens, the share of invalid scores and the mean of each evaluator metric.
"""


def register(subparsers: Any, rftj_subparsers: Any = None) -> None:
    """Add ``eval`` to the top-level command parser."""
    ev = subparsers.add_parser(
        "eval",
        help="Sample and score a base model and trained adapters on a dataset, side by side.",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--dataset", required=True, metavar="SOURCE", help="Prompt JSONL or a built-in task.")
    ev.add_argument(
        "--evaluator",
        metavar="SPEC",
        help="path/to/file.py::function, module:function, or a built-in (arithmetic, gsm8k, math, code, calculator). "
        "Default: the first --job's evaluator, else the dataset's task.",
    )
    ev.add_argument("--base-model", metavar="MODEL", help=field_help("base_model"))
    ev.add_argument(
        "--adapter", dest="models", action="append", type=lambda v: ("adapter", v), metavar="DIR",
        help="LoRA adapter folder (PEFT format) to evaluate; repeat to compare several.",
    )  # fmt: skip
    ev.add_argument(
        "--job", dest="models", action="append", type=lambda v: ("job", v), metavar="ID",
        help="A finished job: its output adapter, sampled with its settings; repeat to compare several.",
    )  # fmt: skip
    ev.add_argument("--base", action="store_true", help="Also evaluate the base model (without adapter).")
    _sampling_flags(ev)
    ev.add_argument("--limit", type=positive_int, metavar="N", help="Use only the first N dataset rows.")
    ev.add_argument(
        "--seed", type=seed_value, default=0,
        help="Seed of the sampling and of built-in task generation (default 0).",
    )  # fmt: skip
    ev.add_argument(
        "--pass-threshold", type=float, default=1.0, metavar="T",
        help="A sample passes (for pass@k) when its score is >= T (default 1.0, a full score).",
    )  # fmt: skip
    ev.add_argument(
        "--pass-metric", metavar="NAME",
        help="Judge passes on this evaluator metric instead of the score (e.g. correct_in_tags).",
    )  # fmt: skip
    ev.add_argument("--reference-field", metavar="NAME", help=field_help("reference_field"))
    ev.add_argument("--skip-bad-rows", action="store_true", help="Skip (and count) malformed dataset rows.")
    ev.add_argument("--output", metavar="FILE.jsonl", help="Write one JSON line per sample to FILE.")
    ev.add_argument(
        "--evaluator-timeout", type=positive_seconds, default=60.0, metavar="S",
        help="Seconds per evaluator call (default 60).",
    )  # fmt: skip
    ev.add_argument(
        "--max-concurrent-evaluations", type=positive_int, metavar="N",
        help="Parallel evaluator calls (default: the evaluator's own, else 8).",
    )  # fmt: skip
    ev.set_defaults(handler=cmd_eval)


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    """The rollout flags; unset ones are absent, so a job's stored values can fill them."""
    group = parser.add_argument_group(
        "sampling", "Default: the first --job's settings, else these defaults (as for openrft rollout)."
    )
    n = ROLLOUT_DEFAULTS["response_candidates_count"]
    group.add_argument(
        "--n", "--response-candidates-count", dest="response_candidates_count", type=positive_int,
        metavar="N", default=argparse.SUPPRESS, help=f"Responses sampled per prompt. Default: {n}.",
    )  # fmt: skip
    group.add_argument(
        "--max-output-tokens", dest="max_output_tokens", type=int, metavar="TOKENS", default=argparse.SUPPRESS,
        help=field_help("max_output_tokens", ROLLOUT_DEFAULTS["max_output_tokens"]),
    )  # fmt: skip
    sampling_value_flags(group)
    group.add_argument(
        "--max-concurrent-rollouts", dest="max_concurrent_rollouts", type=int, default=argparse.SUPPRESS,
        metavar="N", help="Sequences decoded together (throughput only). Default: 64.",
    )  # fmt: skip


# ----------------------------------------------------------------------------- the command


def cmd_eval(args: argparse.Namespace) -> int:
    from openrft.data import load_prompts, write_jsonl
    from openrft.errors import input_error
    from openrft.evaluators.loader import load_evaluator
    from openrft.evaluators.runner import check_invalid_rate
    from openrft.jobs import model_eval as M
    from openrft.train.job import check_evaluator_fits

    models, jobs = _models(args)
    params, concurrency = _sampling(args, jobs)
    evaluator_spec = args.evaluator or next((j.evaluator for j in jobs if j.evaluator), None)
    refuse_output_over_inputs(args.output, args.dataset, evaluator_spec)
    M.check_models(models)  # every model and adapter before any is loaded: none fails after another ran
    with input_error("--evaluator"):  # inputs are exit 2, each named by its flag, as at job creation
        evaluator = load_evaluator(evaluator_spec, dataset=args.dataset)
    with input_error("--dataset"):
        prompts = load_prompts(
            args.dataset, seed=args.seed, limit=args.limit, skip_bad_rows=args.skip_bad_rows,
            adapter=evaluator.dataset_adapter, open_ended=evaluator.rollout is not None,
        )  # fmt: skip
        if args.reference_field:
            from openrft.data.reference import with_reference_field

            prompts = with_reference_field(prompts, args.reference_field, skip_bad_rows=args.skip_bad_rows)
        prompts = M.prompts_that_fit(models, prompts, params.max_tokens, skip_bad_rows=args.skip_bad_rows)
    check_evaluator_fits(evaluator, prompts)  # the rows hold what the evaluator reads
    rule = M.PassRule(args.pass_threshold, args.pass_metric)
    score = M.scorer(
        evaluator, max_concurrency=args.max_concurrent_evaluations, timeout=args.evaluator_timeout
    )
    M.progress(
        f"{len(prompts)} prompts x {params.n} responses, temperature {params.temperature:g}, top-p "
        f"{params.top_p:g}, top-k {params.top_k}, max {params.max_tokens} tokens"
        + (f", stop {list(params.stop)}" if params.stop else "")
        + f", seed {params.seed}; evaluator {evaluator_spec or evaluator.name}"
    )
    agent_job = next((j for j in jobs if j.agent is not None), None)  # every model runs its tool loop
    if agent_job is not None:
        M.progress(f"each response is a conversation run as in job {agent_job.job_id} (its tools or agent)")
    elif evaluator.rollout is not None:
        M.progress(f"each response is a conversation run by {type(evaluator.rollout.processor).__name__}")
    results = []
    for model in models:
        M.progress(f"{model.label}: {model.describe()}")
        results.append(
            M.evaluate_model(
                model,
                prompts,
                params,
                score,
                rule,
                max_concurrent_rollouts=concurrency,
                job=agent_job,
                processor=evaluator if evaluator.rollout is not None else None,
            )
        )
    print(f"{args.dataset}: {len(prompts)} prompts x {params.n} samples; pass = {rule.describe()}")
    if prompts.skipped:
        print(f"{prompts.skipped} malformed dataset rows were skipped")
    print(M.format_table(results))
    if args.output:
        records = [record for result in results for record in M.sample_records(result, rule)]
        print(f"samples written to {write_jsonl(args.output, records)}")
    sys.stdout.flush()
    for result in results:
        check_invalid_rate([s for g in result.groups for s in g.scores])
    return 0


def _models(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """The models to evaluate, in command-line order (the base first), and the jobs named."""
    from openrft.errors import ConfigError, JobError
    from openrft.jobs.model_eval import EvalModel, job_source
    from openrft.models import adapter_base_model

    models, jobs = [], []
    for kind, value in args.models or []:
        if kind == "job":
            try:
                job = job_source(value)
            except JobError as exc:
                message = exc.message if exc.message.startswith("--job") else f"--job {value}: {exc.message}"
                raise ConfigError(message, field="job", hint=exc.hint) from None  # bad input: exit 2
            jobs.append(job)
            models.append(EvalModel(job.job_id, args.base_model or job.base_model, job.adapter))
        else:
            base = args.base_model or adapter_base_model(value) or C.DEFAULT_BASE_MODEL
            models.append(EvalModel(_label(value), base, _path(value)))
    if args.base or not models:
        base = args.base_model or (jobs[0].base_model if jobs else None) or C.DEFAULT_BASE_MODEL
        models.insert(0, EvalModel("base", base))
    seen: dict[str, int] = {}
    for i, model in enumerate(models):  # two columns never share a label
        seen[model.label] = seen.get(model.label, 0) + 1
        if seen[model.label] > 1:
            models[i] = EvalModel(f"{model.label}#{seen[model.label]}", model.base_model, model.adapter)
    return models, jobs


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _label(value: str) -> str:
    path = _path(value).resolve()
    return path.parent.name if path.name == "output" and path.parent.name else path.name or value


def _sampling(args: argparse.Namespace, jobs: list[Any]) -> tuple[Any, int | None]:
    """Sampling parameters: the flags given, else the first job's, else the rollout defaults; validated
    with the job config's ranges (N may be 1 here)."""
    from openrft.records import SamplingParams

    values: dict[str, Any] = dict(jobs[0].sampling) if jobs else dict(ROLLOUT_DEFAULTS)
    names = (*SAMPLING_NAMES, "max_concurrent_rollouts")
    values.update({name: getattr(args, name) for name in names if hasattr(args, name)})
    for job in jobs[1:]:
        differ = [n for n in SAMPLING_NAMES if not hasattr(args, n) and job.sampling.get(n) != values.get(n)]
        if differ:
            print(
                f"warning: job {job.job_id} sampled with other {', '.join(differ)}; every model is "
                f"sampled with {jobs[0].job_id}'s settings",
                file=sys.stderr,
            )
    n = int(values.pop("response_candidates_count", ROLLOUT_DEFAULTS["response_candidates_count"]))
    rollout = C.build_config({}, values)[0].rollout
    params = SamplingParams(
        n=n, temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
        max_tokens=rollout.max_output_tokens, seed=args.seed, stop=tuple(rollout.stop),
        grammar=response_grammar(rollout.response_format),  # the job's structured output, as it trained
    )  # fmt: skip
    return params, rollout.max_concurrent_rollouts


__all__ = ["register", "cmd_eval"]
