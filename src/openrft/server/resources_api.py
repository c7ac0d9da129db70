"""Datasets and evaluators as API resources: uploaded files, or built-ins by name.

The paths and bodies are the managed service's (as its Python SDK, ``firectl`` and ``ep upload`` send
them); the files are stored by :mod:`openrft.server.resource_store`. Jobs name these resources, never
files on the server: :func:`dataset_path` and :func:`evaluator_spec` turn a job's ``dataset`` and
``evaluator`` fields into what :class:`openrft.config.JobConfig` accepts, and refuse anything else.

A signed upload URL (``:getUploadEndpoint``) points back at this server: a ``PUT`` to
``.../{id}:signedUpload?token=...``, authorised by its one-time token instead of an API key.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from openrft.data import is_builtin
from openrft.data.tasks import arithmetic, calculator
from openrft.errors import OpenRFTError
from openrft.evaluators.builtin import BUILTINS
from openrft.evaluators.loader import load_evaluator
from openrft.server import filtering
from openrft.server import resource_store as store
from openrft.server.errors import ApiError, precondition
from openrft.server.uploads import (
    ID_RE,
    SIGNED_UPLOAD,
    ArchiveError,
    UploadLimits,
    check_declared_sizes,
    check_id,
    check_member_name,
    check_texts,
    limited_receive,
    save_stream,
    too_large,
)

router = APIRouter()

DATASET_FORMATS = ("FORMAT_UNSPECIFIED", "CHAT", "COMPLETION", "RL")
DATASET_SUFFIXES = (".jsonl", ".json", ".txt")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the file
MAX_DATASET_FILES = 64  # shards one getUploadEndpoint may declare for a dataset
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 200
COMMON_FIELDS = ("name", "displayName", "description", "state", "status", "createTime", "updateTime")
A = "/v1/accounts/{account}"
BUILTIN_OPTIONS = re.compile(r"[a-z0-9_]+(:[A-Za-z_]+=[-+0-9.eE]+(,[A-Za-z_]+=[-+0-9.eE]+)*)?")


def configure_resources(
    app: FastAPI, *, home: Path | None = None, limits: UploadLimits | None = None
) -> None:
    """Where the app keeps uploads (``home/server``, default ``$OPENRFT_HOME``) and its size limits
    (default :meth:`UploadLimits.from_env`). ``create_app`` calls this once."""
    store.use_home(home)
    app.state.upload_limits = limits or UploadLimits.from_env()


def upload_limits(request: Request) -> UploadLimits:
    limits = getattr(request.app.state, "upload_limits", None)
    return limits if isinstance(limits, UploadLimits) else UploadLimits.from_env()


# ----------------------------------------------------------------------------- resolving job fields


def dataset_path(account: str, ref: str) -> str:
    """A job's ``dataset`` field -> what ``JobConfig.dataset`` accepts.

    ``accounts/{account}/datasets/{id}`` or a bare ``{id}`` of an uploaded, READY dataset gives the
    absolute path of its stored JSONL; a built-in task (``arithmetic``, ``arithmetic:count=50``,
    ``calculator``) gives its name. Anything else, a file path included, is a 400; an unknown id a
    404; a dataset whose file is not uploaded yet a failed precondition (400).
    """
    check_id(account, "account id")
    ref = ref.strip() if isinstance(ref, str) else ""
    if ref and is_builtin(ref):
        return _checked_builtin_dataset(ref)
    dataset_id = _resource_id(account, ref, "datasets", "dataset")
    meta = store.read_meta("datasets", account, dataset_id)
    if meta is None and is_builtin(dataset_id):
        return dataset_id
    if meta is None:
        raise ApiError(404, f"dataset: accounts/{account}/datasets/{dataset_id} not found")
    if meta.get("state") != "READY":
        raise precondition(f"dataset: {meta['name']} has no uploaded file yet (state {meta.get('state')})")
    return str(store.dataset_file(account, dataset_id))


def evaluator_spec(account: str, ref: str) -> str:
    """A job's ``evaluator`` field -> the evaluator spec ``JobConfig.evaluator`` accepts.

    ``accounts/{account}/evaluators/{id}`` or a bare ``{id}`` of an uploaded, ACTIVE evaluator gives
    ``/abs/path/file.py::function`` inside its unpacked upload; a built-in (``gsm8k``,
    ``arithmetic:partial_weight=0``, ``calculator``, or ``accounts/{account}/evaluators/gsm8k``) gives
    its name. Anything else is a 400; an unknown id a 404; one not ACTIVE (yet) a failed precondition (400).
    """
    check_id(account, "account id")
    ref = ref.strip() if isinstance(ref, str) else ""
    if ref.partition(":")[0] in BUILTINS:
        return _checked_builtin_evaluator(ref)
    evaluator_id = _resource_id(account, ref, "evaluators", "evaluator")
    if evaluator_id in BUILTINS:
        return evaluator_id
    meta = store.read_meta("evaluators", account, evaluator_id)
    if meta is None:
        raise ApiError(404, f"evaluator: accounts/{account}/evaluators/{evaluator_id} not found")
    meta = store.evaluator_state(account, evaluator_id)
    if meta.get("state") != "ACTIVE" or not meta.get("_spec"):
        message = (meta.get("status") or {}).get("message") or ""
        raise precondition(
            f"evaluator: {meta['name']} is {meta.get('state')}, not ACTIVE"
            + (f": {message}" if message else ""),
        )
    return str(meta["_spec"])


def _resource_id(account: str, ref: str, kind: str, field: str) -> str:
    match = re.fullmatch(rf"accounts/([^/]+)/{kind}/([^/]+)", ref)
    if match:
        if match.group(1) != account:
            raise ApiError(
                404, f"{field}: {ref} not found (a job of account {account} uses that account's {kind})"
            )
        return check_id(match.group(2), f"{field} id")
    if ID_RE.fullmatch(ref):
        return ref
    builtins = "arithmetic, calculator" if kind == "datasets" else ", ".join(BUILTINS)
    raise ApiError(
        400,
        f"{field}: {ref!r} is not accepted: give accounts/{account}/{kind}/<id> of an uploaded {field} "
        f"or a built-in ({builtins}); the server does not read files named by path",
    )


def _checked_builtin_dataset(ref: str) -> str:
    try:
        if ref.partition(":")[0] == "calculator":
            calculator.parse_source(ref)
        else:
            arithmetic.parse_source(ref)
    except OpenRFTError as exc:
        raise ApiError(400, f"dataset: {exc.message}") from None
    return ref


def _checked_builtin_evaluator(ref: str) -> str:
    if not BUILTIN_OPTIONS.fullmatch(ref):
        raise ApiError(400, f"evaluator: {ref!r} is not a built-in evaluator (name or name:weight=value,...)")
    try:
        load_evaluator(ref)
    except OpenRFTError as exc:
        raise ApiError(400, f"evaluator: {exc.message}") from None
    return ref


# ----------------------------------------------------------------------------- shared helpers


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json() if await request.body() else {}
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to read
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _masked(obj: dict[str, Any], read_mask: str | None) -> dict[str, Any]:
    return filtering.masked(obj, read_mask, set(COMMON_FIELDS) | obj.keys())


def page(items: list[dict[str, Any]], key: str, page_size: int | None, page_token: str | None,
         filter: str | None, order_by: str | None, read_mask: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One page of a list answer in the service's shape: ``{key: [...], "nextPageToken": ...}``,
    after ``filter`` and ``orderBy`` (:mod:`openrft.server.filtering`; by name when not given)."""
    items = [store.public(m) for m in items]
    fields = set(COMMON_FIELDS).union(*(item.keys() for item in items))
    items = filtering.ordered(filtering.select(items, filter or "", fields), order_by or "", fields)
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if size < 1:
        raise ApiError(400, f"pageSize must be >= 1, not {page_size}")
    start = filtering.page_start(page_token, filter, order_by)
    chosen = items[start : start + size]
    more = start + size < len(items)
    chosen = [filtering.masked(item, read_mask, fields) for item in chosen]
    return {key: chosen, "nextPageToken": filtering.page_token(start + size, filter, order_by) if more else "",
            "totalSize": len(items)}  # fmt: skip


def signed_url(request: Request, kind: str, account: str, resource_id: str, token: str, name: str) -> str:
    """The URL one declared file is PUT to (https when the server serves TLS or sits behind a proxy
    that says so in ``X-Forwarded-Proto``)."""
    base = str(request.base_url).rstrip("/")
    query = urlencode({"token": token, "file": name})
    return f"{base}/v1/accounts/{account}/{kind}/{resource_id}{SIGNED_UPLOAD}?{query}"


async def _form_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1024 * 1024):
        yield chunk


async def _receive_signed_put(request: Request, kind: str, account: str, resource_id: str,
                              target_for: Callable[[str], Path], limit: int, what: str) -> int:  # fmt: skip
    """Store the body of a PUT to a signed URL at ``target_for(declared file name)``; its size must be
    the one declared."""
    upload = store.check_upload_token(kind, account, resource_id, request.query_params.get("token", ""))
    files = upload.get("files") or {}
    name = request.query_params.get("file") or (next(iter(files)) if len(files) == 1 else "")
    if name not in files:
        raise ApiError(400, f"this upload URL names no declared file ({name!r}): use the URL given for it")
    if name in upload.get("received", []):
        raise ApiError(403, "this upload URL was used already: call getUploadEndpoint for a new one")
    claim = (kind, account, resource_id, name)
    if claim in _RECEIVING:  # two PUTs at once: the URL takes one upload
        raise ApiError(409, "this upload URL is receiving an upload already")
    _RECEIVING.add(claim)
    try:
        return await _store_put(request, kind, account, resource_id, name, int(files[name]), target_for(name),
                                limit, what)  # fmt: skip
    finally:
        _RECEIVING.discard(claim)


_RECEIVING: set[tuple[str, str, str, str]] = set()  # signed uploads under way (one event loop: no lock)


async def _store_put(request: Request, kind: str, account: str, resource_id: str, name: str, declared: int,
                     target: Path, limit: int, what: str) -> int:  # fmt: skip
    incoming = target.with_name(f".{target.name}.incoming")  # a refused body leaves an earlier PUT alone
    size = await save_stream(request.stream(), incoming, limit, what)
    if declared >= 0 and size != declared:
        incoming.unlink(missing_ok=True)
        raise ApiError(400, f"the upload has {size} bytes, but getUploadEndpoint was told {declared}")
    os.replace(incoming, target)
    store.mark_received(kind, account, resource_id, name)
    return size


# ----------------------------------------------------------------------------- datasets


@router.post(A + "/datasets")
async def create_dataset(account: str, request: Request) -> dict[str, Any]:
    body = await json_body(request)
    dataset_id = check_id(body.get("datasetId") or "", "datasetId")
    dataset = body.get("dataset") or {}
    if not isinstance(dataset, dict):
        raise ApiError(400, "dataset must be an object ({displayName, format, exampleCount, ...})")
    if body.get("sourceDatasetId") or dataset.get("externalUrl"):
        raise ApiError(400, "datasets are copied from files uploaded to this server only: "
                            "create it, then call :upload (or :getUploadEndpoint)")  # fmt: skip
    fmt = dataset.get("format") or "FORMAT_UNSPECIFIED"
    if fmt not in DATASET_FORMATS:
        raise ApiError(400, f"dataset.format {fmt!r} is not one of {', '.join(DATASET_FORMATS)}")
    if is_builtin(dataset_id):
        raise ApiError(409, f"dataset id {dataset_id!r} is the name of a built-in task: choose another")
    kept = {
        k: dataset[k]
        for k in ("displayName", "evalProtocol", "exampleCount", "sourceJobName")
        if k in dataset
    }
    check_texts(kept, "dataset.")
    meta = {"displayName": dataset_id, **kept, "format": fmt, "state": "UPLOADING",
            "status": {"code": "OK", "message": "waiting for the file"}}  # fmt: skip
    return store.public(store.create_resource("datasets", account, dataset_id, meta))


@router.get(A + "/datasets")
async def list_datasets(account: str, pageSize: int | None = None, pageToken: str | None = None,
                        filter: str | None = None, orderBy: str | None = None,
                        readMask: str | None = None) -> dict[str, Any]:  # fmt: skip
    return page(store.list_resources("datasets", account), "datasets", pageSize, pageToken, filter, orderBy,
                readMask)  # fmt: skip


@router.get(A + "/datasets/{dataset_id}")
async def get_dataset(account: str, dataset_id: str, readMask: str | None = None) -> dict[str, Any]:
    return _masked(store.public(store.require_meta("datasets", account, dataset_id)), readMask)


@router.delete(A + "/datasets/{dataset_id}")
async def delete_dataset(account: str, dataset_id: str, request: Request) -> dict[str, Any]:
    refuse_if_in_use(request, "datasets", account, dataset_id, "deleted")
    store.delete_resource("datasets", account, dataset_id)
    return {}


def refuse_if_in_use(request: Request, kind: str, account: str, resource_id: str, what: str) -> None:
    """A 400 FAILED_PRECONDITION when a job that may still run reads this resource's files (queued,
    running, or stopped where it can resume): deleting or replacing them would make the job (or its
    resume) fail, or train on what it was not created with."""
    folder = store.resource_dir(kind, account, resource_id)
    job_store = getattr(request.app.state, "job_store", None)
    users = []
    for record in job_store.list() if job_store is not None else []:
        if record.state.value in ("COMPLETED", "EARLY_STOPPED"):
            continue
        flat = record.flat_config()
        paths = [
            str(flat.get(k) or "").partition("::")[0] for k in ("dataset", "evaluation_dataset", "evaluator")
        ]
        if any(p and Path(p).is_relative_to(folder) for p in paths):
            users.append(record.id)
    if users:
        raise ApiError(
            400,
            f"{kind[:-1]} accounts/{account}/{kind}/{resource_id} cannot be {what}: job(s) "
            f"{', '.join(users)} use it and may still run (queued, running, or stopped where they can "
            "resume); wait until they finish, or delete them first",
            "FAILED_PRECONDITION",
        )


@router.post(A + "/datasets/{dataset_id}:upload")
async def upload_dataset(account: str, dataset_id: str, request: Request) -> dict[str, Any]:
    """The one-request upload: a multipart form with the JSONL as ``file``."""
    store.require_meta("datasets", account, dataset_id)
    limit = upload_limits(request).max_dataset_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large("the dataset file", limit)
    limited = Request(
        request.scope, limited_receive(request.receive, limit + MULTIPART_OVERHEAD, "the dataset file")
    )
    target = store.pending_dataset_file(account, dataset_id, private=True)
    async with limited.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "send the dataset as a multipart form field named 'file'")
        filename = Path(upload.filename or "data.jsonl").name
        size = await save_stream(_form_chunks(upload), target, limit, "the dataset file")
    meta = await run_in_threadpool(store.accept_dataset_file, account, dataset_id, target, filename)
    return {"id": dataset_id, "bytes": size, "created_at": int(time.time()), "filename": filename, "object": "file",
            "purpose": "fine-tune", "dataset": store.public(meta)}  # fmt: skip


async def _upload_endpoint(
    request: Request, kind: str, account: str, resource_id: str, limit: int, what: str
) -> dict[str, Any]:
    """``:getUploadEndpoint``: a one-time signed URL on this server for the file the body declares."""
    body = await json_body(request)
    suffixes = DATASET_SUFFIXES if kind == "datasets" else ARCHIVE_SUFFIXES
    max_files = MAX_DATASET_FILES if kind == "datasets" else 1  # a dataset may come in shards
    files = check_declared_sizes(body.get("filenameToSize"), limit, what, suffixes, max_files)
    token = store.new_upload_token(kind, account, resource_id, files)
    return {"filenameToSignedUrls": {name: signed_url(request, kind, account, resource_id, token, name)
                                     for name in files}}  # fmt: skip


@router.post(A + "/datasets/{dataset_id}:getUploadEndpoint")
async def dataset_upload_endpoint(account: str, dataset_id: str, request: Request) -> dict[str, Any]:
    meta = store.require_meta("datasets", account, dataset_id)
    if meta.get("state") == "READY":
        raise precondition(f"dataset {meta['name']} is already uploaded: delete it or create another")
    limit = upload_limits(request).max_dataset_bytes
    return await _upload_endpoint(request, "datasets", account, dataset_id, limit, "the dataset file")


@router.put(A + "/datasets/{dataset_id}" + SIGNED_UPLOAD)
async def put_dataset(account: str, dataset_id: str, request: Request) -> Response:
    limit = upload_limits(request).max_dataset_bytes
    parts = store.upload_parts_dir(account, dataset_id)  # each declared file under its own name
    await _receive_signed_put(
        request, "datasets", account, dataset_id, parts.joinpath, limit, "the dataset file"
    )
    return Response(status_code=200)


@router.post(A + "/datasets/{dataset_id}:validateUpload")
async def validate_dataset(account: str, dataset_id: str) -> dict[str, Any]:
    meta = store.require_meta("datasets", account, dataset_id)
    if meta.get("state") == "READY":
        raise precondition(f"dataset {meta['name']} is already uploaded: delete it or create another")
    pending, filename = await run_in_threadpool(store.join_upload_parts, account, dataset_id)
    meta = await run_in_threadpool(store.accept_dataset_file, account, dataset_id, pending, filename)
    return store.public(meta)


# ----------------------------------------------------------------------------- evaluators


EVALUATOR_FIELDS = ("displayName", "description", "entryPoint", "commitHash", "requirements", "defaultDataset",
                    "criteria", "source")  # fmt: skip


@router.post(A + "/evaluatorsV2")
async def create_evaluator(account: str, request: Request) -> dict[str, Any]:
    """Register an evaluator. Its code comes later as an archive (getUploadEndpoint, PUT,
    validateUpload), or now, inline, as a ``criteria`` entry of type ``CODE_SNIPPETS``."""
    body = await json_body(request)
    evaluator = body.get("evaluator") or {}
    if not isinstance(evaluator, dict):
        raise ApiError(400, "evaluator must be an object ({displayName, entryPoint, ...})")
    evaluator_id = check_id(body.get("evaluatorId") or f"evaluator-{secrets.token_hex(4)}", "evaluatorId")
    if evaluator_id in BUILTINS:
        raise ApiError(409, f"evaluator id {evaluator_id!r} is a built-in evaluator: choose another")
    files, snippet_entry = _code_snippets(evaluator.get("criteria"))
    entry = evaluator.get("entryPoint") or snippet_entry
    _check_entry_point(entry)
    kept = {k: evaluator[k] for k in EVALUATOR_FIELDS if k in evaluator}
    check_texts(kept, "evaluator.")
    waiting = "waiting for the source archive (getUploadEndpoint, PUT, validateUpload)"
    meta = {"displayName": evaluator_id, **kept, "entryPoint": entry or "", "source": {"type": "TYPE_UPLOAD"},
            "state": "STATE_UNSPECIFIED", "status": {"code": "OK", "message": waiting}}  # fmt: skip
    meta = store.create_resource("evaluators", account, evaluator_id, meta)
    if files is not None:
        meta = await run_in_threadpool(
            store.start_build, account, evaluator_id, upload_limits(request), files
        )
    return store.public(meta)


def _code_snippets(criteria: Any) -> tuple[dict[str, str] | None, str]:
    """``(files, entry point)`` of the first ``CODE_SNIPPETS`` criterion; ``(None, "")`` without one."""
    if criteria in (None, []):
        return None, ""
    if not isinstance(criteria, list) or not all(isinstance(c, dict) for c in criteria):
        raise ApiError(400, "criteria must be a list of objects")
    for criterion in criteria:
        snippets = criterion.get("codeSnippets")
        if criterion.get("type") != "CODE_SNIPPETS" and not snippets:
            continue
        if not isinstance(snippets, dict) or not isinstance(snippets.get("fileContents"), dict):
            raise ApiError(400, "a CODE_SNIPPETS criterion needs codeSnippets.fileContents {file name: code}")
        if (snippets.get("language") or "python").lower() != "python":
            raise ApiError(
                400, f"codeSnippets.language {snippets['language']!r}: only python evaluators run here"
            )
        files = snippets["fileContents"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ApiError(400, "codeSnippets.fileContents must map file names to source text")
        try:
            for name in files:
                check_member_name(name)
        except ArchiveError as exc:
            raise ApiError(400, f"codeSnippets.fileContents: {exc}") from None
        entry_file = snippets.get("entryFile") or ""
        entry_func = snippets.get("entryFunc") or ""
        return files, f"{entry_file}::{entry_func}" if entry_file and entry_func else entry_file
    return None, ""


def _check_entry_point(entry: Any) -> None:
    if entry in (None, ""):
        return
    if not isinstance(entry, str):
        raise ApiError(400, "entryPoint must be a string such as 'main.py::evaluate'")
    file_part = entry.partition("::")[0].replace("\\", "/")
    if file_part.startswith(("/", "~")) or ".." in file_part.split("/") or re.match(r"^[A-Za-z]:", file_part):
        raise ApiError(400, f"entryPoint {entry!r} must name a file inside the uploaded archive")


@router.get(A + "/evaluators")
async def list_evaluators(account: str, pageSize: int | None = None, pageToken: str | None = None,
                          filter: str | None = None, orderBy: str | None = None,
                          readMask: str | None = None) -> dict[str, Any]:  # fmt: skip
    return page(store.list_resources("evaluators", account), "evaluators", pageSize, pageToken, filter, orderBy,
                readMask)  # fmt: skip


@router.get(A + "/evaluators/{evaluator_id}")
async def get_evaluator(account: str, evaluator_id: str, readMask: str | None = None) -> dict[str, Any]:
    return _masked(_evaluator_object(account, evaluator_id), readMask)


def _evaluator_object(account: str, evaluator_id: str) -> dict[str, Any]:
    if evaluator_id in BUILTINS and store.read_meta("evaluators", account, evaluator_id) is None:
        return {
            "name": f"accounts/{account}/evaluators/{evaluator_id}",
            "displayName": evaluator_id,
            "description": "built-in evaluator",
            "state": "ACTIVE",
            "status": {"code": "OK", "message": ""},
        }
    return store.public(store.evaluator_state(account, evaluator_id))


@router.delete(A + "/evaluators/{evaluator_id}")
async def delete_evaluator(account: str, evaluator_id: str, request: Request) -> dict[str, Any]:
    refuse_if_in_use(request, "evaluators", account, evaluator_id, "deleted")
    store.delete_resource("evaluators", account, evaluator_id)
    return {}


@router.post(A + "/evaluators/{evaluator_id}:getUploadEndpoint")
async def evaluator_upload_endpoint(account: str, evaluator_id: str, request: Request) -> dict[str, Any]:
    meta = store.require_meta("evaluators", account, evaluator_id)
    if meta.get("state") == "BUILDING":
        raise ApiError(409, f"evaluator {meta['name']} is being built: wait for ACTIVE or BUILD_FAILED")
    refuse_if_in_use(request, "evaluators", account, evaluator_id, "replaced")
    limit = upload_limits(request).max_archive_bytes
    return await _upload_endpoint(
        request, "evaluators", account, evaluator_id, limit, "the evaluator archive"
    )


@router.put(A + "/evaluators/{evaluator_id}" + SIGNED_UPLOAD)
async def put_evaluator(account: str, evaluator_id: str, request: Request) -> Response:
    store.check_upload_token("evaluators", account, evaluator_id, request.query_params.get("token", ""))
    if store.require_meta("evaluators", account, evaluator_id).get("state") == "BUILDING":
        raise ApiError(409, f"evaluator accounts/{account}/evaluators/{evaluator_id} is being built")
    limit = upload_limits(request).max_archive_bytes
    archive = store.archive_file(account, evaluator_id)
    await _receive_signed_put(
        request, "evaluators", account, evaluator_id, lambda _: archive, limit, "the evaluator archive"
    )
    return Response(status_code=200)


@router.post(A + "/evaluators/{evaluator_id}:validateUpload")
async def validate_evaluator(account: str, evaluator_id: str, request: Request) -> dict[str, Any]:
    refuse_if_in_use(request, "evaluators", account, evaluator_id, "replaced")
    meta = await run_in_threadpool(store.start_build, account, evaluator_id, upload_limits(request))
    return store.public(meta)


__all__ = ["configure_resources", "dataset_path", "evaluator_spec", "router"]
