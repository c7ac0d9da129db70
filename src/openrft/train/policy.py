"""The trainable policy: a frozen base model with a PEFT LoRA adapter, and its reference policy.

Choices (documented in ``--help`` and the README):

* LoRA on every linear layer of the transformer blocks (attention q/k/v/o and the MLP
  projections; never the embeddings or the LM head), ``alpha = 2 x rank`` unless
  ``--lora-alpha`` says otherwise, dropout 0 (dropout would make the rollout policy and
  the trained policy differ, so the importance ratio would not start at 1).
* The reference policy for the KL term is the policy at job start: the base model with
  the adapter disabled, or, when warm-starting, a frozen copy of the warm-start adapter
  (megabytes) selected in place of the trainable one. No second copy of the base model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from openrft.errors import ModelError

TRAINABLE = "default"
REFERENCE = "reference"


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """Names (suffixes) of every nn.Linear inside the transformer blocks but a mixture of experts' routers
    (Qwen's and Mixtral's ``gate``, ``shared_expert_gate``, Llama-4's and Jamba's ``router``, DBRX's
    ``router.layer``): they choose experts rather than project, and vLLM cannot load an adapter on them."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections: a linear layer stored transposed

    head = model.get_output_embeddings()
    linears = [
        name.split(".")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not head
    ]
    routers = {
        path[-1] for path in linears if path[-1].endswith("expert_gate") or {"gate", "router"} & set(path)
    }
    names = {path[-1] for path in linears} - routers
    if not names:
        raise ModelError(f"{type(model).__name__} has no linear layers to put a LoRA adapter on")
    return sorted(names)


def attach_lora(model: torch.nn.Module, rank: int, alpha: int | None = None, seed: int = 0):
    """Wrap ``model`` in a fresh trainable LoRA adapter (base weights frozen)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=0.0,
        target_modules=lora_target_modules(model),
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),  # GPT-2's layout
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config, adapter_name=TRAINABLE)


def load_adapter(model: torch.nn.Module, adapter_dir: str | Path, *, with_reference: bool):
    """Load a PEFT adapter as the trainable one; optionally a frozen copy as the reference policy."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"--warm-start-from {adapter_dir}: not a PEFT adapter directory (no adapter_config.json)",
            hint="point it at the output_model folder of an earlier job",
        )
    peft_model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=TRAINABLE, is_trainable=True)
    if with_reference:
        peft_model.load_adapter(adapter_dir, adapter_name=REFERENCE, is_trainable=False)
        peft_model.set_adapter(TRAINABLE)
    return peft_model


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on (from its adapter_config.json)."""
    from openrft.models import as_embedded

    path = Path(adapter_dir) / "adapter_config.json"
    try:
        base = json.loads(path.read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"--warm-start-from {adapter_dir}: cannot read the base model from {path}") from None
    # an adapter made with plain peft on the hub's copy of the embedded model trains on the embedded one
    return as_embedded(str(base))


@contextlib.contextmanager
def reference_policy(peft_model) -> Iterator[None]:
    """Run the model as the reference policy inside the block: the warm-start copy, or no adapter."""
    if REFERENCE in peft_model.peft_config:
        peft_model.set_adapter(REFERENCE)
        try:
            yield
        finally:
            peft_model.set_adapter(TRAINABLE)
            _mark_trainable(peft_model)
    else:
        with peft_model.disable_adapter():
            yield


def _mark_trainable(peft_model) -> None:
    # set_adapter() freezes every adapter but the active one; re-freeze the reference copy explicitly
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(f".{TRAINABLE}." in name)


def keep_adapter_float32(peft_model) -> None:
    """Cast the adapter's weights to float32 (peft may keep them in the base layers' dtype)."""
    for name, param in peft_model.named_parameters():
        if "lora_" in name and param.dtype != torch.float32:
            param.data = param.data.float()


def enable_checkpointing(peft_model) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant: LoRA inputs need no grad hooks)."""
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before 5
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trainable_parameters(peft_model) -> list[torch.nn.Parameter]:
    return [p for p in peft_model.parameters() if p.requires_grad]


def save_adapter(peft_model, directory: Path) -> None:
    """Save only the trainable adapter in PEFT format (loads with PeftModel.from_pretrained and vLLM)."""
    peft_model.save_pretrained(str(directory), selected_adapters=[TRAINABLE])
