"""Scoring completions with an evaluator, with failures contained.

:func:`score_groups` runs the evaluator on every ``(prompt, completions)`` group:
one call per completion (pointwise) or per group (groupwise), at most
``max_concurrency`` at a time, each limited to ``timeout`` seconds. Async
evaluators run on the event loop; sync ones each in a daemon worker thread (so a
hung evaluator can be abandoned at its timeout and never blocks the process from
exiting; it may still use a CPU until it returns). An exception, a timeout or an
unusable return value gives ``Score(0.0, is_valid=False, reason=...)`` and the
other calls go on. :func:`check_invalid_rate` then fails the step when too many
scores are invalid.

The evaluator sees the prompt's messages followed by an assistant message holding
the completion text (for an agent's run: the whole conversation it returned), plus the
row's ``ground_truth`` and every other field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import inspect
import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from openrft.errors import EvaluatorError
from openrft.evaluators.base import Evaluator
from openrft.records import Completion, Prompt, Score

log = logging.getLogger("openrft.evaluators")
DEFAULT_CONCURRENCY = 8
# Row fields that map onto EvaluationRow fields (or must not be overridden by dataset columns).
ROW_FIELDS = {"messages", "ground_truth", "input_metadata", "tools", "execution_metadata"}
DROPPED_FIELDS = {"evaluation_result", "rollout_status", "created_at", "eval_metadata", "pid"}

Group = tuple[Prompt, Sequence[Completion]]


# ----------------------------------------------------------------------------- public


def score_groups(
    evaluator: Evaluator,
    groups: Sequence[Group],
    *,
    max_concurrency: int | None = None,
    timeout: float = 60.0,
) -> list[list[Score]]:
    """Scores for each group's completions, in order (see the module docstring).

    ``max_concurrency`` None uses the evaluator header's ``max_concurrent_evaluations``,
    else 8. Safe to call from inside a running event loop (it then runs in a helper thread).
    """
    coro = ascore_groups(evaluator, groups, max_concurrency=max_concurrency, timeout=timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def ascore_groups(
    evaluator: Evaluator,
    groups: Sequence[Group],
    *,
    max_concurrency: int | None = None,
    timeout: float = 60.0,
) -> list[list[Score]]:
    """The async form of :func:`score_groups`."""
    if timeout <= 0:
        raise EvaluatorError(f"the evaluator timeout must be > 0 seconds, not {timeout}")
    limit = max_concurrency or evaluator.max_concurrent_evaluations or DEFAULT_CONCURRENCY
    if limit < 1:
        raise EvaluatorError(f"max concurrent evaluations must be >= 1, not {limit}")
    semaphore = asyncio.Semaphore(limit)
    if evaluator.mode == "groupwise":
        jobs = [_score_group(evaluator, p, cs, semaphore, timeout) for p, cs in groups]
        return list(await asyncio.gather(*jobs))
    jobs = [_score_one(evaluator, p, c, semaphore, timeout) for p, cs in groups for c in cs]
    flat = iter(await asyncio.gather(*jobs))
    return [[next(flat) for _ in cs] for _, cs in groups]


def check_invalid_rate(
    scores: Sequence[Score] | Sequence[Sequence[Score]],
    max_fraction: float = 0.5,
    timeout_flag: str = "--evaluator-timeout",
    advice: str = "check the evaluator on a few responses with `openrft evaluate --dataset FILE --evaluator SPEC "
    "--responses FILE`",
) -> None:
    """Raise EvaluatorError, with one example reason, when more than ``max_fraction`` of the scores are
    invalid; the hint names ``timeout_flag`` (the command's own) when calls timed out, else gives
    ``advice`` (the command's own: ``openrft evaluate`` need not suggest itself)."""
    flat = _flatten(scores)
    invalid = [s for s in flat if not s.is_valid]
    if flat and len(invalid) > max_fraction * len(flat):
        example = next((s.reason for s in invalid if s.reason), "no reason given")
        timeouts = sum(s.reason.startswith("timeout after") for s in invalid)
        hint = (
            f"{timeouts} of them timed out: raise {timeout_flag}, or make each call faster (a model grader's "
            "max_completions_tokens bounds how long its judge writes)"
            if timeouts
            else advice
        )
        raise EvaluatorError(
            f"{len(invalid)} of {len(flat)} evaluator scores are invalid (more than {max_fraction:.0%}); "
            f"one example: {example}",
            hint=hint,
        )


SUMMARY_STATS = ("count", "invalid_count", "invalid_frac", "mean", "std", "min", "max")


def summarize(
    scores: Sequence[Score] | Sequence[Sequence[Score]], prefix: str = "reward"
) -> dict[str, float]:
    """The one score summary, used by training rounds, evaluations and ``openrft evaluate``.

    ``<prefix>/count``, ``/invalid_count`` and ``/invalid_frac`` over all scores; ``/mean``,
    ``/std`` (population), ``/min`` and ``/max`` over the valid ones (0 when none is valid); and
    ``<prefix>/<name>``, the mean of each metric the evaluator reported on valid scores.
    """
    flat = _flatten(scores)
    valid = [s.score for s in flat if s.is_valid]
    mean = sum(valid) / len(valid) if valid else 0.0
    out: dict[str, float] = {
        f"{prefix}/count": float(len(flat)),
        f"{prefix}/invalid_count": float(len(flat) - len(valid)),
        f"{prefix}/invalid_frac": (len(flat) - len(valid)) / len(flat) if flat else 0.0,
        f"{prefix}/mean": mean,
        f"{prefix}/std": math.sqrt(sum((v - mean) ** 2 for v in valid) / len(valid)) if valid else 0.0,
        f"{prefix}/min": min(valid, default=0.0),
        f"{prefix}/max": max(valid, default=0.0),
    }
    totals: dict[str, list[float]] = {}
    for s in flat:
        if s.is_valid:
            for key, value in s.metrics.items():
                totals.setdefault(key, []).append(float(value))
    for key, values in sorted(totals.items()):
        out.setdefault(f"{prefix}/{key}", sum(values) / len(values))
    return out


# ----------------------------------------------------------------------------- rows


def build_row(evaluator: Evaluator, prompt: Prompt, completion: Completion) -> Any:
    """The evaluation row the evaluator sees: prompt messages + the completion as an assistant message.

    Built from a copy of the dataset row, so an evaluator that changes it changes nothing for the
    next completion of the same prompt.
    """
    row = copy.deepcopy(prompt.row)
    extras = {k: v for k, v in row.items() if k not in ROW_FIELDS | DROPPED_FIELDS}
    metadata = dict(row.get("input_metadata") or {}) if isinstance(row.get("input_metadata"), dict) else {}
    metadata.setdefault("row_id", prompt.prompt_id)
    if evaluator.completion_params and not metadata.get("completion_params"):  # as eval-protocol sets it
        metadata["completion_params"] = copy.deepcopy(evaluator.completion_params)
    if completion.conversation:  # an agent's run: the whole conversation it returned
        messages = copy.deepcopy(list(completion.conversation))
    else:
        messages = copy.deepcopy(list(prompt.messages))
        messages.append({"role": "assistant", "content": completion.text})
    return evaluator.row_cls(
        messages=messages,
        ground_truth=row.get("ground_truth"),
        tools=row.get("tools"),
        input_metadata=metadata,
        execution_metadata={
            "rollout_id": f"{prompt.prompt_id}/{completion.candidate_index}",
            "finish_reason": completion.finish_reason,
        },
        **extras,
    )


def messages_kwargs(prompt: Prompt, completion: Completion) -> dict[str, Any]:
    """Arguments of a reward-kit function: ``messages`` (the prompt's and the response, or an agent's
    whole conversation), ``ground_truth``, and the row's other fields as keywords."""
    row = copy.deepcopy(prompt.row)
    if completion.conversation:
        messages = copy.deepcopy(list(completion.conversation))
    else:
        messages = [*copy.deepcopy(list(prompt.messages)), {"role": "assistant", "content": completion.text}]
    extras = {k: v for k, v in row.items() if k not in ("messages", "ground_truth")}
    return {**extras, "messages": messages, "ground_truth": row.get("ground_truth")}


TRL_OWN = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


def trl_kwargs(fn: Callable[..., Any], prompt: Prompt, completions: Sequence[Completion]) -> dict[str, Any]:
    """A TRL reward function's arguments for one group: ``completions`` (text, or ``[{"role": "assistant",
    ...}]`` when the prompt was messages, as TRL passes them), ``prompts``, ``completion_ids``, and each
    row field as a list with one copy per completion (only those it names, unless it takes ``**kwargs``)."""
    n = len(completions)
    text_prompt = prompt.row.get("prompt") if isinstance(prompt.row.get("prompt"), str) else None
    texts = [c.text for c in completions]
    fields: dict[str, Any] = {
        "prompts": [
            text_prompt if text_prompt is not None else copy.deepcopy(list(prompt.messages)) for _ in texts
        ],
        "completions": texts
        if text_prompt is not None
        else [[{"role": "assistant", "content": t}] for t in texts],
        "completion_ids": [list(c.completion_token_ids) for c in completions],
        "trainer_state": None,  # openrft has no transformers Trainer whose state it could give
        "log_extra": None,  # nor TRL's logging callbacks (TRL's own examples guard them: `if log_extra:`)
        "log_metric": None,
    }
    fields.update({k: [copy.deepcopy(v) for _ in range(n)] for k, v in trl_columns(prompt.row).items()})
    return _accepted(fn, fields)


def trl_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The row's columns as TRL passes them: all but ``prompt`` (given as ``prompts``), and without the
    ``messages`` openrft made of a ``prompt`` (no column of the user's)."""
    prompt = row.get("prompt")
    made = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    dropped = {"prompt", *(["messages"] if "prompt" in row and row.get("messages") == made else [])}
    return {k: v for k, v in row.items() if k not in TRL_OWN and k not in dropped}


def _as_list(result: Any, count: int) -> list[Any]:
    if not isinstance(result, list | tuple) or len(result) != count:
        got = f"{len(result)} values" if isinstance(result, list | tuple) else type(result).__name__
        raise EvaluatorError(
            f"a TRL reward function must return one value per completion: got {got} for {count}"
        )
    return list(result)


def _trl_score(value: Any) -> Score:
    """One value of a TRL reward function: a number, or None (TRL: no reward for it) = invalid."""
    if value is None:
        return Score(0.0, is_valid=False, reason="the reward function returned None for this completion")
    try:
        return to_score(value)
    except Exception as exc:  # noqa: BLE001 - a value that is no score: invalid, with why
        return Score(0.0, is_valid=False, reason=f"{type(exc).__name__}: {exc}")


def plain_kwargs(
    fn: Callable[..., Any], prompt: Prompt, completion: Completion | None = None
) -> dict[str, Any]:
    """Row fields for a plain ``f(completion, **row_fields)``: all of them if it takes ``**kwargs``,
    else only the parameters it names. ``messages`` are the prompt's messages, or for an agent's run the
    whole conversation it returned (the completion is then its last reply's text)."""
    conversation = completion.conversation if completion is not None else ()
    messages = list(conversation) if conversation else list(prompt.messages)
    fields = {**copy.deepcopy(prompt.row), "messages": copy.deepcopy(messages)}
    fields["prompt_id"] = prompt.prompt_id
    fields.pop(next(iter(inspect.signature(fn).parameters)), None)  # the completion is given apart
    return _accepted(fn, fields)


def _accepted(fn: Callable[..., Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` that ``fn`` takes by keyword: all of them with ``**kwargs``, else only those it names."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fields
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in fields.items() if k in names}


def verl_ground_truth(row: dict[str, Any]) -> Any:
    """Where verl keeps a row's reference: ``reward_model.ground_truth`` (its data preprocessing's
    layout), else a top-level ``ground_truth``."""
    model = row.get("reward_model")
    if isinstance(model, dict) and model.get("ground_truth") is not None:
        return model["ground_truth"]
    return row.get("ground_truth")


def verl_kwargs(fn: Callable[..., Any], prompt: Prompt, completion: Completion) -> dict[str, Any]:
    """The arguments verl's reward manager gives ``compute_score``, by keyword: ``data_source``,
    ``solution_str`` (the response), ``ground_truth`` and ``extra_info``, those that ``fn`` takes."""
    row = copy.deepcopy(prompt.row)
    extra = row.get("extra_info")  # verl's reward manager always passes a dict (an empty one for none)
    fields = {"data_source": row.get("data_source"), "solution_str": completion.text,
              "ground_truth": verl_ground_truth(row), "extra_info": extra if extra is not None else {}}  # fmt: skip
    return _accepted(fn, fields)


def missing_fields(evaluator: Evaluator, prompt: Prompt) -> list[str]:
    """Fields ``prompt``'s row lacks for the evaluator (checked before training): required parameters of
    a plain evaluator or a TRL reward function, and its ``required_fields`` (a built-in's ``ground_truth``), absent or null."""
    missing = [f for f in evaluator.required_fields if prompt.row.get(f) is None]
    if evaluator.kind == "verl" and verl_ground_truth(prompt.row) is None:
        missing.append("reward_model.ground_truth")
    if evaluator.kind == "trl":  # every argument by keyword: TRL's own, then the row's columns
        available = {*TRL_OWN, *trl_columns(prompt.row)}
        return [*missing, *(name for name in required_parameters(evaluator.fn, 0) if name not in available)]
    if evaluator.kind != "plain":
        return missing
    available = {*prompt.row, "messages", "prompt_id"}
    return [*missing, *(name for name in required_parameters(evaluator.fn) if name not in available)]


@functools.cache
def required_parameters(fn: Callable[..., Any], skip: int = 1) -> tuple[str, ...]:
    """The parameters after the first ``skip`` (a plain evaluator's completion) that a call must fill
    (no default)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in kinds and p.default is p.empty)


# ----------------------------------------------------------------------------- calls


async def _score_one(
    ev: Evaluator, prompt: Prompt, completion: Completion, sem: asyncio.Semaphore, timeout: float
) -> Score:
    async with sem:
        try:
            if ev.kind == "plain":
                result = await _call(ev, timeout, completion.text, **plain_kwargs(ev.fn, prompt, completion))
                return to_score(result)
            if ev.kind == "item":  # an OpenAI grader: the row is its item, and a cut reply says so
                item, finish = copy.deepcopy(prompt.row), completion.finish_reason
                return to_score(await _call(ev, timeout, completion.text, item, finish_reason=finish))
            if ev.kind == "verl":
                return to_score(await _call(ev, timeout, **verl_kwargs(ev.fn, prompt, completion)))
            if ev.kind == "messages":
                return to_score(await _call(ev, timeout, **messages_kwargs(prompt, completion)))
            row = build_row(ev, prompt, completion)
            call = (
                _call(ev, timeout, row=row, **ev.call_kwargs)
                if ev.call_by_keyword
                else _call(ev, timeout, row)
            )
            result = await call
            return to_score(row if result is None else result)
        except Exception as exc:
            return _invalid(exc, timeout, ev, prompt.prompt_id)


async def _score_group(
    ev: Evaluator, prompt: Prompt, completions: Sequence[Completion], sem: asyncio.Semaphore, timeout: float
) -> list[Score]:
    async with sem:
        try:
            if ev.kind == "trl":
                result = await _call(ev, timeout, **trl_kwargs(ev.fn, prompt, completions))
                return [_trl_score(item) for item in _as_list(result, len(completions))]
            rows = [build_row(ev, prompt, c) for c in completions]
            call = (
                _call(ev, timeout, rows=rows, **ev.call_kwargs)
                if ev.call_by_keyword
                else _call(ev, timeout, rows)
            )
            result = await call
        except Exception as exc:
            return [_invalid(exc, timeout, ev, prompt.prompt_id)] * len(completions)
    if result is None:
        result = rows
    if not isinstance(result, list | tuple) or len(result) != len(completions):
        got = f"{len(result)} rows" if isinstance(result, list | tuple) else type(result).__name__
        reason = f"groupwise evaluator returned {got} for {len(completions)} completions"
        return [Score(0.0, is_valid=False, reason=reason)] * len(completions)
    scores = []
    for item in result:
        try:
            scores.append(to_score(item))
        except Exception as exc:
            scores.append(_invalid(exc, timeout, ev, prompt.prompt_id))
    return scores


async def _call(ev: Evaluator, timeout: float, *args: Any, **kwargs: Any) -> Any:
    """Call the evaluator within ``timeout`` seconds (async: on the loop; sync: in a daemon thread)."""
    start = time.monotonic()
    if ev.is_async:
        return await asyncio.wait_for(ev.fn(*args, **kwargs), timeout)
    if ev.run_inline:
        result = ev.fn(*args, **kwargs)
    else:
        result = await asyncio.wait_for(_in_thread(ev.fn, args, kwargs), timeout)
    if inspect.isawaitable(result):
        result = await asyncio.wait_for(result, max(1e-3, timeout - (time.monotonic() - start)))
    return result


def _in_thread(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def target() -> None:
        try:
            value, ok = fn(*args, **kwargs), True
        except BaseException as exc:
            value, ok = exc, False
        # RuntimeError: the loop is gone, the call was abandoned after its timeout.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=target, name="openrft-evaluator", daemon=True).start()
    return future


def _invalid(exc: BaseException, timeout: float, ev: Evaluator, prompt_id: str) -> Score:
    if isinstance(exc, TimeoutError):
        reason = f"timeout after {timeout:g}s"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    log.debug("evaluator %s on prompt %s: %s", ev.name, prompt_id, reason)
    return Score(0.0, is_valid=False, reason=reason)


# ----------------------------------------------------------------------------- results


def to_score(result: Any) -> Score:
    """An evaluator's return value -> Score.

    Accepted: an EvaluationRow (its ``evaluation_result``), an EvaluateResult, a
    number, a ``(score, reason)`` tuple, or a dict with ``score`` (and optionally
    ``reason``, ``is_score_valid``, ``metrics``; without ``metrics``, its other numeric
    keys are the metrics, as verl logs a result dict's extra keys).
    """
    if hasattr(result, "evaluation_result") and hasattr(result, "messages"):
        if result.evaluation_result is None:
            return Score(0.0, is_valid=False, reason="the evaluator set no evaluation_result on the row")
        result = result.evaluation_result
    if isinstance(result, numbers.Real):
        return _checked(float(result), True, "", {})
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], numbers.Real):
        return _checked(float(result[0]), True, str(result[1]), {})
    if isinstance(result, dict) and "score" in result:
        reason = result.get("reason") or result.get("error") or ""
        valid = bool(result.get("is_score_valid", True))
        extra = {k: v for k, v in result.items() if k not in DICT_KEYS} if "metrics" not in result else None
        return _checked(_number(result["score"]), valid, str(reason), _metrics(result.get("metrics", extra)))
    if hasattr(result, "score") and hasattr(result, "is_score_valid"):
        reason = result.reason or getattr(result, "error", None) or ""
        return _checked(_number(result.score), bool(result.is_score_valid), reason, _metrics(result.metrics))
    if isinstance(result, dict):
        raise TypeError(
            f"evaluator returned a dict without a 'score' key (its keys: {', '.join(map(str, result))})"
        )
    raise TypeError(f"evaluator returned {type(result).__name__}, not a score, row or EvaluateResult")


DICT_KEYS = ("score", "reason", "error", "is_score_valid")  # a result dict's keys that are not metrics


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # (numpy's numbers are Real)
        raise TypeError(f"score must be a number, not {type(value).__name__}")
    return float(value)


MAX_ABS_SCORE = 1e12  # larger scores overflow the group statistics: such a score is invalid


def _checked(score: float, valid: bool, reason: str, metrics: dict[str, float]) -> Score:
    if not math.isfinite(score):
        return Score(0.0, is_valid=False, reason=f"score is {score}", metrics=metrics)
    if abs(score) > MAX_ABS_SCORE:
        return Score(
            0.0, is_valid=False, reason=f"score {score:g} is beyond +-{MAX_ABS_SCORE:g}", metrics=metrics
        )
    return Score(score, is_valid=valid, reason=reason, metrics=metrics)


def _metrics(metrics: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        raw = value.get("score") if isinstance(value, dict) else getattr(value, "score", value)
        if isinstance(raw, numbers.Real) and math.isfinite(float(raw)):
            out[str(key)] = float(raw)
    return out


def _flatten(scores: Sequence[Any]) -> list[Score]:
    flat: list[Score] = []
    for item in scores:
        if isinstance(item, Score):
            flat.append(item)
        else:
            flat.extend(item)
    return flat
