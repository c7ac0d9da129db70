"""``openrft export ID|DIR --merged OUT --gguf OUT.gguf``: a trained adapter as a standalone model.

Registered by :mod:`openrft.cli`; the handler imports torch and transformers only when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError, JobError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # openrft.train.gguf_export.OUT_TYPES, without importing it

DESCRIPTION = """\
Merge a trained LoRA adapter into its base model and write it as a model that needs neither
peft nor openrft:

  --merged OUT       a Hugging Face model folder (safetensors, tokenizer, chat template) for
                     transformers (AutoModelForCausalLM.from_pretrained) and `vllm serve OUT`
  --gguf OUT.gguf    one GGUF file for llama.cpp and Ollama (Llama-family and Qwen2 models), with an
                     Ollama Modelfile written beside it

The adapter is a job id (see `openrft rftj list`) or an adapter folder; the base model is read
from the adapter folder unless --base-model names it.
"""


def register(subparsers: Any, rftj_subparsers: Any = None) -> None:
    """Add ``export`` to the top-level command parser."""
    p = subparsers.add_parser(
        "export",
        help="Merge a trained adapter into its base model: a model folder (transformers, vLLM) or GGUF.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="ID|DIR", help="A job id, a job folder, or an adapter folder.")
    p.add_argument("--merged", metavar="OUT", help="Write the merged model as a Hugging Face model folder.")
    p.add_argument("--gguf", metavar="OUT.gguf", help="Write the merged model as a GGUF file (+ Modelfile).")
    p.add_argument(
        "--base-model", metavar="MODEL", help="The base model (default: the one the adapter was trained on)."
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="Weight type of --merged (default auto: the base model's own).",
    )
    p.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        default="f16",
        help="Weight type of --gguf's matrices (default f16; norms stay f32).",
    )
    p.set_defaults(handler=cmd_export)


def resolve_adapter(target: str) -> Path:
    """The adapter folder of a job id, a job folder, or an adapter folder."""
    from openrft.jobs.states import JobState
    from openrft.jobs.store import JobStore, missing_job_hint
    from openrft.paths import output_dir

    store = JobStore()
    if store.exists(target):
        record = store.get(target)
        folder = record.output_dir or output_dir(record.job_dir, record.flat_config().get("output_model"))
        if not (folder / "adapter_config.json").is_file():
            if record.state.is_active:
                said, hint = (
                    "yet",
                    "export it once it has COMPLETED, or pass one of its checkpoints' adapter folders",
                )
            else:
                said, hint = (
                    f"(it is {record.state})",
                    "resume it (openrft rftj resume), or pass an adapter folder",
                )
            raise JobError(f"job {target} has no trained adapter {said}; expected it in {folder}", hint=hint)
        if not record.steps:
            print(f"warning: job {target} is {record.state} after 0 steps: its adapter is the untrained one, "
                  "the base model's own answers", file=sys.stderr)  # fmt: skip
        elif record.state not in (JobState.COMPLETED, JobState.EARLY_STOPPED):
            print(f"warning: job {target} is {record.state} after {record.steps} steps: its adapter is the one "
                  "it had then, not a finished training", file=sys.stderr)  # fmt: skip
        return folder
    path = Path(target).expanduser()
    if not (path / "adapter_config.json").is_file() and (path / "output" / "adapter_config.json").is_file():
        return path / "output"  # a job folder
    if not path.exists():
        hint = missing_job_hint()
        if os.environ.get("OPENRFT_SERVER"):  # a server's job: its adapter comes down as a model first
            hint += "; a server's adapter is downloaded with the SDK's models.get_download_endpoint (docs/server.md)"
        raise JobError(f"no job with id {target!r} and no folder {target}", hint=hint)
    if (path / "job.json").is_file() and not (path / "adapter_config.json").is_file():
        raise JobError(f"{path} is a job folder without a trained adapter yet (no output/adapter_config.json)",
                       hint="export a job once it has COMPLETED, or pass an adapter folder")  # fmt: skip
    return path


def cmd_export(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from openrft.train.export import export_adapter

    if not args.merged and not args.gguf:
        raise ConfigError("nothing to export: give --merged OUT, --gguf OUT.gguf, or both")
    if args.gguf and not str(args.gguf).endswith(".gguf"):
        raise ConfigError(f"--gguf {args.gguf}: the file name must end in .gguf")
    hf_logging.disable_progress_bar()
    adapter = resolve_adapter(args.target)
    print(f"adapter: {adapter}", file=sys.stderr)
    result = export_adapter(
        adapter,
        merged=Path(args.merged) if args.merged else None,
        gguf=Path(args.gguf) if args.gguf else None,
        base_model=args.base_model,
        dtype=args.dtype,
        gguf_type=args.gguf_type,
    )
    print(f"base model: {result.base_model} (merged in {result.seconds['merge']:.1f}s)", file=sys.stderr)
    if result.merged is not None:  # in the order they were written
        print(f"merged: {result.merged} ({result.seconds['merged']:.1f}s)")
    if result.gguf is not None:
        size = result.gguf.bytes / 2**20
        print(
            f"gguf: {result.gguf.path} ({result.gguf.tensors} tensors, {result.gguf.out_type}, {size:.1f} MiB, "
            f"{result.seconds['gguf']:.1f}s); Ollama: {result.modelfile}"
        )
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 0


__all__ = ["register", "cmd_export", "resolve_adapter"]
