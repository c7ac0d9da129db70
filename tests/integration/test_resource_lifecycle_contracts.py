"""Uploaded datasets and evaluators as the API keeps them: an id is taken once, private fields stay
private, states and builds say what happened, updates change only their fields, and signed upload and
download URLs grant exactly what and as long as they say. Driven over real HTTP, as in
``test_server_resources.py``."""

from __future__ import annotations

import time
from types import SimpleNamespace

import httpx
import pytest
from test_server_resources import ACCOUNT, KEY, ROWS, _app, _serve  # the same folder: its app and server

from openrft.server import resource_store
from openrft.server.resources_api import dataset_path

AUTH = {"Authorization": f"Bearer {KEY}"}


class RunningJobs:
    """The server's job store, as ``refuse_if_in_use`` reads it: flat configs of jobs, ``active`` running,
    ``stopped`` cancelled (they can resume), ``done`` completed."""

    def __init__(self) -> None:
        self.active: list[dict] = []
        self.stopped: list[dict] = []
        self.done: list[dict] = []

    def list(self) -> list[SimpleNamespace]:
        kinds = [("RUNNING", self.active), ("CANCELLED", self.stopped), ("COMPLETED", self.done)]
        return [SimpleNamespace(id=f"{state.lower()}-{i}", state=SimpleNamespace(value=state), flat_config=lambda c=c: c)
                for state, configs in kinds for i, c in enumerate(configs)]  # fmt: skip


@pytest.fixture
def jobs() -> RunningJobs:
    return RunningJobs()


@pytest.fixture
def api(tmp_path, jobs):
    app = _app(tmp_path / "home")
    app.state.job_store = jobs
    with _serve(app) as base, httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
        yield http


def _create_dataset(http: httpx.Client, dataset_id: str) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{ACCOUNT}/datasets", json={"datasetId": dataset_id, "dataset": {"format": "CHAT"}}
    )


def _signed_put_url(http: httpx.Client, dataset_id: str) -> str:
    got = http.post(f"/v1/accounts/{ACCOUNT}/datasets/{dataset_id}:getUploadEndpoint",
                    json={"filenameToSize": {"rows.jsonl": str(len(ROWS))}})  # fmt: skip
    assert got.status_code == 200, got.text
    return got.json()["filenameToSignedUrls"]["rows.jsonl"]


def test_creating_a_dataset_under_a_taken_id_is_refused_and_keeps_the_uploaded_one(api):
    assert _create_dataset(api, "prompts").status_code == 200
    url = _signed_put_url(api, "prompts")
    assert httpx.put(url, content=ROWS).status_code == 200
    assert api.post(f"/v1/accounts/{ACCOUNT}/datasets/prompts:validateUpload", json={}).status_code == 200
    again = _create_dataset(api, "prompts")
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    got = api.get(f"/v1/accounts/{ACCOUNT}/datasets/prompts").json()
    assert got["state"] == "READY"
    with open(dataset_path(ACCOUNT, "prompts"), "rb") as handle:
        assert handle.read() == ROWS


def test_an_expired_upload_url_is_refused(api, monkeypatch):
    assert _create_dataset(api, "late").status_code == 200
    monkeypatch.setattr(resource_store, "UPLOAD_TOKEN_TTL_S", -1.0)  # handed out already expired
    url = _signed_put_url(api, "late")
    refused = httpx.put(url, content=ROWS)
    assert refused.status_code == 403 and "expired" in refused.json()["error"]["message"]


def test_an_evaluators_private_fields_never_reach_clients(api):
    got = _inline_evaluator(api, "inline", "def evaluate(completion, **row):\n    return 1.0\n")
    assert got["state"] == "ACTIVE", got
    assert resource_store.read_meta("evaluators", ACCOUNT, "inline")["_spec"]  # kept on disk...
    listed = api.get(f"/v1/accounts/{ACCOUNT}/evaluators").json()["evaluators"]
    for shown in (got, *listed):  # ...but never shown (it names the server's own folders)
        assert not [key for key in shown if key.startswith("_")]


def _inline_evaluator(http: httpx.Client, evaluator_id: str, main_py: str) -> dict:
    """Create an evaluator from inline code and wait for its build; its final state."""
    snippets = {"language": "python", "fileContents": {"main.py": main_py}}
    body = {
        "evaluatorId": evaluator_id,
        "evaluator": {"criteria": [{"type": "CODE_SNIPPETS", "codeSnippets": snippets}]},
    }
    created = http.post(f"/v1/accounts/{ACCOUNT}/evaluatorsV2", json=body)
    assert created.status_code == 200, created.text
    return _wait_built(http, evaluator_id)


def _wait_built(http: httpx.Client, evaluator_id: str) -> dict:
    deadline = time.monotonic() + 60
    while (got := http.get(f"/v1/accounts/{ACCOUNT}/evaluators/{evaluator_id}").json())[
        "state"
    ] == "BUILDING":
        assert time.monotonic() < deadline, "the build did not finish"
        time.sleep(0.1)
    return got


def test_a_failed_build_reports_an_invalid_argument_status(api):
    got = _inline_evaluator(api, "broken", "def evaluate(completion, **row):\n    return (\n")
    assert got["state"] == "BUILD_FAILED" and got["status"]["code"] == "INVALID_ARGUMENT"
    assert got["status"]["message"]


def test_an_evaluator_left_building_by_a_stopped_server_reads_as_build_failed(api):
    assert (
        _inline_evaluator(api, "ok", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    resource_store.set_state(ACCOUNT, "ok", "BUILDING", "loading the evaluator")  # no thread builds it
    got = api.get(f"/v1/accounts/{ACCOUNT}/evaluators/ok").json()
    assert got["state"] == "BUILD_FAILED" and "stopped during the build" in got["status"]["message"]


def test_an_entry_point_changed_to_a_file_outside_the_archive_fails_the_build(api):
    assert (
        _inline_evaluator(api, "moved", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    patched = api.patch(
        f"/v1/accounts/{ACCOUNT}/evaluators/moved", json={"entryPoint": "../code/main.py::evaluate"}
    )
    assert patched.status_code == 200, patched.text
    got = _wait_built(api, "moved")
    assert got["state"] == "BUILD_FAILED" and "outside the uploaded archive" in got["status"]["message"]


def test_asking_again_for_a_datasets_upload_url_forgets_the_earlier_put(api):
    assert _create_dataset(api, "again").status_code == 200
    assert httpx.put(_signed_put_url(api, "again"), content=ROWS).status_code == 200
    _signed_put_url(api, "again")  # a new upload: the file must be PUT again
    validated = api.post(f"/v1/accounts/{ACCOUNT}/datasets/again:validateUpload", json={})
    assert validated.status_code == 400 and "rows.jsonl" in validated.json()["error"]["message"]


def test_an_archive_with_several_test_files_and_no_entry_point_names_none(tmp_path):
    from openrft.server.errors import ApiError

    (tmp_path / "test_a.py").write_text("def evaluate(completion, **row):\n    return 1.0\n")
    (tmp_path / "test_b.py").write_text("def evaluate(completion, **row):\n    return 0.0\n")
    with pytest.raises(ApiError, match="one test_"):
        resource_store.entry_spec(tmp_path, "")
    (tmp_path / "test_b.py").unlink()
    assert resource_store.entry_spec(tmp_path, "") == str((tmp_path / "test_a.py").resolve())


def _ready_dataset(http: httpx.Client, dataset_id: str) -> None:
    assert _create_dataset(http, dataset_id).status_code == 200
    assert httpx.put(_signed_put_url(http, dataset_id), content=ROWS).status_code == 200
    assert (
        http.post(f"/v1/accounts/{ACCOUNT}/datasets/{dataset_id}:validateUpload", json={}).status_code == 200
    )


def test_a_dataset_update_changes_only_the_updatable_fields(api):
    _ready_dataset(api, "data")
    # what a client sends back after a get: read-only fields next to the changed one
    sent = {"displayName": "Renamed", "state": "UPLOADING", "name": "accounts/other/datasets/x",
            "createTime": "2000-01-01T00:00:00Z"}  # fmt: skip
    patched = api.patch(f"/v1/accounts/{ACCOUNT}/datasets/data", json=sent)
    assert patched.status_code == 200, patched.text
    got = api.get(f"/v1/accounts/{ACCOUNT}/datasets/data").json()
    assert (got["displayName"], got["state"], got["name"]) == (
        "Renamed",
        "READY",
        f"accounts/{ACCOUNT}/datasets/data",
    )
    assert got["createTime"] != "2000-01-01T00:00:00Z"


def test_an_evaluator_update_changes_only_the_updatable_fields(api):
    assert (
        _inline_evaluator(api, "ev", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    sent = {"description": "new words", "state": "BUILD_FAILED", "name": "accounts/other/evaluators/x"}
    patched = api.patch(f"/v1/accounts/{ACCOUNT}/evaluators/ev", json=sent)
    assert patched.status_code == 200, patched.text
    got = api.get(f"/v1/accounts/{ACCOUNT}/evaluators/ev").json()
    assert (got["description"], got["state"], got["name"]) == (
        "new words",
        "ACTIVE",
        f"accounts/{ACCOUNT}/evaluators/ev",
    )


def test_sending_back_an_unchanged_entry_point_does_not_rebuild(api):
    assert (
        _inline_evaluator(api, "same", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    entry = api.get(f"/v1/accounts/{ACCOUNT}/evaluators/same").json()["entryPoint"]
    patched = api.patch(
        f"/v1/accounts/{ACCOUNT}/evaluators/same", json={"entryPoint": entry, "displayName": "x"}
    )
    assert patched.status_code == 200 and patched.json()["state"] == "ACTIVE"


def test_an_evaluators_entry_point_cannot_change_under_a_running_job(api, jobs):
    assert (
        _inline_evaluator(api, "used", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    jobs.active.append({"evaluator": resource_store.read_meta("evaluators", ACCOUNT, "used")["_spec"]})
    patched = api.patch(f"/v1/accounts/{ACCOUNT}/evaluators/used", json={"entryPoint": "main.py::other"})
    assert patched.status_code == 400 and "running-0" in patched.json()["error"]["message"]
    got = api.get(f"/v1/accounts/{ACCOUNT}/evaluators/used").json()
    assert got["state"] == "ACTIVE" and got["entryPoint"] != "main.py::other"


def test_a_dataset_a_stopped_job_can_resume_with_is_kept(api, jobs):
    """A cancelled job resumes from its dataset: deleting it made the resume fail (INTERNAL, naming the
    server's path). A completed job's dataset may go."""
    _ready_dataset(api, "kept")
    path = str(resource_store.resource_dir("datasets", ACCOUNT, "kept") / "data.jsonl")
    jobs.stopped.append({"dataset": path})
    jobs.done.append({"dataset": path})
    refused = api.delete(f"/v1/accounts/{ACCOUNT}/datasets/kept")
    assert refused.status_code == 400 and "cancelled-0" in refused.json()["error"]["message"]
    assert "completed-0" not in refused.json()["error"]["message"]
    jobs.stopped.clear()
    assert api.delete(f"/v1/accounts/{ACCOUNT}/datasets/kept").status_code == 200


def test_a_dataset_without_its_file_has_no_download_url(api):
    assert _create_dataset(api, "empty").status_code == 200
    answer = api.get(f"/v1/accounts/{ACCOUNT}/datasets/empty:getDownloadEndpoint")
    assert answer.status_code == 400 and "no uploaded file" in answer.json()["error"]["message"]


def test_an_expired_download_url_is_refused(api, monkeypatch):
    from openrft.server import resource_updates_api

    _ready_dataset(api, "old")
    monkeypatch.setattr(resource_updates_api, "DOWNLOAD_TTL_S", -10)  # handed out already expired
    url = api.get(f"/v1/accounts/{ACCOUNT}/datasets/old:getDownloadEndpoint").json()["filenameToSignedUrls"][
        "data.jsonl"
    ]
    assert httpx.get(url).status_code == 403


def test_a_build_log_url_does_not_open_the_evaluators_source(api):
    assert (
        _inline_evaluator(api, "secret", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    log_url = api.get(f"/v1/accounts/{ACCOUNT}/evaluators/secret:getBuildLogEndpoint").json()[
        "buildLogSignedUri"
    ]
    assert log_url.endswith("&file=log") and "ACTIVE" in httpx.get(log_url).text
    assert httpx.get(log_url.replace("&file=log", "&file=source")).status_code == 403


def test_a_download_url_of_a_deleted_dataset_answers_not_found(api):
    _ready_dataset(api, "gone")
    url = api.get(f"/v1/accounts/{ACCOUNT}/datasets/gone:getDownloadEndpoint").json()["filenameToSignedUrls"][
        "data.jsonl"
    ]
    assert api.delete(f"/v1/accounts/{ACCOUNT}/datasets/gone").status_code == 200
    assert httpx.get(url).status_code == 404


def test_an_evaluators_source_download_leaves_out_python_caches(api):
    import io
    import tarfile

    assert (
        _inline_evaluator(api, "src", "def evaluate(completion, **row):\n    return 1.0\n")["state"]
        == "ACTIVE"
    )
    cache = resource_store.code_dir(ACCOUNT, "src") / "__pycache__"  # left by a job that imported it
    cache.mkdir(exist_ok=True)
    (cache / "main.cpython-311.pyc").write_bytes(b"\0" * 16)
    urls = api.get(f"/v1/accounts/{ACCOUNT}/evaluators/src:getSourceCodeSignedUrl").json()[
        "filenameToSignedUrls"
    ]
    with tarfile.open(fileobj=io.BytesIO(httpx.get(urls["src.tar.gz"]).content)) as tar:
        assert tar.getnames() == ["main.py"]


def test_list_pages_follow_their_tokens_and_refuse_forged_ones(api):
    for name in ("a", "b", "c"):
        assert _create_dataset(api, name).status_code == 200
    url, seen, token = f"/v1/accounts/{ACCOUNT}/datasets", [], ""
    while True:
        answer = api.get(url, params={"pageSize": 2, "pageToken": token}).json()
        seen += [d["name"].rsplit("/", 1)[-1] for d in answer["datasets"]]
        token = answer["nextPageToken"]
        if not token:
            break
    assert seen == ["a", "b", "c"]
    first = api.get(url, params={"pageSize": 1}).json()["nextPageToken"]
    for forged in ("-1", "-2", "1", "abc", first[:-2]):  # a negative offset read the list from its end
        answer = api.get(url, params={"pageSize": 1, "pageToken": forged})
        assert answer.status_code == 400 and "pageToken" in answer.json()["error"]["message"], forged
    other_order = api.get(url, params={"pageToken": first, "orderBy": "name desc"})
    assert other_order.status_code == 400 and "orderBy" in other_order.json()["error"]["message"]


def test_refusals_a_retry_cannot_change_say_so_and_a_failed_precondition_is_a_400(api):
    """The service's SDK retries 409s (and 408, 429, 5xx) unless told not to; its gateway answers a failed
    precondition with HTTP 400, which the SDK raises as BadRequestError."""
    assert _create_dataset(api, "twice").status_code == 200
    taken = _create_dataset(api, "twice")
    assert taken.status_code == 409 and taken.headers["x-should-retry"] == "false"
    early = api.post(f"/v1/accounts/{ACCOUNT}/datasets/twice:validateUpload", json={})
    assert early.status_code == 400 and early.headers["x-should-retry"] == "false"
    assert early.json()["error"] == {"code": 400, "status": "FAILED_PRECONDITION",
                                     "message": early.json()["error"]["message"]}  # fmt: skip
    assert api.get(f"/v1/accounts/{ACCOUNT}/datasets/none").headers["x-should-retry"] == "false"  # a 404


def test_a_job_naming_a_dataset_not_uploaded_yet_is_refused_as_a_failed_precondition(tmp_path):
    from openrft.server.errors import ApiError, precondition
    from openrft.server.wire import WireContext, resolve_reference

    def not_ready(account: str, dataset_id: str) -> str:
        raise precondition(f"dataset: {dataset_id} has no uploaded file yet")

    ctx = WireContext(account=ACCOUNT, home=tmp_path, dataset_path=not_ready)
    with pytest.raises(ApiError) as refused:
        resolve_reference("dataset", "prompts", "dataset", ctx)
    assert refused.value.body()["error"] == {
        "code": 400,
        "status": "FAILED_PRECONDITION",
        "message": "dataset: prompts has no uploaded file yet",
    }


def test_a_file_in_the_wrong_form_is_named_as_the_user_named_it(api):
    """A gzip'd or undecodable UTF-16 upload: the refusal names the user's file, never the upload path."""
    for dataset_id, content in [("zipped", b"\x1f\x8b\x08\x00rest"), ("utf16", b"\xff\xfe\x00\xd8")]:
        assert _create_dataset(api, dataset_id).status_code == 200
        got = api.post(f"/v1/accounts/{ACCOUNT}/datasets/{dataset_id}:getUploadEndpoint",
                       json={"filenameToSize": {"rows.jsonl": str(len(content))}})  # fmt: skip
        assert httpx.put(got.json()["filenameToSignedUrls"]["rows.jsonl"], content=content).status_code == 200
        refused = api.post(f"/v1/accounts/{ACCOUNT}/datasets/{dataset_id}:validateUpload", json={})
        message = refused.json()["error"]["message"]
        assert refused.status_code == 400 and "rows.jsonl" in message and "upload" not in message, message
