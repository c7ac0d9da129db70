"""What openrft's processes show the user: library warnings that are not the user's concern are hidden.

Both entry points call :func:`quiet_known_warnings` first: the command line (``openrft ...``) and a
detached job's worker (``python -m openrft.jobs.worker``), whose output is the job's log.
"""

from __future__ import annotations

import warnings

# (message start, category): each is raised inside a library on every run, whatever the user does
KNOWN_WARNINGS = (
    # peft still calls a transformers property that warns on every adapter load
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
)


def quiet_known_warnings() -> None:
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


__all__ = ["quiet_known_warnings", "KNOWN_WARNINGS"]
