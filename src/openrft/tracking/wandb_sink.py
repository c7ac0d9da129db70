"""Weights & Biases logging for a job (optional extra: ``pip install 'openrft[wandb]'``).

The run gets the resolved configuration as its hyperparameters (the API key
masked), every step's metrics against ``train/step``, and every ``rollout_every`` steps
a table of sampled rollouts: prompt, completion, score, validity and the evaluator's
reason. A resumed job continues the same run; what it replays after its checkpoint, W&B
already has, so those lines are not sent again (:meth:`WandbSink.skip_replayed`). The run
ends as the job does: a failed or cancelled job's run is marked failed, its state in the
summary (``job/state``).

W&B's own environment variables apply where no flag says otherwise: ``WANDB_PROJECT``,
``WANDB_ENTITY``, ``WANDB_RUN_ID``, ``WANDB_NAME`` (the run's display name, else the job id)
and ``WANDB_DIR`` (else the job folder).

Mode: ``WANDB_MODE`` when the user set it; otherwise online when an API key is
known (``--wandb-api-key``, ``WANDB_API_KEY`` or ``~/.netrc``) and W&B answers,
else offline. An offline run lives in the job folder under ``wandb/``; the sink
says where, and ``wandb sync DIR`` uploads it later.
"""

from __future__ import annotations

import contextlib
import math
import netrc
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError

ROLLOUT_TABLE_EVERY = 5
MAX_TABLE_ROWS = 64
TABLE_COLUMNS = ("step", "prompt", "completion", "score", "valid", "reason")
DEFAULT_PROJECT = "openrft"
DEFAULT_BASE_URL = "https://api.wandb.ai"


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


def choose_mode(api_key: str | None, *, probe=reachable) -> tuple[str, str]:
    """``(mode, why)``: 'online' or 'offline' (or what ``WANDB_MODE`` says)."""
    forced = os.environ.get("WANDB_MODE")
    if forced:
        return forced, "WANDB_MODE is set"
    if not api_key:
        return "offline", "no W&B API key"
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    if not probe(base_url):
        return "offline", f"{base_url} cannot be reached"
    return "online", "API key found"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class WandbSink:
    """A :class:`~openrft.tracking.sinks.MetricsSink` writing to one W&B run."""

    def __init__(self, run: Any, *, rollout_every: int = ROLLOUT_TABLE_EVERY, out=None):
        self.run = run
        self.rollout_every = max(1, rollout_every)
        self.out = out or sys.stderr
        self._last_table_step: int | None = None
        self._closed = False
        self._skip_lines, self._skip_tables_through = 0, -1
        self._state: str | None = None
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
        probe=reachable,
        out=None,
    ) -> WandbSink:
        """Open (or continue) the job's W&B run, online when possible, else offline.

        ``config`` is the job's configuration as logged (secrets masked); ``api_key`` None
        looks for ``WANDB_API_KEY`` and ``~/.netrc``; ``run_id`` None uses the job id.
        """
        wandb = import_wandb()
        out = out or sys.stderr
        api_key = find_api_key(api_key)
        mode, why = choose_mode(api_key, probe=probe)
        job_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ
        options = dict(
            project=project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            entity=entity,
            id=run_id or env.get("WANDB_RUN_ID") or job_id,
            name=env.get("WANDB_NAME") or job_id,
            dir=env.get("WANDB_DIR") or str(job_dir),
            config={"job_id": job_id, **config},
            resume="allow",
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
                init_timeout=60,
            )

        with _argv_without_secrets():  # W&B records the command line in the run's metadata
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
        if mode == "offline":
            print(
                f"W&B: offline run ({why}) at {sink.run_dir}; upload it later with `wandb sync {sink.run_dir}`",
                file=out,
            )
        elif mode == "online":
            print(f"W&B: {run.url}", file=out)
        return sink

    @property
    def run_dir(self) -> Path:
        """The run's local folder (``.../wandb/offline-run-...`` when offline)."""
        return Path(self.run.settings.sync_dir)

    def skip_replayed(self, lines: int, through_step: int) -> None:
        """A resumed job logs again the ``lines`` metric lines it wrote after its checkpoint (steps up
        to ``through_step``): the run has them already, so they are not sent twice."""
        self._skip_lines, self._skip_tables_through = max(0, lines), through_step

    def job_ended(self, state: str) -> None:
        """The job's final state (COMPLETED, FAILED, ...), for the run's exit code and summary."""
        self._state = state

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._skip_lines > 0:
            self._skip_lines -= 1
            return
        payload = {key: value for key, value in metrics.items() if _finite(value)}
        payload["train/step"] = step
        self.run.log(payload)

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        due = self._last_table_step is None or step - self._last_table_step >= self.rollout_every
        if not rows or not due or step <= self._skip_tables_through:
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


__all__ = ["WandbSink", "choose_mode", "find_api_key", "import_wandb", "ROLLOUT_TABLE_EVERY"]


SECRET_FLAGS = ("--wandb-api-key",)


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
