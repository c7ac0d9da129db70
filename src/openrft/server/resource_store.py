"""Uploaded datasets and evaluators on disk, under ``$OPENRFT_HOME/server/``.

::

    server/datasets/<account>/<id>/meta.json        the resource as the API shows it (+ private fields)
    server/datasets/<account>/<id>/data.jsonl       the validated file, once uploaded
    server/evaluators/<account>/<id>/meta.json
    server/evaluators/<account>/<id>/source.tar.gz  the uploaded archive, until it is built
    server/evaluators/<account>/<id>/code/          the unpacked archive of an ACTIVE evaluator

Every file is written under a temporary name and renamed into place; a rejected upload leaves
nothing. Fields of ``meta.json`` whose names start with ``_`` (upload tokens, the evaluator's
resolved spec) are never shown to clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from openrft.data import prompts_from_rows, read_jsonl
from openrft.errors import DataError
from openrft.paths import atomic_directory, atomic_write_text, openrft_home
from openrft.server.errors import ApiError, precondition
from openrft.server.uploads import (
    ArchiveError,
    UploadLimits,
    check_id,
    extract_archive,
    now_rfc3339,
    write_files,
)

KINDS = ("datasets", "evaluators")
UPLOAD_TOKEN_TTL_S = 3600.0
BUILD_TIMEOUT_S = 120.0
ENTRY_FILES = ("main.py", "evaluator.py")

_lock = threading.RLock()
_building: set[tuple[str, str]] = set()  # (account, evaluator id) being built by this process
_home: list[Path] = []  # set by use_home(): the server's home when it is not $OPENRFT_HOME


def use_home(home: Path | None) -> None:
    """Keep resources under ``home/server`` (None: under ``$OPENRFT_HOME``, read at each call)."""
    _home[:] = [Path(home).expanduser().resolve()] if home is not None else []


def resources_root() -> Path:
    """``<home>/server``: the uploaded resources of every account."""
    return (_home[0] if _home else openrft_home()) / "server"


def resource_dir(kind: str, account: str, resource_id: str) -> Path:
    assert kind in KINDS
    return (
        resources_root() / kind / check_id(account, "account id") / check_id(resource_id, f"{kind[:-1]} id")
    )


def read_meta(kind: str, account: str, resource_id: str) -> dict[str, Any] | None:
    """The stored resource, or None when there is none."""
    path = resource_dir(kind, account, resource_id) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def require_meta(kind: str, account: str, resource_id: str) -> dict[str, Any]:
    meta = read_meta(kind, account, resource_id)
    if meta is None:
        raise ApiError(404, f"{kind[:-1]} accounts/{account}/{kind}/{resource_id} not found")
    return meta


def write_meta(kind: str, meta: dict[str, Any]) -> None:
    _, account, _, resource_id = meta["name"].split("/")
    meta["updateTime"] = now_rfc3339()
    atomic_write_text(resource_dir(kind, account, resource_id) / "meta.json", json.dumps(meta, indent=2))


def public(meta: dict[str, Any]) -> dict[str, Any]:
    """The resource as clients see it (private fields dropped)."""
    return {k: v for k, v in meta.items() if not k.startswith("_")}


def create_resource(kind: str, account: str, resource_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Store a new resource; 409 when the id is taken."""
    folder = resource_dir(kind, account, resource_id)
    with _lock:
        if (folder / "meta.json").exists():
            raise ApiError(409, f"{kind[:-1]} accounts/{account}/{kind}/{resource_id} already exists")
        stamp = now_rfc3339()
        meta = {"name": f"accounts/{account}/{kind}/{resource_id}", **meta, "createTime": stamp}
        with atomic_directory(folder) as tmp:
            meta["updateTime"] = stamp
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def list_resources(kind: str, account: str) -> list[dict[str, Any]]:
    folder = resources_root() / kind / check_id(account, "account id")
    found = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.name.startswith(".") or not (child / "meta.json").is_file():
            continue
        meta = read_meta(kind, account, child.name)
        if meta is not None:
            found.append(meta)
    return found


def delete_resource(kind: str, account: str, resource_id: str) -> None:
    meta = require_meta(kind, account, resource_id)
    folder = resource_dir(kind, account, resource_id)
    with _lock:
        if kind == "evaluators" and (account, resource_id) in _building:
            raise ApiError(409, f"evaluator {meta['name']} is being built: delete it once it is built")
        trash = folder.with_name(f".{folder.name}.deleted")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- signed uploads


def new_upload_token(kind: str, account: str, resource_id: str, files: dict[str, int]) -> str:
    """Remember one pending upload (``getUploadEndpoint``: ``{file name: size}``, replacing any earlier
    one) and return the token its URLs carry."""
    token = secrets.token_urlsafe(24)
    with _lock:
        meta = require_meta(kind, account, resource_id)
        meta["_upload"] = {"token": token, "files": files, "expires": time.time() + UPLOAD_TOKEN_TTL_S}
        write_meta(kind, meta)
    if kind == "datasets":
        shutil.rmtree(upload_parts_dir(account, resource_id), ignore_errors=True)
    return token


def check_upload_token(kind: str, account: str, resource_id: str, token: str) -> dict[str, Any]:
    """The pending upload a signed URL's token belongs to; 403 for a wrong or expired token, and for a
    resource that does not exist (the same answer, so that a URL without a key cannot probe for ids)."""
    meta = read_meta(kind, account, resource_id) or {}
    upload = meta.get("_upload") or {}
    expected = str(upload.get("token") or "")
    if not expected or not secrets.compare_digest(expected, token or ""):
        raise ApiError(403, "this upload URL is not valid: call getUploadEndpoint for a new one")
    if float(upload.get("expires", 0)) < time.time():
        raise ApiError(403, "this upload URL has expired: call getUploadEndpoint for a new one")
    return upload


# ----------------------------------------------------------------------------- datasets


def dataset_file(account: str, dataset_id: str) -> Path:
    return resource_dir("datasets", account, dataset_id) / "data.jsonl"


def mark_received(kind: str, account: str, resource_id: str, name: str) -> None:
    """Record that the signed URL of the declared file ``name`` was used: it takes one upload only."""
    with _lock:
        meta = require_meta(kind, account, resource_id)
        upload = meta.get("_upload") or {}
        upload["received"] = sorted({*upload.get("received", []), name})
        meta["_upload"] = upload
        write_meta(kind, meta)


def upload_parts_dir(account: str, dataset_id: str) -> Path:
    """Where the files of a signed-URL upload wait for ``validateUpload`` (one per declared file)."""
    return resource_dir("datasets", account, dataset_id) / ".upload-parts"


def join_upload_parts(account: str, dataset_id: str) -> tuple[Path, str]:
    """The declared files of the pending upload joined, in their declared order, into the file
    ``validateUpload`` checks (a part without a final newline gets one); and the name to report.
    A failed precondition (400) names the files that were not PUT."""
    meta = require_meta("datasets", account, dataset_id)
    files = list((meta.get("_upload") or {}).get("files") or {})
    parts = upload_parts_dir(account, dataset_id)
    missing = [name for name in files if not (parts / name).is_file()]
    if not files or missing:
        raise precondition(f"dataset {meta['name']} has no uploaded file to validate: PUT "
                       f"{', '.join(missing) or 'it'} to the signed URL")  # fmt: skip
    joined = pending_dataset_file(account, dataset_id, private=True)
    with open(joined, "wb") as out:
        for name in files:
            data = (parts / name).read_bytes()
            out.write(data if not data or data.endswith(b"\n") else data + b"\n")
    shutil.rmtree(parts, ignore_errors=True)
    return joined, files[0] if len(files) == 1 else f"{len(files)} files ({', '.join(files)})"


def pending_dataset_file(account: str, dataset_id: str, *, private: bool = False) -> Path:
    """Where an uploaded file waits for validation: ``upload.jsonl`` for the signed-URL flow (PUT,
    then validateUpload), a name of its own for a one-request upload."""
    name = f".upload-{secrets.token_hex(6)}.jsonl" if private else "upload.jsonl"
    return resource_dir("datasets", account, dataset_id) / name


def accept_dataset_file(account: str, dataset_id: str, uploaded: Path, filename: str) -> dict[str, Any]:
    """Check the uploaded JSONL at ``uploaded`` row by row and make it the dataset's file.

    A bad file is a 400 naming the rows and why; it is deleted and the dataset is unchanged.
    """
    try:
        meta = require_meta("datasets", account, dataset_id)
        if meta.get("state") == "READY":
            raise precondition(f"dataset {meta['name']} is already uploaded: delete it or create another")
        try:
            prompts = prompts_from_rows(read_jsonl(uploaded), source=filename or "the uploaded file")
        except DataError as exc:  # the file as the user named it, never the server's upload path
            text = exc.message + (f"\n{exc.hint}" if exc.hint else "")
            raise ApiError(400, text.replace(str(uploaded), filename or "the uploaded file")) from None
        size = uploaded.stat().st_size
        with _lock:  # checked again: another upload may have finished meanwhile
            meta = require_meta("datasets", account, dataset_id)
            if meta.get("state") == "READY":
                raise precondition(f"dataset {meta['name']} is already uploaded: delete it or create another")
            os.replace(uploaded, dataset_file(account, dataset_id))
            meta.pop("_upload", None)
            meta.update(state="READY", exampleCount=str(len(prompts)), status={"code": "OK", "message": ""})
            meta["userUploaded"] = {"filename": filename, "bytes": str(size)}
            write_meta("datasets", meta)
        return meta
    finally:
        uploaded.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- evaluators


def archive_file(account: str, evaluator_id: str) -> Path:
    return resource_dir("evaluators", account, evaluator_id) / "source.tar.gz"


def code_dir(account: str, evaluator_id: str) -> Path:
    return resource_dir("evaluators", account, evaluator_id) / "code"


def set_state(
    account: str, evaluator_id: str, state: str, message: str = "", **private: Any
) -> dict[str, Any]:
    with _lock:
        meta = require_meta("evaluators", account, evaluator_id)
        code = {"ACTIVE": "OK", "BUILD_FAILED": "INVALID_ARGUMENT"}.get(state, "OK")
        meta.update(state=state, status={"code": code, "message": message}, **private)
        write_meta("evaluators", meta)
        return meta


def start_build(
    account: str, evaluator_id: str, limits: UploadLimits, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """Unpack the evaluator's source now, then load it in a background thread (BUILDING -> ACTIVE or
    BUILD_FAILED). The source is the uploaded archive (``validateUpload``) or, from a create call
    with inline code, ``files``. A refused source is a 400 and BUILD_FAILED."""
    meta = require_meta("evaluators", account, evaluator_id)
    archive = archive_file(account, evaluator_id)
    if files is None and not archive.is_file():
        raise precondition(
            f"evaluator {meta['name']} has no uploaded source: call getUploadEndpoint and PUT it"
        )
    with _lock:
        if (account, evaluator_id) in _building:
            raise ApiError(409, f"evaluator {meta['name']} is already being built")
        _building.add((account, evaluator_id))
        meta.pop("_upload", None)  # the signed URL is spent
        write_meta("evaluators", meta)
    unpacked = resource_dir("evaluators", account, evaluator_id) / ".unpacked"
    what = "the uploaded archive" if files is None else "the code snippets"
    try:
        shutil.rmtree(unpacked, ignore_errors=True)
        if files is None:
            extract_archive(archive, unpacked, limits)
        else:
            write_files(files, unpacked, limits)
    except ArchiveError as exc:
        _building.discard((account, evaluator_id))
        archive.unlink(missing_ok=True)
        set_state(account, evaluator_id, "BUILD_FAILED", f"{what} was refused: {exc}")
        raise ApiError(400, f"{what} was refused: {exc}") from None
    except BaseException:  # a full disk, ...: the evaluator must not stay "being built" for good
        _building.discard((account, evaluator_id))
        raise
    meta = set_state(account, evaluator_id, "BUILDING", "loading the evaluator")
    threading.Thread(target=_build, args=(account, evaluator_id, unpacked), daemon=True,
                     name=f"openrft-build-{evaluator_id}").start()  # fmt: skip
    return meta


def rebuild(account: str, evaluator_id: str) -> dict[str, Any]:
    """Load the evaluator again from the code it already has (after its ``entryPoint`` changed)."""
    meta = require_meta("evaluators", account, evaluator_id)
    code = code_dir(account, evaluator_id)
    if not code.is_dir():
        raise precondition(f"evaluator {meta['name']} has no built source to load again: upload one")
    with _lock:
        if (account, evaluator_id) in _building:
            raise ApiError(409, f"evaluator {meta['name']} is already being built")
        _building.add((account, evaluator_id))
    unpacked = resource_dir("evaluators", account, evaluator_id) / ".unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    shutil.copytree(code, unpacked, ignore=shutil.ignore_patterns("__pycache__"))
    meta = set_state(account, evaluator_id, "BUILDING", "loading the evaluator")
    threading.Thread(target=_build, args=(account, evaluator_id, unpacked), daemon=True,
                     name=f"openrft-build-{evaluator_id}").start()  # fmt: skip
    return meta


def _build(account: str, evaluator_id: str, unpacked: Path) -> None:
    try:
        meta = require_meta("evaluators", account, evaluator_id)
        entry = entry_spec(unpacked, meta.get("entryPoint") or "")
        error = check_in_subprocess(entry, unpacked)
        if error is None:
            target = code_dir(account, evaluator_id)
            with atomic_directory(target) as tmp:
                tmp.rmdir()
                os.replace(unpacked, tmp)
            file_part, sep, function = entry.partition("::")
            spec = str(target / Path(file_part).relative_to(unpacked.resolve())) + sep + function
            set_state(account, evaluator_id, "ACTIVE", "", _spec=spec)
        else:
            set_state(account, evaluator_id, "BUILD_FAILED", _in_archive(error, unpacked))
    except Exception as exc:  # an entry point that names nothing usable, a full disk, ...
        message = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(ApiError):  # 404: deleted meanwhile
            set_state(account, evaluator_id, "BUILD_FAILED", _in_archive(message, unpacked))
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
        archive_file(account, evaluator_id).unlink(missing_ok=True)
        _building.discard((account, evaluator_id))


def _in_archive(message: str, unpacked: Path) -> str:
    """A build's message with the files named as in the archive (``main.py:1: ...``), not by where this
    server unpacked them, and at most a few thousand characters."""
    for folder in {str(unpacked.resolve()), str(unpacked)}:
        message = message.replace(folder + os.sep, "").replace(folder, ".")
    return message if len(message) <= 4000 else message[:4000] + " ..."


def entry_spec(root: Path, entry_point: str) -> str:
    """The loader spec (``/abs/file.py::function``) of ``entry_point`` inside the unpacked ``root``.

    ``entry_point`` is ``file.py::function`` (eval-protocol's form, relative to the project folder),
    ``package.module::function``, or empty: then the archive's ``main.py`` (or ``evaluator.py``, or its
    one ``test_*.py``) with its only evaluator. An archive that wraps everything in one top folder, as
    ``ep upload`` makes them, is looked into.
    """
    bases = [root]
    children = [c for c in root.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        bases.append(children[0])
    file_part, sep, function = entry_point.strip().partition("::")
    if file_part and not file_part.endswith(".py"):
        file_part = file_part.replace(".", "/") + ".py"
    for base in bases:
        candidates = [file_part] if file_part else _default_entries(base)
        for name in candidates:
            path = (base / name).resolve()
            if not path.is_relative_to(root.resolve()):
                raise ApiError(400, f"entryPoint {entry_point!r} points outside the uploaded archive")
            if path.is_file():
                return f"{path}::{function}" if sep and function else str(path)
    wanted = (
        f"{file_part!r} (from entryPoint {entry_point!r})"
        if file_part
        else "main.py, evaluator.py or one test_*.py"
    )
    raise ApiError(400, f"the uploaded archive has no {wanted}")


def _default_entries(base: Path) -> list[str]:
    tests = sorted(p.name for p in base.glob("test_*.py"))
    return [*ENTRY_FILES, *(tests if len(tests) == 1 else [])]


def check_in_subprocess(spec: str, cwd: Path) -> str | None:
    """Load ``spec`` in a fresh interpreter; None when it loads, else the loader's message."""
    try:
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "openrft.server.evaluator_check", spec],  # -P: never import from cwd
            cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"loading the evaluator took longer than {BUILD_TIMEOUT_S:.0f} s"
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        return f"loading the evaluator ended the process (exit code {proc.returncode}): {tail}"
    if result.get("ok"):
        return None
    return str(result.get("message") or "the evaluator could not be loaded")


def evaluator_state(account: str, evaluator_id: str) -> dict[str, Any]:
    """The stored evaluator; a BUILDING one that no thread of this process builds (the server was
    restarted) is marked BUILD_FAILED."""
    meta = require_meta("evaluators", account, evaluator_id)
    if meta.get("state") == "BUILDING" and (account, evaluator_id) not in _building:
        meta = set_state(
            account, evaluator_id, "BUILD_FAILED", "the server stopped during the build: upload again"
        )
    return meta
