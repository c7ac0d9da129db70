"""How a logged conversation turn reads in a rollouts view (``rftj rollouts`` and the dashboard)."""

from __future__ import annotations

import json


def turn_label(message: dict) -> str:
    """``user``, ``assistant``, or ``tool NAME`` for a tool's reply."""
    role = str(message.get("role", "?"))
    return f"tool {message['name']}" if role == "tool" and message.get("name") else role


def turn_text(message: dict) -> str:
    """The turn's text, followed by each tool call it makes as ``[calls NAME(ARGUMENTS)]``."""
    text = message.get("content") or ""
    text = text if isinstance(text, str) else json.dumps(text)
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        text += f"{' ' if text else ''}[calls {function.get('name')}({function.get('arguments', '')})]"
    return text


__all__ = ["turn_label", "turn_text"]
