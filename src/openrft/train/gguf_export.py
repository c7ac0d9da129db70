"""Write a merged Llama-family or Qwen2 model as one GGUF file for llama.cpp and Ollama.

The layout follows llama.cpp's own converter (``convert_hf_to_gguf.py``), with the ``gguf``
package doing the writing: tensor names come from gguf's tensor name map for
``MODEL_ARCH.LLAMA`` (or ``QWEN2``, whose q/k/v biases it names too); Llama's query and key
projections are permuted into the interleaved rotary layout llama.cpp expects (the inverse of
what the GGUF reader in transformers undoes when :mod:`openrft.models` converts the embedded
model), Qwen2's stay as they are (llama.cpp runs it with NeoX-style rotary); 1-D tensors (norms,
biases) stay float32;
the tokenizer is written as a GPT-2 style BPE vocabulary with its merges, token types,
special token ids and chat template.

Tensors are converted one at a time while the file is written, so memory stays at the merged
model plus one tensor. The file appears under its name only once complete.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openrft.errors import ExportError
from openrft.paths import temporary_beside

# model type -> gguf's MODEL_ARCH name (llama.cpp's converter treats Mistral as Llama too); Llama's
# q/k weights are permuted into llama.cpp's interleaved rotary layout, Qwen2's (NeoX rotary) are not
GGUF_ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}
ARCHITECTURES = tuple(GGUF_ARCHS)
# --gguf-type -> (tensor type of 2-D weights, general.file_type)
OUT_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
             "q8_0": ("Q8_0", "MOSTLY_Q8_0")}  # fmt: skip
READABLE = 0o644  # a temporary file is created 0600
# llama.cpp's pre-tokenizer names by model name (what llama.cpp's converter finds for them); any
# other model's is read off its tokenizer's own pre-tokenizer (pre_tokenizer_name)
PRE_TOKENIZERS = {"smollm2-135m-instruct": "smollm"}
# The split patterns of Llama 3's and Qwen2's tokenizer.json, which llama.cpp's "llama-bpe" and "qwen2"
# pre-tokenizers apply (they differ in the digits: runs of up to three against one at a time)
_SPLIT_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLIT_QWEN2 = _SPLIT_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_BY_STEPS: dict[tuple, str] = {
    (("byte-level", True),): "gpt-2",  # GPT-2's own regex inside the byte-level step
    (("digits", True), ("byte-level", True)): "smollm",  # digits one by one, then GPT-2's regex
    (("split", _SPLIT_LLAMA3), ("byte-level", False)): "llama-bpe",
    (("split", _SPLIT_QWEN2), ("byte-level", False)): "qwen2",
}


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    tensors: int
    bytes: int
    out_type: str


EXPORT_KEY = "openrft.export"  # metadata of a GGUF that openrft wrote: a later export may replace it


def written_by_openrft(path: Path) -> bool:
    """Whether the GGUF file at ``path`` carries :data:`EXPORT_KEY` (False for anything unreadable)."""
    import gguf

    try:
        return gguf.GGUFReader(path).get_field(EXPORT_KEY) is not None
    except Exception:  # noqa: BLE001 - not a GGUF, a truncated one, a directory: not ours
        return False


def check_supported(config: Any) -> None:
    """Raise :class:`ExportError` unless a model with ``config`` can be written as GGUF."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        archs = ", ".join(getattr(config, "architectures", None) or [str(model_type)])
        raise ExportError(
            f"cannot write {archs} (model_type {model_type!r}) as GGUF: only Llama-family and Qwen2 models "
            f"({', '.join(sorted(ARCHITECTURES))}) are supported",
            hint="export with --merged only, and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    if getattr(config, "sliding_window", None) and model_type == "mistral":
        raise ExportError("cannot write a Mistral model with sliding-window attention as GGUF")
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ExportError("cannot write a Qwen2 model with sliding-window attention as GGUF")
    rope_type = _rope(config)[1].get("rope_type", "default")
    if rope_type not in ("default", "linear", "llama3"):
        raise ExportError(f"cannot write a model with {rope_type!r} rotary scaling as GGUF")


def check_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer``; an :class:`ExportError` unless it is a GPT-2 style byte-level BPE (what ``gpt2`` means in GGUF).

    SentencePiece-style tokenizers (Llama 2, Mistral 7B) need llama.cpp's own converter.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    decoders = [decoder, *(decoder.get("decoders") or [])]
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or not any(d.get("type") == "ByteLevel" for d in decoders)
    ):
        kind = model.get("type") or type(tokenizer).__name__
        raise ExportError(
            f"cannot write this tokenizer ({kind}{', byte fallback' if model.get('byte_fallback') else ''}) "
            "as GGUF: only GPT-2 style byte-level BPE tokenizers are supported",
            hint="export with --merged only, and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    return tokenizer


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the way ``tokenizer`` splits text before BPE, read off its pre-tokenizer;
    an :class:`ExportError` when llama.cpp has none that splits the same way (its "default" would
    tokenize differently from training)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = (json.loads(backend.to_str()) if backend is not None else {}).get("pre_tokenizer") or {}
    steps = spec.get("pretokenizers") or [] if spec.get("type") == "Sequence" else [spec]
    summary = tuple(_pre_step(step) for step in steps)
    name = _PRE_BY_STEPS.get(summary)
    if name is None:
        raise ExportError(
            f"cannot write this tokenizer as GGUF: llama.cpp has no pre-tokenizer known to split text as "
            f"it does ({' + '.join(str(s[0]) for s in summary) or 'none'})",
            hint="export with --merged only, and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    return name


def _pre_step(step: dict[str, Any]) -> tuple[Any, ...]:
    kind = step.get("type")
    if kind == "ByteLevel":
        return ("byte-level", bool(step.get("use_regex", True)))
    if kind == "Digits":
        return ("digits", bool(step.get("individual_digits")))
    if kind == "Split" and str(step.get("behavior", "")).lower() == "isolated" and not step.get("invert"):
        return ("split", (step.get("pattern") or {}).get("Regex"))
    return (kind or "unknown",)


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    """``(theta, scaling parameters)`` from a transformers 5 (rope_parameters) or 4 (rope_scaling) config."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    theta = params.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return float(theta), params


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


# ----------------------------------------------------------------------------- metadata


def _hyperparameters(writer: Any, config: Any, file_type: Any, name: str) -> None:
    import gguf

    writer.add_type("model")
    writer.add_name(name)
    writer.add_string(EXPORT_KEY, "written by openrft export; a later export may replace this file")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    theta, scaling = _rope(config)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(file_type)
    writer.add_vocab_size(int(config.vocab_size))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocab(writer: Any, tokenizer: Any, vocab_size: int, pre: str) -> None:
    """Tokens, token types, merges, special ids and chat template, as llama.cpp's converter writes them."""
    import gguf

    check_tokenizer(tokenizer)
    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:  # the embedding matrix is larger than the vocabulary
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = decoder[i].special if i in decoder else False
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # SpecialVocab reads a saved tokenizer folder
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ExportError(
            "the tokenizer has no BPE merges: only GPT-2 style BPE tokenizers can be written as GGUF"
        )
    if tokenizer.pad_token_id is not None:
        special.special_token_ids.setdefault("pad", int(tokenizer.pad_token_id))
    bos = tokenizer.bos_token_id
    special.add_special_token["bos"] = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    if special.chat_template is None and isinstance(tokenizer.chat_template, str):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


# ----------------------------------------------------------------------------- tensors


def permute_rotary(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's q/k permutation: each head's two rotary halves become interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _llama3_rope_factors(config: Any) -> Any:
    """The ``rope_freqs`` tensor llama.cpp uses for Llama 3.1-style rotary scaling."""
    import torch

    theta, scaling = _rope(config)
    dim = _head_dim(config)
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs.tolist():
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _named_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """``(gguf name, float32 tensor)`` for every weight, permuted where llama.cpp needs it."""
    import gguf

    config = model.config
    arch = gguf_arch(config)
    name_map = gguf.get_tensor_name_map(arch, int(config.num_hidden_layers))
    permute = arch == gguf.MODEL_ARCH.LLAMA
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if _rope(config)[1].get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_factors(config)
    for key, tensor in model.state_dict().items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(
                f"cannot write tensor {key!r} as GGUF: llama.cpp's {arch.name.title()} layout has no place for it"
            )
        data = tensor.detach().float()
        if permute and key.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_rotary(data, n_head, n_head)
        elif permute and key.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_rotary(data, n_head, n_kv)
        yield name, data


def gguf_arch(config: Any) -> Any:
    """gguf's ``MODEL_ARCH`` a model with ``config`` is written as."""
    import gguf

    return gguf.MODEL_ARCH[GGUF_ARCHS[config.model_type]]


def _tensor_type(shape: tuple[int, ...], wanted: Any) -> Any:
    """1-D tensors stay F32 (as in llama.cpp); a row that does not fit a quant block falls back to F16."""
    import gguf

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def _add_tensor_info(writer: Any, name: str, shape: tuple[int, ...], qtype: Any) -> None:
    import gguf

    kind = gguf.GGMLQuantizationType
    if qtype in (kind.F32, kind.F16):
        dtype = np.float32 if qtype == kind.F32 else np.float16
        writer.add_tensor_info(name, shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize)
        return
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype)


# ----------------------------------------------------------------------------- writing


def _remove_stale_temporaries(path: Path) -> None:
    """Half-written files an export killed before ``path`` left beside it (their writer is dead)."""
    from openrft.paths import pid_alive

    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.gguf.tmp"):
        pid = stale.name.rsplit(".", 3)[-3]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)


def write_gguf(
    model: Any, tokenizer: Any, path: Path, *, out_type: str = "f16", name: str = "", pre: str | None = None
) -> GgufSummary:
    """Write ``model`` (a merged Llama-family or Qwen2 causal LM) and ``tokenizer`` to the GGUF file ``path``;
    ``pre``: llama.cpp's pre-tokenizer name (default: :func:`pre_tokenizer_name` of ``tokenizer``)."""
    import gguf

    check_supported(model.config)
    if out_type not in OUT_TYPES:
        raise ExportError(f"unknown GGUF type {out_type!r}; expected one of {', '.join(OUT_TYPES)}")
    wanted = gguf.GGMLQuantizationType[OUT_TYPES[out_type][0]]
    file_type = gguf.LlamaFileType[OUT_TYPES[out_type][1]]
    _remove_stale_temporaries(path)
    fd, tmp = temporary_beside(path, suffix=f".{os.getpid()}.gguf.tmp")
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf_arch(model.config)])
    pre = pre or pre_tokenizer_name(tokenizer)
    try:
        _hyperparameters(writer, model.config, file_type, name or path.stem)
        _vocab(writer, tokenizer, int(model.config.vocab_size), pre)
        plan = [(n, tuple(t.shape)) for n, t in _named_tensors(model)]
        types = {n: _tensor_type(shape, wanted) for n, shape in plan}
        for n, shape in plan:
            _add_tensor_info(writer, n, shape, types[n])
        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for n, data in _named_tensors(model):  # converted one at a time, in the planned order
            writer.write_tensor_data(gguf.quants.quantize(data.numpy(), types[n]))
        writer.close()
        os.chmod(tmp, READABLE)  # llama.cpp or Ollama may run as another user
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return GgufSummary(path=path, tensors=len(plan), bytes=path.stat().st_size, out_type=out_type)


__all__ = [
    "ARCHITECTURES", "GGUF_ARCHS", "OUT_TYPES", "gguf_arch", "PRE_TOKENIZERS", "GgufSummary", "pre_tokenizer_name", "check_supported", "check_tokenizer", "write_gguf",
]  # fmt: skip
