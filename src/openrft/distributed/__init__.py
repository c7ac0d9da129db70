"""Beyond one machine: rollouts on Ray actors, evaluator calls as Ray tasks.

With ``--ray-address`` (``local``, ``auto``, ``host:port`` or ``ray://host:port``) a job
keeps its trainer in the process that started it and moves the two parts that scale out
onto a Ray cluster:

* **rollouts** (:mod:`openrft.distributed.engine`): ``--rollout-workers`` actors, each
  holding one engine (the local transformers engine on CPU, or vLLM on a GPU) built from
  the base model's name and the adapter's structure. The loop's prompts are fanned out to
  them; at most ``--max-concurrent-rollouts`` sequences are in flight over all of them.
  After optimizer steps only the LoRA adapter's tensors travel, once, through the object
  store; every completion records the policy version it was sampled with, never more than
  ``--max-staleness`` versions behind the trainer. A dead actor is restarted and its
  prompts are sampled again elsewhere.
* **evaluation** (:mod:`openrft.distributed.scoring`): evaluator calls run in Ray tasks,
  at most ``--max-concurrent-evaluations`` at once; a failed task is retried once, then
  its completions are scored invalid.

Sampling is seeded per (seed, prompt, candidate), so a job gives the same rollouts, and
so the same training, whether it runs in one process or on a cluster.

The ``ray`` package is an optional extra (``pip install 'openrft[ray]'``); it is imported
only when one of these functions is called.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ray_engine": "openrft.distributed.engine",
    "RayEngine": "openrft.distributed.engine",
    "ray_scorer": "openrft.distributed.scoring",
    "RayScorer": "openrft.distributed.scoring",
    "connect": "openrft.distributed.cluster",
    "require_ray": "openrft.distributed.cluster",
    "check_address": "openrft.distributed.cluster",
    "WorkerSpec": "openrft.distributed.worker",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openrft.distributed' has no attribute {name!r}")
