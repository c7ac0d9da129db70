"""What the dashboard shows, read straight from the job store and the job folders.

Nothing here renders HTML: each function returns plain dicts and lists that the templates and the
JSON endpoints use as they are. Metrics come from ``metrics.jsonl`` and rollouts from
``rollouts.jsonl`` (both read through :mod:`openrft.tracking.jsonl_files`, which skips a torn last line
and, between calls, reads only what a file gained), so a page shows a running job's latest step without
the job's process being asked, and a long job's history is never read whole again.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from openrft.jobs.states import JobState, age
from openrft.jobs.store import JobRecord, JobStore
from openrft.models import EMBEDDED, embedded_model_dir
from openrft.server.models_api import adapter_files
from openrft.tracking.compare import differing_parameters, shown_value, summarize_run
from openrft.tracking.jsonl_files import Folded, ordered_rollouts, rollouts_of_step
from openrft.tracking.plots import PANELS
from openrft.tracking.sinks import current_names
from openrft.tracking.turns import turn_label, turn_text

STATES = [str(s) for s in JobState] + ["CANCELLING"]
# Keys the job page and the compare page draw: every line of the plots' panels.
CHART_KEYS = tuple(dict.fromkeys(key for panel in PANELS for key, _, _ in panel.lines))
TAIL_BYTES = 16384  # enough for the last line of metrics.jsonl
PAGE_SIZE = 50  # jobs on one page of the job list
ROLLOUTS_PAGE_SIZE = 50  # rollouts on one page of the rollouts browser (a step holds chunk x n of them)


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))  # the server's time zone, named


def last_metrics(path: Path) -> dict[str, Any]:
    """The last complete line of a ``metrics.jsonl`` (read from the end of the file, not all of it)."""
    if not path.is_file():
        return {}
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read().decode("utf-8", errors="replace")
    for line in reversed(tail.splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            return current_names(row)
    return {}


def progress(record: JobRecord, latest: dict[str, Any]) -> float | None:
    """Share of the job's planned epochs done, 0..1 (None before the first step is logged)."""
    if record.state is JobState.COMPLETED:
        return 1.0
    epochs = record.flat_config().get("epochs") or 1
    done = latest.get("train/epoch")
    if not isinstance(done, int | float) or not math.isfinite(done):
        return None
    return max(0.0, min(1.0, float(done) / float(epochs)))


def job_row(record: JobRecord, now: float) -> dict[str, Any]:
    """One line of the job list."""
    latest = last_metrics(record.metrics_path)
    share = progress(record, latest)
    return {
        "id": record.id,
        "state": record.shown_state,
        "message": record.message or "",
        "base_model": record.base_model or "-",
        "method": record.method or "-",
        "steps": record.steps,
        "progress": share,
        "progress_text": "-" if share is None else f"{100 * share:.0f}%",
        "last_reward": "-" if record.last_reward is None else f"{record.last_reward:.3f}",
        "age": age(now - record.created_at),
        "created": stamp(record.created_at),
        "active": record.state.is_active,
    }


def job_rows(store: JobStore, state: str | None = None) -> list[dict[str, Any]]:
    """The job list, newest first, optionally only the jobs shown in ``state``."""
    now = time.time()
    return [job_row(record, now) for record in store.list() if not state or record.shown_state == state]


def job_list_page(store: JobStore, state: str | None = None, page: int = 1) -> dict[str, Any]:
    """One page of the job list, newest first: its rows, where it lies, and how many jobs each state holds.

    Only the page's own jobs are read from their folders (their last metrics line), so a server with
    hundreds of jobs answers the list, and its refresh every few seconds, at the cost of one page.
    """
    size = PAGE_SIZE
    records = store.list()
    counts = Counter(record.shown_state for record in records)
    chosen = [record for record in records if not state or record.shown_state == state]
    pages = max(1, math.ceil(len(chosen) / size))
    page = min(max(1, page), pages)
    window = chosen[(page - 1) * size : page * size]
    now = time.time()
    return {
        "rows": [job_row(record, now) for record in window],
        "page": page,
        "pages": pages,
        "total": len(chosen),
        "first": (page - 1) * size + 1 if window else 0,
        "last": (page - 1) * size + len(window),
        "counts": {"": len(records), **{s: counts[s] for s in STATES}},
    }


# ----------------------------------------------------------------------------- one job


def metric_points(path: Path, since: int = 0) -> dict[str, Any]:
    """The chart series of ``metrics.jsonl`` from line ``since`` on: ``{"next": n, "points": [...]}``.

    Each point is ``{"step": s, key: value, ...}`` with only the chart keys the line has. A client
    polls with ``since`` = the ``next`` it was last given and appends what comes back.
    """
    lines = CHART_LINES.get(path)
    return {"next": len(lines), "points": [p for p in lines[max(0, since) :] if p is not None]}


def _chart_point(points: list[dict[str, Any] | None], row: dict[str, Any], start: int, end: int) -> list:
    """One metrics line's chart point (None when it has no step or no chart key)."""
    row = current_names(row)
    values = {k: row[k] for k in CHART_KEYS if _finite(row.get(k))} if row.get("step") is not None else {}
    points.append({"step": row["step"], **values} if values else None)
    return points


# each metrics.jsonl's chart points, one entry per line, read once (a polled chart costs its new lines)
CHART_LINES: Folded[list[dict[str, Any] | None]] = Folded(list, _chart_point, capacity=32)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def panels() -> list[dict[str, Any]]:
    """The plots' panels (:data:`openrft.tracking.plots.PANELS`) for the browser's charts."""
    return [
        {
            "title": panel.title,
            "ylabel": panel.ylabel,
            "lines": [{"key": key, "style": style, "label": meaning} for key, style, meaning in panel.lines],
        }
        for panel in PANELS
    ]


def parameters(record: JobRecord) -> list[dict[str, Any]]:
    """The resolved parameters by group, flag-named, with whether the user set each one."""
    rows = []
    for group, values in record.config.items():
        for name, value in values.items():
            rows.append(
                {
                    "group": group,
                    "flag": "--" + name.replace("_", "-"),
                    "value": shown_value(value),
                    "given": name in record.given,
                }
            )
    return rows


def history(record: JobRecord) -> list[dict[str, Any]]:
    return [
        {"at": stamp(t.at), "state": str(t.state), "message": t.message or ""} for t in record.transitions
    ]


def adapter_usage(record: JobRecord) -> dict[str, Any] | None:
    """Where the trained adapter is and the three ways to load it (None until the job has written it)."""
    folder = record.output_dir
    if folder is None or not (folder / "adapter_config.json").is_file():
        return None
    training = record.config.get("training", {})
    base_model = str(training.get("base_model") or record.base_model or "")
    base_path = str(embedded_model_dir(base_model)) if base_model in EMBEDDED else base_model
    rank = max(int(training.get("lora_rank") or 8), 8)
    adapter = str(folder)
    return {
        "folder": adapter,
        "peft": (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base_path}")\n'
            f'model = PeftModel.from_pretrained(base, "{adapter}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{adapter}")'
        ),
        "vllm": (
            f"vllm serve {base_path} --enable-lora --max-lora-rank {rank} --lora-modules {record.id}={adapter}"
        ),
        "openrft": f"openrft serve --base-model {base_model} --adapter {adapter}",
    }


JOB_FILES = ("metrics.jsonl", "rollouts.jsonl", "job.log")  # of the job's folder, beside its adapter's


def job_files(record: JobRecord) -> tuple[list[str], dict[str, Path]]:
    """What the job page offers to download: the adapter folder's files (at its top, no hidden marks)
    and the job's metrics, rollouts and log; their names in order, and where each is."""
    found: dict[str, Path] = {}
    folder = record.output_dir
    if folder is not None and (folder / "adapter_config.json").is_file():
        found = {name: folder / name for name in adapter_files(folder)}
    for name in JOB_FILES:
        if name not in found and (record.job_dir / name).is_file():
            found[name] = record.job_dir / name
    return list(found), found


# ----------------------------------------------------------------------------- rollouts


def rollouts(
    record: JobRecord, step: int | None = None, order: str = "best", query: str = "", page: int = 1
) -> dict[str, Any]:
    """One page of the rollouts of one step (default: the latest), best or worst first, each with its
    turns; with ``query``, only those whose prompt, answer, turns or reason hold it (any case). Only that
    step's lines are read: the file holds every round's candidates."""
    steps, step, picked = rollouts_of_step(record.rollouts_path, step)
    browser = {"steps": steps, "step": step, "order": order, "query": query, "page": 1, "pages": 1,
               "of_step": len(picked), "total": 0, "first": 0, "items": []}  # fmt: skip
    if not steps:
        return browser | {"step": None}
    rows = ordered_rollouts(picked, order)
    if query.strip():  # the search reads each rollout as shown (its turns' text)
        needle = query.strip().casefold()
        rows = [row for row in rows if needle in _searched_text(_rollout(row))]
    pages = max(1, math.ceil(len(rows) / ROLLOUTS_PAGE_SIZE))
    page = min(max(1, page), pages)
    first = (page - 1) * ROLLOUTS_PAGE_SIZE
    shown = [_rollout(row) for row in rows[first : first + ROLLOUTS_PAGE_SIZE]]  # only the page is rendered
    return browser | {"page": page, "pages": pages, "total": len(rows), "first": first + 1, "items": shown}


def _searched_text(item: dict[str, Any]) -> str:
    texts = [item["system"], item["prompt"], item["completion"], item["reason"]]
    texts += [turn["text"] for turn in item["turns"]]
    return "\n".join(texts).casefold()


def _rollout(row: dict[str, Any]) -> dict[str, Any]:
    score = row.get("score")
    turns = []
    if row.get("conversation"):  # an agent's run: every turn after the prompt
        for message in row["conversation"][row.get("prompt_messages", 0) :]:
            turns.append({"role": turn_label(message), "text": turn_text(message)})
    return {
        "prompt_id": row.get("prompt_id"),
        "score": f"{score:.3f}" if _finite(score) else "-",
        "valid": row.get("valid", True),
        "system": turn_text({"content": row["system"]}) if row.get("system") else "",
        "prompt": str(row.get("prompt", "")),
        "completion": str(row.get("completion", "")),
        "turns": turns,
        "reason": "" if row.get("reason") is None else str(row["reason"]),
        "finish_reason": row.get("finish_reason") or "",
        "error": row.get("error") or "",
        "trained": row.get("trained", True),
    }


# ----------------------------------------------------------------------------- compare


def comparison(records: list[JobRecord], defaults: dict[str, Any]) -> dict[str, Any]:
    """The parameters that differ between the jobs, what each job reached, and a warning when more
    than one parameter differs (then no single change explains the difference)."""
    differing = differing_parameters([r.flat_config() for r in records], defaults)
    summaries = [summarize_run(r.id, r.metrics_path, state=r.shown_state) for r in records]
    warning = None
    if len(differing) > 1:
        names = ", ".join("--" + n.replace("_", "-") for n in differing)
        warning = (
            f"{len(differing)} parameters differ ({names}): change one parameter at a time to know "
            "which change made the difference"
        )
    return {
        "ids": [r.id for r in records],
        "differing": [
            {"flag": "--" + name.replace("_", "-"), "values": [shown_value(v) for v in values]}
            for name, values in differing.items()
        ],
        "summaries": [_summary(s) for s in summaries],
        "warning": warning,
    }


def _summary(summary) -> dict[str, Any]:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    best = "-"
    if summary.best_reward is not None:
        best = f"{summary.best_reward:.3f} (step {summary.best_reward_step})"
    return {
        "label": summary.label,
        "state": summary.state or "-",
        "steps": summary.steps,
        "final_reward": num(summary.final_reward),
        "best_reward": best,
        "start_eval": num(summary.start_eval),
        "final_eval": num(summary.final_eval),
        "best_eval": "-"
        if summary.best_eval is None
        else f"{summary.best_eval:.3f} (step {summary.best_eval_step})",
    }


__all__ = [
    "CHART_KEYS",
    "STATES",
    "adapter_usage",
    "comparison",
    "history",
    "job_rows",
    "job_list_page",
    "metric_points",
    "panels",
    "parameters",
    "rollouts",
]
