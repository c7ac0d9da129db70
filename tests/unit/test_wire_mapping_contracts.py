"""The job API's body -> configuration mapping (openrft.server.wire), field by field.

Each body field must land on its own JobConfig field with its own value, a JSON null must read as
"not set", and every refusal names the field the client sent. These call :func:`body_to_values`
directly: no server, no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.server import wire
from openrft.server.errors import ApiError

BASE = {"dataset": "arithmetic", "evaluator": "arithmetic"}


def values_of(body: dict, tmp_path: Path, **ctx) -> dict:
    return wire.body_to_values({**BASE, **body}, wire.WireContext("acme", tmp_path, **ctx)).values


def refusal(body: dict, tmp_path: Path, **ctx) -> ApiError:
    with pytest.raises(ApiError) as caught:
        wire.body_to_values({**BASE, **body}, wire.WireContext("acme", tmp_path, **ctx))
    return caught.value


def test_each_training_inference_wandb_and_top_field_sets_its_own_config_field(tmp_path):
    body = {
        "trainingConfig": {"epochs": 3, "learningRate": 2e-5, "loraRank": 16, "batchSize": 4096,
                           "batchSizeSamples": 48, "maxContextLength": 2048, "gradientAccumulationSteps": 2,
                           "learningRateWarmupSteps": 7, "optimizerWeightDecay": 0.05},
        "inferenceParameters": {"maxOutputTokens": 333, "temperature": 0.7, "topP": 0.9, "topK": 40,
                                "responseCandidatesCount": 6},
        "wandbConfig": {"enabled": True, "project": "proj", "entity": "team", "runId": "run-9"},
        "chunkSize": 12, "maxConcurrentRollouts": 24, "maxConcurrentEvaluations": 5,
    }  # fmt: skip
    values = values_of(body, tmp_path)
    assert {k: v for k, v in values.items() if k not in BASE} == {
        "epochs": 3, "learning_rate": 2e-5, "lora_rank": 16, "batch_size": 4096, "batch_size_samples": 48,
        "max_context_length": 2048, "gradient_accumulation_steps": 2, "learning_rate_warmup_steps": 7,
        "optimizer_weight_decay": 0.05, "max_output_tokens": 333, "temperature": 0.7, "top_p": 0.9,
        "top_k": 40, "response_candidates_count": 6, "wandb": True, "wandb_project": "proj",
        "wandb_entity": "team", "wandb_run_id": "run-9", "chunk_size": 12, "max_concurrent_rollouts": 24,
        "max_concurrent_evaluations": 5,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("method", "expected"),
    [("METHOD_UNSPECIFIED", "grpo"), ("GRPO", "grpo"), (" dapo ", "dapo"), ("gspo-token", "gspo-token"),
     ("GSPO_TOKEN", "gspo-token")],
)  # fmt: skip
def test_loss_methods_in_either_spelling_map_to_openrfts_names(tmp_path, method, expected):
    assert values_of({"lossConfig": {"method": method}}, tmp_path)["rl_loss_method"] == expected


def test_a_kl_beta_sent_as_text_is_refused_naming_the_field(tmp_path):
    error = refusal({"lossConfig": {"method": "GRPO", "klBeta": "0.1"}}, tmp_path)
    assert error.status_code == 400 and error.message.startswith("lossConfig.klBeta: expected a number")


def test_eval_carveout_true_is_a_tenth_false_leaves_it_unset_and_a_number_is_the_fraction(tmp_path):
    assert values_of({"evalAutoCarveout": True}, tmp_path)["eval_auto_carveout"] == 0.1
    assert "eval_auto_carveout" not in values_of({"evalAutoCarveout": False}, tmp_path)
    assert values_of({"evalAutoCarveout": 0.25}, tmp_path)["eval_auto_carveout"] == 0.25


@pytest.mark.parametrize("nodes", [2, True, 0, "1"])
def test_node_count_other_than_the_number_one_is_refused(tmp_path, nodes):
    assert refusal({"nodeCount": nodes}, tmp_path).message.startswith("nodeCount: ")
    assert "nodeCount" not in str(values_of({"nodeCount": 1}, tmp_path))


def test_json_null_anywhere_means_not_set(tmp_path):
    body = {"trainingConfig": None, "wandbConfig": {"project": None}, "inferenceParameters": {"topK": None},
            "chunkSize": None, "lossConfig": {"method": None}, "openrftOptions": {"seed": None}}  # fmt: skip
    assert values_of(body, tmp_path) == BASE


def test_whole_numbers_written_as_floats_are_ints_and_booleans_are_not_numbers(tmp_path):
    values = values_of({"trainingConfig": {"epochs": 2.0}, "chunkSize": 8.0}, tmp_path)
    assert values["epochs"] == 2 and type(values["epochs"]) is int and type(values["chunk_size"]) is int
    for body in ({"trainingConfig": {"epochs": True}}, {"chunkSize": False}):
        assert "expected a whole number, got a boolean" in refusal(body, tmp_path).message


def test_openrft_options_take_only_listed_parameters_each_once(tmp_path):
    assert (
        values_of({"openrftOptions": {"seed": 3, "micro-batch-tokens": 256}}, tmp_path)["micro_batch_tokens"]
        == 256
    )
    for name in ("output_dir", "base_model", "no_such_option"):
        error = refusal({"openrftOptions": {name: "x"}}, tmp_path)
        assert error.message == f"openrftOptions.{name}: not a parameter a request may set"
    twice = refusal({"openrftOptions": {"micro_batch_tokens": 128, "micro-batch-tokens": 256}}, tmp_path)
    assert "given twice" in twice.message


def test_extra_body_keeps_stop_and_response_format_as_text_and_refuses_other_keys(tmp_path):
    schema = {"type": "json_object"}
    extra = json.dumps({"stop": ["</a>"], "response_format": schema})
    values = values_of({"inferenceParameters": {"extraBody": extra}}, tmp_path)
    assert values["stop"] == ["</a>"] and json.loads(values["response_format"]) == schema
    assert isinstance(values["response_format"], str)
    assert "stop" not in values_of({"inferenceParameters": {"extraBody": "  "}}, tmp_path)
    error = refusal({"inferenceParameters": {"extraBody": '{"logit_bias": {}}'}}, tmp_path)
    assert error.message.startswith("inferenceParameters.extraBody.logit_bias: unsupported")


@pytest.mark.parametrize(
    ("value", "local"),
    [("data.jsonl::rows", True), ("a/b/c", True), ("/etc/hosts", True), ("./x", True),
     ("accounts/acme/datasets/sums", False), ("Qwen/Qwen2.5-0.5B", False), ("gsm8k", False)],
)  # fmt: skip
def test_what_counts_as_a_path_on_the_server(value, local):
    assert wire.is_local_path(value) is local


def test_a_bare_uploaded_dataset_id_is_echoed_as_its_full_resource_name(tmp_path):
    ctx = wire.WireContext("acme", tmp_path, dataset_path=lambda account, ref: f"/srv/{account}/{ref}.jsonl")
    translated = wire.body_to_values({"dataset": "sums", "evaluator": "arithmetic"}, ctx)
    assert translated.values["dataset"] == "/srv/acme/sums.jsonl"
    assert translated.meta["refs"]["dataset"] == "accounts/acme/datasets/sums"


def test_server_paths_are_refused_unless_the_server_allows_them(tmp_path):
    body = {"trainingConfig": {"baseModel": str(tmp_path)}}
    assert refusal(body, tmp_path).message.startswith("trainingConfig.baseModel: ")
    assert values_of(body, tmp_path, allow_local_paths=True)["base_model"] == str(tmp_path)
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("{}\n")
    assert values_of({"dataset": str(dataset)}, tmp_path, allow_local_paths=True)["dataset"] == str(dataset)
    assert refusal({"trainingConfig": {"jinjaTemplate": "chat.jinja"}}, tmp_path).message.startswith(
        "trainingConfig.jinjaTemplate: must be the template text"
    )
    assert refusal({"mcpServer": "python serve.py"}, tmp_path).message.startswith(
        "mcpServer: must be an http"
    )


def test_output_model_is_a_name_under_the_servers_models_and_a_taken_one_is_a_conflict(tmp_path):
    values = values_of({"trainingConfig": {"outputModel": "accounts/acme/models/mine"}}, tmp_path)
    assert values["output_model"] == str(tmp_path / "models" / "mine")
    (tmp_path / "models" / "taken").mkdir(parents=True)
    error = refusal({"trainingConfig": {"outputModel": "taken"}}, tmp_path)
    assert error.status_code == 409 and "model 'taken' already exists" in error.message
    elsewhere = str(tmp_path / "out")
    assert (
        values_of({"trainingConfig": {"outputModel": elsewhere}}, tmp_path, allow_local_paths=True)[
            "output_model"
        ]
        == elsewhere
    )


def test_warm_start_names_a_trained_adapter_of_this_server(tmp_path):
    folder = tmp_path / "models" / "prev"
    folder.mkdir(parents=True)
    error = refusal({"trainingConfig": {"warmStartFrom": "prev"}}, tmp_path)
    assert error.message.startswith("trainingConfig.warmStartFrom: 'prev' is not a trained adapter")
    (folder / "adapter_config.json").write_text("{}")
    for name in ("prev", "accounts/acme/models/prev"):
        assert values_of({"trainingConfig": {"warmStartFrom": name}}, tmp_path)["warm_start_from"] == str(
            folder
        )


def test_a_field_given_in_both_spellings_is_refused_and_the_echoed_wandb_url_is_ignored(tmp_path):
    error = refusal({"trainingConfig": {"loraRank": 8, "lora_rank": 16}}, tmp_path)
    assert error.message == "trainingConfig.loraRank: given twice (as loraRank and as lora_rank)"
    assert (
        values_of({"wandbConfig": {"url": "https://wandb.ai/x", "project": "p"}}, tmp_path)["wandb_project"]
        == "p"
    )
    assert refusal({"state": "JOB_STATE_RUNNING"}, tmp_path).message == (
        "state: is set by the server and cannot be given in a request"
    )


def test_refusals_name_the_request_field_of_each_flag():
    assert wire.wire_path("rl_kl_beta") == "lossConfig.klBeta"
    assert wire.wire_path("max_concurrent_rollouts") == "maxConcurrentRollouts"
    assert wire.wire_path("seed") == "openrftOptions.seed"
    assert wire.rename_flags("--chunk-size: 0 is too small") == "chunkSize: 0 is too small"
