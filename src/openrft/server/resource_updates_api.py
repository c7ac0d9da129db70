"""Changing and reading back uploaded datasets and evaluators, as the service's SDK does it.

::

    PATCH /v1/accounts/{a}/datasets/{id}                                 datasets.update
    PATCH /v1/accounts/{a}/evaluators/{id}[?prepareCodeUpload=true]      evaluators.update
    GET   /v1/accounts/{a}/datasets/{id}:getDownloadEndpoint             datasets.get_download_endpoint
    GET   /v1/accounts/{a}/evaluators/{id}:getSourceCodeSignedUrl        evaluators.get_source_code_endpoint
    GET   /v1/accounts/{a}/evaluators/{id}:getBuildLogEndpoint           evaluators.get_build_log_endpoint
    GET   /v1/accounts/{a}/{kind}/{id}:signedDownload?token=...&file=... what those URLs point at

A signed download URL points back at this server and carries its own token, an HMAC of what it
grants and until when (an hour), keyed by a secret kept in the server's folder: like a storage
service's signed URL it needs no API key. Source code comes back as the ``.tar.gz`` of the files
the evaluator runs from; the build log is the evaluator's state, its message and when it changed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import tarfile
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from openrft.server import resource_store as store
from openrft.server.errors import ApiError, precondition
from openrft.server.resources_api import DATASET_FORMATS, A, json_body, refuse_if_in_use
from openrft.server.uploads import SIGNED_DOWNLOAD, check_texts

router = APIRouter()

DOWNLOAD_TTL_S = 3600
DATASET_UPDATES = ("displayName", "exampleCount", "format", "sourceJobName", "evalProtocol")
EVALUATOR_UPDATES = (
    "displayName",
    "description",
    "defaultDataset",
    "entryPoint",
    "requirements",
    "commitHash",
)


# ----------------------------------------------------------------------------- updates


@router.patch(A + "/datasets/{dataset_id}")
async def update_dataset(account: str, dataset_id: str, request: Request) -> dict[str, Any]:
    body = await json_body(request)
    meta = store.require_meta("datasets", account, dataset_id)
    if body.get("externalUrl"):
        raise ApiError(
            400, "externalUrl: datasets are files uploaded to this server; upload the new file instead"
        )
    _refuse_unknown(
        body, DATASET_UPDATES + ("externalUrl", "name", "state", "createTime", "updateTime"), "dataset"
    )
    if "format" in body and body["format"] not in DATASET_FORMATS:
        raise ApiError(400, f"format {body['format']!r} is not one of {', '.join(DATASET_FORMATS)}")
    check_texts(body)
    meta.update({k: body[k] for k in DATASET_UPDATES if k in body})
    meta["updateTime"] = store.now_rfc3339()
    store.write_meta("datasets", meta)
    return store.public(meta)


@router.patch(A + "/evaluators/{evaluator_id}")
async def update_evaluator(account: str, evaluator_id: str, request: Request) -> dict[str, Any]:
    """Metadata changes apply at once; a new ``entryPoint`` rebuilds from the code already there;
    ``prepareCodeUpload=true`` makes it wait for a new archive (getUploadEndpoint, PUT, validateUpload).
    Neither is allowed while a queued or running job uses the evaluator."""
    body = await json_body(request)
    meta = store.require_meta("evaluators", account, evaluator_id)
    fields = ("criteria", "source", "name", "state", "createTime", "updateTime")
    _refuse_unknown(body, EVALUATOR_UPDATES + fields, "evaluator")
    if body.get("criteria"):
        raise ApiError(400, "criteria: send new code through prepareCodeUpload=true and the upload flow")
    prepare = request.query_params.get("prepareCodeUpload", "").lower() == "true"
    rebuild = "entryPoint" in body and body["entryPoint"] != meta.get("entryPoint")
    if prepare or rebuild:
        refuse_if_in_use(request, "evaluators", account, evaluator_id, "changed")
        if meta.get("state") == "BUILDING":
            raise ApiError(409, f"evaluator {meta['name']} is being built: wait for ACTIVE or BUILD_FAILED")
    check_texts(body)
    meta.update({k: body[k] for k in EVALUATOR_UPDATES if k in body})
    meta["updateTime"] = store.now_rfc3339()
    if prepare:
        meta.update(
            state="STATE_UNSPECIFIED", status={"code": "OK", "message": "waiting for the new source archive"}
        )
        meta.pop("_spec", None)
    store.write_meta("evaluators", meta)
    if rebuild and not prepare:
        meta = await run_in_threadpool(store.rebuild, account, evaluator_id)
    return store.public(meta)


def _refuse_unknown(body: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ApiError(400, f"{unknown[0]}: not a field of a {what} that can be updated here")


# ----------------------------------------------------------------------------- signed downloads


@router.get(A + "/datasets/{dataset_id}:getDownloadEndpoint")
async def dataset_download_endpoint(account: str, dataset_id: str, request: Request) -> dict[str, Any]:
    meta = store.require_meta("datasets", account, dataset_id)
    if meta.get("state") != "READY":
        raise precondition(f"dataset {meta['name']} has no uploaded file yet (state {meta.get('state')})")
    return {"filenameToSignedUrls": {"data.jsonl": signed(request, "datasets", account, dataset_id, "data")}}


@router.get(A + "/evaluators/{evaluator_id}:getSourceCodeSignedUrl")
async def evaluator_source_endpoint(account: str, evaluator_id: str, request: Request) -> dict[str, Any]:
    meta = store.require_meta("evaluators", account, evaluator_id)
    if not store.code_dir(account, evaluator_id).is_dir():
        raise precondition(f"evaluator {meta['name']} has no built source (state {meta.get('state')})")
    name = f"{evaluator_id}.tar.gz"
    return {"filenameToSignedUrls": {name: signed(request, "evaluators", account, evaluator_id, "source")}}


@router.get(A + "/evaluators/{evaluator_id}:getBuildLogEndpoint")
async def evaluator_build_log_endpoint(account: str, evaluator_id: str, request: Request) -> dict[str, Any]:
    store.require_meta("evaluators", account, evaluator_id)
    return {"buildLogSignedUri": signed(request, "evaluators", account, evaluator_id, "log")}


@router.get(A + "/{kind}/{resource_id}" + SIGNED_DOWNLOAD)
async def signed_download(
    account: str, kind: str, resource_id: str, token: str = "", file: str = ""
) -> Response:
    if kind not in ("datasets", "evaluators") or not valid_signature(token, kind, account, resource_id, file):
        raise ApiError(403, "the download URL is not valid or has expired: ask for a new one")
    store.require_meta(kind, account, resource_id)  # deleted since the URL was given: 404
    if file == "data":
        return Response(store.dataset_file(account, resource_id).read_bytes(), media_type="application/jsonl")
    if file == "source":
        data = await run_in_threadpool(_tar_gz, store.code_dir(account, resource_id))
        return Response(data, media_type="application/gzip")
    meta = store.evaluator_state(account, resource_id)
    status = meta.get("status") or {}
    log = f"{meta.get('updateTime', '')} {meta.get('state', '')} {status.get('message', '')}".strip() + "\n"
    return Response(log, media_type="text/plain")


def signed(request: Request, kind: str, account: str, resource_id: str, file: str, version: str = "") -> str:
    """A URL of this server that hands out ``file`` of the resource for an hour, without a key (and
    only while the resource is ``version``, when given)."""
    expires = int(time.time()) + DOWNLOAD_TTL_S
    token = f"{expires}.{_mac(kind, account, resource_id + version, file, expires)}"
    base = str(request.base_url).rstrip("/")
    return f"{base}/v1/accounts/{account}/{kind}/{resource_id}{SIGNED_DOWNLOAD}?token={token}&file={file}"


def valid_signature(token: str, kind: str, account: str, resource_id: str, file: str) -> bool:
    """Whether ``token`` is :func:`signed`'s for this file, and not expired."""
    expires, _, mac = token.partition(".")
    named = file in ("data", "source", "log") or kind == "models"  # a model's files by their names
    if not expires.isdigit() or int(expires) < time.time() or not named:
        return False
    return hmac.compare_digest(mac, _mac(kind, account, resource_id, file, int(expires)))


def _mac(kind: str, account: str, resource_id: str, file: str, expires: int) -> str:
    message = f"{kind}/{account}/{resource_id}/{file}/{expires}".encode()
    return hmac.new(_secret(), message, hashlib.sha256).hexdigest()


def _secret() -> bytes:
    """This server's signing key, made once under its folder (owner-only)."""
    path = store.resources_root() / ".signing-key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".signing-key.{secrets.token_hex(4)}")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_bytes()


def _tar_gz(folder: Any) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.add(path, arcname=str(path.relative_to(folder)))
    return buffer.getvalue()


__all__ = ["router", "signed", "valid_signature"]
