"""A job's progress: a terminal bar (rounds done, ETA, the latest step's headline numbers), or, where
no terminal shows it (a detached job's log, output piped to a file), a plain line as each round starts.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A rich progress bar over rollout rounds (the unit whose total is known up front)."""

    def __init__(
        self, total_rounds: int, *, enabled: bool = True, description: str = "training", lines: bool = False
    ):
        self.enabled = enabled and total_rounds > 0 and not lines
        self.lines, self.total_rounds = lines, total_rounds
        self._progress = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds  ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total_rounds, status="starting")

    def round_started(self, number: int, prompts: int, candidates: int) -> None:
        """Round ``number`` (1-based, over the whole job) starts sampling: a line in plain mode."""
        if self.lines:
            print(
                time.strftime("%H:%M:%S"),
                f"round {number}/{self.total_rounds}: sampling {prompts} prompts x {candidates} candidates",
                file=sys.stderr,
                flush=True,
            )

    def update(self, *, rounds_done: int, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if self._progress is None:
            return
        parts = [f"step {step}", f"epoch {epoch + 1}"]
        if "reward/mean" in metrics:
            parts.append(f"reward {metrics['reward/mean']:.3f}")
        if "eval/reward" in metrics:
            parts.append(f"eval {metrics['eval/reward']:.3f}")
        if metrics.get("completion/truncated_frac"):
            parts.append(f"cut off {100 * metrics['completion/truncated_frac']:.0f}%")
        if metrics.get("reward/invalid_count"):
            parts.append(f"invalid {metrics['reward/invalid_count']:.0f}")
        if "filter/zero_variance_frac" in metrics:
            parts.append(f"filtered {100 * metrics['filter/zero_variance_frac']:.0f}%")
        if "throughput/rollout_tokens_per_s" in metrics:
            parts.append(f"{metrics['throughput/rollout_tokens_per_s']:.0f} tok/s")
        self._progress.update(self._task, completed=rounds_done, status="  ".join(parts))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
