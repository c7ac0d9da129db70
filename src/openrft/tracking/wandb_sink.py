"""Weights & Biases logging for a job (optional extra: ``pip install 'openrft[wandb]'``).

The run gets the resolved configuration as its hyperparameters (the API key
masked), every step's metrics against ``train/step`` (so a resumed job can log
steps again without W&B dropping them), and every ``rollout_every`` steps a table
of sampled rollouts: prompt, completion, score, validity and the evaluator's reason.

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
        options = dict(
            project=project or DEFAULT_PROJECT,
            entity=entity,
            id=run_id or job_id,
            name=job_id,
            dir=str(job_dir),
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

    def log(self, step: int, metrics: dict[str, float]) -> None:
        payload = {key: value for key, value in metrics.items() if _finite(value)}
        payload["train/step"] = step
        self.run.log(payload)

    def log_rollouts(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        due = self._last_table_step is None or step - self._last_table_step >= self.rollout_every
        if not rows or not due:
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
        self.run.finish()
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
