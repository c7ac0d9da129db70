"""Connecting to a Ray cluster: ``--ray-address local | auto | host:port | ray://host:port``.

* ``local`` starts a private Ray instance for this process (one machine; it ends with the
  process), even where this machine belongs to a cluster.
* ``auto`` joins the cluster this machine belongs to (started with ``ray start --head``).
* ``host:port`` joins the cluster whose head listens there (the GCS port, 6379 by default).
* ``ray://host:port`` connects through the Ray Client (needs ``ray[client]``; port 10001).

An address where nothing answers, or where something other than a gRPC server answers (the
dashboard's 8265, a web server), fails within seconds instead of ``ray.init`` retrying for
minutes. ``ray.init`` installs its own SIGTERM handler, which kills the process; openrft's (stop
at the next step, checkpoint, end CANCELLED) is put back.

A connection that already exists in this process (say a test's ``ray.init``) is reused
whatever the address. Ray is imported only here and only when asked for, so openrft runs
without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
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
    if address == "local":  # never the cluster this machine belongs to (RAY_ADDRESS, `ray start`)
        options.update(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus or 1), log_to_driver=False)
    elif address.startswith("ray://"):
        _require_client()
        options = {"address": address, "logging_level": logging.WARNING}
    else:  # the actors' own output stays in the cluster's logs, as with `local`: the job's stderr is the job's
        options.update(address=address, log_to_driver=False)
    set_auth = address != "local" and "RAY_AUTH_MODE" not in os.environ and _token_available()
    if set_auth:
        os.environ["RAY_AUTH_MODE"] = "token"  # as Ray does for 'auto' only: HOST:PORT needs the token too
        _reload_auth_config()  # Ray read its settings when imported: without this the token is never sent
    try:
        with _token_mode_kept_only_if_connected(set_auth):
            if address != "local":
                _check_reachable(ray, address)
            with _keep_sigterm_handler():
                ray.init(**options)
    except ray.exceptions.AuthenticationError as exc:
        whose = "this machine's token" if _token_available() else "this machine, which has no token"
        raise ConfigError(
            f"--ray-address {address}: the cluster refused {whose} ({str(exc).splitlines()[0]})",
            field="ray_address",
            hint="copy ~/.ray/auth_token from the head node to this machine (or set RAY_AUTH_TOKEN)",
        ) from None
    except (OSError, RuntimeError, ValueError) as exc:  # ConnectionError and TimeoutError included
        raise _unreachable(address, exc, token=address != "local" and _token_available()) from None
    return ray


def check_address(address: str) -> None:
    """At job creation: a :class:`ConfigError` when nothing that speaks Ray's protocol answers at
    ``address`` (checked again, and connected to, when the job starts), so that a typo leaves no job."""
    address = address.strip()
    if address == "local":
        return
    ray = require_ray()
    try:
        _check_reachable(ray, address)
    except (OSError, ValueError) as exc:  # ConnectionError and TimeoutError included
        raise _unreachable(address, exc) from None


def _unreachable(address: str, exc: BaseException, token: bool = False) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Ray reports a refused token as a failed connection, after its retries: the token may be the cause
    refused = ("; if it runs, it may have refused this machine's token: copy ~/.ray/auth_token from the head "
               "node (or set RAY_AUTH_TOKEN)") if token else ""  # fmt: skip
    return ConfigError(
        f"--ray-address {address}: cannot connect to a Ray cluster ({first})",
        field="ray_address",
        hint="start one with `ray start --head` on the head node, or use --ray-address local "
        f"to run Ray on this machine only{refused}",
    )


@contextlib.contextmanager
def _token_mode_kept_only_if_connected(set_here: bool) -> Iterator[None]:
    """Undo the ``RAY_AUTH_MODE`` this module set when the connection fails: left behind, it makes a
    later ``--ray-address local`` in the same process (a test, a notebook) fail with InvalidAuthToken."""
    try:
        yield
    except BaseException:
        if set_here:
            os.environ.pop("RAY_AUTH_MODE", None)
            _reload_auth_config()
        raise


def _reload_auth_config() -> None:
    """Make Ray read ``RAY_AUTH_MODE`` (and the token) again: it reads them once, when imported."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication: nothing to reload
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _token_available() -> bool:
    """Whether a Ray cluster token is at hand: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names,
    or ``~/.ray/auth_token`` (where ``ray start --head`` writes it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


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
    with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as conn:
        if not _answers_http2(conn):
            raise ConnectionError(
                f"{target} is not a Ray head's GCS port (it does not speak gRPC; Ray's default is 6379, "
                "and the Ray Client's 10001 takes a ray:// address)"
            )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the server on ``conn`` speaks HTTP/2 (gRPC): it answers the client preface with a
    SETTINGS frame (type 4 in the 9-byte frame header); an HTTP/1 server answers with text or closes."""
    try:
        conn.sendall(HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # + an empty SETTINGS
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 4


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Put back this process's SIGTERM handler after ``ray.init`` replaced it (main thread only)."""
    main = threading.current_thread() is threading.main_thread()
    saved = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if saved is not None:
            signal.signal(signal.SIGTERM, saved)


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
    """Fail at once, naming the shortfall, when ``workers`` actors can never be placed: more than the
    cluster has, or more per actor than its largest node has. When they fit but other work holds the
    resources now, say that the job waits for them (Ray queues the actors silently)."""
    capacity = cluster_capacity(ray)
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    free = ray.available_resources()
    for resource, amount in per_worker.items():
        needed = workers * amount
        have = capacity.get(resource, 0.0)
        gpu_hint = " (the vllm engine needs one GPU per worker)" if resource == "GPU" else ""
        if needed > have + 1e-9:
            raise ConfigError(
                f"--rollout-workers {workers} needs {needed:g} {resource}s on the Ray cluster "
                f"({amount:g} per worker), which has {have:g}",
                field="rollout_workers",
                hint="lower --rollout-workers, or add nodes to the cluster" + gpu_hint,
            )
        fits = sum(int((float(n.get(resource, 0.0)) + 1e-9) // amount) for n in nodes) if nodes else workers
        if amount > 0 and fits < workers:
            raise ConfigError(
                f"--rollout-workers {workers}: each worker needs {amount:g} {resource}s on one node, and the "
                f"Ray cluster's nodes have room for {fits} such workers",
                field="rollout_workers",
                hint="choose a --rollout-workers whose share fits the nodes, or add nodes" + gpu_hint,
            )
        if needed > float(free.get(resource, 0.0)) + 1e-9:
            print(
                f"Ray: waiting for {needed:g} {resource}s for the rollout actors; {float(free.get(resource, 0.0)):g} "
                f"of the cluster's {have:g} are free now (other work holds the rest, see `ray status`)",
                file=sys.stderr,
                flush=True,
            )


__all__ = ["INSTALL_HINT", "check_address", "check_capacity", "cluster_capacity", "connect", "require_ray"]
