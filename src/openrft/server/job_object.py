"""A stored job in the managed service's shape (camelCase JSON): name, state, status, times, progress,
and its configuration echoed in the request's nesting (:func:`job_object`)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from openrft.errors import OpenRFTError
from openrft.jobs.states import DIED_MESSAGE, JobState
from openrft.jobs.store import JobRecord
from openrft.server.wire import OPTIONS, SECTIONS, TOP, read_meta, rename_flags
from openrft.tracking.jsonl_files import Folded
from openrft.tracking.sinks import current_names


def job_name(account: str, job_id: str) -> str:
    return f"accounts/{account}/reinforcementFineTuningJobs/{job_id}"


def rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wire_state(record: JobRecord) -> str:
    return "JOB_STATE_" + record.shown_state


def status_of(record: JobRecord) -> dict[str, str]:
    """``{code, message}`` with the gRPC code name for the job's state."""
    state = record.state
    if state is JobState.FAILED:
        code = "ABORTED" if record.message == DIED_MESSAGE else "INTERNAL"
    elif state is JobState.CANCELLED:
        code = "CANCELLED"
    else:
        code = "OK"
    message = record.message or ("cancel requested" if record.shown_state == "CANCELLING" else "")
    message = message.replace("resume --force", API_FORCE)  # as an API client asks for it
    return {"code": code, "message": rename_flags(message)}  # a failure at start names the body's fields


API_FORCE = 'a :resume with {"force": true}'


def job_object(record: JobRecord, account: str) -> dict[str, Any]:
    """A stored job in the service's shape: name, state, status, times, progress and its configuration."""
    flat = record.flat_config()
    meta = read_meta(record)
    refs = meta.get("refs", {})
    obj: dict[str, Any] = {"name": job_name(account, record.id)}
    if meta.get("displayName"):
        obj["displayName"] = meta["displayName"]
    obj.update({
        "state": wire_state(record),
        "status": status_of(record),
        "createTime": rfc3339(record.created_at),
        "completedTime": rfc3339(completed_at(record)),
        "dataset": refs.get("dataset") or flat.get("dataset") or "",
        "evaluator": refs.get("evaluator") or flat.get("evaluator") or _default_evaluator(flat),
    })  # fmt: skip
    if flat.get("evaluation_dataset"):
        obj["evaluationDataset"] = refs.get("evaluationDataset") or flat["evaluation_dataset"]
    obj["evalAutoCarveout"] = flat.get("eval_auto_carveout") is not None
    obj.update(_echo(flat, refs, record))
    obj["jobProgress"] = job_progress(record, flat)
    obj["outputModelPath"] = str(record.output_dir) if record.output_dir else None
    return obj


def _default_evaluator(flat: dict[str, Any]) -> str:
    """The built-in evaluator a job without one uses (its dataset's), "" when that cannot be told now."""
    from openrft.evaluators.loader import default_evaluator_name

    try:
        return default_evaluator_name(flat.get("dataset"))
    except (OpenRFTError, OSError, ValueError):
        return ""


def _echo(flat: dict[str, Any], refs: dict[str, Any], record: JobRecord) -> dict[str, Any]:
    """The configuration in the request's camelCase nesting."""
    out: dict[str, Any] = {}
    for section, fields in SECTIONS.items():
        out[section] = {wire: flat.get(name) for wire, name in fields.items() if flat.get(name) is not None}
    out["wandbConfig"].pop("apiKey", None)
    if flat.get("wandb"):
        wandb = out["wandbConfig"]
        # the run the job's first start opened, once it has (before that, its id is not drawn yet)
        for key, value in _run_identity(record).items():
            wandb.setdefault(key, value)
        if wandb.get("entity") and wandb.get("project") and wandb.get("runId"):
            wandb["url"] = f"https://wandb.ai/{wandb['entity']}/{wandb['project']}/runs/{wandb['runId']}"
    out["trainingConfig"]["outputModel"] = refs.get("outputModel") or flat.get("output_model") or record.id
    if refs.get("warmStartFrom"):
        out["trainingConfig"]["warmStartFrom"] = refs["warmStartFrom"]
    extra = {"stop": list(flat.get("stop") or [])}
    if flat.get("response_format"):  # the object it was sent as (a command line's may be a file name)
        text = flat["response_format"]
        extra["response_format"] = json.loads(text) if text.lstrip().startswith("{") else text
    if any(extra.values()):
        out["inferenceParameters"]["extraBody"] = json.dumps({k: v for k, v in extra.items() if v})
    method = str(flat.get("rl_loss_method", "grpo")).upper().replace("-", "_")
    out["lossConfig"] = {"method": method, "klBeta": flat.get("rl_kl_beta") or 0.0}  # 0: the method's default
    out.update({wire: flat.get(name) for wire, name in TOP.items() if flat.get(name) is not None})
    servers = flat.get("mcp_server")
    if servers:  # one server as text, as it was given; several as a list
        out["mcpServer"] = (
            servers if isinstance(servers, str) else servers[0] if len(servers) == 1 else list(servers)
        )
    out["nodeCount"] = 1
    options = {
        name: flat[name] for name in sorted(OPTIONS) if name in record.given and flat.get(name) is not None
    }
    if options:  # what the request (or the command line) set of openrft's own parameters, read back
        out["openrftOptions"] = options
    return out


def _run_identity(record: Any) -> dict[str, str]:
    """The W&B run the job opened (recorded in its folder once it started): ``runId`` and the
    ``project`` and ``entity`` it went to, as the wire names them; nothing before it started."""
    try:
        identity = json.loads((record.job_dir / "wandb_run.json").read_text())
    except (AttributeError, OSError, ValueError):
        return {}
    if not isinstance(identity, dict):
        return {}
    names = {
        "runId": identity.get("id"),
        "project": identity.get("project"),
        "entity": identity.get("entity"),
    }
    return {key: str(value) for key, value in names.items() if value}


def completed_at(record: JobRecord) -> float | None:
    if record.state.is_active:
        return None
    ends = [t.at for t in record.transitions if t.state is record.state]
    return ends[-1] if ends else record.updated_at


def _totals(totals: dict[str, Any], row: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """One metrics line added to a job's running totals (the first line of each round counts its
    sampling: a round's steps repeat its rollout metrics)."""
    row = current_names(row)
    if isinstance(row.get("train/epoch"), int | float):
        totals["epoch"] = max(totals["epoch"], float(row["train/epoch"]))
    totals["trained"] += float(row.get("batch/tokens") or 0)
    if row.get("train/round") is not None and row["train/round"] not in totals["rounds"]:
        totals["rounds"].add(row["train/round"])
        totals["sampled"] += float(row.get("rollout/completion_tokens") or 0)
        totals["prompts"] += float(row.get("filter/groups") or 0)
    return totals


# each job's totals, brought up to date with the lines its metrics.jsonl gained since the last look
TOTALS = Folded(
    lambda: {"epoch": 0.0, "trained": 0.0, "sampled": 0.0, "prompts": 0.0, "rounds": set()}, _totals
)


def job_progress(record: JobRecord, flat: dict[str, Any]) -> dict[str, Any]:
    """Percent and epoch from the job's metrics.jsonl: the epoch under way (1-based), or for a job that
    has stopped the one it stopped in (a finished one-epoch job reports 1, never 0); tokens and
    prompts summed over its rounds."""
    totals = TOTALS.get(record.metrics_path)
    epochs = max(1, int(flat.get("epochs") or 1))
    done = totals["epoch"]
    if record.state in (JobState.COMPLETED, JobState.EARLY_STOPPED):
        done = float(epochs) if record.state is JobState.COMPLETED else done
    return {
        "percent": int(min(100.0, 100.0 * done / epochs)),
        "epoch": min(epochs, int(done) + 1 if record.state.is_active else max(1, math.ceil(done))),
        "inputTokens": int(totals["trained"]),
        "outputTokens": int(totals["sampled"]),
        "totalProcessedRequests": int(totals["prompts"]),
        "steps": record.steps,
        "lastReward": record.last_reward,
        "updateTime": rfc3339(record.updated_at or time.time()),
    }


__all__ = ["job_name", "job_object", "rfc3339"]
