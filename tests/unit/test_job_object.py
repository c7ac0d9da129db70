"""A stored job as the service's job object: status codes, completion time, the loss echo, cancelling,
and the list's pages (a store of real records, the API through FastAPI's test client)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from openrft.config import build_config
from openrft.jobs.states import DIED_MESSAGE, JobState
from openrft.jobs.store import JobStore
from openrft.server.job_object import completed_at, job_object, status_of

RUN = (JobState.VALIDATING, JobState.RUNNING)


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path)


def _job(store, job_id, *states, message=None, **values):
    store.create(job_id, build_config({}, {"dataset": "arithmetic", **values})[0])
    for state in states:
        store.transition(job_id, state, message if state is JobState.FAILED else None)
    return store.get(job_id)


def test_status_codes_name_how_a_job_ended(store):
    died = _job(store, "died", *RUN, JobState.FAILED, message=DIED_MESSAGE)
    broke = _job(store, "broke", *RUN, JobState.FAILED, message="evaluator failed")
    assert status_of(died) == {"code": "ABORTED", "message": DIED_MESSAGE}  # the process went away
    assert status_of(broke)["code"] == "INTERNAL"
    assert status_of(_job(store, "ok", *RUN, JobState.COMPLETED))["code"] == "OK"
    running = _job(store, "running", *RUN)
    store.request_cancel("running")
    assert status_of(store.get("running")) == {"code": "OK", "message": "cancel requested"}
    assert job_object(store.get("running"), "local")["state"] == "JOB_STATE_CANCELLING"
    assert completed_at(running) is None and job_object(running, "local").get("completedTime") is None


def test_a_resumed_job_s_completion_is_its_last_end_and_an_unset_kl_is_echoed_as_0(store):
    job = _job(store, "again", *RUN, JobState.FAILED, message="boom")
    first_end = completed_at(job)
    store.prepare_resume("again")
    for state in (*RUN, JobState.FAILED):
        store.transition("again", state, "boom again" if state is JobState.FAILED else None)
    again = store.get("again")
    assert completed_at(again) == [t.at for t in again.transitions if t.state is JobState.FAILED][-1]
    assert completed_at(again) >= first_end
    assert job_object(again, "local")["lossConfig"] == {"method": "GRPO", "klBeta": 0.0}
    dapo = job_object(_job(store, "dapo", rl_loss_method="dapo"), "local")
    assert dapo["lossConfig"] == {"method": "DAPO", "klBeta": 0.0}


def test_the_list_s_pages_end_exactly_and_are_capped(tmp_path, monkeypatch):
    from openrft.server import jobs_api
    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    monkeypatch.setattr(jobs_api, "MAX_PAGE", 4)
    app = create_app(ServerSettings(home=tmp_path, run_queue=False))
    for i in range(6):
        _job(app.state.job_store, f"job{i}")
    url = "/v1/accounts/local/reinforcementFineTuningJobs"
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a keyless server answers this machine only
        whole = client.get(url, params={"pageSize": 6}).json()
        assert len(whole["reinforcementFineTuningJobs"]) == 4 and whole["nextPageToken"]  # capped at MAX_PAGE
        three = client.get(url, params={"pageSize": 3}).json()
        rest = client.get(url, params={"pageSize": 3, "pageToken": three["nextPageToken"]}).json()
        assert len(rest["reinforcementFineTuningJobs"]) == 3 and rest["nextPageToken"] == ""  # exactly full
        names = [j["name"] for page in (three, rest) for j in page["reinforcementFineTuningJobs"]]
        assert len(set(names)) == 6 and whole["totalSize"] == 6


def test_the_openrft_options_a_job_was_given_are_echoed_and_no_others(store):
    from openrft.server.job_object import job_object

    given = job_object(_job(store, "opts", seed=7, lora_alpha=32, max_grad_norm=0.5), "local")
    assert given["openrftOptions"] == {"lora_alpha": 32, "max_grad_norm": 0.5, "seed": 7}
    assert "openrftOptions" not in job_object(_job(store, "plain"), "local")  # defaults are not echoed


def test_a_job_without_an_evaluator_shows_the_built_in_it_uses(store, tmp_path):
    from openrft.server.job_object import job_object

    assert job_object(_job(store, "builtin"), "local")["evaluator"] == "arithmetic"  # the dataset's own
    rows = tmp_path / "gsm.jsonl"
    rows.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    assert job_object(_job(store, "gsm", dataset=str(rows)), "local")["evaluator"] == "gsm8k"
    assert job_object(_job(store, "named", evaluator="gsm8k"), "local")["evaluator"] == "gsm8k"
