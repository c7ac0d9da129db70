"""Connecting to a Ray cluster: ``--ray-address local | auto | host:port | ray://host:port``.

* ``local`` starts a Ray instance inside this process (one machine; it ends with the process).
* ``auto`` joins the cluster this machine belongs to (started with ``ray start --head``).
* ``ray://host:port`` connects through the Ray Client (needs ``ray[client]``).

A connection that already exists in this process (say a test's ``ray.init``) is reused
whatever the address. Ray is imported only here and only when asked for, so openrft runs
without it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from openrft.errors import ConfigError

INSTALL_HINT = "install the optional extra: pip install 'openrft[ray]'"
CONNECT_TIMEOUT_S = 5.0


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray-address needs the 'ray' package, which is not installed",
            field="ray_address",
            hint=INSTALL_HINT,
        ) from None
    return ray


def connect(address: str, *, num_cpus: int | None = None) -> Any:
    """Connect this process to the cluster at ``address`` (see the module docstring); return ``ray``.

    ``num_cpus`` is the least number of CPUs a ``local`` instance is started with (its
    default is this machine's core count), so that every rollout actor can be placed.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address.strip()
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        options.update(num_cpus=max(os.cpu_count() or 1, num_cpus or 1), log_to_driver=False)
    elif address.startswith("ray://"):
        _require_client()
        options = {"address": address, "logging_level": logging.WARNING}
    else:
        options["address"] = address
    try:
        if address != "local":
            _check_reachable(ray, address)
        ray.init(**options)
    except (OSError, RuntimeError, ValueError) as exc:  # ConnectionError and TimeoutError included
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--ray-address {address}: cannot connect to a Ray cluster ({first})",
            field="ray_address",
            hint="start one with `ray start --head` on the head node, or use --ray-address local "
            "to run Ray on this machine only",
        ) from None
    return ray


def _check_reachable(ray: Any, address: str) -> None:
    """Fail within seconds when nothing listens at the address (``ray.init`` would retry for minutes)."""
    target = address.removeprefix("ray://")
    if target == "auto":
        try:  # the address `ray start` left on this machine (raises ConnectionError when there is none)
            target = ray._private.services.canonicalize_bootstrap_address(target) or ""
        except ConnectionError:
            raise
        except Exception:  # a Ray version without this helper: let ray.init find out
            return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, not {target!r}")
    with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
        pass


def _require_client() -> None:
    try:
        import grpc  # noqa: F401  (the Ray Client's transport)
    except ImportError:
        raise ConfigError(
            "a ray:// address uses the Ray Client, which needs 'ray[client]'",
            field="ray_address",
            hint="pip install 'ray[client]==2.60.0', or run the job on a cluster node with --ray-address auto",
        ) from None


def cluster_capacity(ray: Any) -> dict[str, float]:
    """Total CPUs and GPUs of the connected cluster (0 when it has none)."""
    resources = ray.cluster_resources()
    return {"CPU": float(resources.get("CPU", 0.0)), "GPU": float(resources.get("GPU", 0.0))}


def check_capacity(ray: Any, workers: int, per_worker: dict[str, float]) -> None:
    """Fail at once, naming the shortfall, when ``workers`` actors can never be placed."""
    capacity = cluster_capacity(ray)
    for resource, amount in per_worker.items():
        needed = workers * amount
        if needed > capacity.get(resource, 0.0) + 1e-9:
            raise ConfigError(
                f"--rollout-workers {workers} needs {needed:g} {resource}s on the Ray cluster "
                f"({amount:g} per worker), which has {capacity.get(resource, 0.0):g}",
                field="rollout_workers",
                hint="lower --rollout-workers, or add nodes to the cluster"
                + (" (the vllm engine needs one GPU per worker)" if resource == "GPU" else ""),
            )


__all__ = ["INSTALL_HINT", "check_capacity", "cluster_capacity", "connect", "require_ray"]
