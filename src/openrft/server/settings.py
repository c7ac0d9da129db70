"""How ``openrft server`` is configured: where it listens, who may call it, how many jobs run at once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from openrft.errors import ConfigError
from openrft.net import is_loopback

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8321
KEYS_ENV = "OPENRFT_API_KEYS"


@dataclass(frozen=True)
class ServerSettings:
    """Everything :func:`openrft.server.app.create_app` needs.

    ``api_keys``: bearer keys a request must present (none = no check, allowed on loopback only).
    ``max_running_jobs``: jobs the queue runs at once (each one a worker process on this machine).
    ``allow_local_paths``: let requests name files and folders on this machine (a base model
    directory, an evaluator file, a dataset file); off by default, because it lets whoever can
    call the API read and run anything the server's user can.
    ``home``: the job store's folder (default: ``$OPENRFT_HOME``).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = ()
    max_running_jobs: int = 1
    allow_local_paths: bool = False
    home: Path | None = None
    poll_interval: float = 1.0
    run_queue: bool = True

    def check(self) -> None:
        """Refuse settings that would expose the API: a non-loopback bind without a key."""
        if self.max_running_jobs < 1:
            raise ConfigError(f"--max-running-jobs: {self.max_running_jobs} is not valid; expected >= 1")
        if any(not key.strip() or key != key.strip() or " " in key for key in self.api_keys):
            raise ConfigError("--api-key: a key must not be empty or hold spaces (no request could send it)")
        if not is_loopback(self.host) and not self.api_keys:
            raise ConfigError(
                f"--host {self.host} is reachable from other machines, and no API key is set",
                hint=f"pass --api-key KEY (or set {KEYS_ENV}=KEY1,KEY2), or bind to 127.0.0.1",
            )


KEYS_FD_ENV = "OPENRFT_API_KEYS_FD"  # a pipe holding the keys, for a server started again without them


def keys_from_env() -> tuple[str, ...]:
    """API keys from ``OPENRFT_API_KEYS`` (comma-separated; blanks ignored), or from the pipe that
    ``OPENRFT_API_KEYS_FD`` names (read once: ``openrft server`` restarts itself that way)."""
    fd = os.environ.pop(KEYS_FD_ENV, None)
    if fd is not None and fd.isdigit():
        with os.fdopen(int(fd)) as pipe:
            text = pipe.read()
    else:
        text = os.environ.get(KEYS_ENV, "")
    return tuple(k.strip() for k in text.split(",") if k.strip())


__all__ = ["ServerSettings", "keys_from_env", "DEFAULT_HOST", "DEFAULT_PORT", "KEYS_ENV", "KEYS_FD_ENV"]
