"""The decoding loop behind :class:`~openrft.rollout.local.LocalEngine` (one ``_Run`` per call).

Rows (one per candidate being decoded) share a right-aligned KV cache: row ``b`` holds its
prompt and generated tokens in columns ``start_B[b] .. length - 1``; columns to the left
are padding that the attention mask hides. A prompt is prefilled once; its keys, values
and last-position logits wait in a stash until every candidate has been admitted, so
candidates can join the batch a few at a time as slots free up, with no second prefill.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from openrft.errors import RolloutAborted, RolloutError
from openrft.records import Completion, SamplingParams
from openrft.rollout.sampling import Truncation, cut_at_stop, row_uniforms, sample_tokens, top_alternatives

COMPACT_FRACTION = 0.25  # with nothing waiting, rebuild once this share of the rows has finished
GROW_COLUMNS = 64  # cache columns allocated ahead of the current length (grown by a rebuild when used up)
TRIM_FRACTION = 0.25  # a rebuild keeps the buffers unless this share of the columns is padding no row needs

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values)


@dataclass(frozen=True)
class DecodeSettings:
    """What a :class:`Run` needs from the engine that starts it (taken afresh for every call)."""

    # (input_ids, attention_mask, position_ids, cache) -> the last position's logits [B, V]
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Cache], torch.Tensor]
    # a boolean "may attend" tensor [B, 1, Q, K] -> the attention mask the model takes
    mask: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Any  # its ``decode`` turns completion tokens into text
    pad_id: int  # token id filling the padding columns of a prefill
    max_positions: int  # the model's context length
    max_concurrent_rollouts: int  # rows decoded together at most
    prefill_tokens: int  # padded prompt tokens per prefill forward pass
    policy_version: int  # stamped on every completion
    # stop strings -> the [V] bool mask of tokens that can complete one (None: any token can)
    stop_enders: Callable[[tuple[str, ...]], torch.Tensor | None] = lambda stops: None
    device: torch.device = torch.device("cpu")  # the model's: every tensor of the loop lives there
    constraints: Any = None  # openrft.rollout.constrained.Constraints: matchers for SamplingParams.grammar


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
class _Stash:
    """A prefilled prompt waiting for its candidates to be admitted."""

    kv: KV  # per layer, [H, P, D] each
    logits_V: torch.Tensor  # next-token logits after the prompt
    waiting: int  # candidates not yet admitted


@dataclass
class _Rows:
    """Per-row state of the sequences being decoded; every tensor has one row per sequence."""

    owners: list[tuple[int, int]]  # (prompt index, candidate index) of each row
    start_B: torch.Tensor  # first cache column of this row's prompt
    last_B: torch.Tensor  # the token to feed next
    count_B: torch.Tensor  # tokens generated so far
    limit_B: torch.Tensor  # tokens this row may generate
    done_B: torch.Tensor  # bool: finished, waiting to be dropped
    stopped_B: torch.Tensor  # bool: ended with an end token
    tokens_BT: torch.Tensor  # generated token ids
    logprobs_BT: torch.Tensor  # their fp32 log-probs
    uniforms_BT: torch.Tensor  # fp64 uniforms of each row's private stream
    top_ids_BTK: torch.Tensor  # the K most likely tokens at each position (K = params.top_logprobs, often 0)
    top_logprobs_BTK: torch.Tensor  # their fp32 log-probs

    def take(self, index_B: torch.Tensor) -> _Rows:
        tensors = {f.name: getattr(self, f.name).index_select(0, index_B) for f in fields(self)[1:]}
        return _Rows(owners=[self.owners[i] for i in index_B.tolist()], **tensors)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        width = max(p.tokens_BT.shape[1] for p in parts)

        def widen(t: torch.Tensor) -> torch.Tensor:  # pads dimension 1 (T) to ``width``
            if t.dim() == 1:
                return t
            return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]))

        tensors = {f.name: torch.cat([widen(getattr(p, f.name)) for p in parts]) for f in fields(_Rows)[1:]}
        return _Rows(owners=[o for p in parts for o in p.owners], **tensors)


class Run:
    """One ``generate`` call: admission, prefill, decoding steps and collection of records."""

    def __init__(
        self,
        settings: DecodeSettings,
        names: list[str],
        prompt_ids: list[list[int]],
        params: SamplingParams,
        stop_token_ids: tuple[int, ...],
    ):
        self.settings, self.names, self.prompt_ids, self.params = settings, names, prompt_ids, params
        self.how = Truncation.from_params(params)
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.version = settings.policy_version
        self.limits = [self._limit(name, ids) for name, ids in zip(names, prompt_ids, strict=True)]
        self.device = settings.device
        self.stop_ids = torch.tensor(stop_token_ids, device=self.device)
        self.stop_id_set = set(stop_token_ids)
        # enough trailing tokens to spell any stop string (a token decodes to >= 1 character)
        self.stop_window = max((len(text) for text in params.stop), default=0) + 2
        enders_V = settings.stop_enders(params.stop) if params.stop else None
        self.stop_enders_V = None if enders_V is None else enders_V.to(self.device)
        self.results: list[list[Completion | None]] = [[None] * params.n for _ in names]
        # with a grammar, each row's matcher (by owner), copied from one compiled at the start
        self.grammar = settings.constraints.matcher(params.grammar) if params.grammar else None
        self.matchers: dict[tuple[int, int], Any] = {}
        self.queue: deque[tuple[int, int]] = deque((p, c) for p in range(len(names)) for c in range(params.n))
        self.stash: dict[int, _Stash] = {}
        capacity = settings.max_concurrent_rollouts
        # Admitting costs one copy of the cache; waiting leaves slots idle. sqrt balances the two.
        self.admit_at = max(1, min(params.n, round(math.sqrt(capacity / 3))))
        self.rows: _Rows | None = None
        self.kv: KV = []
        self.length = 0
        self.capacity = 0
        self.cache: Cache | None = None
        # told each sampled token as ``((prompt index, candidate index), token id)`` pairs, a step at a time
        self.on_tokens: Callable[[list[tuple[tuple[int, int], int]]], None] | None = None
        # asked before each step: the prompts whose requests were abandoned (their rows end now)
        self.cancelled: Callable[[], set[int]] | None = None
        self.dropped: set[int] = set()
        # asked before each step: True stops the whole call (RolloutAborted), nothing collected
        self.abort: Callable[[], bool] | None = None

    def _limit(self, name: str, ids: list[int]) -> int:
        if not ids:
            raise RolloutError(f"prompt {name} has no tokens")
        room = self.settings.max_positions - len(ids)
        if room < 1:
            raise RolloutError(
                f"prompt {name} has {len(ids)} tokens: no room left in the model's "
                f"{self.settings.max_positions}-token context"
            )
        return min(self.params.max_tokens, room)

    def execute(self) -> list[list[Completion]]:
        while self.queue or self._active():
            if self.abort is not None and self.abort():
                raise RolloutAborted()
            if self.cancelled is not None:
                self._drop(self.cancelled() - self.dropped)
            self._schedule()
            if self._active():
                if self._needs_room():  # the cache is full: move the rows to larger buffers
                    self._rebuild(None)
                self._step()
        if self.rows is not None:
            self._collect(self.rows, self.rows.done_B)
        return [[c for c in group if c is not None] for group in self.results]

    def _drop(self, prompts: set[int]) -> None:
        """End the rows of ``prompts`` (their requests were abandoned) and forget their queued candidates;
        what they sampled so far is collected as cut off."""
        if not prompts:
            return
        self.dropped |= prompts
        self.queue = deque(owner for owner in self.queue if owner[0] not in prompts)
        if self.rows is not None:
            gone_B = torch.tensor([p in prompts for p, _ in self.rows.owners], device=self.device)
            self.rows.done_B |= gone_B

    def _needs_room(self) -> bool:
        return self.length == self.capacity

    def _active(self) -> int:
        return 0 if self.rows is None else int((~self.rows.done_B).sum())

    # ------------------------------------------------------------------------- scheduling

    def _schedule(self) -> None:
        """Admit waiting candidates when enough slots are free; drop finished rows when worthwhile."""
        free = self.settings.max_concurrent_rollouts - self._active()
        if self.queue and free >= min(self.admit_at, len(self.queue)):
            admitted = [self.queue.popleft() for _ in range(min(free, len(self.queue)))]
            self._prefill_missing(sorted({p for p, _ in admitted}))
            self._rebuild(self._new_rows(admitted))
            return
        finished = 0 if self.rows is None else int(self.rows.done_B.sum())
        if finished and finished >= COMPACT_FRACTION * len(self.rows.owners):
            self._rebuild(None)

    def _prefill_missing(self, prompts: list[int]) -> None:
        """Prefill the prompts not stashed yet, several per forward pass within the token budget.

        Prompts with the same token ids (an agent's candidates each send the row's messages on
        their own) are prefilled once: the others share that stash's keys, values and logits.
        """
        missing = [p for p in prompts if p not in self.stash]
        firsts: dict[tuple[int, ...], int] = {}
        self._prefill_unique(
            [
                p
                for p in missing
                if self._twin(p) is None and firsts.setdefault(tuple(self.prompt_ids[p]), p) == p
            ]
        )
        for p in missing:
            if p not in self.stash:  # its twin was stashed before, or just now
                twin = self.stash[self._twin(p)]  # type: ignore[index]
                self.stash[p] = _Stash(kv=twin.kv, logits_V=twin.logits_V, waiting=self.params.n)

    def _twin(self, p: int) -> int | None:
        """A stashed prompt other than ``p`` with the same token ids."""
        ids = self.prompt_ids[p]
        return next((q for q in self.stash if q != p and self.prompt_ids[q] == ids), None)

    def _prefill_unique(self, todo: list[int]) -> None:
        group: list[int] = []
        for p in todo:
            widest = max([len(self.prompt_ids[q]) for q in group] + [len(self.prompt_ids[p])])
            if group and widest * (len(group) + 1) > self.settings.prefill_tokens:
                self._prefill(group)
                group = []
            group.append(p)
        if group:
            self._prefill(group)

    def _prefill(self, prompts: list[int]) -> None:
        settings = self.settings
        ids = [self.prompt_ids[p] for p in prompts]
        length = max(len(x) for x in ids)
        device = self.device
        pad_P = torch.tensor([length - len(x) for x in ids], device=device)
        input_ids_PL = torch.tensor([[settings.pad_id] * (length - len(x)) + x for x in ids], device=device)
        columns_L = torch.arange(length, device=device)
        valid_PL = columns_L[None, :] >= pad_P[:, None]
        causal_LL = columns_L[:, None] >= columns_L[None, :]
        # Padding queries attend to themselves so no softmax row is empty (no NaN in the cache).
        allowed_P1LL = (
            (causal_LL[None] & valid_PL[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)
        )[:, None]
        positions_PL = (columns_L[None, :] - pad_P[:, None]).clamp_(min=0)
        cache = DynamicCache()
        logits_PV = settings.forward(input_ids_PL, settings.mask(allowed_P1LL), positions_PL, cache)
        for i, p in enumerate(prompts):
            pad = int(pad_P[i])
            kv = [(layer.keys[i, :, pad:], layer.values[i, :, pad:]) for layer in cache.layers]
            self.stash[p] = _Stash(kv=kv, logits_V=logits_PV[i], waiting=self.params.n)

    def _new_rows(self, admitted: list[tuple[int, int]]) -> _Rows:
        """Rows for admitted candidates, their first token already sampled from the stashed logits."""
        limits = [self.limits[p] for p, _ in admitted]
        width = max(limits)
        uniforms_RT = torch.stack(
            [
                torch.nn.functional.pad(row_uniforms(self.seed, self.names[p], c, n), (0, width - n))
                for (p, c), n in zip(admitted, limits, strict=True)
            ]
        ).to(self.device)  # drawn on the CPU: the same numbers on every device
        logits_RV = torch.stack([self.stash[p].logits_V for p, _ in admitted])
        if self.grammar is not None:
            self.matchers.update((owner, self.grammar.deep_copy()) for owner in admitted)
        tokens_R, logprobs_R = self._sample(logits_RV, uniforms_RT[:, 0], admitted)
        self._emit(admitted, tokens_R)
        rows = len(admitted)
        device = self.device
        tokens_RT = torch.zeros(rows, width, dtype=torch.long, device=device)
        logprobs_RT = torch.zeros(rows, width, dtype=torch.float32, device=device)
        tokens_RT[:, 0], logprobs_RT[:, 0] = tokens_R, logprobs_R
        top = self.params.top_logprobs
        top_ids_RTK = torch.zeros(rows, width, top, dtype=torch.long, device=device)
        top_logprobs_RTK = torch.zeros(rows, width, top, dtype=torch.float32, device=device)
        if top:
            top_ids_RTK[:, 0], top_logprobs_RTK[:, 0] = top_alternatives(logits_RV, self.how, top)
        count_R, limit_R = (
            torch.ones(rows, dtype=torch.long, device=device),
            torch.tensor(limits, device=device),
        )
        stopped_R = torch.isin(tokens_R, self.stop_ids)
        prompt_lengths_R = torch.tensor([len(self.prompt_ids[p]) for p, _ in admitted], device=device)
        return _Rows(
            owners=admitted,
            start_B=-prompt_lengths_R,  # relative to the end of the prompt until placed in the cache
            last_B=tokens_R,
            count_B=count_R,
            limit_B=limit_R,
            done_B=stopped_R | (count_R >= limit_R),
            stopped_B=stopped_R,
            tokens_BT=tokens_RT,
            logprobs_BT=logprobs_RT,
            uniforms_BT=uniforms_RT,
            top_ids_BTK=top_ids_RTK,
            top_logprobs_BTK=top_logprobs_RTK,
        )

    # ------------------------------------------------------------------------- batch rebuild

    def _rebuild(self, fresh: _Rows | None) -> None:
        """Drop the finished rows and admit ``fresh`` ones: in the current buffers when they fit, else anew."""
        kept_B = None  # buffer rows of the unfinished rows
        if self.rows is not None:
            self._collect(self.rows, self.rows.done_B)
            kept_B = torch.nonzero(~self.rows.done_B).squeeze(1)
            kept_B = kept_B if len(kept_B) else None
        if fresh is not None:
            for p, _ in fresh.owners:
                self.stash[p].waiting -= 1
            self._collect(fresh, fresh.done_B)
            fresh = fresh.take(torch.nonzero(~fresh.done_B).squeeze(1))
            fresh = fresh if fresh.owners else None
        if kept_B is not None and self._fits(kept_B, fresh):
            self._rebuild_in_place(kept_B, fresh)
        else:
            self._rebuild_anew(kept_B, fresh)
        self._drop_stashes()

    def _fits(self, kept_B: torch.Tensor, fresh: _Rows | None) -> bool:
        """Whether the current buffers can hold the kept and fresh rows without moving every row.

        They must have a free column for the next step and enough rows; every fresh prompt must fit
        left of the current length (the rows are right-aligned); and the padding columns no kept row
        needs any more must stay under ``TRIM_FRACTION`` of the length (only a new buffer trims them).
        """
        rows = len(kept_B) + (len(fresh.owners) if fresh is not None else 0)
        trim = int(self.rows.start_B.index_select(0, kept_B).min())
        return (
            self.length < self.capacity
            and rows <= self.kv[0][0].shape[0]
            and (fresh is None or int(-fresh.start_B.min()) <= self.length)
            and trim <= TRIM_FRACTION * self.length
        )

    def _rebuild_in_place(self, kept_B: torch.Tensor, fresh: _Rows | None) -> None:
        """Fill the finished rows' slots with the last kept rows, then put the fresh rows after them.

        Only the rows that move are copied (one gather per layer), instead of the whole cache.
        """
        kept_count = len(kept_B)
        order_B = torch.arange(kept_count, device=self.device)
        is_kept_B = torch.zeros(self.kv[0][0].shape[0], dtype=torch.bool, device=self.device)
        is_kept_B[kept_B] = True
        holes_H = torch.nonzero(~is_kept_B[:kept_count]).squeeze(1)
        if len(holes_H):
            movers_H = kept_B[kept_B >= kept_count]
            order_B[holes_H] = movers_H
            for buffers in self.kv:
                for buffer_BHCD in buffers:
                    buffer_BHCD[holes_H, :, : self.length] = buffer_BHCD[movers_H, :, : self.length]
        parts = [self.rows.take(order_B)]
        if fresh is not None:
            self._place_fresh(self.kv, fresh, row0=kept_count, length=self.length)
            parts.append(fresh)
        self._use(_Rows.concat(parts), self.kv, self.length, self.capacity)

    def _rebuild_anew(self, kept_B: torch.Tensor | None, fresh: _Rows | None) -> None:
        """New cache buffers with the kept rows and the fresh ones; trims the padding no row needs."""
        kept, trim = None, 0
        if kept_B is not None:
            kept = self.rows.take(kept_B)
            trim = int(kept.start_B.min())
        old_length = self.length - trim if kept is not None else 0
        length = max(old_length, int(-fresh.start_B.min()) if fresh is not None else 0)
        parts = [r for r in (kept, fresh) if r is not None]
        if not parts:
            self.rows, self.kv, self.length, self.capacity, self.cache = None, [], 0, 0, None
            return
        # Room for the longest response still possible, but at most GROW_COLUMNS ahead: most rows end
        # long before their limit, and fresh pages cost time to allocate as well as memory.
        capacity = length + min(GROW_COLUMNS, max(int((r.limit_B - r.count_B).max()) for r in parts))
        total = sum(len(r.owners) for r in parts)
        # rows for the candidates still queued too, so that admitting them later reuses these buffers
        new_kv = self._allocate(min(self.settings.max_concurrent_rollouts, total + len(self.queue)), capacity)
        shift = length - old_length
        for (keys, values), (k_old, v_old) in zip(new_kv, self.kv if kept is not None else [], strict=False):
            n_old = len(kept.owners)
            keys[:n_old, :, :shift] = 0
            values[:n_old, :, :shift] = 0
            keys[:n_old, :, shift:length] = k_old[:, :, trim : self.length].index_select(0, kept_B)
            values[:n_old, :, shift:length] = v_old[:, :, trim : self.length].index_select(0, kept_B)
        if kept is not None:
            kept.start_B += shift - trim
        if fresh is not None:
            self._place_fresh(new_kv, fresh, row0=len(kept.owners) if kept is not None else 0, length=length)
        self._use(_Rows.concat(parts), new_kv, length, capacity)

    def _use(self, rows: _Rows, kv: KV, length: int, capacity: int) -> None:
        """Decode ``rows`` from now on: the first ``len(rows.owners)`` rows of the buffers ``kv``."""
        count = len(rows.owners)
        self.rows, self.kv, self.length, self.capacity = rows, kv, length, capacity
        self.cache = Cache(layers=[_BufferLayer(k[:count], v[:count], length) for k, v in kv])

    def _allocate(self, rows: int, capacity: int) -> KV:
        sample = next(iter(self.stash.values())).kv if self.stash else [(k[0], v[0]) for k, v in self.kv]
        return [
            (
                torch.empty((rows, k.shape[0], capacity, k.shape[-1]), dtype=k.dtype, device=k.device),
                torch.empty((rows, v.shape[0], capacity, v.shape[-1]), dtype=v.dtype, device=v.device),
            )
            for k, v in sample
        ]

    def _place_fresh(self, new_kv: KV, fresh: _Rows, row0: int, length: int) -> None:
        """Copy each new row's stashed prompt into its slot, right-aligned to ``length``.

        The candidates of one prompt share its stash, so each layer gathers the distinct prompts
        into one zero-padded block and copies it to all the new rows at once.
        """
        prompts = list(dict.fromkeys(p for p, _ in fresh.owners))
        slot_of = {p: u for u, p in enumerate(prompts)}
        slot_R = torch.tensor([slot_of[p] for p, _ in fresh.owners], device=self.device)
        widest = max(self.stash[p].kv[0][0].shape[1] for p in prompts)
        rows = slice(row0, row0 + len(fresh.owners))
        for layer, buffers in enumerate(new_kv):
            for which, buffer_BHCD in enumerate(buffers):
                heads, dim = buffer_BHCD.shape[1], buffer_BHCD.shape[3]
                block_UHWD = buffer_BHCD.new_zeros((len(prompts), heads, widest, dim))
                for u, p in enumerate(prompts):
                    part_HPD = self.stash[p].kv[layer][which]
                    block_UHWD[u, :, widest - part_HPD.shape[1] :] = part_HPD
                buffer_BHCD[rows, :, : length - widest] = 0
                buffer_BHCD[rows, :, length - widest : length] = block_UHWD.index_select(0, slot_R)
        fresh.start_B += length

    def _drop_stashes(self) -> None:
        for p in [p for p, s in self.stash.items() if s.waiting == 0]:
            del self.stash[p]

    # ------------------------------------------------------------------------- decoding

    def _step(self) -> None:
        """Feed every row its last token, sample the next one, mark the rows that finish."""
        self._advance(self._forward_rows())

    def _forward_rows(self) -> torch.Tensor:
        """One forward pass over every row's last token: the next-token logits ``[B, V]``."""
        rows, settings = self.rows, self.settings
        assert rows is not None and self.cache is not None
        columns_L = torch.arange(self.length + 1, device=self.device)
        allowed_B111L = (columns_L[None, :] >= rows.start_B[:, None])[:, None, None, :]
        positions_B1 = (self.length - rows.start_B)[:, None]
        logits_BV = settings.forward(
            rows.last_B[:, None], settings.mask(allowed_B111L), positions_B1, self.cache
        )
        self.length += 1
        return logits_BV

    def _advance(self, logits_BV: torch.Tensor) -> None:
        """Sample each row's next token from ``logits_BV``, record it, mark the rows that finish."""
        rows = self.rows
        assert rows is not None
        active_B = ~rows.done_B
        column_B = rows.count_B.clamp(max=rows.uniforms_BT.shape[1] - 1)
        uniforms_B = rows.uniforms_BT.gather(1, column_B[:, None]).squeeze(1)
        index_A = torch.nonzero(active_B).squeeze(1)
        tokens_B, logprobs_B = self._sample(logits_BV, uniforms_B, rows.owners, index_A)
        self._emit(rows.owners, tokens_B, index_A)
        rows.tokens_BT[index_A, column_B[index_A]] = tokens_B[index_A]
        rows.logprobs_BT[index_A, column_B[index_A]] = logprobs_B[index_A]
        if self.params.top_logprobs:
            top_ids_BK, top_logprobs_BK = top_alternatives(logits_BV, self.how, self.params.top_logprobs)
            rows.top_ids_BTK[index_A, column_B[index_A]] = top_ids_BK[index_A]
            rows.top_logprobs_BTK[index_A, column_B[index_A]] = top_logprobs_BK[index_A]
        rows.last_B = torch.where(active_B, tokens_B, rows.last_B)
        rows.count_B += active_B.long()
        stopped_B = active_B & torch.isin(tokens_B, self.stop_ids)
        if self.params.stop:
            check_B = active_B & ~stopped_B
            if self.stop_enders_V is not None:  # only a token holding a stop's last character can end one
                check_B &= self.stop_enders_V[tokens_B]
            stopped_B |= self._spelled_stop(rows, check_B)
        rows.stopped_B |= stopped_B
        rows.done_B |= stopped_B | (rows.count_B >= rows.limit_B)

    def _emit(
        self, owners: list[tuple[int, int]], tokens_B: torch.Tensor, index_A: torch.Tensor | None = None
    ) -> None:
        """Tell ``on_tokens`` (when set: a streamed request) the tokens just sampled for ``owners``
        (for rows ``index_A`` only, when given)."""
        if self.on_tokens is None:
            return
        rows = range(len(owners)) if index_A is None else index_A.tolist()
        tokens = tokens_B.tolist()
        self.on_tokens([(owners[i], tokens[i]) for i in rows])

    def _sample(
        self,
        logits_BV: torch.Tensor,
        uniforms_B: torch.Tensor,
        owners: list,
        index_A: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample each row's next token; with a grammar, among the tokens the row's matcher allows (then
        advance the matchers of rows ``index_A``, all by default). Log-probs are the model's, unmasked."""
        if self.grammar is None:
            return sample_tokens(logits_BV, uniforms_B, self.how)
        matchers = [self.matchers[owner] for owner in owners]
        allowed_BV = self.settings.constraints.allowed(matchers).to(logits_BV.device)
        masked_BV = logits_BV.float().masked_fill(~allowed_BV, float("-inf"))
        tokens_B, _ = sample_tokens(masked_BV, uniforms_B, self.how)
        scale = self.how.temperature if self.how.temperature > 0 else 1.0
        logprobs_B = (
            torch.log_softmax(logits_BV.float() / scale, dim=-1).gather(-1, tokens_B[:, None]).squeeze(-1)
        )
        rows = range(len(owners)) if index_A is None else index_A.tolist()
        tokens = tokens_B.tolist()
        for i in rows:
            matchers[i].consume_token(tokens[i])
        return tokens_B, logprobs_B

    def _spelled_stop(self, rows: _Rows, check_B: torch.Tensor) -> torch.Tensor:
        """Rows whose latest tokens complete one of the stop strings (checked once per new token)."""
        hit_B = torch.zeros_like(check_B)
        decode = self.settings.tokenizer.decode
        for i in torch.nonzero(check_B).squeeze(1).tolist():
            count = int(rows.count_B[i])
            tail = decode(rows.tokens_BT[i, max(0, count - self.stop_window) : count].tolist())
            hit_B[i] = any(text in tail for text in self.params.stop)
        return hit_B

    def _collect(self, rows: _Rows, finished_B: torch.Tensor) -> None:
        """Turn finished rows into Completion records (each row is collected exactly once)."""
        tokenizer = self.settings.tokenizer
        for i in torch.nonzero(finished_B).squeeze(1).tolist():
            prompt_index, candidate = rows.owners[i]
            if self.results[prompt_index][candidate] is not None:
                continue
            count = int(rows.count_B[i])
            token_ids = rows.tokens_BT[i, :count].tolist()
            stopped = bool(rows.stopped_B[i])
            at_end_token = stopped and token_ids[-1] in self.stop_id_set
            text = tokenizer.decode(token_ids[:-1] if at_end_token else token_ids, skip_special_tokens=True)
            self.results[prompt_index][candidate] = Completion(
                prompt_id=self.names[prompt_index],
                candidate_index=candidate,
                prompt_token_ids=tuple(self.prompt_ids[prompt_index]),
                completion_token_ids=tuple(token_ids),
                text=cut_at_stop(text, self.params.stop) if stopped else text,
                logprobs=tuple(rows.logprobs_BT[i, :count].tolist()),
                finish_reason="stop" if stopped else "length",
                policy_version=self.version,
                top_logprobs=self._alternatives(rows, i, count),
            )

    def _alternatives(self, rows: _Rows, i: int, count: int) -> tuple[tuple[tuple[int, float], ...], ...]:
        if not self.params.top_logprobs:
            return ()
        ids_TK, logprobs_TK = rows.top_ids_BTK[i, :count].tolist(), rows.top_logprobs_BTK[i, :count].tolist()
        return tuple(tuple(zip(ids, lps, strict=True)) for ids, lps in zip(ids_TK, logprobs_TK, strict=True))


__all__ = ["Run", "DecodeSettings", "COMPACT_FRACTION", "KV"]
