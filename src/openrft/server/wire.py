"""The managed service's job objects on the wire (camelCase JSON) <-> openrft's configuration and records.

A create request's body is checked field by field (unknown or unsupported fields, wrong JSON
types, methods openrft does not implement, paths on this machine) and turned into the flat
``{field_name: value}`` that :func:`openrft.config.build_config` validates, exactly as for
``openrft rftj create``. :mod:`openrft.server.job_object` renders a stored job back in the service's shape.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft import config as C
from openrft.jobs.states import SERVER_FILE
from openrft.jobs.store import JobRecord
from openrft.server.errors import ApiError
from openrft.server.uploads import check_texts

# section -> {wire name: JobConfig field}
TRAINING = {
    "baseModel": "base_model",
    "warmStartFrom": "warm_start_from",
    "outputModel": "output_model",
    "epochs": "epochs",
    "learningRate": "learning_rate",
    "loraRank": "lora_rank",
    "batchSize": "batch_size",
    "batchSizeSamples": "batch_size_samples",
    "maxContextLength": "max_context_length",
    "gradientAccumulationSteps": "gradient_accumulation_steps",
    "learningRateWarmupSteps": "learning_rate_warmup_steps",
    "optimizerWeightDecay": "optimizer_weight_decay",
    "jinjaTemplate": "chat_template",
}
INFERENCE = {
    "maxOutputTokens": "max_output_tokens",
    "temperature": "temperature",
    "topP": "top_p",
    "topK": "top_k",
    "responseCandidatesCount": "response_candidates_count",
}
WANDB = {
    "enabled": "wandb",
    "project": "wandb_project",
    "entity": "wandb_entity",
    "apiKey": "wandb_api_key",
    "runId": "wandb_run_id",
}
TOP = {
    "chunkSize": "chunk_size",
    "maxConcurrentRollouts": "max_concurrent_rollouts",
    "maxConcurrentEvaluations": "max_concurrent_evaluations",
}
SECTIONS = {"trainingConfig": TRAINING, "inferenceParameters": INFERENCE, "wandbConfig": WANDB}
METHODS = {"METHOD_UNSPECIFIED": "grpo", "GRPO": "grpo", "DAPO": "dapo", "GSPO_TOKEN": "gspo-token"}
SPECIAL = ("dataset", "evaluator", "evaluationDataset", "evalAutoCarveout", "mcpServer", "nodeCount",
           "displayName", "lossConfig", "openrftOptions")  # fmt: skip
# openrft parameters the service's body has no field for, accepted under "openrftOptions" (flag names
# with underscores). Only plain numbers and switches: nothing here names a file, a command or a host.
OPTIONS = frozenset({
    "seed", "micro_batch_tokens", "checkpoint_every", "eval_every", "eval_candidates", "lora_alpha",
    "max_grad_norm", "length_norm", "dynamic_sampling", "max_sampling_rounds", "overlong_penalty",
    "overlong_buffer", "overlong_penalty_factor", "rollout_is_cap", "skip_bad_rows", "evaluator_timeout",
    "device", "dtype", "gradient_checkpointing", "deterministic", "compile",
})  # fmt: skip
# extraBody's keys (OpenAI's request fields) -> JobConfig fields; response_format is an object, kept as
# its JSON text (what --response-format takes inline), so it never names a file on this machine
EXTRA_BODY_KEYS = {"stop": "stop", "response_format": "response_format"}
# SERVER_FILE (jobs.states), in the job folder: how the server was asked for the job
RESOURCE_NAME = re.compile(r"accounts/[A-Za-z0-9_\-]+/[A-Za-z]+/(?!\.+$)[A-Za-z0-9_.\-]+")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# The service's names for the job fields it reports; anything else in a body is refused.
OUTPUT_ONLY = frozenset(
    {"name", "state", "status", "createTime", "completedTime", "jobProgress", "createdBy"}
)


@dataclass(frozen=True)
class WireContext:
    """What translating a body needs: the account in the URL, the store's folder, the path policy,
    and how to resolve dataset / evaluator resource names (from :mod:`openrft.server.resources_api`)."""

    account: str
    home: Path
    allow_local_paths: bool = False
    dataset_path: Callable[[str, str], str] | None = None
    evaluator_spec: Callable[[str, str], str] | None = None


@dataclass(frozen=True)
class Translated:
    """A body as openrft values: ``values`` for build_config, ``meta`` kept in the job's server.json."""

    values: dict[str, Any]
    meta: dict[str, Any]


def bad(path: str, message: str) -> ApiError:
    return ApiError(400, f"{path}: {message}")


# ----------------------------------------------------------------------------- body -> values


def body_to_values(body: Any, ctx: WireContext) -> Translated:
    """A create request's JSON body -> flat JobConfig values (``ApiError`` 400 naming the field)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object (a reinforcement fine-tuning job)")
    body = _wire_names(body)
    values: dict[str, Any] = {}
    meta: dict[str, Any] = {"account": ctx.account, "refs": {}}
    for key, value in body.items():
        if value is None:  # JSON null, as proto3's JSON reads it: the field is not set (its default)
            continue
        if key in SECTIONS:
            values.update(_section(key, value, SECTIONS[key]))
        elif key in TOP:
            values[TOP[key]] = _typed(key, value, TOP[key])
        elif key not in SPECIAL:
            raise _unknown(key)
    if body.get("lossConfig") is not None:
        values.update(_loss(body["lossConfig"]))
    if body.get("openrftOptions") is not None:
        values.update(_options(body["openrftOptions"]))
    _references(body, ctx, values, meta)
    _training_paths(values, ctx, meta)
    if (body.get("inferenceParameters") or {}).get("extraBody") is not None:
        values.update(_extra_body(body["inferenceParameters"]["extraBody"]))
    if body.get("evalAutoCarveout") is not None:
        carve = body["evalAutoCarveout"]
        if isinstance(carve, bool):
            if carve:
                values["eval_auto_carveout"] = 0.1
        elif isinstance(carve, int | float):
            values["eval_auto_carveout"] = carve  # openrft also takes the fraction itself
        else:
            raise bad("evalAutoCarveout", f"expected true or false, got {json.dumps(carve)}")
    if body.get("nodeCount") is not None:
        nodes = body["nodeCount"]
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes != 1:
            raise bad("nodeCount", f"{json.dumps(nodes)} is not supported: openrft trains on one node (1)")
    if body.get("displayName") is not None:
        meta["displayName"] = _string("displayName", body["displayName"])
        check_texts(meta)
    if body.get("mcpServer") is not None:
        values["mcp_server"] = _mcp_server(body["mcpServer"], ctx)
    return Translated(values, meta)


PROTO_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")
SECTION_NAMES = {  # each section's JSON field names
    "trainingConfig": {*TRAINING}, "inferenceParameters": {*INFERENCE, "extraBody"}, "wandbConfig": {*WANDB, "url"},
    "lossConfig": {"method", "klBeta"},
}  # fmt: skip


def _wire_names(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its fields' proto names (``loss_config.kl_beta``, which the service's messages use
    and its JSON reader takes) in their JSON spelling (``lossConfig.klBeta``); a field given both ways is
    a 400."""

    def camel(fields: dict[str, Any], where: str, known: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        spelt: dict[str, str] = {}
        for key, value in fields.items():
            head, *rest = key.split("_")
            proto = PROTO_NAME.fullmatch(key) is not None  # lora_rank; not _x, x_, x__y (refused as unknown)
            name = head + "".join(part[:1].upper() + part[1:] for part in rest) if proto else key
            name = name if name in known else key  # an unknown field is refused under the name it was sent as
            if name in out:
                raise bad(f"{where}{name}", f"given twice (as {spelt[name]} and as {key})")
            out[name], spelt[name] = value, key
        return out

    out = camel(body, "", {*TOP, *SECTIONS, *SPECIAL, *OUTPUT_ONLY})
    for section, known in SECTION_NAMES.items():
        if isinstance(out.get(section), dict):
            out[section] = camel(out[section], f"{section}.", known)
    return out


def _unknown(key: str) -> ApiError:
    if key in OUTPUT_ONLY:
        return bad(key, "is set by the server and cannot be given in a request")
    return bad(key, "unknown or unsupported field; openrft does not implement it")


def _section(name: str, value: Any, fields: dict[str, str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(name, f"expected an object, got {_kind(value)}")
    out = {}
    for key, item in value.items():
        if (name, key) in (("inferenceParameters", "extraBody"), ("wandbConfig", "url")) or item is None:
            continue  # extraBody is read on its own; url is the server's (a job object sent back holds it)
        if key not in fields:
            raise bad(f"{name}.{key}", "unknown or unsupported field; openrft does not implement it")
        out[fields[key]] = _typed(f"{name}.{key}", item, fields[key])
    return out


def _typed(path: str, value: Any, name: str) -> Any:
    """``value`` if its JSON type suits field ``name`` (numbers are never booleans or strings)."""
    annotation = str(C.field_info(name).annotation)
    if value is None:
        return value
    if annotation.startswith(("<class 'bool'>", "bool")):
        ok = isinstance(value, bool)
    elif annotation.startswith(("<class 'int'>", "int")):
        if isinstance(value, float) and value.is_integer():  # 2.0: JSON writers do not tell them apart
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation.startswith(("<class 'float'>", "float")):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise bad(path, f"expected {_expected(annotation)}, got {_kind(value)} {json.dumps(value)[:100]}")
    return value


def _expected(annotation: str) -> str:
    for word, text in (("bool", "true or false"), ("int", "a whole number"), ("float", "a number")):
        if word in annotation:
            return text
    return "a string"


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), "null")  # fmt: skip


def _string(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise bad(path, f"expected a string, got {_kind(value)} {json.dumps(value)[:100]}")
    return value


def _loss(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad("lossConfig", f"expected an object, got {_kind(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:  # not set: the default method, or the method's own KL default
            continue
        if key == "method":
            method = _string("lossConfig.method", item)
            name = method.strip().upper().replace("-", "_")  # the guide's spelling: grpo, dapo, gspo-token
            if name not in METHODS:  # the service's own DPO and ORPO are not implemented here
                what = "is not implemented by openrft" if name in ("DPO", "ORPO") else "is not a loss method"
                raise bad(
                    "lossConfig.method", f"{method or repr(method)} {what}; use GRPO, DAPO or GSPO_TOKEN"
                )
            out["rl_loss_method"] = METHODS[name]
        elif key == "klBeta":
            out["rl_kl_beta"] = _typed("lossConfig.klBeta", item, "rl_kl_beta")
        else:
            raise bad(f"lossConfig.{key}", "unknown or unsupported field; openrft does not implement it")
    return out


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad("openrftOptions", f"expected an object, got {_kind(value)}")
    out, spelt = {}, {}
    for key, item in value.items():
        name = C.normalise_key(key)
        if name not in OPTIONS:
            raise bad(f"openrftOptions.{key}", "not a parameter a request may set")
        if name in spelt:
            raise bad(f"openrftOptions.{key}", f"given twice (as {spelt[name]} and as {key})")
        spelt[name] = key
        if item is not None:
            out[name] = _typed(f"openrftOptions.{key}", item, name)
    return out


def _extra_body(value: Any) -> dict[str, Any]:
    text = _string("inferenceParameters.extraBody", value)
    try:
        extra = json.loads(text) if text.strip() else {}
    except ValueError:
        raise bad("inferenceParameters.extraBody", "is not valid JSON") from None
    if not isinstance(extra, dict):
        raise bad("inferenceParameters.extraBody", "must hold a JSON object")
    for key in extra:
        if key not in EXTRA_BODY_KEYS:
            raise bad(f"inferenceParameters.extraBody.{key}", "unsupported; openrft accepts 'stop' and "
                      "'response_format'")  # fmt: skip
    if "response_format" in extra:
        if not isinstance(extra["response_format"], dict):
            raise bad("inferenceParameters.extraBody.response_format", "expected an object, as OpenAI's "
                      'response_format: {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}} '
                      'or {"type": "json_object"}')  # fmt: skip
        extra["response_format"] = json.dumps(extra["response_format"])
    return {EXTRA_BODY_KEYS[k]: v for k, v in extra.items()}


def is_local_path(value: str) -> bool:
    """Whether ``value`` names a file or folder on this machine rather than a model or resource name."""
    if RESOURCE_NAME.fullmatch(value):
        return False
    if value.startswith(("/", ".", "~", "\\")) or "::" in value or value.count("/") > 1:
        return True
    return bool(value) and Path(value).expanduser().exists()


def _references(body: dict[str, Any], ctx: WireContext, values: dict[str, Any], meta: dict) -> None:
    """``dataset``, ``evaluator`` and ``evaluationDataset``: resource names or built-ins -> openrft values."""
    if "dataset" not in body or body["dataset"] in (None, ""):
        raise bad("dataset", "is required: a dataset name (accounts/ACCOUNT/datasets/ID) or a built-in task")
    for key, field_name, kind in (
        ("dataset", "dataset", "dataset"),
        ("evaluationDataset", "evaluation_dataset", "dataset"),
        ("evaluator", "evaluator", "evaluator"),
    ):
        if key in body and body[key] not in (None, ""):
            ref = _string(key, body[key])
            values[field_name] = resolve_reference(key, ref, kind, ctx)
            if (
                ID_ONLY.fullmatch(ref) and values[field_name] != ref
            ):  # an uploaded one's bare id: its full name
                ref = f"accounts/{ctx.account}/{kind}s/{ref}"
            meta["refs"][key] = ref


ID_ONLY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def resolve_reference(key: str, ref: str, kind: str, ctx: WireContext) -> str:
    """A dataset or evaluator as a request names it -> what JobConfig accepts, or a 400."""
    from openrft.data import is_builtin
    from openrft.evaluators.builtin import BUILTINS

    builtin = is_builtin(ref) if kind == "dataset" else ref.partition(":")[0] in BUILTINS
    if builtin or (kind == "evaluator" and ref.lstrip().startswith("{")):  # or an inline grader spec
        return ref
    if ctx.allow_local_paths and is_local_path(ref):
        return ref
    resolve = ctx.dataset_path if kind == "dataset" else ctx.evaluator_spec
    if is_local_path(ref):
        raise bad(key, f"{ref} is a path on the server; name a registered {kind} or a built-in")
    if resolve is not None:  # an uploaded resource (accounts/A/datasets/ID, or its bare ID)
        try:
            return resolve(ctx.account, ref)
        except ApiError as exc:  # the status stays: 404 for an unknown one, a precondition for one not ready
            message = f"{key}: {exc.message.removeprefix(f'{kind}: ')}"
            raise ApiError(exc.status_code, message, exc.grpc_status) from None
    raise bad(key, f"unknown {kind} {ref!r}; name a registered {kind} (accounts/ACCOUNT/{kind}s/ID) "
                   "or a built-in")  # fmt: skip


def _training_paths(values: dict[str, Any], ctx: WireContext, meta: dict) -> None:
    """baseModel / warmStartFrom may name a server path only when allowed; outputModel is a model name.

    A model is named ``NAME`` or ``accounts/ACCOUNT/models/NAME``; a job's trained model is its
    ``outputModel``, the job id when none was given. warmStartFrom may name one of those (or
    ``accounts/ACCOUNT/reinforcementFineTuningJobs/ID``); outputModel must name a model not yet taken.
    """
    for key, name in (("baseModel", "base_model"), ("warmStartFrom", "warm_start_from")):
        value = values.get(name)
        named = value and (
            RESOURCE_NAME.fullmatch(value) or (MODEL_NAME.fullmatch(value) and not is_local_path(value))
        )
        if key == "warmStartFrom" and named:
            meta["refs"]["warmStartFrom"] = value
            values[name] = warm_start_adapter(value, ctx)
            continue
        if value and is_local_path(value) and not ctx.allow_local_paths:
            raise bad(f"trainingConfig.{key}", f"{value} is a path on the server, which this server does "
                      "not accept (start it with --allow-local-paths)")  # fmt: skip
    template = values.get("chat_template")
    if template and not C.is_template_text(template) and not ctx.allow_local_paths:
        raise bad("trainingConfig.jinjaTemplate", "must be the template text itself, not a file name")
    output = values.get("output_model")
    if output:
        if ctx.allow_local_paths and is_local_path(output):
            meta["refs"]["outputModel"] = output
            return
        output = re.sub(r"^accounts/[A-Za-z0-9_\-]+/models/", "", output)  # the server's, whoever names it
        if not MODEL_NAME.fullmatch(output):
            raise bad("trainingConfig.outputModel", f"{values['output_model']!r} is not a model name (letters, "
                      f"digits, '.', '-', '_', or accounts/{ctx.account}/models/NAME)")  # fmt: skip
        if model_folder(output, ctx) is not None:
            raise ApiError(409, f"trainingConfig.outputModel: model {output!r} already exists on this server; "
                           "choose another name")  # fmt: skip
        meta["refs"]["outputModel"] = output
        values["output_model"] = str(ctx.home / "models" / output)


def model_folder(name: str, ctx: WireContext, account: str | None = None) -> Path | None:
    """The folder of model ``name`` on this server (trained, or being trained), or None: an outputModel
    folder under ``home/models``, or the output of the job whose id it is when that job named none
    (with ``account``: only a job that account sees, as the models API shows it)."""
    from openrft.jobs.store import JobStore

    folder = ctx.home / "models" / name
    if folder.exists():
        return folder
    store = JobStore(ctx.home)
    for record in store.list():
        refs = read_meta(record).get("refs", {})
        finished = record.state.value in ("COMPLETED", "EARLY_STOPPED")  # (its model deleted since: free)
        if refs.get("outputModel") == name and not finished:  # claimed by a job that may still write it
            return folder
        if record.id == name and "outputModel" not in refs:
            if account is not None and read_meta(record).get("account") not in (None, account):
                return None  # another account's job: its model is not seen under this one
            return Path(record.output_dir or record.job_dir / "output")
    return None


def warm_start_adapter(ref: str, ctx: WireContext) -> str:
    """``NAME`` or ``accounts/A/models/NAME`` (a model of this server) or
    ``accounts/A/reinforcementFineTuningJobs/ID`` (that job's trained adapter) -> the adapter's folder."""
    # a named model is the server's whichever account names it; a job (and the model named by its id)
    # is seen under its own account, the one the name gives (NAME alone: the caller's)
    named = re.fullmatch(r"accounts/([^/]+)/(models|reinforcementFineTuningJobs)/([^/]+)", ref)
    account, kind, name = named.groups() if named else (ctx.account, "models", ref)
    folder: Path | None = None
    if kind == "models" and MODEL_NAME.fullmatch(name):
        folder = model_folder(name, ctx, account)
    elif kind == "reinforcementFineTuningJobs" and MODEL_NAME.fullmatch(name):
        from openrft.jobs.store import JobStore

        store = JobStore(ctx.home)
        record = store.get(name) if store.exists(name) else None
        seen = record is not None and read_meta(record).get("account") in (None, account)
        folder = record.output_dir if seen else None
    if folder is None or not (Path(folder) / "adapter_config.json").is_file():
        raise bad("trainingConfig.warmStartFrom", f"{ref!r} is not a trained adapter on this server; name "
                  f"a model (NAME or accounts/{ctx.account}/models/NAME) or a job "
                  f"(accounts/{ctx.account}/reinforcementFineTuningJobs/ID)")  # fmt: skip
    return str(folder)


def _mcp_server(value: Any, ctx: WireContext) -> list[str]:
    """``mcpServer``: one server (text) or several (a list of texts)."""
    servers = value if isinstance(value, list) else [value]
    texts = [_string("mcpServer", server) for server in servers]
    if not all(t.startswith(("http://", "https://")) for t in texts) and not ctx.allow_local_paths:
        raise bad("mcpServer", "must be an http(s) URL; a command line runs only with --allow-local-paths")
    return texts


def error_path(name: str) -> str | None:
    """The request field a refusal of JobConfig field ``name`` names: :func:`wire_path`, down to the key of
    ``extraBody``'s JSON that holds it (``stop``)."""
    path = wire_path(name)
    return f"{path}.stop" if name == "stop" and path else path


def wire_path(name: str) -> str | None:
    """The request field that sets JobConfig field ``name`` (None when the body has none)."""
    for section, fields in SECTIONS.items():
        for wire, field_name in fields.items():
            if field_name == name:
                return f"{section}.{wire}"
    special = {"job_id": "reinforcementFineTuningJobId", "dataset": "dataset", "evaluator": "evaluator", "evaluation_dataset": "evaluationDataset",
               "eval_auto_carveout": "evalAutoCarveout", "mcp_server": "mcpServer", "stop": "inferenceParameters.extraBody",
               "response_format": "inferenceParameters.extraBody.response_format",
               "rl_loss_method": "lossConfig.method", "rl_kl_beta": "lossConfig.klBeta"}  # fmt: skip
    top = {field_name: wire for wire, field_name in TOP.items()}
    if name in special or name in top:
        return special.get(name) or top[name]
    return f"openrftOptions.{name}" if name in OPTIONS else None


def build(values: dict[str, Any]) -> C.JobConfig:
    """Validate like ``openrft rftj create``; a refusal is a 400 with the same message, its flags
    renamed to the request's fields (cross-field messages, such as the klBeta one, stay word for word)."""
    try:
        return C.build_config({}, values)[0]
    except C.ConfigError as exc:
        raise ApiError(400, rename_flags(exc.message)) from None


def rename_flags(message: str) -> str:
    """A message from openrft's checks with each leading ``--flag`` (``--flag: ...`` or ``--flag VALUE:
    ...``) replaced by the request field that sets it, and a flag named later in a line (a hint's) by
    that field in quotes."""
    lines = []
    for line in message.splitlines():
        match = re.match(r"^(--[a-z0-9-]+)((?: / --[a-z0-9-]+)*)( [^\s:]+)?: ", line)
        path = error_path(match.group(1)[2:].replace("-", "_")) if match else None
        if match and path:
            line = f"{path}{match.group(3) or ''}: {line[match.end() :]}"
        lines.append(re.sub(r"(?<![\w-])--([a-z0-9-]+)", _field_in_text, line))
    return "\n".join(lines)


def _field_in_text(match: re.Match[str]) -> str:
    path = error_path(match.group(1).replace("-", "_"))
    return f"'{path}'" if path else match.group(0)


def public_message(message: str, cfg: Any, refs: dict[str, str]) -> str:
    """An error message for an API client: flags renamed (:func:`rename_flags`), and the server's own
    paths of the request's datasets and evaluator shown as the names the request gave them."""
    flat = cfg.flat()
    for key, field in (("dataset", "dataset"), ("evaluation_dataset", "evaluationDataset"),
                       ("evaluator", "evaluator")):  # fmt: skip
        resolved, named = str(flat.get(key) or ""), refs.get(field)
        if named and resolved and resolved != named:
            message = message.replace(resolved.partition("::")[0], named)
    return rename_flags(message)


# ----------------------------------------------------------------------------- record -> job object


def read_meta(record: JobRecord) -> dict[str, Any]:
    path = record.job_dir / SERVER_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def write_meta(job_dir: Path, meta: dict[str, Any]) -> None:
    tmp = job_dir / f".{SERVER_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(job_dir / SERVER_FILE)


__all__ = [
    "WireContext",
    "Translated",
    "body_to_values",
    "resolve_reference",
    "is_local_path",
    "read_meta",
    "write_meta",
    "build",
    "wire_path",
    "SERVER_FILE",
]
