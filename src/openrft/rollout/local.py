"""The local rollout engine: fast batched sampling from a live transformers model.

How a call to :meth:`LocalEngine.generate` spends its time, and why:

* **One prefill per prompt.** A prompt is run through the model once (only its last
  position goes through the LM head); its keys/values are then copied into the rows of
  its ``n`` candidates, which all sample their first token from the same logits.
* **A preallocated KV cache.** Every in-flight row lives in one ``[rows, heads,
  capacity, head_dim]`` buffer per layer, right-aligned (left padding), sized for the
  longest response still possible; each decoding step writes one column in place
  instead of concatenating the whole cache as a growing cache would.
* **Continuous batching.** At most ``max_concurrent_rollouts`` rows are in flight. When
  a row ends (end-of-turn token or length limit) it stops being useful; as soon as a
  whole prompt's worth of rows is free (or a quarter of the batch has ended and nothing
  is waiting) the batch is rebuilt without the finished rows, new prompts are admitted,
  and padding columns no remaining row needs are trimmed off.
* **Batch-independent randomness.** Each candidate owns a random stream seeded from
  ``(seed, prompt_id, candidate_index)`` and samples by inverse CDF (see
  :mod:`openrft.rollout.sampling`), so its tokens do not depend on which other rows
  share the batch, on ``max_concurrent_rollouts``, or on the order of prompts (up to
  float rounding in the forward pass, which can flip a token only when a uniform lands
  within ~1e-7 of a boundary).

The engine samples from the model object it is given (a live ``peft.PeftModel`` during
training, no weight copy), in eval mode under ``torch.no_grad()``, and restores every
module's train/eval mode afterwards. It needs full-attention layers and the ``sdpa`` or
``eager`` attention implementation (the CPU defaults).
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from openrft.errors import RolloutError
from openrft.models import end_token_ids
from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout.prompts import encode_messages
from openrft.rollout.sampling import Truncation, check_params, row_uniforms, sample_tokens

DEFAULT_MAX_CONCURRENT = 32
PREFILL_TOKENS = 2048  # padded prompt tokens per prefill forward pass
COMPACT_FRACTION = 0.25  # rebuild once this share of the batch has finished (when nothing waits)


class _BufferLayer(DynamicLayer):
    """One layer's cache in preallocated buffers ``[B, H, capacity, D]``; appends write in place."""

    def __init__(self, keys_BHCD: torch.Tensor, values_BHCD: torch.Tensor, length: int):
        super().__init__()
        self.keys, self.values = keys_BHCD, values_BHCD
        self.length = length
        self.device = keys_BHCD.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0


@dataclass
class _Work:
    """Candidates of one prompt waiting to be admitted together (one shared prefill)."""

    prompt_index: int
    candidates: list[int]


@dataclass
class _Rows:
    """Per-row state of sequences being decoded; every tensor has one row per sequence."""

    owners: list[tuple[int, int]]  # (prompt index, candidate index) of each row
    start_B: torch.Tensor  # first cache column holding this row's prompt
    last_B: torch.Tensor  # the token to feed next
    count_B: torch.Tensor  # tokens generated so far
    limit_B: torch.Tensor  # tokens this row may generate
    done_B: torch.Tensor  # bool: finished, waiting to be dropped
    stopped_B: torch.Tensor  # bool: ended with an end token
    tokens_BT: torch.Tensor  # generated token ids
    logprobs_BT: torch.Tensor  # their fp32 log-probs
    uniforms_BT: torch.Tensor  # fp64 uniforms of each row's private stream

    def take(self, index_B: torch.Tensor) -> _Rows:
        owners = [self.owners[i] for i in index_B.tolist()]
        fields = {k: v.index_select(0, index_B) for k, v in vars(self).items() if k != "owners"}
        return _Rows(owners=owners, **fields)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        width = max(p.tokens_BT.shape[1] for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return (
                t
                if t.dim() == 1 or t.shape[1] == width
                else torch.nn.functional.pad(t, (0, width - t.shape[1]))
            )

        fields = {k: torch.cat([pad(getattr(p, k)) for p in parts]) for k in vars(parts[0]) if k != "owners"}
        return _Rows(owners=[o for p in parts for o in p.owners], **fields)


@dataclass
class _Prefilled:
    """A prompt batch after prefill: its cache (left-padded to ``length``) and its new rows."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [P, H, length, D]
    length: int
    row_prompt_R: torch.Tensor  # which of the P prompts each new row belongs to
    rows: _Rows  # start_B is relative to this prefill's own columns


class LocalEngine:
    """Sample completions in-process from ``model`` (a transformers causal LM or a PEFT wrapper).

    ``max_concurrent_rollouts`` bounds the sequences decoded together (default 32);
    ``stop_token_ids`` overrides the tokens that end a response (default: EOS and the
    chat template's end-of-turn token). ``policy_version`` is stamped on every
    completion; the trainer bumps it after each optimizer step.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_concurrent_rollouts: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        prefill_tokens: int = PREFILL_TOKENS,
        policy_version: int = 0,
    ):
        if max_concurrent_rollouts is not None and max_concurrent_rollouts < 1:
            raise RolloutError(f"max_concurrent_rollouts must be >= 1 (got {max_concurrent_rollouts})")
        self.model = model
        self.tokenizer = tokenizer
        self.max_concurrent_rollouts = max_concurrent_rollouts or DEFAULT_MAX_CONCURRENT
        self.stop_token_ids = tuple(stop_token_ids or end_token_ids(tokenizer, model))
        self.prefill_tokens = prefill_tokens
        self.policy_version = policy_version
        config = model.config
        self._max_positions = getattr(config, "max_position_embeddings", None) or 1 << 30
        self._pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        )
        _check_supported(config)

    # ------------------------------------------------------------------------- public

    def encode(self, prompt: Prompt) -> list[int]:
        """Prompt token ids: the chat messages rendered with the model's chat template."""
        return encode_messages(self.tokenizer, prompt.messages, prompt.prompt_id)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt in order, ``params.n`` completions (candidate_index 0..n-1)."""
        encoded = [(p.prompt_id, self.encode(p)) for p in prompts]
        return self.generate_from_ids(encoded, params)

    def generate_from_ids(
        self,
        prompts: Sequence[tuple[str, Sequence[int]]],
        params: SamplingParams,
        *,
        stop_token_ids: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Like :meth:`generate` for prompts already tokenized: ``(prompt_id, token_ids)`` pairs.

        ``stop_token_ids`` replaces the engine's end tokens for this call.
        """
        check_params(params)
        stops = tuple(stop_token_ids) if stop_token_ids else self.stop_token_ids
        run = _Run(self, [p for p, _ in prompts], [list(ids) for _, ids in prompts], params, stops)
        with self._sampling_mode():
            return run.execute()

    # ------------------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _sampling_mode(self) -> Iterator[None]:
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for module, training in modes:
                module.training = training

    def forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Run the model; return the last position's logits ``[B, V]``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    def mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """A 4-D attention mask from a boolean "may attend" tensor ``[B, 1, Q, K]``."""
        if getattr(self.model.config, "_attn_implementation", "sdpa") == "eager":
            dtype = next(self.model.parameters()).dtype
            return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        return allowed


def _check_supported(config: Any) -> None:
    implementation = getattr(config, "_attn_implementation", "sdpa")
    if implementation not in ("sdpa", "eager"):
        raise RolloutError(
            f"the local engine needs the 'sdpa' or 'eager' attention implementation, not '{implementation}'",
            hint="load the model with attn_implementation='sdpa', or use an endpoint engine",
        )
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        raise RolloutError(
            "the local engine supports full-attention models only (this one has sliding-window layers)",
            hint="use --rollout-engine endpoint with a vLLM server for this model",
        )


class _Run:
    """One ``generate`` call: admission, prefill, decoding steps and collection."""

    def __init__(
        self,
        engine: LocalEngine,
        names: list[str],
        prompt_ids: list[list[int]],
        params: SamplingParams,
        stop_token_ids: tuple[int, ...],
    ):
        self.engine, self.names, self.params = engine, names, params
        self.how = Truncation.from_params(params)
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.version = engine.policy_version
        self.prompt_ids = prompt_ids
        self.limits = [self._limit(name, ids) for name, ids in zip(names, prompt_ids, strict=True)]
        self.stop_ids = torch.tensor(stop_token_ids)
        self.results: list[list[Completion | None]] = [[None] * params.n for _ in names]
        chunk = engine.max_concurrent_rollouts
        self.queue: deque[_Work] = deque(
            _Work(i, list(range(params.n))[lo : lo + chunk])
            for i in range(len(names))
            for lo in range(0, params.n, chunk)
        )
        self.rows: _Rows | None = None
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0
        self.cache: Cache | None = None

    def _limit(self, name: str, ids: list[int]) -> int:
        if not ids:
            raise RolloutError(f"prompt {name} has no tokens")
        room = self.engine._max_positions - len(ids)
        if room < 1:
            raise RolloutError(
                f"prompt {name} has {len(ids)} tokens: no room left in the model's "
                f"{self.engine._max_positions}-token context"
            )
        return min(self.params.max_tokens, room)

    def execute(self) -> list[list[Completion]]:
        while self.queue or self._active():
            self._schedule()
            if self._active():
                self._step()
        if self.rows is not None:
            self._collect(self.rows, self.rows.done_B)
        return [[c for c in group if c is not None] for group in self.results]

    def _active(self) -> int:
        return 0 if self.rows is None else int((~self.rows.done_B).sum())

    # ------------------------------------------------------------------------- scheduling

    def _schedule(self) -> None:
        """Admit waiting prompts when a whole prompt fits; drop finished rows when worthwhile."""
        free = self.engine.max_concurrent_rollouts - self._active()
        admitted: list[_Work] = []
        while self.queue and len(self.queue[0].candidates) <= free:
            work = self.queue.popleft()
            admitted.append(work)
            free -= len(work.candidates)
        finished = 0 if self.rows is None else int(self.rows.done_B.sum())
        total = 0 if self.rows is None else len(self.rows.owners)
        if admitted or (finished and finished >= COMPACT_FRACTION * total):
            self._rebuild([self._prefill(group) for group in self._prefill_groups(admitted)])

    def _prefill_groups(self, admitted: list[_Work]) -> list[list[_Work]]:
        groups: list[list[_Work]] = []
        for work in admitted:
            if groups:
                widest = max(len(self.prompt_ids[w.prompt_index]) for w in groups[-1] + [work])
                if widest * (len(groups[-1]) + 1) <= self.engine.prefill_tokens:
                    groups[-1].append(work)
                    continue
            groups.append([work])
        return groups

    # ------------------------------------------------------------------------- prefill

    def _prefill(self, group: list[_Work]) -> _Prefilled:
        engine = self.engine
        ids = [self.prompt_ids[w.prompt_index] for w in group]
        length = max(len(x) for x in ids)
        pad_P = torch.tensor([length - len(x) for x in ids])
        input_ids_PL = torch.tensor([[engine._pad_id] * (length - len(x)) + x for x in ids])
        columns_L = torch.arange(length)
        valid_PL = columns_L[None, :] >= pad_P[:, None]
        causal_LL = columns_L[:, None] >= columns_L[None, :]
        allowed_P1LL = (causal_LL[None] & valid_PL[:, None, :]) | torch.eye(length, dtype=torch.bool)[None]
        positions_PL = (columns_L[None, :] - pad_P[:, None]).clamp_(min=0)
        cache = DynamicCache()
        logits_PV = engine.forward(input_ids_PL, engine.mask(allowed_P1LL[:, None]), positions_PL, cache)
        kv = [(layer.keys, layer.values) for layer in cache.layers]

        row_prompt = [p for p, w in enumerate(group) for _ in w.candidates]
        row_prompt_R = torch.tensor(row_prompt)
        owners = [(w.prompt_index, c) for w in group for c in w.candidates]
        limits = [self.limits[w.prompt_index] for w in group for _ in w.candidates]
        width = max(limits)
        uniforms_RT = torch.stack(
            [
                torch.nn.functional.pad(row_uniforms(self.seed, self.names[p], c, n), (0, width - n))
                for (p, c), n in zip(owners, limits, strict=True)
            ]
        )
        tokens_R, logprobs_R = sample_tokens(logits_PV[row_prompt_R], uniforms_RT[:, 0], self.how)
        rows = len(owners)
        tokens_RT = torch.zeros(rows, width, dtype=torch.long)
        logprobs_RT = torch.zeros(rows, width, dtype=torch.float32)
        tokens_RT[:, 0], logprobs_RT[:, 0] = tokens_R, logprobs_R
        count_R = torch.ones(rows, dtype=torch.long)
        limit_R = torch.tensor(limits)
        stopped_R = torch.isin(tokens_R, self.stop_ids)
        state = _Rows(
            owners=owners,
            start_B=pad_P[row_prompt_R],
            last_B=tokens_R,
            count_B=count_R,
            limit_B=limit_R,
            done_B=stopped_R | (count_R >= limit_R),
            stopped_B=stopped_R,
            tokens_BT=tokens_RT,
            logprobs_BT=logprobs_RT,
            uniforms_BT=uniforms_RT,
        )
        return _Prefilled(kv=kv, length=length, row_prompt_R=row_prompt_R, rows=state)

    # ------------------------------------------------------------------------- batch rebuild

    def _rebuild(self, fresh: list[_Prefilled]) -> None:
        """New cache buffers holding the unfinished old rows and the admitted new ones."""
        parts: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int, torch.Tensor, _Rows]] = []
        if self.rows is not None:
            self._collect(self.rows, self.rows.done_B)
            keep_B = torch.nonzero(~self.rows.done_B).squeeze(1)
            if len(keep_B):
                kept = self.rows.take(keep_B)
                trim = int(kept.start_B.min())
                kept.start_B -= trim
                parts.append(
                    (
                        [(k[:, :, trim : self.length], v[:, :, trim : self.length]) for k, v in self.kv],
                        self.length - trim,
                        keep_B,
                        kept,
                    )
                )
        for item in fresh:
            self._collect(item.rows, item.rows.done_B)
            keep_R = torch.nonzero(~item.rows.done_B).squeeze(1)
            if len(keep_R):
                parts.append((item.kv, item.length, item.row_prompt_R[keep_R], item.rows.take(keep_R)))
        if not parts:
            self.rows, self.kv, self.length, self.cache = None, [], 0, None
            return
        length = max(p[1] for p in parts)
        remaining = max(int((p[3].limit_B - p[3].count_B).max()) for p in parts)
        capacity = length + remaining
        total = sum(len(p[3].owners) for p in parts)
        new_kv = []
        for layer, (k0, v0) in enumerate(parts[0][0]):
            shape = (total, k0.shape[1], capacity, k0.shape[3])
            keys, values = torch.empty(shape, dtype=k0.dtype), torch.empty(shape, dtype=v0.dtype)
            row = 0
            for kv, part_length, source_R, _ in parts:
                k, v = kv[layer]
                shift, end = length - part_length, row + len(source_R)
                keys[row:end, :, :shift] = 0
                values[row:end, :, :shift] = 0
                keys[row:end, :, shift:length] = k.index_select(0, source_R)
                values[row:end, :, shift:length] = v.index_select(0, source_R)
                row = end
            new_kv.append((keys, values))
        for _, part_length, _, rows in parts:
            rows.start_B += length - part_length
        self.rows = _Rows.concat([p[3] for p in parts])
        self.kv, self.length = new_kv, length
        self.cache = Cache(layers=[_BufferLayer(k, v, length) for k, v in new_kv])

    # ------------------------------------------------------------------------- decoding

    def _step(self) -> None:
        """Feed every row its last token, sample the next one, mark rows that finish."""
        rows, engine = self.rows, self.engine
        assert rows is not None and self.cache is not None
        allowed_B111L = (torch.arange(self.length + 1)[None, :] >= rows.start_B[:, None])[:, None, None, :]
        positions_B1 = (self.length - rows.start_B)[:, None]
        logits_BV = engine.forward(rows.last_B[:, None], engine.mask(allowed_B111L), positions_B1, self.cache)
        self.length += 1
        active_B = ~rows.done_B
        column_B = rows.count_B.clamp(max=rows.uniforms_BT.shape[1] - 1)
        uniforms_B = rows.uniforms_BT.gather(1, column_B[:, None]).squeeze(1)
        tokens_B, logprobs_B = sample_tokens(logits_BV, uniforms_B, self.how)
        index_A = torch.nonzero(active_B).squeeze(1)
        rows.tokens_BT[index_A, column_B[index_A]] = tokens_B[index_A]
        rows.logprobs_BT[index_A, column_B[index_A]] = logprobs_B[index_A]
        rows.last_B = torch.where(active_B, tokens_B, rows.last_B)
        rows.count_B += active_B.long()
        stopped_B = active_B & torch.isin(tokens_B, self.stop_ids)
        rows.stopped_B |= stopped_B
        rows.done_B |= stopped_B | (rows.count_B >= rows.limit_B)

    def _collect(self, rows: _Rows, finished_B: torch.Tensor) -> None:
        """Turn finished rows into Completion records (each row is collected exactly once)."""
        tokenizer = self.engine.tokenizer
        for i in torch.nonzero(finished_B).squeeze(1).tolist():
            prompt_index, candidate = rows.owners[i]
            if self.results[prompt_index][candidate] is not None:
                continue
            count = int(rows.count_B[i])
            token_ids = rows.tokens_BT[i, :count].tolist()
            stopped = bool(rows.stopped_B[i])
            text_ids = token_ids[:-1] if stopped else token_ids
            self.results[prompt_index][candidate] = Completion(
                prompt_id=self.names[prompt_index],
                candidate_index=candidate,
                prompt_token_ids=tuple(self.prompt_ids[prompt_index]),
                completion_token_ids=tuple(token_ids),
                text=tokenizer.decode(text_ids, skip_special_tokens=True),
                logprobs=tuple(rows.logprobs_BT[i, :count].tolist()),
                finish_reason="stop" if stopped else "length",
                policy_version=self.version,
            )


__all__ = ["LocalEngine", "DEFAULT_MAX_CONCURRENT"]
