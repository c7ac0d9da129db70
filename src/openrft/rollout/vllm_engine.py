"""The vLLM engine: sample in-process with ``vllm.LLM`` on a GPU, the trained adapter as a LoRA request.

Install with ``pip install 'openrft[vllm]'`` on a machine with an NVIDIA GPU; ``vllm`` is
imported only when an engine is built, and its absence is a :class:`RolloutError` that
says so.

How openrft's sampling settings map onto vLLM (one :class:`vllm.SamplingParams` per
candidate, ``n=1``, so every candidate has its own random stream):

==================  =====================================================================
openrft             vLLM
==================  =====================================================================
``temperature``     ``temperature`` (0 = greedy)
``top_p``           ``top_p`` (1.0 = off; 0, vLLM refuses it, is sent as top-k 1)
``top_k``           ``top_k``; 0 (off) becomes -1, vLLM's "off" in every version
``max_tokens``      ``max_tokens``
``seed``            ``seed`` = a hash of (seed, prompt id, candidate index), as the endpoint
                    engine sends; ``None`` stays ``None``
``n``               ``n`` separate requests (candidate_index 0..n-1); the prompt's KV is
                    shared through vLLM's prefix cache
end tokens          ``stop_token_ids`` (EOS and the chat template's end-of-turn token)
log-probs           ``logprobs=1``: the log-prob of each sampled token is read from the
                    entry for that token
==================  =====================================================================

Prompts are rendered with openrft's own tokenizer and sent as token ids, and the completion
text is decoded by the same tokenizer, exactly as the local engine does (the end token is
kept as the last completion token and left out of the text). ``max_concurrent_rollouts``
becomes vLLM's ``max_num_seqs``.

Which log-probs vLLM reports depends on its ``logprobs_mode``; this engine asks for
``processed_logprobs``: those of the distribution vLLM samples from, after temperature scaling
and top-k/top-p truncation (renormalised over the tokens kept). That needs vLLM 0.10.2 or
newer (0.10.0-0.10.1 left temperature out of them, older releases have no such mode): an older
vLLM is refused rather than trained on mislabelled log-probs. See ``docs/vllm.md`` for how they
relate to the trainer's own.

Adapters: :meth:`VLLMEngine.load_adapter` registers a PEFT adapter directory as a
``LoRARequest`` and later requests use it; :meth:`VLLMEngine.unload_adapter` frees it. vLLM
caches a loaded adapter by its integer id (an id it has is not read again) and keys its prefix
cache on the id (0.11) or on the name and path (0.34), so each policy version gets a fresh id and
its own folder's name and path (``<job>-vNNNNNN``): reusing any of them could sample an old policy.

Colocated (``colocate=True``, what a single-GPU job without Ray uses): vLLM shares the trainer's
GPU within ``gpu_memory_utilization`` and is started with sleep mode. After each ``generate``
it sleeps (``LLM.sleep(level=1)``: its KV cache is freed and its weights move to CPU memory) so
the trainer has the GPU to itself; the next ``generate`` wakes it (``LLM.wake_up()``). A new
policy's adapter given while it sleeps is registered on waking, before sampling, so nothing
is loaded onto the GPU during a training step. Only the adapter travels, never merged weights.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openrft.errors import OpenRFTError, RolloutAborted, RolloutError
from openrft.models import end_token_ids, resolve_model_dir
from openrft.records import Completion, Prompt, SamplingParams
from openrft.rollout.adapters import LoadsAdapterFiles
from openrft.rollout.prompts import encode_prompt
from openrft.rollout.sampling import check_params, cut_at_stop, row_seed, vllm_truncation

INSTALL_HINT = "install the optional extra on a GPU machine: pip install 'openrft[vllm]'"
MIN_VLLM = (0, 10, 2)  # the first release whose processed log-probs include temperature


def import_vllm() -> tuple[Any, Any]:
    """``(vllm, LoRARequest)``, or a :class:`RolloutError` when vLLM is not installed."""
    try:
        vllm = importlib.import_module("vllm")
        lora_request = importlib.import_module("vllm.lora.request").LoRARequest
    except ImportError as exc:
        raise RolloutError(
            f"--rollout-engine vllm needs the 'vllm' package, which cannot be imported ({exc})",
            hint=INSTALL_HINT,
        ) from None
    check_version(getattr(vllm, "__version__", None))
    return vllm, lora_request


def check_version(version: str | None) -> None:
    """Refuse a vLLM older than :data:`MIN_VLLM` (its log-probs are not the sampled distribution's)."""
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(version or "").release
    except InvalidVersion:
        return  # a source build that does not say: its log-probs are checked when it starts
    if release[:3] < MIN_VLLM:
        raise RolloutError(
            f"vLLM {version} is too old: openrft needs vllm>={'.'.join(map(str, MIN_VLLM))}, whose "
            "log-probs are those of the distribution it samples (temperature included)",
            hint="pip install -U 'openrft[vllm]'",
        )


def lora_dtype(dtype: str) -> str:
    """The weight type vLLM can sample a LoRA model in: its LoRA kernels take float16 and bfloat16 only
    (vLLM refuses to start with float32), so a float32 trainer's sampler runs in bfloat16, or float16 on a
    GPU before Ampere. The trainer recomputes such a round's old log-probs (``openrft.train.mismatch``)."""
    if dtype != "float32":
        return dtype
    import torch

    old_gpu = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8
    return "float16" if old_gpu else "bfloat16"


class VLLMEngine(LoadsAdapterFiles):
    """A :class:`~openrft.records.RolloutEngine` backed by an in-process ``vllm.LLM`` with LoRA enabled.

    ``model_name`` is the base model (a name openrft resolves, or a model directory);
    ``tokenizer`` renders prompts and decodes completions. ``llm_options`` go to
    ``vllm.LLM`` unchanged (``gpu_memory_utilization``, ``max_model_len``, ...).

    A cancel (``should_abort``) is read before the round's one ``LLM.generate`` call and after it (before
    scoring), not while vLLM samples.
    """

    should_abort: Callable[[], bool] | None = None

    def __init__(
        self,
        model_name: str,
        tokenizer: Any,
        *,
        max_concurrent_rollouts: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        policy_version: int = 0,
        max_lora_rank: int = 32,
        max_loras: int = 2,
        dtype: str = "auto",
        logprobs_mode: str | None = "processed_logprobs",
        colocate: bool = False,
        **llm_options: Any,
    ):
        if max_concurrent_rollouts is not None and max_concurrent_rollouts < 1:
            raise RolloutError(f"max_concurrent_rollouts must be >= 1 (got {max_concurrent_rollouts})")
        self.vllm, self._lora_request_cls = import_vllm()
        self.tokenizer = tokenizer
        self.stop_token_ids = tuple(stop_token_ids or end_token_ids(tokenizer))
        self.policy_version = policy_version
        self.model_dir = str(resolve_model_dir(model_name))
        options: dict[str, Any] = {
            "model": self.model_dir,
            "enable_lora": True,
            "max_lora_rank": max_lora_rank,
            "max_loras": max_loras,
            "dtype": lora_dtype(dtype),
            **llm_options,
        }
        if max_concurrent_rollouts is not None:
            options["max_num_seqs"] = max_concurrent_rollouts
        if logprobs_mode is not None:
            options["logprobs_mode"] = logprobs_mode
        if colocate:
            options["enable_sleep_mode"] = True
        self.colocate, self.asleep = colocate, False
        self.llm = self._build_llm(options)
        self.adapters: dict[str, Any] = {}  # name -> LoRARequest
        self.current: Any = None  # the LoRARequest sampled from (None = the base model)
        self._next_id = 0
        self._pending: tuple[str, str] | None = None  # (path, name) of an adapter to register on waking

    def _build_llm(self, options: dict[str, Any]) -> Any:
        try:
            return self.vllm.LLM(**options)
        except OpenRFTError:
            raise
        except Exception as exc:  # vLLM's own checks (memory, context length, arguments) raise anything
            raise RolloutError(f"cannot start vLLM for {self.model_dir}: {_last_line(exc)}") from None

    # ------------------------------------------------------------------------- sampling

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt in order, ``params.n`` completions (candidate_index 0..n-1)."""
        encoded = [(p.prompt_id, encode_prompt(self.tokenizer, p)) for p in prompts]
        return self.generate_from_ids(encoded, params)

    def generate_from_ids(
        self,
        prompts: Sequence[tuple[str, Sequence[int]]],
        params: SamplingParams,
        *,
        stop_token_ids: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Like :meth:`generate` for prompts already tokenized: ``(prompt_id, token_ids)`` pairs."""
        check_params(params)
        if self.should_abort is not None and self.should_abort():
            raise RolloutAborted()
        self.wake()
        stops = tuple(stop_token_ids) if stop_token_ids else self.stop_token_ids
        version = self.policy_version
        try:
            requests, settings = [], []
            for prompt_id, ids in prompts:
                for candidate in range(params.n):
                    requests.append({"prompt_token_ids": list(ids)})
                    settings.append(self.sampling_params(params, prompt_id, candidate, stops))
            outputs = self.llm.generate(
                requests, sampling_params=settings, lora_request=self.current, use_tqdm=False
            )
        except Exception as exc:  # vLLM's validation errors, EngineDeadError, EngineGenerateError, ...
            self._sleep_after_failure()
            raise RolloutError(f"vLLM failed to sample: {_last_line(exc)}") from None
        self.sleep()
        if len(outputs) != len(requests):
            raise RolloutError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        flat = iter(outputs)
        return [
            [
                self._completion(next(flat), prompt_id, ids, c, stops, version, params.stop)
                for c in range(params.n)
            ]
            for prompt_id, ids in prompts
        ]

    def sampling_params(
        self, params: SamplingParams, prompt_id: str, candidate: int, stops: Sequence[int]
    ) -> Any:
        """The ``vllm.SamplingParams`` of one candidate (see the module docstring)."""
        seed = None if params.seed is None else row_seed(params.seed, prompt_id, candidate) & 0x7FFFFFFF
        top_p, top_k = vllm_truncation(params)
        return self.vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=params.max_tokens,
            seed=seed,
            stop_token_ids=list(stops),
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            logprobs=1,
            detokenize=bool(params.stop),  # vLLM matches stop strings on the detokenized text
        )

    def _completion(
        self,
        output: Any,
        prompt_id: str,
        ids: Sequence[int],
        candidate: int,
        stops: Sequence[int],
        version: int,
        stop_strings: tuple[str, ...] = (),
    ) -> Completion:
        sample = output.outputs[0]
        token_ids = [int(t) for t in sample.token_ids]
        reason = sample.finish_reason
        if reason not in ("stop", "length"):
            raise RolloutError(f"vLLM ended a completion of prompt {prompt_id} with finish_reason={reason!r}")
        if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
            got = "no" if sample.logprobs is None else len(sample.logprobs)
            raise RolloutError(
                f"vLLM returned {got} log-probs for {len(token_ids)} tokens of prompt {prompt_id}"
            )
        logprobs = tuple(
            _logprob(step, token) for step, token in zip(sample.logprobs, token_ids, strict=True)
        )
        stopped = reason == "stop" and bool(token_ids) and token_ids[-1] in stops
        text = self.tokenizer.decode(token_ids[:-1] if stopped else token_ids, skip_special_tokens=True)
        if reason == "stop":
            text = cut_at_stop(text, stop_strings)
        return Completion(
            prompt_id=prompt_id,
            candidate_index=candidate,
            prompt_token_ids=tuple(ids),
            completion_token_ids=tuple(token_ids),
            text=text,
            logprobs=logprobs,
            finish_reason=reason,
            policy_version=version,
        )

    # ------------------------------------------------------------------------- colocation

    def sleep(self) -> None:
        """Colocated: free vLLM's KV cache and move its weights off the GPU until the next round."""
        if self.colocate and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _sleep_after_failure(self) -> None:
        """Try to give the GPU back after a failed call; a dead engine's own error is not the news."""
        with contextlib.suppress(Exception):  # the sampling error is what the user needs to see
            self.sleep()

    def wake(self) -> None:
        """Colocated: take the GPU back, then register the adapter of the newest policy (only it stays)."""
        if self.asleep:
            _release_cached_gpu_memory()  # the trainer's freed blocks, still held by torch's allocator
            self.llm.wake_up()
            self.asleep = False
        if self._pending is not None:
            path, name = self._pending
            self._pending = None
            self._register(path, name)
            for old in [n for n in self.adapters if n != name]:
                self.unload_adapter(old)

    def set_policy(self, version: int, adapter: Any = None) -> None:
        """Sample with policy ``version`` from now on; colocated and asleep, its adapter loads on waking."""
        if not self.asleep:
            super().set_policy(version, adapter)
            return
        if adapter is None:
            raise RolloutError("VLLMEngine samples with an adapter loaded from disk: give its folder")
        name = Path(adapter).name
        self._pending, self._policy_adapter = (str(adapter), name), name
        self.policy_version = version

    # ------------------------------------------------------------------------- adapters

    def load_adapter(self, path: str, name: str) -> None:
        """Register the PEFT adapter saved at ``path`` as ``name``; later requests sample with it."""
        self.wake()
        self._register(path, name)

    def _register(self, path: str, name: str) -> None:
        self._next_id += 1
        request = self._lora_request_cls(name, self._next_id, str(path))
        try:
            added = self.llm.llm_engine.add_lora(request)  # load now, so a bad adapter fails here
        except Exception as exc:  # the multiprocess engine raises a plain Exception
            raise RolloutError(f"vLLM cannot load the adapter {path}: {_last_line(exc)}") from None
        if added is False:
            raise RolloutError(f"vLLM did not load the adapter {path}")
        self.adapters[name] = request
        self.current = request

    def unload_adapter(self, name: str) -> None:
        """Free a previously loaded adapter (sampling falls back to the base model if it was current)."""
        request = self.adapters.pop(name, None)
        if request is None:
            return
        self.llm.llm_engine.remove_lora(request.lora_int_id)
        if self.current is request:
            self.current = None


def _release_cached_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _logprob(step: Any, token_id: int) -> float:
    """The sampled token's log-prob from one position's ``{token_id: Logprob}`` entry."""
    try:
        entry = step[token_id]
    except (KeyError, IndexError, TypeError):
        raise RolloutError(f"vLLM returned no log-prob for the sampled token {token_id}") from None
    return float(getattr(entry, "logprob", entry))


__all__ = ["VLLMEngine", "check_version", "import_vllm", "INSTALL_HINT", "MIN_VLLM"]
