"""``openrft server`` driven by the managed service's own SDK (fireworks-ai): a real server on loopback,
real worker processes training a tiny random model, and the CLI's ``--server`` mode."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from openrft.cli import main
from openrft.errors import ConfigError, JobError
from openrft.jobs.states import DIED_MESSAGE, JobState
from openrft.jobs.store import JobStore
from openrft.server import wire
from openrft.server.app import create_app
from openrft.server.errors import ApiError
from openrft.server.settings import ServerSettings
from openrft.server.wire import write_meta

fireworks = pytest.importorskip("fireworks", reason="the fireworks-ai SDK (dev extra) is not installed")
pytest.importorskip("openrft.rollout", reason="the rollout engine is not available")

EVALUATOR = '''
def letters(completion: str, **row) -> float:
    """Graded on any text (a random model writes gibberish): the share of letters among characters."""
    return sum(c.isalpha() for c in completion) / len(completion) if completion else 0.0
'''
ACTIVE = {"JOB_STATE_PENDING", "JOB_STATE_VALIDATING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"}


class Served:
    """A uvicorn server in a thread, on a free loopback port, and an SDK client for it."""

    def __init__(self, settings: ServerSettings):
        import uvicorn

        self.app = create_app(settings)
        self.store: JobStore = self.app.state.job_store
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=settings.host, port=settings.port,
                                                   log_level="warning"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://{settings.host}:{settings.port}"

    def client(self, key: str = "any", account: str = "acme") -> fireworks.Fireworks:
        return fireworks.Fireworks(base_url=self.url, api_key=key, account_id=account, max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(tmp_path):
    started: list[Served] = []

    def start(**options) -> Served:
        options.setdefault("home", tmp_path / "home")
        options.setdefault("poll_interval", 0.2)
        served = Served(ServerSettings(host="127.0.0.1", port=free_port(), **options))
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
    for record in JobStore(tmp_path / "home").list():  # no worker outlives the test
        if record.state.is_active and record.pid and record.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, 9)


@pytest.fixture
def job(tiny_model_dir, tmp_path):
    """SDK arguments for a tiny real job with ``count`` prompts (2 per round, 2 candidates of 16 tokens)."""
    evaluator = tmp_path / "letters.py"
    evaluator.write_text(EVALUATOR)

    def make(count: int, **extra) -> dict:
        return {
            "dataset": f"arithmetic:count={count}",
            "evaluator": f"{evaluator}::letters",
            "training_config": {"base_model": str(tiny_model_dir), "batch_size": 120},
            "inference_parameters": {
                "response_candidates_count": 2,
                "max_output_tokens": 16,
                "temperature": 1.0,
            },
            "chunk_size": 2,
            "extra_body": {"openrftOptions": {"micro_batch_tokens": 128, "checkpoint_every": 1}},
            **extra,
        }

    return make


def wait(jobs, job_id: str, until, timeout: float = 120.0):
    deadline = time.time() + timeout
    while True:
        got = jobs.get(job_id)
        if until(got):
            return got
        assert time.time() < deadline, got
        time.sleep(0.2)


# ----------------------------------------------------------------------------- refusals and auth


REFUSED = [
    ({"training_config": {"epochs": "three"}}, "trainingConfig.epochs: expected a whole number"),
    ({"loss_config": {"method": "DPO"}}, "lossConfig.method: DPO is not implemented by openrft; use GRPO, DAPO or GSPO_TOKEN"),
    ({"dataset": ""}, "dataset: is required"),
    ({"extra_body": {"fooBar": 1}}, "fooBar: unknown or unsupported field"),
    ({"loss_config": {"method": "DAPO", "kl_beta": 0.1}}, "loss_config.kl_beta must be 0/unset when method is DAPO"),
    ({"inference_parameters": {"temperature": 5.0}}, "inferenceParameters.temperature: 5.0 is not valid"),
    ({"node_count": 2}, "nodeCount: 2 is not supported"),
    ({"dataset": "/etc/hosts"}, "dataset: /etc/hosts is a path on the server"),
    ({"evaluator": "letters.py::letters"}, "evaluator: letters.py::letters is a path on the server"),
    ({"training_config": {"base_model": "/tmp"}}, "trainingConfig.baseModel: /tmp is a path on the server"),
    ({"evaluator": "gsm8k", "dataset": "arithmetic:count=0"}, "count"),
    ({"training_config": {"base_model": "accounts/fireworks/models/qwen2p5-7b-instruct"}},
     "trainingConfig.baseModel: base model not found: accounts/fireworks/models/qwen2p5-7b-instruct (hint: "
     "'accounts/fireworks/models/qwen2p5-7b-instruct' names a model of the managed service"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), REFUSED, ids=[m[:28] for _, m in REFUSED])
def test_bad_bodies_are_refused_with_a_clear_message_and_nothing_is_written(serve, change, message):
    served = serve()
    args = {"dataset": "arithmetic:count=8", "evaluator": "arithmetic", **change}
    with pytest.raises(fireworks.BadRequestError) as caught:
        served.client().reinforcement_fine_tuning_jobs.create(**args)
    error = caught.value.body["error"]
    assert caught.value.status_code == 400 and error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"], error
    if "kl_beta" in message:
        assert error["message"] == message  # word for word, as `rftj create` says it
    assert served.store.list() == [] and not any(served.store.jobs_dir.glob("*"))


def test_an_unknown_dataset_or_evaluator_is_a_404_and_nothing_is_written(serve):
    served = serve()
    for change in (
        {"dataset": "accounts/acme/datasets/nope"},
        {"evaluator": "accounts/acme/evaluators/nope"},
    ):
        args = {"dataset": "arithmetic:count=8", "evaluator": "arithmetic", **change}
        with pytest.raises(fireworks.NotFoundError) as caught:
            served.client().reinforcement_fine_tuning_jobs.create(**args)
        error = caught.value.body["error"]
        assert error["status"] == "NOT_FOUND" and error["message"].startswith(f"{next(iter(change))}: "), (
            error
        )
    assert served.store.list() == [] and not any(served.store.jobs_dir.glob("*"))


def test_api_keys_are_required_once_configured_and_a_public_bind_needs_one(serve, monkeypatch):
    served = serve(api_keys=("s3cret", "other"))
    with pytest.raises(fireworks.AuthenticationError) as caught:
        served.client("wrong").reinforcement_fine_tuning_jobs.list()
    assert caught.value.status_code == 401
    assert caught.value.body["error"] == {
        "code": 401,
        "message": "invalid API key: send the header 'Authorization: Bearer <key>'",
        "status": "UNAUTHENTICATED",
    }
    missing = httpx.get(served.url + "/v1/accounts/acme/reinforcementFineTuningJobs")  # no header at all
    assert missing.status_code == 401 and missing.json()["error"]["message"].startswith("missing API key")
    assert list(served.client("other").reinforcement_fine_tuning_jobs.list()) == []
    with pytest.raises(fireworks.NotFoundError):
        served.client("s3cret").reinforcement_fine_tuning_jobs.get("missing")
    open_server = serve()  # no keys on loopback: anything goes
    assert list(open_server.client("whatever").reinforcement_fine_tuning_jobs.list()) == []

    with pytest.raises(ConfigError, match="reachable from other machines"):
        ServerSettings(host="0.0.0.0").check()
    ServerSettings(host="0.0.0.0", api_keys=("k",)).check()
    for blank in ("", " ", "a b"):  # a key no request can send would lock everyone out
        with pytest.raises(ConfigError, match="must not be empty or hold spaces"):
            ServerSettings(host="0.0.0.0", api_keys=(blank,)).check()
    monkeypatch.delenv("OPENRFT_API_KEYS", raising=False)
    assert main(["server", "--host", "0.0.0.0", "--port", "1"]) == 2


# ----------------------------------------------------------------------------- real jobs


def test_jobs_queue_run_cancel_resume_and_delete_through_the_sdk(serve, job):
    served = serve(allow_local_paths=True)
    jobs = served.client().reinforcement_fine_tuning_jobs
    short = jobs.create(reinforcement_fine_tuning_job_id="short", display_name="first", **job(4))
    assert short.name == "accounts/acme/reinforcementFineTuningJobs/short" and short.display_name == "first"
    assert short.state == "JOB_STATE_PENDING" and short.training_config.batch_size == 120
    long = jobs.create(reinforcement_fine_tuning_job_id="long", **job(40, loss_config={"method": "DAPO"}))
    assert long.loss_config.method == "DAPO" and long.inference_parameters.response_candidates_count == 2
    with pytest.raises(fireworks.ConflictError):
        jobs.create(reinforcement_fine_tuning_job_id="long", **job(4))

    first = jobs.list(page_size=1, order_by="createTime")
    assert [j.name.rsplit("/", 1)[-1] for j in first.reinforcement_fine_tuning_jobs] == ["short"]
    assert first.next_page_token
    assert [j.name.rsplit("/", 1)[-1] for j in jobs.list(page_size=1, order_by="createTime desc")] == [
        "long",
        "short",
    ]
    assert [j.state for j in jobs.list(filter='name="accounts/acme/reinforcementFineTuningJobs/long"')] == [
        "JOB_STATE_PENDING"  # one job at a time: the second waits while the first runs
    ]

    done = wait(jobs, "short", lambda j: j.state not in ACTIVE)
    assert done.state == "JOB_STATE_COMPLETED" and done.status.code == "OK", done
    assert done.job_progress.percent == 100 and done.job_progress.output_tokens > 0
    assert done.job_progress.epoch == 1  # a finished one-epoch job, 1-based
    assert done.completed_time is not None and done.completed_time >= done.create_time
    assert (Path(done.model_extra["outputModelPath"]) / "adapter_config.json").is_file()

    ref = "accounts/acme/reinforcementFineTuningJobs/short"  # its adapter, as a warm start
    warm = jobs.create(
        reinforcement_fine_tuning_job_id="warm", **job(4, training_config={"warm_start_from": ref})
    )
    assert warm.training_config.warm_start_from == ref and warm.state == "JOB_STATE_PENDING"
    assert served.store.get("warm").flat_config()["warm_start_from"] == done.model_extra["outputModelPath"]
    # the job reports its id as its outputModel: that name (bare or in full) is a warm start too
    ctx = wire.WireContext(account="acme", home=served.store.root)
    for name in ("short", "accounts/acme/models/short"):
        assert wire.warm_start_adapter(name, ctx) == done.model_extra["outputModelPath"]
    other = wire.WireContext(account="globex", home=served.store.root)  # the job, and its id's model,
    for name in (
        "short",
        "accounts/globex/models/short",
        "accounts/globex/reinforcementFineTuningJobs/short",
    ):
        with pytest.raises(ApiError, match="is not a trained adapter on this server"):  # are acme's only
            wire.warm_start_adapter(name, other)
    for name in ("accounts/acme/models/short", "accounts/acme/reinforcementFineTuningJobs/short"):
        assert wire.warm_start_adapter(name, other) == done.model_extra["outputModelPath"]  # named in full
    with pytest.raises(fireworks.ConflictError, match="outputModel: model 'short' already exists"):
        jobs.create(**job(4, training_config={"output_model": "accounts/acme/models/short"}))
    jobs.cancel("warm", body={})  # still queued behind "long": it never starts
    warm = wait(jobs, "warm", lambda j: j.state not in ACTIVE)
    assert warm.state == "JOB_STATE_CANCELLED" and warm.status.message == "cancelled before it started"

    wait(jobs, "long", lambda j: (j.job_progress.model_extra or {}).get("steps", 0) >= 1)
    jobs.cancel("long", body={})
    assert jobs.get("long").state in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    cancelled = wait(jobs, "long", lambda j: j.state not in ACTIVE)
    assert cancelled.state == "JOB_STATE_CANCELLED" and cancelled.status.code == "CANCELLED"
    assert [j.name for j in jobs.list(filter="state=JOB_STATE_CANCELLED")] == [cancelled.name, warm.name]

    with pytest.raises(fireworks.BadRequestError, match="cancelled jobs are not resumed"):
        jobs.resume("long", body={})
    assert jobs.resume("long", body={"force": True}).state == "JOB_STATE_PENDING"
    wait(jobs, "long", lambda j: j.state == "JOB_STATE_RUNNING")
    with pytest.raises(fireworks.BadRequestError, match="cancel it first"):
        jobs.delete("long")
    with pytest.raises(fireworks.BadRequestError, match="is RUNNING; only a stopped job can be resumed"):
        jobs.resume("long", body={"force": True})
    jobs.cancel("long", body={})
    assert wait(jobs, "long", lambda j: j.state not in ACTIVE).state == "JOB_STATE_CANCELLED"
    assert "resumed from CANCELLED" in [t.message for t in served.store.get("long").transitions]

    with pytest.raises(fireworks.BadRequestError, match="is the warmStartFrom of job warm"):
        jobs.delete("short")  # "warm" could still resume, from short's adapter
    for job_id in ("warm", "short", "long"):
        jobs.delete(job_id)
        with pytest.raises(fireworks.NotFoundError):
            jobs.get(job_id)
    assert served.store.list() == [] and not served.store.job_dir("short").exists()


def test_queued_jobs_survive_a_restart_and_the_cli_drives_the_server(
    serve, job, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from openrft.config import build_config

    monkeypatch.setenv("OPENRFT_ACCOUNT", "acme")  # the command line's account: the one "left" was made in

    store = JobStore(tmp_path / "home")
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is dead: the job looks like one a stopped server had queued
    cfg, _ = build_config({}, {"base_model": str(tiny_model_dir), "dataset": "arithmetic:count=4",
                               "evaluator": "arithmetic", "response_candidates_count": 2, "max_output_tokens": 16,
                               "chunk_size": 2, "batch_size": 120})  # fmt: skip
    store.create("left", cfg, pid=gone.pid, detached=True)
    write_meta(store.job_dir("left"), {"account": "acme", "refs": {}})
    assert store.get("left").message == DIED_MESSAGE  # what a restart finds

    served = serve(allow_local_paths=True)
    jobs = served.client().reinforcement_fine_tuning_jobs
    done = wait(jobs, "left", lambda j: j.state not in ACTIVE)  # the queue took it back at start-up
    assert done.state in ("JOB_STATE_COMPLETED", "JOB_STATE_EARLY_STOPPED"), done
    assert [t.state for t in store.get("left").transitions][-3:-1] == [JobState.VALIDATING, JobState.RUNNING]

    url = ["--server", served.url]
    flags = ["--base-model", str(tiny_model_dir), "--dataset", "arithmetic:count=4", "--n", "2",
             "--max-output-tokens", "16", "--chunk-size", "2", "--batch-size", "120", "--seed", "7"]  # fmt: skip
    assert main(["rftj", "create", "--job-id", "cli", *flags, *url]) == 0
    assert capsys.readouterr().out == "cli\n"
    assert store.get("cli").config["training"]["seed"] == 7
    assert main(["rftj", "list", *url]) == 0
    table = capsys.readouterr().out
    assert "cli" in table and "left" in table and "grpo" in table
    assert main(["rftj", "cancel", "cli", "--wait", *url]) == 0
    assert "job cli CANCELLED" in capsys.readouterr().out
    assert main(["rftj", "get", "cli", *url]) == 0
    assert "state:       CANCELLED" in capsys.readouterr().out
    assert (
        main(
            [
                "rftj",
                "create",
                "--dataset",
                "arithmetic",
                "--rl-loss-method",
                "dapo",
                "--rl-kl-beta",
                "0.1",
                *url,
            ]
        )
        == 2
    )
    assert "loss_config.kl_beta must be 0/unset when method is DAPO" in capsys.readouterr().err
    assert (
        main(["rftj", "create", "--dataset", "/etc/hosts", "--tools", "t.py", *url]) == 2
    )  # a flag's refusal
    assert "--tools cannot be sent to a server" in capsys.readouterr().err
    assert main(["rftj", "create", "--dataset", "accounts/acme/datasets/nosuch", *url]) == 2  # as locally
    assert "nosuch not found" in capsys.readouterr().err
    assert main(["rftj", "delete", "cli", *url]) == 0 and not store.exists("cli")
    assert main(["rftj", "get", "cli", *url]) == JobError.exit_code
    assert "not found" in capsys.readouterr().err


def test_a_job_names_an_uploaded_dataset_and_the_echo_keeps_its_name(serve):
    served = serve(run_queue=False)  # the job stays queued: only its record is checked
    client = served.client()
    rows = b'{"messages": [{"role": "user", "content": "What is 2 + 2?"}], "ground_truth": 4}\n' * 6
    client.datasets.create(dataset_id="sums", dataset={"format": "CHAT"})
    client.datasets.upload("sums", file=("sums.jsonl", rows))
    job = client.reinforcement_fine_tuning_jobs.create(
        dataset="accounts/acme/datasets/sums", evaluator="arithmetic", chunk_size=3,
        training_config={"output_model": "sums-adapter"}, eval_auto_carveout=True,
        inference_parameters={"extra_body": '{"stop": ["</answer>"]}'},
    )  # fmt: skip
    assert job.dataset == "accounts/acme/datasets/sums" and job.eval_auto_carveout is True
    assert job.training_config.output_model == "sums-adapter"
    assert job.inference_parameters.extra_body == '{"stop": ["</answer>"]}'
    flat = served.store.get(job.name.rsplit("/", 1)[-1]).flat_config()
    assert Path(flat["dataset"]).is_file() and flat["stop"] == ["</answer>"]
    assert flat["output_model"] == str(served.store.root / "models" / "sums-adapter")
    assert flat["eval_auto_carveout"] == 0.1
    with pytest.raises(fireworks.ConflictError, match="model 'sums-adapter' already exists"):
        client.reinforcement_fine_tuning_jobs.create(  # claimed by the queued job: never two writers
            dataset="sums",
            evaluator="arithmetic",
            training_config={"output_model": "accounts/acme/models/sums-adapter"},
        )
    taken = job.name.rsplit("/", 1)[-1]
    with pytest.raises(fireworks.ConflictError, match=f"job {taken} already exists"):  # the id first
        client.reinforcement_fine_tuning_jobs.create(reinforcement_fine_tuning_job_id=taken, dataset="sums",
                                                     evaluator="arithmetic", training_config={"output_model": "sums-adapter"})  # fmt: skip
    other = client.reinforcement_fine_tuning_jobs.create(
        dataset="sums", evaluator="arithmetic", training_config={"output_model": "accounts/acme/models/other"}
    )
    assert other.training_config.output_model == "other"
    assert other.dataset == "accounts/acme/datasets/sums"  # a bare id comes back as the full name
    with pytest.raises(fireworks.BadRequestError, match="cannot be deleted: job.* use it") as caught:
        client.datasets.delete("sums")  # queued jobs read it: it stays until they are done
    assert caught.value.body["error"]["status"] == "FAILED_PRECONDITION"
    assert Path(flat["dataset"]).is_file()
    with pytest.raises(fireworks.NotFoundError, match="evaluationDataset: .*not found"):
        client.reinforcement_fine_tuning_jobs.create(
            dataset="sums", evaluator="arithmetic", evaluation_dataset="accounts/acme/datasets/nope"
        )
    with pytest.raises(fireworks.BadRequestError, match="pageToken"):
        client.reinforcement_fine_tuning_jobs.list(page_token="bogus")
    with pytest.raises(fireworks.BadRequestError, match="orderBy"):
        client.reinforcement_fine_tuning_jobs.list(order_by="rewards desc")
    by_output = client.reinforcement_fine_tuning_jobs.list(order_by="trainingConfig.outputModel desc")
    assert [j.training_config.output_model for j in by_output] == ["sums-adapter", "other"]
    masked = client.reinforcement_fine_tuning_jobs.get(other.name.rsplit("/", 1)[-1], read_mask="name,state")
    assert masked.name == other.name and masked.state and masked.dataset is None
    listed = client.reinforcement_fine_tuning_jobs.list(read_mask="name")
    assert {j.name for j in listed} == {job.name, other.name} and all(j.state is None for j in listed)
    dataset = client.datasets.get("sums", read_mask="name,exampleCount")
    assert dataset.example_count == "6" and dataset.state is None
    elsewhere = served.client(account="someone-else").reinforcement_fine_tuning_jobs
    assert list(elsewhere.list()) == []  # an account sees its own jobs (and the command line's)
    for call in (elsewhere.get, elsewhere.delete, lambda j: elsewhere.cancel(j, body={})):
        with pytest.raises(fireworks.NotFoundError):
            call(other.name.rsplit("/", 1)[-1])
    cli = served.store.create("from-cli", wire.build({"dataset": "arithmetic", "job_id": "from-cli"}))
    assert [j.name.rsplit("/", 1)[-1] for j in elsewhere.list()] == [cli.id]
    with pytest.raises(fireworks.BadRequestError) as caught:  # no evaluator: named by the body's fields
        client.reinforcement_fine_tuning_jobs.create(dataset="accounts/acme/datasets/sums", evaluator="")
    message = caught.value.body["error"]["message"]
    assert message.startswith("evaluator: required for dataset accounts/acme/datasets/sums")
    assert str(served.store.root) not in message and "--" not in message


UPLOADED_EVALUATOR = b'''
def evaluate(completion: str, ground_truth=None, **row) -> dict:
    """The share of letters, with a reason that shows this uploaded file did the scoring."""
    share = sum(c.isalpha() for c in completion) / len(completion) if completion else 0.0
    return {"score": share, "reason": f"uploaded evaluator, truth {ground_truth}"}
'''


def test_messages_name_the_bodys_fields_and_resources_never_flags_or_server_paths():
    from types import SimpleNamespace

    from openrft.server.wire import public_message, rename_flags

    assert rename_flags("--temperature: 5 is too high (hint: lower --temperature or --top-p)") == (
        "inferenceParameters.temperature: 5 is too high (hint: lower 'inferenceParameters.temperature' or "
        "'inferenceParameters.topP')"
    )
    cfg = SimpleNamespace(flat=lambda: {"dataset": "/srv/home/datasets/a/sums/data.jsonl", "evaluator": None})
    message = "row 3 of /srv/home/datasets/a/sums/data.jsonl has no messages"
    assert public_message(message, cfg, {"dataset": "accounts/a/datasets/sums"}) == (
        "row 3 of accounts/a/datasets/sums has no messages"
    )


def test_a_job_trains_on_an_uploaded_dataset_scored_by_an_uploaded_evaluator(serve, tiny_model_dir):
    import io
    import tarfile

    served = serve(allow_local_paths=True)  # only for the tiny model's folder
    client = served.client()
    rows = b"".join(
        b'{"messages": [{"role": "user", "content": "Say %d."}], "ground_truth": %d}\n' % (i, i)
        for i in range(4)
    )
    client.datasets.create(dataset_id="says", dataset={"format": "CHAT"})
    client.datasets.upload("says", file=("says.jsonl", rows))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("main.py")
        info.size = len(UPLOADED_EVALUATOR)
        archive.addfile(info, io.BytesIO(UPLOADED_EVALUATOR))
    packed = buffer.getvalue()
    client.evaluators.create(evaluator_id="letters", evaluator={"entry_point": "main.py::evaluate"})
    endpoint = client.evaluators.get_upload_endpoint(
        "letters", filename_to_size={"e.tar.gz": str(len(packed))}
    )
    put = httpx.put(endpoint.filename_to_signed_urls["e.tar.gz"], content=packed)
    assert put.status_code == 200, put.text
    client.evaluators.validate_upload("letters", body={})
    wait(client.evaluators, "letters", lambda e: e.state in ("ACTIVE", "BUILD_FAILED"), timeout=60)
    jobs = client.reinforcement_fine_tuning_jobs
    jobs.create(
        reinforcement_fine_tuning_job_id="uploaded", dataset="accounts/acme/datasets/says",
        evaluator="accounts/acme/evaluators/letters",
        training_config={"base_model": str(tiny_model_dir), "batch_size": 120},
        inference_parameters={"response_candidates_count": 2, "max_output_tokens": 16, "temperature": 1.0},
        chunk_size=2, extra_body={"openrftOptions": {"micro_batch_tokens": 128}},
    )  # fmt: skip
    done = wait(jobs, "uploaded", lambda j: j.state not in ACTIVE)
    assert done.state == "JOB_STATE_COMPLETED", done
    from openrft.tracking.sinks import read_jsonl

    record = served.store.get("uploaded")
    rollouts = read_jsonl(record.rollouts_path)
    assert len(rollouts) == 4 * 2 and all(
        r["reason"].startswith("uploaded evaluator, truth ") for r in rollouts
    )
    assert {r["prompt"] for r in rollouts} == {f"Say {i}." for i in range(4)}
    assert record.steps >= 1


def test_the_cli_uploads_local_dataset_and_evaluator_files_to_the_server(
    serve, tiny_model_dir, tmp_path, capsys
):
    served = serve(allow_local_paths=True)  # only for the tiny model's folder
    data = tmp_path / "my data.jsonl"
    data.write_text(
        "".join(f'{{"messages": [{{"role": "user", "content": "Say {i}."}}]}}\n' for i in range(4))
    )
    scorer = tmp_path / "letters.py"
    scorer.write_text(EVALUATOR)
    grader = tmp_path / "grader.json"
    grader.write_text('{"type": "string_check", "name": "has a", "operation": "ilike", '
                      '"input": "{{ sample.output_text }}", "reference": "a"}')  # fmt: skip
    url = ["--server", served.url]
    flags = ["--base-model", str(tiny_model_dir), "--dataset", str(data), "--n", "2", "--max-output-tokens", "16",
             "--chunk-size", "2", "--batch-size", "120", "--temperature", "1.0"]  # fmt: skip
    assert main(["rftj", "create", "--job-id", "up", *flags, "--evaluator", f"{scorer}::letters", *url]) == 0
    err = capsys.readouterr().err
    assert "as accounts/local/datasets/my-data-" in err and "as accounts/local/evaluators/letters-" in err
    assert main(["rftj", "create", "--job-id", "graded", *flags, "--evaluator", str(grader), *url]) == 0
    assert "uploaded" not in capsys.readouterr().err  # the same dataset file is not uploaded twice
    jobs = served.client(account="local").reinforcement_fine_tuning_jobs  # the command line's account
    for job_id in ("up", "graded"):
        done = wait(jobs, job_id, lambda j: j.state not in ACTIVE)
        assert done.state in ("JOB_STATE_COMPLETED", "JOB_STATE_EARLY_STOPPED"), done
        given = served.store.get(job_id).given
        assert Path(given["dataset"]).is_relative_to(
            served.store.root
        )  # the server's copy, not the client's path
    assert (
        served.store.get("graded").given["evaluator"].lstrip().startswith("{")
    )  # the grader travelled inline
