"""Turn a trained LoRA adapter into a standalone model, for inference without peft or openrft.

* ``merged``: the base model with the adapter folded into its weights (peft's
  ``merge_and_unload``), saved as a Hugging Face model folder (safetensors, config, tokenizer,
  chat template, generation config) that ``AutoModelForCausalLM.from_pretrained`` and
  ``vllm serve`` load directly.
* ``gguf``: the same merged weights as one GGUF file for llama.cpp and Ollama
  (:mod:`openrft.train.gguf_export`), with an Ollama ``Modelfile`` beside it
  (:mod:`openrft.train.ollama`).

The base model is found from the adapter folder: the ``job.json`` openrft writes next to it
names it as the job did (e.g. ``smollm2-135m-instruct``), and PEFT's ``adapter_config.json``
records the folder it was loaded from.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError, ModelError
from openrft.models import (
    EMBEDDED,
    adapter_base_model,
    check_model_available,
    load_adapter,
    load_config,
    load_model,
    load_tokenizer,
    prepare_tokenizer,
    readable_by_older_transformers,
    resolve_model_dir,
)
from openrft.paths import atomic_directory, atomic_write_text
from openrft.train.gguf_export import (
    PRE_TOKENIZERS,
    READABLE,
    GgufSummary,
    check_supported,
    check_tokenizer,
    pre_tokenizer_name,
    write_gguf,
    written_by_openrft,
)
from openrft.train.ollama import MODELFILE_HEADER, chat_format, render_modelfile

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ExportResult:
    base_model: str
    merged: Path | None = None
    gguf: GgufSummary | None = None
    modelfile: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def job_folder(adapter_dir: Path) -> Path | None:
    """The folder holding the ``job.json`` of the job that wrote ``adapter_dir``: the adapter's own
    (a job's output folder has a copy), or for a checkpoint (``JOB/checkpoints/step-N/adapter``, what a
    running job has) its job's folder."""
    if (adapter_dir / "job.json").is_file():
        return adapter_dir
    if adapter_dir.name == "adapter" and adapter_dir.parent.parent.name == "checkpoints":
        job = adapter_dir.parent.parent.parent
        return job if (job / "job.json").is_file() else None
    return None


def _job_config(adapter_dir: Path) -> dict[str, Any]:
    folder = job_folder(adapter_dir)
    try:
        value = json.loads((folder / "job.json").read_text()) if folder is not None else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def job_name(adapter_dir: Path) -> str | None:
    """The job's id: as given (``--job-id``), else its folder's name (a job in the store, or a checkpoint
    of one); None for an adapter that no job folder holds."""
    given = _job_config(adapter_dir).get("training", {}).get("job_id")
    if given:
        return str(given)
    folder = job_folder(adapter_dir)
    if folder is not None and folder != adapter_dir:  # a checkpoint's job
        return folder.name
    parent = adapter_dir.parent
    return parent.name if adapter_dir.name == "output" and (parent / "job.json").is_file() else None


def find_base_model(adapter_dir: Path, override: str | None = None) -> str:
    """The base model of the adapter in ``adapter_dir`` that is available here.

    Tried in order: ``override``; the job's ``base_model`` (job.json, unless the job started from
    another adapter: its ``base_model`` is then only the default); the folder PEFT recorded
    (adapter_config.json), or the embedded model's short name when that folder was its
    converted copy on another machine. The first candidate's error is raised when none loads.
    """
    if override:
        check_model_available(override)
        return override
    candidates = []
    training = _job_config(adapter_dir).get("training", {})
    job_base = training.get("base_model")
    # a warm-started job's base_model is only the default: the adapter records the model it trained
    if isinstance(job_base, str) and job_base and not training.get("warm_start_from"):
        candidates.append(job_base)
    recorded = adapter_base_model(adapter_dir)
    if recorded:
        candidates.append(recorded)
        if Path(recorded).name in EMBEDDED:
            candidates.append(Path(recorded).name)
    if not candidates:
        raise ModelError(
            f"the adapter in {adapter_dir} does not say which base model it was trained on",
            hint="pass --base-model NAME_OR_DIR",
        )
    first_error: ModelError | None = None
    for name in dict.fromkeys(candidates):
        try:
            check_model_available(name)
            return name
        except ModelError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise ModelError(first_error.message, hint=f"{first_error.hint + '; ' if first_error.hint else ''}the adapter "
                     "records the base model as the machine that trained it named it: pass --base-model NAME_OR_DIR "
                     "for that model here")  # fmt: skip


def check_adapter_dir(adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)",
            hint="pass a job id (openrft rftj list) or the output folder of a job",
        )
    return adapter_dir


def merge_adapter(adapter_dir: Path, base_model: str) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the base model in float32 with the adapter merged into its weights.

    The tokenizer is the one saved with the adapter (the one training used), else the base model's
    with the job's ``--chat-template`` when it had one (a checkpoint's adapter has no tokenizer beside it).
    """
    import torch

    model, tokenizer = load_model(base_model, dtype=torch.float32)
    peft_model = load_adapter(model, adapter_dir)
    merged = peft_model.merge_and_unload()
    merged.eval()
    if (adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True))
    elif template := _job_config(adapter_dir).get("training", {}).get("chat_template"):
        tokenizer.chat_template = template
    return merged, tokenizer


def _save_dtype(config: Any, dtype: str) -> Any:
    """The weight type to save: ``dtype``, or with ``auto`` the one ``config`` (the base model's own,
    as stored, not the loaded model's float32) records."""
    import torch

    if dtype == "auto":
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(stored, torch.dtype):
            return stored
        dtype = stored if isinstance(stored, str) and stored in DTYPES[1:] else "float32"
    return getattr(torch, dtype)


EXPORT_MARK = ".openrft-export"  # in a merged folder: a later export may replace the folder


def check_export_target(out: Path, inputs: list[Path], *, folder: bool) -> None:
    """Refuse an output that would replace something of the user's: an input of the export (the
    adapter, the base model), anything inside one, or, for a merged folder, a file or a non-empty
    folder that an earlier export did not write."""
    out = Path(out).expanduser().resolve()
    what = "--merged" if folder else "--gguf"
    for source in inputs:
        source = source.expanduser().resolve()
        if out == source or source.is_relative_to(out) or out.is_relative_to(source):
            raise ConfigError(
                f"{what} {out}: this is (or holds, or is inside) an input of the export, {source}"
            )
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"{what} {out}: {blocked} is a file, not a folder to write in")
    writable = next((p for p in [out, *out.parents] if p.is_dir()), None)
    if writable is not None and not can_write_in(writable):
        raise ConfigError(f"{what} {out}: {writable} cannot be written (read-only, or not yours)",
                         hint=f"give a {'folder' if folder else 'file'} somewhere you can write")  # fmt: skip
    if folder and out.is_file():
        raise ConfigError(f"{what} {out}: a file is there; give a folder to create")
    if folder and out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARK).is_file():
        raise ConfigError(
            f"{what} {out}: the folder exists and is not an earlier export; give a new folder",
            hint="an export replaces only a folder that an earlier export wrote",
        )
    if not folder and out.is_dir():
        raise ConfigError(f"{what} {out}: a folder is there; give a file name")
    if not folder and out.exists() and not written_by_openrft(out):
        raise ConfigError(
            f"{what} {out}: the file exists and is not an earlier export; give a new file name",
            hint="an export replaces only a GGUF file that an earlier export wrote",
        )


def save_merged(model: Any, tokenizer: Any, out: Path, dtype: str = "auto", config: Any = None) -> Path:
    """Save the merged ``model`` and ``tokenizer`` as a model folder at ``out`` (replaced atomically);
    with ``dtype="auto"`` in the weight type of ``config`` (the base model's stored config)."""
    save_as = _save_dtype(config if config is not None else model.config, dtype)
    with atomic_directory(Path(out)) as tmp:
        (tmp / EXPORT_MARK).write_text("written by openrft export; a later export may replace this folder\n")
        model.to(save_as)
        try:
            model.save_pretrained(tmp)
        finally:
            model.float()  # back to float32 for anything written after
        tokenizer.save_pretrained(tmp)
        readable_by_older_transformers(tmp)  # vLLM may be built on transformers 4
        for path in tmp.iterdir():  # transformers writes the weights 0600; vLLM may run as another user
            if path.is_file():
                path.chmod(READABLE)
    return Path(out)


def pre_tokenizer(base: str, tokenizer: Any) -> str:
    """llama.cpp's pre-tokenizer name for base model ``base``: by its name, or by the folder the
    embedded model is converted into (what an adapter's config records); else read off ``tokenizer``
    (an :class:`ExportError` when llama.cpp has none that splits text the same way)."""
    return PRE_TOKENIZERS.get(base) or PRE_TOKENIZERS.get(Path(base).name) or pre_tokenizer_name(tokenizer)


def job_stop_strings(adapter_dir: Path) -> list[str]:
    stops = _job_config(adapter_dir).get("rollout", {}).get("stop") or []
    return [s for s in stops if isinstance(s, str) and s]


def export_adapter(
    adapter_dir: Path,
    *,
    merged: Path | None = None,
    gguf: Path | None = None,
    base_model: str | None = None,
    dtype: str = "auto",
    gguf_type: str = "f16",
) -> ExportResult:
    """Merge the adapter in ``adapter_dir`` into its base model and write the forms asked for."""
    adapter_dir = check_adapter_dir(adapter_dir)
    base = find_base_model(adapter_dir, base_model)
    inputs = [adapter_dir, resolve_model_dir(base)]
    if merged is not None:
        check_export_target(merged, inputs, folder=True)
    if gguf is not None:
        check_export_target(gguf, inputs, folder=False)
        modelfile = modelfile_path(Path(gguf).expanduser())  # (refused now if both names are the user's)
        if merged is not None and _overlaps(Path(gguf), Path(merged)):
            raise ConfigError(f"--gguf {gguf}: the same path as --merged {merged} (or a folder above it); "
                             "give each its own (a GGUF file may go inside the merged folder)")  # fmt: skip
        check_supported(load_config(base))  # before the merge: fail fast on an unsupported model
        pre_tokenizer(base, check_tokenizer(load_tokenizer(base)))  # refused before the merge
    result = ExportResult(base_model=base)
    start = time.perf_counter()
    model, tokenizer = merge_adapter(adapter_dir, base)
    result.seconds["merge"] = time.perf_counter() - start
    if merged is not None:  # first: a GGUF written inside the merged folder must not be replaced
        start = time.perf_counter()
        result.merged = save_merged(model, tokenizer, Path(merged).expanduser(), dtype, load_config(base))
        result.seconds["merged"] = time.perf_counter() - start
    if gguf is not None:
        start = time.perf_counter()
        gguf = Path(gguf).expanduser()
        name = job_name(adapter_dir) or gguf.stem
        result.gguf = write_gguf(
            model,
            tokenizer,
            gguf,
            out_type=gguf_type,
            name=str(name),
            pre=pre_tokenizer(base, tokenizer),
        )
        result.modelfile = modelfile
        atomic_write_text(
            result.modelfile,
            render_modelfile(gguf.name, tokenizer, job_stop_strings(adapter_dir), result.modelfile.name),
        )
        result.modelfile.chmod(READABLE)
        if chat_format(tokenizer) is None:
            result.warnings.append(
                f"{result.modelfile.name}: the chat template is not one openrft writes a TEMPLATE for (ChatML, Llama 3, "
                "Gemma), and Ollama does not run the one stored in the GGUF file; add a TEMPLATE in the "
                "format the job trained with (llama.cpp uses the stored one)"
            )
        result.seconds["gguf"] = time.perf_counter() - start
    return result


def modelfile_path(gguf: Path) -> Path:
    """``Modelfile`` beside the GGUF file, unless one is there that is not for this file (the user's
    own, or another export's): then ``<gguf name>.Modelfile``, so that nothing is overwritten (a
    ``ConfigError`` when that one is not an export's either)."""
    plain = gguf.parent / "Modelfile"
    if not plain.exists() or _our_modelfile(plain, gguf):
        return plain
    named = gguf.parent / f"{gguf.name}.Modelfile"
    if named.exists() and not _our_modelfile(named, gguf):
        raise ConfigError(
            f"--gguf {gguf}: its folder holds a Modelfile and a {named.name} that an export did not write",
            hint="give the GGUF file another name or folder; an export replaces only its own Modelfile",
        )
    return named


def _our_modelfile(path: Path, gguf: Path) -> bool:
    """Whether ``path`` is the Modelfile an export wrote for ``gguf``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return text.startswith(MODELFILE_HEADER) and f"FROM ./{gguf.name}\n" in text


def can_write_in(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)  # (a read-only file system too, even for root)


def _overlaps(gguf: Path, merged: Path) -> bool:
    gguf, merged = gguf.expanduser().resolve(), merged.expanduser().resolve()
    return gguf == merged or merged.is_relative_to(gguf)


__all__ = [
    "DTYPES", "ExportResult", "check_adapter_dir", "export_adapter", "find_base_model", "merge_adapter",
    "save_merged",
]  # fmt: skip
