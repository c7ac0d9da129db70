"""What a job needs from the user's files, kept so that it can be resumed from anywhere.

A job is created with paths as the user typed them, relative to where they stood. Two things make
those fragile: a resume from another directory, and files edited or removed after the job started.
So, at creation:

* every value that names an existing local file or folder (dataset, evaluation dataset, evaluator,
  tools, agent, warm-start adapter, base-model folder, output folder, and the files named on an MCP
  server's stdio command line) is stored as an absolute path;
* ``snapshot/manifest.json`` in the job folder records a SHA-256 of each dataset file and of each
  code file (evaluator, tools, agent), and ``snapshot/code/`` keeps a copy of each code file.

On a resume, :func:`resumed_values` compares the files with the manifest: a dataset that changed
is used as it is now, with a warning (its rows decide which prompts the remaining rounds sample);
a code file that changed or disappeared is replaced by its snapshot copy, with a warning, so the job
keeps scoring with the code it started with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openrft.data import is_builtin
from openrft.errors import ConfigError, JobError
from openrft.models import EMBEDDED, WARM_START_KEPT
from openrft.paths import atomic_write_text, temporary_beside

PATH_FIELDS = (
    "dataset",
    "evaluation_dataset",
    "evaluator",
    "tools",
    "agent",
    "warm_start_from",
    "output_model",
    "response_format",
)
CODE_FIELDS = ("evaluator", "tools", "agent", "response_format")
DATASET_FIELDS = ("dataset", "evaluation_dataset")
CODE_SUFFIXES = (".py", ".json", ".yaml", ".yml")  # Python code, or an OpenAI grader spec
SNAPSHOT_DIR = "snapshot"


def absolute_paths(values: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """``values`` (flat config values) with every relative path that exists under ``cwd`` made absolute."""
    out = dict(values)
    for name in PATH_FIELDS:
        value = out.get(name)
        if name == "output_model" and isinstance(value, str) and value:  # made later: absolute even now
            out[name] = str((cwd / Path(value).expanduser()).resolve())
        elif isinstance(value, str) and value and not (name in DATASET_FIELDS and is_builtin(value)):
            out[name] = _absolute(value, cwd)
    base = out.get("base_model")
    if isinstance(base, str) and base not in EMBEDDED:
        out["base_model"] = _absolute(base, cwd)
    servers = out.get("mcp_server")
    if isinstance(servers, str | list | tuple) and servers:
        listed = [servers] if isinstance(servers, str) else list(servers)
        absolute = [_absolute_command(s, cwd) if isinstance(s, str) else s for s in listed]
        out["mcp_server"] = absolute[0] if isinstance(servers, str) else absolute
    return out


def _absolute_command(command: str, cwd: Path) -> str:
    """A stdio server's command line with its relative paths made absolute (a URL as it is)."""
    if "://" in command or not command.strip():
        return command
    return shlex.join(_absolute(part, cwd) for part in shlex.split(command))


def _absolute(value: str, cwd: Path) -> str:
    """``path`` or ``path::name`` with the path made absolute when it exists relative to ``cwd``."""
    path_text, sep, rest = value.partition("::")
    if value.lstrip().startswith("{"):  # an inline grader spec, not a path (it may be past NAME_MAX)
        return value
    path = Path(path_text).expanduser()
    try:
        if path.is_absolute() or not (cwd / path).exists():
            return value
    except OSError:  # not a name a file could have (too long, say): not a path
        return value
    return str((cwd / path).resolve()) + sep + rest


def code_path(value: str | None) -> Path | None:
    """The local code file a value names (``file.py``, ``file.py::fn``, a grader ``.json``/``.yaml``)."""
    if not value:
        return None
    path = Path(value.partition("::")[0]).expanduser()
    try:
        return path if path.suffix in CODE_SUFFIXES and path.is_file() else None
    except OSError:  # not a name a file could have (an inline grader spec past NAME_MAX)
        return None


def write_snapshot(job_dir: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Record hashes of the job's dataset and code files and copy its code files into the job folder."""
    root = job_dir / SNAPSHOT_DIR
    manifest: dict[str, Any] = {"datasets": {}, "code": {}}
    for name in DATASET_FIELDS:
        value = values.get(name)
        path = Path(value).expanduser() if isinstance(value, str) and not is_builtin(value) else None
        if path is not None and path.is_file():
            manifest["datasets"][name] = {"path": str(path), "sha256": sha256(path), "lines": _lines(path)}
    for name in CODE_FIELDS:
        path = code_path(values.get(name))
        if path is None:
            continue
        copy = root / "code" / name / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        _copy_whole(path, copy)
        manifest["code"][name] = {"path": str(path), "sha256": sha256(path), "copy": str(copy)}
    if manifest["datasets"] or manifest["code"]:
        atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _lines(path: Path) -> int:
    """Non-blank lines of a dataset file (its rows, for JSONL)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _copy_whole(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` whole or not at all (a full disk, a kill)."""
    fd, tmp = temporary_beside(target)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def resumed_values(job_dir: Path, values: dict[str, Any], warn: Callable[[str], None]) -> dict[str, Any]:
    """``values`` for a resume: code files that changed or vanished replaced by their snapshot copies."""
    path = job_dir / SNAPSHOT_DIR / "manifest.json"
    if not path.is_file():
        return values
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise JobError(f"the job's snapshot record {path} cannot be read ({type(exc).__name__}: {exc})",
                       hint="restore the file, or delete it to go on with the files as they are now") from None  # fmt: skip
    out = dict(values)
    for entry in manifest.get("datasets", {}).values():
        current = Path(entry["path"])
        if current.is_file() and sha256(current) != entry["sha256"]:
            before, now = entry.get("lines"), _lines(current)
            if before is not None and now != before:  # the job's place in it (epoch order, cursor) is lost
                raise JobError(
                    f"{current} has {now} lines now and had {before} when the job started: the job cannot "
                    "continue where it stopped",
                    hint="restore the file, or start a new job on it from this one's output (--warm-start-from)",
                )
            warn(f"{current} changed since the job started; the rounds left sample from it as it is now")
    for name, entry in manifest.get("code", {}).items():
        original, copy = Path(entry["path"]), Path(entry["copy"])
        value = out.get(name)
        if not isinstance(value, str) or not copy.is_file():
            continue
        if original.is_file() and sha256(original) == entry["sha256"]:
            continue
        what = "changed" if original.is_file() else "is gone"
        warn(f"{original} {what} since the job started; the job goes on with its copy from then, {copy}")
        _, sep, rest = value.partition("::")
        out[name] = str(copy) + sep + rest
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a job's checkpoints are made of or numbered by: a resume that changed one could not load them
# (the adapter's shape, the weights under it) or would lose its place (the job's name).
FIXED_ON_RESUME = {"base_model": "base model", "warm_start_from": "warm-start adapter", "lora_rank": "LoRA rank",
                   "lora_alpha": "LoRA alpha", "job_id": "job id"}  # fmt: skip


def refuse_fixed_changes(before: dict[str, Any], after: dict[str, Any], job_dir: Path | None = None) -> None:
    """A ConfigError naming the first value a resume may not change: one its checkpoints fix, or the
    dataset (its place in the data would be lost). The same file moved elsewhere is the same dataset
    (its SHA-256 is the one ``job_dir``'s snapshot recorded), and the embedded model named by its folder
    is the same model."""
    before, after = _effective(before), _effective(after)
    for name, words in FIXED_ON_RESUME.items():
        old, new = before.get(name), after.get(name)
        if name in WARM_START_KEPT and after.get("warm_start_from"):
            continue  # the adapter's (a --warm-start-from change is refused below; job.py checks flags)
        if new is None or old == new or (name == "base_model" and _model_path(old) == _model_path(new)):
            continue
        flag = f"--{name.replace('_', '-')}"
        hint = "start a new job instead, with --warm-start-from on this job's output adapter"
        if old is None:
            raise ConfigError(f"{flag}: a resumed job cannot take a {words} it did not start with ({new})",
                              field=name, hint=hint)  # fmt: skip
        raise ConfigError(f"{flag}: a resumed job keeps the {words} its checkpoints were made with ({old}), "
                          f"not {new}", field=name, hint=hint)  # fmt: skip
    old, new = before.get("dataset"), after.get("dataset")
    if old != new and not _same_dataset(old, new, job_dir):
        raise ConfigError(
            f"--dataset: a resumed job keeps its dataset ({old}), not {new}: its place in the data would be lost",
            field="dataset",
            hint="start a new job on the other data, with --warm-start-from on this job's output adapter",
        )


def refuse_fewer_epochs(epochs: int, job_dir: Path) -> None:
    """A ConfigError when a resume's ``--epochs`` is below the epochs the job has already begun (its
    latest checkpoint's): the loop would end at once, calling a partly trained epoch complete and the
    record would say fewer epochs than were trained. As many as it has finished stops it there."""
    from openrft.train.checkpoint import latest_checkpoint

    newest = latest_checkpoint(job_dir / "checkpoints", tidy=False)
    try:
        state = json.loads((newest / "state.json").read_text()) if newest is not None else {}
    except (OSError, ValueError):
        return  # (the resume itself names a damaged checkpoint)
    done = int(state.get("epoch") or 0)
    begun = done + (1 if state.get("cursor") or state.get("pending") else 0)
    if epochs < begun:
        raise ConfigError(
            f"--epochs {epochs}: this job has already begun epoch {begun} (its last checkpoint), so it "
            f"resumes with --epochs {begun} or more; fewer would call a partly trained epoch complete",
            field="epochs",
        )


def _effective(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with an unset LoRA alpha as what it stands for (twice the rank)."""
    rank = values.get("lora_rank")
    alpha = values.get("lora_alpha") or (2 * rank if isinstance(rank, int) else None)
    return {**values, "lora_alpha": alpha}


def _model_path(name: Any) -> Any:
    """A base model as a folder where it is one (the embedded model's converted copy), else its name."""
    from openrft.models import embedded_model_dir

    if name in EMBEDDED:
        return embedded_model_dir(name).resolve()
    path = Path(str(name)).expanduser()
    return path.resolve() if path.is_absolute() or path.exists() else name


def _same_dataset(old: Any, new: Any, job_dir: Path | None) -> bool:
    """Whether ``new`` holds what ``old`` held: the same bytes as the file still there, or as the
    snapshot recorded when the job started (the file has moved)."""
    try:
        if new is None or not Path(new).is_file():
            return False
        digest = sha256(Path(new))
        if Path(str(old)).is_file() and sha256(Path(str(old))) == digest:
            return True
        manifest = json.loads((job_dir / SNAPSHOT_DIR / "manifest.json").read_text()) if job_dir else {}
        return (manifest.get("datasets", {}).get("dataset") or {}).get("sha256") == digest
    except (TypeError, OSError, ValueError):
        return False


__all__ = [
    "absolute_paths",
    "write_snapshot",
    "resumed_values",
    "code_path",
    "sha256",
    "refuse_fixed_changes",
]
