"""Dashboard contracts through the whole app: keys and the login page, cross-site writes, the create
form's wiring to the server's settings, and the small promises of the job list, job page and compare."""

from __future__ import annotations

import json
import re

import test_dashboard
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_dashboard import add_job

from openrft.server import dashboard
from openrft.server.app import create_app
from openrft.server.auth import session_token
from openrft.server.dashboard import data, forms
from openrft.server.errors import ApiError
from openrft.server.settings import ServerSettings

JOBS = "/v1/accounts/acme/reinforcementFineTuningJobs"
store = test_dashboard.store  # the job store fixture of the dashboard's own tests


def served(tmp_path, keys: tuple[str, ...] = ()) -> TestClient:
    app = create_app(ServerSettings(home=tmp_path / "home", api_keys=keys, run_queue=False))
    return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)


def test_a_keyed_server_keeps_the_job_table_behind_the_login_but_serves_its_styles(tmp_path):
    with served(tmp_path, keys=("k",)) as browser:
        table = browser.get("/dashboard/jobs-table")
        assert table.status_code == 303 and table.headers["location"].startswith("/login")
        style = browser.get("/dashboard/static/dashboard.css")
        assert style.status_code == 200  # the login page needs its styles before any key
        browser.cookies.set("openrft_key", session_token("k"))
        assert browser.get("/dashboard/jobs-table").status_code == 200


def test_a_page_request_with_a_wrong_bearer_key_is_refused_not_sent_to_log_in(tmp_path):
    with served(tmp_path, keys=("k",)) as client:
        wrong = client.get("/", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]["message"]
        assert client.get("/", headers={"authorization": "Bearer k"}).status_code == 200


def test_same_site_writes_and_cross_site_deletes_are_refused(tmp_path):
    with served(tmp_path) as api:
        # another port of this host is the same site to a browser, yet another origin
        same_site = api.post(f"{JOBS}/any:cancel", headers={"sec-fetch-site": "same-site"})
        assert same_site.status_code == 403
        form = api.post("/create", data={"dataset": "arithmetic"}, headers={"sec-fetch-site": "same-site"})
        assert form.status_code == 403
        deleted = api.delete(f"{JOBS}/any", headers={"origin": "http://evil.example"})
        assert deleted.status_code == 403
        assert api.delete(f"{JOBS}/any").status_code == 404  # no Origin (the SDK): checked as usual


def test_the_create_form_refuses_server_paths_unless_the_server_allows_them(tmp_path):
    with served(tmp_path) as browser:
        page = browser.post("/create", data={"base-model": "/tmp", "dataset": "/etc/hosts"})
        assert page.status_code == 400
        assert "/etc/hosts is a path on the server" in page.text and "--allow-local-paths" in page.text
        assert "/tmp is a path on the server" in page.text
        assert browser.get(JOBS).json().get("reinforcementFineTuningJobs", []) == []


def test_a_browser_form_with_every_field_posted_blank_but_the_dataset_submits(tmp_path, monkeypatch):
    import openrft.server.jobs_api as jobs_api

    made = []

    def fake_submit(store_, cfg, job_id=None, **_):
        made.append(cfg)
        add_job(store_, "posted")
        return store_.get("posted")

    monkeypatch.setattr(jobs_api, "submit_job", fake_submit)
    posted = {f.name.replace("_", "-"): "" for f in forms.FIELDS}  # a browser sends every input
    posted["dataset"] = "arithmetic"
    with served(tmp_path) as browser:
        done = browser.post("/create", data=posted)
    assert done.status_code == 303, re.findall(r'class="error[^>]*>([^<]*)<', done.text)
    assert done.headers["location"].endswith("/jobs/posted") and len(made) == 1


def test_an_unknown_state_filter_shows_every_job(store, tmp_path):
    add_job(store, "a")
    add_job(store, "b", finish=True)
    app = create_app(ServerSettings(home=tmp_path, run_queue=False))
    with TestClient(app, base_url="http://127.0.0.1") as browser:
        page = browser.get("/", params={"state": "BOGUS"}).text
    assert set(re.findall(r'data-job="(\w+)"', page)) == {"a", "b"}


def test_the_all_count_counts_every_job_while_a_state_is_chosen(store):
    add_job(store, "a")
    add_job(store, "b", finish=True)
    add_job(store, "c", finish=True)
    listing = data.job_list_page(store, "RUNNING")
    assert [r["id"] for r in listing["rows"]] == ["a"]
    assert listing["counts"][""] == 3 and listing["counts"]["COMPLETED"] == 2


def test_progress_stays_within_zero_and_one(store):
    add_job(store, "a", epochs=2)
    record = store.get("a")
    assert data.progress(record, {"train/epoch": 5.0}) == 1.0  # a longer last epoch than planned
    assert data.progress(record, {"train/epoch": 1.0}) == 0.5
    assert data.progress(record, {"train/epoch": -1.0}) == 0.0


def test_the_job_page_marks_only_the_parameters_the_user_gave(store):
    add_job(store, "a", learning_rate=2e-4)
    given = {row["flag"] for row in data.parameters(store.get("a")) if row["given"]}
    assert "--learning-rate" in given and "--lora-rank" not in given


def test_compare_with_one_job_asks_for_another_instead_of_comparing(store, tmp_path):
    add_job(store, "a")
    app = create_app(ServerSettings(home=tmp_path, run_queue=False))
    with TestClient(app, base_url="http://127.0.0.1") as browser:
        page = browser.get("/compare", params={"ids": "a"}).text
    assert "Pick at least two jobs." in page and "Parameters that differ" not in page


def test_a_taken_job_id_is_reported_beside_the_job_id_field():
    result = forms.FormResult({})
    forms.submission_error(result, ApiError(409, "job 'x' already exists"))
    assert result.errors == {"job_id": ["job 'x' already exists"]}


def test_a_form_fields_help_is_its_first_whole_sentence_past_any_e_g():
    from openrft.server.dashboard.forms import FIELDS, first_sentence

    assert first_sentence("Use a file, e.g. my.py. Then more.") == "Use a file, e.g. my.py."
    assert first_sentence("No full stop") == "No full stop."
    helps = {f.name: f.help for f in FIELDS}
    assert "e.g. 'arithmetic:partial_weight=0')" in helps["evaluator"]  # it was cut at "e.g."
    assert "e.g. more than 300 prompts at 200)" in helps["chunk_size"]


def test_the_login_page_offers_no_log_out(tmp_path):
    with served(tmp_path, keys=("k",)) as browser:
        page = browser.get("/login")
        assert page.status_code == 200 and 'id="logout"' not in page.text
        assert 'id="logout"' not in browser.post("/login", data={"key": "wrong"}).text
        browser.cookies.set("openrft_key", session_token("k"))
        assert 'id="logout"' in browser.get("/").text  # logged in: it is there


def test_neither_the_api_nor_the_dashboard_deletes_a_job_another_job_still_starts_from(tmp_path):
    from openrft.jobs.states import JobState
    from openrft.jobs.store import JobStore

    with served(tmp_path) as api:
        store = JobStore(tmp_path / "home")
        test_dashboard.add_job(store, "src", finish=True)
        start = str(store.get("src").job_dir / "output")
        test_dashboard.add_job(store, "wsk", warm_start_from=start)  # running: it may fail and resume
        refused = api.delete(f"{JOBS}/src")
        said = refused.json()["error"]["message"]
        assert refused.status_code == 400 and "is the warmStartFrom of job wsk" in said, said
        page = api.post("/jobs/src/delete")
        said = api.get(page.headers["location"]).text
        assert "another job starts from its adapter" in said and "The job that starts from it: wsk." in said
        assert store.exists("src")
        store.transition("wsk", JobState.COMPLETED)  # done with it
        assert api.delete(f"{JOBS}/src").status_code == 200 and not store.exists("src")


def test_a_browser_gets_the_lockout_and_the_body_limit_as_a_page_the_api_as_json(tmp_path):
    page = {"accept": "text/html,application/xhtml+xml"}
    with served(tmp_path, keys=("k",)) as browser:
        for n in range(21):
            browser.post("/login", data={"key": f"wrong{n}"}, headers=page)
        locked = browser.post("/login", data={"key": "k"}, headers=page)  # even the right key, for now
        assert locked.status_code == 429 and locked.headers["retry-after"]
        assert locked.headers["content-type"].startswith("text/html")
        assert "too many wrong API keys from this address" in locked.text and '{"error"' not in locked.text
        api = browser.get(JOBS, headers={"authorization": "Bearer k"})
        assert api.status_code == 429 and api.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    with served(tmp_path) as browser:
        big = browser.post("/create", headers={**page, "content-length": str(10**9)}, content=b"")
        assert big.status_code == 413 and big.headers["content-type"].startswith("text/html")
        assert "larger than the server" in big.text


def test_a_download_link_without_the_cookie_goes_to_log_in_and_a_deleted_adapter_is_said_so(tmp_path):
    from openrft.jobs.store import JobStore

    with served(tmp_path, keys=("k",)) as browser:
        store = JobStore(tmp_path / "home")
        test_dashboard.add_job(store, "gone", finish=True)
        store.set_output("gone", store.get("gone").job_dir / "output")  # a named model deleted since
        link = browser.get("/jobs/gone/files/adapter_config.json")
        assert link.status_code == 303 and link.headers["location"].startswith(
            "/login?next=/jobs/gone/files/"
        )
        browser.cookies.set("openrft_key", session_token("k"))
        page = browser.get("/jobs/gone").text
        assert "it has been deleted since" in page and "No adapter yet" not in page
        assert "/jobs/gone/files/metrics.jsonl" in page  # the job's own files still download


def test_a_mistyped_job_list_address_still_shows_the_list(tmp_path):
    with served(tmp_path) as browser:
        add_job(browser.app.state.job_store, "done", finish=True)
        add_job(browser.app.state.job_store, "busy")
        bad_page = browser.get("/", params={"page": "abc"})
        assert bad_page.status_code == 200 and 'data-job="done"' in bad_page.text  # the first page
        lower = browser.get("/", params={"state": "completed"}).text  # any case
        assert 'data-job="done"' in lower and 'data-job="busy"' not in lower
        unknown = browser.get("/", params={"state": "BOGUS"}).text
        assert 'data-job="done"' in unknown and 'data-job="busy"' in unknown
        assert "No job state is called BOGUS: all jobs are shown." in unknown
        assert browser.get("/dashboard/jobs-table", params={"page": "²"}).status_code == 200


def test_the_rollouts_browser_pages_searches_and_names_its_choice_in_the_address(store, monkeypatch):
    monkeypatch.setattr(data, "ROLLOUTS_PAGE_SIZE", 2)
    add_job(store, "j")
    record = store.get("j")
    rows = [{"step": 1, "score": i / 10, "prompt": f"question {i}", "completion": f"answer {i}",
             "reason": "Apples" if i % 2 else "pears"} for i in range(5)]  # fmt: skip
    record.rollouts_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = data.rollouts(record, None, "best", page=2)
    assert [r["completion"] for r in best["items"]] == ["answer 2", "answer 1"]  # sorted, then paged
    assert (best["page"], best["pages"], best["first"], best["total"], best["of_step"]) == (2, 3, 3, 5, 5)
    found = data.rollouts(record, 1, "sampled", query="APPLES")
    assert [r["completion"] for r in found["items"]] == ["answer 1", "answer 3"] and found["total"] == 2
    assert data.rollouts(record, 1, "best", query="nothing like it")["items"] == []
    app = FastAPI()
    app.state.job_store = store
    dashboard.install(app)
    client = TestClient(app)
    piece = client.get("/jobs/j/rollouts", params={"step": "1", "order": "worst", "q": "answer", "page": "2"})
    assert piece.headers["hx-push-url"] == "/jobs/j?step=1&order=worst&q=answer&page=2#rollouts"
    assert 'start="3"' in piece.text and "page 2 of 3" in piece.text
    next_link = re.search(r'id="rollouts-next"\s+hx-get="([^"]+)"', piece.text).group(1)
    assert next_link.endswith("?step=1&amp;order=worst&amp;q=answer&amp;page=3")
    linked = client.get("/jobs/j", params={"step": "1", "order": "worst", "q": "answer", "page": "2"}).text
    assert "answer 2" in linked and "answer 0" not in linked  # the address shows what the piece showed
    assert client.get("/jobs/j", params={"step": "x", "page": "y"}).status_code == 200  # the latest step
    missing = client.get("/jobs/j/rollouts", params={"step": "99"}).text
    assert "Step 99 has no rollouts: step 1 is shown." in missing
    nothing = client.get("/jobs/j/rollouts", params={"q": "zzz"}).text
    assert "0 of 5 rollouts of step 1 hold “zzz”." in nothing and "click one" not in nothing


def test_the_form_sets_the_kl_beta_top_p_top_k_and_concurrency_of_the_guide(store):
    policy = forms.Policy(store.root)
    bad = forms.validate({"dataset": "arithmetic", "top-k": "101", "top-p": "2", "rl-kl-beta": "-1",
                          "max-concurrent-rollouts": "0"}, policy)  # fmt: skip
    assert set(bad.errors) == {"top_k", "top_p", "rl_kl_beta", "max_concurrent_rollouts"}
    assert bad.errors["top_k"] == ["--top-k: 101 is not valid; expected a whole number from 0 to 100"]
    good = forms.validate({"dataset": "arithmetic", "top-k": "20", "top-p": "0.9", "rl-kl-beta": "0.01",
                           "max-concurrent-rollouts": "8"}, policy)  # fmt: skip
    cfg = good.config
    assert (cfg.rollout.top_k, cfg.rollout.top_p, cfg.loss.rl_kl_beta) == (20, 0.9, 0.01)
    assert cfg.rollout.max_concurrent_rollouts == 8


def test_a_rows_system_message_is_kept_with_its_rollouts_and_shown(store, capsys):
    from types import SimpleNamespace

    from openrft.cli import main
    from openrft.records import Completion, Prompt, Score
    from openrft.train.loop import rollout_rows

    add_job(store, "j")
    sink = SimpleNamespace(rows=[], log_rollouts=lambda step, rows: sink.rows.extend(rows))
    messages = ({"role": "system", "content": "Answer in French."}, {"role": "user", "content": "2+2?"})
    group = SimpleNamespace(
        prompt=Prompt("p", messages), completions=[Completion("p", 0, (), (), "quatre", (), "stop")],
        scores=[Score(1.0, True, "right")],
    )  # fmt: skip
    plain = SimpleNamespace(
        prompt=Prompt("q", messages[1:]), completions=group.completions, scores=group.scores
    )
    rollout_rows(SimpleNamespace(sink=sink), 1, 1, [group, plain], trained=True)
    assert sink.rows[0]["system"] == "Answer in French." and "system" not in sink.rows[1]
    record = store.get("j")
    record.rollouts_path.write_text("".join(json.dumps({"step": 1, **row}) + "\n" for row in sink.rows))
    shown = data.rollouts(record, 1, "sampled", query="french")["items"]
    assert [item["system"] for item in shown] == ["Answer in French."]  # found by its system message too
    assert main(["rftj", "rollouts", "j"]) == 0
    assert "system:     Answer in French.\nprompt:     2+2?" in capsys.readouterr().out
