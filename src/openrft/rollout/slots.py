"""Decoding over fixed-shape buffers, so that the decoding step can be compiled (CUDA graphs on a GPU).

:class:`~openrft.rollout.decode.Run` keeps its rows right-aligned in buffers that it resizes as
rows come and go: every step has new shapes, which suits eager execution on a CPU. On a GPU an eager
step is bound by launching kernels, not by arithmetic or memory (on an H200, one eager step of a
Qwen2.5-0.5B shape took ~32 ms at 1 row and at 64 rows alike; compiled with CUDA graphs, 1.6 and 2.9 ms).
A compiled step needs shapes and addresses that never change. :class:`SlotRun` gives it that:

* Every row owns one **slot** of buffers ``[slots, heads, columns, head_dim]`` per layer (``slots`` =
  ``max_concurrent_rollouts``, ``columns`` = the longest prompt plus response so far, rounded up to a
  power of two), kept by the engine across calls and only ever widened, so that few shapes exist.
* Rows are **left-aligned**: a prompt fills columns ``0 .. P-1`` of its slot and the ``k``-th sampled
  token is written at column ``P + k - 1``, which is also its position. Each step, every slot writes its
  own next column (a scatter at a per-slot column tensor) and attends to the columns up to it.
* Admitting a candidate copies its prompt's stashed keys and values into a free slot; dropping a finished
  row frees its slot. No row ever moves, so nothing is copied but the new prompts.

Free slots and finished rows still run through the step (their outputs are ignored), which costs little on
a GPU, where a step's time barely depends on its rows. Sampling, stop checks and collection are the eager
run's own, so the sampled tokens, log-probs, finish reasons and seeds semantics are the same.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from openrft.errors import RolloutError
from openrft.rollout.decode import KV, Run, _Rows

log = logging.getLogger(__name__)

MIN_COLUMNS = 128  # the narrowest buffers (columns are a power of two at least this)
# Compiled variants of the step torch may make (widths x adapter states x models); past it torch would
# silently run new ones uncompiled, so the step is told instead and falls back with a warning.
RECOMPILE_LIMIT = 64


def _recompile_limits() -> contextlib.AbstractContextManager:
    settings = {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
    known = {k: v for k, v in settings.items() if hasattr(torch._dynamo.config, k)}
    return torch._dynamo.config.patch(**known)


def bucket_columns(needed: int) -> int:
    """The buffer width for ``needed`` columns: the next power of two, at least :data:`MIN_COLUMNS`."""
    return max(MIN_COLUMNS, 1 << max(0, needed - 1).bit_length())


class _SlotLayer(DynamicLayer):
    """One layer's keys and values ``[S, H, C, D]``; each update writes every slot's own column."""

    def __init__(self, keys_SHCD: torch.Tensor, values_SHCD: torch.Tensor, column_S: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.column_S = keys_SHCD, values_SHCD, column_S
        self.device = keys_SHCD.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        slots, heads, _, dim = key_states.shape
        index_SH1D = self.column_S.view(slots, 1, 1, 1).expand(slots, heads, 1, dim)
        self.keys.scatter_(2, index_SH1D, key_states)
        self.values.scatter_(2, index_SH1D, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.keys.shape[2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0


@dataclass(frozen=True)
class SlotShape:
    """What the buffers of one model hold: ``layers`` x (keys, values) of ``[slots, kv_heads, columns, head_dim]``."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    def nbytes(self, slots: int, columns: int) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.layers * slots * self.kv_heads * columns * self.head_dim * element


class SlotBuffers:
    """The fixed-shape state of a compiled decoding step: caches, inputs, and the step itself.

    ``forward(input_ids, attention_mask, position_ids, cache) -> logits [S, V]`` and ``mask`` are the
    engine's. With ``compile`` the step runs under ``torch.compile(mode="reduce-overhead")``; if compiling
    fails, or torch would stop compiling new variants (:data:`RECOMPILE_LIMIT` of them: widths, adapters),
    it logs why and runs eagerly from then on.
    """

    def __init__(
        self, forward: Callable, mask: Callable, shape: SlotShape, slots: int, columns: int, compile: bool
    ):
        self.shape, self.count, self.columns, self.device = shape, slots, columns, shape.device
        size = (slots, shape.kv_heads, columns, shape.head_dim)
        # zeros, not empty: a masked column's weight is exactly 0, but 0 * NaN would still be NaN
        self.kv: KV = [
            (
                torch.zeros(size, dtype=shape.dtype, device=self.device),
                torch.zeros(size, dtype=shape.dtype, device=self.device),
            )
            for _ in range(shape.layers)
        ]
        self.tokens_S1 = torch.zeros((slots, 1), dtype=torch.long, device=self.device)
        self.column_S = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.allowed_S11C = torch.zeros((slots, 1, 1, columns), dtype=torch.bool, device=self.device)
        self.columns_C = torch.arange(columns, device=self.device)
        self.cache = Cache(layers=[_SlotLayer(k, v, self.column_S) for k, v in self.kv])
        self._forward, self._mask = forward, mask
        self.compiled = compile
        self._run: Callable[[], torch.Tensor] = self._eager
        if compile:
            for tensor in [self.tokens_S1, self.column_S, self.allowed_S11C] + [
                t for kv in self.kv for t in kv
            ]:
                torch._dynamo.mark_static_address(tensor)
            self._run = torch.compile(self._eager, mode="reduce-overhead", dynamic=False)

    def _eager(self) -> torch.Tensor:
        positions_S1 = self.column_S[:, None]
        return self._forward(self.tokens_S1, self._mask(self.allowed_S11C), positions_S1, self.cache)

    def place(self, slot_R: torch.Tensor, prompt_kv: list[KV]) -> None:
        """Copy each new row's prompt keys and values (``[H, P, D]`` per layer) into columns ``0 .. P-1`` of its slot.

        Rows of the same prompt share its stash: the distinct prompts are gathered into one zero-padded
        block per layer and copied to all their rows at once.
        """
        distinct = list({id(kv): kv for kv in prompt_kv}.values())
        index_of = {id(kv): u for u, kv in enumerate(distinct)}
        unique_R = torch.tensor([index_of[id(kv)] for kv in prompt_kv], device=self.device)
        widest = max(kv[0][0].shape[1] for kv in distinct)
        keys_HPD = distinct[0][0][0]
        if len(distinct[0]) != len(self.kv) or keys_HPD.shape[::2] != self.kv[0][0].shape[1::2]:
            raise RolloutError(
                f"the model's cache ({len(distinct[0])} layers of {tuple(keys_HPD.shape[::2])} heads x dims) does "
                f"not match the compiled step's buffers ({self.shape}); sample with --no-compile"
            )
        for layer, buffers in enumerate(self.kv):
            for which, buffer_SHCD in enumerate(buffers):
                heads, dim = buffer_SHCD.shape[1], buffer_SHCD.shape[3]
                block_UHWD = buffer_SHCD.new_zeros((len(distinct), heads, widest, dim))
                for u, kv in enumerate(distinct):
                    part_HPD = kv[layer][which]
                    block_UHWD[u, :, : part_HPD.shape[1]] = part_HPD
                buffer_SHCD[slot_R, :, :widest] = block_UHWD.index_select(0, unique_R)

    def step(self, slot_B: torch.Tensor, tokens_B: torch.Tensor, column_B: torch.Tensor) -> torch.Tensor:
        """Feed row ``b`` the token ``tokens_B[b]`` at column ``column_B[b]`` of slot ``slot_B[b]``: logits ``[B, V]``."""
        self.tokens_S1.zero_()
        self.column_S.zero_()  # free slots write (and attend to) their column 0 only
        self.tokens_S1[slot_B, 0] = tokens_B
        self.column_S[slot_B] = column_B
        torch.le(self.columns_C[None, :], self.column_S[:, None], out=self.allowed_S11C.view(self.count, -1))
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are no longer read
        try:
            logits_SV = self._run()
        except Exception as error:  # noqa: BLE001 - any compiler failure: decode eagerly instead
            if not self.compiled:
                raise
            log.warning(
                "compiling the decoding step failed (%s: %s); decoding eagerly", type(error).__name__, error
            )
            self.compiled, self._run = False, self._eager
            logits_SV = self._run()
        return logits_SV.index_select(0, slot_B)


class SlotRun(Run):
    """A :class:`~openrft.rollout.decode.Run` whose rows live in fixed slots of :class:`SlotBuffers`.

    ``columns`` is the width the call needs; the engine sets ``buffers`` (at least that wide) before
    :meth:`execute`.
    """

    def __init__(self, settings, names, prompt_ids, params, stop_token_ids):
        super().__init__(settings, names, prompt_ids, params, stop_token_ids)
        widths = [len(ids) + limit for ids, limit in zip(prompt_ids, self.limits, strict=True)]
        self.columns = bucket_columns(max(widths, default=1))
        self.buffers: SlotBuffers | None = None
        self.slot_B = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's slot

    def execute(self):
        with _recompile_limits():  # once per call: dynamo reads them when it meets a new variant
            return super().execute()

    def _needs_room(self) -> bool:
        return False  # every slot is as wide as the longest prompt and response of the call

    def _rebuild(self, fresh: _Rows | None) -> None:
        """Drop the finished rows (their slots become free) and put ``fresh`` rows into free slots."""
        parts: list[_Rows] = []
        slots: list[torch.Tensor] = []
        if self.rows is not None:
            self._collect(self.rows, self.rows.done_B)
            kept_B = torch.nonzero(~self.rows.done_B).squeeze(1)
            if len(kept_B):
                parts.append(self.rows.take(kept_B))
                slots.append(self.slot_B.index_select(0, kept_B))
        if fresh is not None:
            for p, _ in fresh.owners:
                self.stash[p].waiting -= 1
            self._collect(fresh, fresh.done_B)
            fresh = fresh.take(torch.nonzero(~fresh.done_B).squeeze(1))
            if fresh.owners:
                parts.append(fresh)
                slots.append(self._place(fresh, slots))
        self._drop_stashes()
        self.rows = _Rows.concat(parts) if parts else None
        self.slot_B = torch.cat(slots) if slots else self.slot_B[:0]

    def _place(self, fresh: _Rows, taken: list[torch.Tensor]) -> torch.Tensor:
        """Free slots for the ``fresh`` rows, their prompts copied in: the slot of each row."""
        stashes = [self.stash[p].kv for p, _ in fresh.owners]
        assert self.buffers is not None and self.buffers.columns >= self.columns
        used = set(torch.cat(taken).tolist()) if taken else set()
        free = [s for s in range(self.buffers.count) if s not in used][: len(fresh.owners)]
        slot_R = torch.tensor(free, dtype=torch.long, device=self.device)
        self.buffers.place(slot_R, stashes)
        return slot_R

    def _forward_rows(self) -> torch.Tensor:
        rows = self.rows
        assert rows is not None and self.buffers is not None
        # a row's start is minus its prompt length, so its next column is P + (tokens sampled) - 1
        return self.buffers.step(self.slot_B, rows.last_B, rows.count_B - rows.start_B - 1)


__all__ = ["SlotBuffers", "SlotRun", "SlotShape", "bucket_columns"]
