"""Evaluator calls as Ray tasks, bounded by ``--max-concurrent-evaluations``, retried once.

:class:`RayScorer` sends the evaluator to the cluster once (pickled; a function loaded from
a ``file.py`` is pickled by value, so the file need not exist on other nodes, though its
folder is put on the workers' ``sys.path`` for sibling imports where it does exist). Each
call of :meth:`RayScorer.score_groups` then:

* cuts the groups (a prompt and its K completions) into at most ``tasks`` batches, one
  Ray task each, spread over the cluster's nodes; a task scores its batch with openrft's
  own runner (:func:`openrft.evaluators.score_groups`: per-call timeout, an evaluator
  exception scores that one completion invalid), at most ``max_concurrent_evaluations //
  tasks`` calls at a time, so at most ``max_concurrent_evaluations`` calls run at once
  over the whole cluster;
* when a task fails (its worker process crashed, its node died, or it outlived its
  deadline), each group of its batch is retried once in a task of its own; a group whose
  retry fails too is scored ``Score(0.0, is_valid=False, reason=...)``, and the job goes
  on (the usual invalid-rate check applies).

The tasks ask Ray for no CPU: the bound on concurrent calls is openrft's, and the rollout
actors may hold every core while scoring runs. ``SPREAD`` scheduling places them across
nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrft.errors import EvaluatorError
from openrft.records import Completion, Prompt, Score

from .cluster import connect

GRACE_S = 30.0  # beyond the evaluator timeout, before a silent task counts as failed
FILE_MODULE_PREFIX = "_openrft_evaluator_"  # modules openrft.evaluators.loader makes from files

Group = tuple[Prompt, Sequence[Completion]]

_EVALUATORS: dict[str, Any] = {}  # per worker process: unpickled evaluators by digest


def pack_evaluator(evaluator: Any) -> tuple[bytes, list[str]]:
    """``(pickled evaluator, folders to put on sys.path)``: what a Ray worker needs to rebuild it."""
    from ray import cloudpickle

    evaluator = dataclasses.replace(evaluator, dataset_adapter=None)  # only the driver reads data
    fn = evaluator.fn
    module = sys.modules.get(getattr(fn, "__module__", None) or type(fn).__module__)
    from_file = module is not None and module.__name__.startswith(FILE_MODULE_PREFIX)
    folders = [str(Path(module.__file__).parent)] if from_file and getattr(module, "__file__", None) else []
    if from_file:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(evaluator), folders
    except Exception as exc:
        raise EvaluatorError(
            f"evaluator {evaluator.name!r} cannot be sent to Ray workers: {type(exc).__name__}: {exc}",
            hint="create clients, locks or models inside the function (or lazily), not at module level",
        ) from None
    finally:
        if from_file:
            cloudpickle.unregister_pickle_by_value(module)


def score_batch(
    digest: str, blob: bytes, folders: list[str], groups: list[Group], concurrency: int, timeout: float
) -> list[list[Score]]:
    """The body of one scoring task (runs in a Ray worker process)."""
    import pickle

    from openrft.evaluators import score_groups

    evaluator = _EVALUATORS.get(digest)
    if evaluator is None:
        for folder in folders:
            if folder not in sys.path and Path(folder).is_dir():
                sys.path.insert(0, folder)
        evaluator = _EVALUATORS[digest] = pickle.loads(blob)
        os.environ.update(getattr(evaluator, "env", None) or {})  # the evaluator's own environment
    return score_groups(evaluator, groups, max_concurrency=concurrency, timeout=timeout)


class RayScorer:
    """Score groups with ``evaluator`` on Ray tasks (see the module docstring).

    ``tasks`` caps the tasks one call uses (default: the cluster's CPU count, at most
    ``max_concurrent_evaluations``); ``task_options`` are extra Ray task options.
    """

    def __init__(
        self,
        evaluator: Any,
        *,
        max_concurrent_evaluations: int,
        timeout: float,
        ray: Any,
        tasks: int | None = None,
        task_options: dict[str, Any] | None = None,
    ):
        if max_concurrent_evaluations < 1:
            raise EvaluatorError(f"max concurrent evaluations must be >= 1, not {max_concurrent_evaluations}")
        self.ray, self.limit, self.timeout = ray, max_concurrent_evaluations, timeout
        self.pointwise = getattr(evaluator, "mode", "pointwise") != "groupwise"
        blob, self.folders = pack_evaluator(evaluator)
        self.digest = hashlib.sha1(blob).hexdigest()
        self.blob_ref = ray.put(blob)
        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        self.tasks = max(1, min(tasks or cpus, self.limit))
        options = {"num_cpus": 0, "max_retries": 0, "scheduling_strategy": "SPREAD", **(task_options or {})}
        self._remote = ray.remote(score_batch).options(**options)
        self.task_failures = 0  # failed tasks (crashes, deadlines), retries included

    def score_groups(self, groups: Sequence[Group]) -> list[list[Score]]:
        """Scores for each group's completions, in order."""
        groups = [(p, list(cs)) for p, cs in groups]
        results: list[list[Score] | None] = [None] * len(groups)
        batches = _split(list(range(len(groups))), min(self.tasks, len(groups)))
        concurrency = max(1, self.limit // max(1, len(batches)))
        failed = self._run([(batch, concurrency) for batch in batches], groups, results)
        # once more, each call in a task of its own (a group's, for a groupwise evaluator): a call that
        # crashes or hangs its worker scores only itself invalid, as in the in-process pool
        units = [(i, j) for batch, _ in failed for i in batch
                 for j in (range(len(groups[i][1])) if self.pointwise else [None])]  # fmt: skip
        parts = [(groups[i][0], groups[i][1] if j is None else [groups[i][1][j]]) for i, j in units]
        scored: list[list[Score] | None] = [None] * len(parts)
        each = max(1, self.limit // self.tasks)  # at most `limit` calls at once, retries included
        for batch, error in self._run([([k], each) for k in range(len(parts))], parts, scored):
            for k in batch:
                invalid = Score(0.0, is_valid=False, reason=f"evaluator task failed twice: {error}")
                scored[k] = [invalid] * len(parts[k][1])
        for (i, j), part in zip(units, scored, strict=True):
            if j is None:
                results[i] = part
            else:
                results[i] = results[i] or [None] * len(groups[i][1])  # type: ignore[list-item]
                results[i][j] = part[0]  # type: ignore[index]
        return results  # type: ignore[return-value]

    def _run(
        self, work: list[tuple[list[int], int]], groups: list[Group], results: list
    ) -> list[tuple[list[int], str]]:
        """Run batches ``(group indices, concurrency)``, at most ``tasks`` at once, into ``results``.

        Returns the failed batches with the reason each failed.
        """
        ray = self.ray
        waiting = list(work)
        in_flight: dict[Any, tuple[list[int], float]] = {}  # ref -> (batch, deadline)
        failed: list[tuple[list[int], str]] = []
        while waiting or in_flight:
            while waiting and len(in_flight) < self.tasks:
                batch, concurrency = waiting.pop(0)
                # a pointwise evaluator is called once per completion, a groupwise one once per group
                calls = sum(len(groups[i][1]) for i in batch) if self.pointwise else len(batch)
                deadline = time.monotonic() + self.timeout * math.ceil(calls / concurrency) + GRACE_S
                batch_groups = [groups[i] for i in batch]
                ref = self._remote.remote(
                    self.digest, self.blob_ref, self.folders, batch_groups, concurrency, self.timeout
                )
                in_flight[ref] = (batch, deadline)
            soonest = min(deadline for _, deadline in in_flight.values())
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(0.0, soonest - time.monotonic()))
            for ref in ready:
                batch, _ = in_flight.pop(ref)
                try:
                    scores = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    self.task_failures += 1
                    failed.append((batch, _first_line(exc)))
                    continue
                for i, group_scores in zip(batch, scores, strict=True):
                    results[i] = group_scores
            now = time.monotonic()
            for ref in [ref for ref, (_, deadline) in in_flight.items() if deadline <= now]:
                batch, _ = in_flight.pop(ref)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                self.task_failures += 1
                failed.append((batch, "no answer before its deadline"))
        return failed


def _split(indices: list[int], parts: int) -> list[list[int]]:
    """``indices`` in ``parts`` contiguous batches of near-equal size."""
    size, extra = divmod(len(indices), max(1, parts))
    out, start = [], 0
    for p in range(max(1, parts)):
        end = start + size + (1 if p < extra else 0)
        if end > start:
            out.append(indices[start:end])
        start = end
    return out


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip().rstrip(":")


def ray_scorer(
    address: str, evaluator: Any, *, max_concurrent_evaluations: int | None, timeout: float
) -> RayScorer:
    """The evaluator on the Ray cluster at ``address``: ``score_groups`` with the contract of the
    in-process pool (the job's scoring rules around it are the same for both, see
    :func:`openrft.train.setup.make_scorer`)."""
    from openrft.evaluators.runner import DEFAULT_CONCURRENCY

    ray = connect(address)
    limit = max_concurrent_evaluations or DEFAULT_CONCURRENCY
    return RayScorer(evaluator, max_concurrent_evaluations=limit, timeout=timeout, ray=ray)


__all__ = ["RayScorer", "pack_evaluator", "ray_scorer", "score_batch"]
