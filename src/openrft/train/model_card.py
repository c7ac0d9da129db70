"""The README.md (model card) written into a job's output folder next to the adapter.

PEFT's ``save_pretrained`` leaves a template full of "More Information Needed"; this card says
instead what the adapter is: the base model, the loss method and the parameters that shaped it,
the rewards it reached, and how to load it (transformers + peft, vLLM, ``openrft serve``) or
turn it into a standalone model (``openrft export``).

Plain string formatting: the card is short and Jinja2 is not one of openrft's own dependencies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openrft.algo.losses import resolve_loss
from openrft.models import EMBEDDED, EMBEDDED_HUB_IDS, adapter_base_model, adapter_shape, embedded_model_dir
from openrft.paths import atomic_write_text
from openrft.tracking.compare import RunSummary, summarize_run

# Where the embedded models come from on the Hugging Face Hub (for the card's metadata only).
HUB_IDS = EMBEDDED_HUB_IDS

METHOD_NAMES = {"grpo": "GRPO", "dapo": "DAPO", "gspo-token": "GSPO-token"}


def _hub_id(base_model: str) -> str | None:
    """The Hub id the card's metadata may name: an ``org/name`` id, or the embedded model's origin."""
    if base_model in HUB_IDS:
        return HUB_IDS[base_model]
    if (
        base_model.count("/") == 1
        and not base_model.startswith(("/", ".", "~"))
        and not Path(base_model).exists()
    ):
        return base_model
    return None


def _fmt(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" for v in value) if value else "none"
    return str(value)


def _parameters(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    training, loss, rollout, data = (cfg.get(k, {}) for k in ("training", "loss", "rollout", "data"))
    method = loss.get("rl_loss_method", "grpo")
    try:
        _, spec = resolve_loss(method, loss.get("rl_kl_beta") or 0.0, bool(loss.get("length_norm")))
        clip = f"[{1 - spec.clip_low:g}, {1 + spec.clip_high:g}]"
        kl, aggregation = f"{spec.kl_coef:g}", spec.aggregation
    except ValueError:  # an unknown method in a hand-edited job.json: show what was given
        clip, kl, aggregation = "?", _fmt(loss.get("rl_kl_beta")), "?"
    rank = training.get("lora_rank")
    alpha = training.get("lora_alpha") or (2 * rank if isinstance(rank, int) else None)
    rows = [
        ("base model", f"`{training.get('base_model')}`"),
        ("loss method", METHOD_NAMES.get(method, method)),
        ("KL beta (k3 penalty to the start policy)", kl),
        ("ratio clip range", clip),
        ("loss aggregation", aggregation),
        ("learning rate", _fmt(training.get("learning_rate"))),
        ("epochs", _fmt(training.get("epochs"))),
        ("LoRA rank / alpha", f"{_fmt(rank)} / {_fmt(alpha)}"),
        ("candidates per prompt (n)", _fmt(rollout.get("response_candidates_count"))),
        (
            "temperature / top-p / top-k",
            " / ".join(_fmt(rollout.get(k)) for k in ("temperature", "top_p", "top_k")),
        ),
        ("max output tokens", _fmt(rollout.get("max_output_tokens"))),
        ("stop strings", _fmt(rollout.get("stop") or [])),
        ("batch size (tokens per step)", _fmt(training.get("batch_size"))),
        ("prompts per round (chunk size)", _fmt(training.get("chunk_size"))),
        ("dataset", f"`{data.get('dataset')}`"),
        ("evaluator", f"`{data.get('evaluator') or _default_evaluator(data.get('dataset'))}`"),
        ("seed", _fmt(training.get("seed"))),
    ]
    if training.get("warm_start_from"):
        rows.insert(1, ("warm-started from", f"`{training['warm_start_from']}`"))
    return rows


def _results(summary: RunSummary | None) -> list[tuple[str, str]]:
    if summary is None:
        return []
    rows = [("training steps", str(summary.steps))]
    if summary.final_reward is not None:
        rows.append(("final mean reward (last step)", f"{summary.final_reward:.4f}"))
    if summary.best_reward is not None:
        rows.append(("best mean reward", f"{summary.best_reward:.4f} (step {summary.best_reward_step})"))
    if summary.start_eval is not None:
        rows.append(("held-out reward before training", f"{summary.start_eval:.4f}"))
    if summary.final_eval is not None:
        rows.append(("final held-out reward", f"{summary.final_eval:.4f}"))
    if summary.best_eval is not None:
        rows.append(("best held-out reward", f"{summary.best_eval:.4f} (step {summary.best_eval_step})"))
    return rows


def _default_evaluator(dataset: Any) -> str:
    """The built-in evaluator a job without one used (its dataset's)."""
    from openrft.errors import OpenRFTError
    from openrft.evaluators.loader import default_evaluator_name

    try:
        return f"{default_evaluator_name(dataset)} (built-in, the dataset's)"
    except (OpenRFTError, OSError):
        return "the dataset's built-in one"


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _usage(base_model: str, base_path: str, adapter_dir: str, rank: Any, name: str) -> str:
    return f"""## Using it

The folder holds a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`) and the
tokenizer with its chat template. Prompts should be rendered with that chat template, as in training.
The paths below are those of the machine that trained it: in a copy taken elsewhere (a download from
a server), write your copy's folder for `{adapter_dir}` and where you keep the base model for
`{base_path}` (`openrft export` then takes it as `--base-model`).

With transformers and peft:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_path}")
model = PeftModel.from_pretrained(base, "{adapter_dir}")
tokenizer = AutoTokenizer.from_pretrained("{adapter_dir}")
```

With vLLM (the adapter is served under the name `{name}`):

```bash
vllm serve {base_path} --enable-lora --max-lora-rank {max(int(rank or 8), 8)} --lora-modules {name}={adapter_dir}
```

With openrft's own OpenAI-compatible server:

```bash
openrft serve --base-model {base_model} --adapter {adapter_dir}
```

As one standalone model (no peft needed), for transformers and vLLM, or as GGUF for llama.cpp and Ollama:

```bash
openrft export {adapter_dir} --merged merged-model/ --gguf model.gguf
```
"""


def render_model_card(
    cfg: dict[str, Any], metrics_path: Path | None, adapter_dir: Path, base_path: str | None = None
) -> str:
    """The card for the adapter in ``adapter_dir``, trained by the job ``cfg`` (job.json, nested by group)."""
    training, loss = cfg.get("training", {}), cfg.get("loss", {})
    base_model = str(training.get("base_model") or "")
    if base_path is None:  # what transformers and vLLM load: the embedded model's converted folder
        base_path = str(embedded_model_dir(base_model)) if base_model in EMBEDDED else base_model
    method = METHOD_NAMES.get(loss.get("rl_loss_method", ""), loss.get("rl_loss_method", "?"))
    summary = summarize_run(str(training.get("job_id")), metrics_path) if metrics_path else None
    if summary is not None and summary.steps == 0 and summary.final_reward is None:
        summary = None
    hub = _hub_id(base_model)
    name = str(training.get("job_id") or adapter_dir.name or "adapter")
    front = ["---", "library_name: peft"]
    if hub:
        front.append(f"base_model: {hub}")
    front += [
        "pipeline_tag: text-generation",
        "tags:",
        "- openrft",
        "- lora",
        "- reinforcement-learning",
        f"- {loss.get('rl_loss_method', 'grpo')}",
        "---",
    ]
    embedded = " (openrft's embedded model)" if base_model in EMBEDDED else ""
    results = _results(summary)
    parts = [
        "\n".join(front),
        f"# {name}: a LoRA adapter for {base_model}",
        f"A LoRA adapter for `{base_model}`{embedded}, trained by openrft with reinforcement fine-tuning "
        f"({method}): for each prompt it sampled several answers, scored them with the evaluator, and "
        "moved the adapter towards the answers that scored above their group's mean.",
        "## Training\n\n" + _table(_parameters(cfg)),
        "## Results\n\n" + (_table(results) if results else "No rewards were recorded for this job."),
        _usage(base_model, base_path, str(adapter_dir), training.get("lora_rank"), name),
    ]
    return "\n\n".join(parts)


def write_model_card(folder: Path, final_dir: Path | None = None, unfinished: str | None = None) -> Path:
    """Write ``folder/README.md`` from the ``job.json`` and ``metrics.jsonl`` in ``folder``.

    ``final_dir`` is where the folder will end up (it is usually written under a temporary
    name first); the loading instructions name it. ``unfinished`` says why the adapter is not a
    finished run's (a cancel), said at the top of the card.
    """
    cfg = json.loads((folder / "job.json").read_text())
    training = cfg.get("training", {})
    recorded = adapter_base_model(folder) if training.get("warm_start_from") else None
    if recorded:  # a warm-started job's base_model is only the default; the adapter records its base
        base = Path(recorded).name if Path(recorded).name in EMBEDDED else recorded
        cfg = {**cfg, "training": {**training, "base_model": base}}
    # the adapter's own shape: a warm-started job keeps its start adapter's rank, whatever --lora-rank says
    cfg = {**cfg, "training": {**cfg.get("training", {}), **adapter_shape(folder)}}
    metrics = folder / "metrics.jsonl"
    text = render_model_card(cfg, metrics if metrics.is_file() else None, (final_dir or folder).resolve())
    if unfinished:  # said under the title
        front, title, rest = text.split("\n\n", 2)
        note = f"> **Unfinished:** {unfinished}. This adapter is where training had got to then."
        text = "\n\n".join([front, title, note, rest])
    atomic_write_text(folder / "README.md", text)
    (folder / "README.md").chmod(0o644)  # like the files PEFT writes beside it
    return folder / "README.md"


__all__ = ["render_model_card", "write_model_card"]
