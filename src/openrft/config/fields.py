"""The building blocks of the configuration groups: a field with CLI metadata and the group base."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openrft.algo.losses import LOSS_METHODS

# an http(s):// address with a host (a name, an IPv4 or a bracketed IPv6 address), and maybe user, port, path
URL = r"^(?i:https?)://(?:[^\s/?#@]*@)?(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|\d{1,4}))?(?:[/?#]\S*)?$"


def field(
    default: Any, description: str, *, valid: str | None = None, flags: tuple[str, ...] = (), **kw: Any
):
    """A pydantic Field carrying the CLI metadata: accepted-values note and extra flag aliases."""
    extra = {"valid": valid, "flags": list(flags)}
    return Field(default, description=description, json_schema_extra=extra, **kw)


def one_of(choices: Iterable[Any]) -> str:
    """An accepted-values note: ``one of a, b, c``."""
    return "one of " + ", ".join(str(c) for c in choices)


SEQUENCE_RATIO = {"gspo-token"}  # methods whose importance ratio is the sequence's (GSPO)


def loss_methods_help() -> str:
    """``--rl-loss-method``'s help, each method's clip range, KL and aggregation read from its registered
    defaults (so the text cannot drift from the losses)."""
    parts = []
    for name, method in LOSS_METHODS.items():
        d = method.defaults
        clip = f"clip 1-{_short(d.clip_low)}..1+{_short(d.clip_high)}" if d.clip_low < 0.01 else \
            f"clip {1 - d.clip_low:g}-{1 + d.clip_high:g}"  # fmt: skip
        kl = f"KL {d.kl_coef:g}" if d.kl_coef else "no KL"
        parts.append(
            f"{name} ({'sequence ratio, ' if name in SEQUENCE_RATIO else ''}{clip}, {kl}, {d.aggregation})"
        )
    return f"Policy loss: {', '.join(parts[:-1])} or {parts[-1]}."


def _short(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")  # 0.0003 -> 3e-4


def kl_beta_help() -> str:
    """``--rl-kl-beta``'s help: the methods that take it, and their built-in coefficient."""
    tunable = [(n, m.defaults.kl_coef) for n, m in LOSS_METHODS.items() if m.tunable_kl]
    rejected = [n for n, m in LOSS_METHODS.items() if not m.tunable_kl]
    built_in = "; ".join(f"0 (the default) = {n}'s built-in {k:g}" for n, k in tunable)
    return (f"KL penalty coefficient for {' and '.join(n for n, _ in tunable)}; {built_in}. "
            f"Rejected for {' and '.join(rejected)}.")  # fmt: skip


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
