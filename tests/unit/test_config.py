"""The job configuration: every parameter's default, range edges, one step past each edge, wrong types."""

from __future__ import annotations

import json

import pytest

from config_table import TABLE  # noqa: E402  (shared with the fuzz test)
from openrft import config as C
from openrft.errors import ConfigError


def _build(**flags):
    return C.build_config({}, flags)[0]


def test_table_covers_every_numeric_and_choice_field():
    covered = {row[0] for row in TABLE}
    free_text = {
        "base_model",
        "warm_start_from",
        "output_model",
        "chat_template",
        "dataset",
        "evaluator",
        "evaluation_dataset",
        "endpoint_url",
        "grader_endpoint",
        "reference_field",
        "grader_model",
        "ray_address",
        "wandb_project",
        "wandb_entity",
        "wandb_api_key",
        "wandb_run_id",
        "stop",  # tested in test_stop_strings
        "agent",  # paths and commands: tests/integration/test_agents.py
        "tools",
        "mcp_server",
    }
    assert set(C.FIELD_GROUP) == covered | free_text


@pytest.mark.parametrize(("name", "default"), [(row[0], row[1]) for row in TABLE])
def test_defaults(name, default):
    assert _build().flat()[name] == default


@pytest.mark.parametrize(("name", "value"), [(row[0], v) for row in TABLE for v in row[2]])
def test_valid_values_accepted(name, value):
    context = {"ray_address": "local"} if name in ("rollout_workers", "max_staleness") else {}  # Ray's own
    got = _build(**context, **{name: value}).flat()[name]
    if name == "batch_size":
        expected = C.parse_token_count(value)  # "32k" -> 32768
    elif name == "rl_loss_method":
        expected = value.lower().replace("_", "-")  # "GSPO_TOKEN" -> "gspo-token"
    elif isinstance(got, bool | str):
        expected = value
    else:
        expected = float(value)  # "3" -> 3, "1e-4" -> 0.0001
    assert got == expected and type(got) is type(_build().flat()[name] or got)


@pytest.mark.parametrize(("name", "value"), [(row[0], v) for row in TABLE for v in row[3]])
def test_invalid_values_rejected_with_one_clear_line(name, value):
    with pytest.raises(ConfigError) as info:
        _build(**{name: value})
    message = str(info.value)
    assert message.count("\n") == 0
    assert message.startswith(C.flag_name(name))
    valid = C.field_info(name).json_schema_extra["valid"] if C.field_info(name).json_schema_extra else None
    if valid:
        assert valid in message
    assert "pydantic" not in message and "Traceback" not in message
    assert info.value.field == name


def test_reference_defaults_exactly():
    cfg = _build()
    assert cfg.training.base_model == "smollm2-135m-instruct"
    assert (cfg.training.epochs, cfg.training.learning_rate, cfg.training.lora_rank) == (1, 1e-4, 8)
    assert cfg.training.batch_size == 32 * 1024
    assert cfg.training.chunk_size == 200
    assert (cfg.loss.rl_loss_method, cfg.loss.rl_kl_beta, cfg.loss.length_norm) == ("grpo", 0.0, False)
    r = cfg.rollout
    assert (r.temperature, r.top_p, r.top_k, r.response_candidates_count, r.max_output_tokens) == (
        0.7,
        1.0,
        40,
        8,
        2048,
    )
    assert r.max_concurrent_rollouts is None and r.max_concurrent_evaluations is None


def test_batch_size_token_forms():
    assert _build(batch_size="32k").training.batch_size == 32768
    assert _build(batch_size="64k").training.batch_size == 65536
    assert _build(batch_size="1m").training.batch_size == 1024 * 1024
    assert _build(batch_size=5000).training.batch_size == 5000


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("dapo", "loss_config.kl_beta must be 0/unset when method is DAPO"),
        ("gspo-token", "loss_config.kl_beta must be 0/unset when method is GSPO_TOKEN"),
    ],
)
def test_kl_beta_rejected_word_for_word(method, message):
    with pytest.raises(ConfigError) as info:
        _build(rl_loss_method=method, rl_kl_beta=0.01)
    assert str(info.value) == message
    # zero / unset is fine for those methods, and any beta is fine for grpo
    assert _build(rl_loss_method=method, rl_kl_beta=0).loss.rl_kl_beta == 0
    assert _build(rl_loss_method="grpo", rl_kl_beta=0.05).loss.rl_kl_beta == 0.05


def test_method_names_normalised():
    assert _build(rl_loss_method="GSPO_TOKEN").loss.rl_loss_method == "gspo-token"


def test_warm_start_excludes_explicit_base_model():
    assert _build(warm_start_from="adapter/").training.warm_start_from == "adapter/"
    with pytest.raises(ConfigError, match="mutually exclusive"):
        _build(warm_start_from="adapter/", base_model="other")


def test_output_tokens_must_fit_context():
    with pytest.raises(ConfigError, match="--max-context-length"):
        _build(max_context_length=1024, max_output_tokens=2048)
    assert _build(max_context_length=4096, max_output_tokens=2048).training.max_context_length == 4096


def test_endpoint_engine_needs_url():
    with pytest.raises(ConfigError, match="--endpoint-url"):
        _build(rollout_engine="endpoint")
    assert _build(rollout_engine="endpoint", endpoint_url="http://x/v1").rollout.endpoint_url


def test_sources_and_file_precedence(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("learning-rate: 2.0e-4\nrollout:\n  temperature: 0.9\n  n: 4\nepochs: 2\n")
    file_values = C.load_job_file(job)
    cfg, sources = C.build_config(file_values, {"epochs": "3"})
    assert cfg.training.learning_rate == 2e-4 and sources["learning_rate"] == "config file"
    assert cfg.rollout.temperature == 0.9 and cfg.rollout.response_candidates_count == 4
    assert cfg.training.epochs == 3 and sources["epochs"] == "flag"
    assert sources["top_k"] == "default"


def test_json_job_file_and_unknown_key(tmp_path):
    good = tmp_path / "job.json"
    good.write_text(json.dumps({"lora_rank": 16, "rl-loss-method": "dapo"}))
    cfg, _ = C.build_config(C.load_job_file(good), {})
    assert cfg.training.lora_rank == 16 and cfg.loss.rl_loss_method == "dapo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning-rate: 1e-4\n")
    with pytest.raises(ConfigError, match="did you mean learning-rate"):
        C.load_job_file(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        C.load_job_file(broken)
    with pytest.raises(ConfigError, match="no such job file"):
        C.load_job_file(tmp_path / "missing.yaml")


def test_api_key_is_masked():
    cfg = _build(wandb=True, wandb_api_key="secret-key")
    assert "secret-key" not in json.dumps(cfg.to_dict())
    assert cfg.to_dict(reveal_secrets=True)["wandb"]["wandb_api_key"] == "secret-key"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"learning_rate": 4e-4}, "--learning-rate"),
        ({"learning_rate": 2e-5}, "--learning-rate"),
        ({"temperature": 0.1}, "near-greedy"),
        ({"top_k": 60}, "--top-k 60"),
        ({"response_candidates_count": 48}, "memory"),
        ({"lora_rank": 32}, "--lora-rank 32"),
        ({"epochs": 2}, "overfitting"),
    ],
)
def test_advice(flags, fragment):
    notes = C.advise(_build(**flags))
    assert len(notes) == 1 and fragment in notes[0]


def test_defaults_give_no_advice():
    assert C.advise(_build()) == []
    assert C.advise(_build(learning_rate=2e-4, temperature=0.2, top_k=50, response_candidates_count=32)) == []


def test_stop_strings():
    cfg, _ = C.build_config({"stop": ["</answer>"]}, {})
    assert cfg.rollout.stop == ("</answer>",)
    cfg, sources = C.build_config({}, {"stop": "END"})
    assert cfg.rollout.stop == ("END",) and sources["stop"] == "flag"
    assert C.build_config({}, {})[0].rollout.stop == ()
    for bad in ([""], ["a"] * 9, [3]):
        with pytest.raises(ConfigError) as err:
            C.build_config({}, {"stop": bad})
        assert str(err.value).startswith("--stop")
    with pytest.raises(ConfigError) as err:  # the values as typed, not a Python list
        C.build_config({}, {"stop": ["a"] * 8 + ['b"']})
    assert str(err.value).startswith(
        '--stop: 9 values ("a", "a", "a", "a", "a", "a", "a", "a", "b\\"") are not valid;'
    )


def test_a_dataset_is_chunked_only_above_one_and_a_half_rounds():
    """As the service does: chunkSize 200 chunks a dataset only when it holds more than 300 prompts."""
    from openrft.settings import ScheduleSettings as Schedule

    schedule = Schedule(epochs=1, chunk_size=200, seed=0, eval_every=0, eval_candidates=1, checkpoint_every=1)
    assert [schedule.prompts_per_round(n) for n in (10, 300, 301, 1000)] == [10, 300, 200, 200]
    whole = Schedule(epochs=1, chunk_size=-1, seed=0, eval_every=0, eval_candidates=1, checkpoint_every=1)
    assert whole.prompts_per_round(5000) == 5000


def test_url_fields_take_http_addresses_with_a_host_only():
    for url in (
        "http://localhost:8000/v1",
        "HTTPS://api.example.com/v1",
        "http://[::1]:8000/v1",
        "http://u:p@h:1/x?y",
    ):
        assert _build(grader_endpoint=url).flat()["grader_endpoint"] == url
    assert _build(endpoint_url="http://h:65535/v1").flat()["endpoint_url"] == "http://h:65535/v1"
    for url in (
        "http://:8000/v1",
        "http:///v1",
        "http://",
        "ftp://x/v1",
        "localhost:8000",
        "http://a b/v1",
        "http://h:65536/v1",
    ):
        with pytest.raises(ConfigError, match="expected an http:// or https:// URL"):
            _build(endpoint_url=url)


# field -> where JobConfig.settings() puts it (what the stages read); the settings a field needs to matter
SETTINGS_PATHS = {
    "lora_rank": "model.lora_rank", "lora_alpha": "model.lora_alpha", "max_context_length": "model.max_context_length",
    "device": "model.device", "dtype": "model.dtype", "gradient_checkpointing": "model.gradient_checkpointing",
    "response_candidates_count": "sampling.n", "temperature": "sampling.temperature", "top_p": "sampling.top_p",
    "top_k": "sampling.top_k", "max_output_tokens": "sampling.max_tokens", "batch_size": "batching.step_tokens",
    "batch_size_samples": "batching.step_sequences", "micro_batch_tokens": "batching.micro_batch_tokens",
    "gradient_accumulation_steps": "batching.accumulation_steps", "max_grad_norm": "batching.max_grad_norm",
    "learning_rate": "optimizer.learning_rate", "optimizer_weight_decay": "optimizer.weight_decay",
    "learning_rate_warmup_steps": "optimizer.warmup_steps", "epochs": "schedule.epochs",
    "chunk_size": "schedule.chunk_size", "seed": "schedule.seed", "eval_every": "schedule.eval_every",
    "eval_candidates": "schedule.eval_candidates", "checkpoint_every": "schedule.checkpoint_every",
    "deterministic": "schedule.deterministic", "rl_kl_beta": "loss.kl_coef", "max_sampling_rounds":
    "rounds.dynamic_sampling_rounds", "overlong_buffer": "rounds.overlong_buffer", "overlong_penalty_factor":
    "rounds.overlong_factor", "rollout_is_cap": "rounds.rollout_is_cap", "rollout_engine": "engine.kind",
    "max_concurrent_rollouts": "engine.max_concurrent_rollouts", "max_concurrent_evaluations":
    "engine.max_concurrent_evaluations", "evaluator_timeout": "engine.evaluator_timeout",
    "vllm_gpu_memory_utilization": "engine.vllm_gpu_memory_utilization", "compile": "engine.compile",
    "rollout_workers": "engine.ray.workers", "max_staleness": "engine.ray.max_staleness",
    "max_turns": "agent.max_turns", "tool_timeout": "agent.tool_timeout", "agent_timeout": "agent.agent_timeout",
}  # fmt: skip
NEEDS = {"max_sampling_rounds": {"dynamic_sampling": True}, "overlong_buffer": {"overlong_penalty": True},
         "overlong_penalty_factor": {"overlong_penalty": True}, "rollout_workers": {"ray_address": "local"},
         "max_staleness": {"ray_address": "local"}, "max_turns": {"tools": "calculator"},
         "tool_timeout": {"tools": "calculator"}, "agent_timeout": {"tools": "calculator"}}  # fmt: skip


@pytest.mark.parametrize(("name", "path"), SETTINGS_PATHS.items(), ids=list(SETTINGS_PATHS))
def test_every_parameter_reaches_the_settings_the_job_runs_with(name, path):
    """A value that is validated but never handed on would be silently ignored: each non-default value
    given on the command line is the one the stages receive."""
    row = next(r for r in TABLE if r[0] == name)
    configs = (_build(**NEEDS.get(name, {}), **{name: value}) for value in row[2])
    cfg = next(
        c for c in configs if c.flat()[name] != row[1]
    )  # the first valid value that is not the default
    got = cfg.settings()
    for part in path.split("."):
        got = getattr(got, part)
    assert got == cfg.flat()[name] != row[1], (name, got)


def test_stop_strings_the_loss_method_and_length_norm_reach_the_settings():
    settings = _build(stop=["</answer>", "\n\n"], rl_loss_method="gspo-token").settings()
    assert settings.sampling.stop == ("</answer>", "\n\n") and settings.loss.method == "gspo-token"
    assert settings.loss.aggregation == "seq-mean-token-mean"
    assert _build(length_norm=True).settings().loss.aggregation == "seq-mean-token-mean"
    assert _build().settings().loss.aggregation == "token-mean"


def test_batch_size_has_an_upper_bound_as_the_services_integer_field_does():
    with pytest.raises(
        ConfigError,
        match="--batch-size: 9223372036854775808 is not valid; expected a whole number of tokens from 1 to 2147483647",
    ):
        C.build_config({}, {"batch_size": 2**63})
    assert C.build_config({}, {"batch_size": 2**31 - 1})[0].training.batch_size == 2**31 - 1
