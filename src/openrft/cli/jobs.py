"""``openrft rftj list | get | cancel | resume | delete | plot | compare | rollouts`` and ``create --detach``.

Registered by :mod:`openrft.cli`; only the handlers import anything heavy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openrft.cli.evaluate import positive_int
from openrft.errors import JobError
from openrft.jobs.states import age, wall_time
from openrft.tracking.turns import turn_label, turn_text


def register(subparsers: argparse._SubParsersAction, rftj: argparse._SubParsersAction) -> None:
    create = rftj.choices["create"]
    create.add_argument(
        "--detach",
        action="store_true",
        help="Run the job in a background process (log in the job folder); print its id at once.",
    )

    p = rftj.add_parser("list", help="List jobs: id, state, base model, method, steps, last reward, age.")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="Output format.")
    p.set_defaults(handler=pipe_safe(cmd_list))

    p = rftj.add_parser("get", help="Show a job: state history, latest metrics, outputs, configuration.")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="Output format.")
    p.set_defaults(handler=pipe_safe(cmd_get))

    p = rftj.add_parser(
        "cancel",
        help="Stop a job at its next step boundary, or part-way through a round being sampled (it writes a checkpoint).",
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="Wait until the job has stopped.")
    p.set_defaults(handler=pipe_safe(cmd_cancel))

    p = rftj.add_parser(
        "resume", help="Continue a failed job (or, with --force, a cancelled one) from its last checkpoint."
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--force", action="store_true", help="Resume even a cancelled job.")
    p.add_argument("--detach", action="store_true", help="Run it in a background process.")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    p.set_defaults(handler=cmd_resume)

    p = rftj.add_parser("delete", help="Delete a finished job's record and folder.")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--force", action="store_true",
                   help="Delete it even when another job that can still resume starts from its adapter.")  # fmt: skip
    p.set_defaults(handler=pipe_safe(cmd_delete))

    p = rftj.add_parser(
        "plot", help="Plot reward, loss, KL, clip and zero-variance curves of jobs, overlaid."
    )
    p.add_argument("job_ids", metavar="ID", nargs="+", help="Job ids (or job folders).")
    p.add_argument("--out", metavar="FILE.png", required=True, help="Where to write the image.")
    p.set_defaults(handler=pipe_safe(cmd_plot))

    p = rftj.add_parser(
        "compare", help="Show the parameters that differ between jobs, their rewards, and plot them."
    )
    p.add_argument("job_ids", metavar="ID", nargs="+", help="Two or more job ids (or job folders).")
    p.add_argument("--out", metavar="FILE.png", help="Where to write the plot (default: compare-A-B.png).")
    p.set_defaults(handler=pipe_safe(cmd_compare))

    p = rftj.add_parser("rollouts", help="Show sampled prompts, completions, scores and reasons of a job.")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--step", type=int, help="Rollouts sampled for this step (default: the latest).")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--worst", action="store_true", help="Lowest scores first.")
    order.add_argument("--best", action="store_true", help="Highest scores first.")
    p.add_argument("--limit", type=positive_int, default=10, help="How many to show (default 10).")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="Output format.")
    p.set_defaults(handler=pipe_safe(cmd_rollouts))

    p = rftj.add_parser(
        "repair",
        help="Rebuild a damaged job store (jobs.db) from the job folders; the damaged file is kept as a backup.",
    )
    p.add_argument("--force", action="store_true", help="Rebuild even a store that is not damaged.")
    p.set_defaults(handler=cmd_repair)


# ----------------------------------------------------------------------------- helpers


def cmd_repair(args: argparse.Namespace) -> int:
    from openrft.jobs.repair import repair

    report = repair(force=args.force)
    if report.backup:
        print(f"the old job store was moved to {report.backup}")
    print(f"restored {len(report.restored)} jobs from their folders")
    for folder, why in report.skipped:
        print(f"  skipped {folder}: {why}")
    return 1 if report.skipped else 0


def pipe_safe(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Output piped into ``head`` or ``grep -q`` ends quietly instead of with a BrokenPipeError."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            code = handler(args)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
            return 0

    return run


def _store():
    from openrft.jobs.store import JobStore

    return JobStore()


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(f"{str(c):<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def resolve_runs(store, targets: Sequence[str]) -> list[tuple[str, Path, Any]]:
    """``(label, metrics path, record or None)`` for job ids or job folders."""
    runs = []
    for target in targets:
        if store.exists(target):
            record = store.get(target)
            runs.append((record.id, record.metrics_path, record))
            continue
        path = Path(target)
        metrics = path if path.is_file() else path / "metrics.jsonl"
        if not metrics.is_file():
            raise JobError(
                f"no job with id {target!r} and no metrics.jsonl at {target}", hint="openrft rftj list"
            )
        runs.append((path.name if path.is_dir() else path.parent.name, metrics, None))
    return runs


# ----------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    records = _store().list()
    if args.output == "json":
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print("no jobs yet: start one with `openrft rftj create` or `openrft quickstart`")
        return 0
    now = time.time()
    rows = [
        [
            r.id,
            r.shown_state,
            r.base_model or "-",
            r.method or "-",
            str(r.steps),
            "-" if r.last_reward is None else f"{r.last_reward:.3f}",
            age(now - r.created_at),
        ]
        for r in records
    ]
    print(_table(["ID", "STATE", "BASE MODEL", "METHOD", "STEPS", "LAST REWARD", "AGE"], rows))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from openrft.tracking.sinks import read_metrics

    record = _store().get(args.job_id)
    metrics = read_metrics(record.metrics_path)
    last_step = metrics[-1].get("step") if metrics else None
    latest: dict[str, Any] = {}
    for row in metrics:  # the last step's training line and the evaluation logged after it
        if row.get("step") == last_step:
            latest.update({k: v for k, v in row.items() if v is not None})
    if args.output == "json":
        print(
            json.dumps({**record.to_json(), "wall_s": wall_time(record), "latest_metrics": latest}, indent=2)
        )
        return 0
    out = [f"id:          {record.id}", f"state:       {record.shown_state}"]
    if record.message:
        out.append(f"message:     {record.message}")
    if record.cancel_requested and record.state.is_active:
        out.append("             (cancel requested: stops at the next step boundary or mid-sampling)")
    out += [
        f"base model:  {record.base_model}",
        f"method:      {record.method}",
        f"steps:       {record.steps}",
        f"rounds:      {rounds_line(metrics)}",
        f"last reward: {'-' if record.last_reward is None else f'{record.last_reward:.4f}'}",
        f"created:     {_stamp(record.created_at)} ({age(time.time() - record.created_at)} ago)",
        f"wall time:   {age(wall_time(record))}",
        f"pid:         {record.pid if record.pid and record.state.is_active else '-'}",  # (its process ended)
        f"job folder:  {record.job_dir}",
        f"outputs:     {record.output_dir or '-'}",
    ]
    if record.log_path.is_file():
        out.append(f"log:         {record.log_path}")
    out += ["", "history:"]
    out += [f"  {_stamp(t.at)}  {t.state:<13} {t.message or ''}".rstrip() for t in record.transitions]
    if latest:
        out += ["", f"latest metrics (step {latest.get('step')}):"]
        keys = sorted(k for k in latest if k != "step" and latest[k] is not None)
        out += [
            f"  {k:<34} {latest[k]:.6g}" if isinstance(latest[k], float) else f"  {k:<34} {latest[k]}"
            for k in keys
        ]
    out += ["", "configuration:"]
    for group, values in record.config.items():
        for name, value in values.items():
            shown = "unset" if value is None else value
            out.append(f"  {group:<9} {name.replace('_', '-'):<28} {shown}")
    print("\n".join(out))
    return 0


def rounds_line(metrics: list[dict[str, Any]]) -> str:
    """Rollout rounds sampled so far, and how many of them trained nothing."""
    rounds = len({r["train/round"] for r in metrics if r.get("train/round") is not None})
    untrained = sum(1 for r in metrics if r.get("filter/round_skipped"))
    if not untrained:
        return str(rounds)
    return f"{rounds} ({untrained} trained nothing: every group's candidates scored alike)"


def cmd_cancel(args: argparse.Namespace) -> int:
    store = _store()
    record = store.request_cancel(args.job_id)
    print(
        f"job {record.id}: cancel requested; it stops at the next step boundary (a round being sampled is dropped) and writes a checkpoint"
    )
    if args.wait:
        while record.state.is_active:
            time.sleep(0.5)
            record = store.get(record.id)
        print(f"job {record.id} {record.state}{': ' + record.message if record.message else ''}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from openrft.jobs.runner import resume_job

    return resume_job(args.job_id, force=args.force, detach=args.detach, quiet=args.quiet)


def cmd_delete(args: argparse.Namespace) -> int:
    from openrft.jobs.resume_from import warm_started_from

    store = _store()
    needed = [] if args.force else warm_started_from(store, store.get(args.job_id))
    if needed:
        raise JobError(
            f"job {args.job_id}'s adapter is the --warm-start-from of job {', '.join(needed)}, which has yet to "
            "finish or can still resume (it needs that adapter); nothing was deleted",
            hint=f"finish or delete that job first, or delete anyway with: openrft rftj delete {args.job_id} --force",
        )
    record = store.delete(args.job_id)
    if store.owns_folder(record):
        print(f"deleted job {record.id} and {record.job_dir}")
    else:
        print(f"deleted job {record.id} from the store; its folder {record.job_dir} was kept")
    if record.output_dir and not str(record.output_dir).startswith(str(record.job_dir)):
        print(f"its outputs in {record.output_dir} were kept", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from openrft.tracking.plots import plot_jobs

    runs = resolve_runs(_store(), args.job_ids)
    out = plot_jobs([(label, path) for label, path, _ in runs], Path(args.out))
    print(f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from openrft.tracking.compare import summarize_run

    if len(args.job_ids) < 2:
        raise JobError("compare needs at least two jobs", hint="openrft rftj compare ID_A ID_B")
    runs = resolve_runs(_store(), args.job_ids)
    configs, summaries = [], []
    for label, path, record in runs:
        config = record.flat_config() if record else _folder_config(path.parent)
        configs.append(config)
        state = str(record.state) if record else ""
        summaries.append(
            summarize_run(label, path, state=state, wall_s=wall_time(record) if record else None)
        )
    return show_comparison([(label, path) for label, path, _ in runs], configs, summaries, args.out)


def show_comparison(
    runs: list[tuple[str, Path]], configs: list[dict], summaries: list, out: str | None
) -> int:
    """Print what differs and what each job reached (warnings on stderr), and plot the curves overlaid."""
    from openrft import config as C
    from openrft.tracking.compare import format_comparison
    from openrft.tracking.plots import plot_jobs

    text, warnings = format_comparison([label for label, _ in runs], configs, summaries, C.config_defaults())
    print(text)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    default = (
        "compare-" + "-".join(label for label, _ in runs[:2]) + ("-etc" if len(runs) > 2 else "") + ".png"
    )
    written = plot_jobs(runs, Path(out or default))
    print(f"\nplot: {written}")
    return 0


def _folder_config(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "job.json"
    if not path.is_file():
        return {}
    from openrft.config import flatten

    return flatten(json.loads(path.read_text()))


def cmd_rollouts(args: argparse.Namespace) -> int:
    from openrft.tracking.jsonl_files import ordered_rollouts, rollouts_of_step

    record = _store().get(args.job_id)
    steps, step, picked = rollouts_of_step(record.rollouts_path, args.step)  # that step's lines only
    if not steps:
        print(f"job {record.id} has no sampled rollouts yet ({record.rollouts_path})")
        return 0
    if args.step is not None and step != args.step:
        raise JobError(f"job {record.id} has no rollouts for step {args.step}", hint=steps_hint(steps))
    picked = ordered_rollouts(picked, rollout_order(args))[: max(0, args.limit)]
    return show_rollouts(record.id, step, picked, args)


def rollout_order(args: argparse.Namespace) -> str:
    return "worst" if args.worst else "best" if args.best else "sampled"


def steps_hint(steps: Sequence[int]) -> str:
    return f"steps with rollouts: {', '.join(map(str, steps[-20:]))}"


def show_rollouts(job_id: str, step: int, picked: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Print a step's chosen rollouts as ``rftj rollouts`` shows them (JSON with ``-o json``)."""
    if args.output == "json":
        print(json.dumps(picked, indent=2))
        return 0
    order = {"worst": "worst first", "best": "best first"}.get(rollout_order(args), "in sampling order")
    noun = "rollout" if len(picked) == 1 else "rollouts"
    print(f"job {job_id}: {len(picked)} {noun} of step {step} ({order})\n")
    for r in picked:
        score = r.get("score")
        valid = "" if r.get("valid", True) else "  INVALID"
        print(f"--- prompt {r.get('prompt_id')}  score {score if score is None else f'{score:.3f}'}{valid}")
        if r.get("system"):
            print(f"system:     {_clip(turn_text({'content': r['system']}))}")
        print(f"prompt:     {_clip(r.get('prompt', ''))}")
        if r.get("conversation"):  # an agent's run: every turn after the prompt
            for m in r["conversation"][r.get("prompt_messages", 0) :]:
                print(f"{turn_label(m) + ':':<11} {_clip(turn_text(m))}")
        else:
            print(f"completion: {_clip(r.get('completion', ''))}")
        if r.get("reason"):
            print(f"reason:     {_clip(str(r['reason']))}")
        if r.get("finish_reason"):
            print(f"finished:   {r['finish_reason']}")
        print()
    return 0


def _clip(text: str, limit: int = 400) -> str:
    text = str(text).replace("\n", "\n            ")
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


__all__ = ["register", "wall_time", "resolve_runs", "age"]
