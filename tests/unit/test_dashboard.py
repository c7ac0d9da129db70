"""The dashboard's pages, JSON and create form, through FastAPI's test client (no browser)."""

from __future__ import annotations

import json
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from openrft.config import build_config
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.server import dashboard
from openrft.server.dashboard import data, forms, pages


def add_job(store: JobStore, job_id: str, steps: int = 3, finish: bool = False, **flags) -> None:
    cfg, _ = build_config({}, {"dataset": "arithmetic", "job_id": job_id, **flags})
    record = store.create(job_id, cfg)
    store.transition(job_id, JobState.VALIDATING)
    store.transition(job_id, JobState.RUNNING)
    with open(record.metrics_path, "w") as handle:
        for step in range(1, steps + 1):
            # "epoch" as versions before the train/ namespace wrote it: progress reads it the same
            handle.write(json.dumps({"step": step, "reward/mean": step / 10, "epoch": step / 10}) + "\n")
        handle.write('{"step": 9, "reward/me')  # a line torn by a crash is skipped
    if finish:
        store.transition(job_id, JobState.COMPLETED)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    return JobStore(tmp_path)


@pytest.fixture
def client(store):
    app = FastAPI()
    app.state.job_store = store
    dashboard.install(app)
    return TestClient(app)


def errors(html: str) -> list[str]:
    return re.findall(r'class="error field-error" id="error-([a-z-]+)">([^<]*)<', html)


def test_job_list_shows_state_progress_and_filters(store, client):
    add_job(store, "running")
    add_job(store, "done", finish=True)
    store.request_cancel("running")
    page = client.get("/").text
    assert "CANCELLING" in page and "COMPLETED" in page and "30%" in page and "100%" in page
    only = client.get("/", params={"state": "COMPLETED"}).text
    assert 'data-job="done"' in only and 'data-job="running"' not in only
    assert 'data-job="running"' in client.get("/dashboard/jobs-table", params={"state": "CANCELLING"}).text


def test_job_list_pages_and_counts_each_state(store, client, monkeypatch):
    monkeypatch.setattr(data, "PAGE_SIZE", 2)
    for name in ["a", "b", "c", "d", "e"]:
        add_job(store, name, steps=1, finish=name in "ace")
    first = client.get("/").text
    assert re.findall(r'data-job="(\w)"', first) == ["e", "d"]  # newest first
    assert "Jobs 1–2 of 5" in first and 'id="older"' in first and 'id="newer"' not in first
    counts = dict(re.findall(r'data-state="(\w*)"[^>]*>\s*\w+ <span class="count">(\d+)<', first))
    assert counts == {"": "5", "RUNNING": "2", "COMPLETED": "3"}  # only the states that hold jobs
    last = client.get("/", params={"state": "COMPLETED", "page": 9}).text  # past the end: the last page
    assert re.findall(r'data-job="(\w)"', last) == ["a"] and "Jobs 3–3 of 3" in last
    assert '/?state=COMPLETED&page=1" rel="prev"' in last.replace("&amp;", "&")
    refresh = client.get("/dashboard/jobs-table", params={"state": "COMPLETED", "page": 2}).text
    assert re.findall(r'data-job="(\w)"', refresh) == ["a"]
    assert 'id="state-filter"' in refresh and 'id="pager"' in refresh  # swapped out of band
    assert "page=2" in re.search(r'<tbody id="job-rows" hx-get="([^"]+)"', refresh).group(1)


def test_metrics_json_returns_only_new_lines(store, client):
    add_job(store, "j", steps=3)
    body = client.get("/jobs/j/metrics.json", params={"since": 1}).json()
    assert [p["step"] for p in body["points"]] == [2, 3] and body["next"] == 3
    assert body["active"] is True and body["state"] == "RUNNING"
    assert body["progress"] == "30%" and body["reward"] == "-"  # the page's facts refresh with its curves
    assert re.fullmatch(r"\d+[smhd]", body["age"])  # and "Created (N ago)" ticks
    assert client.get("/jobs/nope/metrics.json").status_code == 404
    page = client.get("/jobs/j")
    assert (
        'id="job-progress">30%<' in page.text
        and 'id="job-age">' in page.text
        and 'data-state="RUNNING"' in page.text
    )
    assert page.headers["cache-control"] == "no-store"  # Back does not show a deleted job as it was


def test_rollouts_best_or_worst_first_with_agent_turns(store):
    add_job(store, "j")
    record = store.get("j")
    rows = [
        {"step": 2, "score": 0.2, "completion": "a"},
        {"step": 2, "score": None, "completion": "b"},
        {"step": 2, "score": 0.9, "completion": "", "prompt_messages": 1, "conversation": [
            {"role": "user", "content": "q"}, {"role": "tool", "name": "calc", "content": "4"}]},
        {"step": 1, "score": 1.0, "completion": "old"},
    ]  # fmt: skip
    record.rollouts_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = data.rollouts(record, None, "best")
    assert best["steps"] == [1, 2] and best["step"] == 2
    assert [r["score"] for r in best["items"]] == ["0.900", "0.200", "-"]
    assert best["items"][0]["turns"] == [{"role": "tool calc", "text": "4"}]
    assert [r["score"] for r in data.rollouts(record, 2, "worst")["items"]] == ["-", "0.200", "0.900"]
    assert data.rollouts(record, 1, "best")["items"][0]["completion"] == "old"


def test_the_form_puts_each_cli_message_next_to_its_field(store):
    policy = forms.Policy(store.root)
    result = forms.validate(
        {"lora-rank": "12", "learning-rate": "1", "dataset": "arithmetic", "n": "1"}, policy
    )
    assert result.errors == {
        "lora_rank": ["--lora-rank: 12 is not valid; expected one of 4, 8, 16, 32"],
        "learning_rate": ["--learning-rate: 1 is not valid; expected a number from 1e-5 to 5e-4"],
        "response_candidates_count": [
            "--response-candidates-count / --n: 1 is not valid; expected a whole number >= 2"
        ],
    }
    ok = forms.validate({"dataset": "arithmetic", "batch-size": "32k", "lora-rank": "16"}, policy)
    assert ok.ok and ok.config.training.batch_size == 32768 and ok.config.training.lora_rank == 16


def test_the_form_refuses_paths_on_the_server(store, tmp_path):
    policy = forms.Policy(store.root)
    result = forms.validate(
        {"dataset": "/etc/passwd", "evaluator": f"{tmp_path}/e.py::f", "base-model": "/srv/model"}, policy
    )
    assert set(result.errors) == {"dataset", "evaluator", "base_model"}
    assert result.errors["dataset"][0].startswith("--dataset: /etc/passwd is a path on the server")
    assert result.config is None
    unknown = forms.validate({"dataset": "accounts/me/datasets/nothing-here"}, policy)
    assert "not found" in unknown.errors["dataset"][0]


def test_create_page_shows_inline_errors_and_submits(store, client, monkeypatch):
    page = client.post("/create", data={"lora-rank": "12", "dataset": "arithmetic"})
    assert page.status_code == 400
    assert errors(page.text) == [("lora-rank", "--lora-rank: 12 is not valid; expected one of 4, 8, 16, 32")]
    assert 'value="12"' in page.text and store.list() == []
    submitted = {}

    def fake_submit(store_, cfg, job_id=None, *, meta=None, cli_messages=False):
        submitted.update(job_id=job_id, meta=meta, lr=cfg.training.learning_rate)
        add_job(store_, job_id)
        return store_.get(job_id)

    import openrft.server.jobs_api as jobs_api

    monkeypatch.setattr(jobs_api, "submit_job", fake_submit)
    done = client.post(
        "/create",
        data={"job-id": "new1", "dataset": "arithmetic", "learning-rate": "2e-4"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"].endswith("/jobs/new1")
    assert submitted == {
        "job_id": "new1",
        "meta": {"account": "local", "refs": {"dataset": "arithmetic"}},
        "lr": 2e-4,
    }


def test_a_submission_error_lands_next_to_its_field(store, client, monkeypatch):
    from openrft.errors import DataError

    def failing(store_, cfg, job_id=None, **_):
        raise DataError("--dataset: row 3 is not JSON")

    import openrft.server.jobs_api as jobs_api

    monkeypatch.setattr(jobs_api, "submit_job", failing)
    page = client.post("/create", data={"dataset": "arithmetic"})
    assert errors(page.text) == [("dataset", "--dataset: row 3 is not JSON")]
    monkeypatch.undo()
    page = client.post("/create", data={"dataset": "arithmetic", "base_model": "no-such-model"})
    ((field, message),) = errors(page.text)  # as `rftj create` says it, beside the field
    assert field == "base-model" and message.startswith("--base-model: base model not found: no-such-model")


def test_job_page_cancel_and_compare(store, client):
    add_job(store, "a", finish=True)
    add_job(store, "b", learning_rate=2e-4, lora_rank=16)
    page = client.get("/jobs/b").text
    assert 'id="cancel"' in page and "--learning-rate" in page and "No adapter yet" in page
    moved = client.post("/jobs/b/cancel", follow_redirects=False)
    assert moved.status_code == 303 and store.get("b").shown_state == "CANCELLING"
    assert "Cancel requested" in client.get(moved.headers["location"]).text
    compare = client.get("/compare", params=[("ids", "a"), ("ids", "b")]).text
    assert "2 parameters differ (--learning-rate, --lora-rank)" in compare
    assert client.get("/jobs/missing").status_code == 404
    refused = client.post("/jobs/a/cancel", follow_redirects=False)  # finished: nothing to cancel
    assert "could not be cancelled" in client.get(refused.headers["location"]).text
    forged = client.get("/jobs/a", params={"cancel": "Session expired: log in at https://evil.example"}).text
    assert "evil.example" not in forged  # only the page's own sentences, never text from the URL


def test_a_stopped_job_is_resumed_or_deleted_from_its_page(store, client):
    add_job(store, "f")
    store.transition("f", JobState.FAILED, "the accelerator fell over")
    add_job(store, "r")  # still running: neither button, and a forged post is refused
    page = client.get("/jobs/f").text
    assert 'id="resume"' in page and 'id="delete"' in page and 'id="cancel"' not in page
    running = client.get("/jobs/r").text
    assert 'id="resume"' not in running and 'id="delete"' not in running
    refused = client.post("/jobs/r/delete", follow_redirects=False)
    assert "could not be deleted" in client.get(refused.headers["location"]).text and store.exists("r")
    resumed = client.post("/jobs/f/resume", follow_redirects=False)
    assert store.get("f").state is JobState.PENDING  # queued again, from its last checkpoint
    assert "Resumed: the job waits in the queue" in client.get(resumed.headers["location"]).text
    store.transition("f", JobState.CANCELLED, "cancelled before it started")
    gone = client.post("/jobs/f/delete", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"].endswith("/") and not store.exists("f")


def test_torn_unicode_and_lines_that_are_not_objects_are_skipped(store, client):
    add_job(store, "t")
    record = store.get("t")
    row = {"step": 1, "round": 1, "prompt_id": "p", "prompt": "你好", "completion": "好", "score": 1.0,
           "valid": True, "reason": "", "finish_reason": "stop"}  # fmt: skip
    with open(record.rollouts_path, "wb") as handle:
        handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        handle.write(json.dumps(row, ensure_ascii=False).encode()[:-8])  # cut inside a character
    with open(record.metrics_path, "a") as handle:
        handle.write("\n[1, 2]\nnull\n")
    assert client.get("/jobs/t").status_code == 200
    assert client.get("/jobs/t/metrics.json").status_code == 200


def test_pages_render_without_the_vendored_libraries(store, client, monkeypatch):
    add_job(store, "a")
    monkeypatch.setattr(pages, "vendored", lambda: False)
    for url in ("/", "/jobs/a", "/compare?ids=a", "/create"):
        page = client.get(url)
        assert page.status_code == 200 and 'id="no-vendor"' in page.text and "vendor/" not in page.text
    assert "openrft rftj plot a" in client.get("/jobs/a").text


def test_forms_posted_from_another_site_are_refused(store, client):
    add_job(store, "a")
    evil = {"origin": "http://evil.example"}
    assert client.post("/jobs/a/cancel", headers=evil).status_code == 403
    assert client.post("/create", data={"dataset": "arithmetic"}, headers=evil).status_code == 403
    assert not store.get("a").cancel_requested
    same = client.post("/jobs/a/cancel", headers={"origin": "http://testserver"}, follow_redirects=False)
    assert same.status_code == 303 and store.get("a").cancel_requested


def test_a_server_with_keys_lets_a_browser_in_through_the_login_page(tmp_path):
    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    app = create_app(ServerSettings(home=tmp_path / "home", api_keys=("s3cret",), run_queue=False))
    with TestClient(app, follow_redirects=False) as browser:
        page = browser.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
        assert (
            browser.get("/v1/accounts/a/reinforcementFineTuningJobs").status_code == 401
        )  # API: no redirect
        assert browser.get("/login").status_code == 200
        wrong = browser.post("/login", data={"key": "nope", "next": "/"})
        assert wrong.status_code == 401 and "not one of this server&#39;s API keys" in wrong.text
        assert "openrft_key" not in browser.cookies
        sent = browser.post("/login", data={"key": "s3cret", "next": "//evil.example/"})
        assert sent.status_code == 303 and sent.headers["location"] == "/"  # never off-site
        assert (
            "httponly" in sent.headers["set-cookie"].lower()
            and "samesite=strict" in sent.headers["set-cookie"].lower()
        )
        assert browser.get("/").status_code == 200
        assert "s3cret" not in sent.headers["set-cookie"]  # whoever reads the cookie does not get the key
        # the cookie opens the dashboard's pages only: the API wants the key itself (a page on another
        # port of this host is the same site to a browser, which would send it the cookie)
        assert browser.get("/v1/accounts/a/reinforcementFineTuningJobs").status_code == 401
        other = TestClient(app, follow_redirects=False)
        other.cookies.set("openrft_key", "s3cret")  # the key itself is not a session
        assert other.get("/").status_code == 303
        for target in ("/\\evil.example/", "/\t/evil.example"):
            shown = browser.get("/login", params={"next": target}).text
            assert ("evil.example" in shown) is False, target
        assert 'id="logout"' in browser.get("/").text
        browser.post("/logout")
        assert browser.get("/").status_code == 303
        # logged out: each kind of request goes where it can be handled
        page = browser.get("/", params={"state": "COMPLETED"})
        assert page.headers["location"] == "/login?next=/%3Fstate%3DCOMPLETED"  # back to the filtered list
        assert browser.get("/jobs/x/metrics.json").status_code == 401  # the charts' JSON: no HTML redirect
        htmx = browser.get(
            "/jobs/table", headers={"HX-Request": "true", "HX-Current-URL": "http://t/?state=RUNNING"}
        )
        assert htmx.status_code == 401 and htmx.headers["HX-Redirect"] == "/login?next=/%3Fstate%3DRUNNING"
        posted = browser.post("/jobs/x/cancel", data={"from": "form"}, headers={"Referer": "http://t/jobs/x"})
        assert posted.status_code == 303 and posted.headers["location"] == "/login?next=/jobs/x"
        back = browser.post("/login", data={"key": "s3cret", "next": "/?state=COMPLETED"})
        assert back.headers["location"] == "/?state=COMPLETED"


def test_the_job_page_offers_the_adapters_files_and_the_jobs_logs_to_download(store, client):
    add_job(store, "d", finish=True)
    out = store.get("d").job_dir / "output"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"r": 8}')
    (out / "adapter_model.safetensors").write_bytes(b"\x00weights")
    (out / ".openrft-output").write_text("a mark, not for download")
    store.set_output("d", out)
    page = client.get("/jobs/d").text
    links = re.findall(r'href="[^"]*/jobs/d/files/([^"]+)" download', page)
    assert links == ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl"]
    got = client.get("/jobs/d/files/adapter_model.safetensors")
    assert got.status_code == 200 and got.content == b"\x00weights"
    assert "attachment" in got.headers["content-disposition"]
    for name in (".openrft-output", "..%2Fjob.json", "nothing"):
        assert client.get(f"/jobs/d/files/{name}").status_code == 404
