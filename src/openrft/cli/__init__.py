"""The ``openrft`` command line: flags -> validated config -> jobs. No ML logic lives here.

Sub-commands shaped like the managed service's CLI::

    openrft rftj create [flags]        (alias: reinforcement-fine-tuning-job)
    openrft rftj list | get ID | cancel ID | resume ID | ...
    openrft quickstart

Other modules add their own sub-commands through :data:`COMMAND_MODULES`: each
exposes ``register(subparsers)`` and keeps heavy imports (torch, transformers)
inside the functions it runs, so ``openrft --help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from openrft import config as C
from openrft.console import quiet_known_warnings
from openrft.errors import ConfigError, OpenRFTError
from openrft.models import warm_start_values
from openrft.paths import openrft_home

RFTJ_ALIASES = ("rftj", "reinforcement-fine-tuning-job")
# Modules that add top-level sub-commands (rollout, serve, evaluate, data, ...).
COMMAND_MODULES = (
    "openrft.cli.rollout",
    "openrft.cli.evaluate",
    "openrft.cli.eval_models",
    "openrft.cli.jobs",
    "openrft.cli.preflight",
    "openrft.cli.export",
    "openrft.cli.server",
    "openrft.cli.remote",  # after openrft.cli.jobs: adds --server to the job commands it registers
)

Handler = Callable[[argparse.Namespace], int | None]


# ----------------------------------------------------------------------------- job flags


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped like the config; help text = the field description."""
    for group_name, model in C.GROUPS.items():
        group = parser.add_argument_group(f"{group_name} parameters", model.__doc__)
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra or {}
            flags = [C.flag_name(name), *extra.get("flags", [])]
            default = info.default
            shown = "unset" if default is None else default
            help_text = info.description or ""
            if extra.get("valid"):
                help_text += f" Valid: {extra['valid']}."
            kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
            if info.annotation is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
                help_text += f" Default: {'on' if default else 'off'}."
            elif info.annotation == tuple[str, ...]:
                kwargs.update(action="append", metavar="TEXT")
                help_text += " Default: none."
            else:
                kwargs["metavar"] = (
                    name.split("_")[-1].upper() if name != "response_candidates_count" else "N"
                )
                if "default" not in (info.description or "").lower():  # else the description says it
                    help_text += f" Default: {shown}."
                if name == "eval_auto_carveout":
                    kwargs.update(nargs="?", const="0.1")
                    help_text += " The flag alone carves out 0.1."
            group.add_argument(*flags, help=help_text.replace("%", "%%"), **kwargs)


NEGATIVE_VALUE = re.compile(r"-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|-(?:inf|infinity|nan)", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--flag -1e-5`` -> ``--flag=-1e-5``: argparse reads only ``-1``-like words as negative numbers
    and would take ``-1e-5`` or ``-inf`` for an unknown option, printing the usage instead of the
    flag's own one-line refusal."""
    out: list[str] = []
    for word in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and NEGATIVE_VALUE.fullmatch(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def config_from_args(args: argparse.Namespace) -> tuple[C.JobConfig, dict[str, str]]:
    file_values = C.load_job_file(args.config) if getattr(args, "config", None) else {}
    return C.build_config(file_values, flag_values(args))


def print_resolved(
    cfg: C.JobConfig, sources: dict[str, str], out=None, inherited: dict[str, Any] | None = None
) -> None:
    """Every parameter with its value and where it came from (default, config file, flag, or, for
    ``inherited`` values of parameters left unset, the evaluator's header; a warm start's base model,
    LoRA rank and alpha are its adapter's)."""
    from openrft.algo.losses import LOSS_METHODS
    from openrft.tracking.compare import shown_value

    out = out or sys.stdout
    masked = cfg.to_dict()
    kept = warm_start_values(cfg.training.warm_start_from)
    rows = []
    for group in C.GROUPS:
        for name, value in masked[group].items():
            source = sources[name]
            if value is None and (inherited or {}).get(name) is not None:
                value, source = inherited[name], "evaluator header"  # type: ignore[index]
            if kept.get(name) is not None:
                value, source = kept[name], "warm-start adapter"
            shown = shown_value(value)
            if name == "rl_kl_beta" and not value and cfg.loss.rl_loss_method == "grpo":
                shown = f"{value} (grpo applies its built-in {LOSS_METHODS['grpo'].defaults.kl_coef:g})"
            if "\n" in shown:  # a chat template: its first characters, on one line
                shown = repr(shown)[:57] + "..."
            rows.append((group, C.flag_name(name)[2:], shown, source))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'group':<{width[0]}}  {'parameter':<{width[1]}}  {'value':<{width[2]}}  source", file=out)
    for group, name, value, source in rows:
        print(f"{group:<{width[0]}}  {name:<{width[1]}}  {value:<{width[2]}}  {source}", file=out)


def warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


# ----------------------------------------------------------------------------- commands


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The job parameters set on this command line (unset flags are absent)."""
    return {name: getattr(args, name) for name in C.FIELD_GROUP if hasattr(args, name)}


def cmd_create(args: argparse.Namespace) -> int:
    from openrft.jobs import runner

    cfg, sources = config_from_args(args)
    warn(C.advise(cfg))
    if args.dry_run:
        if args.resume_from:
            # the job it would continue, with what the flags change (refused as a resume would)
            from openrft.jobs.resume_from import resume_target_config

            resumed = resume_target_config(args.resume_from, getattr(args, "config", None), flag_values(args))
            if resumed is not None:
                given = set(flag_values(args))
                cfg, sources = resumed, {name: "flag" if name in given else "the job" for name in sources}
        prepared = None if args.resume_from else runner.validate(cfg)  # everything short of loading the model
        if prepared is not None:
            from openrft.cli.preflight import dry_run_warnings

            warn(dry_run_warnings(prepared))  # the preflight's checks that need no sampling
        engine = prepared.settings.engine if prepared is not None else None
        inherited = {
            name: getattr(engine, name) for name in ("max_concurrent_rollouts", "max_concurrent_evaluations")
        } if engine is not None else {}  # fmt: skip
        if prepared is not None and cfg.data.dataset is None:  # from the evaluator's input_dataset
            inherited["dataset"] = prepared.dataset.source
        print_resolved(cfg, sources, inherited=inherited or None)
        if prepared is not None and prepared.memory is not None:
            print("\n" + "\n".join(prepared.memory.lines()))
        return 0
    return runner.create_and_run(
        cfg,
        detach=bool(getattr(args, "detach", False)),
        quiet=args.quiet,
        resume_from=args.resume_from,
        config_file=args.config,
        flag_values=flag_values(args),
    )


def cmd_quickstart(args: argparse.Namespace) -> int:
    from openrft.jobs.quickstart import main as quickstart

    return quickstart(rounds=args.rounds, quiet=args.quiet, task=args.task)


def _optional(module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


# ----------------------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    """argparse's refusals as one line naming the flag, and a hint, instead of the usage block."""

    # the root's: the command line being parsed (set by main), to name its sub-command
    words: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        line = message.removeprefix("argument ")
        if line.endswith(": expected one argument"):  # `--job-id -lead`: argparse took the value for a flag
            flag = line.split(":")[0].split("/")[-1]
            line = (
                line.removesuffix("one argument")
                + f"a value (one that starts with '-' is written {flag}=VALUE)"
            )
        self.exit(2, f"{line}\nhint: `{_command(self, self.words)} --help` lists what it takes\n")


def _command(parser: argparse.ArgumentParser, words: Sequence[str]) -> str:
    """The deepest sub-command ``words`` name (``openrft rftj list``), for a refusal's hint."""
    for word in words:
        children = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if word in children:
            parser = children[word]
    return parser.prog


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openrft")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "(not installed)"


def build_parser() -> Parser:
    parser = Parser(
        prog="openrft",
        description="Self-hosted reinforcement fine-tuning (GRPO, DAPO, GSPO-token) of language models with LoRA.",
    )
    parser.add_argument("--version", action="version", version=f"openrft {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rftj = sub.add_parser(
        RFTJ_ALIASES[0],
        aliases=list(RFTJ_ALIASES[1:]),
        help="Create and manage reinforcement fine-tuning jobs.",
    )
    rftj_sub = rftj.add_subparsers(dest="rftj_command", metavar="ACTION")
    rftj_sub.required = True
    create = rftj_sub.add_parser("create", help="Validate and run a reinforcement fine-tuning job.")
    create.add_argument(
        "--config",
        metavar="FILE",
        help="Job file (.yaml/.json) whose keys mirror the flags; flags override it.",
    )
    create.add_argument("--dry-run", action="store_true", help="Validate, print the resolved job and exit.")
    create.add_argument("--quiet", action="store_true", help="No progress bar.")
    create.add_argument(
        "--resume-from", metavar="ID_OR_DIR", help="Continue an earlier job from its last checkpoint."
    )
    add_job_flags(create)
    create.set_defaults(handler=cmd_create)

    quick = sub.add_parser("quickstart", help="Train the embedded model on a built-in task.")
    quick.add_argument(
        "--task",
        choices=("arithmetic", "calculator"),
        default="arithmetic",
        help="arithmetic: answers in tags (default); calculator: multi-turn, with a calculator tool.",
    )
    from openrft.cli.evaluate import positive_int

    quick.add_argument(
        "--rounds", type=positive_int, help="Rollout rounds to train, >= 1 (default: a 2-core budget)."
    )
    quick.add_argument("--quiet", action="store_true", help="No progress bar.")
    quick.set_defaults(handler=cmd_quickstart)

    for module in COMMAND_MODULES:
        register = _optional(module, "register")
        if register is not None:
            register(sub, rftj_sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Flags only as spelled: argparse would take ``--wandb-api`` for ``--wandb-api-key`` (and W&B
    would then record the key it was not told to hide), or ``--lora`` for whichever flag it prefixes."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _no_abbreviations(child)


def _value_flags(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Every option, in any sub-command, that takes a value: whether it takes several (``nargs="+"``)."""
    flags: dict[str, bool] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                flags |= _value_flags(child)
        elif action.nargs != 0:
            several = action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1
            flags.update((o, several) for o in action.option_strings if o.startswith("--"))
    return flags


def _flag_values(argv: Sequence[str], takes_value: dict[str, bool]) -> Iterator[tuple[str, str]]:
    """``(flag, value)`` for every value given to a flag: ``--f=v``, ``--f v``, and each of a
    several-valued flag's words up to the next option (``--lora-modules a=x b=y``)."""
    for i, word in enumerate(argv):
        flag, eq, value = word.partition("=")
        if eq and flag in takes_value:
            yield flag, value
        elif not eq and word in takes_value and not takes_value[word]:
            yield from ((word, later) for later in argv[i + 1 : i + 2])
        elif not eq and word in takes_value:
            for later in argv[i + 1 :]:
                if later.startswith("-") and len(later) > 1:
                    break
                yield word, later


def blank_value(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The refusal of a flag given an empty or blank value (``--evaluator ""``), or None: such a value
    was taken for the flag left out, so a job ran with something other than what was typed."""
    for flag, value in _flag_values(argv, _value_flags(parser)):
        if not value.strip() and (not value or flag not in TEXT_FLAGS):
            return f"{flag}: an empty value; give one, or leave the flag out"
    return None


TEXT_FLAGS = ("--stop", "--system", "--prompt")  # whitespace is text there ("\n" ends a reply)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a command as Ctrl-C does (its clean-up runs: an evaluator's worker processes are
    stopped rather than left running), where nothing else handles it; a command that handles it (a job's
    graceful stop, a server) installs its own handler inside."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    default = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    previous = signal.signal(signal.SIGTERM, interrupt) if default else None
    try:
        yield
    finally:
        if default:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    # How idle OpenMP threads wait between parallel regions (docs/benchmarks.md, "defaults"):
    # sleeping (OMP_WAIT_POLICY=PASSIVE) pays a wake-up at every region, 1.6x the training time of a
    # whole job on 2 cores; spinning without bound makes small ops crawl when more threads than
    # cores compete. libgomp's short spin (GOMP_SPINCOUNT 10000, well under a millisecond) keeps
    # the first and halves the second. Set before torch is imported; the environment wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    # Kernels that torch.compile builds (the local engine's compiled step on a GPU) are kept where a
    # later or resumed job finds them, instead of compiling again (~30-60 s a shape), and where a
    # cleaned /tmp (inductor's default) does not take them. The environment wins.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(openrft_home() / "cache" / "inductor"))
    quiet_known_warnings()
    parser = build_parser()
    words = attach_negative_values(list(sys.argv[1:] if argv is None else argv))
    parser.words = words  # (a sub-command's parser names itself; the root's walks these to it)
    args = parser.parse_args(words)
    if blank := blank_value(parser, words):
        print(blank, file=sys.stderr)
        return 2
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        with terminate_as_interrupt():
            return int(handler(args) or 0)
    except OpenRFTError as exc:
        print(exc.message, file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `openrft rftj list | head -1`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter shutdown quiet
        return 0
    except OSError as exc:  # a path the user gave that cannot be read or written: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        full = exc.errno == errno.ENOSPC or _out_of_space(exc)
        print(f"{where}{'no space left on the disk' if full else exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _out_of_space(exc):
            raise
        print(f"no space left on the disk ({type(exc).__name__}: {str(exc).splitlines()[0]}); free space and "
              "run it again (anything written before is left as it was)", file=sys.stderr)  # fmt: skip
        return 1


def _out_of_space(exc: BaseException) -> bool:
    """A full disk reported by a library in its own words (safetensors' SafetensorError, tokenizers, gguf)."""
    text = str(exc)
    return (
        "No space left on device" in text
        or "os error 28" in text
        or "requested and" in text
        and "written" in text
    )


__all__ = ["main", "build_parser", "add_job_flags", "config_from_args", "ConfigError"]
