"""The local rollout engine: fast batched sampling from a live transformers model.

How a call to :meth:`LocalEngine.generate` spends its time, and why:

* **One prefill per prompt.** A prompt is run through the model once (only its last
  position goes through the LM head); its keys/values are then copied into the rows of
  its ``n`` candidates, which all sample their first token from the same logits. The
  prefilled prompt waits in a stash until all its candidates have joined the batch.
* **A preallocated KV cache.** Every in-flight row lives in one ``[rows, heads,
  capacity, head_dim]`` buffer per layer, right-aligned (left padding), sized for the
  longest response still possible; each decoding step writes one column in place
  instead of concatenating the whole cache as a growing cache would.
* **Continuous batching.** At most ``max_concurrent_rollouts`` rows are in flight. When
  a row ends (end-of-turn token or length limit) it stops being useful; as soon as a
  few slots are free (about ``sqrt(max_concurrent_rollouts / 3)``, balancing the copy a
  rebuild costs against idle slots), or a quarter of the batch has ended and nothing is
  waiting, the batch is rebuilt without the finished rows and waiting candidates are
  admitted. A rebuild works in the same buffers when it can: the last rows move into the
  finished rows' slots and new rows go into free ones, so only those rows are copied. New
  buffers (every row copied) are made only to add columns, to fit a prompt longer than
  the current width, or to trim padding columns no remaining row needs once they are a
  quarter of the width.
* **Batch-independent randomness.** Each candidate owns a random stream seeded from
  ``(seed, prompt_id, candidate_index)`` and samples by inverse CDF (see
  :mod:`openrft.rollout.sampling`), so its tokens do not depend on which other rows
  share the batch, on ``max_concurrent_rollouts``, or on the order of prompts (up to
  float rounding in the forward pass, which can flip a token only when a uniform lands
  within ~1e-7 of a boundary).

* **A compiled step on a GPU.** There an eager decoding step is bound by launching kernels (on an H200,
  ~32 ms per step of a Qwen2.5-0.5B shape at 1 row as at 64). Once the engine has spent
  :data:`COMPILE_AFTER` seconds sampling eagerly (about what compiling costs, so a short job never
  pays for it), it decodes over fixed-shape slot buffers instead (:mod:`openrft.rollout.slots`) with
  the step compiled into CUDA graphs: 11.7x ``model.generate`` at 0.5B, 8.6x at 1.5B. It falls back
  to eager steps if compiling fails or torch would stop compiling new variants (widths, adapters), and
  for a call whose buffers would not fit in memory.

The engine samples from the model object it is given (a live ``peft.PeftModel`` during
training, no weight copy; or, with ``inference_copy``, from a copy with the adapter merged and, on a
CPU, the weights prepacked for oneDNN, refreshed at each new policy version: see
:mod:`openrft.rollout.inference_copy`), in eval mode under ``torch.no_grad()``, and restores every
module's train/eval mode afterwards. It needs full-attention layers and the ``sdpa`` or
``eager`` attention implementation (the CPU defaults).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psutil
import torch

from openrft.errors import RolloutError
from openrft.models import attention_mask, end_token_ids, full_precision
from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout import DEFAULT_MAX_CONCURRENT
from openrft.rollout.constrained import Constraints
from openrft.rollout.decode import DecodeSettings, Run
from openrft.rollout.inference_copy import InferenceCopy
from openrft.rollout.prompts import encode_prompt
from openrft.rollout.sampling import MAX_TOP_LOGPROBS, check_params, stop_string_enders
from openrft.rollout.slots import SlotBuffers, SlotRun, SlotShape

PREFILL_TOKENS = 2048  # padded prompt tokens per prefill forward pass
# Seconds of eager sampling before the decoding step is compiled: about what one compilation costs on a
# GPU (40-62 s for a Qwen2.5-0.5B shape on an H200), so a job pays for compiling only once sampling has
# already cost as much, and a short job never does (at worst a job spends twice the best choice's time).
COMPILE_AFTER = 60.0
SLOT_MEMORY_SHARE = 0.5  # of the free device memory, the most a compiled step's buffers may take
log = logging.getLogger(__name__)


class LocalEngine:
    """Sample completions in-process from ``model`` (a transformers causal LM or a PEFT wrapper).

    ``max_concurrent_rollouts`` bounds the sequences decoded together (default 64);
    ``stop_token_ids`` overrides the tokens that end a response (default: EOS and the
    chat template's end-of-turn token). ``policy_version`` is stamped on every
    completion; the trainer moves it with :meth:`set_policy` after each optimizer step.
    ``inference_copy`` samples from an :class:`~openrft.rollout.inference_copy.InferenceCopy` of
    the model (adapter merged, weights prepacked on a CPU where that is faster; ``prepack`` forces
    it on or off): faster, for one more copy of the weights. It is ignored for bfloat16 or float16
    weights, where merging would round the adapter's update away.

    ``compile_step`` compiles the decoding step over fixed-shape buffers (:mod:`openrft.rollout.slots`,
    CUDA graphs on a GPU); ``None`` = on a CUDA device only. It starts once the engine has spent
    ``compile_after`` seconds sampling eagerly (0 = from the first call).
    """

    needs_adapter_files = False  # samples the trainer's live model
    max_top_logprobs = MAX_TOP_LOGPROBS  # alternatives per token it can record (SamplingParams.top_logprobs)
    constrained_decoding = True  # honours SamplingParams.grammar
    streams_tokens = True  # generate_from_ids(on_tokens=...) reports each step's tokens
    aborts_requests = True  # generate_from_ids(cancelled=...) ends abandoned prompts' rows
    should_abort: Callable[[], bool] | None = None  # asked before each decoding step (RolloutEngine)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_concurrent_rollouts: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        prefill_tokens: int = PREFILL_TOKENS,
        policy_version: int = 0,
        inference_copy: bool = False,
        prepack: bool | None = None,
        compile_step: bool | None = None,
        compile_after: float = COMPILE_AFTER,
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
        self.max_positions = getattr(config, "max_position_embeddings", None) or 1 << 30
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        _check_supported(config)
        # a copy only where merging keeps the adapter's update (float32 weights): a bfloat16 copy would
        # sample an older policy than the trainer's (see openrft.rollout.inference_copy)
        self.copy = (
            InferenceCopy(model, prepack=prepack) if inference_copy and full_precision(model) else None
        )
        self._stop_enders: dict[tuple[str, ...], torch.Tensor | None] = {}
        vocab_size = model.get_output_embeddings().weight.shape[0]
        self.constraints = Constraints(tokenizer, vocab_size, self.stop_token_ids)
        self.compile_step, self.compile_after = compile_step, compile_after
        self.eager_seconds = 0.0  # spent in eager sampling calls so far
        # The compiled step's buffers, kept between calls (also while the trainer steps: the memory estimate
        # counts them). They only grow: a call that needs more columns replaces them with wider ones, so
        # calls of varying widths (an agent's turns) recompile a few times, not at every change.
        self.slots: SlotBuffers | None = None
        self._lock = threading.Lock()  # one compiled run at a time: they share the buffers

    # ------------------------------------------------------------------------- public

    def encode(self, prompt: Prompt) -> list[int]:
        """Prompt token ids: the chat messages rendered with the model's chat template."""
        return encode_prompt(self.tokenizer, prompt)

    def set_policy(self, version: int, adapter: Any = None) -> None:
        """The live model now holds policy ``version`` (nothing to load: it is the same model)."""
        self.policy_version = version

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
        on_tokens: Callable[[list[tuple[tuple[int, int], int]]], None] | None = None,
        cancelled: Callable[[], set[int]] | None = None,
    ) -> list[list[Completion]]:
        """Like :meth:`generate` for prompts already tokenized: ``(prompt_id, token_ids)`` pairs.

        ``stop_token_ids`` replaces the engine's end tokens for this call. ``on_tokens``, when given, is
        called after every decoding step (in this thread) with the tokens it sampled, as
        ``((prompt index, candidate index), token id)`` pairs: what a streamed reply sends as it goes.
        ``cancelled``, when given, is asked before every step for the prompt indexes whose requests were
        abandoned: their rows end there (collected as cut off), freeing their slots for the others.
        """
        check_params(params)
        stops = tuple(stop_token_ids) if stop_token_ids else self.stop_token_ids
        names, prompt_ids = [name for name, _ in prompts], [list(ids) for _, ids in prompts]
        settings = self._decode_settings()
        run: Run | None = None
        if self.compiling():
            run = SlotRun(settings, names, prompt_ids, params, stops)
            run.buffers = self._slot_buffers(run.columns)
            run = run if run.buffers is not None else None
        compiled = run is not None
        if run is None:
            run = Run(settings, names, prompt_ids, params, stops)
        run.on_tokens, run.cancelled, run.abort = on_tokens, cancelled, self.should_abort
        start = time.perf_counter()
        with self._lock if compiled else contextlib.nullcontext(), self._sampling_mode():
            if self.copy is not None:
                self.copy.refresh(self.policy_version)
            groups = run.execute()
        if not compiled:
            self.eager_seconds += time.perf_counter() - start
        return groups

    def compiling(self) -> bool:
        """Whether the next call decodes with the compiled step."""
        wanted = self.compile_step
        if wanted is None:
            wanted = next(self.model.parameters()).device.type == "cuda"
        return wanted and self.eager_seconds >= self.compile_after

    # ------------------------------------------------------------------------- helpers

    def _decode_settings(self) -> DecodeSettings:
        """This engine's current settings for one decoding run (read at each call, like ``policy_version``)."""
        return DecodeSettings(
            forward=self.forward,
            mask=self.mask,
            tokenizer=self.tokenizer,
            pad_id=self.pad_id,
            max_positions=self.max_positions,
            max_concurrent_rollouts=self.max_concurrent_rollouts,
            prefill_tokens=self.prefill_tokens,
            policy_version=self.policy_version,
            stop_enders=self.stop_enders,
            constraints=self.constraints,
            device=next(self.model.parameters()).device,
        )

    def _slot_buffers(self, columns: int) -> SlotBuffers | None:
        """The compiled step's buffers, at least ``columns`` wide: the current ones, or new ones (made, or
        widened, when they fit in :data:`SLOT_MEMORY_SHARE` of the free memory; else ``None``: eager)."""
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        weight = next(self.model.parameters())
        shape = SlotShape(
            layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            dtype=weight.dtype,
            device=weight.device,
        )
        current = self.slots if self.slots is not None and self.slots.shape == shape else None
        if current is not None and current.columns >= columns:
            return current
        width = max(columns, current.columns if current is not None else 0)
        need = shape.nbytes(self.max_concurrent_rollouts, width)
        held = self.slots.shape.nbytes(self.slots.count, self.slots.columns) if self.slots is not None else 0
        free = held + _free_memory(shape.device)  # the buffers held now go before the new ones are made
        if need <= SLOT_MEMORY_SHARE * free:
            self.slots = None
            try:
                self.slots = SlotBuffers(
                    self.forward, self.mask, shape, self.max_concurrent_rollouts, width, True
                )
                return self.slots
            except torch.OutOfMemoryError:
                pass
        log.warning("the compiled decoding step would need %.1f GiB of buffers for %d columns (%.1f GiB free): "
                    "this call decodes eagerly", need / 2**30, width, free / 2**30)  # fmt: skip
        return None

    def stop_enders(self, stops: tuple[str, ...]) -> torch.Tensor | None:
        """The tokens that can complete one of ``stops`` (worked out once per set of stop strings)."""
        if stops not in self._stop_enders:
            vocab_size = self.model.get_output_embeddings().weight.shape[0]
            self._stop_enders[stops] = stop_string_enders(self.tokenizer, stops, vocab_size)
        return self._stop_enders[stops]

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
        """Run the model (or its inference copy); return the last position's logits ``[B, V]``."""
        model = self.copy.model if self.copy is not None else self.model
        out = model(
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
        return attention_mask(self.model, allowed)


def _free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` (on a GPU, counting what torch holds unused)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


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


__all__ = ["LocalEngine", "DEFAULT_MAX_CONCURRENT", "PREFILL_TOKENS"]
