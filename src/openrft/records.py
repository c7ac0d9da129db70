"""Typed records passed between the stages of a job: rollout -> scoring -> training.

The interfaces between stages are deliberately narrow: a rollout engine (local,
HTTP endpoint, a Ray actor or vLLM) only has to turn :class:`Prompt` objects and
:class:`SamplingParams` into :class:`Completion` records; an evaluator only has to
turn a prompt and its completions into :class:`Score` records. Everything here is
plain data (frozen dataclasses of Python scalars and tuples) so it pickles cheaply
across processes and machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: the reference service's rollout parameters.

    Order of application (as in vLLM): logits / temperature, then top-k (0 = off),
    then top-p (1.0 = off).
    """

    n: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 40
    max_tokens: int = 2048
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # most likely alternatives recorded at each position (API clients; 0 = none)
    grammar: str | None = None  # llguidance grammar every response must follow (openrft.rollout.constrained)


@dataclass(frozen=True)
class Prompt:
    """One dataset row ready for sampling.

    ``messages`` are the chat messages to render with the model's chat template
    (trailing assistant messages already removed); ``row`` is the whole original
    row (``ground_truth`` and any other fields) handed to the evaluator.
    """

    prompt_id: str
    messages: tuple[dict[str, Any], ...]
    row: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def ground_truth(self) -> Any:
        return self.row.get("ground_truth")


@dataclass(frozen=True)
class Completion:
    """One sampled candidate for one prompt.

    ``logprobs[t]`` is log pi(completion_token_ids[t] | prefix) under the sampling
    policy's temperature-scaled distribution (logits / T, before top-k/top-p
    truncation), recorded while sampling: these are the trainer's "old" log-probs.
    """

    prompt_id: str
    candidate_index: int
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    policy_version: int = 0
    # Agent rollouts (several model calls, see openrft.rollout.trajectories):
    completion_mask: tuple[int, ...] = ()  # 1 = sampled by the model, 0 = a tool's or user's turn; () = all 1
    continuations: tuple[Completion, ...] = ()  # further sequences of the same trajectory
    conversation: tuple[dict[str, Any], ...] = field(default=(), hash=False, compare=False)  # as returned
    agent_metrics: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    error: str = ""  # the agent failed: scored invalid, never trained on
    # with SamplingParams.top_logprobs = k: per token, the k most likely (token id, log-prob), best first
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = field(default=(), hash=False, compare=False)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.completion_token_ids)

    @property
    def sequences(self) -> tuple[Completion, ...]:
        """Every training sequence of this candidate: itself, then its continuations."""
        return (self, *self.continuations)

    @property
    def longest_call(self) -> int:
        """Tokens of the longest single model call: what ``--max-output-tokens`` bounds. A plain candidate
        is one call; an agent's calls are the runs of sampled tokens between its environment's turns."""
        longest = 0
        for c in self.sequences:
            if not c.completion_mask:
                longest = max(longest, len(c.completion_token_ids))
                continue
            run = 0
            for sampled in c.completion_mask:
                run = run + 1 if sampled else 0
                longest = max(longest, run)
        return longest

    @property
    def sampled_tokens(self) -> int:
        """Tokens the model sampled, over all sequences (environment turns not counted)."""
        return sum(sum(c.completion_mask) if c.completion_mask else len(c.completion_token_ids)
                   for c in self.sequences)  # fmt: skip


@dataclass(frozen=True)
class Score:
    """An evaluator's verdict on one completion.

    Invalid scores (``is_valid=False``: the evaluator raised, timed out, or said so)
    are excluded from group statistics and receive advantage 0.
    """

    score: float
    is_valid: bool = True
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ScoredGroup:
    """All K candidates of one prompt with their scores (same order)."""

    prompt: Prompt
    completions: tuple[Completion, ...]
    scores: tuple[Score, ...]


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that samples completions: local transformers, an HTTP endpoint, vLLM, Ray actors.

    The trainer talks to an engine through two calls: :meth:`generate`, and :meth:`set_policy`
    after every optimizer update. Engines that sample the trainer's live model in this process
    (local, Ray snapshots of it) set ``needs_adapter_files = False``; engines that load the
    adapter from disk (an inference server, vLLM) set it True and get the adapter's folder.

    An engine that can stop part-way has a ``should_abort`` attribute (None unless the trainer sets it
    around a round): it asks it as it goes (between decoding steps, requests or waits) and, once it
    answers True, raises :class:`openrft.errors.RolloutAborted`, so that a cancel need not wait for a
    whole round of sampling.
    """

    needs_adapter_files: bool

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt in order, ``params.n`` completions (candidate_index 0..n-1)."""
        ...

    def set_policy(self, version: int, adapter: Path | None = None) -> None:
        """Sample with policy ``version`` from now on (stamped on every completion as ``policy_version``).

        ``adapter`` is the folder of that version's LoRA adapter (PEFT format), given only to
        engines with ``needs_adapter_files``.
        """
        ...
