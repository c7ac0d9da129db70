"""Chat messages -> prompt token ids, with the model's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openrft.errors import DataError


def check_messages(messages: Sequence[Any], prompt_id: str = "?") -> list[dict[str, Any]]:
    """Validate chat messages: a non-empty list of {"role": str, "content": str} dicts."""
    if not messages:
        raise DataError(f"prompt {prompt_id}: no messages to render")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DataError(f"prompt {prompt_id}: message {i} must be a dict with a string 'role'")
        if not isinstance(message.get("content"), str):
            raise DataError(f"prompt {prompt_id}: message {i} ('{message['role']}') needs string 'content'")
        checked.append(dict(message))
    return checked


def render_messages(tokenizer: Any, messages: Sequence[Any], prompt_id: str = "?") -> str:
    """The prompt text: the chat template with the assistant turn opened.

    A tokenizer without a chat template (a base model) gets the message contents joined
    by blank lines.
    """
    checked = check_messages(messages, prompt_id)
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in checked)
    return tokenizer.apply_chat_template(checked, add_generation_prompt=True, tokenize=False)


def encode_messages(tokenizer: Any, messages: Sequence[Any], prompt_id: str = "?") -> list[int]:
    """Token ids of the rendered prompt.

    A chat template already writes its special tokens; plain text gets the tokenizer's
    usual ones (e.g. BOS).
    """
    text = render_messages(tokenizer, messages, prompt_id)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    ids = tokenizer(text, add_special_tokens=not has_template)["input_ids"]
    if not ids:
        raise DataError(f"prompt {prompt_id}: renders to no tokens")
    return list(ids)


def encode_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids of a dataset prompt as every engine samples it.

    A prompt with a ``tools`` column, or with tool calls and tool results among its messages, is
    rendered like a chat request that carries them (:func:`openrft.rollout.chat.encode_chat`: the
    template's own tool format, or the tools described in the system message); any other prompt by
    :func:`encode_messages`.
    """
    tools = prompt.row.get("tools") if isinstance(prompt.row, dict) else None
    if tools or any(m.get("tool_calls") or m.get("role") == "tool" for m in prompt.messages):
        from openrft.rollout.chat import encode_chat

        return encode_chat(tokenizer, list(prompt.messages), tools or None)
    return encode_messages(tokenizer, prompt.messages, prompt.prompt_id)


def with_system(messages: Sequence[Any], system: str | None) -> list[Any]:
    """``messages`` with a system message ``system`` in front, unless they already hold one (a
    ``developer`` message is OpenAI's newer name for it)."""
    out = list(messages)
    if not system or any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in out):
        return out
    return [{"role": "system", "content": system}, *out]
