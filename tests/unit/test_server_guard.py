"""What a web page in the user's browser cannot make ``openrft server`` do (openrft.server.guard):
cross-site writes (a text/plain POST needs no preflight), rebound host names on a keyless server, the
dashboard's cookie on the API, and bodies past the request limit."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from openrft.server.app import create_app
from openrft.server.auth import session_token
from openrft.server.settings import ServerSettings
from openrft.server.uploads import UploadLimits

JOBS = "/v1/accounts/victim/reinforcementFineTuningJobs"
EVALUATORS = "/v1/accounts/victim/evaluatorsV2"
SNIPPET = json.dumps({
    "evaluatorId": "planted",
    "evaluator": {"criteria": [{"type": "CODE_SNIPPETS", "codeSnippets": {
        "entryFile": "main.py", "entryFunc": "evaluate",
        "fileContents": {"main.py": "def evaluate(completion, **row):\n    return 1.0\n"}}}]},
})  # fmt: skip


def client(tmp_path, keys: tuple[str, ...] = (), host: str = "127.0.0.1:8321") -> TestClient:
    app = create_app(ServerSettings(home=tmp_path / "home", api_keys=keys, run_queue=False))
    return TestClient(app, base_url=f"http://{host}", follow_redirects=False)


def test_a_page_of_another_site_cannot_plant_code_or_jobs(tmp_path):
    with client(tmp_path) as api:
        for headers in (
            {"origin": "http://evil.example", "content-type": "text/plain"},  # no preflight needed
            {"origin": "http://127.0.0.1:3000"},  # another port of this host: the same site to a browser
            {"origin": "null"},  # a sandboxed frame
            {"sec-fetch-site": "cross-site"},
        ):
            refused = api.post(EVALUATORS, content=SNIPPET, headers=headers)
            assert refused.status_code == 403 and refused.json()["error"]["status"] == "PERMISSION_DENIED"
            cancel = api.post(f"{JOBS}/any:cancel", headers=headers)
            assert cancel.status_code == 403, headers
        assert api.get(EVALUATORS.replace("V2", "")).json().get("evaluators", []) == []  # nothing planted
        assert api.get(JOBS, headers={"origin": "http://evil.example"}).status_code == 200  # reads: no CORS
        same = api.post(EVALUATORS, content=SNIPPET, headers={"origin": "http://127.0.0.1:8321"})
        assert same.status_code == 200  # the dashboard's own page, and clients that send no Origin
        sdk = api.post(JOBS, json={"dataset": "nope"})  # the SDK sends no Origin: checked as usual
        assert sdk.status_code == 404 and "nope" in sdk.json()["error"]["message"]


def test_a_keyless_server_answers_only_requests_addressed_to_this_machine(tmp_path):
    for host in ("127.0.0.1:8321", "localhost:8321", "[::1]:8321", "127.0.0.1"):
        with client(tmp_path, host=host) as api:
            assert api.get(JOBS).status_code == 200, host
    with client(tmp_path, host="evil.example:8321") as rebound:  # DNS rebinding: same origin, wrong name
        for answer in (rebound.get(JOBS), rebound.get("/"), rebound.post("/create", data={"dataset": "x"})):
            assert answer.status_code == 403 and "addressed to this machine" in answer.text
    with client(tmp_path, keys=("k",), host="gpu-box.lan:8321") as named:  # with keys any name is fine
        assert named.get(JOBS, headers={"authorization": "Bearer k"}).status_code == 200


def test_the_dashboard_cookie_opens_pages_but_not_the_api(tmp_path):
    with client(tmp_path, keys=("k",)) as browser:
        browser.cookies.set("openrft_key", session_token("k"))
        assert browser.get("/").status_code == 200
        assert browser.get(JOBS).status_code == 401
        created = browser.post(EVALUATORS, content=SNIPPET, headers={"origin": "http://127.0.0.1:3000"})
        assert created.status_code == 403


@pytest.mark.parametrize("declared", [True, False])
def test_request_bodies_past_the_limit_are_refused(tmp_path, declared):
    with client(tmp_path) as api:
        api.app.state.upload_limits = UploadLimits(max_request_bytes=1024)
        body = json.dumps({"displayName": "x" * 4096, "dataset": "arithmetic"}).encode()
        content = body if declared else iter([body[:2000], body[2000:]])  # chunked: no Content-Length
        answer = api.post(JOBS, content=content, headers={"content-type": "application/json"})
        assert (
            answer.status_code == 413
            and "larger than the server's limit" in answer.json()["error"]["message"]
        )
        assert api.get(JOBS).json()["reinforcementFineTuningJobs"] == []
