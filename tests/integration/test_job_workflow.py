"""What a new user tripped on around a job, each a regression test on a tiny random model: rounds that
train nothing, early stops caused by truncation, cancels between rounds, plain progress lines, resuming
from another directory, and the smaller display bugs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.cli import main
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore
from openrft.tracking.sinks import read_jsonl

FIXTURES = Path(__file__).parent / "train_fixtures" / "evaluators.py"
CANCEL_ONCE = '''
import os
from pathlib import Path


def letters(completion: str, **row) -> float:
    """The share of letters (graded on gibberish); the first call asks job 'rel' to stop."""
    marker = Path(os.environ["OPENRFT_HOME"]) / "cancelled-once"
    if not marker.exists():
        marker.write_text("")
        from openrft.jobs.store import JobStore

        JobStore().request_cancel("rel")
    return sum(c.isalpha() for c in completion) / len(completion) if completion else 0.0
'''


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def flags(model_dir, evaluator="spread", count=6, *extra):
    return [
        "--base-model", str(model_dir), "--dataset", f"arithmetic:count={count}",
        "--evaluator", f"{FIXTURES}::{evaluator}", "--n", "2", "--max-output-tokens", "16", "--chunk-size", "2",
        "--batch-size", "2k", "--micro-batch-tokens", "128", "--temperature", "1.0", "--seed", "3", *extra,
    ]  # fmt: skip


def test_rounds_that_train_nothing_are_logged_and_the_early_stop_names_truncation(
    home, tiny_model_dir, capsys
):
    assert main(["rftj", "create", "--job-id", "flat", "--quiet", *flags(tiny_model_dir, "constant")]) == 0
    err = capsys.readouterr().err
    record = JobStore().get("flat")
    assert record.state is JobState.EARLY_STOPPED and record.steps == 0
    # a random model runs every response to the limit: the message names that, not only temperature
    assert "100% of the responses were cut off at --max-output-tokens" in record.message
    assert "--max-output-tokens" in err
    rows = read_jsonl(record.metrics_path)
    rounds = [r for r in rows if r.get("filter/round_skipped")]
    assert [r["train/round"] for r in rounds] == [1.0, 2.0, 3.0]  # every round has its line, none trained
    assert all(r["reward/mean"] == 1.0 and r["completion/truncated_frac"] == 1.0 for r in rounds)
    assert all(r["filter/zero_variance_groups"] <= r["filter/groups"] for r in rows if "filter/groups" in r)
    assert record.last_reward == 1.0  # `list` and `get` show the reward of the rounds that were scored
    main(["rftj", "get", "flat"])
    shown = capsys.readouterr().out
    assert "last reward: 1.0000" in shown and "rounds:      3 (3 trained nothing" in shown
    rollouts = read_jsonl(record.rollouts_path)
    assert rollouts and {r["step"] for r in rollouts} == {0} and not any(r["trained"] for r in rollouts)


def test_a_cancel_between_rounds_stops_before_the_next_round_is_sampled(tiny_model_dir, tmp_path):
    from openrft.config import build_config
    from openrft.train.job import prepare, run_training

    values = dict(
        base_model=str(tiny_model_dir), dataset="arithmetic:count=12", evaluator=f"{FIXTURES}::constant",
        response_candidates_count=2, max_output_tokens=16, chunk_size=2, temperature=1.0,
    )  # fmt: skip
    cfg, _ = build_config({}, values)

    def should_stop() -> bool:  # a cancel request arrives once the first round has been scored
        return (tmp_path / "job" / "rollouts.jsonl").exists()

    outcome = run_training(prepare(cfg), tmp_path / "job", quiet=True, should_stop=should_stop)
    assert outcome.status == "cancelled" and outcome.state.step == 0
    rollouts = read_jsonl(tmp_path / "job" / "rollouts.jsonl")
    assert {r["round"] for r in rollouts} == {1} and len(rollouts) == 2 * 2  # 2 prompts x 2, of 12 prompts


def test_a_cancel_while_a_hung_evaluator_scores_stops_the_job_cancelled_not_failed(tiny_model_dir, tmp_path):
    import time

    from openrft.config import build_config
    from openrft.train.job import prepare, run_training

    hangs = tmp_path / "hangs.py"
    hangs.write_text(
        "import time\nfrom pathlib import Path\n\n"
        "def hangs(completion, **row):\n"
        f"    Path({str(tmp_path / 'scoring')!r}).write_text('')\n"
        "    time.sleep(600)\n    return 1.0\n"
    )
    values = dict(
        base_model=str(tiny_model_dir), dataset="arithmetic:count=4", evaluator=f"{hangs}::hangs",
        response_candidates_count=2, max_output_tokens=16, chunk_size=4, temperature=1.0, evaluator_timeout=120,
    )  # fmt: skip
    cfg, _ = build_config({}, values)
    started = time.monotonic()
    outcome = run_training(
        prepare(cfg), tmp_path / "job", quiet=True, should_stop=(tmp_path / "scoring").exists
    )  # a cancel request arrives while every call hangs: no waiting for the 120 s timeouts
    assert outcome.status == "cancelled" and outcome.state.step == 0 and outcome.state.cursor == 0
    assert time.monotonic() - started < 60


def test_output_that_is_not_a_terminal_gets_a_line_per_round_and_step(home, tiny_model_dir, capsys):
    assert main(["rftj", "create", "--job-id", "lines", *flags(tiny_model_dir, "spread", 4)]) == 0
    err = capsys.readouterr().err  # captured: not a terminal, so no progress bar
    assert "round 1/2: sampling 2 prompts x 2 candidates" in err and "round 2/2" in err
    assert "step 1 reward" in err and "truncated 100%" in err
    assert err.rstrip().splitlines()[-1].startswith("outputs: ")
    record = JobStore().get("lines")
    rows = read_jsonl(record.metrics_path)
    assert rows[-1]["train/epoch"] == 1.0  # a completed job reports its epoch done, not epoch 0
    main(["rftj", "list"])
    assert "COMPLETED" in capsys.readouterr().out


def test_a_cancelled_job_resumes_from_another_directory_with_its_evaluator_snapshot(
    home, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "evaluator.py").write_text(CANCEL_ONCE)
    rows = [
        {"messages": [{"role": "user", "content": f"Say {i}."}], "ground_truth": str(i)} for i in range(4)
    ]
    (project / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(project)
    args = [
        "rftj", "create", "--job-id", "rel", "--quiet", "--base-model", str(tiny_model_dir),
        "--dataset", "data.jsonl", "--evaluator", "evaluator.py::letters", "--n", "2", "--max-output-tokens", "16",
        "--chunk-size", "2", "--batch-size", "2k", "--micro-batch-tokens", "128", "--temperature", "1.0",
    ]  # fmt: skip
    assert main(args) == 9  # cancelled (by its evaluator, through `rftj cancel`): not finished
    record = JobStore().get("rel")
    assert record.state is JobState.CANCELLED
    assert record.given["dataset"] == str(project / "data.jsonl")  # stored as absolute paths
    assert record.given["evaluator"] == f"{project / 'evaluator.py'}::letters"
    manifest = json.loads((record.job_dir / "snapshot" / "manifest.json").read_text())
    assert set(manifest["datasets"]) == {"dataset"} and set(manifest["code"]) == {"evaluator"}
    (project / "evaluator.py").write_text(
        "def letters(completion, **row):\n    raise RuntimeError('edited')\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["rftj", "resume", "rel", "--force", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "evaluator.py changed since the job started" in err
    assert "resolves evaluator differently" not in err  # the copy is announced once, as what it is
    record = JobStore().get("rel")
    assert record.state is JobState.COMPLETED and record.steps >= 1, record.message
    scored = [r for r in read_jsonl(record.rollouts_path) if r["round"] == 2]
    assert scored and all(r["valid"] for r in scored)  # scored by the snapshot, not the edited file


def test_cancelling_shows_until_the_job_ends(home):
    from openrft.config import build_config

    store = JobStore()
    cfg, _ = build_config({}, {"dataset": "arithmetic"})
    store.create("c", cfg)
    store.transition("c", JobState.VALIDATING)
    assert store.request_cancel("c").shown_state == "CANCELLING"
    assert store.transition("c", JobState.CANCELLED).shown_state == "CANCELLED"


def test_help_texts_state_each_default_once():
    from openrft.cli import build_parser

    parser = build_parser()
    for command in (["rftj", "create"], ["rollout"], ["serve"]):
        sub = parser
        for name in command:
            sub = next(a for a in sub._actions if a.dest in ("command", "rftj_command")).choices[name]
        for action in sub._actions:
            assert (action.help or "").lower().count("default") <= 1, (command, action.dest, action.help)


def test_reward_plot_band_stays_within_the_scores_and_legends_name_only_drawn_lines():
    from openrft.tracking.plots import PANELS, _band, legend_styles

    low, high = _band({"reward/mean": 0.9, "reward/std": 0.3, "reward/min": 0.0, "reward/max": 1.0})
    assert (low, high) == pytest.approx((0.6, 1.0))
    reward = PANELS[0]
    assert legend_styles(reward, [[{"step": 1, "reward/mean": 0.5}]]) == [("-", "train")]
    assert legend_styles(reward, [[{"step": 1, "reward/mean": 0.5}], [{"step": 0, "eval/reward": 0.2}]]) == [
        ("-", "train"),
        ("--", "eval"),
    ]


def test_a_round_failed_by_invalid_scores_keeps_its_rollouts_to_inspect(home, tiny_model_dir, capsys):
    assert main(["rftj", "create", "--job-id", "bad", "--quiet", *flags(tiny_model_dir, "broken", 4)]) == 4
    assert "evaluator scores are invalid" in capsys.readouterr().err
    record = JobStore().get("bad")
    assert record.state is JobState.FAILED
    rows = [json.loads(line) for line in (record.job_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(not r["valid"] and "the evaluator is broken" in r["reason"] for r in rows)
    assert main(["rftj", "rollouts", "bad"]) == 0
    assert "the evaluator is broken" in capsys.readouterr().out


def test_a_chat_template_of_the_users_renders_the_job_and_stays_with_its_adapter(
    home, tiny_model_dir, tmp_path
):
    from openrft.jobs.model_eval import adapter_chat_template
    from openrft.rollout.prompts import encode_prompt
    from openrft.train.job import prepare

    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    path = tmp_path / "chat.jinja"
    path.write_text(template)
    assert main(["rftj", "create", "--job-id", "tpl", "--quiet", "--chat-template", str(path),
                 *flags(tiny_model_dir, "spread", 4)]) == 0  # fmt: skip
    record = JobStore().get("tpl")
    path.unlink()  # the job keeps the text, not the file
    assert record.flat_config()["chat_template"] == template
    assert adapter_chat_template(record.output_dir) == template  # saved with the adapter's tokenizer
    from openrft.config import build_config
    from openrft.models import load_tokenizer

    cfg = build_config({}, {"chat_template": template, "base_model": str(tiny_model_dir)})[0]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = template
    prompt = prepare(cfg).dataset[0]
    text = tokenizer.decode(encode_prompt(tokenizer, prompt))
    assert text.startswith("[system] ") and "\n[user] What is" in text and text.endswith("[assistant] ")
