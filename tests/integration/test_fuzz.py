"""A hostile user's inputs: every one ends with a non-zero exit, one clear first line naming the problem,
no traceback, and no file of the user's changed. Nothing here loads a model.

The classes: every job parameter given a value out of its range or of the wrong type; job files that
do not parse or repeat a key; datasets that are missing, empty, binary, nested too deeply or of the
wrong shape; evaluators that cannot be imported, exit while being imported, or cannot take the rows;
outputs that would replace an input or a user's folder; a damaged job store behind every store command;
out-of-range arguments of the other commands.
"""

from __future__ import annotations

import sqlite3

import pytest

from config_table import TABLE
from openrft.cli import main

GOOD_ROW = '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n'
FILES = {
    "good.jsonl": GOOD_ROW * 3,
    "empty.jsonl": "",
    "blank.jsonl": "\n\n",
    "binary.jsonl": "\x00\xff\xfe garbage",
    "array.jsonl": "[1, 2, 3]\n" * 3,
    "deep.jsonl": "[" * 100_000 + "]" * 100_000 + "\n",
    "no_messages.jsonl": '{"ground_truth": 4}\n' * 3,
    "bad_messages.jsonl": '{"messages": "hello", "ground_truth": 4}\n' * 3,
    "bad_roles.jsonl": '{"messages": [{"role": "wizard", "content": "x"}]}\n' * 3,
    "ev.py": "def score(completion, **row):\n    return 1.0\nnot_callable = 3\n",
    "syntax.py": "def score(completion:\n",
    "raises.py": "raise RuntimeError('boom at import')\n",
    "exits.py": "import sys\nsys.exit(3)\n",
    "needs_field.py": "def score(completion, rubric):\n    return 1.0\n",
    "no_args.py": "def score():\n    return 1.0\n",
    "job_dup.yaml": "epochs: 2\nepochs: 3\n",
    "job_bad.yaml": "epochs: [1, 2\n",
    "job_list.yaml": "- 1\n- 2\n",
    "job_unknown.yaml": "epoch: 2\n",
    "job_blank.yaml": "evaluator: ''\nepochs: 2\n",
    "job.json": '{"epochs": 2, "epochs": 3}',
}


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder of files, and a home with a job store."""
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "user"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_bytes(text.encode("utf-8", "surrogateescape") if name != "binary.jsonl" else
                                    b"\x00\xff\xfe garbage\n")  # fmt: skip
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("the user's own file")
    (folder / "run").mkdir()  # a job folder to plot
    (folder / "run" / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
    (folder / "responses.jsonl").write_text('{"prompt_id": "1", "completion": "4"}\n')
    return folder


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors: usage line + one error line, exit 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, first):
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line and not line.startswith(("usage:", " ", "warning:"))]
    assert lines and first in lines[0], err


# ----------------------------------------------------------------------------- every parameter


# (on/off switches take no value on the command line; their job-file values are checked in test_config)
FLAG_CASES = [
    (name.replace("_", "-"), value)
    for name, default, _, invalid in TABLE
    if not isinstance(default, bool)
    for value in invalid
    if not isinstance(value, bool)
]


@pytest.mark.parametrize(("flag", "value"), FLAG_CASES, ids=[f"{f}={v!r}"[:40] for f, v in FLAG_CASES])
def test_every_out_of_range_flag_is_refused(user, capsys, flag, value):
    before = snapshot(user)
    code, out, err = run(capsys, ["rftj", "create", "--dry-run", f"--{flag}", str(value)])
    assert_refused(code, err, f"--{flag}" if flag != "response-candidates-count" else "--response-candidates")
    assert snapshot(user) == before and out == ""


# ----------------------------------------------------------------------------- files and evaluators

EVAL = "{u}/ev.py::score"
FILE_CASES = [
    (["--config", "{u}/job_dup.yaml"], "the key 'epochs' is given twice"),
    (["--config", "{u}/job.json"], "the key 'epochs' is given twice"),
    (["--config", "{u}/job_bad.yaml"], "--config: cannot parse"),
    (["--config", "{u}/job_list.yaml"], "must hold a mapping"),
    (["--config", "{u}/job_unknown.yaml"], "unknown parameter 'epoch'"),
    (["--config", "{u}/job_blank.yaml"], "is empty; give a value or leave the key out"),
    (["--config", "{u}/nowhere.yaml"], "no such job file"),
    (["--dataset", "{u}/nowhere.jsonl", "--evaluator", EVAL], "--dataset: dataset file not found"),
    (["--dataset", "{u}/mine", "--evaluator", EVAL], "--dataset: "),
    (["--dataset", "{u}/empty.jsonl", "--evaluator", EVAL], "the dataset has no rows"),
    (["--dataset", "{u}/blank.jsonl", "--evaluator", EVAL], "the dataset has no rows"),
    (["--dataset", "{u}/binary.jsonl", "--evaluator", EVAL], "rows are malformed"),
    (["--dataset", "{u}/array.jsonl", "--evaluator", EVAL], "rows are malformed"),
    (["--dataset", "{u}/deep.jsonl", "--evaluator", EVAL], "rows are malformed"),
    (["--dataset", "{u}/no_messages.jsonl", "--evaluator", EVAL], "rows are malformed"),
    (["--dataset", "{u}/bad_messages.jsonl", "--evaluator", EVAL], "rows are malformed"),
    (["--dataset", "{u}/bad_roles.jsonl", "--evaluator", EVAL], "rows are malformed"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/syntax.py::score"], "syntax error in the evaluator"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/raises.py::score"], "boom at import"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/exits.py::score"], "it called sys.exit(3)"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/ev.py::nope"], "--evaluator: "),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/ev.py::not_callable"], "is not a function"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/needs_field.py::score"], "needs rubric"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/no_args.py::score"], "wrong signature"),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "no.such.module:score"], "--evaluator: "),
    (["--dataset", "{u}/good.jsonl", "--evaluator", "{u}/mine::score"], "--evaluator: "),
    (
        ["--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--output-model", "{u}/good.jsonl"],
        "an input of the job",
    ),
    (
        ["--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--output-model", "{u}/mine"],
        "not an openrft output",
    ),
    (
        ["--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--output-model", "{u}/ev.py/x"],
        "not a writable folder",
    ),
    (["--warm-start-from", "{u}/mine"], "no adapter_config.json"),
    (["--eval-auto-carveout", "0.1", "--evaluation-dataset", "{u}/good.jsonl"], "mutually exclusive"),
    (["--overlong-penalty", "--overlong-buffer", "4096"], "must not exceed --max-output-tokens"),
    (["--n", "1000000000"], "more than this machine's"),
]


@pytest.mark.parametrize(("flags", "first"), FILE_CASES, ids=[" ".join(f)[:50] for f, _ in FILE_CASES])
def test_bad_files_and_evaluators_are_refused_before_anything_runs(
    user, capsys, tiny_model_dir, flags, first
):
    before = snapshot(user)
    model = [] if "--warm-start-from" in flags else ["--base-model", str(tiny_model_dir)]
    argv = ["rftj", "create", *model, *[f.format(u=user) for f in flags]]
    for mode in (["--dry-run"], ["--quiet"]):  # the dry run and the real creation refuse alike
        code, out, err = run(capsys, [*argv, *mode])
        assert_refused(code, err, first)
        assert snapshot(user) == before
    assert not (user.parent / "home" / "jobs").exists()  # nothing recorded


# ----------------------------------------------------------------------------- a damaged job store

DAMAGE = {
    "garbage": lambda db: db.write_bytes(b"this is not a database at all" * 100),
    "truncated": lambda db: db.write_bytes(db.read_bytes()[:3000]),
    "empty": lambda db: db.write_bytes(b""),
    "directory": lambda db: (db.unlink(), db.mkdir()),
}
COMMANDS = [["rftj", "list"], ["rftj", "get", "a"], ["rftj", "cancel", "a"], ["rftj", "delete", "a"],
            ["rftj", "resume", "a"], ["rftj", "rollouts", "a"]]  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_store_is_one_line_for_every_command_and_repair_restores_it(user, capsys, damage, tmp_path):
    home = tmp_path / "home"
    folder = home / "jobs" / "a"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(
        '{"training": {"epochs": 2}, "loss": {}, "rollout": {}, "data": {}, "wandb": {}}'
    )
    db = home / "jobs.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);" * 1 + "VACUUM;")
    for name in ("jobs.db-wal", "jobs.db-shm"):
        (home / name).unlink(missing_ok=True)
    db.write_bytes(db.read_bytes() * 4)
    DAMAGE[damage](db)
    for argv in COMMANDS:
        code, _, err = run(capsys, argv)
        assert_refused(code, err, "the job store")
        assert "rftj repair" in err or "cannot be opened" in err
    if damage == "directory":
        return
    code, out, err = run(capsys, ["rftj", "repair"])
    assert code == 0 and "restored 1 jobs" in out, err
    assert list(home.glob("jobs.db.broken-*"))  # the damaged file is kept
    code, out, _ = run(capsys, ["rftj", "list"])
    assert code == 0 and "a " in out and "FAILED" in out  # an unfinished job, ready to resume


def test_an_unusable_home_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    for home in (tmp_path / "file", tmp_path / "file" / "below"):
        monkeypatch.setenv("OPENRFT_HOME", str(home))
        code, _, err = run(capsys, ["rftj", "list"])
        assert_refused(code, err, "OPENRFT_HOME")


# ----------------------------------------------------------------------------- other commands

OTHER_CASES = [
    (["evaluate", "--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--timeout", "nan"], "--timeout"),
    (["evaluate", "--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--timeout", "0"], "--timeout"),
    (
        ["evaluate", "--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--max-concurrency", "0"],
        "--max-concurrency",
    ),
    (["rftj", "rollouts", "a", "--limit", "-5"], "--limit"),
    (
        ["evaluate", "--dataset", "{u}/good.jsonl", "--evaluator", EVAL, "--grader-endpoint", "ftp://judge"],
        "--grader-endpoint: ftp://judge is not valid; expected an http:// or https:// URL",
    ),  # as job creation refuses it (every score was an invalid APIConnectionError)
    (["rftj", "get", "no-such-job"], "no job with id"),
    (["rftj", "plot", "no-such-job", "--out", "{u}/plot.png"], "no-such-job"),
    (["rftj", "plot", "{u}/run", "--out", "{u}/mine"], "{u}/mine: a folder is there"),
    (["rftj", "plot", "{u}/run", "--out", "{u}/ev.py/plot.png"], "{u}/ev.py/plot.png: cannot be written"),
    (
        [
            "evaluate",
            "--dataset",
            "{u}/good.jsonl",
            "--evaluator",
            EVAL,
            "--responses",
            "{u}/responses.jsonl",
            "--output",
            "{u}/mine",
        ],
        "{u}/mine: a folder is there",
    ),
]


@pytest.mark.parametrize(("argv", "first"), OTHER_CASES, ids=[" ".join(a)[:50] for a, _ in OTHER_CASES])
def test_other_commands_refuse_bad_arguments(user, capsys, argv, first):
    before = snapshot(user)
    code, _, err = run(capsys, [a.format(u=user) for a in argv])
    assert_refused(code, err, first.format(u=user))
    assert snapshot(user) == before


def test_repair_leaves_a_healthy_store_alone_and_never_calls_a_cancelled_job_completed(
    user, capsys, tmp_path
):
    import json

    home = tmp_path / "home"
    code, _, err = run(capsys, ["rftj", "list"])  # creates a healthy, empty store
    assert code == 0, err
    code, _, err = run(capsys, ["rftj", "repair"])
    assert code != 0 and "is not damaged" in err and "--force" in err
    for name, outcome in (("cancelled", ""), ("done", "completed")):
        folder = home / "jobs" / name
        (folder / "output").mkdir(parents=True)
        (folder / "output" / "adapter_config.json").write_text("{}")  # a cancelled job writes its adapter too
        (folder / "job.json").write_text(
            '{"training": {}, "loss": {}, "rollout": {}, "data": {}, "wandb": {}}'
        )
        (folder / "checkpoints" / "step-000004").mkdir(parents=True)
        (folder / "checkpoints" / "step-000004" / "state.json").write_text(
            json.dumps({"step": 4, "outcome": outcome})
        )
        rows = [{"step": s, "loss/policy": 0.1, "reward/mean": s / 10} for s in (1, 2, 3)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, ["rftj", "repair", "--force"])
    assert code == 0 and "restored 2 jobs" in out, err
    from openrft.jobs.store import JobStore

    restored = JobStore(home).get("done")
    assert (restored.steps, restored.last_reward) == (3, 0.3)  # the last trained step's progress
    code, out, _ = run(capsys, ["rftj", "list"])
    states = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip()}
    assert states["cancelled"] == "FAILED" and states["done"] == "COMPLETED"  # the first can be resumed


# ----------------------------------------------------------------------------- empty values

BLANK_FLAGS = ["--evaluator", "--dataset", "--evaluation-dataset", "--output-model", "--warm-start-from",
               "--resume-from", "--tools", "--agent", "--config", "--reference-field", "--grader-model",
               "--grader-endpoint", "--ray-address", "--wandb-project", "--wandb-api-key", "--stop", "--server"]  # fmt: skip
BLANK_CASES = [
    *(
        (["rftj", "create", "--dry-run", flag, value], flag)
        for flag in BLANK_FLAGS
        for value in ("", " ")
        if not (value and flag == "--stop")  # whitespace is a stop string
    ),
    (["rftj", "create", "--dry-run", "--evaluator=", "--dataset", "arithmetic"], "--evaluator"),
    (["rollout", "--prompt", ""], "--prompt"),
    (["serve", "--api-key", " "], "--api-key"),
    (["serve", "--served-model-name="], "--served-model-name"),
    (["serve", "--lora-modules", "a={u}", ""], "--lora-modules"),  # every value of a several-valued flag
    (["serve", "--lora-modules", "a={u}", " ", "--port", "1"], "--lora-modules"),
    (["eval", "--dataset", "{u}/good.jsonl", "--pass-metric", ""], "--pass-metric"),
]


@pytest.mark.parametrize(
    ("argv", "flag"), BLANK_CASES, ids=[" ".join(a[2:] if a[0] == "rftj" else a)[:40] for a, _ in BLANK_CASES]
)
def test_an_empty_value_is_refused_never_taken_for_the_flag_left_out(user, capsys, argv, flag):
    before = snapshot(user)
    code, out, err = run(capsys, [a.format(u=user) for a in argv])
    assert code == 2 and err.strip() == f"{flag}: an empty value; give one, or leave the flag out", err
    assert snapshot(user) == before and out == ""


def test_whitespace_is_a_value_where_it_is_text(capsys):
    for stop in ("\n", " ", "\n\n"):  # a stop string of whitespace ends a reply there
        code, out, err = run(
            capsys, ["rftj", "create", "--dry-run", "--dataset", "arithmetic", "--stop", stop]
        )
        assert code == 0 and "stop" in out and repr(stop)[1:-1] in out, err


PARSER_CASES = [
    (["rftj", "rollouts", "a", "--limit", "-5"], "--limit: -5 is not valid; expected a whole number >= 1"),
    (["rftj", "create", "--job-id", "-lead"], "--job-id: expected a value (one that starts with '-' is written --job-id=VALUE)"),
    (["rftj", "list", "--state", "x"], "unrecognized arguments: --state x"),  # the sub-command's help, not openrft's
    (["rftj", "list", "-o", "yaml"], "-o/--output: invalid choice: 'yaml'"),
    (["rollout"], "the following arguments are required: --prompt"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "first"), PARSER_CASES, ids=[" ".join(a)[:40] for a, _ in PARSER_CASES])
def test_the_parser_s_refusals_are_one_line_and_a_hint_not_the_usage_block(user, capsys, argv, first):
    code, out, err = run(capsys, argv)
    command = " ".join(a for a in argv[:2] if not a.startswith("-") and a != "a")
    assert code == 2 and out == "" and err.splitlines()[0].startswith(first), err
    assert err.splitlines()[1:] == [f"hint: `openrft {command} --help` lists what it takes"], err
