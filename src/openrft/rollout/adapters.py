"""Policy updates for engines that sample with an adapter loaded from disk (a server, vLLM)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from openrft.errors import RolloutError


class LoadsAdapterFiles:
    """``set_policy`` for an engine with ``load_adapter(path, name)`` and ``unload_adapter(name)``.

    Each version's adapter is loaded under its folder's name and becomes the one sampled with;
    the previous version's is then unloaded (a failure to unload is harmless and ignored).
    """

    needs_adapter_files = True
    policy_version: int
    _policy_adapter: str | None = None

    def load_adapter(self, path: str, name: str) -> None:  # pragma: no cover - the engine's own
        raise NotImplementedError

    def unload_adapter(self, name: str) -> None:  # pragma: no cover - the engine's own
        raise NotImplementedError

    def set_policy(self, version: int, adapter: Path | None = None) -> None:
        if adapter is None:
            raise RolloutError(
                f"{type(self).__name__} samples with an adapter loaded from disk: give its folder"
            )
        name = Path(adapter).name
        self.load_adapter(str(adapter), name)
        previous, self._policy_adapter = self._policy_adapter, name
        if previous and previous != name:
            with contextlib.suppress(Exception):
                self.unload_adapter(previous)
        self.policy_version = version


__all__ = ["LoadsAdapterFiles"]
