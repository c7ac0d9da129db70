"""JSONL prompt files: reading, row validation with line numbers, atomic writing.

A prompt file has one JSON object per line in the evaluation-row shape::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "ground_truth": 42, "any_other_field": "kept and passed to the evaluator"}

Rows in the GSM8K format (``{"question", "answer"}``) are adapted on the fly, and so are rows in
TRL's prompt format: ``{"prompt": "text"}`` (one user message) or ``{"prompt": [messages]}``; the
``prompt`` field stays in the row for the evaluator.
Blank lines and a UTF-8 byte-order mark are ignored. Trailing assistant messages are
reference answers: they stay in ``Prompt.row`` but are not part of ``Prompt.messages``, and the last
one is the row's ``ground_truth`` when it has none (:func:`with_reference_answer`).

The messages are those of OpenAI's chat and fine-tuning formats: roles ``system``,
``developer`` (sampled as a system message), ``user``, ``assistant`` and ``tool``; content a
string or a list of text parts (joined by newlines); an assistant message may carry
``tool_calls`` instead of content, and a ``tool`` message answers one by ``tool_call_id``. A
``tools`` column (a list of function schemas, or that list as a JSON string) is shown to the
model through its chat template, as an OpenAI-compatible server does.

Every malformed row is reported with its line number; one :class:`DataError`
summarises them (the first few and a count). With ``skip_bad_rows`` a minority of
bad rows is skipped and counted instead; a file that is mostly broken always fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from openrft.data.tasks import code as code_task
from openrft.data.tasks import gsm8k
from openrft.data.tasks import math as math_task
from openrft.errors import DataError
from openrft.paths import temporary_beside
from openrft.records import Prompt

ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_FIELDS = ("tool_calls", "tool_call_id", "name")  # kept in a prompt's messages besides role/content
MAX_BAD_FRACTION = 0.5  # more bad rows than this fails even with skip_bad_rows
SHOWN_BAD_ROWS = 5
ID_FIELDS = ("id", "row_id", "prompt_id")

CountTokens = Callable[[Prompt], int]  # the prompt's tokens as the engines render it
Adapter = Callable[[list[dict[str, Any]]], Sequence[Any]]


class PromptSet(list):
    """A list of :class:`Prompt` plus what loading it skipped.

    ``skipped`` is the number of malformed rows left out (only non-zero with
    ``skip_bad_rows=True``); ``bad_rows`` holds ``(line_number, reason)`` for each;
    ``source`` names where the prompts came from; ``numbers`` holds each prompt's line (or
    row) number, ``unit`` what that number counts.
    """

    def __init__(
        self,
        prompts: Iterable[Prompt] = (),
        *,
        source: str = "",
        bad_rows: Sequence[tuple[int, str]] = (),
        numbers: Sequence[int] | None = None,
        unit: str = "line",
    ):
        super().__init__(prompts)
        self.source = source
        self.bad_rows = list(bad_rows)
        self.numbers = list(numbers) if numbers is not None else list(range(1, len(self) + 1))
        self.unit = unit

    @property
    def skipped(self) -> int:
        return len(self.bad_rows)

    def skipped_note(self, shown: int = 5) -> str | None:
        """One line naming the rows ``--skip-bad-rows`` left out (the first few, with why), or None."""
        if not self.bad_rows:
            return None
        rows = "; ".join(f"{self.unit} {n}: {why}" for n, why in self.bad_rows[:shown])
        more = f"; and {self.skipped - shown} more" if self.skipped > shown else ""
        return f"--dataset {self.source}: skipped {self.skipped} malformed rows ({rows}{more})"


# ----------------------------------------------------------------------------- reading


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, Any | str]]:
    """``(line_number, parsed object)`` for each non-blank line; unparsable lines give
    ``(line_number, BadLine(reason))`` instead of raising. A JSON array or a Parquet file is read too
    (see :func:`read_rows`), numbered by row."""
    return read_rows(path)[0]


def read_rows(path: str | os.PathLike[str]) -> tuple[list[tuple[int, Any | str]], str]:
    """``(numbered rows, unit)``: JSONL numbered by ``"line"``; a file holding one JSON array of rows,
    or a Parquet table (what Hugging Face datasets and verl's preprocessing write; needs pyarrow),
    numbered by ``"row"``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {p}") from None
    except OSError as exc:
        raise DataError(f"cannot read dataset file {p}: {exc.strerror or exc}") from None
    if raw.startswith(b"PAR1"):
        return _parquet_rows(p), "row"
    if raw.startswith(b"\x1f\x8b"):
        raise DataError(f"dataset file {p} is gzip-compressed", hint=f"decompress it first: gunzip -k {p}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16, as Windows PowerShell's `>` writes text
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeError:
            raise DataError(f"dataset file {p} starts as UTF-16 text but does not decode as it") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark (Notepad's, Excel's "UTF-8")
    if raw.lstrip().startswith(b"["):  # a JSON array of rows, rather than one row per line
        try:
            rows = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            rows = exc
        if isinstance(rows, list):
            return list(enumerate(rows, start=1)), "row"
        first = raw.lstrip().split(b"\n", 1)[0].strip()
        if isinstance(rows, json.JSONDecodeError) and first in (b"[", b"[{"):  # an array, cut or broken
            raise DataError(f"dataset file {p} is one JSON array of rows, but it does not parse: {rows.msg} "
                            f"at line {rows.lineno} column {rows.colno}")  # fmt: skip
    return _lines(raw), "line"


def _parquet_rows(path: Path) -> list[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path} is a Parquet file, and reading one needs pyarrow",
            hint="pip install 'openrft[parquet]', or convert it: python -c \"import pandas as pd; "
            f"pd.read_parquet('{path}').to_json('{path.with_suffix('.jsonl')}', orient='records', lines=True)\"",
        ) from None
    try:
        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    except Exception as exc:  # noqa: BLE001 - pyarrow's own errors for a damaged file
        raise DataError(f"cannot read the Parquet file {path}: {exc}") from None


def _lines(raw: bytes) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if b"\\ud" in line.lower():  # an escaped surrogate: a lone one is no character at all
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            out.append((number, row))
        except UnicodeEncodeError:
            out.append((number, BadLine("invalid Unicode: a lone surrogate escape such as \\ud800")))
        except UnicodeDecodeError:
            out.append((number, BadLine("not valid UTF-8 text")))
        except json.JSONDecodeError as exc:
            out.append((number, BadLine(f"invalid JSON ({exc.msg} at column {exc.colno})")))
        except RecursionError:
            out.append((number, BadLine("JSON nested too deeply")))
    return out


class BadLine(str):
    """The reason a line could not be parsed (kept apart from valid JSON strings)."""


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """Write rows as JSONL atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    fd, tmp = temporary_beside(target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a write's error: say which file
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        raise
    return target


# ----------------------------------------------------------------------------- validation


def content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multi-part content joined by
    newlines (as vLLM joins them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"only text content parts ({{'type': 'text', 'text': ...}}) are supported, not {kind!r}"
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise ValueError(f"content must be a string, not {type(content).__name__}")


def normalize_row(obj: Any) -> dict[str, Any]:
    """Check one parsed row and return it in the evaluation-row shape (raises ValueError)."""
    if not isinstance(obj, dict):
        raise ValueError(f"a row must be a JSON object, not {type(obj).__name__}")
    if "messages" not in obj and gsm8k.is_gsm8k_row(obj):
        obj = gsm8k.adapt_row(obj)
    if "messages" not in obj and "prompt" not in obj and math_task.is_math_row(obj):
        obj = math_task.adapt_row(obj)
    if code_task.is_code_row(obj):
        obj = code_task.adapt_row(obj)
    if "messages" not in obj and "prompt" in obj:
        obj = {**obj, "messages": _trl_prompt(obj["prompt"])}
    if "messages" not in obj and isinstance(obj.get("conversations"), list):
        obj = {**obj, "messages": _sharegpt(obj["conversations"])}
    if "messages" not in obj and isinstance(obj.get("query"), str) and {"tools", "answers"} <= obj.keys():
        obj = _xlam(obj)
    if "messages" not in obj:
        raise ValueError("missing 'messages' (a list of {'role', 'content'} objects), or a 'prompt' (text or "
                         "such a list, as TRL's datasets have)")  # fmt: skip
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}; allowed roles are {', '.join(ROLES)}")
        calls = message.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            raise ValueError(f"messages[{i}]: 'tool_calls' must be a list, on an assistant message")
        if calls and message.get("content") is None:
            continue  # a tool call, no text
        if message.get("function_call") is not None:
            raise ValueError(f"messages[{i}] uses OpenAI's deprecated 'function_call': write it as 'tool_calls' "
                             "([{'id', 'type': 'function', 'function': {'name', 'arguments'}}])")  # fmt: skip
        try:
            content_text(message.get("content"))
        except ValueError as exc:
            raise ValueError(f"messages[{i}]: {exc}") from None
    if "tools" in obj:
        obj = {**obj, "tools": _tools(obj["tools"])}
    return obj


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "chatgpt": "assistant", "system": "system"}  # fmt: skip


def _sharegpt(turns: list[Any]) -> list[dict[str, Any]]:
    """ShareGPT's ``conversations`` (``[{"from": "human", "value": ...}, {"from": "gpt", ...}]``, the most
    common chat layout on the Hugging Face Hub) as messages."""
    messages = []
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and "from" in turn and "value" in turn):
            raise ValueError(f"conversations[{i}] must be {{'from': ..., 'value': ...}} (ShareGPT's layout)")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"conversations[{i}] is from {turn['from']!r}; openrft reads ShareGPT turns from "
                             f"{', '.join(sorted(SHAREGPT_ROLES))}: convert tool turns to 'messages' with "
                             "'tool_calls' and 'tool' messages")  # fmt: skip
        messages.append({"role": role, "content": turn["value"]})
    return messages


XLAM_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
              "number": "number", "bool": "boolean", "boolean": "boolean", "list": "array", "tuple": "array",
              "dict": "object", "object": "object"}  # fmt: skip


def _xlam(obj: dict[str, Any]) -> dict[str, Any]:
    """An xLAM row (Salesforce's function-calling sets: ``query``, ``tools`` in their own parameter notation,
    ``answers`` the reference calls, the last two often JSON strings) as a user message, OpenAI tools, and
    the reference calls as ``answers`` and (unless the row has one) ``ground_truth``."""
    try:
        tools, answers = (json.loads(v) if isinstance(v, str) else v for v in (obj["tools"], obj["answers"]))
    except ValueError:
        raise ValueError("xLAM row: 'tools' or 'answers' is a string that is not JSON") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t for t in tools):
        raise ValueError("xLAM row: 'tools' must be a list of {'name', 'description', 'parameters'}")
    converted = [t if t.get("type") == "function" else _xlam_tool(t) for t in tools]
    row = {
        **obj,
        "messages": [{"role": "user", "content": obj["query"]}],
        "tools": converted,
        "answers": answers,
    }
    return {"ground_truth": answers, **row} if obj.get("ground_truth") is None else row


def _xlam_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "description", "parameters": {"city": {"type": "str, optional", "description", "default"}}}``
    as an OpenAI function tool with a JSON schema (a parameter with a default or ``optional`` is not required)."""
    parameters = tool.get("parameters") or {}
    if parameters.get("type") == "object" and isinstance(parameters.get("properties"), dict):
        schema = parameters  # already a JSON schema
    else:
        properties, required = {}, []
        for name, spec in parameters.items():
            spec = spec if isinstance(spec, dict) else {}
            kind = str(spec.get("type", "")).lower()
            base = XLAM_TYPES.get(kind.split(",")[0].split("[")[0].strip())
            properties[name] = {
                k: v for k, v in (("type", base), ("description", spec.get("description"))) if v
            }
            if "optional" not in kind and "default" not in spec:
                required.append(name)
        schema = {"type": "object", "properties": properties, "required": required}
    function = {"name": tool["name"], "description": str(tool.get("description") or ""), "parameters": schema}
    return {"type": "function", "function": function}


def _trl_prompt(prompt: Any) -> list[Any]:
    """TRL's ``prompt`` column as messages: text is one user message, a list is the messages."""
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        return list(prompt)
    raise ValueError("'prompt' must be non-empty text or a list of {'role', 'content'} messages")


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    """A row's ``tools``: a list of tool schemas, or that list as a JSON string (as many datasets
    store it); null or empty is no tools."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError:
            raise ValueError("'tools' is a string that is not JSON; give a list of tool schemas") from None
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError("'tools' must be a list of tool schemas ({'type': 'function', 'function': {...}})")
    return tools


def prompt_messages(
    messages: Sequence[dict[str, Any]], *, open_ended: bool = False
) -> tuple[dict[str, Any], ...]:
    """The messages to sample from: trailing assistant messages dropped, content as text,
    ``developer`` as ``system``; tool calls and tool results kept. They must end with a user message
    or a tool result, unless ``open_ended`` (an agent or environment supplies the next turn)."""
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    kept = tuple(_prompt_message(m) for m in messages[:end])
    if open_ended and kept:
        return kept
    if not kept or kept[-1]["role"] not in ("user", "tool"):
        raise ValueError(
            "the prompt must end with a user message, or a tool result (after dropping trailing "
            "assistant messages)"
        )
    if not any(m["content"].strip() for m in kept if m["role"] == "user") and kept[-1]["role"] == "user":
        raise ValueError("empty prompt: every user message is blank")
    return kept


def _prompt_message(message: dict[str, Any]) -> dict[str, Any]:
    role = "system" if message["role"] == "developer" else message["role"]
    content = message.get("content")
    kept = {"role": role, "content": "" if content is None else content_text(content)}
    kept.update({k: message[k] for k in MESSAGE_FIELDS if message.get(k) is not None})
    return kept


def with_reference_answer(row: dict[str, Any], kept: int) -> dict[str, Any]:
    """``row`` with its last trailing assistant message (after the ``kept`` sampled from) as its
    ``ground_truth`` when it has none: the reference the evaluator compares with (its text, or its
    tool calls when it has no text)."""
    dropped = [m for m in row["messages"][kept:] if m.get("role") == "assistant"]
    if row.get("ground_truth") is not None or not dropped:
        return row
    last = dropped[-1]
    text = "" if last.get("content") is None else content_text(last["content"])
    reference = text if text or not last.get("tool_calls") else last["tool_calls"]
    return {**row, "ground_truth": reference}


def row_id(row: dict[str, Any]) -> str | None:
    """The row's own id: ``input_metadata.row_id``, else ``id``/``row_id``/``prompt_id``."""
    meta = row.get("input_metadata")
    if isinstance(meta, dict) and meta.get("row_id") not in (None, ""):
        return str(meta["row_id"])
    for name in ID_FIELDS:
        if row.get(name) not in (None, "") and isinstance(row[name], str | int):
            return str(row[name])
    return None


# ----------------------------------------------------------------------------- loading


def prompts_from_rows(
    numbered_rows: Sequence[tuple[int, Any]],
    *,
    source: str,
    count_tokens: CountTokens | None = None,
    max_prompt_tokens: int | None = None,
    skip_bad_rows: bool = False,
    unit: str = "line",
    open_ended: bool = False,
) -> PromptSet:
    """Validate ``(number, row)`` pairs into prompts; raise one summary on bad rows.

    With ``count_tokens`` and ``max_prompt_tokens`` the lengths are checked too
    (:func:`check_prompt_lengths`). ``open_ended``: rows an agent or an environment carries on (an
    MCP gym's rows hold only a system message), so they need not end with a user message.
    """
    prompts: list[Prompt] = []
    numbers: list[int] = []
    bad: list[tuple[int, str]] = []
    seen_ids: dict[str, int] = {}
    # a row without an id is named by its line number, unless another row names itself so
    explicit = {row_id(obj) for _, obj in numbered_rows if isinstance(obj, dict)} - {None}
    for number, obj in numbered_rows:
        try:
            if isinstance(obj, BadLine):
                raise ValueError(str(obj))
            row = normalize_row(obj)
            messages = prompt_messages(row["messages"], open_ended=open_ended)
            row = with_reference_answer(row, len(messages))
            pid = row_id(row) or (str(number) if str(number) not in explicit else f"{unit}-{number}")
            if pid in seen_ids:
                raise ValueError(f"duplicate id {pid!r} (first used on {unit} {seen_ids[pid]})")
        except ValueError as exc:
            bad.append((number, str(exc)))
            continue
        seen_ids[pid] = number
        prompts.append(Prompt(prompt_id=pid, messages=messages, row=row))
        numbers.append(number)
    total = len(numbered_rows)
    if total == 0:
        raise DataError(f"{source}: the dataset has no rows", hint="each line must hold one JSON object")
    lengths = count_tokens is not None and max_prompt_tokens is not None
    if not lengths or not prompts:  # else the rows too long are named in the same summary
        _raise_if_too_bad(source, bad, total, unit, skip_bad_rows, any_left=bool(prompts))
    loaded = PromptSet(prompts, source=source, bad_rows=bad, numbers=numbers, unit=unit)
    if lengths:
        loaded = check_prompt_lengths(loaded, count_tokens, max_prompt_tokens, skip_bad_rows=skip_bad_rows)
        _raise_if_too_bad(source, list(loaded.bad_rows), total, unit, skip_bad_rows, any_left=bool(loaded))
    return loaded


def check_prompt_lengths(
    prompts: PromptSet, count_tokens: CountTokens, max_prompt_tokens: int, *, skip_bad_rows: bool = False
) -> PromptSet:
    """Make prompts longer than ``max_prompt_tokens`` (``count_tokens(prompt)``) bad rows.

    Bad rows raise one summary (with the rows found malformed earlier), or with
    ``skip_bad_rows`` are left out and counted, as when loading.
    """

    def check(prompt: Prompt) -> Prompt:
        n_tokens = _count(count_tokens, prompt)
        if n_tokens > max_prompt_tokens:
            raise ValueError(
                f"prompt is {n_tokens} tokens, longer than the {max_prompt_tokens} allowed "
                "(max_context_length - max_output_tokens)"
            )
        return prompt

    return map_prompts(prompts, check, skip_bad_rows=skip_bad_rows)


def map_prompts(
    prompts: PromptSet, fn: Callable[[Prompt], Prompt], *, skip_bad_rows: bool = False
) -> PromptSet:
    """``fn`` applied to every prompt; a prompt for which it raises ``ValueError`` becomes a bad row
    (its message the reason), with the same summary, limits and ``skip_bad_rows`` as loading."""
    kept: list[Prompt] = []
    numbers: list[int] = []
    bad = list(prompts.bad_rows)
    for number, prompt in zip(prompts.numbers, prompts, strict=True):
        try:
            kept.append(fn(prompt))
        except ValueError as exc:
            bad.append((number, str(exc)))
            continue
        numbers.append(number)
    if len(bad) > len(prompts.bad_rows):
        bad.sort()
        total = len(prompts) + len(prompts.bad_rows)
        _raise_if_too_bad(prompts.source, bad, total, prompts.unit, skip_bad_rows, any_left=bool(kept))
    return PromptSet(kept, source=prompts.source, bad_rows=bad, numbers=numbers, unit=prompts.unit)


def _raise_if_too_bad(
    source: str, bad: list[tuple[int, str]], total: int, unit: str, skipping: bool, *, any_left: bool
) -> None:
    if bad and (not skipping or len(bad) > MAX_BAD_FRACTION * total or not any_left):
        raise DataError(_summary(source, bad, total, unit, skipping), hint=_hint(bad, total, skipping))


def _count(count_tokens: CountTokens, prompt: Prompt) -> int:
    """The trainer's token count; a chat template that rejects the row makes it a bad row."""
    try:
        return int(count_tokens(prompt))
    except Exception as exc:
        raise ValueError(
            f"the chat template cannot render this prompt: {type(exc).__name__}: {exc}"
        ) from None


def _summary(source: str, bad: list[tuple[int, str]], total: int, unit: str, skipping: bool) -> str:
    head = f"{source}: {len(bad)} of {total} rows are malformed"
    if skipping:
        head += f" (more than {MAX_BAD_FRACTION:.0%}: the file is mostly broken)"
    lines = [head + ":"]
    lines += [f"  {unit} {number}: {reason}" for number, reason in bad[:SHOWN_BAD_ROWS]]
    if len(bad) > SHOWN_BAD_ROWS:
        lines.append(f"  ... and {len(bad) - SHOWN_BAD_ROWS} more")
    return "\n".join(lines)


def _hint(bad: list[tuple[int, str]], total: int, skipping: bool) -> str:
    if not skipping and len(bad) <= MAX_BAD_FRACTION * total:
        return "fix these rows, or pass --skip-bad-rows to leave them out (they are counted)"
    return 'each line must be {"messages": [{"role": "user", "content": "..."}], "ground_truth": ...}'


def load_jsonl_prompts(
    path: str | os.PathLike[str],
    *,
    count_tokens: CountTokens | None = None,
    max_prompt_tokens: int | None = None,
    skip_bad_rows: bool = False,
    adapter: Adapter | None = None,
    open_ended: bool = False,
) -> PromptSet:
    """Read and validate a JSONL prompt file (see the module docstring)."""
    numbered, unit = read_rows(path)
    if adapter is not None:
        numbered, unit = _apply_adapter(numbered, adapter, str(path))
    return prompts_from_rows(
        numbered,
        source=str(path),
        count_tokens=count_tokens,
        max_prompt_tokens=max_prompt_tokens,
        skip_bad_rows=skip_bad_rows,
        unit=unit,
        open_ended=open_ended,
    )


def _apply_adapter(
    numbered: list[tuple[int, Any]], adapter: Adapter, source: str
) -> tuple[list[tuple[int, Any]], str]:
    """Run an evaluator's ``dataset_adapter`` on the parsed rows (unparsable lines stay bad)."""
    good = [(n, obj) for n, obj in numbered if not isinstance(obj, BadLine)]
    broken = [(n, obj) for n, obj in numbered if isinstance(obj, BadLine)]
    try:
        adapted = list(adapter([obj for _, obj in good]))
    except Exception as exc:
        raise DataError(
            f"{source}: the evaluator's dataset_adapter failed: {type(exc).__name__}: {exc}"
        ) from None
    rows = [_as_plain_row(r) for r in adapted]
    if len(rows) == len(good):
        return broken + [(n, r) for (n, _), r in zip(good, rows, strict=True)], "line"
    return [(i, r) for i, r in enumerate(rows, start=1)], "adapted row"


def _as_plain_row(row: Any) -> Any:
    """An EvaluationRow (openrft's or eval-protocol's) -> a JSON-like dict; dicts unchanged."""
    dump = getattr(row, "model_dump", None)
    if dump is None:
        return row
    data = dump(mode="json", exclude_none=True)
    for volatile in ("created_at", "pid", "rollout_status", "execution_metadata", "eval_metadata"):
        data.pop(volatile, None)
    return data
