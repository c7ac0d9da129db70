"""User evaluators run in worker processes: hangs, exits and crashes score one call invalid, never the job."""

from __future__ import annotations

import os
import time

import pytest

from openrft.cli import main
from openrft.evaluators import load_evaluator
from openrft.evaluators.isolation import GRACE_S, EvaluatorPool
from openrft.records import Completion, Prompt
from openrft.tracking.sinks import read_jsonl

EVALUATORS = """
import asyncio, os, sys, time

def good(completion, **row):
    return len(completion) / 10

async def blocks(completion, **row):
    time.sleep(60)  # blocks the event loop: only killing the process stops it
    return 1.0

def exits(completion, **row):
    sys.exit(3)

def interrupts(completion, **row):
    raise KeyboardInterrupt

def dies_on_b(completion, **row):
    if completion == "b":
        os._exit(9)
    return 1.0

def mutates(completion, ground_truth=None, **row):
    ground_truth["seen"] = ground_truth.get("seen", 0) + 1
    return float(ground_truth["seen"])

def chatty(completion, **row):
    sys.stdout.write(f"scoring {completion}\\n")  # one write: two workers' lines do not interleave
    sys.stdout.write("x" * 200_000)
    return 1.0

def sometimes_dies(completion, **row):
    if sum(map(ord, completion)) % 7 == 0:
        os._exit(1)
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0
"""
PROMPT = Prompt("p", ({"role": "user", "content": "x"},), row={"ground_truth": {"n": 1}})
COMPLETIONS = [
    Completion("p", i, (1,), (2,), text, (-0.1,), "stop") for i, text in enumerate(["a", "b", "cc"])
]


@pytest.fixture
def evaluators(tmp_path):
    path = tmp_path / "evs.py"
    path.write_text(EVALUATORS)
    return path


def score(evaluators, name, timeout=2.0):
    with EvaluatorPool(load_evaluator(f"{evaluators}::{name}"), workers=2, timeout=timeout) as pool:
        return pool.score_groups([(PROMPT, COMPLETIONS)])[0], pool.replaced


def test_scores_come_back_in_order(evaluators):
    scores, replaced = score(evaluators, "good")
    assert [s.score for s in scores] == [0.1, 0.1, 0.2] and all(s.is_valid for s in scores) and replaced == 0


def test_a_blocking_async_evaluator_is_killed_at_its_timeout(evaluators):
    start = time.monotonic()
    scores, replaced = score(evaluators, "blocks", timeout=1.0)
    assert [s.reason for s in scores] == ["timeout after 1s"] * 3 and not any(s.is_valid for s in scores)
    assert replaced == 3 and time.monotonic() - start < 3 * (1.0 + GRACE_S) + 10


@pytest.mark.parametrize(
    ("name", "reason"), [("exits", "SystemExit: 3"), ("interrupts", "KeyboardInterrupt: ")]
)
def test_exit_and_interrupt_are_one_invalid_call(evaluators, name, reason):
    scores, replaced = score(evaluators, name)
    assert [s.reason for s in scores] == [reason] * 3 and replaced == 0


def test_a_dying_worker_scores_its_call_invalid_and_is_replaced(evaluators):
    scores, replaced = score(evaluators, "dies_on_b")
    assert [s.is_valid for s in scores] == [True, False, True] and replaced == 1
    assert scores[1].reason == "the evaluator's process exited (exit code 9)"


def test_workers_dead_while_idle_are_replaced_and_ctrl_c_does_not_reach_them(evaluators):
    with EvaluatorPool(load_evaluator(f"{evaluators}::good"), workers=2, timeout=2.0) as pool:
        assert all(s.is_valid for s in pool.score_groups([(PROMPT, COMPLETIONS)])[0])
        for worker in pool._all:  # Ctrl-C in a terminal signals the whole foreground process group
            assert os.getpgid(worker.process.pid) != os.getpgid(0)
        pool._all[0].process.kill()  # one dies between rounds (the OOM killer, a crash)
        pool._all[0].process.wait()
        scores = pool.score_groups([(PROMPT, COMPLETIONS)])[0]
        assert [s.score for s in scores] == [0.1, 0.1, 0.2] and all(s.is_valid for s in scores)
        assert pool.replaced == 1


def test_each_call_gets_its_own_copy_of_the_row(evaluators):
    scores, _ = score(evaluators, "mutates")
    assert [s.score for s in scores] == [1.0, 1.0, 1.0] and PROMPT.row == {"ground_truth": {"n": 1}}


def test_an_evaluator_that_cannot_load_in_a_worker_scores_invalid(evaluators, tmp_path, monkeypatch):
    evaluator = load_evaluator(f"{evaluators}::good")
    evaluators.write_text("raise ImportError('gone')\n")  # the file changed after validation
    spawned = []
    spawn = EvaluatorPool._spawn
    monkeypatch.setattr(EvaluatorPool, "_spawn", lambda pool: spawned.append(1) or spawn(pool))
    with EvaluatorPool(evaluator, workers=2, timeout=2.0) as pool:
        scores = [pool.score_groups([(PROMPT, COMPLETIONS * 4)])[0] for _ in range(2)]
    assert all(not s.is_valid and "gone" in s.reason for batch in scores for s in batch)
    assert len(scores[0]) == 12 and len(spawned) == 4  # two starts a batch, not an interpreter per call


def test_one_off_scoring_runs_a_pointwise_group_s_completions_side_by_side(evaluators, monkeypatch):
    """``openrft evaluate`` of one group: its completions are separate calls, so up to one worker each."""
    from openrft.evaluators.isolation import score_contained

    sizes = []
    init = EvaluatorPool.__init__
    monkeypatch.setattr(EvaluatorPool, "__init__", lambda pool, ev, *, workers, timeout: sizes.append(workers)
                        or init(pool, ev, workers=workers, timeout=timeout))  # fmt: skip
    scores = score_contained(load_evaluator(f"{evaluators}::good"), [(PROMPT, COMPLETIONS)], max_concurrency=8,
                             timeout=2.0)  # fmt: skip
    assert [s.score for s in scores[0]] == [0.1, 0.1, 0.2] and sizes == [3]


def test_a_job_whose_evaluator_sometimes_dies_completes(evaluators, tiny_model_dir, tmp_path, capsys):
    code = main([
        "rftj", "create", "--base-model", str(tiny_model_dir), "--dataset", "arithmetic:count=4",
        "--evaluator", f"{evaluators}::sometimes_dies", "--n", "4", "--max-output-tokens", "16", "--chunk-size", "2",
        "--max-concurrent-evaluations", "2", "--quiet", "--output-model", str(tmp_path / "out"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "COMPLETED" in err and "Traceback" not in err
    rows = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "reward/invalid_frac" in r]
    assert rows and all(0.0 <= r["reward/invalid_frac"] <= 0.5 for r in rows)


def test_openrft_evaluate_contains_the_evaluator_too(evaluators, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"messages": [{{"role": "user", "content": "q{i}"}}], "ground_truth": 1}}\n'
                            for i in range(3)))  # fmt: skip
    responses = tmp_path / "responses.jsonl"
    responses.write_text('{"prompt_id": "1", "completion": "a"}\n{"prompt_id": "2", "completion": "b"}\n'
                         '{"prompt_id": "3", "completion": "cc"}\n')  # fmt: skip
    code = main(["evaluate", "--dataset", str(data), "--evaluator", f"{evaluators}::dies_on_b",
                 "--responses", str(responses)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "invalid 1 (33.3%)" in out and "exit code 9" in out


def test_what_an_evaluator_prints_is_marked_as_its_own_and_capped(evaluators, capfd):
    scores, _ = score(evaluators, "chatty")
    assert [s.score for s in scores] == [1.0] * 3
    out = capfd.readouterr().out
    assert "[evaluator] scoring a\n" in out and "[evaluator] (more output left out" in out
    assert len(out) < 2 * 70_000  # at most 64 KiB from each of the 2 workers, not 600 KB
