"""Sub-commands ``openrft evaluate`` (score given responses, no model) and ``openrft data`` (write datasets).

The responses format is in :data:`EVALUATE_HELP`.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

RESPONSE_KEYS = ("response", "text", "completion")
EVALUATE_HELP = """\
Score responses with an evaluator, without a model: check an evaluator before training.

The responses file (--responses) is JSONL, one response a line:

    {"prompt_id": "12", "response": "... <answer>42</answer>"}

prompt_id is the prompt's id in the dataset: the row's own "id" (or
input_metadata.row_id) when it has one, else its line number in the dataset file
("1" for the first line). "text" or "completion" may stand for "response".
Several responses for one prompt form one group (what a groupwise evaluator
receives). Without --responses, each dataset row that ends with an assistant
message is scored with that message as the response.

Prints one line per response (score, validity, reason) and a summary; exits with
code 4 when more than half of the scores are invalid, as a training job would, and with code 2 when the
evaluator cannot load, the rows lack what it reads, or a dataset or responses file is malformed, as job
creation does.
"""


def field_help(name: str, default: Any = None) -> str:
    """A job parameter's ``--help`` text (its field description, accepted values and default), for the
    commands that take the same flag."""
    from openrft import config as C

    info = C.field_info(name)
    extra = info.json_schema_extra or {}
    text = info.description or ""
    if extra.get("valid"):
        text += f" Valid: {extra['valid']}."
    shown = default if default is not None else info.default
    if shown is None or shown == ():  # as rftj create says it, not Python's None or ()
        shown = "none" if shown == () else "unset"
    if "default" not in (info.description or "").lower():  # else the description says it
        text += f" Default: {shown}."
    return text.replace("%", "%%")


def check_job_flags(args: argparse.Namespace, *names: str) -> None:
    """Flags that are job parameters too, refused as job creation refuses them (ConfigError)."""
    from openrft import config as C

    C.build_config({}, {name: getattr(args, name) for name in names if getattr(args, name, None) is not None})


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not valid; expected a port from 0 to 65535")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not valid; expected a whole number >= 1")
    return value


def seed_value(text: str) -> int:
    """An argparse type: a seed, in the range a job's ``--seed`` takes."""
    from openrft.config.models import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"{value} is not valid; expected a whole number from 0 to {SEED_MAX}"
        )
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not valid; expected a finite number of seconds > 0")
    return value


def register(subparsers: Any, rftj_subparsers: Any = None) -> None:
    """Add ``evaluate`` and ``data`` to the top-level command parser."""
    ev = subparsers.add_parser(
        "evaluate",
        help="Score given responses with an evaluator (no model): check an evaluator before training.",
        description=EVALUATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "--dataset",
        metavar="FILE",
        help="Prompt JSONL or a built-in task (default: the evaluator's input_dataset).",
    )
    ev.add_argument(
        "--evaluator",
        metavar="SPEC",
        help="path/to/file.py::function, module:function, a built-in (arithmetic, gsm8k, math, code), or an OpenAI "
        "grader spec (grader.json, grader.yaml or inline JSON).",
    )
    ev.add_argument("--grader-endpoint", metavar="URL", help=field_help("grader_endpoint"))
    ev.add_argument("--grader-model", metavar="NAME", help=field_help("grader_model"))
    ev.add_argument("--responses", metavar="FILE", help="Responses JSONL (see above).")
    ev.add_argument(
        "--timeout", "--evaluator-timeout", dest="timeout", type=positive_seconds, default=60.0, metavar="S",
        help="Seconds per evaluator call, as a job's --evaluator-timeout (default 60).",
    )  # fmt: skip
    ev.add_argument(
        "--max-concurrency", "--max-concurrent-evaluations", dest="max_concurrency", type=positive_int,
        metavar="N", help="Parallel evaluator calls, as a job's --max-concurrent-evaluations (default: the header's).",
    )  # fmt: skip
    ev.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="Skip (and count) malformed dataset rows and malformed lines of the responses file.",
    )
    ev.add_argument("--reference-field", metavar="NAME", help=field_help("reference_field"))
    ev.add_argument("--output", metavar="FILE", help="Also write one JSON line per score to FILE.")
    ev.add_argument("--quiet", action="store_true", help="Print only the summary.")
    ev.set_defaults(handler=cmd_evaluate)

    data = subparsers.add_parser("data", help="Write built-in task datasets as JSONL.")
    tasks = data.add_subparsers(dest="data_task", metavar="TASK")
    tasks.required = True
    ar = tasks.add_parser("arithmetic", help="Generated arithmetic problems (answers in <answer> tags).")
    ar.add_argument("--out", metavar="FILE", required=True, help="Output JSONL path.")
    ar.add_argument("--count", type=positive_int, default=500, help="Number of problems (default 500).")
    ar.add_argument("--seed", type=seed_value, default=0, help="Generator seed (default 0).")
    ar.add_argument("--digits", type=int, default=1, help="Digits per operand (default 1).")
    ar.add_argument("--ops", default="+", help="Operations to draw from, e.g. '+-*' (default '+').")
    ar.add_argument(
        "--few-shot", type=int, default=0, help="Worked example exchanges before each question (default 0)."
    )
    ar.set_defaults(handler=cmd_data_arithmetic)
    gs = tasks.add_parser("gsm8k", help="Convert a GSM8K {question, answer} JSONL into evaluation rows.")
    gs.add_argument("--input", metavar="FILE", required=True, help="GSM8K JSONL file.")
    gs.add_argument("--out", metavar="FILE", required=True, help="Output JSONL path.")
    gs.add_argument("--limit", type=positive_int, help="Keep only the first N rows.")
    gs.add_argument("--skip-bad-rows", action="store_true", help="Skip (and count) malformed rows.")
    gs.set_defaults(handler=cmd_data_gsm8k)


# ----------------------------------------------------------------------------- data


def cmd_data_arithmetic(args: argparse.Namespace) -> int:
    from openrft.data import write_jsonl
    from openrft.data.tasks.arithmetic import ArithmeticTask, generate_rows
    from openrft.errors import ConfigError, DataError

    try:
        task = ArithmeticTask(count=args.count, digits=args.digits, ops=args.ops, few_shot=args.few_shot)
    except DataError as exc:  # a flag's value: exit 2, naming the flag
        flag = next(
            (f"--{name}" for name in ("digits", "ops", "count") if f" {name} " in f" {exc.message} "), ""
        )
        raise ConfigError(
            f"{flag}: {exc.message.removeprefix('arithmetic: ')}" if flag else exc.message
        ) from None
    rows = generate_rows(task, seed=args.seed)
    path = write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} arithmetic problems to {path}")
    return 0


def cmd_data_gsm8k(args: argparse.Namespace) -> int:
    from openrft.data import load_prompts, write_jsonl
    from openrft.errors import input_error

    with input_error("--input"):
        prompts = load_prompts(args.input, skip_bad_rows=args.skip_bad_rows, limit=args.limit)
    path = write_jsonl(args.out, (p.row for p in prompts))
    skipped = f" ({prompts.skipped} malformed rows skipped)" if prompts.skipped else ""
    print(f"wrote {len(prompts)} GSM8K rows to {path}{skipped}")
    return 0


# ----------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from openrft.data import load_prompts, write_jsonl
    from openrft.errors import ConfigError, DataError, EvaluatorError, input_error
    from openrft.evaluators.isolation import score_contained
    from openrft.evaluators.loader import load_evaluator
    from openrft.evaluators.runner import SUMMARY_STATS, check_invalid_rate, summarize
    from openrft.train.job import check_evaluator_fits

    check_job_flags(args, "grader_endpoint", "grader_model", "reference_field")
    refuse_output_over_inputs(args.output, args.dataset, args.responses, args.evaluator)
    try:  # an evaluator that cannot load is bad input (exit 2), as at job creation
        evaluator = load_evaluator(
            args.evaluator,
            dataset=args.dataset,
            grader_endpoint=args.grader_endpoint,
            grader_model=args.grader_model,
        )
    except EvaluatorError as exc:
        message = exc.message if exc.message.startswith("--") else f"--evaluator: {exc.message}"
        raise ConfigError(message, field="evaluator", hint=exc.hint) from None
    dataset = args.dataset or evaluator.input_dataset
    if dataset is None:
        raise DataError("no --dataset given and the evaluator names no input_dataset")
    with input_error("--dataset"):  # exit 2, named as at job creation
        prompts = load_prompts(dataset, skip_bad_rows=args.skip_bad_rows, adapter=evaluator.dataset_adapter,
                               open_ended=evaluator.rollout is not None)  # fmt: skip
        if args.reference_field:
            from openrft.data.reference import with_reference_field

            prompts = with_reference_field(prompts, args.reference_field, skip_bad_rows=args.skip_bad_rows)
    check_evaluator_fits(evaluator, prompts)  # every row holds what the evaluator reads, as at job creation
    if evaluator.kind == "trl" and "completion_ids" in inspect.signature(evaluator.fn).parameters:
        print("warning: completion_ids are empty lists here (there is no model, so no tokens); in a job they "
              "are the sampled token ids", file=sys.stderr)  # fmt: skip
    skipped: list[str] = []
    if args.responses:
        with input_error("--responses"):
            groups = _groups_from_responses(prompts, args.responses, skip=args.skip_bad_rows, skipped=skipped)
    else:
        groups = _groups_from_rows(prompts)
    scores = score_contained(evaluator, groups, max_concurrency=args.max_concurrency, timeout=args.timeout)
    records = [
        {
            "prompt_id": prompt.prompt_id,
            "candidate_index": completion.candidate_index,
            "score": score.score,
            "is_valid": score.is_valid,
            "reason": score.reason,
            "metrics": score.metrics,
        }
        for (prompt, completions), group_scores in zip(groups, scores, strict=True)
        for completion, score in zip(completions, group_scores, strict=True)
    ]
    if not args.quiet:
        _print_table(records)
    stats = summarize(scores)
    print(
        f"\n{evaluator.name} ({evaluator.mode}): {len(records)} responses for {len(groups)} prompts; "
        f"mean score {stats.get('reward/mean', float('nan')):.4f}, "
        f"invalid {int(stats['reward/invalid_count'])} ({stats['reward/invalid_frac']:.1%})"
    )
    for key, value in stats.items():
        name = key.removeprefix("reward/")
        if name not in SUMMARY_STATS:  # the evaluator's own metrics
            print(f"  {name}: {value:.4f}")
    rows = [f"  {prompts.unit} {number}: {why}" for number, why in prompts.bad_rows]
    for what, lines in (("dataset", rows), ("response", skipped)):
        if lines:
            print(f"{len(lines)} malformed {what} rows were skipped:")
            print("\n".join(lines[:5]) + (f"\n  ... and {len(lines) - 5} more" if len(lines) > 5 else ""))
    if args.output:
        print(f"scores written to {write_jsonl(args.output, records)}")
    shown = [*([] if args.quiet else ["in the table above"]), *([f"in {args.output}"] if args.output else [])]
    where = " and ".join(shown) or "shown without --quiet"
    check_invalid_rate(scores, timeout_flag="--timeout",
                       advice=f"each invalid score's reason is {where}: fix the evaluator or the rows it reads")  # fmt: skip
    return 0


def _print_table(records: list[dict[str, Any]]) -> None:
    width = max(9, *(len(r["prompt_id"]) for r in records))
    print(f"{'prompt_id':<{width}}  cand  score   valid  reason")
    for r in records:
        valid = "yes" if r["is_valid"] else "NO"
        reason = " ".join(str(r["reason"]).split())
        print(
            f"{r['prompt_id']:<{width}}  {r['candidate_index']:>4}  {r['score']:6.3f}  {valid:<5}  {reason}"
        )
    sys.stdout.flush()


def _completion(prompt_id: str, index: int, text: str) -> Any:
    from openrft.records import Completion

    return Completion(
        prompt_id=prompt_id,
        candidate_index=index,
        prompt_token_ids=(),
        completion_token_ids=(),
        text=text,
        logprobs=(),
        finish_reason="stop",
    )


def refuse_output_over_inputs(output: str | None, *inputs: str | None) -> None:
    """``--output`` must be a file that can be written, checked before anything is sampled or scored,
    and not one the command reads (it would be replaced by the results)."""
    from pathlib import Path

    from openrft.errors import ConfigError
    from openrft.paths import unwritable

    if not output:
        return
    target = Path(output).expanduser().resolve()
    if reason := unwritable(target):
        raise ConfigError(f"--output {output}: {reason}")
    for given in inputs:
        source = Path(str(given).partition("::")[0]).expanduser() if given else None
        try:
            same = source is not None and source.exists() and source.resolve() == target
        except OSError:  # not a name a file could have (an inline grader spec past NAME_MAX)
            same = False
        if same:
            raise ConfigError(
                f"--output {output}: this is an input of the command ({given}); give another file"
            )


def _groups_from_rows(prompts: Any) -> list[tuple[Any, list[Any]]]:
    """Rows that end with an assistant message: that message is the response."""
    from openrft.data.jsonl import content_text
    from openrft.errors import DataError
    from openrft.rollout.chat import tool_calls_text

    groups = []
    for prompt in prompts:
        last = prompt.row["messages"][-1]
        if last["role"] == "assistant":
            text = content_text(last.get("content") or "") + tool_calls_text(last.get("tool_calls") or [])
            groups.append((prompt, [_completion(prompt.prompt_id, 0, text)]))
    if not groups:
        raise DataError(
            "no responses to score: no --responses file, and no dataset row ends with an assistant message",
            hint='pass --responses FILE with lines {"prompt_id": "1", "response": "..."}',
        )
    return groups


def _groups_from_responses(
    prompts: Any, path: str, *, skip: bool = False, skipped: list[str] | None = None
) -> list[tuple[Any, list[Any]]]:
    """Responses grouped by prompt. With ``skip``, malformed lines are left out and described in
    ``skipped`` (unless more than half of the file is malformed: then it fails, as a dataset does)."""
    from openrft.data.jsonl import MAX_BAD_FRACTION, BadLine, read_jsonl
    from openrft.errors import DataError

    if not Path(path).expanduser().is_file():
        raise DataError(
            f"no such file: {path}", hint='a JSONL file of {"prompt_id": ..., "response": ...} lines'
        )
    by_id = {p.prompt_id: p for p in prompts}
    texts: dict[str, list[str]] = {}
    bad: list[str] = []
    for number, obj in read_jsonl(path):
        problem = _response_problem(obj, by_id) if not isinstance(obj, BadLine) else str(obj)
        if problem:
            bad.append(f"  line {number}: {problem}")
            continue
        text = next(obj[k] for k in RESPONSE_KEYS if isinstance(obj.get(k), str))
        texts.setdefault(str(obj["prompt_id"]), []).append(text)
    total = len(bad) + sum(len(items) for items in texts.values())
    if bad and skip and texts and len(bad) <= MAX_BAD_FRACTION * total:
        if skipped is not None:
            skipped.extend(bad)
        bad = []
    if bad:
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"{path}: {len(bad)} malformed response rows"
            + (" (too many to skip: more than half of the file)" if skip else "")
            + ":\n"
            + "\n".join(bad[:5])
            + more,
            hint=(
                'each line must be {"prompt_id": "<id in the dataset>", "response": "<text>"}'
                + ("; --skip-bad-rows skips a minority of bad lines" if not skip else "")
            ),
        )
    if not texts:
        raise DataError(f"{path}: no responses")
    return [
        (by_id[pid], [_completion(pid, i, t) for i, t in enumerate(items)]) for pid, items in texts.items()
    ]


def _response_problem(obj: Any, by_id: dict[str, Any]) -> str | None:
    if not isinstance(obj, dict):
        return "a response row must be a JSON object"
    if "prompt_id" not in obj:
        return "missing 'prompt_id'"
    if not any(isinstance(obj.get(k), str) for k in RESPONSE_KEYS):
        return "missing 'response' (the response text)"
    if str(obj["prompt_id"]) not in by_id:
        some = ", ".join(repr(pid) for pid in list(by_id)[:3])
        return f"prompt_id {obj['prompt_id']!r} is not in the dataset (its ids: {some}{', ...' if len(by_id) > 3 else ''})"
    return None
