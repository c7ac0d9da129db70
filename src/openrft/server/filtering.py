"""``filter`` and ``orderBy`` of the list endpoints, as Google's API guidelines define them (AIP-160, AIP-132).

A filter is a boolean expression over the fields of the listed objects::

    state = JOB_STATE_RUNNING AND (lossConfig.method = "DAPO" OR lossConfig.method = "GSPO_TOKEN")
    NOT state = JOB_STATE_FAILED
    createTime > "2026-12-01T00:00:00Z" AND displayName = "nightly*"
    -evaluationDataset:*

* comparisons ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` and ``:`` (has: a list holds the value, an
  object has the key, ``field:*`` the field is set); numbers compare as numbers, everything else
  as text (``true``/``false`` for booleans; RFC 3339 times compare in time order as text);
  ``*`` in a value compared with ``=`` matches any run of characters;
* ``AND``, ``OR`` (which binds tighter than ``AND``, as AIP-160 says), ``NOT`` or ``-``, parentheses;
  terms side by side are joined by ``AND``;
* a value is a word or a double- or single-quoted string; fields are dotted paths, in camelCase or
  snake_case (``loss_config.method`` is ``lossConfig.method``).

A field an object does not have is unset there: it fails ``=`` and passes ``!=``. A top-level field
that no object of the kind can have is an error, so a misspelt filter is refused instead of
quietly matching nothing. Every problem is an :class:`~openrft.server.errors.ApiError` 400 naming it.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from openrft.server.errors import ApiError

TOKEN_RE = re.compile(
    r'\s*(?:(\()|(\))|(<=|>=|!=|=|<|>|:)|"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([^\s()<>=!:"\']+))'
)


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    value: str


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class Or:
    operands: tuple[Any, ...]


@dataclass(frozen=True)
class And:
    operands: tuple[Any, ...]


class _Parser:
    def __init__(self, text: str, fields: Collection[str]):
        self.text, self.fields = text, fields
        self.tokens = _tokens(text)
        self.at = 0

    def fail(self, problem: str) -> ApiError:
        return ApiError(400, f"filter: {problem} in {self.text!r}; expected terms like FIELD=VALUE joined by "
                        "AND / OR, NOT, parentheses")  # fmt: skip

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end")
        self.at += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].upper() == word:
            self.at += 1
            return True
        return False

    def expression(self) -> Any:  # sequence {AND sequence}; side-by-side factors are ANDed too
        parts = [self.factor()]
        while (token := self.peek()) is not None and token != ("paren", ")"):
            self.keyword("AND")
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def factor(self) -> Any:  # term {OR term}
        parts = [self.term()]
        while self.keyword("OR"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self) -> Any:
        if self.keyword("NOT"):
            return Not(self.term())
        token = self.take()
        if token == ("paren", "("):
            inner = self.expression()
            if self.peek() != ("paren", ")"):
                raise self.fail("a '(' is not closed")
            self.at += 1
            return inner
        kind, text = token
        if kind == "word" and text.startswith("-") and len(text) > 1:
            self.tokens[self.at - 1] = ("word", text[1:])
            self.at -= 1
            return Not(self.term())
        if kind != "word":
            raise self.fail(f"unexpected {text!r}")
        field = field_name(text)
        if field.split(".")[0] not in self.fields:
            raise ApiError(400, f"filter: unknown field {text!r}; fields: {', '.join(sorted(self.fields))}")
        op_token = self.peek()
        if op_token is None or op_token[0] != "op":
            raise self.fail(f"{text!r} must be followed by a comparison (=, !=, <, <=, >, >=, :)")
        self.at += 1
        value_kind, value = self.take()
        if value_kind not in ("word", "string"):
            raise self.fail(f"a value must follow {text} {op_token[1]}")
        return Term(field, op_token[1], value)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    while at < len(text.rstrip()):
        match = TOKEN_RE.match(text, at)
        if match is None or match.end() == at:
            raise ApiError(400, f"filter: cannot read {text[at:].strip()!r} in {text!r}")
        opened, closed, op, double, single, word = match.groups()
        if opened or closed:
            tokens.append(("paren", opened or closed))
        elif op:
            tokens.append(("op", op))
        elif double is not None or single is not None:
            raw = double if double is not None else single
            tokens.append(("string", re.sub(r"\\(.)", r"\1", raw)))
        else:
            tokens.append(("word", word))
        at = match.end()
    return tokens


def field_name(text: str) -> str:
    """``loss_config.method`` -> ``lossConfig.method`` (camelCase fields pass unchanged)."""
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in text.split("."))


def parse(text: str, fields: Collection[str]) -> Any:
    """The filter ``text`` as a tree of :class:`Term`, :class:`Not`, :class:`Or`, :class:`And`
    (``None`` for an empty filter). ``fields`` are the top-level fields the listed objects may have."""
    if not text.strip():
        return None
    parser = _Parser(text, fields)
    try:
        tree = parser.expression()
    except RecursionError:
        raise ApiError(400, "filter: nested too deeply (parentheses, NOT or '-')") from None
    if parser.peek() is not None:
        raise parser.fail(f"unexpected {parser.peek()[1]!r}")  # type: ignore[index]
    return tree


def lookup(obj: dict[str, Any], field: str) -> Any:
    value: Any = obj
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def holds(tree: Any, obj: dict[str, Any]) -> bool:
    """Whether ``obj`` passes the parsed filter ``tree``."""
    if tree is None:
        return True
    if isinstance(tree, Not):
        return not holds(tree.operand, obj)
    if isinstance(tree, Or):
        return any(holds(t, obj) for t in tree.operands)
    if isinstance(tree, And):
        return all(holds(t, obj) for t in tree.operands)
    return _compare(lookup(obj, tree.field), tree.op, tree.value)


def _compare(value: Any, op: str, wanted: str) -> bool:
    if op == ":":
        if wanted == "*":
            return value not in (None, "", [], {})
        if isinstance(value, list):
            return any(_compare(v, "=", wanted) for v in value)
        if isinstance(value, dict):
            return wanted in value
        return _compare(value, "=", wanted)
    if value is None or isinstance(value, dict | list):
        return op == "!="
    text = str(value).lower() if isinstance(value, bool) else str(value)
    number, wanted_number = _number(value), _number(wanted)
    if number is not None and wanted_number is not None:
        left, right = number, wanted_number
    else:
        left, right = text, wanted  # type: ignore[assignment]
    if op in ("=", "!="):
        if number is None and "*" in wanted:
            equal = fnmatch.fnmatchcase(text, wanted.replace("[", "[[]").replace("?", "[?]"))
        else:
            equal = left == right
        return equal == (op == "=")
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return (
            float(value)
            if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.]+(e[-+]?\d+)?", value)
            else None
        )
    except ValueError:
        return None


def select(items: list[dict[str, Any]], text: str, fields: Collection[str]) -> list[dict[str, Any]]:
    """The items that pass filter ``text`` (all of them for an empty one)."""
    tree = parse(text or "", fields)
    return [item for item in items if holds(tree, item)]


def ordered(items: list[dict[str, Any]], order_by: str, fields: Collection[str], default: str = "name"):
    """``items`` sorted by ``orderBy`` (``"createTime desc, name"``; snake_case names too; a subfield
    after a ``.``, as in ``trainingConfig.loraRank desc``)."""
    keys = [k.strip() for k in (order_by or "").split(",") if k.strip()] or [default]
    for key in reversed(keys):
        name, _, direction = key.partition(" ")
        field, direction = field_name(name.strip()), direction.strip().lower() or "asc"
        if field.split(".")[0] not in fields or direction not in ("asc", "desc"):
            raise ApiError(
                400, f"orderBy: cannot order by {key!r}; fields: {', '.join(sorted(fields))}, "
                "each optionally followed by ' desc'",
            )  # fmt: skip
        items = sorted(items, key=lambda o, f=field: _sort_key(lookup(o, f)), reverse=direction == "desc")
    return items


def _sort_key(value: Any) -> tuple[int, float, str]:
    number = _number(value)
    return (0, 0.0, "") if value is None else (1, number, "") if number is not None else (2, 0.0, str(value))


def masked(obj: dict[str, Any], read_mask: str | None, fields: Collection[str]) -> dict[str, Any]:
    """``obj`` with only the fields a ``readMask`` names (comma-separated paths, camelCase or snake_case,
    a subfield after a ``.``; empty or ``*``: everything). A top-level field it does not have is a 400."""
    paths = [field_name(p.strip()) for p in (read_mask or "").split(",") if p.strip()]
    if not paths or "*" in paths:
        return obj
    out: dict[str, Any] = {}
    for path in paths:
        if path.split(".")[0] not in fields:
            raise ApiError(400, f"readMask: unknown field {path!r}; fields: {', '.join(sorted(fields))}")
        value, target, parts = lookup(obj, path), out, path.split(".")
        if value is None and lookup(obj, parts[0]) is None:
            continue
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def page_token(offset: int, filter_: str | None, order_by: str | None) -> str:
    """The opaque ``nextPageToken`` of a list call: where the next page starts, bound to its query."""
    data = {"o": offset, "q": _query_key(filter_, order_by)}
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def page_start(token: str | None, filter_: str | None, order_by: str | None) -> int:
    """Where the page a ``pageToken`` asks for starts (0 without one); a token this server did not
    return, or one returned for another ``filter``/``orderBy``, is a 400."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, key = data["o"], data["q"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "pageToken: not a token this server returned") from None
    if type(offset) is not int or offset < 0:
        raise ApiError(400, "pageToken: not a token this server returned")
    if key != _query_key(filter_, order_by):
        raise ApiError(400, "pageToken: filter and orderBy must match the call that returned the token")
    return offset


def list_page(
    items: list[dict[str, Any]], key: str, fields: Collection[str], *, size: int, token: str,
    filter_: str, order_by: str, read_mask: str, default: int = 50, most: int = 200,
) -> dict[str, Any]:  # fmt: skip
    """One page of a list answer in the service's shape, ``{key: [...], "nextPageToken", "totalSize"}``:
    ``items`` filtered, ordered, cut at ``size`` (``pageSize``: ``default`` when 0, at most ``most``)
    from where ``token`` (``pageToken``) says, each masked by ``readMask``."""
    if size < 0:
        raise ApiError(400, f"pageSize: {size} is not valid; expected a whole number >= 0")
    size = min(size or default, most)
    items = ordered(select(items, filter_, fields), order_by, fields)
    start = page_start(token, filter_, order_by)
    more = start + size < len(items)
    return {
        key: [masked(item, read_mask, fields) for item in items[start : start + size]],
        "nextPageToken": page_token(start + size, filter_, order_by) if more else "",
        "totalSize": len(items),
    }


def _query_key(filter_: str | None, order_by: str | None) -> str:
    return hashlib.sha256(f"{filter_ or ''}\n{order_by or ''}".encode()).hexdigest()[:12]


__all__ = [
    "field_name",
    "holds",
    "list_page",
    "lookup",
    "masked",
    "ordered",
    "page_start",
    "page_token",
    "parse",
    "select",
]
