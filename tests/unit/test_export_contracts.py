"""What `openrft export` writes for other tools: the Modelfile Ollama reads, the GGUF tokenizer flags
llama.cpp reads, and the vLLM command in the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openrft.train.model_card import render_model_card
from openrft.train.ollama import render_modelfile

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_the_modelfile_system_line_is_the_templates_default_system_message_only(tokenizer):
    text = render_modelfile("tiny.gguf", tokenizer)
    system = [line for line in text.splitlines() if line.startswith("SYSTEM ")]
    assert system == [f'SYSTEM "{SMOLLM_SYSTEM}"']
    before_template = text.split('TEMPLATE """', 1)[0]
    after_template = text.split('"""', 2)[2]  # everything past the TEMPLATE block
    assert "hello" not in before_template + after_template  # no sample user turn leaks in


@pytest.mark.parametrize(("rank", "served"), [(4, 8), (8, 8), (16, 16), (32, 32)])
def test_the_model_cards_vllm_command_allows_the_adapters_rank(rank, served):
    cfg = {"training": {"lora_rank": rank, "base_model": "some/model", "job_id": "job1"}}
    card = render_model_card(cfg, None, Path("/adapters/job1"))
    assert f"--max-lora-rank {served} " in card  # vLLM's smallest max rank is 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    """A tiny adapter of a job that stopped on '###', exported as GGUF."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openrft.train.export import export_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    (folder / "job.json").write_text(json.dumps({"rollout": {"stop": ["###", "END"]}}))
    out = tmp_path_factory.mktemp("export")
    return export_adapter(folder, gguf=out / "tiny.gguf", gguf_type="f32")


def test_the_modelfile_stops_on_the_jobs_stop_strings_too(exported):
    text = exported.modelfile.read_text()
    for stop in ("<|im_end|>", "###", "END"):
        assert f'PARAMETER stop "{stop}"' in text


def test_the_gguf_adds_a_bos_token_only_when_the_tokenizer_does(exported, tokenizer):
    import gguf

    fields = gguf.GGUFReader(exported.gguf.path).fields
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    assert adds_bos is False  # SmolLM2 tokenizes without a BOS: llama.cpp must not prepend one
    field = fields.get("tokenizer.ggml.add_bos_token")
    assert field is None or bool(field.contents()) is adds_bos


def test_a_modelfile_written_under_another_name_tells_ollama_that_name(tokenizer):
    assert "ollama create my-model -f Modelfile &&" in render_modelfile("tiny.gguf", tokenizer)
    beside = render_modelfile("tiny.gguf", tokenizer, file_name="tiny.gguf.Modelfile")
    assert "ollama create my-model -f tiny.gguf.Modelfile &&" in beside


def test_the_model_card_gives_the_adapters_own_rank_for_a_warm_started_job(tmp_path):
    import json

    from openrft.train.model_card import write_model_card

    training = {"lora_rank": 16, "base_model": "some/model", "job_id": "job1", "warm_start_from": "/a/peft"}
    (tmp_path / "job.json").write_text(json.dumps({"training": training}))
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"r": 4, "lora_alpha": 8})
    )  # the start adapter's
    card = write_model_card(tmp_path).read_text()
    assert "| LoRA rank / alpha | 4 / 8 |" in card and "--max-lora-rank 8 " in card


def test_a_cancelled_jobs_card_says_the_adapter_is_unfinished(tmp_path):
    import json

    from openrft.train.model_card import write_model_card

    (tmp_path / "job.json").write_text(
        json.dumps({"training": {"base_model": "some/model", "job_id": "job1"}})
    )
    card = write_model_card(tmp_path, unfinished="it was cancelled at step 3").read_text()
    title = card.index("# job1: a LoRA adapter")
    assert title < card.index("> **Unfinished:** it was cancelled at step 3.") < card.index("## Training")
    assert "Unfinished" not in write_model_card(tmp_path).read_text()
    (tmp_path / "job.json").write_text(
        json.dumps({"training": {"job_id": "j"}, "data": {"dataset": "arithmetic"}})
    )
    assert "| evaluator | `arithmetic (built-in, the dataset's)` |" in write_model_card(tmp_path).read_text()


def test_an_embedded_model_converted_by_an_earlier_version_is_brought_up_to_date(tmp_path, monkeypatch):
    import json

    from openrft.models import EMBEDDED_MODEL, resolve_model_dir

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    folder = tmp_path / "models" / EMBEDDED_MODEL
    folder.mkdir(parents=True)
    config = {"model_type": "llama", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    (folder / "config.json").write_text(json.dumps(config))  # transformers 5's names only
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    assert resolve_model_dir(EMBEDDED_MODEL) == folder
    assert json.loads((folder / "config.json").read_text())["rope_theta"] == 100000.0  # 4 reads it too
    assert (
        json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
