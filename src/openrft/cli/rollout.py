"""Sub-commands ``openrft rollout`` (sample a few completions) and ``openrft serve`` (OpenAI-compatible server).

Sampling flags are validated with the job config's own ranges (:class:`openrft.config.RolloutConfig`),
so ``openrft rollout --temperature 5`` fails exactly as ``openrft rftj create --temperature 5`` does.
Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from openrft import config as C
from openrft.cli.evaluate import field_help, port_number
from openrft.net import bare_host, is_loopback, listen_problem, url_host
from openrft.rollout import DEFAULT_MAX_CONCURRENT

ROLLOUT_DEFAULTS = {"response_candidates_count": 4, "max_output_tokens": 256}


def register(subparsers: Any, rftj_subparsers: Any = None) -> None:
    """Add ``rollout`` and ``serve`` to the top-level command parser."""
    ro = subparsers.add_parser(
        "rollout",
        help="Sample completions for a prompt from a base model (and optional LoRA adapter).",
        description="Sample N completions for one prompt with the local engine and print them "
        "with their finish reasons.",
    )
    ro.add_argument(
        "--prompt", required=True, action="append", help="User message (repeat for more prompts)."
    )
    _system_flag(ro)
    _model_flags(ro)
    ro.add_argument(
        "--n", "--response-candidates-count", dest="response_candidates_count", type=int, metavar="N",
        default=ROLLOUT_DEFAULTS["response_candidates_count"],
        help=f"Responses sampled for each prompt. Valid: a whole number >= 2. "
        f"Default: {ROLLOUT_DEFAULTS['response_candidates_count']}.",
    )  # fmt: skip
    ro.add_argument(
        "--max-output-tokens", dest="max_output_tokens", type=int, metavar="TOKENS",
        default=ROLLOUT_DEFAULTS["max_output_tokens"],
        help=field_help("max_output_tokens", ROLLOUT_DEFAULTS["max_output_tokens"]),
    )  # fmt: skip
    sampling_value_flags(ro)
    ro.add_argument("--seed", type=int, help="Sampling seed (default: random).")
    ro.add_argument(
        "--json", action="store_true", help="Print one JSON record per completion instead of text."
    )
    ro.set_defaults(handler=cmd_rollout)

    sv = subparsers.add_parser(
        "serve",
        help="Serve a base model (and optional LoRA adapter) as an OpenAI-compatible completions API.",
        description="Expose the local engine over HTTP (/v1/chat/completions, /v1/responses, "
        "/v1/completions, /v1/models, /v1/load_lora_adapter) for OpenAI-style clients, agents and "
        "--rollout-engine endpoint. With --adapter, 'policy' and the adapter's name (a job's id) answer "
        "with the adapter, the base model's own name without it.",
    )
    _model_flags(sv)
    sv.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1).")
    sv.add_argument("--port", type=port_number, default=8000, help="Port to listen on (default 8000).")
    sv.add_argument(
        "--served-model-name", metavar="NAME", help="Model name clients send (default: --base-model)."
    )
    sv.add_argument(
        "--lora-modules", nargs="+", default=[], metavar="NAME=ADAPTER",
        help="More LoRA adapters served beside the model, each under its name (vLLM's flag): NAME=FOLDER or "
        "NAME=JOB_ID; a bare JOB_ID or folder is served under the job's id or the folder's name.",
    )  # fmt: skip
    sv.add_argument(
        "--api-key", action="append", default=[], metavar="KEY",
        help="A key clients must send as 'Authorization: Bearer KEY' (the openai SDK's api_key) on /v1 routes "
        "(repeatable; also OPENRFT_API_KEYS, comma-separated). Default: none, no check.",
    )  # fmt: skip
    _system_flag(sv)
    sv.set_defaults(handler=cmd_serve)


def sampling_value_flags(parser: Any) -> None:
    """``--temperature``, ``--top-p``, ``--top-k`` and ``--stop``, absent unless given (the job config's
    checks and defaults apply): for ``rollout`` and ``eval``."""
    for name, kind in (("temperature", float), ("top_p", float), ("top_k", int)):
        parser.add_argument(
            C.flag_name(name), dest=name, type=kind, default=argparse.SUPPRESS, metavar=name.split("_")[-1].upper(),
            help=field_help(name),
        )  # fmt: skip
    parser.add_argument(
        "--stop", dest="stop", action="append", metavar="TEXT", default=argparse.SUPPRESS, help=field_help("stop")
    )  # fmt: skip


def _system_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--system",
        metavar="TEXT",
        help="System message placed before the messages of each prompt or chat request that has none "
        "(the built-in tasks' prompts carry their own: see docs/eval.md). Default: none.",
    )


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", metavar="MODEL", default=None, help=field_help("base_model"))
    parser.add_argument(
        "--adapter", metavar="DIR|JOB", help="LoRA adapter applied to the model: a folder (PEFT format), "
        "or a job id or job folder (its trained adapter)."
    )  # fmt: skip
    parser.add_argument(
        "--max-concurrent-rollouts", dest="max_concurrent_rollouts", type=int, default=argparse.SUPPRESS,
        metavar="N", help=f"Sequences decoded together (throughput only). Valid: a whole number >= 1. Default: {DEFAULT_MAX_CONCURRENT}.",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=argparse.SUPPRESS, metavar="DEVICE",
        help="Where the model samples: auto (the first CUDA device when there is one, else the CPU), cpu, cuda "
        "or cuda:N. Default: auto.",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default=argparse.SUPPRESS, metavar="DTYPE",
        help="Precision of the base weights: auto (bfloat16 on a CUDA GPU that computes in it, Ampere or later; "
        "else float32), float32 or bfloat16. Default: auto.",
    )  # fmt: skip


def _validated(args: argparse.Namespace) -> C.RolloutConfig:
    """The sampling, device and dtype flags checked against the job config's ranges (ConfigError on bad
    values); ``args.device`` and ``args.dtype`` are then resolved (auto: the GPU when there is one)."""
    from openrft.models import resolve_device

    names = ("temperature", "top_p", "top_k", "response_candidates_count", "max_output_tokens", "stop")
    values = {
        name: getattr(args, name)
        for name in (*names, "max_concurrent_rollouts", "device", "dtype")
        if hasattr(args, name)
    }
    cfg, _ = C.build_config({}, values)
    args.device, args.dtype = resolve_device(cfg.training.device, cfg.training.dtype)
    return cfg.rollout


def _engine(args: argparse.Namespace, rollout: C.RolloutConfig | None):
    from transformers.utils import logging as hf_logging

    from openrft.models import adapter_base_model, load_adapter, load_model
    from openrft.rollout.local import LocalEngine

    hf_logging.disable_progress_bar()
    if args.adapter:
        from openrft.cli.export import resolve_adapter

        args.adapter = str(resolve_adapter(args.adapter))
    base = (
        args.base_model
        or (adapter_base_model(args.adapter) if args.adapter else None)
        or C.DEFAULT_BASE_MODEL
    )
    model, tokenizer = load_model(base, dtype=args.dtype, device=args.device)
    if args.adapter:
        model = load_adapter(model, args.adapter)
    concurrency = rollout.max_concurrent_rollouts if rollout else None
    return base, LocalEngine(model, tokenizer, max_concurrent_rollouts=concurrency)


def cmd_rollout(args: argparse.Namespace) -> int:
    from openrft.records import Prompt, SamplingParams
    from openrft.rollout.prompts import with_system

    rollout = _validated(args)
    base, engine = _engine(args, rollout)
    prompts = [
        Prompt(str(i), tuple(with_system([{"role": "user", "content": text}], args.system)))
        for i, text in enumerate(args.prompt)
    ]
    params = SamplingParams(
        n=rollout.response_candidates_count,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        max_tokens=rollout.max_output_tokens,
        seed=args.seed,
        stop=rollout.stop,
    )
    groups = engine.generate(prompts, params)
    for prompt, group in zip(prompts, groups, strict=True):
        if not args.json:
            print(f"=== prompt {prompt.prompt_id}: {prompt.messages[-1]['content']}")
        for c in group:
            if args.json:
                print(json.dumps(asdict(c)))
                continue
            mean = sum(c.logprobs) / max(1, len(c.logprobs))
            print(
                f"--- candidate {c.candidate_index}  finish={c.finish_reason}  "
                f"tokens={len(c.completion_token_ids)}  mean_logprob={mean:.3f}"
            )
            print(c.text)
    sys.stdout.flush()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from openrft.errors import ConfigError
    from openrft.rollout.server import serve
    from openrft.server.settings import keys_from_env

    rollout = _validated(args)
    args.host = bare_host(args.host)
    if problem := listen_problem(args.host, args.port):
        raise ConfigError(problem)
    base, engine = _engine(args, rollout)
    short = Path(str(base).rstrip("/")).name or str(base)
    if args.adapter:  # policy = base + adapter, under the adapter's name; the base under its own
        folder = Path(args.adapter)
        # a job's adapter lives in its "output" folder: name it after the job instead
        name = args.served_model_name or (folder.parent.name if folder.name == "output" else folder.name)
        names = {"base_adapter": "default", "aliases": ["policy", str(args.adapter)], "base_name": short}
    else:
        name = args.served_model_name or short
        names = {"aliases": ["policy", str(base)]}
    if args.system:
        names["system_prompt"] = args.system
    if args.lora_modules:
        names["adapters"] = _lora_modules(args.lora_modules)
    keys = [*args.api_key, *keys_from_env()]
    if keys:
        names["api_keys"] = list(dict.fromkeys(keys))
    elif not is_loopback(args.host):
        print(f"openrft serve: listening on {args.host} with no API key: anyone who can reach it may use "
              "the model and load adapters from this machine's files (--api-key KEY)", file=sys.stderr)  # fmt: skip
    served = ", ".join(dict.fromkeys([name, *names["aliases"], *([short] if args.adapter else [])]))
    print(f"openrft serve: {served} on http://{url_host(args.host)}:{args.port}/v1", file=sys.stderr)
    serve(engine, name, args.host, args.port, **names)
    return 0


def _lora_modules(specs: list[str]) -> dict[str, str]:
    """``--lora-modules`` as ``{name: adapter folder}``: ``NAME=FOLDER|JOB`` or a bare job id or folder."""
    from openrft.cli.export import resolve_adapter
    from openrft.errors import ConfigError

    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        target = target if sep else name
        folder = resolve_adapter(target)
        if not sep:  # a job's adapter lives in its "output" folder: name it after the job
            name = folder.parent.name if folder.name == "output" else folder.name
        if not name or name in adapters:
            raise ConfigError(f"--lora-modules: {spec!r} needs a name of its own (NAME=ADAPTER)")
        adapters[name] = str(folder)
    return adapters


__all__ = ["register", "cmd_rollout", "cmd_serve", "sampling_value_flags"]
