"""``openrft eval``: sample a base model and trained adapters on the same prompts and score them.

Each model (the base model, an adapter folder, or a finished job's output adapter) is loaded in
turn, sampled with the local engine and scored with the evaluator exactly as a job's rollout round
does it (:func:`openrft.train.rounds.sample_and_score`, the same score summary and completion
statistics as a training step's metrics). Every model gets the same prompts, the same sampling
settings and the same seed, so candidate ``i`` of a prompt draws the same random numbers for every
model: differences come from the weights.

pass@k is the unbiased estimator of Chen et al. (2021): with ``n`` samples of a prompt of which
``c`` pass, ``pass@k = 1 - C(n - c, k) / C(n, k)``, averaged over the prompts. A sample passes
when its score is valid and at least ``threshold`` (1.0 by default: a full score), or, with
``metric``, when that metric of the evaluator (``correct_in_tags``, ``correct``) is at least
``threshold``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError, JobError
from openrft.evaluators.runner import SUMMARY_STATS
from openrft.records import Prompt, SamplingParams, Score, ScoredGroup

# The rollout parameters a job's stored configuration lends to an evaluation.
SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "max_output_tokens", "stop", "response_candidates_count", "response_format",
)  # fmt: skip


@dataclass(frozen=True)
class EvalModel:
    """One model to evaluate: a base model, with an adapter folder or not."""

    label: str
    base_model: str
    adapter: Path | None = None

    def describe(self) -> str:
        return f"{self.base_model} + adapter {self.adapter}" if self.adapter else self.base_model


@dataclass(frozen=True)
class JobSource:
    """What an evaluation takes from a finished job: its adapter, base model, sampling and evaluator."""

    job_id: str
    adapter: Path
    base_model: str
    sampling: dict[str, Any]
    evaluator: str | None
    agent: Any = None  # AgentSettings of a job that sampled conversations with tools or an agent
    max_context: int | None = None  # its --max-context-length, the bound of each conversation


@dataclass(frozen=True)
class PassRule:
    """When a sample counts as passed (see the module docstring)."""

    threshold: float = 1.0
    metric: str | None = None

    def passed(self, score: Score) -> bool:
        if not score.is_valid:
            return False
        value = score.metrics.get(self.metric) if self.metric else score.score
        return value is not None and value >= self.threshold

    def describe(self) -> str:
        return f"{self.metric or 'score'} >= {self.threshold:g}"

    def check(self, groups: Sequence[ScoredGroup]) -> None:
        """Refuse a ``--pass-metric`` that no valid score carries: it would pass nothing, silently."""
        valid = [s for g in groups for s in g.scores if s.is_valid]
        if not self.metric or not valid or any(self.metric in s.metrics for s in valid):
            return
        seen = sorted({name for s in valid for name in s.metrics})
        raise ConfigError(
            f"--pass-metric {self.metric}: the evaluator's scores have no metric of that name "
            f"(they have: {', '.join(seen) or 'no metrics, only a score'})"
        )


@dataclass
class ModelResult:
    model: EvalModel
    groups: list[ScoredGroup]
    metrics: dict[str, float]


# ----------------------------------------------------------------------------- jobs


def adapter_chat_template(adapter: Path) -> str | None:
    """The chat template saved with an adapter's tokenizer (a job's), if any."""
    import json

    for name in ("chat_template.jinja",):
        if (Path(adapter) / name).is_file():
            return (Path(adapter) / name).read_text(encoding="utf-8")
    try:
        config = json.loads((Path(adapter) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def job_source(job_id: str, store: Any = None) -> JobSource:
    """A finished job's output adapter and the settings it sampled with (``JobError`` if it has none)."""
    from openrft.jobs.store import JobStore
    from openrft.models import adapter_base_model

    record = (store or JobStore()).get(job_id)
    adapter = record.output_dir or record.job_dir / "output"
    if not (adapter / "adapter_config.json").is_file():
        raise JobError(
            f"--job {job_id}: the job ({record.state}) has no trained adapter in {adapter}",
            hint="evaluate a COMPLETED job (openrft rftj list), or pass --adapter DIR",
        )
    config = record.config
    rollout, training = config.get("rollout", {}), config.get("training", {})
    sampling = {name: rollout[name] for name in SAMPLING_FIELDS if rollout.get(name) is not None}
    if training.get("warm_start_from"):
        base = adapter_base_model(adapter) or training.get("base_model")
    else:
        base = training.get("base_model") or adapter_base_model(adapter)
    evaluator = config.get("data", {}).get("evaluator")
    if isinstance(evaluator, str):  # an evaluator file edited or removed since: the job's own copy
        from openrft.jobs.snapshot import resumed_values

        warn = lambda text: print(f"warning: {text}", file=sys.stderr)  # noqa: E731
        evaluator = resumed_values(record.job_dir, {"evaluator": evaluator}, warn)["evaluator"]
    return JobSource(
        job_id, adapter, str(base), sampling, evaluator,
        agent=agent_settings(config.get("agent", {})), max_context=training.get("max_context_length"),
    )  # fmt: skip


def agent_settings(group: dict[str, Any]) -> Any:
    """A job's stored ``agent`` parameters as :class:`~openrft.settings.AgentSettings` (None: single-turn)."""
    from openrft.settings import AgentSettings

    if not (group.get("agent") or group.get("tools") or group.get("mcp_server")):
        return None
    defaults = AgentSettings(None, None, None)
    return AgentSettings(
        group.get("agent"), group.get("tools"), group.get("mcp_server"),
        group.get("max_turns") or defaults.max_turns, group.get("tool_timeout") or defaults.tool_timeout,
        group.get("agent_timeout") or defaults.agent_timeout,
    )  # fmt: skip


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one prompt: ``n`` samples, ``c`` of them passed, ``k <= n``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(n: int) -> list[int]:
    """The k reported for ``n`` samples per prompt: 1 and n."""
    return sorted({1, n})


def pass_rates(groups: Sequence[ScoredGroup], rule: PassRule, ks: Sequence[int]) -> dict[str, float]:
    """``pass@k`` for each k, averaged over the groups (prompts)."""
    out: dict[str, float] = {}
    for k in ks:
        values = [
            pass_at_k(len(g.scores), sum(rule.passed(s) for s in g.scores), k)
            for g in groups
            if len(g.scores) >= k
        ]
        out[f"pass@{k}"] = sum(values) / len(values) if values else 0.0
    return out


# ----------------------------------------------------------------------------- sampling and scoring


def check_models(models: Sequence[EvalModel]) -> None:
    """Each base model and adapter can be found and read, before any is loaded: a ConfigError naming
    ``--base-model`` or the adapter (exit 2), so that no model is sampled and scored for nothing."""
    from openrft.errors import input_error
    from openrft.models import load_config

    for base, adapter in dict.fromkeys((m.base_model, m.adapter) for m in models):
        with input_error("--base-model"):
            load_config(base)
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            why = "is not a folder" if not Path(adapter).is_dir() else "holds no adapter_config.json"
            raise ConfigError(f"--adapter {adapter}: {why} (a LoRA adapter folder, a job's output, is expected)",
                              field="adapter")  # fmt: skip


def prompts_that_fit(
    models: Sequence[EvalModel], prompts: Any, max_tokens: int, *, skip_bad_rows: bool
) -> Any:
    """``prompts`` (a :class:`~openrft.data.PromptSet`) checked against every model's context before any
    model is loaded: a prompt longer than the context less ``max_tokens`` is a bad row of the dataset,
    refused with its line (or left out with ``skip_bad_rows``), as when a job is created."""
    from openrft.data import check_prompt_lengths
    from openrft.models import load_config, load_tokenizer
    from openrft.rollout.prompts import encode_prompt

    for base, adapter in dict.fromkeys((m.base_model, m.adapter) for m in models):
        tokenizer = load_tokenizer(base)
        template = adapter_chat_template(adapter) if adapter is not None else None
        if template:
            tokenizer.chat_template = template
        context = getattr(load_config(base), "max_position_embeddings", None) or 4096
        prompts = check_prompt_lengths(prompts, lambda p, t=tokenizer: len(encode_prompt(t, p)),
                                       context - max_tokens, skip_bad_rows=skip_bad_rows)  # fmt: skip
    return prompts


def load_engine(
    model: EvalModel,
    *,
    max_concurrent_rollouts: int | None = None,
    agent: Any = None,
    max_context: int | None = None,
    processor: Any = None,
) -> Any:
    """The local engine on the model (and adapter), on the best device (a CUDA GPU when there is one);
    with ``agent`` (a job's :class:`~openrft.settings.AgentSettings`), each response is a whole
    conversation run by the job's agent or tool loop against it, as in the job; with ``processor`` (an
    evaluator whose file names a rollout processor), by that processor."""
    from transformers.utils import logging as hf_logging

    from openrft.models import load_adapter, load_model, resolve_device
    from openrft.rollout.local import LocalEngine

    hf_logging.disable_progress_bar()
    device, dtype = resolve_device("auto", "auto")
    weights, tokenizer = load_model(model.base_model, dtype=dtype, device=device)
    if model.adapter is not None:
        weights = load_adapter(weights, model.adapter)
        template = adapter_chat_template(model.adapter)
        if template:  # a job trained with its own --chat-template: sample as it did
            tokenizer.chat_template = template
    on_cpu = device == "cpu"  # as in a job: on a CPU, sample an inference copy (adapter merged)
    engine = LocalEngine(
        weights, tokenizer, max_concurrent_rollouts=max_concurrent_rollouts, inference_copy=on_cpu
    )
    if agent is None and processor is None:
        return engine
    from openrft.train.setup import with_agent

    context = max_context or getattr(weights.config, "max_position_embeddings", 4096)
    return with_agent(engine, agent, max_concurrent_rollouts, context, model.base_model, processor)


def scorer(
    evaluator: Any, *, max_concurrency: int | None, timeout: float
) -> Callable[..., list[list[Score]]]:
    """``score(prompts, completions)`` with a job's containment (a user's evaluator in worker processes)."""
    from openrft.evaluators.isolation import score_contained

    def score(prompts: Sequence[Prompt], completions: list[list[Any]]) -> list[list[Score]]:
        groups = list(zip(prompts, completions, strict=True))
        return score_contained(evaluator, groups, max_concurrency=max_concurrency, timeout=timeout)

    return score


def evaluate_model(
    model: EvalModel,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    score: Callable[..., list[list[Score]]],
    rule: PassRule,
    *,
    max_concurrent_rollouts: int | None = None,
    load: Callable[..., Any] = load_engine,
    job: JobSource | None = None,
    processor: Any = None,
) -> ModelResult:
    """Sample ``params.n`` responses per prompt from ``model``, score them, and summarise; ``job``
    lends its agent or tool loop (a multi-turn job's responses are whole conversations), else an
    eval-protocol evaluator with a rollout processor (``processor``) runs its own."""
    from openrft.settings import RoundSettings
    from openrft.train.rounds import round_metrics, sample_and_score

    start = time.perf_counter()
    options: dict[str, Any] = (
        {"agent": job.agent, "max_context": job.max_context} if job is not None and job.agent else {}
    )
    if not options and processor is not None:
        options = {"processor": processor}
    engine = load(model, max_concurrent_rollouts=max_concurrent_rollouts, **options)
    timings: dict[str, float] = {}
    groups = sample_and_score(engine, score, prompts, params, RoundSettings(), timings)
    rule.check(groups)
    stats = round_metrics(groups, len(groups))
    metrics = {
        "mean reward": stats["reward/mean"],
        **pass_rates(groups, rule, pass_ks(params.n)),
        "truncated": stats["completion/truncated_frac"],
        "mean response tokens": stats["completion/mean_len"],
        "invalid scores": stats["reward/invalid_frac"],
    }
    for key, value in stats.items():
        name = key.removeprefix("reward/")
        if key.startswith("reward/") and name not in SUMMARY_STATS:
            metrics[f"{name} (mean)"] = value
    metrics["seconds"] = time.perf_counter() - start
    return ModelResult(model, groups, metrics)


def sample_records(result: ModelResult, rule: PassRule) -> list[dict[str, Any]]:
    """One JSON-ready record per sample (for ``--output``)."""
    return [
        {
            "model": result.model.label,
            "prompt_id": group.prompt.prompt_id,
            "candidate_index": c.candidate_index,
            "response": c.text,
            "finish_reason": c.finish_reason,
            "response_tokens": c.sampled_tokens,
            "score": s.score,
            "is_valid": s.is_valid,
            "passed": rule.passed(s),
            "reason": s.reason,
            "metrics": s.metrics,
            **({"conversation": list(c.conversation), "agent": c.agent_metrics} if c.conversation else {}),
        }
        for group in result.groups
        for c, s in zip(group.completions, group.scores, strict=True)
    ]


# ----------------------------------------------------------------------------- the table

PERCENT_ROWS = ("truncated", "invalid scores")


def format_table(results: Sequence[ModelResult]) -> str:
    """Models side by side: one column per model, one row per metric."""
    names = list(dict.fromkeys(name for r in results for name in r.metrics))
    rows = [["model", *(r.model.label for r in results)]]
    for name in names:
        cells = [_cell(name, r.metrics.get(name)) for r in results]
        rows.append([name, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        first = f"{row[0]:<{widths[0]}}"
        lines.append("  ".join([first, *(f"{c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True))]))
    return "\n".join(line.rstrip() for line in lines)


def _cell(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name.startswith("pass@") or name in PERCENT_ROWS:
        return f"{value:.1%}"
    if name == "seconds":
        return f"{value:.1f}"
    if name == "mean response tokens":
        return f"{value:.1f}"
    return f"{value:.3f}"


def progress(text: str) -> None:
    print(f"openrft eval: {text}", file=sys.stderr, flush=True)


__all__ = [
    "EvalModel",
    "JobSource",
    "ModelResult",
    "PassRule",
    "SAMPLING_FIELDS",
    "evaluate_model",
    "format_table",
    "job_source",
    "pass_at_k",
    "pass_ks",
    "pass_rates",
    "sample_records",
    "scorer",
]
