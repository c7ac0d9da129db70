"""``openrft rftj create|list|get|cancel|resume|delete|rollouts|plot|compare --server URL``: the same
commands, through a server.

With ``--server`` (or ``OPENRFT_SERVER``) the command talks to ``openrft server`` (or anything that
speaks the managed service's job API) instead of the local store; the key comes from
``OPENRFT_API_KEY`` and the account from ``OPENRFT_ACCOUNT`` (default ``local``). The job's flags
are validated here first, exactly as locally, then sent in the service's camelCase body.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from openrft.cli.remote_runs import remote_compare, remote_plot, remote_rollouts
from openrft.errors import ConfigError, JobError

COMMANDS = ("create", "list", "get", "cancel", "resume", "delete", "rollouts", "plot", "compare")
ACTIVE = {"JOB_STATE_PENDING", "JOB_STATE_VALIDATING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"}


def register(subparsers: argparse._SubParsersAction, rftj: argparse._SubParsersAction) -> None:
    """Add ``--server`` to the job commands; a command given one runs through :class:`Remote`."""
    for name in COMMANDS:
        parser = rftj.choices[name]
        parser.add_argument(
            "--server",
            metavar="URL",
            default=None,
            help="Run the command through an openrft server (default: $OPENRFT_SERVER; key: $OPENRFT_API_KEY).",
        )
        local = parser.get_default("handler")
        parser.set_defaults(handler=_either(local, HANDLERS[name]))


def _either(local, remote):
    def handler(args: argparse.Namespace) -> int:
        url = getattr(args, "server", None) or os.environ.get("OPENRFT_SERVER")
        if not url:
            return local(args)
        if not re.match(r"https?://[^/\s]+", url):
            where = "--server" if getattr(args, "server", None) else "OPENRFT_SERVER"
            raise ConfigError(
                f"{where} {url}: not a server URL; expected http(s)://HOST:PORT, e.g. http://127.0.0.1:8000"
            )
        return remote(Remote(url), args)

    return handler


class Remote:
    """A small client for the job API (httpx), raising :class:`JobError` with the server's message."""

    def __init__(self, url: str, api_key: str | None = None, account: str | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.account = account or os.environ.get("OPENRFT_ACCOUNT") or "local"
        key = api_key or os.environ.get("OPENRFT_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=120.0)

    def path(self, job_id: str = "", action: str = "") -> str:
        """The job API's path for ``job_id`` (an id, or a job's full name, whose account it then uses)."""
        account = self.account
        if named := re.fullmatch(r"accounts/([^/]+)/reinforcementFineTuningJobs/([^/:]+)", job_id):
            account, job_id = named.groups()
        base = f"/v1/accounts/{account}/reinforcementFineTuningJobs"
        return base + (f"/{job_id}" if job_id else "") + (f":{action}" if action else "")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise JobError(
                f"cannot reach the server {self.url}: {exc}", hint="is `openrft server` running?"
            ) from None
        if response.is_success:
            return response.json() if response.content else {}
        status = ""
        try:
            error = response.json()["error"]
            message, status = error["message"], str(error.get("status") or "")
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        message = cli_words(message)
        named = message.startswith(
            ("--dataset", "--evaluation-dataset", "--evaluator", "dataset:", "evaluator:")
        )
        if status == "INVALID_ARGUMENT" or named:  # a value the request got wrong (an input the server has
            raise ConfigError(f"server: {message} (HTTP {response.status_code})")  # not): exit 2, as locally
        raise JobError(f"server: {message} (HTTP {response.status_code})")

    def jobs(self) -> list[dict[str, Any]]:
        out, token = [], ""
        while True:
            page = self.call(
                "GET", self.path(), params={"pageSize": 200, "pageToken": token, "orderBy": "createTime desc"}
            )
            out += page.get("reinforcementFineTuningJobs") or []
            token = page.get("nextPageToken") or ""
            if not token:
                return out


# ----------------------------------------------------------------------------- flat values -> body


def request_body(values: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Validated flat values (as ``rftj create`` builds them) -> (camelCase body, job id)."""
    from openrft.config import flag_name
    from openrft.server.wire import METHODS, wire_path

    body: dict[str, Any] = {}
    job_id = values.pop("job_id", None)
    for name, value in values.items():
        path = wire_path(name)
        if path is None:
            raise ConfigError(
                f"{flag_name(name)} cannot be sent to a server; the job API has no field for it", field=name
            )  # a flag: exit 2, as any flag refused before anything is sent
        if name == "stop":
            value = json.dumps({"stop": list(value)})
        elif name == "rl_loss_method":
            value = next(k for k, v in METHODS.items() if v == value and k != "METHOD_UNSPECIFIED")
        *parents, leaf = path.split(".")
        target = body
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return body, job_id


def _values(args: argparse.Namespace) -> dict[str, Any]:
    from openrft.cli import config_from_args
    from openrft.jobs.store import config_values

    cfg, _ = config_from_args(args)  # the same checks and messages as a local create
    _, given, secrets = config_values(cfg)
    return {**given, **secrets}


# ----------------------------------------------------------------------------- commands


def upload_local_files(remote: Remote, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with local dataset and evaluator files replaced by resources uploaded to the server.

    A server never reads its clients' paths, so ``--dataset data.jsonl`` and ``--evaluator
    my_eval.py::fn`` are uploaded as the service's tools do (a dataset: create + ``:upload``; an
    evaluator: create + ``:getUploadEndpoint`` + PUT of a tar.gz + ``:validateUpload``, then wait
    until it is built). Ids carry a hash of the content, so the same file is uploaded once.
    """
    out = dict(values)
    for field in ("dataset", "evaluation_dataset"):
        value = out.get(field)
        if isinstance(value, str) and Path(value).expanduser().is_file():
            out[field] = upload_dataset(remote, Path(value).expanduser())
    value = out.get("evaluator")
    if isinstance(value, str):
        path_text, _, function = value.partition("::")
        path = Path(path_text).expanduser()
        if path.suffix == ".py" and path.is_file():
            out["evaluator"] = upload_evaluator(remote, path, function)
        elif path.suffix in (".json", ".yaml", ".yml") and path.is_file():
            out["evaluator"] = path.read_text()  # a grader spec travels inline
    return out


def check_local_inputs(values: dict[str, Any]) -> list[str]:
    """The dataset and evaluator a create names, checked here as a local create checks them (the rows,
    the evaluator's file and function, that each row holds what it reads), when every one of them is a
    local file, a built-in or an inline grader; names of resources already on the server are the
    server's to check. Returns the warnings a local create would give about them and the settings."""
    from openrft.config import advise, build_config
    from openrft.data import is_builtin
    from openrft.evaluators.builtin import BUILTINS
    from openrft.train.job import check_inputs
    from openrft.train.preflight_report import dry_run_warnings as settings_warnings
    from openrft.train.preflight_report import input_notes

    def here(field: str) -> bool:
        value = values.get(field)
        if not isinstance(value, str) or (field == "evaluator" and value.lstrip().startswith("{")):
            return True  # not given, or an inline grader spec
        if is_builtin(value) if field != "evaluator" else value.partition(":")[0] in BUILTINS:
            return True
        return Path(value.partition("::")[0]).expanduser().is_file()

    cfg = build_config({}, values)[0]
    notes = list(advise(cfg))
    if all(here(field) for field in ("dataset", "evaluation_dataset", "evaluator")):
        evaluator, dataset, _ = check_inputs(cfg, cfg.settings())
        notes += input_notes(dataset, evaluator)
        notes += settings_warnings(
            cfg.settings(), len(dataset), None, None
        )  # (the server's hardware: unknown)
    return notes


def cli_words(message: str) -> str:
    """What the server tells an HTTP client to send, said as this command does it."""
    for http_words, ours in CLI_WORDS:
        message = message.replace(http_words, ours)
    return message


CLI_WORDS = (
    ('send {"force": true} to resume it anyway', "pass --force to resume it anyway"),
    ('a :resume with {"force": true}', "resume --force"),
    (
        "send the header 'Authorization: Bearer <key>'",
        "set OPENRFT_API_KEY to one of the server's --api-key values",
    ),
)


def resource_id(path: Path, data: bytes) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-_")[:40] or "file"
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:10]}"


def upload_dataset(remote: Remote, path: Path) -> str:
    data = path.read_bytes()
    dataset_id = resource_id(path, data)
    base = f"/v1/accounts/{remote.account}/datasets"
    name = f"accounts/{remote.account}/datasets/{dataset_id}"
    try:
        if remote.call("GET", f"{base}/{dataset_id}").get("state") == "READY":
            return name  # this very file, uploaded before
    except JobError:  # not there yet
        remote.call("POST", base, json={"datasetId": dataset_id, "dataset": {"format": "CHAT"}})
    remote.call("POST", f"{base}/{dataset_id}:upload", files={"file": (path.name, data)})
    print(f"uploaded {path} as {name}", file=sys.stderr)
    return name


def local_modules(path: Path) -> list[Path]:
    """An evaluator file and the modules of its own folder that it imports (and that they import, a
    package whole): what it needs on the server, where its folder is on the import path as it is here."""
    import ast

    folder, files, todo = path.parent, [], [path]
    while todo:
        file = todo.pop(0)
        if file in files:
            continue
        files.append(file)
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # the server's build names what is wrong with it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if (folder / f"{top}.py").is_file():
                    todo.append(folder / f"{top}.py")
                elif (folder / top / "__init__.py").is_file():
                    todo += sorted(p for p in (folder / top).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def upload_evaluator(remote: Remote, path: Path, function: str) -> str:
    import httpx

    files = local_modules(path)
    contents = [file.read_bytes() for file in files]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for file, data in zip(files, contents, strict=True):
            info = tarfile.TarInfo(file.relative_to(path.parent).as_posix())
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    packed = buffer.getvalue()
    names = b"".join(file.relative_to(path.parent).as_posix().encode() + b"\0" for file in files)
    evaluator_id = resource_id(path, b"".join(contents) + names + function.encode())
    base = f"/v1/accounts/{remote.account}/evaluators"
    name = f"accounts/{remote.account}/evaluators/{evaluator_id}"
    try:
        if remote.call("GET", f"{base}/{evaluator_id}").get("state") == "ACTIVE":
            return name
    except JobError:
        entry = path.name + (f"::{function}" if function else "")
        body = {"evaluatorId": evaluator_id, "evaluator": {"displayName": path.name, "entryPoint": entry}}
        remote.call("POST", f"/v1/accounts/{remote.account}/evaluatorsV2", json=body)
    urls = remote.call(
        "POST",
        f"{base}/{evaluator_id}:getUploadEndpoint",
        json={"filenameToSize": {"code.tar.gz": str(len(packed))}},
    )["filenameToSignedUrls"]
    put = httpx.put(urls["code.tar.gz"], content=packed, headers={"Content-Type": "application/octet-stream"})
    if not put.is_success:
        raise JobError(f"server: uploading {path} failed (HTTP {put.status_code}): {put.text.strip()[:200]}")
    remote.call("POST", f"{base}/{evaluator_id}:validateUpload", json={})
    deadline = time.time() + 180
    while (got := remote.call("GET", f"{base}/{evaluator_id}")).get("state") not in (
        "ACTIVE",
        "BUILD_FAILED",
    ):
        if time.time() > deadline:
            raise JobError(f"server: evaluator {name} was not built within 3 minutes")
        time.sleep(0.5)
    if got["state"] != "ACTIVE":
        message = (got.get("status") or {}).get("message", "")
        raise JobError(f"server: the evaluator {path} did not build: {message}")
    print(f"uploaded {path} as {name}", file=sys.stderr)
    return name


def remote_create(remote: Remote, args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False) or getattr(args, "resume_from", None):
        raise JobError("--dry-run and --resume-from work on the local store only, not with --server")
    values = _values(args)
    request_body(dict(values))  # fields the API has no place for are refused before anything is uploaded
    notes = check_local_inputs(values)  # a bad row or evaluator file: refused here, exit 2, nothing uploaded
    for line in notes:  # what a local create warns of, said before anything is uploaded
        print(f"warning: {line}", file=sys.stderr)
    body, job_id = request_body(upload_local_files(remote, values))
    params = {"reinforcementFineTuningJobId": job_id} if job_id else {}
    job = remote.call("POST", remote.path(), json=body, params=params)
    job_id = job["name"].rsplit("/", 1)[-1]
    print(job_id)
    print(
        f"job {job_id} {short(job['state'])} on {remote.url}\n"
        f"  status: openrft rftj get {job_id} --server {remote.url}\n"
        f"  stop:   openrft rftj cancel {job_id} --server {remote.url}",
        file=sys.stderr,
    )
    return 0


def remote_list(remote: Remote, args: argparse.Namespace) -> int:
    from openrft.cli.jobs import _table
    from openrft.jobs.states import age

    jobs = remote.jobs()
    if args.output == "json":
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print(f"no jobs on {remote.url} yet: start one with `openrft rftj create --server {remote.url}`")
        return 0
    rows = []
    for job in jobs:
        progress = job.get("jobProgress") or {}
        reward = progress.get("lastReward")
        rows.append([
            job["name"].rsplit("/", 1)[-1], short(job.get("state", "")), base_model(job),
            (job.get("lossConfig") or {}).get("method", "-").lower().replace("_", "-"),
            str(progress.get("steps", 0)), "-" if reward is None else f"{reward:.3f}",
            age(time.time() - seconds(job.get("createTime"))),
        ])  # fmt: skip
    print(_table(["ID", "STATE", "BASE MODEL", "METHOD", "STEPS", "LAST REWARD", "AGE"], rows))
    return 0


def remote_get(remote: Remote, args: argparse.Namespace) -> int:
    job = remote.call("GET", remote.path(args.job_id))
    if args.output == "json":
        print(json.dumps(job, indent=2))
        return 0
    progress, status = job.get("jobProgress") or {}, job.get("status") or {}
    reward = progress.get("lastReward")
    out = [f"id:          {job['name'].rsplit('/', 1)[-1]}", f"state:       {short(job.get('state', ''))}"]
    if status.get("message"):
        out.append(f"message:     {cli_words(status['message'])}")
    out += [
        f"base model:  {base_model(job)}",
        f"method:      {(job.get('lossConfig') or {}).get('method', '-')}",
        f"steps:       {progress.get('steps', 0)}",
        f"progress:    {progress.get('percent', 0)}% (epoch {progress.get('epoch', 0)})",
        f"last reward: {'-' if reward is None else f'{reward:.4f}'}",
        f"created:     {job.get('createTime')}",
        f"completed:   {job.get('completedTime') or '-'}",
        f"dataset:     {job.get('dataset')}",
        f"evaluator:   {job.get('evaluator') or '-'}",
        f"outputs:     {job.get('outputModelPath') or '-'}",
        "",
        "configuration:",
    ]
    for section in ("trainingConfig", "inferenceParameters", "lossConfig", "wandbConfig"):
        for key, value in (job.get(section) or {}).items():
            out.append(f"  {section:<20} {key:<26} {value}")
    print("\n".join(out))
    return 0


def remote_cancel(remote: Remote, args: argparse.Namespace) -> int:
    remote.call("POST", remote.path(args.job_id, "cancel"), json={})
    print(
        f"job {args.job_id}: cancel requested; a queued job stops at once, a running one at its next step boundary (a round being sampled is dropped) with a checkpoint"
    )
    if args.wait:
        job = remote.call("GET", remote.path(args.job_id))
        while job.get("state") in ACTIVE:
            time.sleep(0.5)
            job = remote.call("GET", remote.path(args.job_id))
        message = (job.get("status") or {}).get("message")
        print(f"job {args.job_id} {short(job['state'])}{': ' + message if message else ''}")
    return 0


def remote_resume(remote: Remote, args: argparse.Namespace) -> int:
    job = remote.call("POST", remote.path(args.job_id, "resume"), json={"force": bool(args.force)})
    print(f"job {args.job_id} {short(job['state'])} on {remote.url}: it continues from its last checkpoint")
    return 0


def remote_delete(remote: Remote, args: argparse.Namespace) -> int:
    if getattr(args, "force", False):  # the API has no force: what it refuses stays refused
        raise ConfigError("--force deletes from this machine's store only; a server keeps a job another job "
                          "still warm-starts from (delete that job first)")  # fmt: skip
    remote.call("DELETE", remote.path(args.job_id))
    print(f"deleted job {args.job_id} on {remote.url}")
    return 0


HANDLERS = {
    "create": remote_create,
    "list": remote_list,
    "get": remote_get,
    "cancel": remote_cancel,
    "resume": remote_resume,
    "delete": remote_delete,
    "rollouts": remote_rollouts,
    "plot": remote_plot,
    "compare": remote_compare,
}


def short(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def base_model(job: dict[str, Any]) -> str:
    training = job.get("trainingConfig") or {}
    if training.get("warmStartFrom"):
        return f"adapter:{training['warmStartFrom']}"
    return training.get("baseModel") or "-"


def seconds(stamp: str | None) -> float:
    if not stamp:
        return time.time()
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


__all__ = ["register", "Remote", "request_body"]
