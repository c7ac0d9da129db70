"""Sampling from a copy of the model built for inference: the adapter merged, the weights prepacked.

Two costs of decoding on a CPU that a trainer's model cannot avoid, and a copy can:

* **peft's side path.** Through peft every adapted projection runs two extra small matmuls per
  decoding step (a rank-16 adapter costs 1.2-1.5x per step on 2 cores). The copy holds
  ``W + scale * B @ A`` instead, recomputed (no gradients) when the policy version changes.
* **the matmul library's weight layout.** A decoding step multiplies a few rows by every weight
  of the model, so it is bound by streaming the weights, and a plain ``torch.nn.Linear`` on a CPU
  repacks its weight into the BLAS kernel's layout at every call. The copy stores each linear
  weight once in oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, the same
  prepacking ``torch.compile`` applies to frozen CPU weights) and multiplies with
  ``torch.ops.mkldnn._linear_pointwise``: 1.3-2.5x faster per decoding step on 2 AMD EPYC cores
  (``docs/benchmarks.md``), with fp32 accumulation (results differ from the plain layer by float
  rounding only). Where the BLAS library already streams weights well (MKL on an Intel Xeon with
  AVX-512, measured no faster packed), packing only costs time: unless told, the copy times one pass
  over its linear layers both ways at decoding batch sizes and keeps the packed layers only when
  they are clearly faster overall and slower at no batch size (:func:`packed_wins`). The answer is kept per machine (CPU, torch
  version, threads, layer shapes) in ``$OPENRFT_HOME/cache/prepack.json``, so that every later job
  there makes the same choice: packed and plain layers round differently, and a seeded job must
  sample the same tokens each time it runs.

The trainer's model is never modified: merging and unmerging it in place would drift its base
weights by float rounding. The price is one more copy of the weights in memory.

Merging is only exact enough in float32 (or float64). A bfloat16 weight near 0.02 is stored to
within ~8e-5, about the size of one entry of an adapter's update early in training, so merging into
it rounds much of the update away: the copy would sample an older policy than the trainer's while
its log-probs passed as the trainer's. So the engine builds a copy only for float32 weights
(:func:`openrft.models.full_precision`) and samples narrower ones through peft's own side path.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import platform
import time
from typing import Any

import torch

from openrft.paths import atomic_write_text, openrft_home


def can_prepack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether oneDNN can hold linear weights of ``dtype`` on ``device`` prepacked (CPU, fp32)."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(torch.nn.Module):
    """A frozen linear layer whose weight lives only in oneDNN's blocked layout (inference only)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.bias = None if bias is None else bias.detach().clone()
        self.load(linear.weight.detach())

    @torch.no_grad()
    def load(self, weight_OI: torch.Tensor) -> None:
        """Take new weights ``[out, in]`` (repacked; the argument is not kept)."""
        self.packed_OI = torch.ops.mkldnn._reorder_linear_weight(weight_OI.contiguous())

    def forward(self, x_NI: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x_NI, self.packed_OI, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prepacked"


class InferenceCopy:
    """A plain copy of ``model`` for sampling, kept in step with it by :meth:`refresh`.

    For a ``peft`` model the copy has adapter ``adapter`` merged; on a CPU in fp32 its linear
    layers are :class:`PackedLinear` when ``prepack`` is true, or, when it is ``None``, when
    :func:`prepack_pays` finds them faster on this machine. ``refresh(version)`` recomputes the adapted weights when the
    policy version changed since the last call (a plain model's weights are taken once).
    """

    def __init__(self, model: Any, adapter: str = "default", *, prepack: bool | None = None):
        self.source, self.adapter, self.version = model, adapter, None
        with torch.no_grad():
            self.model = (
                copy.deepcopy(model).merge_and_unload() if is_peft(model) else copy.deepcopy(model)
            ).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        weight = next(self.model.parameters())
        self.prepacked = bool(prepack) and can_prepack(weight.dtype, weight.device)
        if prepack is None and can_prepack(weight.dtype, weight.device):
            self.prepacked = prepack_pays_here(self.model)
        if self.prepacked:
            _prepack_linears(self.model)
        prefix = "base_model.model."
        self.pairs = [
            (module, self.model.get_submodule(name.removeprefix(prefix)))
            for name, module in (model.named_modules() if is_peft(model) else ())
            if hasattr(module, "get_delta_weight") and adapter in getattr(module, "lora_A", {})
        ]

    @torch.no_grad()
    def refresh(self, version: int) -> None:
        """Recompute the merged weights when the policy changed since the last call."""
        if version == self.version:
            return
        for lora, target in self.pairs:
            base = lora.base_layer.weight
            merged_OI = base + lora.get_delta_weight(self.adapter).to(base.dtype)
            if isinstance(target, PackedLinear):
                target.load(merged_OI)
            else:
                target.weight.copy_(merged_OI)
        self.version = version


DECODE_ROWS = (1, 16, 64)  # batch sizes a decoding step sees, from a round's tail to full width
PREPACK_MARGIN = 0.9  # packed layers must take at most this share of the plain layers' time in all
PREPACK_REPEATS = 3  # timed passes each way, alternating (the best counts)


def packed_wins(
    plain_s: dict[int, float], packed_s: dict[int, float], margin: float = PREPACK_MARGIN
) -> bool:
    """The rule :func:`prepack_pays` applies to its timings (seconds per pass, by rows).

    Packed layers must be clearly faster over all batch sizes together (at most ``margin`` of the
    plain time) and no slower at any one of them: a round's tail decodes a row or two for many
    steps, so a layout that wins at 64 rows and loses at 1 is not a win. Requiring both makes a
    single noisy pass (another process taking a core) unlikely to flip the answer, which is then
    kept for good.
    """
    return sum(packed_s.values()) <= margin * sum(plain_s.values()) and all(
        packed_s[r] <= plain_s[r] for r in plain_s
    )


def time_linear_passes(
    model: torch.nn.Module, rows: tuple[int, ...] = DECODE_ROWS, repeats: int = PREPACK_REPEATS
) -> tuple[dict[int, float], dict[int, float]]:
    """Seconds for one pass over every linear layer of ``model``, plain and packed, at each of ``rows``.

    The layers run in order, so the weights stream from memory as in a real decoding step; plain
    and packed passes alternate, and the best of ``repeats`` is kept. The packed copies exist only
    during the measurement. About a second for the embedded model.
    """
    plain = [m for m in model.modules() if type(m) is torch.nn.Linear]
    packed = [PackedLinear(m) for m in plain]
    inputs = {r: [torch.randn(r, m.in_features, dtype=m.weight.dtype) for m in plain] for r in rows}
    best = {name: dict.fromkeys(rows, float("inf")) for name in ("plain", "packed")}
    with torch.no_grad():
        for _ in range(repeats):
            for r in rows:
                for name, layers in (("plain", plain), ("packed", packed)):
                    start = time.perf_counter()
                    for layer, x_NI in zip(layers, inputs[r], strict=True):
                        layer(x_NI)
                    best[name][r] = min(best[name][r], time.perf_counter() - start)
    return best["plain"], best["packed"]


def prepack_pays(model: torch.nn.Module) -> bool:
    """Whether prepacked linears run a decoding step's matmuls clearly faster than plain ones here."""
    if not any(type(m) is torch.nn.Linear for m in model.modules()):
        return False
    return packed_wins(*time_linear_passes(model))


PREPACK_RULE = 2  # part of the cache key: answers kept under an older rule are measured again


def prepack_pays_here(model: torch.nn.Module) -> bool:
    """:func:`prepack_pays`, measured once per machine and model shape and then read from the cache."""
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if type(m) is torch.nn.Linear})
    key = hashlib.sha256(
        json.dumps([PREPACK_RULE, _cpu_name(), torch.__version__, torch.get_num_threads(), shapes]).encode()
    ).hexdigest()[:16]
    path = openrft_home() / "cache" / "prepack.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = prepack_pays(model)
        with contextlib.suppress(OSError):  # a read-only home: measured again next time
            atomic_write_text(path, json.dumps(known, indent=1))
    return bool(known[key])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _prepack_linears(model: torch.nn.Module) -> None:
    """Replace every ``torch.nn.Linear`` of ``model`` by a :class:`PackedLinear` (the plain weight is freed)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, PackedLinear(child))


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


__all__ = ["InferenceCopy", "PackedLinear", "can_prepack", "is_peft", "packed_wins", "prepack_pays"]
