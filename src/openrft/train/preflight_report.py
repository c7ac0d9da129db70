"""What a preflight measured, and what it means for the job: statistics, estimates and advice.

Plain numbers in, plain numbers and sentences out (no torch): :mod:`openrft.train.preflight`
fills a :class:`PreflightReport` from a real sample of the job's rollouts, and the command line
prints it. The advice follows the tuning guidance the job parameters come from: groups whose
candidates all score the same carry no signal (more temperature, more candidates, or an evaluator
with partial credit), responses cut off at the length limit lose their answers (a larger
``--max-output-tokens`` or a stop string), and an evaluator that often fails must be fixed first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

NO_SIGNAL_EXIT_CODE = 8  # 1-7 are the error classes' codes (openrft.errors)
MOSTLY = 0.5  # "most groups" / "most responses"
TRUNCATION_WARN = 0.2  # at least this share cut off: advise a larger --max-output-tokens
TRUNCATION_BLOCK = 0.9  # at least this share cut off: the scores say little about the task
INVALID_WARN = 0.05
INVALID_BLOCK = 0.5  # the trainer fails a step above this share (evaluators.check_invalid_rate)
SLOW_CALL_S = 0.05  # an evaluator call this slow can make scoring the bottleneck
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass
class Timing:
    """Seconds per round and epoch on this machine, and how each part was estimated."""

    sample_s: float  # sampling one round
    score_s: float  # scoring one round
    train_s: float  # training on one round's kept groups
    round_s: float
    epoch_s: float
    rounds_per_epoch: int
    prompts_per_round: int
    train_tokens_per_s: float | None
    train_method: str  # how train_s was estimated
    load_average: float | None = None  # this machine's 1-minute load when the preflight ended
    cpus: int | None = None


@dataclass
class PreflightReport:
    """Everything measured on the sampled prompts; the derived rates are properties."""

    base_model: str
    device: str
    prompts: int  # prompts sampled
    train_prompts: int  # prompts in the job's training set
    n: int
    max_tokens: int
    temperature: float
    group_means: list[float]  # per prompt, over its valid scores
    group_stds: list[float]  # population standard deviation, over its valid scores
    zero_variance: int  # groups the trainer would drop (openrft.algo.filtering)
    zero_variance_low: int  # ... whose candidates all got the lowest score seen
    zero_variance_high: int  # ... whose candidates all got the highest score seen
    distinct_scores: list[float]  # up to 12 distinct valid scores, sorted
    lengths: list[int]  # sampled tokens per response
    truncated: int  # responses that ended at the length limit
    scores: int  # scores returned
    invalid: int  # invalid scores
    invalid_example: str | None  # None: no score was invalid
    calls: int  # evaluator calls in the scoring pass
    latency_s: float | None  # seconds per evaluator call, timed one call at a time
    sample_wall_s: float  # sampling the prompts here
    score_wall_s: float  # scoring them here
    timing: Timing | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def responses(self) -> int:
        return len(self.lengths)

    @property
    def zero_variance_frac(self) -> float:
        return self.zero_variance / max(1, self.prompts)

    @property
    def truncated_frac(self) -> float:
        return self.truncated / max(1, self.responses)

    @property
    def invalid_frac(self) -> float:
        return self.invalid / max(1, self.scores)

    @property
    def binary(self) -> bool:
        return bool(self.distinct_scores) and set(self.distinct_scores) <= {0.0, 1.0}

    def blockers(self) -> list[str]:
        """Why no learning signal is expected (empty: training can learn something)."""
        out = []
        if self.prompts and self.zero_variance == self.prompts:
            out.append(f"every one of the {self.prompts} groups is zero-variance: nothing would be trained")
        if self.truncated_frac >= TRUNCATION_BLOCK:
            out.append(f"{self.truncated_frac:.0%} of the responses are cut off at {self.max_tokens} tokens")
        if self.invalid_frac > INVALID_BLOCK:
            out.append(
                f"{self.invalid_frac:.0%} of the scores are invalid: the job would fail its first step"
            )
        return out

    @property
    def exit_code(self) -> int:
        return NO_SIGNAL_EXIT_CODE if self.blockers() else 0

    def advice(self) -> list[str]:
        return advise(self)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(
            responses=self.responses, zero_variance_frac=self.zero_variance_frac,
            truncated_frac=self.truncated_frac, invalid_frac=self.invalid_frac,
            reward_mean_quantiles=quantiles(self.group_means), reward_std_quantiles=quantiles(self.group_stds),
            length_quantiles=quantiles(self.lengths), advice=self.advice(), blockers=self.blockers(),
            exit_code=self.exit_code,
        )  # fmt: skip
        return out


def advise(r: PreflightReport) -> list[str]:
    """Concrete next steps, most important first (empty when nothing stands out)."""
    out: list[str] = []
    if r.invalid_frac >= INVALID_WARN:
        out.append(
            f"fix the evaluator first: {r.invalid} of {r.scores} scores are invalid (e.g. {r.invalid_example}); "
            "invalid scores teach nothing, and above half of them the job stops. Try it on a few responses "
            "with `openrft evaluate`, or raise --evaluator-timeout if calls time out"
        )
    if r.truncated_frac >= TRUNCATION_WARN:
        out.append(
            f"{r.truncated_frac:.0%} of the responses were cut off at --max-output-tokens {r.max_tokens}: a cut-off "
            "response usually loses its final answer. Raise --max-output-tokens (e.g. to "
            f"{suggest_max_tokens(r)}), or have the answers end sooner (a shorter format, a --stop string)"
            + (
                "; cut-off answers also explain part of the zero-variance groups below"
                if r.zero_variance_frac >= MOSTLY and r.truncated_frac >= MOSTLY
                else ""
            )
        )
    out += _variance_advice(r)
    slow_calls = r.latency_s is not None and r.latency_s >= SLOW_CALL_S
    if slow_calls and r.timing and r.timing.score_s > r.timing.sample_s:
        out.append(
            f"scoring takes longer than sampling ({r.latency_s:.2f} s per evaluator call): raise "
            "--max-concurrent-evaluations, or make the evaluator cheaper"
        )
    return out


def _variance_advice(r: PreflightReport) -> list[str]:
    out: list[str] = []
    if r.zero_variance_frac < MOSTLY or not r.prompts:
        return out
    share = f"{r.zero_variance} of {r.prompts} groups ({r.zero_variance_frac:.0%}) have no score variance"
    low, high = r.zero_variance_low, r.zero_variance_high
    if low >= MOSTLY * r.zero_variance and r.binary:
        out.append(
            f"{share}, mostly because every candidate failed: the task is too hard for the model as scored. "
            "An evaluator that only returns 0 and 1 gives no signal here; give partial credit (e.g. for the "
            "right format or a near answer), or start from easier prompts"
        )
    elif low >= MOSTLY * r.zero_variance:
        out.append(
            f"{share}, mostly because every candidate got the lowest score: the task looks too hard for the "
            "model as scored; reward partial progress, or start from easier prompts"
        )
    elif high >= MOSTLY * r.zero_variance:
        out.append(
            f"{share}, mostly because every candidate already got the highest score: the model solves these "
            "prompts already; train on harder prompts or with a stricter evaluator"
        )
    else:
        out.append(share)
    if len(r.distinct_scores) == 1:
        out.append(
            f"every valid score was {r.distinct_scores[0]:g}: check on a few responses that the evaluator can "
            "tell good ones from bad ones on this data"
        )
    levers = []
    if r.temperature < 1.0:
        levers.append(f"raise --temperature (now {r.temperature:g}; 0.8-1.0 gives more diverse candidates)")
    if r.n < 16:
        levers.append(
            f"raise --response-candidates-count (now {r.n}; 16 makes a tie of all candidates rarer)"
        )
    if levers:
        out.append("to get more groups with signal: " + ", or ".join(levers))
    return out


def suggest_max_tokens(r: PreflightReport) -> int:
    """Twice the limit, within the accepted range (16 - 16384), rounded to a power of two."""
    return min(16384, 2 ** math.ceil(math.log2(max(32, 2 * r.max_tokens))))


# ----------------------------------------------------------------------------- dry run

# Rough CPU sampling speed of the local engine: about 200 completion tokens/s for the embedded
# 135M-parameter model on 2 cores with 64 responses in flight (docs/benchmarks.md); taken to scale
# with 1 / parameters and with the cores (up to 16), so it errs on the fast side.
CPU_TOKENS_PER_S = 200.0
CPU_REFERENCE_PARAMS = 135e6
CPU_REFERENCE_CORES = 2
SLOW_ROUND_S = 3600.0  # warn when a round's sampling may take longer than this


def dry_run_warnings(
    settings: Any, num_prompts: int, base_params: int | None, cores: int | None
) -> list[str]:
    """Cheap warnings for ``rftj create --dry-run`` (nothing sampled): settings that waste a job.

    ``settings`` is the job's :class:`~openrft.settings.JobSettings`, ``num_prompts`` its dataset size,
    ``base_params`` the base model's parameters (None: unknown) and ``cores`` this machine's CPUs.
    """
    s, b = settings.sampling, settings.batching
    out = []
    if s.n < 4:
        out.append(
            f"--response-candidates-count {s.n}: with so few candidates a group's mean is a noisy baseline "
            "and the candidates often tie (a zero-variance group, dropped); 8 is the usual choice"
        )
    if 0.1 < s.temperature < 0.3:
        out.append(
            f"--temperature {s.temperature:g}: this cold, a prompt's candidates are often alike, so many "
            "groups get equal scores and are dropped; 0.5-1.0 explores better"
        )
    if b.step_sequences is not None and b.step_sequences * b.accumulation_steps < s.n:
        out.append(
            f"--batch-size-samples {b.step_sequences} holds fewer sequences than one group ({s.n} candidates): "
            "a prompt's candidates are split over several updates, and the later ones train off-policy"
        )
    elif b.step_tokens * b.accumulation_steps < s.n * s.max_tokens:
        out.append(
            f"--batch-size {b.step_tokens} tokens is less than one group's responses at full length "
            f"({s.n} x {s.max_tokens} tokens): long groups are split over several updates, and the later "
            "ones train off-policy"
        )
    seconds = cpu_round_seconds(settings, num_prompts, base_params, cores)
    if seconds is not None and seconds > SLOW_ROUND_S:
        per_round = settings.schedule.prompts_per_round(num_prompts)
        out.append(
            f"--max-output-tokens {s.max_tokens} on a CPU: a round of {per_round} prompts x {s.n} responses may "
            f"take about {duration(seconds)} to sample when responses run to the limit (a rough estimate from "
            "the model's size); `openrft rftj preflight` with the same flags measures it. Lower "
            "--max-output-tokens or --chunk-size, or use a GPU"
        )
    return out


def input_notes(dataset: Any, evaluator: Any) -> list[str]:
    """What a job's inputs are warned of, wherever a job is checked (``--dry-run``, preflight, ``create
    --server``, the job itself): the rows ``--skip-bad-rows`` leaves out, rows that load but look wrong,
    and an evaluator file's functions passed over for its decorated one."""
    from openrft.data.notes import content_notes
    from openrft.evaluators.loader import passed_over_note

    skipped = getattr(dataset, "skipped_note", lambda: None)()
    chosen = passed_over_note(evaluator) if evaluator is not None else None
    return [*filter(None, [skipped]), *content_notes(dataset), *filter(None, [chosen])]


def cpu_round_seconds(
    settings: Any, num_prompts: int, base_params: int | None, cores: int | None
) -> float | None:
    """Worst-case seconds to sample one round on this CPU (None: not sampled locally on a CPU)."""
    e = settings.engine
    if settings.model.device != "cpu" or e.kind != "local" or e.ray is not None or not base_params:
        return None
    rate = CPU_TOKENS_PER_S * CPU_REFERENCE_PARAMS / base_params
    rate *= min(16, max(1, cores or 1)) / CPU_REFERENCE_CORES
    tokens = (
        settings.schedule.prompts_per_round(num_prompts) * settings.sampling.n * settings.sampling.max_tokens
    )
    return tokens / rate


# ----------------------------------------------------------------------------- statistics


def quantiles(values: Sequence[float], points: Sequence[float] = QUANTILES) -> dict[str, float]:
    """Linear-interpolated quantiles, keyed ``min``, ``p10`` ... ``max`` (empty for no values)."""
    data = sorted(float(v) for v in values)
    if not data:
        return {}
    out = {}
    for q in points:
        pos = q * (len(data) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        value = data[lo] + (data[hi] - data[lo]) * (pos - lo)
        out["min" if q == 0 else "max" if q == 1 else f"p{round(q * 100)}"] = value
    return out


def histogram(values: Sequence[float], bins: int = 5, width: int = 30) -> list[str]:
    """A small text histogram: one line per bin, ``[lo, hi)  ####  count``."""
    data = [float(v) for v in values]
    if not data:
        return []
    lo, hi = min(data), max(data)
    if hi - lo < 1e-12:
        return [f"  {lo:>8.3g}            {'#' * width}  {len(data)}"]
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in data:
        counts[min(bins - 1, int((v - lo) / step))] += 1
    top = max(counts)
    return [
        f"  {lo + i * step:>8.3g} - {lo + (i + 1) * step:<8.3g} {'#' * round(width * c / top):<{width}}  {c}"
        for i, c in enumerate(counts)
    ]


def group_stats(scores_GK: Sequence[Sequence[tuple[float, bool]]]) -> tuple[list[float], list[float]]:
    """Per group: the mean and population standard deviation of its valid, finite scores (0 when none)."""
    means, stds = [], []
    for group in scores_GK:
        valid = [s for s, ok in group if ok and math.isfinite(s)]
        mean = sum(valid) / len(valid) if valid else 0.0
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in valid) / len(valid)) if valid else 0.0)
    return means, stds


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h`` or ``3.2 days``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


__all__ = [
    "input_notes",
    "NO_SIGNAL_EXIT_CODE",
    "PreflightReport",
    "Timing",
    "advise",
    "cpu_round_seconds",
    "dry_run_warnings",
    "duration",
    "group_stats",
    "histogram",
    "quantiles",
    "suggest_max_tokens",
]
