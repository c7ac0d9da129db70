"""The trained adapters of this server as the service's ``models`` resource, as its SDK reads them.

::

    GET    /v1/accounts/{a}/models                              models.list (filter, orderBy, pages)
    GET    /v1/accounts/{a}/models/{name}                       models.get
    GET    /v1/accounts/{a}/models/{name}:getDownloadEndpoint   models.get_download_endpoint
    GET    /v1/accounts/{a}/models/{name}:signedDownload?...    what those URLs point at (no key)
    DELETE /v1/accounts/{a}/models/{name}                       models.delete

A model is a job's trained adapter, named by the job's ``outputModel`` (kept under the server's
``models/`` folder, and kept when the job is deleted) or, when it named none, by the job's id. Only
adapters that exist are models: a job that has not finished has none yet. Named models are the
server's, whichever account asks (accounts are not a permission boundary, see docs/server.md); a
job's own is seen where the job is. Download URLs are signed as the datasets' are (an hour, no key).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from openrft.jobs.resume_from import jobs_starting_from
from openrft.jobs.store import JobRecord, JobStore
from openrft.models import warm_start_values
from openrft.server import filtering, wire
from openrft.server.errors import ApiError, precondition
from openrft.server.job_object import rfc3339
from openrft.server.resource_updates_api import signed, valid_signature
from openrft.server.uploads import SIGNED_DOWNLOAD

router = APIRouter()
BASE = "/v1/accounts/{account}/models"
MAX_PAGE, DEFAULT_PAGE = 200, 50
MODEL_FIELDS = frozenset({
    "name", "displayName", "kind", "state", "createTime", "updateTime", "fineTuningJob", "peftDetails",
    "description",
})  # fmt: skip
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,200}")  # a file of an adapter folder, at its top


def _jobs(request: Request) -> JobStore:
    return request.app.state.job_store


def trained_models(store: JobStore, account: str) -> dict[str, tuple[Path, JobRecord | None]]:
    """Every adapter ``account`` can name, by model name: its folder and the job that trained it."""
    found: dict[str, tuple[Path, JobRecord | None]] = {}
    named = store.root / "models"
    for folder in sorted(named.iterdir()) if named.is_dir() else ():
        if (folder / "adapter_config.json").is_file() and wire.MODEL_NAME.fullmatch(folder.name):
            found[folder.name] = (folder, None)  # its job deleted: the model stays
    for record in sorted(store.list(), key=lambda r: r.created_at):  # the latest job of a name wins
        meta = wire.read_meta(record)
        refs = meta.get("refs", {})
        output = refs.get("outputModel")
        if output and output in found:
            found[output] = (found[output][0], record)
        elif not output and meta.get("account") in (None, account):
            folder = Path(record.output_dir or record.job_dir / "output")
            if (folder / "adapter_config.json").is_file() and record.id not in found:
                found[record.id] = (folder, record)
    return found


def _model(store: JobStore, account: str, name: str) -> tuple[Path, JobRecord | None]:
    found = trained_models(store, account).get(name)
    if found is None:
        raise ApiError(404, f"model {name!r} not found: no trained adapter of that name on this server")
    return found


def model_object(name: str, folder: Path, record: JobRecord | None, account: str) -> dict[str, Any]:
    """A trained adapter in the service's shape (kind HF_PEFT_ADDON, READY, its PEFT details)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    modules = config.get("target_modules") if isinstance(config, dict) else None
    modules = [modules] if isinstance(modules, str) else sorted(modules or [])
    shape = warm_start_values(folder)
    changed = rfc3339(max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0))
    made = rfc3339(record.created_at) if record is not None else changed
    obj: dict[str, Any] = {
        "name": f"accounts/{account}/models/{name}",
        "displayName": name,
        "kind": "HF_PEFT_ADDON",
        "state": "READY",
        "createTime": made,
        "updateTime": changed,
        "peftDetails": {
            "baseModel": shape.get("base_model", ""),
            "r": shape.get("lora_rank", 0),
            "targetModules": modules,
        },  # fmt: skip
        "description": f"LoRA adapter trained by openrft job {record.id}" if record else "LoRA adapter",
    }
    if record is not None:  # under the account the job belongs to (a command line's: the asker's)
        owner = wire.read_meta(record).get("account") or account
        obj["fineTuningJob"] = f"accounts/{owner}/reinforcementFineTuningJobs/{record.id}"
    return obj


def _version(folder: Path) -> str:
    """Which folder holds the model now (its inode: an adapter folder is replaced whole)."""
    return f"#{folder.stat().st_ino}"


def adapter_files(folder: Path) -> list[str]:
    """The files a download hands out: the adapter folder's own, at its top (no hidden marks); the API's
    and the dashboard's."""
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink() and FILE_NAME.fullmatch(p.name)
    )


@router.get(BASE)
def list_models(
    request: Request,
    account: str,
    page_size: int = Query(0, alias="pageSize"),
    page_token: str = Query("", alias="pageToken"),
    filter_: str = Query("", alias="filter"),
    order_by: str = Query("", alias="orderBy"),
    read_mask: str = Query("", alias="readMask"),
) -> dict[str, Any]:
    found = trained_models(_jobs(request), account)
    models = [model_object(name, folder, record, account) for name, (folder, record) in found.items()]
    return filtering.list_page(
        models, "models", MODEL_FIELDS, size=page_size, token=page_token, filter_=filter_, order_by=order_by,
        read_mask=read_mask, default=DEFAULT_PAGE, most=MAX_PAGE,
    )  # fmt: skip


@router.get(BASE + "/{name}:getDownloadEndpoint")
def model_download_endpoint(request: Request, account: str, name: str) -> dict[str, Any]:
    folder, _ = _model(_jobs(request), account, name)
    this = _version(folder)  # a URL stops working when the name is deleted and taken again
    return {
        "filenameToSignedUrls": {
            f: signed(request, "models", account, name, f, this) for f in adapter_files(folder)
        }
    }


@router.get(BASE + "/{name}" + SIGNED_DOWNLOAD)
def model_signed_download(request: Request, account: str, name: str, token: str = "", file: str = "") -> Any:
    found = trained_models(_jobs(request), account).get(name)  # (no key here: a 403 either way)
    this = name + _version(found[0]) if found else ""
    if (
        not found
        or not FILE_NAME.fullmatch(file)
        or not valid_signature(token, "models", account, this, file)
    ):
        raise ApiError(403, "the download URL is not valid, has expired or its model was deleted: ask again")
    folder = found[0]
    if file not in adapter_files(folder):
        raise ApiError(404, f"model {name!r} has no file {file!r} (it was trained again since)")
    return FileResponse(folder / file, filename=file)


@router.get(BASE + "/{name}")
def get_model(
    request: Request, account: str, name: str, read_mask: str = Query("", alias="readMask")
) -> dict[str, Any]:
    folder, record = _model(_jobs(request), account, name)
    return filtering.masked(model_object(name, folder, record, account), read_mask, MODEL_FIELDS)


@router.delete(BASE + "/{name}")
def delete_model(request: Request, account: str, name: str) -> dict[str, Any]:
    """A named model's folder goes (its name is free again); a job's own output goes with its job."""
    store = _jobs(request)
    folder, record = _model(store, account, name)
    if folder.parent.resolve() != (store.root / "models").resolve():
        raise precondition(f"model {name!r} is job {name}'s own output: delete the job to delete it "
                           f"(DELETE /v1/accounts/{account}/reinforcementFineTuningJobs/{name})")  # fmt: skip
    if record is not None and record.state.is_active:
        raise precondition(f"model {name!r} is being trained by job {record.id} ({record.state})")
    if needed := jobs_starting_from(store, [folder]):
        raise precondition(f"model {name!r} is the warmStartFrom of job {', '.join(needed)}, which has yet "
                           "to finish or can still resume (it needs this adapter); nothing was deleted")  # fmt: skip
    shutil.rmtree(folder)
    return {}


__all__ = ["adapter_files", "model_object", "router", "trained_models"]
