"""``openrft rftj preflight``: a job's first round sampled and scored, with no job created and no training.

Takes every flag (and ``--config`` file) of ``rftj create``. Prints the spread of rewards per
prompt, the share of zero-variance groups, truncation, the evaluator's invalid rate and latency,
time estimates and advice; exits with :data:`NO_SIGNAL_EXIT_CODE` when the job could not learn.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys

from openrft.cli.evaluate import positive_int


def register(subparsers: argparse._SubParsersAction, rftj: argparse._SubParsersAction) -> None:
    from openrft.cli import add_job_flags

    p = rftj.add_parser(
        "preflight",
        help="Sample and score a job's first prompts (no job, no training): reward spread, zero-variance "
        "groups, truncation, evaluator failures, time per round and epoch, advice.",
        description="Sample the base model (or --warm-start-from) on a seeded subset of the training prompts "
        "with the job's sampling parameters and evaluator, and report whether training can learn from them. "
        "Exit code 0: a learning signal is expected; 8: none is (every group zero-variance, nearly every "
        "response cut off, or most scores invalid).",
    )
    p.add_argument("--config", metavar="FILE", help="Job file (.yaml/.json), as for `rftj create`.")
    p.add_argument(
        "--preflight-prompts", type=positive_int, default=32, metavar="N",
        help="Training prompts to sample: the first N the job would sample, in its seeded order (default 32).",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")
    p.add_argument("--quiet", action="store_true", help="Accepted for symmetry with `create`; no effect.")
    add_job_flags(p)
    p.set_defaults(handler=cmd_preflight)


def cmd_preflight(args: argparse.Namespace) -> int:
    from openrft import config as C
    from openrft.cli import config_from_args, warn
    from openrft.jobs.runner import validate
    from openrft.train.preflight import run_preflight
    from openrft.train.preflight_report import cpu_round_seconds, duration

    cfg, _ = config_from_args(args)
    if args.json or not sys.stderr.isatty():  # transformers' loading bar: noise in a script's output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    notes = list(C.advise(cfg))
    warn(notes)
    prepared = validate(cfg)  # every check of `rftj create`; nothing is recorded
    warn(checks := dry_run_warnings(prepared))
    notes += checks
    s = prepared.settings.sampling
    count = min(args.preflight_prompts, len(prepared.split(prepared.dataset)[0]))  # the training prompts
    seconds = cpu_round_seconds(prepared.settings, count, base_params(prepared), os.cpu_count())
    slow = (
        f", up to about {duration(seconds)} on this CPU at {s.max_tokens} tokens each"
        if seconds and seconds > 60
        else ""
    )
    print(
        f"preflight: sampling {count} prompts x {s.n} candidates{slow} (no job is created, nothing is trained) ...",
        file=sys.stderr,
        flush=True,
    )
    report = run_preflight(prepared, args.preflight_prompts)
    report.notes = notes + report.notes  # the warnings printed above, in --json too
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(format_report(report, s)))
    return report.exit_code


def base_params(prepared) -> int | None:
    """The base model's parameter count, from the job's memory estimate (None: no estimate)."""
    memory = prepared.memory
    if memory is None:
        return None
    return memory.weights // (2 if prepared.settings.model.dtype == "bfloat16" else 4)


def dry_run_warnings(prepared) -> list[str]:
    """The preflight's cheap checks (nothing sampled), for ``rftj create --dry-run`` too."""
    from openrft.train.preflight_report import dry_run_warnings as warnings_for
    from openrft.train.preflight_report import input_notes

    out = warnings_for(prepared.settings, len(prepared.dataset), base_params(prepared), os.cpu_count())
    out = [*input_notes(prepared.dataset, prepared.evaluator), *out]
    evaluator = prepared.evaluator
    if (
        getattr(evaluator, "kind", "") == "trl"
        and "trainer_state" in inspect.signature(evaluator.fn).parameters
    ):
        out.append(f"{evaluator.name}() takes trainer_state, which openrft passes as None (it has no "
                   "transformers Trainer): a reward that reads its step scores invalid")  # fmt: skip
    return out


def format_report(r, sampling) -> list[str]:
    """The report as text: statistics, times, advice and the verdict."""
    from openrft.train.preflight_report import duration, histogram, quantiles

    stop = ", ".join(repr(x) for x in sampling.stop) or "none"
    out = [
        f"preflight of {r.base_model} on {r.device}: {r.prompts} of {r.train_prompts} training prompts x "
        f"{r.n} candidates",
        f"  sampling: temperature {sampling.temperature:g}, top-p {sampling.top_p:g}, top-k {sampling.top_k}, "
        f"max {sampling.max_tokens} tokens, stop {stop}",
        "",
        f"reward per prompt (its {r.n} candidates' valid scores):",
        "  mean " + _quantile_line(quantiles(r.group_means)),
        "  std  " + _quantile_line(quantiles(r.group_stds)),
        "  prompts by mean reward:",
        *("  " + line for line in histogram(r.group_means)),
        f"zero-variance groups (dropped by the trainer): {r.zero_variance} of {r.prompts} "
        f"({r.zero_variance_frac:.0%}); all at the lowest score: {r.zero_variance_low}, all at the "
        f"highest: {r.zero_variance_high}",
        f"distinct scores seen: {', '.join(f'{x:g}' for x in r.distinct_scores) or 'none'}"
        + (" ..." if len(r.distinct_scores) >= 12 else ""),
        "",
        f"responses: {r.responses}; cut off at --max-output-tokens {r.max_tokens}: {r.truncated} "
        f"({r.truncated_frac:.0%})",
        "  length in tokens " + _quantile_line(quantiles(r.lengths), "{:.0f}"),
        f"evaluator: {r.invalid} of {r.scores} scores invalid ({r.invalid_frac:.1%}); "
        + (f"{r.latency_s * 1000:.1f} ms per call (timed one at a time); " if r.latency_s is not None else "")
        + f"{r.score_wall_s:.2f} s for the {r.calls} calls of this sample",
        "",
    ]
    t = r.timing
    if t is not None:
        out += [
            f"time on this machine (sampling this preflight took {r.sample_wall_s:.1f} s):",
            f"  per round of {t.prompts_per_round} prompts: about {duration(t.round_s)} (sampling "
            f"{duration(t.sample_s)}, scoring {duration(t.score_s)}, training {duration(t.train_s)})",
            f"  per epoch of {r.train_prompts} prompts ({t.rounds_per_epoch} rounds): about {duration(t.epoch_s)}",
            "  how: sampling and scoring measured here and scaled by prompts; training at "
            + (f"{t.train_tokens_per_s:.0f} tokens/s, " if t.train_tokens_per_s else "")
            + f"{t.train_method}, applied to the groups not dropped; evaluation passes not counted",
        ]
        if t.load_average is not None and t.cpus:
            out.append(
                f"  measured at a load average of {t.load_average:.1f} on {t.cpus} CPUs: other work on the "
                "machine makes every estimate longer"
            )
        out.append("")
    advice = r.advice()
    out += (
        ["advice:", *(f"  - {line}" for line in advice)]
        if advice
        else ["advice: none; the sample looks usable"]
    )
    blockers = r.blockers()
    if blockers:
        out += ["", f"no learning signal expected: {'; '.join(blockers)} (exit code {r.exit_code})"]
    else:
        kept = r.prompts - r.zero_variance
        out += ["", f"learning signal expected: {kept} of {r.prompts} groups have scores that differ"]
    return out


def _quantile_line(q: dict[str, float], fmt: str = "{:.3g}") -> str:
    return "  ".join(f"{k} {fmt.format(v)}" for k, v in q.items()) if q else "-"


__all__ = ["register", "cmd_preflight", "dry_run_warnings", "format_report"]
