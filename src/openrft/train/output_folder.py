"""Where a job's output adapter goes (``--output-model``): what may be written there and what may not.

A job writes its adapter, tokenizer, card and metrics into a new folder and renames it into place,
replacing an earlier openrft output whole. So a folder is taken only when nothing of the user's
would go with it: it is new or empty, or an earlier output whose mark (``.openrft-job``) names the
job that wrote it and lists what it wrote, with nothing added since.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from openrft.errors import ConfigError
from openrft.paths import OWNER_FILE


def check_output_folder(target: Path, inputs: Sequence[Path], job_dir: Path | None = None) -> None:
    """Refuse an ``--output-model`` that would replace something the user made, or cannot be written.

    Accepted: a folder that does not exist yet (in a writable place), an empty folder, or an
    earlier openrft output folder (its mark names the job that wrote it, and it holds nothing the mark
    does not list) unless it is the output of another job that still exists (``job_dir``: this job's
    folder, None for a new job).
    """
    target = target.expanduser().resolve()
    flag = f"--output-model {target}"
    for path in inputs:
        if path == target or target in path.parents:
            raise ConfigError(f"{flag}: this is an input of the job ({path}); choose another folder",
                              field="output_model")  # fmt: skip
    from openrft.paths import openrft_home

    home = openrft_home().expanduser().resolve()
    jobs = home / "jobs"
    if target in (home, *home.parents) or target == jobs or jobs in target.parents:
        raise ConfigError(f"{flag}: this is openrft's own job store ({jobs}), or holds it; choose a folder "
                          "outside it", field="output_model")  # fmt: skip
    if target.is_file() or (target.exists() and not target.is_dir()):
        raise ConfigError(f"{flag}: a file is there; give a folder for the adapter", field="output_model")
    owner = output_owner(target)
    earlier_output = owner is not None and (target / "adapter_config.json").is_file()
    mine = job_dir is not None and owner == job_dir.resolve()
    if owner is not None and not mine and (owner / "job.json").is_file():
        raise ConfigError(
            f"{flag}: the folder is the output of job {owner.name} ({owner}); nothing in it is replaced",
            field="output_model", hint="give a new or empty folder (or delete that job first)",
        )  # fmt: skip
    added = sorted(p.name for p in target.iterdir() if p.name not in output_files(target)) if owner else []
    if added:
        raise ConfigError(f"{flag}: the folder holds what openrft did not write there ({', '.join(added[:5])}); "
                          "nothing in it is replaced", field="output_model",
                          hint="move those out, or give a new or empty folder")  # fmt: skip
    if target.is_dir() and any(p.name != OWNER_FILE for p in target.iterdir()) and not earlier_output:
        raise ConfigError(
            f"{flag}: the folder exists and is not an openrft output folder; nothing in it is replaced",
            field="output_model", hint="give a new or empty folder",
        )  # fmt: skip
    parent = next(p for p in [target, *target.parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: {parent} is not a writable folder", field="output_model")


def output_owner(folder: Path) -> Path | None:
    """The folder of the job that wrote the output in ``folder`` (None if unknown): the first line of
    its mark; the names of what it wrote follow (:func:`output_files`)."""
    try:
        text = (folder / OWNER_FILE).read_text().strip()
    except OSError:
        return None
    return Path(text.splitlines()[0]) if text else None


# what an output folder held before its mark listed it (openrft 0.x): the adapter, the tokenizer, the card
OUTPUT_NAMES = {"adapter_config.json", "adapter_model.safetensors", "job.json", "metrics.jsonl", "README.md",
                "reward_curve.png", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model"}  # fmt: skip


def output_files(folder: Path) -> set[str]:
    """The names openrft wrote in the output ``folder`` (its mark's list), the mark included."""
    try:
        listed = (folder / OWNER_FILE).read_text().strip().splitlines()[1:]
    except OSError:
        listed = []
    return {OWNER_FILE, *(listed or OUTPUT_NAMES)}


__all__ = ["check_output_folder", "output_files", "output_owner", "OUTPUT_NAMES"]
