"""Constrained decoding: structured output (``response_format``) and forced tool calls (``tool_choice``).

A request's constraint becomes one grammar (llguidance's, the library behind vLLM's ``guidance``
backend): a JSON schema for ``{"type": "json_schema"}``, any JSON object for ``{"type": "json_object"}``,
and for ``tool_choice`` ``"required"`` or a named function, one or more calls in the model's tool-call
format (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``) whose arguments follow the
tools' parameter schemas. Objects that list their properties admit no others unless the schema says so
(:func:`closed_objects`, vLLM's default). The local engine keeps one matcher per row: before each token it masks the
tokens the grammar forbids, and once the grammar is complete only an end token is allowed.

What is recorded stays the engine's contract: a token's log-prob is ``log_softmax(logits / T)`` of
the model, before the mask (as before top-k and top-p), so the trainer's recomputed log-probs agree
with it. Sampling itself uses the masked distribution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# Compact, Python-style JSON (", " and ": "): what models see most, and no whitespace to loop on.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the function names OpenAI's API accepts


class ConstraintError(ValueError):
    """A constraint that cannot be built: its message names what is wrong, ``param`` the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def json_grammar(schema: dict[str, Any]) -> str:
    """The grammar of JSON text that follows ``schema``."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
SCHEMA_VALUES = ("items", "additionalProperties", "anyOf", "oneOf", "prefixItems", "not", "if", "then", "else",
                 "contains", "propertyNames")  # fmt: skip


def closed_objects(schema: Any, close: bool = True) -> Any:
    """``schema`` with every object that lists its ``properties`` closed to other keys
    (``additionalProperties: false`` where it says nothing), as vLLM's default backend (xgrammar, strict
    mode) reads tool and response schemas: a client listing a tool's parameters rejects any other key
    (smolagents does), and JSON Schema's open default let the model invent some. An object without a
    ``properties`` list stays free-form, and so do the members of an ``allOf`` (closing one would refuse
    the others' properties)."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: closed_objects(sub) for name, sub in value.items()}
        elif key == "allOf" and isinstance(value, list):
            out[key] = [closed_objects(sub, close=False) for sub in value]
        elif key in SCHEMA_VALUES:
            out[key] = closed_objects(value)
        else:  # keywords whose values are data (const, enum, default, examples) or plain settings
            out[key] = value
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if close and isinstance(out.get("properties"), dict) and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    return out


def response_format_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a chat request's ``response_format`` asks for (None for plain text)."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise ConstraintError(f"response_format type {json.dumps(kind)} is not one of text, json_object, "
                              "json_schema", "response_format.type")  # fmt: skip
    spec = response_format.get("json_schema")  # type: ignore[union-attr]
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConstraintError("response_format json_schema needs a 'json_schema' object with a 'name'",
                              "response_format.json_schema")  # fmt: skip
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise ConstraintError("response_format json_schema.schema must be a JSON schema object",
                              "response_format.json_schema.schema")  # fmt: skip
    check_finite(schema, "response_format.json_schema.schema")
    return closed_objects(schema)


def job_response_schema(value: str) -> dict[str, Any]:
    """The JSON schema a job's ``--response-format`` names (raises ValueError saying what is wrong):
    ``json_object`` (any JSON object), or inline JSON or a ``.json`` file holding a JSON schema, OpenAI's
    ``response_format`` object (``{"type": "json_schema", "json_schema": {"name", "schema"}}``) or the
    Responses API's flat ``text.format`` (``{"type": "json_schema", "name", "schema"}``)."""
    from pathlib import Path

    text = value.strip()
    if text == "json_object":
        return {"type": "object"}
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"{value} is not 'json_object', inline JSON or a JSON file")
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"invalid JSON in {value if len(value) < 80 else 'the schema'}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a JSON schema is an object")
    if data.get("type") == "json_schema" and "json_schema" not in data:  # the Responses API's flat form
        if not isinstance(data.get("schema"), dict):
            raise ValueError("a json_schema response format holds its JSON schema in 'schema' (or in "
                             "'json_schema': {'name', 'schema'})")  # fmt: skip
        data = {"type": "json_schema", "json_schema": {"name": "response", **data}}
    if data.get("type") in ("json_schema", "json_object") and set(data) <= {"type", "json_schema"}:
        schema = response_format_schema(data) or {"type": "object"}  # ConstraintError is a ValueError
    else:
        schema = closed_objects(data)
    return schema


def job_response_grammar(value: str) -> str:
    """The grammar of ``--response-format``'s schema, checked to compile (ValueError otherwise)."""
    import llguidance

    grammar = json_grammar(job_response_schema(value))
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:  # the caller names the flag or the request field
        raise ValueError(f"the schema cannot be used for constrained decoding: {error}")
    return grammar


def request_grammar(
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: Any,
    parallel: bool | None,
    response_format: dict[str, Any] | None,
) -> tuple[str | None, str]:
    """The grammar a chat request asks for, and the field that asked: forced tool calls (``tool_choice``),
    else JSON (``response_format``), which with tools offered may also be tool calls, as OpenAI lets the
    model choose between calling a tool and answering in the schema, else free text whose calls follow
    the strict tools' schemas (``tools``)."""
    check_tools(tools)
    forced = tool_call_grammar(tools, tool_choice, parallel)
    if forced is not None:
        return forced, "tool_choice"
    schema = response_format_schema(response_format)
    if schema is None:
        strict = tool_choice != "none" and strict_call_grammar(tools, parallel)
        return (strict, "tools") if strict else (None, "response_format")
    if not tools or tool_choice == "none":
        return json_grammar(schema), "response_format"
    calls = tool_call_grammar(tools, "required", parallel)
    answer = f"answer: %json {json.dumps({**schema, 'x-guidance': JSON_OPTIONS})}\n"
    return calls.replace("start: call", "start: answer | call", 1) + answer, "response_format"


def check_tools(tools: Sequence[dict[str, Any]] | None) -> None:
    """Refuse what OpenAI refuses and a grammar would silently get wrong: a tool that is not a function
    (``web_search``, a missing ``function``), a function's ``parameters`` that are not a JSON schema
    object, and two functions of the same name."""
    names: set[str] = set()
    for index, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            what = f"type {json.dumps(kind)}" if isinstance(tool, dict) else "not an object"
            raise ConstraintError(f"tools[{index}]: {what}; only function tools are supported "
                                  '({"type": "function", "function": {...}})', f"tools[{index}].type")  # fmt: skip
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ConstraintError(f"tools[{index}].function is required: an object with the function's name "
                                  "and parameters", f"tools[{index}].function")  # fmt: skip
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
            raise ConstraintError(f"tools[{index}].function.name {json.dumps(name)} is not a valid function "
                                  "name: 1 to 64 letters, digits, underscores or dashes", f"tools[{index}].function.name")  # fmt: skip
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ConstraintError(f"tools[{index}].function.parameters must be a JSON schema object",
                                  f"tools[{index}].function.parameters")  # fmt: skip
        kind = (parameters or {}).get("type", "object")
        if kind != "object" and not (isinstance(kind, list) and "object" in kind):  # arguments are an object
            raise ConstraintError(f"tools[{index}].function.parameters must be a JSON schema of type "
                                  f"'object', not {json.dumps(kind)}", f"tools[{index}].function.parameters")  # fmt: skip
        if function.get("strict") is True:
            check_finite(parameters, f"tools[{index}].function.parameters")
        if function.get("name") in names:
            raise ConstraintError(f"tools: the function name {json.dumps(function['name'])} is given twice",
                                  f"tools[{index}].function.name")  # fmt: skip
        names.add(function.get("name"))


def tool_call_grammar(
    tools: Sequence[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None
) -> str | None:
    """The grammar of the tool calls ``tool_choice`` forces (None for ``auto``/``none``/absent).

    ``"required"`` allows a call to any tool, ``{"type": "function", "function": {"name": N}}`` only to
    N; with ``parallel`` not false, several calls may follow one another.
    """
    if tool_choice in (None, "auto", "none"):
        return None
    functions = _functions(tools)
    if tool_choice == "required":
        names = list(functions)
    elif isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str):
        names = [tool_choice["function"]["name"]]
    else:
        raise ConstraintError(f"tool_choice {json.dumps(tool_choice)} is not one of 'auto', 'none', 'required' "
                              'or {"type": "function", "function": {"name": ...}}', "tool_choice")  # fmt: skip
    if not names:
        raise ConstraintError("tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
    missing = [n for n in names if n not in functions]
    if missing:
        raise ConstraintError(f"tool_choice names the function {json.dumps(missing[0])}, which is not in 'tools'",
                              "tool_choice")  # fmt: skip
    for index, tool in enumerate(tools or []):  # forced: every schema that may be called must be finite
        if isinstance(tool, dict) and (tool.get("function") or {}).get("name") in names:
            check_finite(tool["function"].get("parameters"), f"tools[{index}].function.parameters")
    body = _call_body({name: functions[name].get("parameters") for name in names})
    # several calls only when any tool may be called and parallel calls are allowed (a named one: once)
    repeat = "" if parallel is False or tool_choice != "required" else ' ("\\n" call)*'
    lark = (
        f"start: call{repeat}\n"
        f'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
        f"body: %json {json.dumps(body)}\n"
    )
    return lark


def _functions(tools: Sequence[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The ``function`` of each chat tool that names one, by its name."""
    return {
        t["function"]["name"]: t["function"]
        for t in tools or []
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    }


def strict_call_grammar(tools: Sequence[dict[str, Any]] | None, parallel: bool | None) -> str | None:
    """Under ``tool_choice`` ``"auto"``, the grammar that holds the model's calls to the tools' schemas
    when a tool asks for it (``"strict": true``, as OpenAI guarantees such a call's arguments), else None.

    The reply stays free text, but once it writes the call's opening tag the rest of the call is a call
    to one of the tools: a strict tool's arguments follow its parameter schema (closed objects), another
    tool's are any JSON object. Text may follow a call, and with ``parallel`` not false another call."""
    functions = _functions(tools)
    if not any(f.get("strict") is True for f in functions.values()):
        return None
    body = _call_body(
        {name: f.get("parameters") if f.get("strict") is True else None for name, f in functions.items()}
    )
    calls = "call?" if parallel is False else "call*"
    return (
        "%llguidance {}\n"
        f"start: {calls} TAIL\n"
        'call_head[lazy]: TEXT "<tool_call>"\n'  # a lazy lexeme: text up to the first opening tag
        'call: call_head "\\n" body "\\n</tool_call>"\n'
        "TEXT: /(.|\\n)*/\n"
        "TAIL: /(.|\\n)*/ & ~/(.|\\n)*<tool_call>(.|\\n)*/\n"  # no opening tag outside a call
        f"body: %json {json.dumps(body)}\n"
    )


def _call_body(parameters: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one call's body ``{"name": ..., "arguments": {...}}`` to any of the tools named,
    each tool's arguments following its parameter schema (closed objects; None: any JSON object)."""
    schemas, definitions = _lift_definitions(
        {
            name: closed_objects(schema) if schema else {"type": "object"}
            for name, schema in parameters.items()
        }
    )
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": schemas[name]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name in parameters
    ]
    body = calls[0] if len(calls) == 1 else {"anyOf": calls}
    body = {**body, "x-guidance": JSON_OPTIONS}  # the same JSON style as response_format
    if definitions:
        body["$defs"] = definitions
    return body


def _lift_definitions(schemas: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each tool's parameter schema as ``arguments`` can hold it, and the definitions that go to the root.

    Nested under ``arguments`` in the call's schema, a parameter schema's local references (``#/$defs/X``
    as pydantic writes them, ``#`` in recursive schemas, ``#/properties/home`` as zod writes them) would
    point into the call's schema instead. A schema with any such reference therefore moves whole to the
    call's ``$defs`` as ``tool<i>`` (its own definitions inside it, where they were), every reference in
    it gains that prefix (``#/$defs/tool0/$defs/X``), and ``arguments`` refers to it: each reference still
    means what it did in the tool's own schema, as it does where vLLM compiles each tool's schema alone.
    A root ``$id`` goes (it would make ``#`` mean the moved schema's own root to a resolver).
    """
    lifted: dict[str, Any] = {}
    table: dict[str, Any] = {}
    for index, (tool, schema) in enumerate(schemas.items()):
        schema = dict(schema) if isinstance(schema, dict) else {"type": "object"}
        if next(_refs(schema), None) is None:
            lifted[tool] = schema
            continue
        schema.pop("$id", None)
        key = f"tool{index}"
        table[key] = _prefixed_refs(schema, f"#/$defs/{key}")
        lifted[tool] = {"$ref": f"#/$defs/{key}"}
    return lifted, table


DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # their values are data, not schemas


def _refs(node: Any, names: bool = False) -> Iterator[str]:
    """Every JSON-pointer ``$ref`` into the document (``#`` or ``#/...``) in a schema. ``names``: ``node``
    maps names to schemas (``properties``, ``$defs``): a key there is a name, never a keyword."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if not names and isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            yield ref
        for key, value in node.items():
            if names or key not in DATA_KEYWORDS:
                yield from _refs(value, not names and key in SCHEMA_MAPS and isinstance(value, dict))
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _prefixed_refs(node: Any, prefix: str, names: bool = False) -> Any:
    """``node`` with each JSON-pointer ``$ref`` into the document moved under ``prefix`` (``names``: as
    for :func:`_refs`)."""
    if isinstance(node, dict):
        out = {
            k: v if not names and k in DATA_KEYWORDS
            else _prefixed_refs(v, prefix, not names and k in SCHEMA_MAPS and isinstance(v, dict))
            for k, v in node.items()
        }  # fmt: skip
        ref = node.get("$ref")
        if not names and isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            out["$ref"] = prefix + ref[1:]
        return out
    if isinstance(node, list):
        return [_prefixed_refs(v, prefix) for v in node]
    return node


def check_finite(schema: Any, param: str) -> None:
    """Refuse a schema whose references never end (``{"$ref": "#"}`` as a required property, two
    definitions that require each other): no finite JSON value follows it, so a constrained reply could
    never be complete (OpenAI refuses such schemas too). Conservative: only what surely has no value."""
    if not isinstance(schema, dict) or next(_refs(schema), None) is None:
        return
    targets = {ref: _resolve(schema, ref) for ref in set(_refs(schema))}
    finite: set[str] = set()
    while True:  # the least fixpoint: a reference is finite once its target is with what is known so far
        grown = {
            ref for ref, node in targets.items() if node is not None and _has_value(node, finite, targets)
        }
        if grown == finite:
            break
        finite = grown
    if not _has_value(schema, finite, targets):
        raise ConstraintError(f"{param}: the schema has no finite value: its references require themselves "
                              "without end (give the recursion a way to stop, e.g. an optional property)", param)  # fmt: skip


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    """The node a JSON pointer ``#/a/b`` names in ``schema`` (None when there is none)."""
    from urllib.parse import unquote

    node: Any = schema
    for part in ref[2:].split("/") if ref != "#" else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _has_value(node: Any, finite: set[str], targets: dict[str, Any], inherited: list | None = None) -> bool:
    """Whether ``node`` surely has a finite value, given the references known to (``finite``).
    ``inherited``: the types an ``allOf``/``anyOf``/``oneOf`` member's parent allows (its own ``type``
    wins); None, any type (``required`` binds objects only, ``minItems`` arrays only: null ends them)."""
    if isinstance(node, bool) or not isinstance(node, dict):
        return node is not False
    ref = node.get("$ref")
    if (
        isinstance(ref, str) and targets.get(ref) is not None and ref not in finite
    ):  # (a missing one: llguidance's)
        return False
    own = node.get("type")
    types = [own] if isinstance(own, str) else own if isinstance(own, list) else inherited
    if any(not _has_value(sub, finite, targets, types) for sub in node.get("allOf") or []):
        return False
    for key in ("anyOf", "oneOf"):
        members = node.get(key)
        if (
            isinstance(members, list)
            and members
            and not any(_has_value(s, finite, targets, types) for s in members)
        ):
            return False
    if types is None or any(t not in ("object", "array") for t in types):
        return True
    return ("object" in types and _object_has_value(node, finite, targets)) or (
        "array" in types and _array_has_value(node, finite, targets)
    )


def _object_has_value(node: dict[str, Any], finite: set[str], targets: dict[str, Any]) -> bool:
    """Every required property can be given (one the properties do not list follows additionalProperties)."""
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    others = node.get("additionalProperties", True)
    return all(
        _has_value(properties.get(name, others), finite, targets)
        for name in node.get("required") or []
        if isinstance(name, str) and (name in properties or not node.get("patternProperties"))
    )


def _array_has_value(node: dict[str, Any], finite: set[str], targets: dict[str, Any]) -> bool:
    """The first ``minItems`` items can be given (``prefixItems``, then ``items``)."""
    prefix = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
    items = node.get("items", True)
    needed = node.get("minItems") or 0
    needed = needed if isinstance(needed, int) else 0
    firsts = [prefix[i] if i < len(prefix) else items for i in range(min(needed, len(prefix) + 1))]
    return all(_has_value(item, finite, targets) for item in firsts)


def blame_tool(tools: Sequence[dict[str, Any]] | None, error: ConstraintError) -> ConstraintError:
    """``error`` (a grammar over several tools that does not compile) naming the first tool whose own
    parameters schema cannot be used, when one is at fault on its own."""
    import llguidance

    for index, tool in enumerate(tools or []):
        name = ((tool or {}).get("function") or {}).get("name")
        if not isinstance(name, str):
            continue
        problem = llguidance.LLMatcher.validate_grammar(tool_call_grammar([tool], "required", False) or "")
        if problem:
            return ConstraintError(f"tools[{index}] ({name}): its parameters schema cannot be used for "
                                   f"constrained decoding: {problem}", f"tools[{index}].function.parameters")  # fmt: skip
    return error


def check_grammar(grammar: str, param: str) -> None:
    """Raise :class:`ConstraintError` naming ``param`` when ``grammar`` does not compile."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ConstraintError(f"{param}: the schema cannot be used for constrained decoding: {error}", param)


class Constraints:
    """Matchers for one tokenizer, and the masks they allow (built on first use: about 0.3 s)."""

    def __init__(self, tokenizer: Any, vocab_size: int, end_token_ids: Sequence[int]):
        self.tokenizer, self.vocab_size, self.end_token_ids = tokenizer, vocab_size, list(end_token_ids)
        self._lltokenizer: Any = None

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for ``grammar`` (raises :class:`ConstraintError` if it does not compile)."""
        import llguidance
        import llguidance.hf

        if self._lltokenizer is None:
            self._lltokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.vocab_size, eos_token=self.end_token_ids
            )
        matcher = llguidance.LLMatcher(self._lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"the constraint cannot be used: {matcher.get_error()}", "response_format")
        return matcher

    def allowed(self, matchers: Sequence[Any]) -> torch.Tensor:
        """``[B, V]`` bool: the tokens each matcher allows next (an end token where one allows nothing)."""
        import llguidance.torch as llt

        bitmask_BW = llt.allocate_token_bitmask(len(matchers), self.vocab_size)
        for row, matcher in enumerate(matchers):
            llt.fill_next_token_bitmask(matcher, bitmask_BW, row)
        bits_W32 = torch.arange(32, dtype=torch.int32)
        allowed_BV = ((bitmask_BW[:, :, None] >> bits_W32) & 1).bool().flatten(1)[:, : self.vocab_size]
        empty_B = ~allowed_BV.any(dim=1)
        if empty_B.any():  # a matcher in error (never expected): let the row end instead of sampling NaN
            allowed_BV[empty_B.nonzero().squeeze(1)[:, None], torch.tensor(self.end_token_ids)] = True
        return allowed_BV


__all__ = [
    "ConstraintError",
    "Constraints",
    "check_grammar",
    "blame_tool",
    "check_tools",
    "closed_objects",
    "job_response_grammar",
    "job_response_schema",
    "json_grammar",
    "request_grammar",
    "response_format_schema",
    "strict_call_grammar",
    "tool_call_grammar",
]
