"""The Ollama ``Modelfile`` written next to an exported GGUF file.

Ollama renders prompts with Go templates, not the Jinja chat templates of Hugging Face
tokenizers, so the TEMPLATE is chosen by recognising the chat format's markers (ChatML,
Llama 3, Gemma). A default system prompt that the Jinja template inserts when a
conversation has none (SmolLM2 does) becomes a SYSTEM line, so Ollama prompts the model the
way training did. Stop parameters: the tokens that end an assistant turn, and the job's own
``--stop`` strings (training never saw text after them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openrft.models import END_OF_TURN_TOKENS


@dataclass(frozen=True)
class ChatFormat:
    name: str
    marker: str  # a string only this format's Jinja template contains
    system_open: str  # text before a system message's content
    system_close: str  # text after it
    template: str  # the Go template for Ollama


_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""

_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""

_GEMMA = """{{- range $i, $m := .Messages }}{{ if ne $m.Role "system" }}<start_of_turn>
{{- if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}
{{ if and $.System (eq $i 1) }}{{ $.System }}

{{ end }}{{ $m.Content }}<end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
"""

FORMATS = (
    ChatFormat("chatml", "<|im_start|>", "<|im_start|>system\n", "<|im_end|>", _CHATML),
    ChatFormat(
        "llama3",
        "<|start_header_id|>",
        "<|start_header_id|>system<|end_header_id|>\n\n",
        "<|eot_id|>",
        _LLAMA3,
    ),
    ChatFormat("gemma", "<start_of_turn>", "", "", _GEMMA),
)


def chat_format(tokenizer: Any) -> ChatFormat | None:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return next((f for f in FORMATS if f.marker in template), None)


def default_system_prompt(tokenizer: Any, fmt: ChatFormat) -> str | None:
    """The system message the chat template adds to a conversation that has none, if any."""
    if not fmt.system_open:
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that needs more than a plain user turn: no default to copy
        return None
    start = text.find(fmt.system_open)
    if start < 0:
        return None
    start += len(fmt.system_open)
    end = text.find(fmt.system_close, start)
    return text[start:end] if end > start else None


def stop_strings(tokenizer: Any, extra: Sequence[str] = ()) -> list[str]:
    """End-of-turn tokens the chat template uses, the EOS token, then ``extra``, without repeats."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    found = [t for t in END_OF_TURN_TOKENS if t in template and t in vocab]
    if tokenizer.eos_token:
        found.append(tokenizer.eos_token)
    return list(dict.fromkeys([*found, *extra]))


def modelfile_quote(text: str) -> str | None:
    """``text`` as a Modelfile argument Ollama reads back exactly, or None when it cannot be written.

    Ollama's parser decodes no escapes: it strips one pair of ``"`` or ``\"\"\"`` and keeps newlines
    inside them, and drops other non-printing characters (a tab, a carriage return). So text with
    no ``"`` goes in ``"..."``, text with ``"`` in triple quotes, and text holding ``\"\"\"`` or a
    character Ollama would drop is refused."""
    if not text or any(not (ch.isprintable() or ch in "\n ") for ch in text) or '"""' in text:
        return None
    return f'"{text}"' if '"' not in text else f'"""{text}"""'


def _stop_lines(stops: Sequence[str]) -> list[str]:
    lines = []
    for stop in stops:
        quoted = modelfile_quote(stop)
        lines.append(f"PARAMETER stop {quoted}" if quoted is not None else
                     f"# stop string {stop!r} left out: a Modelfile cannot hold it exactly")  # fmt: skip
    return lines


MODELFILE_HEADER = "# Ollama model definition written by `openrft export`.\n"


def render_modelfile(
    gguf_name: str, tokenizer: Any, stops: Sequence[str] = (), file_name: str = "Modelfile"
) -> str:
    """The Modelfile text for ``./gguf_name`` (a file in the same folder), written as ``file_name``."""
    fmt = chat_format(tokenizer)
    lines = [
        MODELFILE_HEADER.rstrip("\n"),
        f"# Create and run it: ollama create my-model -f {file_name} && ollama run my-model",
        f"FROM ./{gguf_name}",
        "",
    ]
    if fmt is None:
        lines += [
            "# The chat format is not one openrft writes a TEMPLATE for (ChatML, Llama 3, Gemma). Ollama does not",
            "# run the chat template stored in the GGUF file: without a TEMPLATE it uses a built-in one only when",
            "# that template is nearly the same, else it sends the bare prompt. Write the training format here as",
            '# TEMPLATE """..."""',
            "",
        ]
    else:
        lines += [f'TEMPLATE """{fmt.template}"""', ""]
        system = default_system_prompt(tokenizer, fmt)
        quoted = modelfile_quote(system) if system else None
        if quoted:
            lines += [f"SYSTEM {quoted}", ""]
    lines += _stop_lines(stop_strings(tokenizer, stops))
    return "\n".join(lines) + "\n"


__all__ = [
    "MODELFILE_HEADER",
    "chat_format",
    "default_system_prompt",
    "modelfile_quote",
    "render_modelfile",
    "stop_strings",
]
