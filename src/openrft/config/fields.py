"""The building blocks of the configuration groups: a field with CLI metadata and the group base."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# an http(s):// address with a host (a name, an IPv4 or a bracketed IPv6 address), and maybe user, port, path
URL = r"^(?i:https?)://(?:[^\s/?#@]*@)?(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(?::\d{1,5})?(?:[/?#]\S*)?$"


def field(
    default: Any, description: str, *, valid: str | None = None, flags: tuple[str, ...] = (), **kw: Any
):
    """A pydantic Field carrying the CLI metadata: accepted-values note and extra flag aliases."""
    extra = {"valid": valid, "flags": list(flags)}
    return Field(default, description=description, json_schema_extra=extra, **kw)


def parse_token_count(value: Any) -> Any:
    """'32k' -> 32768, '1m' -> 1048576; anything else is left for normal validation."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", value)
        if match:
            return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return value


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: Any) -> Any:
        # pydantic's lax mode would read True as 1; a boolean is never a valid number here.
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation not in (bool, bool | None):
            raise ValueError("expected a number, not a boolean")
        return value


def is_template_text(value: str) -> bool:
    """Whether ``value`` is Jinja template text (rather than the name of a file holding one)."""
    return "{{" in value or "{%" in value


def template_text(value: str) -> str:
    """``--chat-template``'s value as template text: a file is read now, so that the job keeps the text
    and never depends on the file again (ValueError when it is neither)."""
    if is_template_text(value):
        return value
    try:
        text = Path(value).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ValueError("no such template file") from None
    if not is_template_text(text):
        raise ValueError("not a Jinja template")
    return text
