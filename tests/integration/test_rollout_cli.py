"""`openrft rollout` and `openrft serve` command lines on a tiny model directory."""

from __future__ import annotations

import json

import pytest
import torch

from openrft.cli import build_parser, main


def test_rollout_prints_candidates_with_finish_reasons(tiny_model_dir, capsys):
    argv = ["rollout", "--base-model", str(tiny_model_dir), "--prompt", "What is 3 + 4?", "--n", "3"]
    assert main([*argv, "--max-output-tokens", "16", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("=== prompt 0: What is 3 + 4?")
    headers = [line for line in out.splitlines() if line.startswith("--- candidate")]
    assert [h.split()[2] for h in headers] == ["0", "1", "2"]
    assert all("finish=stop" in h or "finish=length  tokens=16" in h for h in headers)


def test_rollout_json_records_are_reproducible(tiny_model_dir, capsys):
    argv = ["rollout", "--base-model", str(tiny_model_dir), "--prompt", "Hi", "--prompt", "Bye", "--json"]
    argv += ["--n", "2", "--max-output-tokens", "16", "--seed", "3", "--temperature", "1.2", "--top-k", "0"]
    assert main(argv) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(argv) == 0
    second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert first == second
    assert [(r["prompt_id"], r["candidate_index"]) for r in first] == [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
    assert all(len(r["logprobs"]) == len(r["completion_token_ids"]) <= 16 for r in first)


def test_rollout_with_an_adapter_changes_the_samples(tiny_model_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from openrft.testing import tiny_model

    model, _ = tiny_model(seed=0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    argv = ["rollout", "--base-model", str(tiny_model_dir), "--prompt", "Hi", "--json", "--seed", "0"]
    assert main([*argv, "--n", "2", "--max-output-tokens", "16"]) == 0
    base = capsys.readouterr().out
    assert main([*argv, "--n", "2", "--max-output-tokens", "16", "--adapter", str(tmp_path / "adapter")]) == 0
    assert capsys.readouterr().out != base


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "5"], "--temperature: 5.0 is not valid; expected a number from 0.1 to 2.0"),
        (["--top-k", "101"], "--top-k"),
        (["--n", "1"], "--response-candidates-count / --n: 1 is not valid"),
        (["--max-output-tokens", "8"], "--max-output-tokens"),
    ],
)
def test_rollout_rejects_out_of_range_flags(tiny_model_dir, capsys, flags, message):
    assert main(["rollout", "--base-model", str(tiny_model_dir), "--prompt", "x", *flags]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_a_clean_error(capsys, tmp_path):
    assert main(["rollout", "--base-model", str(tmp_path / "nothing-here"), "--prompt", "x"]) == 5
    err = capsys.readouterr().err
    assert "base model not found" in err and "hint:" in err


@pytest.fixture(autouse=True)
def _any_port(monkeypatch):
    """These tests replace the server, which then listens nowhere: the default port need not be free."""
    monkeypatch.setattr("openrft.cli.rollout.listen_problem", lambda host, port: None)


def test_serve_flags_parse():
    args = build_parser().parse_args(["serve", "--base-model", "m", "--port", "9001", "--adapter", "a"])
    assert (args.base_model, args.port, args.adapter, args.host) == ("m", 9001, "a", "127.0.0.1")


def test_serve_loads_the_model_and_hands_it_to_the_server(tiny_model_dir, monkeypatch):
    seen = {}

    def fake_serve(engine, name, host, port, *, base_adapter=None, aliases=(), base_name=None):
        seen.update(engine=engine, name=name, host=host, port=port, base_adapter=base_adapter)
        seen.update(aliases=list(aliases), base_name=base_name)

    monkeypatch.setattr("openrft.rollout.server.serve", fake_serve)
    assert (
        main(["serve", "--base-model", str(tiny_model_dir), "--port", "9002", "--served-model-name", "tiny"])
        == 0
    )
    assert (seen["name"], seen["host"], seen["port"], seen["base_adapter"]) == (
        "tiny",
        "127.0.0.1",
        9002,
        None,
    )
    assert seen["aliases"] == ["policy", str(tiny_model_dir)] and seen["base_name"] is None
    assert seen["engine"].model.config.num_hidden_layers == 2
    weights = next(seen["engine"].model.parameters())
    assert (weights.device.type, weights.dtype) == ("cpu", torch.float32)  # auto on a machine without a GPU
    assert main(["serve", "--base-model", str(tiny_model_dir), "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert next(seen["engine"].model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "gpu"], "--device: gpu is not valid; expected auto, cpu, cuda or cuda:N"),
        (["--dtype", "float16"], "--dtype: float16 is not valid; expected one of auto, float32, bfloat16"),
    ],
)
def test_serve_and_rollout_refuse_a_bad_device_or_dtype(tiny_model_dir, capsys, flags, message):
    for command in ("serve", "rollout"):
        extra = ["--prompt", "x"] if command == "rollout" else []
        assert main([command, "--base-model", str(tiny_model_dir), *extra, *flags]) == 2
        assert message in capsys.readouterr().err
    for port in ("99999", "-1"):  # refused by the parser, before any model loads (was uvicorn's traceback)
        with pytest.raises(SystemExit):
            main(["serve", "--base-model", str(tiny_model_dir), "--port", port])
        assert "--port: " in capsys.readouterr().err
    if not torch.cuda.is_available():  # a GPU this machine lacks is named before any model loads
        assert main(["serve", "--base-model", str(tiny_model_dir), "--device", "cuda:3"]) != 0
        assert "cuda:3 is not available" in capsys.readouterr().err


def test_serve_with_an_adapter_answers_chat_completions_under_short_names(
    tiny_model_dir, tmp_path, monkeypatch
):
    """What `openrft serve --adapter DIR` serves, asked with the openai SDK (the server in a thread)."""
    import openai
    from peft import LoraConfig, get_peft_model

    from openrft.rollout.server import BackgroundServer, create_app
    from openrft.testing import tiny_model

    model, _ = tiny_model(seed=0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(tmp_path / "my-adapter")
    answers = {}

    def serve_in_thread(engine, name, host, port, **names):
        with BackgroundServer(create_app(engine, name, **names)) as server:
            client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
            answers["models"] = [m.id for m in client.models.list().data]
            ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "seed": 3}
            tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
            for model_name in ("my-adapter", "policy", tiny_model_dir.name, str(tmp_path / "my-adapter")):
                reply = client.chat.completions.create(model=model_name, **ask)
                answers[model_name] = reply.choices[0].message.content
            answers["tools"] = client.chat.completions.create(model="policy", tools=tools, **ask).choices[0]

    monkeypatch.setattr("openrft.rollout.server.serve", serve_in_thread)
    argv = ["serve", "--base-model", str(tiny_model_dir), "--adapter", str(tmp_path / "my-adapter")]
    assert main(argv) == 0
    assert answers["models"][:2] == ["my-adapter", "policy"] and tiny_model_dir.name in answers["models"]
    assert answers["my-adapter"] == answers["policy"] != answers[tiny_model_dir.name]  # the base is the base
    assert answers[str(tmp_path / "my-adapter")] == answers["policy"]  # the adapter's folder names it too
    assert answers["tools"].message.role == "assistant"


def test_rollout_system_prompt_is_in_the_prompt_tokens(tiny_model_dir, tokenizer, capsys):
    argv = ["rollout", "--base-model", str(tiny_model_dir), "--prompt", "What is 3 + 4?", "--json"]
    argv += ["--n", "2", "--max-output-tokens", "16", "--seed", "0"]
    system = "Always give the final answer inside <answer></answer> tags."
    assert main([*argv, "--system", system]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    prompt = tokenizer.decode(record["prompt_token_ids"])
    assert system in prompt and prompt.index(system) < prompt.index("What is 3 + 4?")


def test_serve_system_prompt_opens_chat_requests_without_one(tiny_model_dir, monkeypatch):
    """`openrft serve --system TEXT`: a chat request without a system message gets TEXT; one with its own keeps it."""
    import httpx

    from openrft.rollout.server import BackgroundServer, create_app
    from openrft.testing import embedded_tokenizer

    prompts = {}

    def serve_in_thread(engine, name, host, port, **names):
        with BackgroundServer(create_app(engine, name, **names)) as server:
            for key, messages in {
                "plain": [{"role": "user", "content": "Hi"}],
                "own": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
            }.items():
                body = {"messages": messages, "max_tokens": 4, "seed": 1, "return_token_ids": True}
                reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=60).json()
                prompts[key] = embedded_tokenizer().decode(reply["choices"][0]["prompt_token_ids"])

    monkeypatch.setattr("openrft.rollout.server.serve", serve_in_thread)
    argv = ["serve", "--base-model", str(tiny_model_dir), "--system", "Answer in <answer></answer> tags."]
    assert main(argv) == 0
    assert "Answer in <answer></answer> tags." in prompts["plain"]
    assert "Be terse." in prompts["own"] and "<answer>" not in prompts["own"]


def test_serve_takes_a_job_folder_and_names_the_adapter_after_the_job(tiny_model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from openrft.testing import tiny_model

    model, _ = tiny_model(seed=0)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "j7" / "output"
    )
    served = {}
    monkeypatch.setattr(
        "openrft.rollout.server.serve", lambda engine, name, *a, **names: served.update(name=name)
    )
    for target in (tmp_path / "j7", tmp_path / "j7" / "output"):  # the job's folder, or its adapter's
        assert main(["serve", "--base-model", str(tiny_model_dir), "--adapter", str(target)]) == 0
        assert served["name"] == "j7"  # not "output", which every job's adapter folder is called


def test_serve_api_keys_from_the_flag_and_the_environment(tiny_model_dir, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(
        "openrft.rollout.server.serve", lambda engine, name, host, port, **names: seen.update(names)
    )
    monkeypatch.setenv("OPENRFT_API_KEYS", "env1, ,env2")
    assert main(["serve", "--base-model", str(tiny_model_dir), "--api-key", "flag1"]) == 0
    assert seen["api_keys"] == ["flag1", "env1", "env2"]
    monkeypatch.delenv("OPENRFT_API_KEYS")
    seen.clear()
    assert main(["serve", "--base-model", str(tiny_model_dir), "--host", "0.0.0.0"]) == 0
    assert "api_keys" not in seen and "with no API key" in capsys.readouterr().err


def test_serve_lora_modules_serves_several_adapters_each_under_its_name(
    tiny_model_dir, tmp_path, monkeypatch
):
    import openai
    from peft import LoraConfig, get_peft_model

    from openrft.rollout.server import BackgroundServer, create_app
    from openrft.testing import tiny_model

    for seed, name in ((1, "first"), (2, "second")):
        model, _ = tiny_model(seed=0)
        torch.manual_seed(seed)
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(tmp_path / name)
    answers = {}

    def serve_in_thread(engine, name, host, port, **names):
        with BackgroundServer(create_app(engine, name, **names)) as server:
            client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
            answers["models"] = [m.id for m in client.models.list().data]
            ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "seed": 3}
            for model_name in ("a", "second", tiny_model_dir.name):
                answers[model_name] = (
                    client.chat.completions.create(model=model_name, **ask).choices[0].message.content
                )

    monkeypatch.setattr("openrft.rollout.server.serve", serve_in_thread)
    argv = ["serve", "--base-model", str(tiny_model_dir), "--lora-modules", f"a={tmp_path / 'first'}",
            str(tmp_path / "second")]  # fmt: skip
    assert main(argv) == 0
    assert {"a", "second", tiny_model_dir.name} <= set(answers["models"])
    assert len({answers["a"], answers["second"], answers[tiny_model_dir.name]}) == 3  # three different models
    assert (
        main(["serve", "--base-model", str(tiny_model_dir), "--lora-modules", f"x={tmp_path / 'nope'}"]) != 0
    )
