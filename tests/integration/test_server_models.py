"""A job's trained adapter through the service SDK's ``models`` resource: listed and read as
HF_PEFT_ADDON models, downloaded file by file from signed URLs without the key, and deleted (a named
model frees its name; a job's own output goes with its job). A real server and tiny real jobs."""

from __future__ import annotations

import shutil

import httpx
import pytest
import test_server_jobs as server_jobs

fireworks = server_jobs.fireworks
serve, job = server_jobs.serve, server_jobs.job  # the fixtures
ACTIVE, wait = server_jobs.ACTIVE, server_jobs.wait


def test_trained_adapters_are_models_the_sdk_lists_reads_downloads_and_deletes(serve, job, tiny_model_dir):
    served = serve(allow_local_paths=True, api_keys=("k",))
    client = served.client(key="k")
    jobs, models = client.reinforcement_fine_tuning_jobs, client.models
    jobs.create(reinforcement_fine_tuning_job_id="named", **job(2, training_config={
        "base_model": str(tiny_model_dir), "batch_size": 120, "output_model": "accounts/acme/models/adder"}))  # fmt: skip
    jobs.create(reinforcement_fine_tuning_job_id="plain", **job(2))
    for job_id in ("named", "plain"):
        assert wait(jobs, job_id, lambda j: j.state not in ACTIVE).state == "JOB_STATE_COMPLETED"

    listed = {m.display_name: m for m in models.list()}
    assert set(listed) == {"adder", "plain"}
    adder = models.get("adder")
    assert (
        adder.name == "accounts/acme/models/adder"
        and adder.kind == "HF_PEFT_ADDON"
        and adder.state == "READY"
    )
    assert adder.fine_tuning_job == "accounts/acme/reinforcementFineTuningJobs/named"
    assert adder.peft_details.r == 8 and adder.peft_details.base_model == str(tiny_model_dir)
    assert [m.display_name for m in models.list(filter='displayName="add*"')] == ["adder"]

    urls = models.get_download_endpoint("adder").filename_to_signed_urls
    folder = served.store.root / "models" / "adder"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(urls)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        got = httpx.get(urls[name])  # a signed URL needs no key
        assert got.status_code == 200 and got.content == (folder / name).read_bytes()
    forged = urls["adapter_config.json"].replace("file=adapter_config.json", "file=job.json")
    assert httpx.get(forged).status_code == 403  # the token grants the one file it was made for

    other = served.client(key="k", account="other").models
    assert other.get("adder").display_name == "adder"  # a named model is the server's
    assert other.get("adder").fine_tuning_job == "accounts/acme/reinforcementFineTuningJobs/named"
    with pytest.raises(fireworks.NotFoundError):
        other.get("plain")  # a job's own output is seen where the job is
    with pytest.raises(fireworks.NotFoundError):
        models.get("nothing")
    with pytest.raises(fireworks.BadRequestError, match="delete the job to delete it"):
        models.delete("plain")

    saved = shutil.copytree(folder, served.store.root / "saved-adder")
    models.delete("adder")  # while its job is still there: the name is free again
    assert not folder.exists() and "adder" not in {m.display_name for m in models.list()}
    again = jobs.create(
        **job(2, training_config={"base_model": str(tiny_model_dir), "output_model": "adder"})
    )
    jobs.cancel(again.name.rsplit("/", 1)[-1], body={})
    shutil.copytree(saved, folder)  # another adapter under the same name: an old URL does not fetch it
    assert httpx.get(urls["adapter_config.json"]).status_code == 403
    for job_id in ("named", again.name.rsplit("/", 1)[-1]):
        wait(jobs, job_id, lambda j: j.state not in ACTIVE)
        jobs.delete(job_id)
    assert models.get("adder").fine_tuning_job is None  # a named model outlives the jobs that named it
