"""The Ray rollout engine: prompts fanned out to rollout actors, the adapter shipped as a snapshot.

:class:`RayEngine` is a :class:`~openrft.records.RolloutEngine` that lives in the trainer's
process. A call to :meth:`RayEngine.generate`:

1. renders the prompts to token ids (the trainer's tokenizer, so prompt tokens are exactly
   the trainer's);
2. makes sure an adapter snapshot recent enough exists: when the last one is more than
   ``max_staleness`` versions behind ``policy_version``, the live adapter's tensors (PEFT's
   ``get_peft_model_state_dict``: megabytes, never the base weights) are put into the
   object store once, tagged with the version;
3. cuts the prompts into parcels (:func:`parcel_size`) and keeps ``CALLS_PER_WORKER`` parcels
   queued on each live actor, handing the next parcel to whichever actor returns first. Each call carries a
   handle to the snapshot and the oldest version it may sample with; an actor whose
   adapter is older (a fresh or restarted one, or after a step) loads the snapshot first;
4. collects the completions in prompt order and checks that each one's ``policy_version``
   is at least ``policy_version - max_staleness``.

A parcel whose actor dies (process crash, node loss, ``ray.kill``) is put back at the front
of the queue and sampled again by whichever actor is free, the restarted one included, so
no prompt is lost; only a parcel's successful return is kept, so none is returned twice.
An actor that fails more than ``max_restarts`` times is retired; when none is left the
call fails with :class:`RolloutError`. An exception raised by the engine inside an actor
(bad input, a model error) is raised here as is.

Sampling is seeded per ``(seed, prompt_id, candidate_index)``, so the completions do not
depend on which actor samples which prompt: they match an in-process engine's up to float
rounding of the forward pass.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from openrft.errors import ConfigError, OpenRFTError, RolloutAborted, RolloutError
from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout import DEFAULT_MAX_CONCURRENT
from openrft.rollout.prompts import encode_prompt
from openrft.rollout.sampling import check_params
from openrft.settings import RaySettings

from .cluster import check_capacity, connect, require_ray
from .worker import TRAINABLE, AdapterSnapshot, RolloutWorker, WorkerSpec

DEFAULT_MAX_RESTARTS = 3
PARCELS_PER_WORKER = 4  # a call is cut into about this many parcels per actor, for balance...
BATCHES_PER_PARCEL = 2  # ...as long as a parcel holds this many of an actor's batches
CALLS_PER_WORKER = 2  # parcels queued on one actor at a time, so it never waits for the next
START_TIMEOUT_S = 900.0  # model loading (vLLM on a large model takes minutes)

Items = Sequence[tuple[str, Sequence[int]]]


class RayEngine:
    """Rollouts on ``workers`` Ray actors built from ``spec``, sampling with ``model``'s adapter.

    ``model`` is the trainer's live PEFT model (read, never changed); ``policy_version`` is
    set by the training loop after each optimizer step. ``actor_options`` are Ray actor
    options (resources); ``prompts_per_call`` fixes the parcel size (default: about
    ``PARCELS_PER_WORKER`` parcels per actor per call, see :func:`parcel_size`).
    """

    should_abort: Callable[[], bool] | None = None  # asked at each wait for the actors (RolloutEngine)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: WorkerSpec,
        *,
        workers: int,
        max_staleness: int = 0,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        prompts_per_call: int | None = None,
        actor_options: dict[str, Any] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        stop_waiting: Callable[[], bool] | None = None,
    ):
        if workers < 1 or max_staleness < 0 or max_restarts < 0:
            raise ConfigError(f"invalid Ray engine settings: {workers=}, {max_staleness=}, {max_restarts=}")
        self.ray = require_ray()
        self.needs_adapter_files = False  # actors load snapshots of the live model's adapter
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.policy_version = 0
        self.max_staleness, self.max_restarts = max_staleness, max_restarts
        self.prompts_per_call = prompts_per_call
        self.actor_failures = 0  # deaths observed (each one restarts the actor)
        self.requeued_prompts = 0
        self.snapshots = 0  # adapter snapshots put into the object store
        self.adapter_bytes = 0  # size of the last snapshot
        self._snapshot: AdapterSnapshot | None = None
        options = {"max_restarts": max_restarts, "max_task_retries": 0, **(actor_options or {})}
        actor_cls = self.ray.remote(RolloutWorker).options(**options)
        self.workers = [actor_cls.remote(spec) for _ in range(workers)]
        self._alive = [True] * workers
        self._incarnation = [0] * workers  # deaths seen per actor
        self._probes: dict[int, Any] = {}  # actor -> a call that returns once it has restarted
        self._finalizer = weakref.finalize(self, _kill_actors, self.ray, list(self.workers))
        self._wait_until_started(start_timeout, stop_waiting)

    # ------------------------------------------------------------------------- public

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt in order, ``params.n`` completions (candidate_index 0..n-1)."""
        items = [(p.prompt_id, encode_prompt(self.tokenizer, p)) for p in prompts]
        return self.generate_from_ids(items, params)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The token ids that end a response on every actor."""
        from openrft.models import end_token_ids

        return tuple(self.spec.stop_token_ids) or end_token_ids(self.tokenizer, self.model)

    def generate_from_ids(
        self, items: Items, params: SamplingParams, *, stop_token_ids: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """Like :meth:`generate` for prompts already tokenized: ``(prompt_id, token_ids)`` pairs (an
        agent's calls, rendered by the job's policy server). The actors stop at their own end tokens."""
        if stop_token_ids is not None and set(stop_token_ids) != set(self.stop_token_ids):
            raise ConfigError(
                "Ray actors stop at the model's end tokens; other stop token ids are not supported"
            )
        check_params(params)
        if not items:
            return []
        snapshot = self.snapshot()
        min_version = self.oldest_version()
        size = self.prompts_per_call or parcel_size(
            len(items),
            params.n,
            sum(self._alive),
            self.spec.max_concurrent_rollouts or DEFAULT_MAX_CONCURRENT,
        )
        dispatch = _Dispatch(self, items, params, size, snapshot, min_version)
        return dispatch.run()

    def set_policy(self, version: int, adapter: Any = None) -> None:
        """After an optimizer step: later calls sample version ``version`` of the live model.

        The snapshot itself is taken at the next :meth:`generate` (several optimizer steps
        may happen between two rounds; only the adapter sampled with is shipped).
        """
        self.policy_version = version

    def round_metrics(self, completions: Sequence[Completion]) -> dict[str, float]:
        """The cluster's side of a round, logged with it: actor deaths and prompts sampled again (counts
        since the job started), adapter snapshots sent, and how many versions the round's completions lag
        behind the trainer (at most ``max_staleness``)."""
        lags = [self.policy_version - c.policy_version for c in completions]
        return {
            "rollout/actor_failures": float(self.actor_failures),
            "rollout/requeued_prompts": float(self.requeued_prompts),
            "rollout/adapter_snapshots": float(self.snapshots),
            "rollout/policy_lag_max": float(max(lags, default=0)),
        }

    def oldest_version(self) -> int:
        """The oldest adapter version actors may sample with: ``max_staleness`` behind the trainer's, but
        never none at all (-1, the bare base model: a warm-start or resumed adapter must be loaded)."""
        return max(0, self.policy_version - self.max_staleness)

    def snapshot(self) -> AdapterSnapshot:
        """The adapter snapshot actors load: taken now when the last is too old for ``max_staleness``."""
        if self._snapshot is None or self._snapshot.version < self.oldest_version():
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.model, adapter_name=TRAINABLE)
            state = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}
            self.adapter_bytes = sum(t.numel() * t.element_size() for t in state.values())
            self._snapshot = AdapterSnapshot(self.policy_version, self.ray.put(state))
            self.snapshots += 1
        return self._snapshot

    def worker_info(self) -> list[dict[str, Any]]:
        """Each live actor's process id, adapter version and restart flag."""
        live = [w for w, alive in zip(self.workers, self._alive, strict=True) if alive]
        return self.ray.get([w.info.options(max_task_retries=-1).remote() for w in live])

    def available(self, index: int) -> bool:
        """Whether actor ``index`` takes work now (alive and not restarting)."""
        return self._alive[index] and index not in self._probes

    def close(self) -> None:
        """Stop the rollout actors (the cluster itself keeps running)."""
        self._finalizer()

    # ------------------------------------------------------------------------- internals

    def _wait_until_started(self, timeout: float, stop: Callable[[], bool] | None = None) -> None:
        """Until every actor answers; a cancel (Ctrl-C, SIGTERM, `rftj cancel`) stops the wait at once."""
        ray = self.ray
        try:
            refs, deadline = [w.info.remote() for w in self.workers], time.monotonic() + timeout
            while True:  # in short waits, so that a signal (Ctrl-C, SIGTERM) is handled meanwhile
                _, waiting = ray.wait(
                    refs, num_returns=len(refs), timeout=min(1.0, deadline - time.monotonic())
                )
                if not waiting:
                    break
                if stop is not None and stop():
                    self.close()
                    raise RolloutAborted("stopped while waiting for the rollout actors to start")
                if time.monotonic() >= deadline:
                    raise ray.exceptions.GetTimeoutError()
            ray.get(refs)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RolloutError(
                f"the {len(self.workers)} rollout actors did not start within {timeout:g} s",
                hint="check that the cluster has free resources (`ray status`) and that every node "
                "can load the base model",
            ) from None
        except ray.exceptions.RayError as exc:
            self.close()
            raise _actor_error(exc, "a rollout actor failed to start") from None

    def actor_failed(self, index: int, incarnation: int, exc: Exception) -> None:
        """A call sent to incarnation ``incarnation`` of actor ``index`` failed: the actor died.

        Counted once per incarnation (its other queued calls fail too). Until the restarted
        actor answers a probe it gets no work; after ``max_restarts`` deaths it is retired.
        """
        if incarnation != self._incarnation[index] or not self._alive[index]:
            return
        self._incarnation[index] += 1
        self.actor_failures += 1
        if self._incarnation[index] > self.max_restarts:
            self._retire(index, exc)
        else:  # Ray retries the probe while the actor restarts; it fails once the actor is dead for good
            self._probes[index] = self.workers[index].info.options(max_task_retries=-1).remote()

    def probe_returned(self, index: int) -> None:
        ref = self._probes.pop(index)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self._retire(index, exc)

    def _retire(self, index: int, exc: Exception) -> None:
        self._alive[index] = False
        self._probes.pop(index, None)
        if not any(self._alive):
            raise _actor_error(
                exc, f"every rollout actor died or was stopped (restarts allowed: {self.max_restarts} each)"
            )


RESTART_TIMEOUT_S = 300.0  # a restarting actor that no node can place for this long fails the round


def parcel_size(prompts: int, n: int, actors: int, in_flight: int) -> int:
    """Prompts per actor call: small enough that every actor gets work and a slow one can be
    helped (about ``PARCELS_PER_WORKER`` parcels each), big enough that a call keeps the actor's
    batch full (``BATCHES_PER_PARCEL`` times its ``in_flight`` sequences), since a call's last
    sequences decode in an emptying batch."""
    actors = max(1, actors)
    balance = math.ceil(prompts / (actors * PARCELS_PER_WORKER))
    fill = math.ceil(BATCHES_PER_PARCEL * in_flight / max(1, n))
    return max(1, min(max(balance, fill), math.ceil(prompts / actors)))


class _Dispatch:
    """One :meth:`RayEngine.generate_from_ids` call: parcels queued on actors, failures re-queued."""

    def __init__(
        self,
        engine: RayEngine,
        items: Items,
        params: SamplingParams,
        size: int,
        snapshot: AdapterSnapshot,
        min_version: int,
    ):
        self.engine, self.items, self.params, self.size = engine, items, params, size
        self.snapshot, self.min_version = snapshot, min_version
        self.pending: deque[int] = deque(range(0, len(items), size))  # parcel start indices
        self.in_flight: dict[Any, tuple[int, int, int]] = {}  # ref -> (actor, incarnation, start)
        self.queued = [0] * len(engine.workers)
        self.results: list[list[Completion] | None] = [None] * len(items)

    def run(self) -> list[list[Completion]]:
        ray = self.engine.ray
        try:
            stalled_since = None  # when every live actor began restarting, none answering
            while self.pending or self.in_flight:
                self._submit()
                probes = {ref: actor for actor, ref in self.engine._probes.items()}
                ready, _ = ray.wait([*self.in_flight, *probes], num_returns=1, timeout=1.0)  # signals get in
                if self.engine.should_abort is not None and self.engine.should_abort():
                    raise RolloutAborted()
                if not ready:
                    stalled_since = self._check_stalled(stalled_since)
                    continue
                stalled_since, ref = None, ready[0]
                if ref in probes:
                    self.engine.probe_returned(probes[ref])
                else:
                    self._collect(ref)
        except BaseException:
            for ref in self.in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise
        return [groups for groups in self.results if groups is not None]

    def _check_stalled(self, since: float | None) -> float | None:
        """Fail once no live actor has come back from a restart for ``RESTART_TIMEOUT_S`` (the cluster has
        no room to place them): the job stops with an error instead of waiting for ever."""
        engine = self.engine
        if self.in_flight or not engine._probes:
            return None
        since = since or time.monotonic()
        if time.monotonic() - since > RESTART_TIMEOUT_S:
            raise RolloutError(
                f"no rollout actor came back within {RESTART_TIMEOUT_S:g} s of a restart",
                hint="the cluster has no room to place them: check `ray status` (a lost node, CPUs held by "
                "other work), then resume the job",
            )
        return since

    def _submit(self) -> None:
        engine = self.engine
        while self.pending:
            live = [
                i
                for i in range(len(engine.workers))
                if engine.available(i) and self.queued[i] < CALLS_PER_WORKER
            ]
            if not live:
                return
            actor = min(live, key=lambda i: self.queued[i])
            start = self.pending.popleft()
            parcel = [(pid, list(ids)) for pid, ids in self.items[start : start + self.size]]
            ref = engine.workers[actor].generate.remote(parcel, self.params, self.snapshot, self.min_version)
            self.in_flight[ref] = (actor, engine._incarnation[actor], start)
            self.queued[actor] += 1

    def _collect(self, ref: Any) -> None:
        ray, engine = self.engine.ray, self.engine
        actor, incarnation, start = self.in_flight.pop(ref)
        self.queued[actor] -= 1
        parcel = self.items[start : start + self.size]
        try:
            groups = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the engine raised inside the actor
            raise _actor_error(exc, "sampling failed on a rollout actor") from None
        except ray.exceptions.RayError as exc:  # the actor died or became unreachable
            engine.requeued_prompts += len(parcel)
            self.pending.appendleft(start)
            engine.actor_failed(actor, incarnation, exc)
            return
        self._check(groups, parcel)
        self.results[start : start + len(parcel)] = groups

    def _check(self, groups: list[list[Completion]], parcel: Items) -> None:
        if [g[0].prompt_id if g else None for g in groups] != [pid for pid, _ in parcel]:
            raise RolloutError("a rollout actor returned completions for the wrong prompts")
        for group in groups:
            for completion in group:
                if completion.policy_version < self.min_version:
                    raise RolloutError(
                        f"a rollout of prompt {completion.prompt_id} used policy version "
                        f"{completion.policy_version}, older than the {self.min_version} allowed "
                        f"(policy version {self.engine.policy_version}, --max-staleness {self.engine.max_staleness})"
                    )


def _actor_error(exc: Exception, what: str) -> OpenRFTError:
    """An openrft error raised inside an actor as itself; anything else as a RolloutError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, OpenRFTError):
        return cause
    text = str(cause if cause is not None else exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return RolloutError(f"{what}: {lines[-1] if lines else type(exc).__name__}")


def _kill_actors(ray: Any, actors: list[Any]) -> None:
    if not ray.is_initialized():
        return
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


# ----------------------------------------------------------------------------- from a job's settings


def ray_engine(
    settings: RaySettings,
    kind: str,
    model: Any,
    tokenizer: Any,
    base_model: str,
    concurrency: int | None,
    vllm_options: dict[str, Any] | None = None,
    stop_waiting: Callable[[], bool] | None = None,
) -> RayEngine:
    """The job's rollout engine on the Ray cluster at ``settings.address``.

    ``concurrency`` (``--max-concurrent-rollouts`` or the evaluator's) bounds the sequences
    in flight over all actors together: each of the ``settings.workers`` actors gets an
    equal share (and there are never more actors than sequences allowed). ``kind`` is the
    engine each actor runs (``local`` or ``vllm``); ``vllm_options`` go to each actor's ``vllm.LLM``.
    """
    from openrft.models import end_token_ids

    workers, per_worker = plan_workers(settings.workers, concurrency)
    ray = connect(settings.address, num_cpus=workers)
    resources = _actor_resources(ray, kind, workers)
    check_capacity(ray, workers, {k: v for k, v in resources.items() if v})
    spec = WorkerSpec(
        base_model=_portable_model_name(base_model),
        lora_config=model.peft_config[TRAINABLE],
        engine=kind,
        max_concurrent_rollouts=per_worker,
        stop_token_ids=end_token_ids(tokenizer, model),
        torch_threads=int(resources["CPU"]) if kind == "local" else None,
        vllm_options=dict(vllm_options or {}) if kind == "vllm" else {},
    )
    return RayEngine(
        model,
        tokenizer,
        spec,
        workers=workers,
        max_staleness=settings.max_staleness,
        actor_options={"num_cpus": resources["CPU"], "num_gpus": resources["GPU"]},
        stop_waiting=stop_waiting,
    )


def plan_workers(workers: int, concurrency: int | None) -> tuple[int, int | None]:
    """``(actors, sequences in flight per actor)`` so that all actors together stay within ``concurrency``.

    Unset ``concurrency`` leaves each actor its engine's default.
    """
    if not concurrency:
        return workers, None
    workers = min(workers, concurrency)
    return workers, concurrency // workers


def _actor_resources(ray: Any, engine: str, workers: int) -> dict[str, float]:
    """CPU actors share the cluster's cores (at least one each, as many as lets every actor fit on a
    node); vLLM takes a GPU."""
    if engine == "vllm":
        return {"CPU": 1.0, "GPU": 1.0}
    nodes = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")] or [1.0]
    total = ray.cluster_resources().get("CPU", 1.0)
    share = max(1, min(int(total // workers), int(max(nodes))))
    while share > 1 and sum(int(n // share) for n in nodes) < workers:  # every actor must fit on a node
        share -= 1
    return {"CPU": float(share), "GPU": 0.0}


def _portable_model_name(name: str) -> str:
    """A model directory given relative to this process's folder, made absolute for the workers."""
    from pathlib import Path

    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


__all__ = [
    "RayEngine",
    "parcel_size",
    "ray_engine",
    "plan_workers",
    "PARCELS_PER_WORKER",
    "CALLS_PER_WORKER",
    "DEFAULT_MAX_RESTARTS",
]
