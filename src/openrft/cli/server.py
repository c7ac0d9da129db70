"""``openrft server``: the managed service's job API (and the dashboard) on this machine, with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from openrft.cli.evaluate import port_number, positive_int


def register(subparsers: argparse._SubParsersAction, rftj: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "server",
        help="Serve the reinforcement-fine-tuning job API (SDK-compatible) and the dashboard.",
        description="Serve the job API the managed service's SDK talks to, queueing jobs on this machine. "
        "It listens on 127.0.0.1 unless --host says otherwise; any other address needs an API key.",
    )
    p.add_argument("--host", default=None, help="Address to listen on (default: 127.0.0.1).")
    p.add_argument("--port", type=port_number, default=None, help="Port (default: 8321).")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="A key clients must send as 'Authorization: Bearer KEY' (repeatable; also OPENRFT_API_KEYS, "
        "comma-separated). Required unless the server listens on loopback only.",
    )
    p.add_argument(
        "--max-running-jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="Jobs run at once; the rest wait PENDING (default: 1).",
    )
    p.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="Let requests name files and folders on this machine (base model directories, evaluator and "
        "dataset files, MCP commands). Off by default: it lets any caller read and run local code.",
    )
    p.add_argument("--ssl-certfile", metavar="PEM", help="Serve HTTPS with this certificate (with --ssl-keyfile); "
                   "signed upload URLs are then https, as the SDK's dataset_upload helper requires.")  # fmt: skip
    p.add_argument("--ssl-keyfile", metavar="PEM", help="The certificate's private key.")
    p.add_argument(
        "--forwarded-allow-ips", metavar="IPS", default=None,
        help="Behind a reverse proxy: the proxy's addresses (comma-separated, or '*'), whose X-Forwarded-For "
        "and X-Forwarded-Proto headers name the client (for the wrong-key limit, which counts per client, and "
        "the URLs the server gives). Default: none, every address is the connection's own.",
    )  # fmt: skip
    p.set_defaults(handler=cmd_server)


def cmd_server(args: argparse.Namespace) -> int:
    restart_without_keys()
    keep_memory_private()
    import uvicorn

    from openrft.errors import ConfigError
    from openrft.net import listen_problem, url_host
    from openrft.server.app import create_app

    settings = server_settings(args)
    tls = _tls(args)
    url = f"{'https' if tls else 'http'}://{url_host(settings.host)}:{settings.port}"
    lock = hold_server_lock(settings.home, url)  # before the app looks at (and re-queues) any job
    app = create_app(settings)  # refuses a public bind without a key (ConfigError, exit code 2)
    if problem := listen_problem(settings.host, settings.port):
        raise ConfigError(problem)
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API key (loopback only)"
    app.state.server_lock = lock  # held while the server runs
    print(f"openrft server on {url} ({auth}); jobs in {app.state.job_store.root}")
    # bounded: a TLS connection a client keeps alive would otherwise hold the shutdown open
    # forwarded headers only from the proxies named: else any local process could pose as any address
    proxies = {
        "proxy_headers": bool(args.forwarded_allow_ips),
        "forwarded_allow_ips": args.forwarded_allow_ips,
    }
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5,
                **tls, **proxies)  # fmt: skip
    return 0


LOCK_FILE = "server.lock"


def hold_server_lock(home: Path, url: str) -> Any:
    """The open lock file that makes this the one server of ``home``: two would each count the other's
    queued jobs as running and start none, and re-queue the other's jobs at their start. Released when
    the process ends, however it ends."""
    import fcntl

    from openrft.errors import OpenRFTError

    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the server's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OpenRFTError(f"another openrft server already serves {home}: {holder}",
                           hint="stop it, or give this one its own OPENRFT_HOME") from None  # fmt: skip
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} at {url}\n")
    handle.flush()
    return handle


def keep_memory_private() -> bool:
    """Make this process non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``): other processes of the same
    user, the evaluators it builds and runs among them, can then neither read its memory
    (``/proc/PID/mem``, where the keys are) nor attach a debugger to it. Its workers, new programs, are
    not affected. A root process (or one with ``CAP_SYS_PTRACE``) still can. False where unsupported."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False


KEY_NAMES = ("OPENRFT_API_KEYS", "OPENRFT_API_KEY")  # the server's keys, and a client key of the same shell


def restart_without_keys() -> None:
    """Run this same command again, in this same process, without the keys in its environment.

    A process's starting environment stays readable for its whole life (``/proc/PID/environ``) by every
    process of the same user, the evaluators the server builds and runs included, whatever is taken
    out of ``os.environ`` later; so a holder of one key could read every other. The new program gets
    the keys through a pipe (``OPENRFT_API_KEYS_FD``) and reads them once. Only for ``openrft server``
    started as a program (not called from inside another one, such as a test runner)."""
    given = [name for name in KEY_NAMES if name in os.environ]
    program = Path(sys.argv[0]).as_posix() if sys.argv else ""
    ours = Path(program).name == "openrft" or program.endswith("openrft/cli/__main__.py")
    if not given or not ours or os.name != "posix":
        return
    from openrft.server.settings import KEYS_ENV, KEYS_FD_ENV

    read, write = os.pipe()
    os.write(write, os.environ.get(KEYS_ENV, "").encode())  # a few keys: well within a pipe's buffer
    os.close(write)
    os.set_inheritable(read, True)
    environment = {k: v for k, v in os.environ.items() if k not in KEY_NAMES} | {KEYS_FD_ENV: str(read)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environment)


def server_settings(args: argparse.Namespace):
    """The server's settings from its flags and environment. The keys are then taken out of the
    environment: the evaluators the server builds and runs (anyone's with a key) must not read them
    there, so that one holder's key does not give away the others'."""
    from openrft.net import bare_host
    from openrft.paths import openrft_home
    from openrft.server.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings, keys_from_env

    settings = ServerSettings(
        host=bare_host(args.host or DEFAULT_HOST),
        port=args.port or DEFAULT_PORT,
        api_keys=tuple(dict.fromkeys([*args.api_key, *keys_from_env()])),
        max_running_jobs=args.max_running_jobs,
        allow_local_paths=args.allow_local_paths,
        home=openrft_home(),
    )
    for name in KEY_NAMES:  # (kept out of the evaluators' environments too)
        os.environ.pop(name, None)
    return settings


def _tls(args: argparse.Namespace) -> dict[str, str]:
    """uvicorn's TLS settings from --ssl-certfile / --ssl-keyfile (both or neither, readable files)."""
    from openrft.errors import ConfigError

    given = {k: v for k, v in (("ssl_certfile", args.ssl_certfile), ("ssl_keyfile", args.ssl_keyfile)) if v}
    if len(given) == 1:
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together: give both to serve HTTPS")
    for key, path in given.items():
        if not Path(path).is_file():
            raise ConfigError(f"--{key.replace('_', '-')}: no such file: {path}")
    return given


__all__ = ["register"]
