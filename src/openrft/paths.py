"""Where openrft keeps its files, and how it writes them so that a crash never leaves half a file.

``$OPENRFT_HOME`` (default ``~/.openrft``) holds the converted embedded model, the job store
(``jobs.db``) and one folder per job (``jobs/<id>/``). Every file or folder a user may rely on
is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def openrft_home() -> Path:
    """openrft's cache and state directory: ``$OPENRFT_HOME``, default ``~/.openrft``."""
    return Path(os.environ.get("OPENRFT_HOME") or Path.home() / ".openrft").expanduser()


def jobs_root(home: Path | None = None) -> Path:
    """The folder holding one sub-folder per job."""
    return (home or openrft_home()) / "jobs"


def output_dir(job_dir: Path, output_model: str | None) -> Path:
    """Where a job's final adapter and outputs go: ``--output-model`` or ``<job folder>/output``."""
    return Path(output_model) if output_model else job_dir / "output"


def make_parent(path: Path) -> None:
    """Create ``path``'s folder; a file standing where a folder must be is named in the error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot be written ({blocker} is a file)", str(path)
        ) from None


def temporary_beside(target: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """``(fd, path)`` of a new temporary file in ``target``'s folder, to be renamed onto ``target``.

    Errors name ``target`` (the path the user gave), never the temporary file: a folder standing
    at ``target``, a file where its folder must be, or a folder that cannot be written.
    """
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is there; give a file name", str(target))
    make_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot be written ({exc.strerror})", str(target)) from None
    # mkstemp makes the file 0600: give it the mode of the file it replaces, else the umask's default
    os.fchmod(fd, target.stat().st_mode & 0o777 if target.is_file() else 0o666 & ~_UMASK)
    return fd, tmp


def unwritable(target: Path) -> str | None:
    """Why a file could not be written at ``target``, or None: checked before long work, creating
    nothing (the writer itself makes the missing folders)."""
    if target.is_dir():
        return "a folder is there; give a file name"
    for folder in target.parents:
        if folder.is_dir():
            return (
                None if os.access(folder, os.W_OK | os.X_OK) else f"cannot be written ({folder} is read-only)"
            )
        if folder.exists() or folder.is_symlink():
            return f"cannot be written ({folder} is a file)"
    return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (reading it means setting it)


@contextmanager
def atomic_replace(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file opened (``mode`` "w" or "wb") on a temporary file beside ``path`` that replaces ``path`` in
    one rename, flushed to disk, when the block succeeds; on failure ``path`` is left as it was."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a write's error (EFBIG, EIO): say which file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    with atomic_replace(path) as handle:
        handle.write(text)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` in one rename when the block succeeds.

    On failure nothing at ``target`` changes and the temporary directory is removed. What a killed
    writer left is put right first: its half-written folder goes, and an earlier ``target`` it had
    moved aside (killed between the two renames) comes back.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o755)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def readable_by_all(folder: Path) -> None:
    """Give the files under ``folder`` the mode a plain ``open`` would (0644): some writers (safetensors)
    create theirs owner-only, and a model folder is meant to be served, by vLLM running as another
    user for one."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)


def recover_directory(target: Path) -> None:
    """Put right what a killed :func:`atomic_directory` writer left for ``target``: an earlier ``target``
    it had moved aside comes back, and its half-written folder goes (only once its writer is dead)."""
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        os.replace(old, target)
    elif old.is_dir():  # killed after the new one took its place
        shutil.rmtree(old, ignore_errors=True)
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = leftover.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def remove_stale_temporaries(folder: Path, min_age_s: float = 60.0) -> int:
    """Remove the temporary files (``.NAME.*.tmp``, :func:`temporary_beside`'s) that killed writers left
    in ``folder``, those untouched for ``min_age_s`` (a live writer's is fresh); returns how many."""
    removed, now = 0, time.time()
    for leftover in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if (
                leftover.is_file()
                and not leftover.is_symlink()
                and now - leftover.stat().st_mtime > min_age_s
            ):
                leftover.unlink()
                removed += 1
    return removed


LOCK_NAME = ".running"
OWNER_FILE = ".openrft-job"  # in an output folder: the folder of the job it belongs to


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Held by the one process that trains a job folder, for as long as it runs; the system releases it
    when that process ends, however it ends. Raises ``BlockingIOError`` when another process holds it."""
    import fcntl

    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it (``rftj repair`` records it)
        yield
    finally:
        os.close(fd)


def folder_in_use(folder: Path, settle: float = 2.0) -> int | None:
    """The pid of the process holding ``folder``'s :func:`folder_lock` (a job is training in it), 0 if it
    cannot be read; None when nobody holds it. A lock still held is asked again for up to ``settle``
    seconds: the system releases a killed process's lock a moment after it is reported dead."""
    deadline = time.monotonic() + settle
    while (pid := _lock_holder(folder)) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _lock_holder(folder: Path) -> int | None:
    import fcntl

    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: no job ever ran here (or not one of this user's)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _NoBytecodeLoader(importlib.machinery.SourceFileLoader):
    """Python's loader for a source file, without the ``__pycache__`` it would write beside the file, nor
    beside the modules it imports from its own folder while it is imported."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        with no_bytecode():
            super().exec_module(module)


@contextmanager
def no_bytecode() -> Iterator[None]:
    """Imports in the block write no ``__pycache__`` (a user's modules: their folders stay as they were)."""
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved


def user_module_spec(module_name: str, file: Path) -> importlib.machinery.ModuleSpec | None:
    """The import spec of a user's Python file (an evaluator, tools, an agent), or None when it is not a
    Python source file. Importing it leaves the user's folder as it was: no ``__pycache__`` is written
    there (a ``--dry-run`` writes nothing of theirs)."""
    if not str(file).endswith(tuple(importlib.machinery.SOURCE_SUFFIXES)):
        return None
    return importlib.util.spec_from_file_location(
        module_name, file, loader=_NoBytecodeLoader(module_name, str(file))
    )


__all__ = [
    "atomic_directory", "atomic_replace", "remove_stale_temporaries", "atomic_write_text", "folder_in_use", "folder_lock", "pid_alive", "jobs_root", "make_parent", "openrft_home", "output_dir",
    "no_bytecode", "OWNER_FILE", "readable_by_all", "recover_directory", "temporary_beside", "unwritable", "user_module_spec",
]  # fmt: skip
