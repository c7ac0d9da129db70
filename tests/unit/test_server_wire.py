"""The job API's pure helpers: request bodies -> values, renamed messages, filters, ordering, page tokens."""

from __future__ import annotations

import json

import pytest

from openrft.net import is_loopback
from openrft.server.errors import ApiError
from openrft.server.filtering import ordered, page_start, page_token, select
from openrft.server.jobs_api import JOB_FIELDS
from openrft.server.wire import WireContext, body_to_values, build, is_local_path, rename_flags


@pytest.fixture
def ctx(tmp_path):
    return WireContext(account="acme", home=tmp_path)


def test_a_full_body_maps_onto_the_flat_values_of_rftj_create(ctx):
    body = {
        "dataset": "arithmetic:count=8", "evaluator": "arithmetic:partial_weight=0",
        "trainingConfig": {"epochs": 2, "learningRate": 2e-4, "loraRank": 16, "batchSize": 4096,
                           "gradientAccumulationSteps": 2, "optimizerWeightDecay": 0.0},
        "inferenceParameters": {"temperature": 1.0, "topK": 0, "responseCandidatesCount": 4,
                                "extraBody": '{"stop": ["</answer>"]}'},
        "lossConfig": {"method": "GSPO_TOKEN"}, "chunkSize": -1, "nodeCount": 1,
        "wandbConfig": {"enabled": False, "url": "https://wandb.ai/e/p/runs/r"},  # url: the server's, skipped
        "openrftOptions": {"seed": 3, "length-norm": True},
    }  # fmt: skip
    values = body_to_values(body, ctx).values
    assert values == {
        "epochs": 2, "learning_rate": 2e-4, "lora_rank": 16, "batch_size": 4096, "gradient_accumulation_steps": 2,
        "optimizer_weight_decay": 0.0, "temperature": 1.0, "top_k": 0, "response_candidates_count": 4,
        "wandb": False, "chunk_size": -1, "rl_loss_method": "gspo-token", "seed": 3, "length_norm": True,
        "dataset": "arithmetic:count=8", "evaluator": "arithmetic:partial_weight=0", "stop": ["</answer>"],
    }  # fmt: skip
    assert build(values).loss.rl_loss_method == "gspo-token"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({"dataset": "arithmetic", "trainingConfig": 3}, "trainingConfig: expected an object"),
        ({"dataset": "arithmetic", "trainingConfig": {"region": "US_IOWA_1"}}, "trainingConfig.region: unknown"),
        ({"dataset": "arithmetic", "trainingConfig": {"loraRank": True}}, "loraRank: expected a whole number"),
        ({"dataset": "arithmetic", "lossConfig": {"method": "ORPO"}}, "ORPO is not implemented by openrft"),
        ({"dataset": "arithmetic", "lossConfig": {"method": "PPO"}}, "PPO is not a loss method"),  # not the service's
        ({"dataset": "arithmetic", "lossConfig": {"dpo": {}}}, "lossConfig.dpo: unknown"),
        ({"dataset": "arithmetic", "inferenceParameters": {"extraBody": "{"}}, "extraBody: is not valid JSON"),
        ({"dataset": "arithmetic", "inferenceParameters": {"extraBody": '{"seed": 1}'}}, "extraBody.seed"),
        ({"dataset": "arithmetic", "inferenceParameters": {"extraBody": '{"response_format": "/etc/x.json"}'}},
         "extraBody.response_format: expected an object"),  # never a file on the server
        ({"dataset": "arithmetic", "openrftOptions": {"tools": "x.py"}}, "openrftOptions.tools: not a parameter"),
        ({"dataset": "arithmetic", "mcpServer": "rm -rf /"}, "mcpServer: must be an http(s) URL"),
        ({"dataset": "arithmetic", "awsS3Config": {}}, "awsS3Config: unknown or unsupported"),
        ({"dataset": "arithmetic", "state": "JOB_STATE_RUNNING"}, "state: is set by the server"),
        ({"dataset": "arithmetic", "evalAutoCarveout": "yes"}, "evalAutoCarveout: expected true or false"),
        ({"dataset": "arithmetic", "nodeCount": 2}, "nodeCount: 2 is not supported: openrft trains on one node"),
        ({"dataset": "arithmetic", "trainingConfig": {"outputModel": "../x"}}, "outputModel: '../x' is not"),
        ({"dataset": "gsm8k.jsonl"}, "dataset: unknown dataset 'gsm8k.jsonl'"),
        ({"dataset": "arithmetic", "trainingConfig": {"warmStartFrom": "accounts/acme/models/gone"}},
         "warmStartFrom: 'accounts/acme/models/gone' is not a trained adapter"),
    ],
)  # fmt: skip
def test_bodies_openrft_cannot_honour_are_refused_naming_the_field(ctx, body, message):
    with pytest.raises(ApiError) as caught:
        body_to_values(body, ctx)
    assert caught.value.status_code == 400 and message in caught.value.message


def test_extra_body_carries_a_response_format_to_the_job_and_back(ctx):
    from types import SimpleNamespace

    from openrft.server.job_object import _echo

    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    extra = json.dumps({"stop": ["}"], "response_format": response_format})
    values = body_to_values(
        {"dataset": "arithmetic", "inferenceParameters": {"extraBody": extra}}, ctx
    ).values
    assert json.loads(values["response_format"]) == response_format and values["stop"] == ["}"]
    assert build(values).settings().sampling.grammar is not None  # sampling is held to the schema
    echoed = _echo(
        {"stop": ["}"], "response_format": values["response_format"]}, {}, SimpleNamespace(id="j", given={})
    )
    assert json.loads(echoed["inferenceParameters"]["extraBody"]) == json.loads(extra)
    bad_schema = json.dumps({"response_format": {"type": "xml"}})
    with pytest.raises(ApiError) as caught:
        build(
            body_to_values(
                {"dataset": "arithmetic", "inferenceParameters": {"extraBody": bad_schema}}, ctx
            ).values
        )
    assert caught.value.message.startswith("inferenceParameters.extraBody.response_format: ")


def test_config_messages_name_the_request_field_except_cross_field_rules():
    assert rename_flags(
        "--response-candidates-count / --n: 1 is not valid; expected a whole number >= 2"
    ) == ("inferenceParameters.responseCandidatesCount: 1 is not valid; expected a whole number >= 2")
    assert (
        rename_flags("--micro-batch-tokens: 3 is not valid")
        == "openrftOptions.micro_batch_tokens: 3 is not valid"
    )
    assert rename_flags("--ray-address: x") == "--ray-address: x"  # no request field sets it
    with pytest.raises(ApiError) as caught:
        build({"rl_loss_method": "gspo-token", "rl_kl_beta": 0.5})
    assert caught.value.message == "loss_config.kl_beta must be 0/unset when method is GSPO_TOKEN"


def test_local_paths_are_told_apart_from_names(tmp_path):
    assert is_local_path("/etc/hosts") and is_local_path("./x") and is_local_path("f.py::fn")
    assert is_local_path(str(tmp_path)) and is_local_path("a/b/c")
    assert not is_local_path("accounts/acme/datasets/sums") and not is_local_path("HuggingFaceTB/SmolLM2")
    assert is_local_path("accounts/acme/datasets/../x")


def test_filters_orders_and_page_tokens():
    """The job list's filter and orderBy (cases of their own in test_server_filtering.py)."""
    jobs = [{"name": "b", "state": "JOB_STATE_RUNNING", "createTime": "2"},
            {"name": "a", "state": "JOB_STATE_PENDING", "createTime": "3"}]  # fmt: skip
    assert [j["name"] for j in select(jobs, 'state="JOB_STATE_RUNNING"', JOB_FIELDS)] == ["b"]
    assert [j["name"] for j in select(jobs, "state!=JOB_STATE_RUNNING and name=a", JOB_FIELDS)] == ["a"]
    assert [j["name"] for j in ordered(jobs, "", JOB_FIELDS)] == ["a", "b"]
    assert [j["name"] for j in ordered(jobs, "createTime desc", JOB_FIELDS)] == ["a", "b"]
    assert [j["name"] for j in ordered(jobs, "createTime", JOB_FIELDS)] == ["b", "a"]
    for bad_filter in ("state", "state=X AND", "reward=1"):
        with pytest.raises(ApiError, match="filter"):
            select(jobs, bad_filter, JOB_FIELDS)
    with pytest.raises(ApiError, match="orderBy"):
        ordered(jobs, "createTime sideways", JOB_FIELDS)
    ranked = [
        {"name": "x", "trainingConfig": {"loraRank": 8}},
        {"name": "y", "trainingConfig": {"loraRank": 32}},
    ]
    assert [j["name"] for j in ordered(ranked, "training_config.lora_rank desc", JOB_FIELDS)] == ["y", "x"]
    with pytest.raises(ApiError, match="orderBy"):
        ordered(ranked, "rewards.mean", JOB_FIELDS)
    assert page_start(page_token(5, "f", "o"), "f", "o") == 5 and page_start("", "f", "o") == 0
    with pytest.raises(ApiError, match="must match"):
        page_start(page_token(5, "f", "o"), "other", "o")


def test_loopback_addresses():
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.1.2.3")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("myhost")
    from openrft.net import bare_host, url_host

    assert bare_host(" [::1] ") == "::1" == bare_host("::1") and bare_host("localhost") == "localhost"
    assert url_host("::1") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1"


def test_serve_and_server_refuse_an_address_they_cannot_listen_on_before_loading_anything(tmp_path, capsys):
    import socket

    from openrft.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        for flags, message in (
            (["--host", "999.1.1.1"], "--host 999.1.1.1: no such address or host name"),
            (["--port", str(taken)], f"--host 127.0.0.1 --port {taken}: cannot listen there"),
        ):  # one line each (was uvicorn's log, for serve after loading the model)
            assert main(["serve", "--base-model", str(tmp_path / "not-loaded"), *flags]) == 2
            assert message in capsys.readouterr().err
            assert main(["server", "--api-key", "k", *flags]) == 2
            assert message in capsys.readouterr().err


def test_a_jinja_template_travels_as_text_never_as_a_server_file(ctx, tmp_path):
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    body = {"dataset": "arithmetic", "evaluator": "arithmetic", "trainingConfig": {"jinjaTemplate": template}}
    assert body_to_values(body, ctx).values["chat_template"] == template
    assert build(body_to_values(body, ctx).values).training.chat_template == template
    (tmp_path / "t.jinja").write_text(template)
    body["trainingConfig"]["jinjaTemplate"] = str(tmp_path / "t.jinja")
    with pytest.raises(ApiError, match="jinjaTemplate: must be the template text itself"):
        body_to_values(body, ctx)


def test_the_guide_s_spellings_and_whole_floats_are_accepted(ctx):
    for method, want in [("dapo", "dapo"), ("gspo-token", "gspo-token"), (" Grpo ", "grpo")]:
        assert (
            body_to_values({"dataset": "arithmetic", "lossConfig": {"method": method}}, ctx).values[
                "rl_loss_method"
            ]
            == want
        )
    values = body_to_values(
        {"dataset": "arithmetic", "trainingConfig": {"epochs": 2.0, "loraRank": 16.0}}, ctx
    ).values
    assert (values["epochs"], values["lora_rank"]) == (2, 16) and type(values["epochs"]) is int
    with pytest.raises(ApiError, match=r"epochs: expected a whole number, got a number 2.5"):
        body_to_values({"dataset": "arithmetic", "trainingConfig": {"epochs": 2.5}}, ctx)


def test_null_means_the_default_and_proto_names_are_taken_as_the_json_ones(ctx):
    """proto3's JSON reading, which the service's clients rely on: ``null`` leaves a field unset (its
    default), and a field may be spelled as in the proto (``loss_config.kl_beta``) or in JSON."""
    nulls = {"dataset": "arithmetic", "lossConfig": {"method": "DAPO", "klBeta": None}, "displayName": None,
             "trainingConfig": {"learningRate": None, "epochs": None, "loraRank": None, "batchSize": None},
             "inferenceParameters": {"temperature": None, "topP": None, "topK": None, "maxOutputTokens": None,
                                     "responseCandidatesCount": None},
             "chunkSize": None, "maxConcurrentRollouts": None, "wandbConfig": None, "openrftOptions": {"seed": None}}  # fmt: skip
    values = body_to_values(nulls, ctx).values
    assert values == body_to_values({"dataset": "arithmetic", "lossConfig": {"method": "DAPO"}}, ctx).values
    build(values)  # DAPO with kl_beta unset: accepted
    snake = {"dataset": "arithmetic", "loss_config": {"method": "DAPO", "kl_beta": 0.1},
             "training_config": {"learning_rate": 2e-5, "lora_rank": 16}, "chunk_size": 50}  # fmt: skip
    values = body_to_values(snake, ctx).values
    assert (values["learning_rate"], values["lora_rank"], values["chunk_size"]) == (2e-5, 16, 50)
    with pytest.raises(ApiError) as caught:  # the guide's own message, whichever spelling was sent
        build(values)
    assert "loss_config.kl_beta must be 0/unset when method is DAPO" in caught.value.message
    assert "extra_body" not in body_to_values({"dataset": "arithmetic", "inferenceParameters": {"extraBody": None}},
                                              ctx).values  # fmt: skip
    for stray in ("lora_rank_", "lora__rank", "_lora_rank"):
        with pytest.raises(ApiError, match=f"trainingConfig.{stray}: unknown"):
            body_to_values({"dataset": "arithmetic", "trainingConfig": {stray: 8}}, ctx)
    with pytest.raises(ApiError, match="trainingConfig.loraRank: given twice"):
        body_to_values({"dataset": "arithmetic", "trainingConfig": {"loraRank": 8, "lora_rank": 16}}, ctx)
    with pytest.raises(ApiError, match="openrftOptions.micro-batch-tokens: given twice"):
        body_to_values(
            {"dataset": "arithmetic", "openrftOptions": {"micro_batch_tokens": 3, "micro-batch-tokens": 4}},
            ctx,
        )
    for section, stray in (("trainingConfig", "lora_rank2"), ("lossConfig", "kl_beta2"), ("", "chunk_size2")):
        body = {"dataset": "arithmetic", **({section: {stray: 1}} if section else {stray: 1})}
        with pytest.raises(ApiError, match=f"^{section}{'.' if section else ''}{stray}: unknown"):
            body_to_values(body, ctx)  # named as sent (it said trainingConfig.loraRank2)
    with pytest.raises(ApiError, match="expected a whole number, got a boolean true$"):  # JSON, not Python
        body_to_values({"dataset": "arithmetic", "trainingConfig": {"loraRank": True}}, ctx)


def test_the_echo_names_the_wandb_run_and_its_url_once_the_run_exists(tmp_path):
    import json
    from types import SimpleNamespace

    from openrft.server.job_object import _echo

    record = SimpleNamespace(id="job1", given={}, job_dir=tmp_path)
    flat = {"wandb": True, "wandb_project": "p", "wandb_entity": "team", "wandb_api_key": "secret"}
    # before it starts, the run's id is not drawn yet (the job id plus a random suffix): none is named
    assert _echo(flat, {}, record)["wandbConfig"] == {"enabled": True, "project": "p", "entity": "team"}
    (tmp_path / "wandb_run.json").write_text(
        json.dumps({"id": "job1-a1b2c3", "project": "p", "entity": "team"})
    )
    assert _echo(flat, {}, record)["wandbConfig"] == {"enabled": True, "project": "p", "entity": "team",
                                                      "runId": "job1-a1b2c3",
                                                      "url": "https://wandb.ai/team/p/runs/job1-a1b2c3"}  # fmt: skip
    given = _echo({**flat, "wandb_entity": None, "wandb_run_id": "r7"}, {}, record)["wandbConfig"]
    assert given["runId"] == "r7"  # the id asked for wins
    defaults = _echo({"wandb": True}, {}, record)["wandbConfig"]  # the project and entity the run went to
    assert defaults == {"enabled": True, "project": "p", "entity": "team", "runId": "job1-a1b2c3",
                        "url": "https://wandb.ai/team/p/runs/job1-a1b2c3"}  # fmt: skip
    assert "runId" not in _echo({"wandb": False}, {}, record)["wandbConfig"]


def test_a_read_mask_keeps_the_fields_it_names():
    from openrft.server.filtering import masked

    job = {"name": "j", "state": "S", "trainingConfig": {"loraRank": 8, "epochs": 2}, "dataset": "d"}
    assert masked(job, "", JOB_FIELDS) == job and masked(job, "*", JOB_FIELDS) == job
    assert masked(job, "name, training_config.lora_rank", JOB_FIELDS) == {
        "name": "j",
        "trainingConfig": {"loraRank": 8},
    }
    assert masked(job, "state,completedTime", JOB_FIELDS) == {"state": "S"}  # a field it lacks: left out
    with pytest.raises(ApiError, match="readMask: unknown field 'rewards'"):
        masked(job, "rewards", JOB_FIELDS)
