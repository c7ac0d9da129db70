"""The create-job form: its fields (named as the ``openrft rftj create`` flags) and their checking.

Values are validated by :func:`openrft.config.build_config` exactly as the command line passes
them (as text), so a wrong value gets the command line's own message, and each message is placed
next to the field it names. The dataset and evaluator are never taken as paths on the server: they
name an uploaded resource (``accounts/{account}/datasets/{id}``) or a built-in task, resolved by the
server's resources API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.config import FIELD_GROUP, build_config, field_info, normalise_key
from openrft.errors import ConfigError, DataError, EvaluatorError, ModelError
from openrft.rollout import DEFAULT_MAX_CONCURRENT
from openrft.server import wire
from openrft.server.errors import ApiError


@dataclass(frozen=True)
class FormField:
    name: str  # the config field
    flag: str  # as the command line spells it
    kind: str = "text"  # text | select
    choices: tuple[str, ...] = ()
    placeholder: str = ""

    @property
    def help(self) -> str:
        info = field_info(self.name)
        valid = (info.json_schema_extra or {}).get("valid")
        text = first_sentence(info.description or "")
        return f"{text} Valid: {valid}." if valid else text

    @property
    def default(self) -> str:
        value = field_info(self.name).default
        return "" if value is None else str(value)


ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf)\.$")  # a full stop that ends no sentence


def first_sentence(text: str) -> str:
    """The first sentence of a field's description (its ``--help`` text), ended with a full stop; an
    abbreviation such as "e.g." does not end it."""
    end = 0
    while (stop := text.find(". ", end)) != -1:
        if not ABBREVIATIONS.search(text[: stop + 1]):
            return text[:stop] + "."
        end = stop + 2
    return text.rstrip(".") + "."


FIELDS = (
    FormField("job_id", "--job-id", placeholder="generated"),
    FormField("base_model", "--base-model"),
    FormField("dataset", "--dataset", placeholder="accounts/ACCOUNT/datasets/ID, or arithmetic"),
    FormField("evaluator", "--evaluator", placeholder="accounts/ACCOUNT/evaluators/ID, or built-in"),
    FormField("rl_loss_method", "--rl-loss-method", "select", ("grpo", "dapo", "gspo-token")),
    FormField("rl_kl_beta", "--rl-kl-beta"),
    FormField("learning_rate", "--learning-rate"),
    FormField("lora_rank", "--lora-rank"),
    FormField("epochs", "--epochs"),
    FormField("response_candidates_count", "--n"),
    FormField("max_output_tokens", "--max-output-tokens"),
    FormField("temperature", "--temperature"),
    FormField("top_p", "--top-p"),
    FormField("top_k", "--top-k"),
    FormField("batch_size", "--batch-size"),
    FormField("chunk_size", "--chunk-size"),
    FormField(
        "max_concurrent_rollouts",
        "--max-concurrent-rollouts",
        placeholder=f"the evaluator's, else {DEFAULT_MAX_CONCURRENT}",
    ),  # fmt: skip
)
BY_NAME = {f.name: f for f in FIELDS}
FLAG_PATTERN = re.compile(r"--[a-z][a-z-]*")


@dataclass
class FormResult:
    """What the form was given and what is wrong with it (``errors`` by field, ``general`` otherwise)."""

    values: dict[str, str]
    errors: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    config: Any = None
    meta: dict[str, Any] = field(default_factory=dict)  # the references as given, for the job API

    @property
    def ok(self) -> bool:
        return not self.errors and not self.general

    def add(self, message: str, name: str | None = None) -> None:
        """File ``message`` under ``name`` or, failing that, under the first form field it mentions."""
        name = name if name in BY_NAME else field_named_in(message)
        if name is None:
            self.general.append(message)
        else:
            self.errors.setdefault(name, []).append(message)


def field_named_in(message: str) -> str | None:
    """The first form field whose flag (or alias) the message names."""
    for flag in FLAG_PATTERN.findall(message):
        name = normalise_key(flag)
        if name in BY_NAME:
            return name
    return None


def read_form(form: dict[str, Any]) -> dict[str, str]:
    """The form's non-empty values by config field (inputs are named as the flags, without dashes)."""
    values = {}
    for key, value in form.items():
        name = normalise_key(str(key))
        text = str(value).strip()
        if name in BY_NAME and text:
            values[name] = text
    return values


def validate(form: dict[str, Any], policy: Policy) -> FormResult:
    """Check the form as ``openrft rftj create`` checks its flags; ``result.config`` is set when it passes.

    The dataset and evaluator go through the job API's own resolution (uploaded resources of the
    account they name, or built-ins); a path on the server passes only where ``policy`` allows it.
    """
    result = FormResult(read_form(form))
    flags: dict[str, Any] = dict(result.values)
    account = account_of(flags)
    result.meta = {"account": account, "refs": {}}
    context = policy.context(account)
    for name in ("dataset", "evaluator"):
        if name in flags:
            result.meta["refs"][name] = flags[name]
            try:
                flags[name] = wire.resolve_reference(name, flags[name], name, context)
            except ApiError as exc:  # "dataset: ..." -> "--dataset: ...", as the command line words it
                result.add(re.sub(rf"^{name}: ", f"--{name}: ", _message(exc)), name)
    base = flags.get("base_model", "")
    if base and wire.is_local_path(base) and not policy.allow_local_paths:
        result.add(
            f"--base-model: {base} is a path on the server, which this server does not accept "
            "(start it with --allow-local-paths)",
            "base_model",
        )
    if not result.ok:
        return result
    try:
        result.config, _ = build_config({}, {k: v for k, v in flags.items() if k in FIELD_GROUP})
    except ConfigError as exc:
        for line in str(exc).splitlines():
            result.add(line)
    return result


def submission_error(result: FormResult, exc: Exception) -> None:
    """File an error raised while submitting the job next to the field it concerns."""
    name = None
    if isinstance(exc, ConfigError):
        name = exc.field
    elif isinstance(exc, DataError):
        name = "dataset"
    elif isinstance(exc, EvaluatorError):
        name = "evaluator"
    elif isinstance(exc, ModelError):
        name = "base_model"
    elif isinstance(exc, ApiError) and exc.status_code == 409:  # the id is taken
        name = "job_id"
    for line in _message(exc).splitlines():
        result.add(line, name)


def _message(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    text = str(exc)
    hint = getattr(exc, "hint", None)
    return f"{text} ({hint})" if hint else text


# ----------------------------------------------------------------------------- resources

DEFAULT_ACCOUNT = "local"
ACCOUNT_PATTERN = re.compile(r"accounts/([^/]+)/")


@dataclass(frozen=True)
class Policy:
    """What the server lets a form name: its job store's folder, and whether paths on it are allowed."""

    home: Path
    allow_local_paths: bool = False

    def context(self, account: str) -> wire.WireContext:
        from openrft.server import resources_api

        return wire.WireContext(
            account=account,
            home=self.home,
            allow_local_paths=self.allow_local_paths,
            dataset_path=resources_api.dataset_path,
            evaluator_spec=resources_api.evaluator_spec,
        )


def account_of(values: dict[str, str]) -> str:
    """The account whose uploads the job uses: the one its dataset or evaluator names, else ``local``."""
    for name in ("dataset", "evaluator"):
        match = ACCOUNT_PATTERN.match(values.get(name, ""))
        if match:
            return match.group(1)
    return DEFAULT_ACCOUNT


__all__ = [
    "Policy",
    "account_of",
    "FIELDS",
    "FormField",
    "FormResult",
    "field_named_in",
    "read_form",
    "submission_error",
    "validate",
]
