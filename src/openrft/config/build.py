"""Building a job's configuration: flags and job files merged, validated, explained; tuning advice.

Values come from defaults < a job file (``--config``) < flags; :func:`build_config` validates
them into a :class:`~openrft.config.models.JobConfig` and turns pydantic's errors into one line
per rejected value, naming the flag, the value given and what is accepted.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from openrft.config.models import FIELD_GROUP, GROUPS, KL_BETA_ERRORS, JobConfig, flatten
from openrft.errors import ConfigError


def config_defaults() -> dict[str, Any]:
    """Every parameter's default in this openrft version, JSON-ready and flat, as stored configs hold
    them (to fill what a job from an older openrft lacks)."""
    return flatten(JobConfig().model_dump(mode="json"))


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def field_info(name: str):
    return GROUPS[FIELD_GROUP[name]].model_fields[name]


def normalise_key(key: str) -> str:
    """Job-file and flag keys: 'learning-rate', '--learning-rate' and 'learning_rate' are the same."""
    key = key.strip().lstrip("-").replace("-", "_")
    return {"n": "response_candidates_count"}.get(key, key)


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a .yaml/.yml/.json job file into {field_name: value}; sections named after groups are flattened."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such job file: {path}", field="config")
    try:
        text = path.read_text()
        raw = (
            json.loads(text, object_pairs_hook=_no_duplicates) if path.suffix == ".json" else _load_yaml(text)
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config: cannot parse {path}: {first}", field="config") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"--config: {path} must hold a mapping of parameter names to values", field="config"
        )
    _refuse_foreign_job(raw, path)
    flat: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    pairs = [
        (str(k), v)
        for key, value in raw.items()
        for k, v in (value.items() if key in GROUPS and isinstance(value, dict) else [(key, value)])
    ]
    for written, value in pairs:
        key = normalise_key(written)
        if key in spelled:  # e.g. "n" and "response_candidates_count": one would silently win
            raise ConfigError(
                f"--config: '{spelled[key]}' and '{written}' in {path} set the same parameter; keep one",
                field=key,
            )
        spelled[key] = written
        if isinstance(value, str) and not value.strip() and key != "stop":  # as on the command line
            raise ConfigError(f"--config: '{written}' in {path} is empty; give a value or leave the key out",
                              field=key)  # fmt: skip
        if value is not None:  # null: unset, the parameter keeps its default
            flat[key] = value
    for key in spelled:
        if key not in FIELD_GROUP:
            close = difflib.get_close_matches(key, list(FIELD_GROUP), n=1)
            hint = f" (did you mean {flag_name(close[0])[2:]}?)" if close else ""
            raise ConfigError(
                f"--config: unknown parameter '{key.replace('_', '-')}' in {path}{hint}", field=key
            )
    return flat


def _refuse_foreign_job(raw: dict[str, Any], path: Path) -> None:
    """An OpenAI fine-tuning job body (``fine_tuning.jobs.create``'s) says what to give openrft instead."""
    method = raw.get("method")
    if "training_file" in raw and isinstance(method, dict):
        settings = method.get("reinforcement")
        grader = settings.get("grader") if isinstance(settings, dict) else None
        raise ConfigError(
            f"--config: {path} is an OpenAI fine-tuning job body, not an openrft job file (parameters named "
            "as the flags)",
            field="config",
            hint="give the training file as --dataset FILE.jsonl (validation_file: --evaluation-dataset), "
            + (
                "the grader (method.reinforcement.grader, saved as grader.json) as --evaluator grader.json, "
                if grader is not None
                else ""
            )
            + "n_epochs as --epochs, and a local model as --base-model",
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (the second would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"the key {twice[0]!r} is given twice")
    return dict(pairs)


def build_config(
    file_values: dict[str, Any] | None = None, flag_values: dict[str, Any] | None = None
) -> tuple[JobConfig, dict[str, str]]:
    """Merge defaults < job file < flags, validate, and report where each value came from.

    Returns the config and ``{field_name: "default" | "config file" | "flag"}``.
    Raises :class:`ConfigError` with one line per rejected value.
    """
    file_values, flag_values = dict(file_values or {}), dict(flag_values or {})
    merged = {**file_values, **flag_values}
    sources = {
        name: "flag" if name in flag_values else "config file" if name in file_values else "default"
        for name in FIELD_GROUP
    }
    nested: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for name, value in merged.items():
        if name not in FIELD_GROUP:
            raise ConfigError(f"unknown parameter {flag_name(name)}", field=name)
        nested[FIELD_GROUP[name]][name] = value
    try:
        return JobConfig(**nested), sources
    except ValidationError as exc:
        message = _explain(exc, merged)
        kl = next(
            (m for m, e in KL_BETA_ERRORS.items() if e in message), None
        )  # the reference's words, and the flag
        hint = (
            f"leave --rl-kl-beta out (or 0) with --rl-loss-method {kl}: only grpo takes a KL penalty"
            if kl
            else None
        )
        raise ConfigError(message, field=_first_field(exc), hint=hint) from None


def _first_field(exc: ValidationError) -> str | None:
    for err in exc.errors():
        if len(err["loc"]) >= 2:
            return str(err["loc"][1])
    return None


def _explain(exc: ValidationError, given: dict[str, Any]) -> str:
    """One line per pydantic error: the flag, the value given and what is accepted."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        name = loc[1] if len(loc) >= 2 and loc[1] in FIELD_GROUP else None
        if err["type"] == "value_error" and name is None:  # a cross-field rule: its message is the line
            lines.append(str(err["ctx"]["error"]))
            continue
        if name is None:
            lines.append(err["msg"])
            continue
        extra = field_info(name).json_schema_extra or {}
        flags = " / ".join([flag_name(name), *extra.get("flags", [])])
        if err["type"] == "value_error" and not extra.get("valid"):  # a field whose check says what is wrong
            lines.append(f"{flags}: {err['ctx']['error']}")
            continue
        valid = extra.get("valid") or _type_words(field_info(name).annotation)
        value = given.get(name, err.get("input"))
        if isinstance(value, list | tuple):  # a repeated flag: its values as typed, not a Python list
            items = ", ".join(
                json.dumps(v, ensure_ascii=False) if isinstance(v, str) else str(v) for v in value
            )
            lines.append(f"{flags}: {len(value)} values ({items}) are not valid; expected {valid}")
            continue
        shown = value if isinstance(value, str) and value.strip() else repr(value)
        lines.append(f"{flags}: {shown} is not valid; expected {valid}")
    return "\n".join(dict.fromkeys(lines))


def _type_words(annotation: Any) -> str:
    return {bool: "true or false", str: "a string"}.get(annotation, "a value of the right type")


# ----------------------------------------------------------------------------- advice


def advise(cfg: JobConfig) -> list[str]:
    """Warnings from the reference's tuning guidance; they never block a job."""
    t, r = cfg.training, cfg.rollout
    notes = []
    if not 0.5e-4 <= t.learning_rate <= 2e-4:
        notes.append(
            f"--learning-rate {t.learning_rate:g} is more than 2x away from the default 1e-4; "
            "large changes often make training unstable or slow"
        )
    if r.temperature <= 0.1:
        notes.append(
            f"--temperature {r.temperature:g} is near-greedy: candidates barely differ, which risks mode collapse "
            "and zero-variance groups"
        )
    if r.top_k > 50:
        notes.append(f"--top-k {r.top_k} is above 50, which slows sampling for little gain")
    if r.response_candidates_count > 32:
        notes.append(
            f"--response-candidates-count {r.response_candidates_count} is above 32: expect memory pressure "
            "in rollouts and training"
        )
    if t.lora_rank == 32:
        notes.append(
            "--lora-rank 32 needs noticeably more memory and compute and is more prone to overfitting"
        )
    if t.epochs > 1:
        notes.append(
            f"--epochs {t.epochs}: more than one pass over the prompts risks overfitting; watch eval reward"
        )
    w = cfg.wandb
    unused = [flag_name(n) for n in ("wandb_project", "wandb_entity", "wandb_api_key", "wandb_run_id")
              if getattr(w, n) is not None]  # fmt: skip
    if unused and not w.wandb:
        notes.append(f"{', '.join(unused)} given without --wandb: nothing is logged to W&B")
    return notes
