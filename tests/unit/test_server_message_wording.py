"""What the job API says when it refuses: the field a bad ``extraBody.stop`` sits in, a delete of a job
that is already stopping (no advice to cancel it again), and a resumed job cancelled while queued."""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient

from openrft.config import JobConfig
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.server.errors import ApiError
from openrft.server.queue import JobQueue
from openrft.server.wire import WireContext, body_to_values, build


def test_a_bad_stop_in_extra_body_names_extra_body_stop(tmp_path):
    body = {"dataset": "arithmetic", "inferenceParameters": {"extraBody": json.dumps({"stop": 5})}}
    with pytest.raises(ApiError) as refused:
        build(body_to_values(body, WireContext(account="me", home=tmp_path)).values)
    assert refused.value.message.startswith("inferenceParameters.extraBody.stop: "), refused.value.message


def test_deleting_a_job_that_is_cancelling_says_to_wait_not_to_cancel(tmp_path):
    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    app = create_app(ServerSettings(home=tmp_path, run_queue=False))
    store = app.state.job_store
    for job_id, cancel in (("stopping", True), ("running", False)):
        store.create(job_id, JobConfig(), pid=os.getpid())
        store.transition(job_id, JobState.VALIDATING)
        store.transition(job_id, JobState.RUNNING)
        if cancel:
            store.request_cancel(job_id)
    url = "/v1/accounts/local/reinforcementFineTuningJobs/"
    with TestClient(app, base_url="http://127.0.0.1") as client:
        stopping = client.delete(url + "stopping").json()["error"]["message"]
        running = client.delete(url + "running").json()["error"]["message"]
    assert stopping == "job stopping is CANCELLING; delete it once it has stopped"
    assert running == "job running is RUNNING; cancel it first and delete it once it has stopped"


def test_a_resumed_job_cancelled_while_queued_says_it_did_not_start_again(tmp_path):
    store = JobStore(tmp_path)
    store.create("fresh", JobConfig())
    store.create("again", JobConfig(), resume=True)
    for job_id in ("fresh", "again"):
        store.request_cancel(job_id)
    JobQueue(store, max_running=1).tick()
    assert store.get("fresh").message == "cancelled before it started"
    assert store.get("again").message == "cancelled before it started again"
