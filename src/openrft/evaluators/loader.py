"""Find and load an evaluator from a ``--evaluator`` spec.

Specs:

- ``path/to/file.py::function``: a function in a Python file;
- ``path/to/file.py``: the file's only evaluator (an error names the candidates
  when there are several);
- ``package.module:function``: a function in an importable module;
- a built-in name: ``arithmetic``, ``gsm8k`` or ``math``, optionally with weights
  (``arithmetic:partial_weight=0,format_weight=0.3``).
- an OpenAI grader spec: inline JSON (``{"type": "string_check", ...}``) or a ``.json``,
  ``.yaml`` or ``.yml`` file holding one (:mod:`openrft.evaluators.graders`).

Three kinds of function are recognised, in this order:

1. decorated with openrft's :func:`~openrft.evaluators.protocol.evaluation_test`;
2. decorated with ``eval_protocol.pytest.evaluation_test`` (needs the optional
   ``eval-protocol`` package; the function is called with eval-protocol's own
   ``EvaluationRow`` objects);
3. a plain function ``def reward(completion: str, **row_fields) -> float``; TRL's
   ``f(completions, **columns)``; verl's ``compute_score(data_source, solution_str, ground_truth,
   extra_info)`` (any function with a ``solution_str`` parameter).

In a file without ``::function``, only decorated functions count when there are
any; otherwise public functions of the file whose first parameter is named
``completion`` do. Every failure (missing file, syntax error, import error,
missing function, wrong signature) is an :class:`EvaluatorError` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from openrft.data.tasks.code import is_code_row
from openrft.errors import ConfigError, EvaluatorError, OpenRFTError
from openrft.evaluators import builtin
from openrft.evaluators.base import Evaluator, RolloutSpec
from openrft.evaluators.protocol import HEADER_ATTR, MODES, EvaluatorHeader, check_row_signature
from openrft.paths import no_bytecode, user_module_spec

PLAIN_FIRST_PARAMS = ("completion", "completions")
EP_HINT = "install the optional extra: pip install 'openrft[eval-protocol]'"
# eval-protocol imports litellm, which otherwise fetches a price list from the internet at
# import time (and, offline, retries in a background thread that can deadlock the import).
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


# ----------------------------------------------------------------------------- public


def load_evaluator(
    spec: str | None,
    *,
    dataset: str | None = None,
    grader_endpoint: str | None = None,
    grader_model: str | None = None,
) -> Evaluator:
    """Load ``spec`` (see the module docstring); ``None`` = the default evaluator for ``dataset``.

    An OpenAI grader spec (inline JSON, or a .json/.yaml/.yml file) is loaded by
    :mod:`openrft.evaluators.graders`; ``grader_endpoint``/``grader_model`` serve its model graders.
    The result remembers how to load it again (``spec``, with a file's path made absolute).
    """
    from openrft.evaluators.graders import load_grader, looks_like_grader

    if spec and looks_like_grader(spec):
        evaluator = load_grader(spec, endpoint=grader_endpoint, model=grader_model)
        text = spec.strip()
        spec = text if text.startswith("{") else str(Path(text).expanduser().resolve())
        return dataclasses.replace(evaluator, spec=spec, spec_dataset=dataset)
    if spec is None or not spec.strip():  # the dataset's built-in, named so that workers load it again
        spec = default_evaluator_name(dataset)
    evaluator = _load(spec, dataset)
    if spec and ("::" in spec or spec.strip().endswith(".py")):
        path_text, sep, name = spec.strip().partition("::")
        spec = str(Path(path_text).expanduser().resolve()) + sep + name
    return dataclasses.replace(evaluator, spec=spec or "", spec_dataset=dataset)


def _load(spec: str | None, dataset: str | None) -> Evaluator:
    if spec is None or not spec.strip():
        spec = default_evaluator_name(dataset)
    spec = spec.strip()
    if spec in builtin.BUILTINS:
        return builtin.BUILTINS[spec]()
    name, _, options = spec.partition(":")
    if name in builtin.BUILTINS and "=" in options:
        return builtin.BUILTINS[name](**builtin.parse_weights(name, options))
    if "::" in spec or spec.endswith(".py"):
        path_text, _, name = spec.partition("::")
        path = Path(path_text)
        module = import_file(path)
        return _from_module(module, name or None, origin=str(path), base_dir=path.resolve().parent)
    if ":" in spec:
        module_name, _, name = spec.rpartition(":")
        if module_name.endswith(".py") and Path(module_name).is_file():  # file.py:function, one colon short
            raise EvaluatorError(
                f"evaluator {spec!r}: a function in a file is named with two colons",
                hint=f"--evaluator {module_name}::{name}",
            )
        module = _import_module(module_name)
        return _from_module(module, name, origin=module_name, base_dir=Path.cwd())
    raise EvaluatorError(
        f"unknown evaluator {spec!r}",
        hint=f"use path/to/file.py::function, package.module:function, or a built-in ({', '.join(builtin.BUILTINS)})",
    )


def default_evaluator_name(dataset: str | None) -> str:
    """The built-in evaluator for a dataset: its rows' ``task`` field, or the built-in task name."""
    from openrft.data import is_builtin, read_jsonl

    if dataset is None or is_builtin(dataset):
        return dataset.partition(":")[0] if dataset else "arithmetic"
    if not Path(dataset).exists() and (Path(dataset).suffix or "/" in dataset):  # a file that is not there
        raise ConfigError(f"--dataset: {dataset}: no such file", field="dataset")
    if Path(dataset).is_file():
        for _, row in read_jsonl(dataset)[:1]:
            if isinstance(row, dict):
                task = row.get("task") or ("gsm8k" if {"question", "answer"} <= row.keys() else None)
                task = task or ("math" if {"problem", "solution"} <= row.keys() else None)
                task = task or ("code" if is_code_row(row) else None)
                if task in builtin.BUILTINS:
                    return task
    raise EvaluatorError(
        f"no evaluator given, and the dataset {dataset} is not a built-in task",
        hint="pass --evaluator path/to/file.py::function (or module:function)",
    )


def as_evaluator(obj: Any, name: str, *, origin: str = "", base_dir: Path | None = None) -> Evaluator:
    """Wrap one object found in a module (decorated function, plain function, or Evaluator)."""
    if isinstance(obj, Evaluator):
        return obj
    if hasattr(obj, "__ep_params__"):
        return _from_eval_protocol(obj, name, origin, base_dir)
    header = getattr(obj, HEADER_ATTR, None)
    if isinstance(header, EvaluatorHeader):
        check_row_signature(obj, header.mode, name)
        return Evaluator(
            name=name,
            fn=obj,
            mode=header.mode,
            max_concurrent_rollouts=header.max_concurrent_rollouts,
            max_concurrent_evaluations=header.max_concurrent_evaluations,
            input_dataset=_resolve_dataset(header.input_dataset, base_dir),
            dataset_adapter=header.dataset_adapter,
            source=origin,
        )
    if callable(obj) and not isinstance(obj, type) and _is_trl_reward(obj):
        # TRL's reward function: f(completions, prompts=..., **columns) -> one float (or None) per completion
        return Evaluator(name=name, fn=obj, kind="trl", mode="groupwise", source=origin)
    if callable(obj) and not isinstance(obj, type) and "solution_str" in _parameters(obj):
        # verl's compute_score(data_source, solution_str, ground_truth, extra_info) -> float or {"score": ...}
        return Evaluator(name=name, fn=obj, kind="verl", source=origin)
    if callable(obj) and not isinstance(obj, type) and _takes_messages(obj):
        if getattr(obj, "_reward_function_mode", "pointwise") != "pointwise":
            raise EvaluatorError(
                f"{origin}: {name!r} is a batch @reward_function; openrft runs pointwise ones"
            )
        return Evaluator(name=name, fn=obj, kind="messages", source=origin)
    if callable(obj) and not isinstance(obj, type):
        _check_plain_signature(obj, name)
        return Evaluator(name=name, fn=obj, kind="plain", source=origin)
    raise EvaluatorError(f"{origin}: {name!r} is not a function (it is a {type(obj).__name__})")


# ----------------------------------------------------------------------------- importing


def import_file(path: Path) -> ModuleType:
    """Execute a Python file as a fresh module; its folder is put on sys.path for sibling imports."""
    if not path.is_file():
        raise EvaluatorError(f"evaluator file not found: {path}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"_openrft_evaluator_{resolved.stem}_{digest}"
    spec = user_module_spec(module_name, resolved)
    if spec is None or spec.loader is None:
        raise EvaluatorError(f"cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    _offline_env()
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, SystemExit):  # the file ended the interpreter while being imported
            raise EvaluatorError(
                f"importing the evaluator {path} failed: it called sys.exit({exc.code!r})"
            ) from None
        if not isinstance(exc, Exception):
            raise
        raise _import_error(exc, str(path), resolved) from None
    return module


def _import_module(module_name: str) -> ModuleType:
    _offline_env()
    try:
        with no_bytecode():  # a user's module: its folder stays as it was
            return importlib.import_module(module_name)
    except Exception as exc:
        raise _import_error(exc, module_name, None) from None


def _offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _import_error(exc: Exception, origin: str, resolved: Path | None) -> EvaluatorError:
    if isinstance(exc, SyntaxError) and not isinstance(exc, OpenRFTError):
        where = f"{exc.filename or origin}:{exc.lineno}" if exc.lineno else origin
        return EvaluatorError(f"{where}: syntax error in the evaluator: {exc.msg}")
    if isinstance(exc, OpenRFTError):
        return EvaluatorError(f"{origin}: {exc.message}", hint=exc.hint)
    hint = None
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "eval_protocol":
        hint = EP_HINT
    line = ""
    if resolved is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == resolved]
        if frames:
            line = f" (line {frames[-1].lineno})"
    return EvaluatorError(
        f"importing the evaluator {origin} failed{line}: {type(exc).__name__}: {exc}", hint=hint
    )


# ----------------------------------------------------------------------------- picking


def _from_module(module: ModuleType, name: str | None, *, origin: str, base_dir: Path) -> Evaluator:
    if name:
        if not hasattr(module, name):
            found = ", ".join(sorted(_candidates(module, every=True))) or "none"
            raise EvaluatorError(
                f"{origin} has no function {name!r} (evaluators found there: {found})",
            )
        return as_evaluator(getattr(module, name), name, origin=origin, base_dir=base_dir)
    candidates = _candidates(module)
    if not candidates:
        raise EvaluatorError(
            f"no evaluator found in {origin}",
            hint="decorate a function with @evaluation_test(...) or define "
            "def reward(completion: str, **row_fields) -> float",
        )
    if len(candidates) > 1:
        names = ", ".join(sorted(candidates))
        raise EvaluatorError(
            f"{origin} has {len(candidates)} evaluators ({names}): name one",
            hint=f"e.g. --evaluator {origin}::{sorted(candidates)[0]}",
        )
    (only,) = candidates.items()
    evaluator = as_evaluator(only[1], only[0], origin=origin, base_dir=base_dir)
    found = _candidates(module, every=True)
    others = tuple(sorted(name for name, fn in found.items() if name != only[0] and _takes_row(fn)))
    return dataclasses.replace(evaluator, passed_over=others) if others else evaluator


def passed_over_note(evaluator: Evaluator) -> str | None:
    """One line when ``--evaluator FILE`` chose the file's decorated function over other ones it holds."""
    if not evaluator.passed_over:
        return None
    origin = evaluator.spec.partition("::")[0] or evaluator.source
    return (f"--evaluator {origin}: scoring with {evaluator.name}(), the file's decorated evaluator; its "
            f"other functions that could score ({', '.join(evaluator.passed_over)}) are not used: pass "
            f"{origin}::NAME to choose one")  # fmt: skip


def _candidates(module: ModuleType, *, every: bool = False) -> dict[str, Any]:
    """Decorated evaluators in the module; if none, its public ``f(completion, ...)`` functions (with
    ``every``: all of these kinds together, what a ``::NAME`` may name)."""
    decorated: dict[str, Any] = {}
    seen: set[int] = set()
    for attr, obj in vars(module).items():
        if attr.startswith("_") or id(obj) in seen:
            continue
        if hasattr(obj, "__ep_params__") or isinstance(getattr(obj, HEADER_ATTR, None), EvaluatorHeader):
            decorated[attr] = obj
            seen.add(id(obj))
    if decorated and not every:
        return decorated
    plain: dict[str, Any] = {}
    other: dict[str, Any] = {}  # reward-kit's f(messages, ...) and verl's f(..., solution_str, ...)
    for attr, obj in vars(module).items():
        if attr.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
            continue
        params = list(inspect.signature(obj).parameters)
        if params and (
            params[0] in PLAIN_FIRST_PARAMS or (attr == "compute_score" and "solution_str" in params)
        ):
            plain[attr] = obj  # verl names its reward function compute_score
        elif params and (params[0] == "messages" or "solution_str" in params):
            other[attr] = obj
    if every:
        return {**decorated, **plain, **other}
    return plain or other  # the other kinds only where the file has no f(completion, ...)


def _takes_row(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes more than the response (row fields, by name or ``**``): an evaluator, where
    ``parse(completion)`` is a helper."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) > 1 or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _is_trl_reward(fn: Callable[..., Any]) -> bool:
    """TRL passes its reward functions every argument by keyword, in no order: one that names
    ``completions`` anywhere, or starts with ``prompts`` or ``completion_ids`` (TRL's own examples
    ``f(prompts, completions, ...)`` and ``f(completion_ids, **kwargs)``), is one."""
    names = _parameters(fn)
    return "completions" in names or bool(names) and names[0] in ("prompts", "completion_ids")


def _takes_messages(fn: Callable[..., Any]) -> bool:
    """A reward-kit style function, ``evaluate(messages, ground_truth=None, **kwargs)`` (often under
    ``@reward_function``): it scores the whole conversation, the response as its last message."""
    if hasattr(fn, "_reward_function_mode"):
        return True
    try:
        first = next(iter(inspect.signature(fn).parameters), None)
    except (TypeError, ValueError):
        return False
    return first == "messages"


def _parameters(fn: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _check_plain_signature(fn: Callable[..., Any], name: str) -> None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise EvaluatorError(f"evaluator {name!r} has no readable signature: {exc}") from None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    later_positional_only = [p for p in params[1:] if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if not params or params[0].kind not in kinds or later_positional_only:
        raise EvaluatorError(
            f"evaluator {name!r} has the wrong signature {name}{inspect.signature(fn)}",
            hint="a plain evaluator is def reward(completion: str, **row_fields) -> float; "
            "or decorate a row evaluator with @evaluation_test(mode='pointwise')",
        )


def _from_eval_protocol(obj: Any, name: str, origin: str, base_dir: Path | None) -> Evaluator:
    """A function decorated with eval-protocol's own ``@evaluation_test``."""
    try:
        from eval_protocol.models import EvaluationRow as EPRow
        from eval_protocol.pytest.default_dataset_adapter import default_dataset_adapter
    except ImportError:
        raise EvaluatorError(
            f"{origin}: {name!r} uses eval-protocol, which is not installed", hint=EP_HINT
        ) from None
    params = obj.__ep_params__
    mode = str(getattr(params, "mode", "pointwise"))
    if mode not in MODES:
        raise EvaluatorError(
            f"{origin}: {name!r} uses mode={mode!r}; openrft runs 'pointwise' and 'groupwise' evaluators"
        )
    fn = getattr(obj, "_origin_func", None)
    if fn is None:
        raise EvaluatorError(f"{origin}: cannot find the function inside eval-protocol's wrapper of {name!r}")
    datasets = getattr(params, "input_dataset", None)
    if isinstance(datasets, str):
        datasets = [datasets]
    adapter = getattr(params, "dataset_adapter", None)
    return Evaluator(
        rollout=_rollout_spec(params, name, origin, base_dir),
        name=name,
        fn=fn,
        mode=mode,  # type: ignore[arg-type]
        max_concurrent_rollouts=_set_by_user(params, "max_concurrent_rollouts", fn),
        max_concurrent_evaluations=_set_by_user(params, "max_concurrent_evaluations", fn),
        input_dataset=_joined_datasets([_resolve_dataset(d, base_dir) for d in datasets or []])
        or _inline_rows(params),
        dataset_adapter=None if adapter is default_dataset_adapter else adapter,
        row_cls=EPRow,
        call_by_keyword=True,
        source=origin,
        call_kwargs=_first_dict(getattr(params, "evaluation_test_kwargs", None)),
        completion_params=_first_dict(getattr(params, "completion_params", None)),
    )


def _set_by_user(params: Any, name: str, fn: Callable[..., Any]) -> int | None:
    """A concurrency the file set; eval-protocol records its own default (96) when the file sets none,
    and that is no request of the user's: openrft's defaults apply then. A 96 the decorator spells
    out is the user's."""
    from eval_protocol.pytest.evaluation_test import evaluation_test

    value = getattr(params, name, None)
    default = inspect.signature(evaluation_test).parameters[name].default
    if value is None or (value == default and name not in _decorator_keywords(fn)):
        return None
    return int(value)


def _decorator_keywords(fn: Callable[..., Any]) -> set[str]:
    """The keyword arguments written in ``fn``'s decorator calls, read from its source file."""
    import ast

    try:
        tree = ast.parse(Path(inspect.getsourcefile(fn) or "").read_text(encoding="utf-8"))
    except (OSError, TypeError, SyntaxError, ValueError):
        return set()
    return {
        keyword.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == fn.__name__
        for decorator in node.decorator_list
        if isinstance(decorator, ast.Call)
        for keyword in decorator.keywords
        if keyword.arg
    }


def _first_dict(values: Any) -> dict[str, Any]:
    """The first parameter set of a decorator argument that eval-protocol takes as a list of them."""
    if isinstance(values, dict):
        return dict(values)
    return next((dict(v) for v in values or () if isinstance(v, dict)), {})


def _inline_rows(params: Any) -> str | None:
    """The rows a file gives in code (``input_messages``: lists of messages, or ``input_rows``:
    EvaluationRows) as a JSONL under ``$OPENRFT_HOME/cache``, the dataset when none is named."""
    import json

    rows: list[dict[str, Any]] = []
    for group in getattr(params, "input_messages", None) or ():
        for messages in group or ():
            dumped = [m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else m for m in messages]
            rows.append({"messages": dumped})
        break  # the first parameter set, as for completion_params
    for group in getattr(params, "input_rows", None) or ():
        rows.extend(r.model_dump(exclude_none=True, mode="json") for r in group or ())
        break
    if not rows:
        return None
    return _cached_dataset("inline", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _cached_dataset(stem: str, text: str) -> str:
    from openrft.paths import atomic_write_text, openrft_home

    target = (
        openrft_home()
        / "cache"
        / "datasets"
        / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    )
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    return str(target)


def _joined_datasets(paths: list[str | None]) -> str | None:
    """One dataset for an evaluator that lists several files: their rows in order, as eval-protocol
    combines them, in one file under ``$OPENRFT_HOME/cache`` (made again when a file changes)."""
    paths = [p for p in paths if p]
    if len(paths) <= 1:
        return paths[0] if paths else None
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        return missing[0]  # loading it names the file that is not there
    texts = [Path(p).read_text(encoding="utf-8-sig") for p in paths]
    joined = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
    return _cached_dataset(f"{Path(paths[0]).stem}+{len(paths) - 1}", joined)


# Processors whose rollout is one sampled reply to the row's messages: openrft's own sampling
# does exactly that (with the job's parameters), so these need no agent run.
SINGLE_TURN_PROCESSORS = ("NoOpRolloutProcessor", "SingleTurnRolloutProcessor")


# Processors that roll out somewhere else (another service, a CI runner, a hosted sampler), whose
# model calls never reach the job's policy server: nothing they return could be trained on.
ELSEWHERE_PROCESSORS = ("RemoteRolloutProcessor", "GithubActionRolloutProcessor", "TinkerRolloutProcessor")


def _rollout_spec(params: Any, name: str, origin: str, base_dir: Path | None) -> RolloutSpec | None:
    """The file's rollout processor, when its rollouts are more than one sampled reply."""
    processor = getattr(params, "rollout_processor", None)
    if processor is None or type(processor).__name__ in SINGLE_TURN_PROCESSORS:
        return None
    if (kind := type(processor).__name__) in ELSEWHERE_PROCESSORS:
        raise EvaluatorError(
            f"{origin}: {name!r} rolls out with {kind}, which runs each rollout on another service whose "
            "model calls never reach the policy being trained, so there is nothing to train on",
            hint="use AgentRolloutProcessor (with mcp_config_path) or MCPGymRolloutProcessor, or write the "
            "rollout as an --agent that calls the policy",
        )
    config = getattr(params, "mcp_config_path", None)
    if config:
        config = _resolve_dataset(str(config), base_dir)
        if not Path(config).is_file():
            raise EvaluatorError(f"{origin}: {name!r} names mcp_config_path={config!r}, which is not a file")
    kwargs = dict(getattr(params, "rollout_processor_kwargs", None) or {})
    if type(processor).__name__ == "MCPGymRolloutProcessor":
        # openrft runs the processor once per candidate: one gym server for all of them (eval-protocol's
        # "shared" mode), not one per call on the same port
        kwargs.setdefault("server_mode", "shared")
        kwargs.setdefault("port", _free_port())  # its default 9700 fails a second job, or a leftover server
    completion = getattr(params, "completion_params", None)
    if isinstance(completion, list):
        completion = next((c for c in completion if isinstance(c, dict)), None)
    return RolloutSpec(
        processor=processor,
        mcp_config_path=config or None,
        steps=int(getattr(params, "steps", 30) or 30),
        kwargs=kwargs,
        completion_params=dict(completion or {}),
        server_script_path=_resolve_dataset(getattr(params, "server_script_path", None), base_dir),
    )


def _resolve_dataset(dataset: str | None, base_dir: Path | None) -> str | None:
    """A relative ``input_dataset`` is taken from the working folder, else next to the evaluator file;
    either way made absolute, so that a job resumed from another folder finds the same file."""
    if dataset is None or Path(dataset).is_absolute():
        return dataset
    if Path(dataset).exists():
        return str(Path(dataset).resolve())
    beside = base_dir / dataset if base_dir is not None else None
    return str(beside.resolve()) if beside is not None and beside.exists() else dataset


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
