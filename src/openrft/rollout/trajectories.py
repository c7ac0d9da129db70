"""Exact tokens of agent rollouts: every model call recorded, then turned into training sequences.

The policy server records each chat completion served to a rollout (the client the agent
was given names the rollout in the ``X-OpenRFT-Rollout`` header, or in the model name,
``policy@<rollout id>``, for clients that pass nothing else): the prompt token ids as
rendered, the sampled token ids and their log-probs. Nothing is ever re-tokenised from the
final messages.

When a call continues the previous one (same messages, then the assistant reply the server
gave, then new user or tool messages), its prompt is built as the previous prompt + the
sampled tokens + the tokens of the new turns only ("token in, token out"), so the model sees
exactly what it wrote and the calls merge into one training sequence: sampled tokens carry
the trajectory's advantage, the environment's tokens between them are masked out. A call
that does not continue the previous one (the agent rewrote the history) starts a new
sequence of the same trajectory.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from openrft.records import Completion, SamplingParams

ROLLOUT_HEADER = "X-OpenRFT-Rollout"
# For clients that can pass nothing but a model name (litellm inside eval-protocol's agent):
# "policy@<rollout id>" names the policy and the rollout at once.
ROLLOUT_MODEL_SEP = "@"


def split_rollout_model(model: str | None) -> tuple[str | None, str | None]:
    """``"policy@p3#1"`` -> ``("policy", "p3#1")``; any other name -> ``(name, None)``."""
    if model and ROLLOUT_MODEL_SEP in model:
        name, rollout_id = model.split(ROLLOUT_MODEL_SEP, 1)
        if name and rollout_id:
            return name, rollout_id
    return model, None


@dataclass(frozen=True)
class CallRecord:
    """One model call of a rollout, as served."""

    messages: tuple[dict[str, Any], ...]  # the request's messages, normalised (see message_key)
    reply: dict[str, Any]  # the assistant message returned (content, tool_calls)
    text: str  # the completion's text as sampled
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    policy_version: int
    tools: str = ""  # the tools the prompt showed the model (tools_key), "" for none


def tools_key(tools: Sequence[dict[str, Any]] | None) -> str:
    """The tools a prompt shows the model, as comparable text ("" for none)."""
    return json.dumps(list(tools), sort_keys=True, default=str) if tools else ""


@dataclass
class RolloutLog:
    calls: list[CallRecord] = field(default_factory=list)
    truncated: bool = False  # a call was cut short by the context budget (or refused, and the agent failed)
    refused: bool = False  # a call was refused: the conversation no longer fitted the context budget
    notes: dict[str, float] = field(default_factory=dict)  # counters from the built-in tool loop
    started: int = 0  # calls begun: each call's index among the rollout's, given when it arrives
    seed_key: str = ""  # what names the rollout in its calls' seeds (the same in every rerun of the job)


class RolloutRecorder:
    """The calls of every open rollout, and the sampling settings forced on them.

    ``params`` (the job's sampling parameters for the round, seed included) and
    ``max_context`` (tokens a whole trajectory may use) apply to every recorded call,
    whatever the request asks.
    """

    def __init__(self, params: SamplingParams | None = None, max_context: int | None = None):
        self.params, self.max_context = params, max_context
        self._logs: dict[str, RolloutLog] = {}
        self._lock = threading.Lock()

    def open(self, rollout_id: str, seed_key: str | None = None) -> None:
        """Start recording rollout ``rollout_id`` (never reused); ``seed_key`` (default: the id)
        names it in its calls' seeds, so that a rerun of the job samples the same tokens."""
        with self._lock:
            self._logs[rollout_id] = RolloutLog(seed_key=seed_key if seed_key is not None else rollout_id)

    def close(self, rollout_id: str) -> RolloutLog:
        with self._lock:
            return self._logs.pop(rollout_id, RolloutLog())

    def log(self, rollout_id: str) -> RolloutLog | None:
        with self._lock:
            return self._logs.get(rollout_id)

    def next_call(self, rollout_id: str) -> int:
        """The index of a call that has just arrived (0, 1, ...), unique even among concurrent calls."""
        with self._lock:
            log = self._logs.get(rollout_id)
            if log is None:
                return -1
            log.started += 1
            return log.started - 1

    def record(self, rollout_id: str, call: CallRecord) -> None:
        log = self.log(rollout_id)
        if log is not None:
            log.calls.append(call)

    def mark_truncated(self, rollout_id: str) -> None:
        log = self.log(rollout_id)
        if log is not None:
            log.truncated = True

    def mark_refused(self, rollout_id: str) -> None:
        """A call of the rollout was refused for the context budget: the run ran out of context if its
        agent then fails; one that catches the refusal and goes on is judged on what it returns."""
        log = self.log(rollout_id)
        if log is not None:
            log.refused = True

    def count(self, rollout_id: str, name: str, amount: float = 1.0) -> None:
        log = self.log(rollout_id)
        if log is not None:
            log.notes[name] = log.notes.get(name, 0.0) + amount


# ----------------------------------------------------------------------------- continuation


def message_key(message: dict[str, Any]) -> tuple:
    """What makes two chat messages the same turn: role, text, tool calls (name and arguments), call id."""
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments) if arguments.strip() else {}
        calls.append((function.get("name"), json.dumps(arguments, sort_keys=True, default=str)))
    return (message.get("role"), (content or "").strip(), tuple(calls), message.get("tool_call_id"))


def continues(
    previous: CallRecord, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
) -> bool:
    """Whether ``messages`` are the previous call's messages, its reply, and at least one new turn, with
    the same tools shown (a template renders them into the prompt: other tools make it another prompt)."""
    k = len(previous.messages)
    if len(messages) <= k + 1 or previous.tools != tools_key(tools):
        return False
    same_history = all(
        message_key(a) == message_key(b) for a, b in zip(previous.messages, messages, strict=False)
    )
    return same_history and message_key(messages[k]) == message_key(previous.reply)


def joining_text(sampled_text: str, turn_end: str) -> str:
    """The part of the template's end-of-assistant-turn text the model did not write itself.

    ``sampled_text`` ends with whatever the model wrote (its end-of-turn token, when it stopped);
    ``turn_end`` is what the template writes after an assistant message (e.g. ``<|im_end|>\\n``).
    """
    for overlap in range(min(len(sampled_text), len(turn_end)), 0, -1):
        if sampled_text.endswith(turn_end[:overlap]):
            return turn_end[overlap:]
    return turn_end


# ----------------------------------------------------------------------------- training sequences


def trajectory_completion(
    prompt_id: str, candidate_index: int, log: RolloutLog, text: str = ""
) -> Completion:
    """The trajectory's calls as one :class:`Completion`: merged where each call continues the last.

    The first sequence is the completion itself; each call that starts afresh adds one of
    ``continuations``. ``completion_mask`` is 1 on sampled tokens, 0 on the turns between them.
    A rollout with no call gives an empty completion (scored invalid by the caller).
    """
    sequences: list[dict[str, Any]] = []
    for call in log.calls:
        current = sequences[-1] if sequences else None
        if current is not None and _extends(current, call):
            gap = call.prompt_token_ids[len(current["prompt"]) + len(current["ids"]) :]
            current["ids"] += list(gap) + list(call.completion_token_ids)
            current["mask"] += [0] * len(gap) + [1] * len(call.completion_token_ids)
            current["logprobs"] += [0.0] * len(gap) + list(call.logprobs)
            current["finish"], current["version"] = call.finish_reason, call.policy_version
        else:
            sequences.append(
                {
                    "prompt": list(call.prompt_token_ids),
                    "ids": list(call.completion_token_ids),
                    "mask": [1] * len(call.completion_token_ids),
                    "logprobs": list(call.logprobs),
                    "finish": call.finish_reason,
                    "version": call.policy_version,
                }
            )
    if not sequences:
        return Completion(prompt_id, candidate_index, (), (), text, (), "stop")
    built = [
        Completion(
            prompt_id=prompt_id,
            candidate_index=candidate_index,
            prompt_token_ids=tuple(s["prompt"]),
            completion_token_ids=tuple(s["ids"]),
            text=text,
            logprobs=tuple(s["logprobs"]),
            finish_reason="length" if log.truncated else s["finish"],
            policy_version=min(c.policy_version for c in log.calls),
            completion_mask=tuple(s["mask"]) if 0 in s["mask"] else (),
        )
        for s in sequences
    ]
    first, *rest = built
    return _replace(first, continuations=tuple(rest))


def _extends(current: dict[str, Any], call: CallRecord) -> bool:
    prefix = current["prompt"] + current["ids"]
    return len(call.prompt_token_ids) >= len(prefix) and list(call.prompt_token_ids[: len(prefix)]) == prefix


def _replace(completion: Completion, **changes: Any) -> Completion:
    import dataclasses

    return dataclasses.replace(completion, **changes)


__all__ = [
    "ROLLOUT_HEADER",
    "ROLLOUT_MODEL_SEP",
    "CallRecord",
    "RolloutLog",
    "RolloutRecorder",
    "continues",
    "joining_text",
    "message_key",
    "split_rollout_model",
    "trajectory_completion",
]
