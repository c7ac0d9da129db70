"""Datasets and evaluators as API resources, driven by the managed service's own SDK (``fireworks-ai``).

The app under test is a bare FastAPI app with the resources router, the error handler and the
bearer-key middleware, served by uvicorn on loopback in a thread, so that the SDK, and the plain
PUT a signed URL gets, go through real HTTP.
"""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
import threading
import time
from pathlib import Path

import fireworks
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from openrft.data import load_prompts
from openrft.evaluators.loader import load_evaluator
from openrft.evaluators.runner import score_groups
from openrft.records import Completion, Prompt
from openrft.server import resource_store, resource_updates_api
from openrft.server.app import api_error
from openrft.server.auth import BearerAuth
from openrft.server.errors import ApiError
from openrft.server.resources_api import configure_resources, dataset_path, evaluator_spec, router
from openrft.server.uploads import ArchiveError, UploadLimits, extract_archive, is_signed_upload

ACCOUNT = "acct"
KEY = "test-key"
LIMITS = UploadLimits(
    max_dataset_bytes=64 * 1024,
    max_archive_bytes=256 * 1024,
    max_extracted_bytes=1024 * 1024,
    max_archive_members=50,
)
ROWS = (
    b'{"messages": [{"role": "user", "content": "What is 2 + 2?"}], "ground_truth": 4}\n'
    b'{"messages": [{"role": "user", "content": "What is 3 + 4?"}], "ground_truth": 7}\n'
)
EVALUATOR = """
from helpers import last_number

def evaluate(completion, ground_truth=None, **row):
    return 1.0 if last_number(completion) == ground_truth else 0.0
"""
HELPERS = """
import re

def last_number(text):
    found = re.findall(r"-?\\d+", text)
    return int(found[-1]) if found else None
"""


def _app(home: Path) -> FastAPI:
    app = FastAPI()
    app.include_router(resource_updates_api.router)  # as create_app: before the "{id}" routes
    app.include_router(router)

    app.add_exception_handler(ApiError, api_error)  # create_app's own

    app.add_middleware(BearerAuth, keys=(KEY,))
    configure_resources(app, home=home, limits=LIMITS)
    return app


@contextlib.contextmanager
def _serve(app: FastAPI):
    """``app`` on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()
        resource_store.use_home(None)


@pytest.fixture
def server(tmp_path):
    home = tmp_path / "home"
    with _serve(_app(home)) as base:
        yield base, home


@pytest.fixture
def client(server):
    return fireworks.Fireworks(api_key=KEY, base_url=server[0], account_id=ACCOUNT, max_retries=0)


def _targz(files: dict[str, bytes], links: dict[str, str] | None = None, *, hard: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def _upload_evaluator(
    client, evaluator_id: str, archive: bytes, entry_point: str | None = "main.py::evaluate"
):
    """Create, get the upload URL, PUT the archive as ``ep upload`` does, validate; returns validate's error."""
    body = {"display_name": evaluator_id, "description": "test"}
    if entry_point:
        body["entry_point"] = entry_point
    created = client.evaluators.create(evaluator_id=evaluator_id, evaluator=body)
    assert created.name == f"accounts/{ACCOUNT}/evaluators/{evaluator_id}"
    endpoint = client.evaluators.get_upload_endpoint(
        evaluator_id, filename_to_size={"proj.tar.gz": str(len(archive))}
    )
    url = endpoint.filename_to_signed_urls["proj.tar.gz"]
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Goog-Content-Length-Range": f"{len(archive)},{len(archive)}",
    }
    put = httpx.put(url, content=archive, headers=headers)  # no API key: the URL's token authorises it
    assert put.status_code == 200, put.text
    try:
        client.evaluators.validate_upload(evaluator_id, body={})
    except fireworks.APIStatusError as exc:
        return exc
    return None


def _wait_built(client, evaluator_id: str):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = client.evaluators.get(evaluator_id)
        if got.state in ("ACTIVE", "BUILD_FAILED"):
            return got
        time.sleep(0.1)
    raise AssertionError("the evaluator build did not finish")


def _folder(home: Path, kind: str, resource_id: str) -> Path:
    return home / "server" / kind / ACCOUNT / resource_id


# ----------------------------------------------------------------------------- datasets


def test_dataset_upload_get_list_resolve_delete(client, server):
    home = server[1]
    created = client.datasets.create(
        dataset_id="prompts", dataset={"display_name": "My prompts", "format": "CHAT", "example_count": "2"}
    )
    assert created.name == f"accounts/{ACCOUNT}/datasets/prompts" and created.state == "UPLOADING"
    uploaded = client.datasets.upload("prompts", file=("prompts.jsonl", ROWS))
    assert uploaded.bytes == len(ROWS) and uploaded.filename == "prompts.jsonl"
    got = client.datasets.get("prompts")
    assert (got.state, got.example_count, got.display_name, got.format) == (
        "READY",
        "2",
        "My prompts",
        "CHAT",
    )
    assert [d.name for d in client.datasets.list()] == [got.name]

    path = dataset_path(ACCOUNT, f"accounts/{ACCOUNT}/datasets/prompts")
    assert path == str(_folder(home, "datasets", "prompts") / "data.jsonl")
    assert Path(path).read_bytes() == ROWS
    assert dataset_path(ACCOUNT, "prompts") == path
    assert [p.row["ground_truth"] for p in load_prompts(path)] == [4, 7]

    with pytest.raises(fireworks.BadRequestError) as err:  # uploaded once: datasets are immutable
        client.datasets.get_upload_endpoint("prompts", filename_to_size={"x.jsonl": "10"})
    assert err.value.status_code == 400 and err.value.body["error"]["status"] == "FAILED_PRECONDITION"
    client.datasets.delete("prompts")
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.get("prompts")
    with pytest.raises(ApiError) as err:
        dataset_path(ACCOUNT, "prompts")
    assert err.value.status_code == 404
    assert not _folder(home, "datasets", "prompts").exists()


def test_dataset_signed_url_flow(client, server):
    client.datasets.create(dataset_id="signed", dataset={"format": "CHAT"})
    endpoint = client.datasets.get_upload_endpoint("signed", filename_to_size={"rows.jsonl": str(len(ROWS))})
    url = endpoint.filename_to_signed_urls["rows.jsonl"]
    assert url.startswith(server[0] + "/")
    forged = httpx.put(url.split("token=")[0] + "token=forged", content=ROWS)
    assert forged.status_code == 403
    assert (
        httpx.put(url, content=ROWS, headers={"Content-Type": "application/octet-stream"}).status_code == 200
    )
    with pytest.raises(ApiError) as err:  # not READY until validated
        dataset_path(ACCOUNT, "signed")
    assert err.value.status_code == 400 and err.value.grpc_status == "FAILED_PRECONDITION"
    client.datasets.validate_upload("signed", body={})
    assert client.datasets.get("signed").state == "READY"
    assert Path(dataset_path(ACCOUNT, "accounts/acct/datasets/signed")).read_bytes() == ROWS


def test_a_dataset_uploads_in_shards_as_the_sdk_helper_sends_them(client, server):
    """fireworks.lib.dataset_upload.upload_dataset_shards: one getUploadEndpoint for every shard, a PUT
    each, one validateUpload; the shards are joined in their declared order."""
    first, second = ROWS.splitlines(keepends=True)
    second = second.rstrip(b"\n")  # a shard without its last newline still ends a row
    client.datasets.create(dataset_id="shards", dataset={"format": "CHAT"})
    sizes = {"part-0.jsonl": str(len(first)), "part-1.jsonl": str(len(second))}
    urls = client.datasets.get_upload_endpoint("shards", filename_to_size=sizes).filename_to_signed_urls
    assert sorted(urls) == sorted(sizes) and urls["part-0.jsonl"] != urls["part-1.jsonl"]
    assert httpx.put(urls["part-1.jsonl"], content=second).status_code == 200
    with pytest.raises(fireworks.BadRequestError, match="part-0.jsonl") as missing:
        client.datasets.validate_upload("shards", body={})
    assert missing.value.status_code == 400
    assert httpx.put(urls["part-1.jsonl"], content=first).status_code == 403  # its URL took one upload
    assert httpx.put(urls["part-0.jsonl"], content=second).status_code == 400  # not the declared size
    assert (
        httpx.put(urls["part-0.jsonl"], content=first).status_code == 200
    )  # a refused PUT may be sent again
    client.datasets.validate_upload("shards", body={})
    dataset = client.datasets.get("shards")
    assert dataset.state == "READY" and dataset.example_count == "2"
    assert Path(dataset_path(ACCOUNT, "shards")).read_bytes() == ROWS
    client.datasets.create(dataset_id="many", dataset={"format": "CHAT"})
    with pytest.raises(fireworks.BadRequestError, match="1 to 64 file names"):
        client.datasets.get_upload_endpoint("many", filename_to_size={f"{i}.jsonl": "1" for i in range(65)})
    client.evaluators.create(evaluator_id="one", evaluator={"entry_point": "main.py::evaluate"})
    with pytest.raises(fireworks.BadRequestError, match="one file name"):  # an evaluator is one archive
        client.evaluators.get_upload_endpoint("one", filename_to_size={"a.tar.gz": "1", "b.tar.gz": "1"})


def test_bad_row_rejected_with_its_line_and_nothing_kept(client, server):
    client.datasets.create(dataset_id="bad", dataset={})
    bad = ROWS + b'{"messages": [{"role": "robot", "content": "hi"}]}\n'
    with pytest.raises(fireworks.BadRequestError) as err:
        client.datasets.upload("bad", file=("bad.jsonl", bad))
    message = err.value.body["error"]["message"] if isinstance(err.value.body, dict) else str(err.value)
    assert "line 3" in message and "robot" in message
    assert sorted(p.name for p in _folder(server[1], "datasets", "bad").iterdir()) == ["meta.json"]
    assert client.datasets.get("bad").state == "UPLOADING"


def test_oversize_dataset_is_413_and_nothing_kept(client, server):
    client.datasets.create(dataset_id="big", dataset={})
    line = b'{"messages": [{"role": "user", "content": "' + b"x" * 1000 + b'"}]}\n'
    big = line * (LIMITS.max_dataset_bytes // len(line) + 100)
    with pytest.raises(fireworks.APIStatusError) as err:
        client.datasets.upload("big", file=("big.jsonl", big))
    assert err.value.status_code == 413
    with pytest.raises(fireworks.APIStatusError) as err:
        client.datasets.get_upload_endpoint("big", filename_to_size={"big.jsonl": str(len(big))})
    assert err.value.status_code == 413
    assert sorted(p.name for p in _folder(server[1], "datasets", "big").iterdir()) == ["meta.json"]


def test_bad_ids_and_unknown_datasets(client, server):
    with pytest.raises(fireworks.BadRequestError):
        client.datasets.create(dataset_id="../escape", dataset={})
    with pytest.raises(fireworks.BadRequestError):  # a file on the server is never a dataset's source
        client.datasets.create(dataset_id="ext", dataset={"external_url": "/etc/passwd"})
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.upload("missing", file=("x.jsonl", ROWS))
    with pytest.raises(fireworks.ConflictError):
        client.datasets.create(dataset_id="arithmetic", dataset={})


# ----------------------------------------------------------------------------- evaluators


def _score(spec: str, text: str, ground_truth: int) -> float:
    evaluator = load_evaluator(spec)
    prompt = Prompt(
        prompt_id="1", messages=({"role": "user", "content": "2+2?"},), row={"ground_truth": ground_truth}
    )
    completion = Completion(
        prompt_id="1", candidate_index=0, prompt_token_ids=(1,), completion_token_ids=(2,), text=text,
        logprobs=(0.0,), finish_reason="stop",
    )  # fmt: skip
    [[score]] = score_groups(evaluator, [(prompt, [completion])])
    return score.score


def test_evaluator_upload_builds_active_and_scores(client, server):
    archive = _targz({"proj/main.py": EVALUATOR.encode(), "proj/helpers.py": HELPERS.encode(),
                      "proj/requirements.txt": b""})  # fmt: skip
    assert _upload_evaluator(client, "exact", archive) is None
    built = _wait_built(client, "exact")
    assert built.state == "ACTIVE", built.status
    spec = evaluator_spec(ACCOUNT, f"accounts/{ACCOUNT}/evaluators/exact")
    code = _folder(server[1], "evaluators", "exact") / "code"
    assert spec == f"{code.resolve()}/proj/main.py::evaluate"
    assert evaluator_spec(ACCOUNT, "exact") == spec
    assert _score(spec, "the answer is 4", 4) == 1.0
    assert _score(spec, "the answer is 5", 4) == 0.0
    assert not (_folder(server[1], "evaluators", "exact") / "source.tar.gz").exists()
    assert [e.name for e in client.evaluators.list()] == [built.name]


def test_evaluator_without_entry_point_uses_main_py(client, server):
    archive = _targz({"main.py": b"def reward(completion, **row):\n    return 0.5\n"})
    assert _upload_evaluator(client, "plain", archive, entry_point=None) is None
    assert _wait_built(client, "plain").state == "ACTIVE"
    assert _score(evaluator_spec(ACCOUNT, "plain"), "anything", 1) == 0.5


@pytest.mark.parametrize(
    ("files", "entry", "reason"),
    [
        ({"main.py": b"def evaluate(completion:\n"}, "main.py::evaluate", "syntax error"),
        ({"main.py": b"import not_a_module_xyz\n"}, "main.py::evaluate", "not_a_module_xyz"),
        (
            {"main.py": b"def other(completion):\n    return 1\n"},
            "main.py::evaluate",
            "no function 'evaluate'",
        ),
        ({"main.py": b"x = 1\n"}, "missing.py::evaluate", "no 'missing.py'"),
    ],
)
def test_broken_evaluator_is_build_failed_with_the_reason(client, server, files, entry, reason):
    assert _upload_evaluator(client, "broken", _targz(files), entry_point=entry) is None
    built = _wait_built(client, "broken")
    assert built.state == "BUILD_FAILED" and reason in built.status.message, built.status
    with pytest.raises(ApiError) as err:
        evaluator_spec(ACCOUNT, "accounts/acct/evaluators/broken")
    assert err.value.status_code == 400 and reason in err.value.message
    assert sorted(p.name for p in _folder(server[1], "evaluators", "broken").iterdir()) == ["meta.json"]


@pytest.mark.parametrize(
    ("files", "links", "hard", "reason"),
    [
        ({"../x.py": b"print(1)\n", "main.py": b""}, None, False, "'..'"),
        ({"/tmp/openrft-abs-x.py": b"print(1)\n"}, None, False, "absolute path"),
        ({"main.py": b""}, {"evil.py": "/etc/passwd"}, False, "is a link"),
        ({"main.py": b""}, {"evil.py": "main.py"}, True, "is a link"),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_extracted(
    client, server, tmp_path, files, links, hard, reason
):
    error = _upload_evaluator(client, "unsafe", _targz(files, links, hard=hard))
    assert isinstance(error, fireworks.BadRequestError) and reason in str(error.body)
    got = client.evaluators.get("unsafe")
    assert got.state == "BUILD_FAILED" and reason in got.status.message
    assert sorted(p.name for p in _folder(server[1], "evaluators", "unsafe").iterdir()) == ["meta.json"]
    assert not (tmp_path / "x.py").exists() and not (server[1] / "server" / "x.py").exists()
    assert not Path("/tmp/openrft-abs-x.py").exists()


def test_archive_limits(tmp_path):
    many = _targz({f"f{i}.py": b"" for i in range(LIMITS.max_archive_members + 1)})
    (tmp_path / "many.tar.gz").write_bytes(many)
    with pytest.raises(ArchiveError, match="more than 50 members"):
        extract_archive(tmp_path / "many.tar.gz", tmp_path / "out", LIMITS)
    (tmp_path / "bomb.tar.gz").write_bytes(_targz({"a.bin": bytes(LIMITS.max_extracted_bytes + 1)}))
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        extract_archive(tmp_path / "bomb.tar.gz", tmp_path / "out", LIMITS)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ArchiveError, match="not a valid"):
        extract_archive(tmp_path / "junk.tar.gz", tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_oversize_archive_is_413(client, server):
    client.evaluators.create(evaluator_id="huge", evaluator={"entry_point": "main.py::evaluate"})
    with pytest.raises(fireworks.APIStatusError) as err:
        client.evaluators.get_upload_endpoint("huge", filename_to_size={"a.tar.gz": str(10**9)})
    assert err.value.status_code == 413
    endpoint = client.evaluators.get_upload_endpoint("huge", filename_to_size={"a.tar.gz": "10"})
    put = httpx.put(endpoint.filename_to_signed_urls["a.tar.gz"], content=bytes(LIMITS.max_archive_bytes + 1))
    assert put.status_code == 413
    assert sorted(p.name for p in _folder(server[1], "evaluators", "huge").iterdir()) == ["meta.json"]


def test_entry_point_outside_the_archive_is_refused(client, server):
    with pytest.raises(fireworks.BadRequestError):
        client.evaluators.create(evaluator_id="out", evaluator={"entry_point": "/etc/x.py::f"})
    with pytest.raises(fireworks.BadRequestError):
        client.evaluators.create(evaluator_id="out", evaluator={"entry_point": "../x.py::f"})


# ----------------------------------------------------------------------------- resolving job fields


def test_builtins_resolve_to_their_names(server):
    assert dataset_path(ACCOUNT, "arithmetic") == "arithmetic"
    assert dataset_path(ACCOUNT, "arithmetic:count=5") == "arithmetic:count=5"
    assert dataset_path(ACCOUNT, "calculator") == "calculator"
    assert dataset_path(ACCOUNT, f"accounts/{ACCOUNT}/datasets/arithmetic") == "arithmetic"
    assert evaluator_spec(ACCOUNT, "gsm8k") == "gsm8k"
    assert evaluator_spec(ACCOUNT, f"accounts/{ACCOUNT}/evaluators/gsm8k") == "gsm8k"
    assert evaluator_spec(ACCOUNT, "arithmetic:partial_weight=0") == "arithmetic:partial_weight=0"
    assert evaluator_spec(ACCOUNT, "calculator") == "calculator"
    for bad in ("arithmetic:bogus=1",):
        with pytest.raises(ApiError) as err:
            dataset_path(ACCOUNT, bad)
        assert err.value.status_code == 400 and err.value.message.startswith("dataset:")
        with pytest.raises(ApiError) as err:
            evaluator_spec(ACCOUNT, bad)
        assert err.value.status_code == 400 and err.value.message.startswith("evaluator:")


@pytest.mark.parametrize("ref", ["/etc/passwd", "data.jsonl", "../x.jsonl", "~/x.jsonl", "./d", "", "a/b"])
def test_raw_paths_are_refused(server, ref):
    with pytest.raises(ApiError) as err:
        dataset_path(ACCOUNT, ref)
    assert (
        err.value.status_code == 400
        and "dataset" in err.value.message
        and "accounts/acct/datasets/" in err.value.message
    )
    spec = ref + "::evaluate" if ref else ref
    with pytest.raises(ApiError) as err:
        evaluator_spec(ACCOUNT, spec)
    assert err.value.status_code == 400 and "evaluators/" in err.value.message
    with pytest.raises(ApiError) as err:
        evaluator_spec(ACCOUNT, "os.path:join")
    assert err.value.status_code == 400


def test_unknown_and_unready_resources(client, server):
    for resolve, ref in ((dataset_path, "nope"), (evaluator_spec, "accounts/acct/evaluators/nope")):
        with pytest.raises(ApiError) as err:
            resolve(ACCOUNT, ref)
        assert err.value.status_code == 404
    with pytest.raises(ApiError) as err:  # another account's resource
        dataset_path(ACCOUNT, "accounts/other/datasets/x")
    assert err.value.status_code == 404
    client.evaluators.create(evaluator_id="pending", evaluator={"entry_point": "main.py::evaluate"})
    with pytest.raises(ApiError) as err:
        evaluator_spec(ACCOUNT, "pending")
    assert err.value.status_code == 400 and "STATE_UNSPECIFIED" in err.value.message


def test_signed_upload_needs_no_api_key_but_everything_else_does(server):
    base = server[0]
    assert httpx.get(f"{base}/v1/accounts/{ACCOUNT}/datasets").status_code == 401
    scope = {
        "type": "http",
        "method": "PUT",
        "path": "/v1/accounts/a/datasets/d:signedUpload",
        "query_string": b"token=t",
    }
    assert is_signed_upload(scope)
    assert not is_signed_upload({**scope, "method": "POST"})
    assert not is_signed_upload({**scope, "query_string": b""})
    # without a valid token the route itself refuses it, whether the dataset exists or not (no id probing)
    assert (
        httpx.put(f"{base}/v1/accounts/{ACCOUNT}/datasets/x:signedUpload?token=t", content=b"").status_code
        == 403
    )


@pytest.mark.parametrize("extra", [10, 10 * LIMITS.max_dataset_bytes])
def test_oversize_chunked_multipart_is_cut_off(server, extra):
    """A body without Content-Length is counted as it arrives: just over the limit, or far over it."""
    base, home = server
    headers = {"Authorization": f"Bearer {KEY}"}
    httpx.post(
        f"{base}/v1/accounts/{ACCOUNT}/datasets",
        json={"datasetId": "chunked", "dataset": {}},
        headers=headers,
    )
    boundary = "b0undary"

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'.encode()
        left = LIMITS.max_dataset_bytes + extra
        while left > 0:
            yield b"x" * min(left, 8192)
            left -= 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{base}/v1/accounts/{ACCOUNT}/datasets/chunked:upload",
        content=body(),
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == 413
    assert sorted(p.name for p in _folder(home, "datasets", "chunked").iterdir()) == ["meta.json"]


def test_eval_protocol_tools_upload_to_this_server(server, tmp_path, monkeypatch):
    """``ep upload``'s own code (create, signed URL, requests PUT, validate) and its dataset upload."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from eval_protocol.evaluation import create_evaluation
    from eval_protocol.fireworks_rft import create_dataset_from_jsonl

    base, home = server
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "requirements.txt").write_text("")
    (project / "helpers.py").write_text(HELPERS)
    (project / "test_exact.py").write_text(EVALUATOR)
    (project / "rows.jsonl").write_bytes(ROWS)
    monkeypatch.chdir(project)
    monkeypatch.setenv("FIREWORKS_API_BASE", base)
    created = create_evaluation(
        "ep-exact", account_id=ACCOUNT, api_key=KEY, entry_point="test_exact.py::evaluate"
    )
    assert created.name == f"accounts/{ACCOUNT}/evaluators/ep-exact"
    client = fireworks.Fireworks(api_key=KEY, base_url=base, account_id=ACCOUNT, max_retries=0)
    assert _wait_built(client, "ep-exact").state == "ACTIVE"
    spec = evaluator_spec(ACCOUNT, created.name)
    assert spec.endswith("/my-project/test_exact.py::evaluate")
    assert _score(spec, "so 7", 7) == 1.0

    dataset_id, _ = create_dataset_from_jsonl(
        ACCOUNT, KEY, base, "ep-rows", "rows", str(project / "rows.jsonl")
    )
    assert Path(dataset_path(ACCOUNT, f"accounts/{ACCOUNT}/datasets/{dataset_id}")).read_bytes() == ROWS


def test_inline_code_snippets_build_like_an_archive(client, server):
    criteria = [{"type": "CODE_SNIPPETS", "name": "exact", "codeSnippets": {
        "language": "python", "entryFile": "main.py", "entryFunc": "evaluate",
        "fileContents": {"main.py": EVALUATOR, "helpers.py": HELPERS}}}]  # fmt: skip
    created = client.evaluators.create(evaluator_id="inline", evaluator={"criteria": criteria})
    assert created.state in ("BUILDING", "ACTIVE") and created.entry_point == "main.py::evaluate"
    assert _wait_built(client, "inline").state == "ACTIVE"
    assert _score(evaluator_spec(ACCOUNT, "inline"), "= 4", 4) == 1.0
    criteria[0]["codeSnippets"]["fileContents"] = {"../escape.py": "x = 1\n"}
    with pytest.raises(fireworks.BadRequestError, match="outside"):
        client.evaluators.create(evaluator_id="inline2", evaluator={"criteria": criteria})
    assert not _folder(server[1], "evaluators", "inline2").exists()
    assert not (server[1] / "server" / "evaluators" / ACCOUNT / "escape.py").exists()


def test_uploaded_code_cannot_fake_its_own_build_check(client, server):
    """An archive shipping its own ``openrft`` package does not replace the server's build check."""
    fake = b'import json\nprint(json.dumps({"ok": True}))\n'
    archive = _targz({"openrft/__init__.py": b"", "openrft/server/__init__.py": b"",
                      "openrft/server/evaluator_check.py": fake, "main.py": b"def broken(:\n"})  # fmt: skip
    assert _upload_evaluator(client, "faker", archive, entry_point="main.py::evaluate") is None
    assert _wait_built(client, "faker").state == "BUILD_FAILED"


def test_updates_and_signed_downloads_through_the_sdk(client, server):
    """datasets.update / get_download_endpoint, evaluators.update (metadata, prepare_code_upload) and
    the source-code and build-log URLs, as the service's SDK calls them; the URLs need no API key."""
    client.datasets.create(dataset_id="prompts", dataset={"format": "CHAT"})
    client.datasets.upload("prompts", file=("prompts.jsonl", ROWS))
    updated = client.datasets.update("prompts", display_name="Renamed", example_count="2")
    assert (updated.display_name, client.datasets.get("prompts").display_name) == ("Renamed", "Renamed")
    url = client.datasets.get_download_endpoint("prompts").filename_to_signed_urls["data.jsonl"]
    assert httpx.get(url).content == ROWS
    assert httpx.get(url.replace("token=", "token=1")).status_code == 403  # a forged token
    with pytest.raises(fireworks.BadRequestError, match="externalUrl"):
        client.datasets.update("prompts", external_url="gs://bucket/x.jsonl")

    archive = _targz({"proj/main.py": EVALUATOR.encode(), "proj/helpers.py": HELPERS.encode()})
    assert _upload_evaluator(client, "exact", archive) is None
    assert _wait_built(client, "exact").state == "ACTIVE"
    client.evaluators.update("exact", display_name="Exact match", description="new words")
    got = client.evaluators.get("exact")
    assert (got.display_name, got.description, got.state) == ("Exact match", "new words", "ACTIVE")
    (source_url,) = client.evaluators.get_source_code_endpoint("exact").filename_to_signed_urls.values()
    with tarfile.open(fileobj=io.BytesIO(httpx.get(source_url).content)) as tar:
        assert "proj/main.py" in tar.getnames()
    log = httpx.get(client.evaluators.get_build_log_endpoint("exact").build_log_signed_uri).text
    assert "ACTIVE" in log

    client.evaluators.update("exact", prepare_code_upload=True)  # new code: the upload flow again
    assert client.evaluators.get("exact").state != "ACTIVE"
    with pytest.raises(ApiError):
        evaluator_spec(ACCOUNT, "exact")  # no job can start on it meanwhile
    new = _targz({"proj/main.py": b"def evaluate(completion, **row):\n    return 0.5\n"})
    endpoint = client.evaluators.get_upload_endpoint("exact", filename_to_size={"p.tar.gz": str(len(new))})
    assert httpx.put(endpoint.filename_to_signed_urls["p.tar.gz"], content=new).status_code == 200
    client.evaluators.validate_upload("exact", body={})
    assert _wait_built(client, "exact").state == "ACTIVE"
    assert _score(evaluator_spec(ACCOUNT, "exact"), "anything", 4) == 0.5
