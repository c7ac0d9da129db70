"""``openrft rftj ... --server``: the client's side of the job API, against an in-memory fake service.

The fake answers through ``httpx.MockTransport``, so these tests check what the CLI sends and how it
reads the answers (paging, waiting, uploads) without starting a server or a worker.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from openrft.cli import main
from openrft.cli import remote as remote_mod

URL = "http://fake.test"
SCORER = "def a(completion, **row):\n    return 1.0\n\n\ndef b(completion, **row):\n    return 0.0\n"


class FakeService:
    """Datasets, evaluators and jobs held in dicts; every request is kept in ``self.requests``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.datasets: dict[str, dict[str, Any]] = {}
        self.evaluators: dict[str, dict[str, Any]] = {}
        self.job_pages: list[dict[str, Any]] = [{"reinforcementFineTuningJobs": []}]
        self.job_states: list[str] = ["JOB_STATE_CANCELLED"]
        self.created_jobs: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        parts = path.split("/")
        if "/datasets" in path:
            return self._dataset(method, parts[-1], request)
        if "/evaluators" in path:
            return self._evaluator(method, parts[-1], request)
        if path.endswith("/reinforcementFineTuningJobs") and method == "GET":
            token = request.url.params.get("pageToken") or "0"
            return httpx.Response(200, json=self.job_pages[int(token)])
        if path.endswith("/reinforcementFineTuningJobs") and method == "POST":
            body = json.loads(request.content)
            self.created_jobs.append(body)
            name = f"accounts/local/reinforcementFineTuningJobs/job{len(self.created_jobs)}"
            return httpx.Response(200, json={"name": name, "state": "JOB_STATE_PENDING"})
        if path.endswith((":cancel", ":resume")):
            return httpx.Response(200, json={"name": parts[-1].split(":")[0], "state": "JOB_STATE_PENDING"})
        if method == "GET":  # one job: the next of the scripted states (the last one repeats)
            state = self.job_states.pop(0) if len(self.job_states) > 1 else self.job_states[0]
            return httpx.Response(200, json={"name": f"accounts/local/x/{parts[-1]}", "state": state})
        return httpx.Response(404, json={"error": {"message": f"no route {method} {path}"}})

    def _dataset(self, method: str, last: str, request: httpx.Request) -> httpx.Response:
        if method == "GET":
            if last not in self.datasets:
                return httpx.Response(404, json={"error": {"message": "not found"}})
            return httpx.Response(200, json=self.datasets[last])
        if last.endswith(":upload"):
            self.datasets[last.removesuffix(":upload")]["state"] = "READY"
            return httpx.Response(200, json={})
        body = json.loads(request.content)
        self.datasets[body["datasetId"]] = {"state": "UPLOADING"}
        return httpx.Response(200, json={})

    def _evaluator(self, method: str, last: str, request: httpx.Request) -> httpx.Response:
        if method == "GET":
            if last not in self.evaluators:
                return httpx.Response(404, json={"error": {"message": "not found"}})
            return httpx.Response(200, json=self.evaluators[last])
        if last.endswith(":getUploadEndpoint"):
            return httpx.Response(200, json={"filenameToSignedUrls": {"code.tar.gz": f"{URL}/put"}})
        if last.endswith(":validateUpload"):
            self.evaluators[last.removesuffix(":validateUpload")]["state"] = "ACTIVE"
            return httpx.Response(200, json={})
        body = json.loads(request.content)  # evaluatorsV2: create
        self.evaluators[body["evaluatorId"]] = {"state": "PENDING", **body["evaluator"]}
        return httpx.Response(200, json={})

    def sent(self, method: str, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.endswith(suffix)]


@pytest.fixture
def service(monkeypatch) -> FakeService:
    """A fake service that every ``Remote`` (and the evaluator's signed-URL PUT) talks to."""
    fake = FakeService()

    class MockRemote(remote_mod.Remote):
        def __init__(self, url: str, api_key: str | None = None, account: str | None = None):
            super().__init__(url, api_key, account)
            self.http = httpx.Client(base_url=self.url, transport=httpx.MockTransport(fake.handle))

    monkeypatch.setattr(remote_mod, "Remote", MockRemote)
    monkeypatch.setattr(httpx, "put", lambda url, **kw: httpx.Response(200))
    monkeypatch.setattr(remote_mod.time, "sleep", lambda s: None)
    monkeypatch.delenv("OPENRFT_ACCOUNT", raising=False)
    monkeypatch.delenv("OPENRFT_API_KEY", raising=False)
    return fake


def test_one_scorer_file_with_two_functions_uploads_two_distinct_evaluators(service, tmp_path):
    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    remote = remote_mod.Remote(URL)
    first = remote_mod.upload_evaluator(remote, scorer, "a")
    second = remote_mod.upload_evaluator(remote, scorer, "b")
    # reusing the first would score the second job with the wrong function
    assert first != second
    entries = [service.evaluators[name.rsplit("/", 1)[-1]]["entryPoint"] for name in (first, second)]
    assert entries == ["scorer.py::a", "scorer.py::b"]
    assert remote_mod.upload_evaluator(remote, scorer, "a") == first  # the same file and function: reused


def test_a_dataset_left_unready_by_an_interrupted_upload_is_uploaded_again(service, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    remote = remote_mod.Remote(URL)
    dataset_id = remote_mod.resource_id(data, data.read_bytes())
    service.datasets[dataset_id] = {"state": "UPLOADING"}  # created, but its :upload never arrived
    name = remote_mod.upload_dataset(remote, data)
    assert name == f"accounts/local/datasets/{dataset_id}"
    assert len(service.sent("POST", f"{dataset_id}:upload")) == 1
    assert service.datasets[dataset_id]["state"] == "READY"
    remote_mod.upload_dataset(remote, data)  # READY now: not uploaded twice
    assert len(service.sent("POST", f"{dataset_id}:upload")) == 1


def test_rftj_list_over_a_server_reads_every_page(service, capsys):
    job = {"state": "JOB_STATE_COMPLETED", "createTime": "2026-01-01T00:00:00Z"}
    service.job_pages = [
        {"reinforcementFineTuningJobs": [{**job, "name": "accounts/local/x/first"}], "nextPageToken": "1"},
        {"reinforcementFineTuningJobs": [{**job, "name": "accounts/local/x/second"}]},
    ]
    assert [j["name"] for j in remote_mod.Remote(URL).jobs()] == [
        "accounts/local/x/first",
        "accounts/local/x/second",
    ]
    pages = service.sent("GET", "/reinforcementFineTuningJobs")
    assert [r.url.params.get("pageToken") for r in pages] == ["", "1"]
    assert main(["rftj", "list", "--server", URL]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "second" in out


def test_rftj_cancel_wait_over_a_server_polls_until_the_job_has_stopped(service, capsys):
    service.job_states = ["JOB_STATE_CANCELLING", "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"]
    assert main(["rftj", "cancel", "j1", "--wait", "--server", URL]) == 0
    assert len(service.sent("GET", "/j1")) == 3
    assert "job j1 CANCELLED" in capsys.readouterr().out


def test_rftj_resume_over_a_server_sends_force_only_when_asked(service):
    assert main(["rftj", "resume", "j1", "--server", URL]) == 0
    assert main(["rftj", "resume", "j1", "--force", "--server", URL]) == 0
    bodies = [json.loads(r.content) for r in service.sent("POST", "/j1:resume")]
    assert bodies == [{"force": False}, {"force": True}]


def test_a_local_evaluation_dataset_is_uploaded_like_the_training_dataset(service, tmp_path, capsys):
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "Say 1."}]}\n')
    held.write_text('{"messages": [{"role": "user", "content": "Say 2."}]}\n')
    out = remote_mod.upload_local_files(
        remote_mod.Remote(URL), {"dataset": str(train), "evaluation_dataset": str(held)}
    )
    assert out["dataset"].startswith("accounts/local/datasets/train-")
    # the server never reads a client's path: the held-out file travels as its own resource
    assert out["evaluation_dataset"].startswith("accounts/local/datasets/held-")
    assert capsys.readouterr().err.count("as accounts/local/datasets/") == 2


def test_create_checks_local_files_as_a_local_create_does_before_uploading_anything(
    service, tmp_path, capsys
):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "Hi"}], "ground_truth": 1}\n{"messages": 3}\n')
    broken = tmp_path / "broken.py"
    broken.write_text("def score(completion, **row)\n    return 1.0\n")
    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    for flags, said in (
        (["--dataset", str(rows), "--evaluator", f"{scorer}::a"], "--dataset: "),
        (["--dataset", "arithmetic", "--evaluator", str(broken)], "--evaluator: "),
    ):
        assert main(["rftj", "create", "--server", URL, *flags]) == 2  # as without --server
        assert capsys.readouterr().err.startswith(said)
    assert service.requests == []  # nothing was uploaded or created
    good = tmp_path / "good.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "Hi"}], "ground_truth": 1}\n')
    assert (
        main(["rftj", "create", "--server", URL, "--dataset", str(good), "--evaluator", f"{scorer}::a"]) == 0
    )
    assert len(service.created_jobs) == 1
    capsys.readouterr()
    twice = tmp_path / "twice.jsonl"  # what a local create warns of is said here too, before the upload
    twice.write_text(good.read_text() * 2)
    flags = ["--dataset", str(twice), "--evaluator", f"{scorer}::a", "--n", "2"]
    assert main(["rftj", "create", "--server", URL, *flags]) == 0
    err = capsys.readouterr().err
    assert "1 row repeats an earlier row (line 2 repeats 1)" in err and "--response-candidates-count 2" in err


def test_a_refusal_of_a_value_exits_as_a_local_refusal_and_other_refusals_as_job_errors():
    from openrft.errors import ConfigError, JobError

    def answer(status: int, name: str):
        body = {"error": {"code": status, "message": "no", "status": name}}
        remote = remote_mod.Remote(URL)
        remote.http = httpx.Client(
            base_url=URL, transport=httpx.MockTransport(lambda r: httpx.Response(status, json=body))
        )
        return remote

    with pytest.raises(ConfigError):  # exit 2: the request got a value wrong
        answer(400, "INVALID_ARGUMENT").call("POST", "/x")
    for status, name in ((400, "FAILED_PRECONDITION"), (409, "ALREADY_EXISTS"), (404, "NOT_FOUND")):
        with pytest.raises(JobError):  # exit 7, as the same refusal of a local job
            answer(status, name).call("POST", "/x")


def test_an_evaluator_is_uploaded_with_the_modules_of_its_folder_it_imports(service, tmp_path, monkeypatch):
    import io
    import tarfile

    (tmp_path / "helper_mod.py").write_text("import shared\n\n\ndef answer():\n    return shared.VALUE\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("VALUE = '4'\n")
    (tmp_path / "unrelated.py").write_text("raise SystemExit\n")
    scorer = tmp_path / "scorer.py"
    scorer.write_text("import json\nfrom helper_mod import answer\n\n\ndef score(completion, **row):\n"
                      "    return float(answer() in completion)\n")  # fmt: skip
    sent = []
    monkeypatch.setattr(httpx, "put", lambda url, content, **kw: sent.append(content) or httpx.Response(200))
    name = remote_mod.upload_evaluator(remote_mod.Remote(URL), scorer, "score")
    with tarfile.open(fileobj=io.BytesIO(sent[0]), mode="r:gz") as archive:
        assert sorted(archive.getnames()) == ["helper_mod.py", "scorer.py", "shared/__init__.py"]
    (tmp_path / "helper_mod.py").write_text("def answer():\n    return '5'\n")  # a helper changed: a new id
    assert remote_mod.upload_evaluator(remote_mod.Remote(URL), scorer, "score") != name


def test_what_the_server_tells_an_http_client_to_send_is_said_as_this_command_does_it():
    from openrft.errors import JobError

    def refusal(status: int, message: str) -> str:
        body = {"error": {"code": status, "message": message, "status": "UNAUTHENTICATED"}}
        remote = remote_mod.Remote(URL)
        remote.http = httpx.Client(
            base_url=URL, transport=httpx.MockTransport(lambda r: httpx.Response(status, json=body))
        )
        with pytest.raises(JobError) as refused:
            remote.call("GET", "/x")
        return refused.value.message

    assert "set OPENRFT_API_KEY" in refusal(401, "no API key: send the header 'Authorization: Bearer <key>'")
    cancelled = (
        'job j was cancelled; cancelled jobs are not resumed (send {"force": true} to resume it anyway)'
    )
    assert "(pass --force to resume it anyway)" in refusal(400, cancelled)
