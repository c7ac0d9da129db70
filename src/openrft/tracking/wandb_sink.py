"""Weights & Biases logging for a job (optional extra: ``pip install 'openrft[wandb]'``).

The run gets the resolved configuration as its hyperparameters (the API key
masked), every step's metrics against ``train/step``, and every ``rollout_every`` steps
a table of sampled rollouts: prompt, completion, score, validity and the evaluator's
reason. Metrics W&B cannot show as numbers (NaN, infinity) are sent as they are, so a diverging
step shows in the run as it does in ``metrics.jsonl`` (as null there). The run ends as the job
does: a failed or cancelled job's run is marked failed, its state in the summary (``job/state``).

A new job gets a run of its own: its id is ``--wandb-run-id`` or ``WANDB_RUN_ID`` when given
(continuing that run if it exists), else the job id with a random suffix, so a job id used again
(after ``rftj delete``, on another machine) never writes into an older job's run. What the first
start resolved (id, project, entity, name, group, tags, notes) is kept in the job folder
(``wandb_run.json``), and a resumed job continues exactly that run whatever its shell's
variables say. It then first sends the lines of ``metrics.jsonl`` the run does not hold yet (a
killed process never flushed its last W&B records, and its replayed steps follow the
checkpoint): the run's own summary says how far it got online, its earlier files offline
(:meth:`WandbSink.catch_up`). So every line reaches the run once.

W&B's own environment variables apply where no flag says otherwise: ``WANDB_PROJECT``,
``WANDB_ENTITY``, ``WANDB_RUN_ID``, ``WANDB_NAME`` (the run's display name, else the job id),
``WANDB_RUN_GROUP``, ``WANDB_TAGS`` (comma-separated), ``WANDB_NOTES`` and ``WANDB_DIR`` (else the
job folder).

Mode: ``WANDB_MODE`` when the user set it; otherwise online when an API key is
known (``--wandb-api-key``, ``WANDB_API_KEY`` or ``~/.netrc``) and W&B answers,
else offline. An offline run lives in the job folder under ``wandb/``; the sink
says where, and ``wandb sync DIR`` uploads it later.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import secrets
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError
from openrft.paths import atomic_write_text
from openrft.tracking.jsonl_files import iter_jsonl
from openrft.tracking.sinks import current_names

ROLLOUT_TABLE_EVERY = 5
MAX_TABLE_ROWS = 64
TABLE_COLUMNS = ("step", "prompt", "completion", "score", "valid", "reason")
DEFAULT_PROJECT = "openrft"
DEFAULT_BASE_URL = "https://api.wandb.ai"
IDENTITY_FILE = "wandb_run.json"  # in the job folder: the run a resume continues


def offline_parts(run_dir: Path, run_id: str) -> list[Path]:
    """Every offline folder of run ``run_id`` beside ``run_dir``, oldest first: a resumed job's run has
    one per start, and ``wandb sync`` given them all uploads them in order as one run."""
    parts = sorted(run_dir.parent.glob(f"offline-run-*-{run_id}"))
    return parts if run_dir in parts else [*parts, run_dir]


METRICS_STEP = "job/metrics_step"  # summary key: the last step whose metrics row was sent
# what W&B itself reads from the environment for what a recorded identity already says
IDENTITY_ENV = ("WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS",
                "WANDB_NOTES")  # fmt: skip
MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what W&B's settings accept


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "--wandb needs the optional W&B extra, which is not installed",
            field="wandb",
            hint="pip install 'openrft[wandb]'  (or run without --wandb)",
        ) from None
    return wandb


def find_api_key(explicit: str | None) -> str | None:
    """The API key from the flag, ``WANDB_API_KEY`` or ``~/.netrc`` (W&B's own login)."""
    if explicit:
        return explicit
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = (os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).split("://")[-1].split("/")[0]
    try:
        entry = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def reachable(url: str, timeout: float = 3.0) -> bool:
    import httpx

    try:
        httpx.head(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def check_mode() -> None:
    """A ``WANDB_MODE`` W&B would refuse, as one configuration error (checked at creation)."""
    forced = os.environ.get("WANDB_MODE")
    if forced and forced not in MODES:
        raise ConfigError(
            f"WANDB_MODE={forced} is not a W&B mode; use online, offline or disabled", field="wandb"
        )


def choose_mode(api_key: str | None, *, probe=reachable) -> tuple[str, str]:
    """``(mode, why)``: 'online' or 'offline' (or what ``WANDB_MODE`` says). A forced online mode
    whose server cannot be reached is offline at once, rather than after W&B's own wait."""
    forced = os.environ.get("WANDB_MODE")
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    if forced and forced not in ("online", "run"):
        return forced, "WANDB_MODE is set"
    if not api_key:
        return "offline", "no W&B API key" + (" (WANDB_MODE=online)" if forced else "")
    if not probe(base_url):
        return "offline", f"{base_url} cannot be reached" + (" (WANDB_MODE=online)" if forced else "")
    return "online", "WANDB_MODE is set" if forced else "API key found"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def run_identity(job_id: str, job_dir: Path, project: str | None, entity: str | None, run_id: str | None,
                 resuming: bool) -> dict[str, Any]:  # fmt: skip
    """The run a job logs to: the one its first start recorded when it resumes, else resolved from the
    flags and W&B's environment variables (a fresh id unless one is given)."""
    saved = job_dir / IDENTITY_FILE
    if resuming and saved.is_file():
        with contextlib.suppress(OSError, ValueError):
            identity = json.loads(saved.read_text())
            if isinstance(identity, dict) and identity.get("id"):
                kept = {
                    k: identity.get(k) for k in ("id", "project", "entity", "name", "group", "tags", "notes")
                }
                return {**kept, "resume": "allow"}
    env = os.environ
    given = run_id or env.get("WANDB_RUN_ID")
    tags = [t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip()]
    return {
        # a job from before the identity file continues the run named after it
        "id": given or (job_id if resuming else f"{job_id}-{secrets.token_hex(3)}"),
        "project": project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        "entity": entity or env.get("WANDB_ENTITY") or None,
        "name": env.get("WANDB_NAME") or job_id,
        "group": env.get("WANDB_RUN_GROUP") or None,
        "tags": tags or None,
        "notes": env.get("WANDB_NOTES") or None,
        "resume": "allow" if resuming or given else "never",
    }


class WandbSink:
    """A :class:`~openrft.tracking.sinks.MetricsSink` writing to one W&B run."""

    def __init__(self, run: Any, *, rollout_every: int = ROLLOUT_TABLE_EVERY, out=None):
        self.run = run
        self.rollout_every = max(1, rollout_every)
        self.out = out or sys.stderr
        self._last_table_step: int | None = None
        self._closed = False
        self._held: float | None = None  # a resumed run: the last train/step it already holds
        self._state: str | None = None
        self.mode = "online"
        run.define_metric("train/step")
        run.define_metric("*", step_metric="train/step")

    @classmethod
    def start(
        cls,
        *,
        job_id: str,
        job_dir: Path,
        config: dict[str, Any],
        project: str | None = None,
        entity: str | None = None,
        api_key: str | None = None,
        run_id: str | None = None,
        rollout_every: int = ROLLOUT_TABLE_EVERY,
        resuming: bool = False,
        probe=reachable,
        out=None,
    ) -> WandbSink:
        """Open the job's W&B run (continue it when ``resuming``), online when possible, else offline.

        ``config`` is the job's configuration as logged (secrets masked); ``api_key`` None
        looks for ``WANDB_API_KEY`` and ``~/.netrc``; ``run_id`` None: see :func:`run_identity`.
        """
        wandb = import_wandb()
        out = out or sys.stderr
        check_mode()
        api_key = find_api_key(api_key)
        mode, why = choose_mode(api_key, probe=probe)
        job_dir.mkdir(parents=True, exist_ok=True)
        identity = run_identity(job_id, job_dir, project, entity, run_id, resuming)
        options = dict(
            **identity,
            dir=os.environ.get("WANDB_DIR") or str(job_dir),
            config={"job_id": job_id, **config},
            reinit="create_new",
        )

        def settings(mode: str):
            return wandb.Settings(
                mode=mode,
                api_key=api_key if mode == "online" else None,
                silent=True,
                console="off",
                save_code=False,
                disable_git=True,
                x_disable_stats=True,
                x_save_requirements=False,
                init_timeout=30,
            )

        hidden = IDENTITY_ENV if resuming else ()  # a resume: the recorded run, whatever this shell says
        with _argv_without_secrets(), _environment_without(hidden):  # W&B records the command line
            try:
                run = wandb.init(settings=settings(mode), **options)
            except Exception as exc:  # W&B raises many kinds of errors when it cannot log in or connect
                if mode != "online":
                    raise ConfigError(f"W&B could not start a {mode} run: {exc}", field="wandb") from None
                print(f"W&B: online run failed ({exc}); logging offline instead", file=out)
                mode, why = "offline", "the online run failed"
                wandb.teardown()  # else W&B still holds the run id and refuses a second init with it
                run = wandb.init(settings=settings("offline"), **options)
        sink = cls(run, rollout_every=rollout_every, out=out)
        sink.mode = mode
        if mode != "disabled":
            kept = {k: v for k, v in identity.items() if k != "resume"}
            kept.update(id=run.id, entity=kept.get("entity") or getattr(run, "entity", None) or None)
            atomic_write_text(job_dir / IDENTITY_FILE, json.dumps(kept, indent=2))
        if mode == "disabled":
            print("W&B: disabled (WANDB_MODE=disabled); nothing is logged to it", file=out)
        elif mode == "offline":
            print(f"W&B: offline run ({why}) at {sink.run_dir}; upload it later with "
                  f"`wandb sync {' '.join(map(str, offline_parts(sink.run_dir, run.id)))}`", file=out)  # fmt: skip
        elif mode == "online":
            print(f"W&B: {run.url}", file=out)
        return sink

    @property
    def run_dir(self) -> Path:
        """The run's local folder (``.../wandb/offline-run-...`` when offline)."""
        return Path(self.run.settings.sync_dir)

    def catch_up(self, metrics_path: Path) -> int:
        """A resumed job's run: send the lines of ``metrics_path`` (cut back to the checkpoint) it does
        not hold yet, and from then on skip the steps it holds (the replayed ones). Returns the lines sent."""
        self._held = self.held_through()
        sent = 0
        for _, _, row in iter_jsonl(metrics_path):
            step = row.pop("step", None)
            if isinstance(step, int) and (self._held is None or step > self._held):
                self.run.log({**_numbers(current_names(row)), "train/step": step})
                sent += 1
        return sent

    def held_through(self) -> float | None:
        """The last ``train/step`` the run already holds: its summary online, its earlier offline
        files (the records they hold, up to where a killed process stopped writing) offline."""
        if self.mode == "online":  # set after each metrics row (tables carry train/step too)
            value = self.run.summary.get(METRICS_STEP)
            return float(value) if _number(value) else None
        current, name = self.run_dir, f"run-{self.run.id}.wandb"
        earlier = [
            p / name for p in current.parent.glob("offline-run-*") if p != current and (p / name).is_file()
        ]
        return max((step for path in earlier for step in _history_steps(path)), default=None)

    def job_ended(self, state: str) -> None:
        """The job's final state (COMPLETED, FAILED, ...), for the run's exit code and summary."""
        self._state = state

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._held is not None and step <= self._held:  # replayed after a resume: the run has it
            return
        self.run.log({**_numbers(metrics), "train/step": step})
        self.run.summary[METRICS_STEP] = step  # written after the row: never ahead of what the run holds

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        due = self._last_table_step is None or step - self._last_table_step >= self.rollout_every
        if not rows or not due or (self._held is not None and step <= self._held):
            return
        import wandb

        table = wandb.Table(columns=list(TABLE_COLUMNS))
        for row in rows[:MAX_TABLE_ROWS]:
            table.add_data(
                step,
                str(row.get("prompt", "")),
                str(row.get("completion", "")),
                row.get("score"),
                row.get("valid"),
                str(row.get("reason") or ""),
            )
        self.run.log({"rollouts/samples": table, "train/step": step})
        self._last_table_step = step

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._state is not None:
            self.run.summary["job/state"] = self._state
        failed = self._state in ("FAILED", "CANCELLED")
        self.run.finish(exit_code=1 if failed else 0)
        # finish() may return before W&B's service process has written the run file;
        # teardown waits for it (one job = one run per process, so nothing else is cut short).
        import wandb

        wandb.teardown()


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics W&B plots: numbers, NaN and infinity included (booleans and text left out)."""
    return {key: value for key, value in metrics.items() if _number(value)}


def run_records(path: Path) -> Iterator[Any]:
    """The records (``wandb_internal_pb2.Record``) of an offline run file: W&B's transaction log, a
    7-byte header, then 32 KiB blocks of records, each with a 7-byte header of CRC, length and type
    (a record longer than a block's rest comes in pieces). Stops at the first damage: what a killed
    process left ends in a torn record."""
    from wandb.proto import wandb_internal_pb2 as pb

    block, data = 32768, path.read_bytes()
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind not in (1, 2, 3, 4) or len(chunk) < length:
            return
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (2, 3):  # the first or a middle piece: the rest follows
            continue
        record = pb.Record()
        try:
            record.ParseFromString(pending)
        except Exception:  # protobuf's DecodeError: a torn record
            return
        yield record


def _history_steps(path: Path) -> Iterator[float]:
    """The ``train/step`` of each metrics row of an offline run file (a rollout table's row, logged
    before its step's metrics, carries the step too and does not count)."""
    for record in run_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        if "train/step" in items and not any(key.startswith("rollouts/") for key in items):
            with contextlib.suppress(ValueError):
                yield float(json.loads(items["train/step"]))


__all__ = ["WandbSink", "check_mode", "choose_mode", "find_api_key", "import_wandb", "run_identity",
           "run_records", "ROLLOUT_TABLE_EVERY"]  # fmt: skip


SECRET_FLAGS = ("--wandb-api-key",)


@contextlib.contextmanager
def _environment_without(names: Sequence[str]) -> Iterator[None]:
    """``os.environ`` without ``names`` for the block."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _argv_without_secrets() -> Iterator[None]:
    """``sys.argv`` with the value of every secret flag masked, while W&B reads it."""
    original = list(sys.argv)
    masked, hide = [], False
    for word in original:
        flag = word.split("=", 1)[0]
        if hide:
            masked.append("***")
        elif flag in SECRET_FLAGS and "=" in word:
            masked.append(f"{flag}=***")
        else:
            masked.append(word)
        hide = word in SECRET_FLAGS
    sys.argv[:] = masked
    try:
        yield
    finally:
        sys.argv[:] = original
