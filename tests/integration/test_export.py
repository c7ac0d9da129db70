"""``openrft export``: a trained adapter merged into its base model, as a model folder and as GGUF,
and the model card written next to a job's adapter."""

from __future__ import annotations

import copy as copy_module
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from openrft.cli import main
from openrft.errors import ExportError
from openrft.train.export import export_adapter, find_base_model, pre_tokenizer
from openrft.train.gguf_export import check_supported, check_tokenizer, permute_rotary

LAYERS = 2


def _peft_model(base_dir: Path, seed: int = 1):
    """The tiny base model with a LoRA adapter on every projection, B weights random (non-zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    """``(adapter folder, PEFT model)``: an adapter saved the way PEFT saves it (it names the base folder)."""
    model = _peft_model(tiny_model_dir)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def merged(tmp_path_factory, adapter):
    """The adapter exported with both --merged and --gguf (f32, so the GGUF weights are exact)."""
    out = tmp_path_factory.mktemp("export")
    result = export_adapter(adapter[0], merged=out / "merged", gguf=out / "tiny.gguf", gguf_type="f32")
    return result


IDS = torch.tensor([[1, 17, 300, 4200, 9, 2, 77, 5]])


def test_merged_model_matches_the_peft_model(adapter, merged, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, peft_model = adapter
    folder = merged.merged
    assert merged.base_model == str(tiny_model_dir)
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # no peft involved
    with torch.no_grad():
        expected, got = peft_model(IDS).logits, model(IDS).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(IDS).logits
    assert (expected - plain).abs().max() > 1e-2  # the adapter changes the model ...
    assert (got - expected).abs().max() < 1e-4  # ... and the merged weights carry that change
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>" in tokenizer.chat_template
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }
    # transformers 4 (vLLM may be built on it) reads the same model: RoPE base and weight type under its
    # names too (without rope_theta it takes 10000, silently), a tokenizer class it has
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["torch_dtype"] == config["dtype"]
    saved = json.loads((folder / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast" and "local_files_only" not in saved


def test_gguf_holds_every_tensor_under_llama_cpp_names(merged):
    import gguf

    reader = gguf.GGUFReader(merged.gguf.path)
    names = {t.name for t in reader.tensors}
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]  # fmt: skip
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(LAYERS) for n in per_layer
    }
    assert names == expected  # tied embeddings: no separate output.weight
    assert len(reader.tensors) == merged.gguf.tensors == 2 + 9 * LAYERS
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # ggml order: reversed
    assert shapes["token_embd.weight"] == (32, 49152)
    assert shapes["blk.0.attn_q.weight"] == (32, 32) and shapes["blk.0.attn_k.weight"] == (32, 16)
    assert shapes["blk.1.ffn_down.weight"] == (64, 32) and shapes["output_norm.weight"] == (32,)
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)


def test_gguf_metadata_describes_the_model_and_tokenizer(merged, tokenizer):
    import gguf

    reader = gguf.GGUFReader(merged.gguf.path)

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == LAYERS
    assert value("llama.embedding_length") == 32 and value("llama.feed_forward_length") == 64
    assert value("llama.attention.head_count") == 4 and value("llama.attention.head_count_kv") == 2
    assert value("llama.context_length") == 4096 and value("llama.vocab_size") == 49152
    assert value("llama.rope.dimension_count") == 8
    assert value("llama.rope.freq_base") == pytest.approx(10000.0)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("tokenizer.ggml.model") == "gpt2"
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == 49152 and tokens[tokenizer.eos_token_id] == tokenizer.eos_token
    types = value("tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.CONTROL and types[100] == gguf.TokenType.NORMAL
    assert len(value("tokenizer.ggml.merges")) > 40000
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert value("tokenizer.chat_template") == tokenizer.chat_template


def test_gguf_weights_round_trip_to_the_merged_model(merged):
    """Read back by the GGUF reader openrft's embedded-model conversion uses (transformers'), which
    undoes the q/k permutation: the weights and logits are the merged model's."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged.merged, dtype=torch.float32).eval()
    path = merged.gguf.path
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    expected, got = model.state_dict(), back.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
    with torch.no_grad():
        assert (model(IDS).logits - back(IDS).logits).abs().max() < 1e-4
    # and the file holds the rotary permutation llama.cpp expects
    q = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    permuted = permute_rotary(expected["model.layers.0.self_attn.q_proj.weight"], 4, 4).numpy()
    assert np.array_equal(np.asarray(q.data).reshape(permuted.shape), permuted)


def test_modelfile_for_ollama(merged):
    text = merged.modelfile.read_text()
    assert merged.modelfile == merged.gguf.path.parent / "Modelfile"
    assert "FROM ./tiny.gguf\n" in text
    assert 'TEMPLATE """' in text and "<|im_start|>{{ .Role }}" in text and "<|im_start|>assistant" in text
    assert 'SYSTEM "You are a helpful AI assistant named SmolLM' in text  # the template's default
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_f16_gguf_is_half_the_size(adapter, merged, tmp_path):
    import gguf

    result = export_adapter(adapter[0], gguf=tmp_path / "half.gguf")
    reader = gguf.GGUFReader(result.gguf.path)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay float32

    def weight_bytes(path):
        return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)

    assert weight_bytes(result.gguf.path) < 0.6 * weight_bytes(merged.gguf.path)


def test_unsupported_architecture_is_one_clear_error(tmp_path, tokenizer, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    base_dir = tmp_path / "gpt2"
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model = get_peft_model(
        GPT2LMHeadModel.from_pretrained(base_dir), LoraConfig(r=2, target_modules=["c_attn"])
    )
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ExportError, match="GPT2LMHeadModel"):
        export_adapter(tmp_path / "adapter", gguf=tmp_path / "x.gguf")
    code = main(["export", str(tmp_path / "adapter"), "--gguf", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert code == ExportError.exit_code == 5
    assert "cannot write GPT2LMHeadModel (model_type 'gpt2') as GGUF" in err
    assert "Traceback" not in err and not (tmp_path / "x.gguf").exists()
    with pytest.raises(ExportError, match="model_type 'mamba'"):
        check_supported(SimpleNamespace(model_type="mamba", architectures=None))


def test_sentencepiece_style_tokenizers_are_refused(tokenizer):
    check_tokenizer(tokenizer)  # the embedded model's byte-level BPE is fine
    for model in ({"type": "Unigram"}, {"type": "BPE", "byte_fallback": True}):  # T5-like, Llama 2-like
        spec = json.dumps(
            {"model": model, "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]}}
        )
        fake = SimpleNamespace(backend_tokenizer=SimpleNamespace(to_str=lambda spec=spec: spec))
        with pytest.raises(ExportError, match="only GPT-2 style byte-level BPE"):
            check_tokenizer(fake)


def test_nothing_to_export_and_missing_targets(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert main(["export", "no-such-job", "--merged", str(tmp_path / "m")]) == 7
    assert "no job with id 'no-such-job'" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "m")]) == 5
    assert "not a LoRA adapter folder" in capsys.readouterr().err


def test_base_model_comes_from_the_job_or_the_adapter(adapter, tmp_path, tiny_model_dir):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((adapter[0] / name).read_bytes())
    assert find_base_model(folder) == str(tiny_model_dir)  # adapter_config.json
    (folder / "job.json").write_text(json.dumps({"training": {"base_model": "/gone/elsewhere"}}))
    assert find_base_model(folder) == str(tiny_model_dir)  # job.json's base is not here: the next one


def test_the_embedded_models_pre_tokenizer_is_found_by_name_or_by_its_folder(tmp_path, tokenizer):
    from openrft.models import embedded_model_dir

    assert pre_tokenizer("smollm2-135m-instruct", tokenizer) == "smollm"
    assert (
        pre_tokenizer(str(embedded_model_dir("smollm2-135m-instruct")), tokenizer) == "smollm"
    )  # as adapters record it
    assert pre_tokenizer(str(tmp_path / "some-model"), tokenizer) == "gpt-2"  # read off its tokenizer


def _with_pre_tokenizer(tokenizer, pre):
    copy = copy_module.deepcopy(tokenizer)
    copy.backend_tokenizer.pre_tokenizer = pre
    return copy


def test_other_models_pre_tokenizer_is_read_off_their_tokenizer(tokenizer):
    """llama.cpp's name for each way of splitting text that it knows; any other is refused (its
    "default" would tokenize differently from the model's tokenizer)."""
    from tokenizers import Regex, pre_tokenizers

    from openrft.train.gguf_export import _SPLIT_LLAMA3, _SPLIT_QWEN2, pre_tokenizer_name

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = {name: pre_tokenizers.Split(Regex(pattern), "isolated") for name, pattern in
             (("llama-bpe", _SPLIT_LLAMA3), ("qwen2", _SPLIT_QWEN2))}  # fmt: skip
    cases = {
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
        **{name: pre_tokenizers.Sequence([s, byte_level]) for name, s in split.items()},
    }
    for name, pre in cases.items():
        assert pre_tokenizer_name(_with_pre_tokenizer(tokenizer, pre)) == name
    odd = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+"), "isolated"), byte_level])
    with pytest.raises(ExportError, match="no pre-tokenizer known to split text"):
        pre_tokenizer_name(_with_pre_tokenizer(tokenizer, odd))


def test_a_warm_started_jobs_adapter_is_merged_onto_the_base_it_records(adapter, tmp_path, tiny_model_dir):
    folder = tmp_path / "warm"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((adapter[0] / name).read_bytes())
    job = {"training": {"base_model": "smollm2-135m-instruct", "warm_start_from": "/some/adapter"}}
    (folder / "job.json").write_text(json.dumps(job))  # base_model is only the default there
    assert find_base_model(folder) == str(tiny_model_dir)


def test_export_never_replaces_what_is_not_an_earlier_export(
    adapter, merged, tmp_path, tiny_model_dir, capsys
):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("a file")
    cases = [
        (mine, "the folder exists and is not an earlier export"),
        (tmp_path / "file", "a file is there"),
        (adapter[0], "an input of the export"),
        (tiny_model_dir, "an input of the export"),
        (adapter[0] / "sub", "an input of the export"),
        (tmp_path / "file" / "sub", f"{tmp_path / 'file'} is a file, not a folder to write in"),
    ]
    for out, message in cases:
        assert (
            main(["export", str(adapter[0]), "--merged", str(out)]) == 2
        )  # a flag's value, as --output-model
        assert message in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "a file"
    assert (adapter[0] / "adapter_config.json").is_file() and (tiny_model_dir / "config.json").is_file()
    earlier = merged.merged  # an earlier export is replaced, and a GGUF written inside it stays
    assert main(["export", str(adapter[0]), "--merged", str(earlier), "--gguf", str(earlier / "m.gguf")]) == 0
    assert (earlier / "m.gguf").is_file() and (earlier / "Modelfile").is_file()
    assert (earlier / "config.json").is_file()
    assert main(["export", str(adapter[0]), "--gguf", str(earlier / "m.gguf")]) == 0  # ours: replaced
    (tmp_path / "precious.gguf").write_bytes(b"GGUF my own model")
    assert main(["export", str(adapter[0]), "--gguf", str(tmp_path / "precious.gguf")]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert (tmp_path / "precious.gguf").read_bytes() == b"GGUF my own model"
    same = tmp_path / "same.gguf"  # the two outputs on one path: refused before the merge, nothing written
    assert main(["export", str(adapter[0]), "--merged", str(same), "--gguf", str(same)]) == 2
    assert "the same path as --merged" in capsys.readouterr().err and not same.exists()


def test_an_unwritable_target_is_refused_before_the_merge(adapter, tmp_path, monkeypatch, capsys):
    import openrft.train.export as export

    monkeypatch.setattr(export, "can_write_in", lambda folder: False)  # (root may write anywhere)
    assert main(["export", str(adapter[0]), "--merged", str(tmp_path / "ro" / "m")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} cannot be written (read-only, or not yours)" in err and "hint:" in err


def test_auto_dtype_keeps_the_base_models_stored_weight_type(adapter, tmp_path, tiny_model_dir):
    from safetensors import safe_open

    base = tmp_path / "bf16-base"
    base.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.is_file():
            (base / path.name).write_bytes(path.read_bytes())
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    result = export_adapter(adapter[0], merged=tmp_path / "out", base_model=str(base))
    with safe_open(str(result.merged / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys()}  # noqa: SIM118 (not a dict)
    assert dtypes == {torch.bfloat16}


# ----------------------------------------------------------------------------- a real job


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_job_writes_a_model_card_and_its_tokenizer_then_exports_by_id(
    home, tiny_model_dir, tmp_path, capsys
):
    from openrft.jobs.store import JobStore

    evaluator = tmp_path / "letters.py"
    evaluator.write_text(
        "def letters(completion: str, **row) -> float:\n"
        "    return sum(c.isalpha() for c in completion) / len(completion) if completion else 0.0\n"
    )
    code = main([
        "rftj", "create", "--job-id", "card", "--base-model", str(tiny_model_dir),
        "--dataset", "arithmetic:count=4", "--evaluator", f"{evaluator}::letters", "--n", "2",
        "--max-output-tokens", "16", "--chunk-size", "2", "--batch-size", "2k", "--micro-batch-tokens", "128",
        "--temperature", "1.0", "--rl-loss-method", "dapo", "--lora-rank", "4", "--quiet",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = JobStore().get("card").output_dir
    card = (out / "README.md").read_text()
    assert str(tiny_model_dir) in card and "DAPO" in card
    assert "| LoRA rank / alpha | 4 / 8 |" in card and "| candidates per prompt (n) | 2 |" in card
    assert "final mean reward" in card and "More Information Needed" not in card
    assert (
        f"--lora-modules card={out.resolve()}" in card
        and f"openrft serve --base-model {tiny_model_dir}" in card
    )
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in out.iterdir()
    }
    capsys.readouterr()
    assert main(["export", "card", "--merged", str(tmp_path / "m"), "--gguf", str(tmp_path / "m.gguf")]) == 0
    printed = capsys.readouterr().out
    assert "20 tensors" in printed and (tmp_path / "m" / "config.json").is_file()
    assert (tmp_path / "Modelfile").is_file()


def test_llama3_rotary_scaling_becomes_llama_cpp_rope_factors(tmp_path, tokenizer):
    """Llama 3.1-style scaling is written as llama.cpp's ``rope_freqs`` tensor: the default rotary
    frequencies divided by it are the ones transformers computes."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from openrft.train.gguf_export import write_gguf

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072, rope_parameters=rope,
        tie_word_embeddings=False,
    )  # fmt: skip
    summary = write_gguf(LlamaForCausalLM(config).eval(), tokenizer, tmp_path / "l3.gguf", out_type="f32")
    reader = gguf.GGUFReader(summary.path)
    tensors = {t.name: t for t in reader.tensors}
    # embeddings, final norm, untied head, rope_freqs
    assert "output.weight" in tensors and summary.tensors == 4 + 9
    factors = torch.tensor(np.asarray(tensors["rope_freqs.weight"].data))
    plain = 1.0 / (500000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert torch.allclose(plain / factors, expected, rtol=1e-5)
    assert reader.fields["llama.rope.freq_base"].contents() == pytest.approx(500000.0)
    yarn = LlamaConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    with pytest.raises(ExportError, match="'yarn' rotary scaling"):
        check_supported(yarn)


def test_qwen2_is_written_with_its_biases_and_unpermuted_rotary_weights(tmp_path, tokenizer):
    """A Qwen2 model (the 0.5B/1.5B shape: tied embeddings, q/k/v biases, grouped KV heads) round-trips
    through transformers' GGUF reader to the same logits; its pre-tokenizer is llama.cpp's "qwen2"."""
    import gguf
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from openrft.train.gguf_export import _SPLIT_QWEN2, write_gguf

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        rope_theta=1e6,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    for name, param in model.named_parameters():  # non-zero biases, so that they are checked too
        if name.endswith("bias"):
            param.data.normal_()
    path = tmp_path / "qwen.gguf"
    qwen_split = pre_tokenizers.Split(Regex(_SPLIT_QWEN2), "isolated")
    qwen_tokenizer = _with_pre_tokenizer(tokenizer, pre_tokenizers.Sequence(
        [qwen_split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))  # fmt: skip
    summary = write_gguf(model, qwen_tokenizer, path, out_type="f32")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.bias", "blk.1.attn_v.bias"} <= names and "output.weight" not in names
    assert summary.tensors == 2 + 2 * 12  # embeddings, final norm; per block 7 weights, 3 biases, 2 norms
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    expected, got = model.state_dict(), back.state_dict()
    for key in expected:
        if key != "lm_head.weight":
            assert torch.allclose(expected[key], got[key], atol=1e-6), key
    with torch.no_grad():
        assert (model(IDS).logits - back(IDS).logits).abs().max() < 1e-4


def _ollama_values(modelfile: str) -> list[str]:
    """The arguments of ``PARAMETER stop`` lines as Ollama's parser reads them (parser/parser.go: a
    value ends at a newline once it unquotes; no escapes; non-printing characters other than the
    newline dropped)."""

    def unquote(s: str) -> str | None:
        for q in ('"""', '"'):
            if s.startswith(q):
                return s[len(q) : -len(q)] if len(s) >= 2 * len(q) and s.endswith(q) else None
        return s

    values, rest = [], modelfile
    while (at := rest.find("PARAMETER stop ")) >= 0:
        rest, buffer = rest[at + len("PARAMETER stop ") :], ""
        for i, ch in enumerate(rest + "\n"):
            if ch == "\n" and (value := unquote(buffer.strip())) is not None:
                values.append(value)
                rest = rest[i:]
                break
            buffer += ch if ch.isprintable() or ch == "\n" else ""
    return values


def test_modelfile_stop_strings_read_back_exactly_in_ollama(tokenizer):
    from openrft.train.ollama import render_modelfile

    stops = ["\n\n", 'say "done"', "C:\\end", '"quoted"', "a\tb", 'x"""y']
    text = render_modelfile("model.gguf", tokenizer, stops)
    assert _ollama_values(text) == ["<|im_end|>", "\n\n", 'say "done"', "C:\\end", '"quoted"']
    assert "# stop string 'a\\tb' left out" in text and '# stop string \'x"""y\' left out' in text


def test_a_modelfile_that_is_not_this_exports_is_never_overwritten(tmp_path):
    from openrft.errors import ConfigError
    from openrft.train.export import modelfile_path
    from openrft.train.ollama import MODELFILE_HEADER

    gguf = tmp_path / "b.gguf"
    assert modelfile_path(gguf) == tmp_path / "Modelfile"  # none there yet
    (tmp_path / "Modelfile").write_text(MODELFILE_HEADER + "FROM ./b.gguf\n")
    assert modelfile_path(gguf) == tmp_path / "Modelfile"  # this file's own, from an earlier export
    (tmp_path / "Modelfile").write_text(MODELFILE_HEADER + "FROM ./a.gguf\n")
    assert modelfile_path(gguf) == tmp_path / "b.gguf.Modelfile"  # another export's
    (tmp_path / "Modelfile").write_text("FROM llama3.2\nPARAMETER temperature 0.2\n")
    assert modelfile_path(gguf) == tmp_path / "b.gguf.Modelfile"  # the user's own
    (tmp_path / "b.gguf.Modelfile").write_text(MODELFILE_HEADER + "FROM ./b.gguf\n")
    assert modelfile_path(gguf) == tmp_path / "b.gguf.Modelfile"  # an earlier export's: replaced
    (tmp_path / "b.gguf.Modelfile").write_text("FROM ./b.gguf\nPARAMETER temperature 0.2\n")
    with pytest.raises(ConfigError, match="holds a Modelfile and a b.gguf.Modelfile that an export did not"):
        modelfile_path(gguf)  # both the user's: neither is replaced


def test_an_adapter_is_found_from_a_job_folder_or_named_as_it_is(tmp_path, monkeypatch):
    from openrft.cli.export import resolve_adapter
    from openrft.errors import JobError

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    job_dir = tmp_path / "myjob"
    (job_dir / "output").mkdir(parents=True)
    (job_dir / "output" / "adapter_config.json").write_text("{}")
    assert resolve_adapter(str(job_dir)) == job_dir / "output"  # a job folder: its output adapter
    assert resolve_adapter(str(job_dir / "output")) == job_dir / "output"
    with pytest.raises(JobError, match="no job with id 'nothing-here' and no folder"):
        resolve_adapter("nothing-here")
    monkeypatch.setenv("OPENRFT_SERVER", "http://127.0.0.1:9")  # the job may be the server's
    with pytest.raises(JobError) as remote:
        resolve_adapter("nothing-here")
    assert "models.get_download_endpoint" in remote.value.hint and "openrft rftj list)" in remote.value.hint
    running = tmp_path / "running"
    running.mkdir()
    (running / "job.json").write_text("{}")  # a job folder whose job has not written its adapter yet
    with pytest.raises(JobError, match="is a job folder without a trained adapter yet"):
        resolve_adapter(str(running))


def test_an_adapter_from_another_machine_says_to_name_its_base_model_here(tmp_path):
    from openrft.errors import ModelError
    from openrft.train.export import find_base_model

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/srv/models/tiny"}))
    with pytest.raises(ModelError) as missing:
        find_base_model(tmp_path)
    assert "/srv/models/tiny" in missing.value.message and "pass --base-model" in missing.value.hint


QA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% else %}A: {{ m['content'] }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
)


def test_a_running_jobs_checkpoint_exports_with_the_jobs_stops_template_and_name(
    adapter, tmp_path, tiny_model_dir, capsys
):
    import gguf

    from openrft.config import build_config

    job = tmp_path / "jobs" / "nightly-7f3a"  # a generated id: job.json holds no --job-id
    cfg, _ = build_config({}, {"dataset": "arithmetic", "base_model": str(tiny_model_dir),
                               "stop": ["</answer>"], "chat_template": QA_TEMPLATE})  # fmt: skip
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps(cfg.to_dict()))
    checkpoint = job / "checkpoints" / "step-000001" / "adapter"
    shutil.copytree(adapter[0], checkpoint)
    out = tmp_path / "out"
    assert main(["export", str(checkpoint), "--merged", str(out / "m"), "--gguf", str(out / "m.gguf")]) == 0
    modelfile = (out / "Modelfile").read_text()
    assert 'PARAMETER stop "</answer>"' in modelfile
    assert not [line for line in modelfile.splitlines() if line.startswith("TEMPLATE")]  # none to guess
    assert "Ollama does not run the chat template stored in the GGUF file" in modelfile.replace("\n# ", " ")
    assert (
        "warning: Modelfile: the chat template is not one openrft writes a TEMPLATE for"
        in capsys.readouterr().err
    )
    assert (out / "m" / "chat_template.jinja").read_text() == QA_TEMPLATE  # the job's, not the base model's
    reader = gguf.GGUFReader(out / "m.gguf")
    assert reader.fields["general.name"].contents() == "nightly-7f3a"
    assert reader.fields["tokenizer.chat_template"].contents() == QA_TEMPLATE


def test_a_stored_jobs_adapter_is_refused_or_warned_of_by_what_the_job_did(tmp_path, monkeypatch, capsys):
    from openrft.cli.export import resolve_adapter
    from openrft.config import build_config
    from openrft.errors import JobError
    from openrft.jobs.states import JobState
    from openrft.jobs.store import JobStore

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    store = JobStore()
    for job_id, final in (("broke", JobState.FAILED), ("flat", JobState.EARLY_STOPPED)):
        store.create(job_id, build_config({}, {"dataset": "arithmetic", "job_id": job_id})[0])
        store.transition(job_id, JobState.VALIDATING)
        store.transition(job_id, JobState.RUNNING)
        store.transition(job_id, final)
    with pytest.raises(JobError, match="job broke has no trained adapter \\(it is FAILED\\)") as failed:
        resolve_adapter("broke")
    assert "rftj resume" in failed.value.hint
    output = store.get("flat").job_dir / "output"
    output.mkdir()
    (output / "adapter_config.json").write_text("{}")
    store.set_output("flat", output)
    assert resolve_adapter("flat") == output
    assert "after 0 steps: its adapter is the untrained one" in capsys.readouterr().err
