"""Model loading: local directories, the HF cache (offline), the embedded model and its conversion cache."""

from __future__ import annotations

import json

import pytest
import torch

from openrft import models, paths
from openrft.errors import ModelError
from openrft.testing import tiny_model


def test_local_directory_round_trip(tiny_model_dir):
    model, tokenizer = models.load_model(str(tiny_model_dir))
    reference, _ = tiny_model(seed=0)
    assert not model.training
    assert model.dtype == torch.float32
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tokenizer.pad_token is not None
    assert models.resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


def test_load_model_honours_dtype(tiny_model_dir):
    model, _ = models.load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["no-such-model", "nobody/not-cached-anywhere", "./missing/dir"])
def test_missing_model_says_how_to_provide_it(name):
    with pytest.raises(ModelError) as info:
        models.resolve_model_dir(name)
    assert name in str(info.value)
    assert "smollm2-135m-instruct" in info.value.hint
    if name.startswith("."):  # a folder: no hub download to suggest
        assert "no such folder" in str(info.value) and "hf download" not in info.value.hint
    else:
        assert "local directory" in info.value.hint


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        models.load_model(str(tmp_path))


def test_hub_id_found_in_local_cache(tmp_path, monkeypatch, tiny_model_dir):
    # Lay out a snapshot exactly as huggingface_hub stores it, then resolve it offline.
    hub = tmp_path / "hub"
    repo = hub / "models--someorg--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for item in tiny_model_dir.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert models.resolve_model_dir("someorg/tiny") == snapshot


def test_end_tokens_and_pad(tokenizer):
    assert tokenizer.convert_ids_to_tokens(list(models.end_token_ids(tokenizer))) == ["<|im_end|>"]
    assert tokenizer.pad_token_id is not None


def test_prepare_tokenizer_uses_eos_as_pad(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.pad_token = None
    assert models.prepare_tokenizer(bare).pad_token == tokenizer.eos_token


def test_bad_adapter_directory(tiny_model, tmp_path):
    model, _ = tiny_model
    with pytest.raises(ModelError, match="adapter_config.json"):
        models.load_adapter(model, tmp_path)


def test_openrft_home_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    assert paths.openrft_home() == tmp_path
    assert models.embedded_model_dir() == tmp_path / "models" / "smollm2-135m-instruct"


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), paths.atomic_directory(target) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.embedded
def test_embedded_model_is_converted_once_and_keeps_its_chat_template():
    model, tokenizer = models.load_model(models.EMBEDDED_MODEL)
    model_dir = models.embedded_model_dir()
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"]
    assert (model_dir / "model.safetensors").is_file()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n")
    assert models.end_token_ids(tokenizer, model) == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "7" in tokenizer.decode(out[0, ids.shape[1] :])
