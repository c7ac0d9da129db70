"""score_groups: both modes, sync and async, concurrency, timeouts and exceptions contained."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import pytest

from openrft.errors import EvaluatorError
from openrft.evaluators import check_invalid_rate, load_evaluator, score_groups, summarize, to_score
from openrft.evaluators.base import Evaluator
from openrft.evaluators.loader import as_evaluator
from openrft.evaluators.protocol import EvaluateResult, EvaluationRow, evaluation_test
from openrft.evaluators.runner import missing_fields
from openrft.records import Completion, Prompt, Score

EVALS = Path(__file__).parent.parent / "fixtures" / "evaluators"


def prompt(pid: str, truth, **fields) -> Prompt:
    messages = ({"role": "system", "content": "sys"}, {"role": "user", "content": f"question {pid}"})
    return Prompt(
        prompt_id=pid, messages=messages, row={"messages": list(messages), "ground_truth": truth, **fields}
    )


def completions(pid: str, *texts: str) -> list[Completion]:
    return [
        Completion(
            prompt_id=pid,
            candidate_index=i,
            prompt_token_ids=(1, 2),
            completion_token_ids=(3,),
            text=t,
            logprobs=(-0.5,),
            finish_reason="stop" if i % 2 == 0 else "length",
        )
        for i, t in enumerate(texts)
    ]


def test_pointwise_row_evaluator_sees_prompt_completion_and_fields():
    seen = []

    @evaluation_test(mode="pointwise")
    def judge(row: EvaluationRow) -> EvaluationRow:
        seen.append(row)
        ok = row.last_assistant_message().content == str(row.ground_truth)
        row.evaluation_result = EvaluateResult(score=float(ok), reason=row.colour, metrics={"ok": ok})
        return row

    ev = as_evaluator(judge, "judge")
    groups = [
        (prompt("a", 4, colour="red"), completions("a", "4", "5")),
        (prompt("b", 1, colour="blue"), completions("b", "1")),
    ]
    scores = score_groups(ev, groups, max_concurrency=2, timeout=5)
    assert scores == [[Score(1.0, reason="red"), Score(0.0, reason="red")], [Score(1.0, reason="blue")]]
    assert scores[0][0].metrics == {"ok": 1.0}
    row = next(r for r in seen if r.input_metadata.row_id == "a" and r.messages[-1].content == "5")
    assert [m.role for m in row.messages] == ["system", "user", "assistant"]
    assert row.messages[1].content == "question a" and row.ground_truth == 4
    assert row.execution_metadata.rollout_id == "a/1" and row.execution_metadata.finish_reason == "length"


def test_row_evaluator_may_mutate_in_place_and_return_none():
    @evaluation_test()
    def judge(row: EvaluationRow) -> None:
        row.evaluation_result = EvaluateResult(score=0.25, is_score_valid=False, reason="unsure")

    [[score]] = score_groups(
        as_evaluator(judge, "judge"), [(prompt("a", 1), completions("a", "x"))], timeout=5
    )
    assert score == Score(0.25, is_valid=False, reason="unsure")


def test_fixture_files_pointwise_groupwise_async_and_plain():
    groups = [
        (prompt("p", "Paris", topic="geo"), completions("p", "Paris", "It is paris!", "Lyon")),
        (prompt("q", "4", topic="sums"), completions("q", "4", "<answer>4</answer>")),
    ]
    exact = score_groups(load_evaluator(str(EVALS / "own_pointwise.py")), groups, timeout=5)
    assert [[s.score for s in g] for g in exact] == [[1.0, 0.5, 0.0], [1.0, 0.5]]
    assert exact[0][1].reason == "contains (geo)"
    assert exact[0][1].metrics == {"exact": 0.0, "contains": 1.0}

    shortest = score_groups(load_evaluator(str(EVALS / "own_groupwise.py")), groups, timeout=5)
    # Case-sensitive there: "It is paris!" does not contain "Paris".
    assert [[s.score for s in g] for g in shortest] == [[1.0, 0.0, 0.0], [1.0, 0.5]]
    assert shortest[1][0].reason == "2 candidates"

    plain = score_groups(load_evaluator(str(EVALS / "plain_reward.py")), groups, timeout=5)
    assert [[s.score for s in g] for g in plain] == [[1.0, 1.0, 0.0], [1.0, 1.0]]
    pair = score_groups(load_evaluator(f"{EVALS / 'two_plain.py'}::match_reward"), groups, timeout=5)
    assert pair[0][2] == Score(0.0, reason="no match") and pair[1][1] == Score(1.0, reason="match")


def test_plain_function_gets_row_fields_by_name_or_all_with_kwargs():
    got = {}

    def named(completion, ground_truth, messages):
        got["named"] = (completion, ground_truth, [m["role"] for m in messages])
        return 1

    def catch_all(completion, **fields):
        got["all"] = sorted(fields)
        return 0.5

    group = [(prompt("a", 7, colour="red"), completions("a", "seven"))]
    assert score_groups(as_evaluator(named, "named"), group, timeout=5) == [[Score(1.0)]]
    assert got["named"] == ("seven", 7, ["system", "user"])
    score_groups(as_evaluator(catch_all, "catch_all"), group, timeout=5)
    assert got["all"] == ["colour", "ground_truth", "messages", "prompt_id"]
    # an agent's run: its whole conversation, tool turns included; the completion is its last reply
    from dataclasses import replace

    talk = ({"role": "user", "content": "question a"}, {"role": "assistant", "content": "", "tool_calls": []},
            {"role": "tool", "content": "7"}, {"role": "assistant", "content": "seven"})  # fmt: skip
    agent = [(prompt("a", 7), [replace(completions("a", "seven")[0], conversation=talk)])]
    assert score_groups(as_evaluator(named, "named"), agent, timeout=5) == [[Score(1.0)]]
    assert got["named"] == ("seven", 7, ["user", "assistant", "tool", "assistant"])


def test_trl_reward_functions_score_a_group_with_columns_as_lists():
    path = EVALS / "trl_rewards.py"
    text = Prompt("t", ({"role": "user", "content": "2+2?"},), row={"prompt": "2+2?", "solution": "4"})
    chat = Prompt("c", ({"role": "user", "content": "2+2?"},), row={"messages": [], "solution": "4"})
    texts = ["<answer>4</answer>", "four", "<answer>5</answer>"]
    scores = {name: score_groups(load_evaluator(f"{path}::{name}"), [(p, completions(p.prompt_id, *texts))],
                                 timeout=5)[0] for name, p in [  # fmt: skip
        ("format_reward", text), ("accuracy_reward", chat), ("length_only", text), ("none_for_odd", text),
        ("wrong_count", text)]}  # fmt: skip
    assert [s.score for s in scores["format_reward"]] == [1.0, 0.0, 1.0]
    assert [s.score for s in scores["accuracy_reward"]] == [1.0, 0.0, 0.0]  # conversational: message lists
    assert [s.score for s in scores["length_only"]] == [18.0, 4.0, 18.0]
    assert [s.is_valid for s in scores["none_for_odd"]] == [True, False, True]
    assert not any(s.is_valid for s in scores["wrong_count"]) and "one value per completion" in scores[
        "wrong_count"][0].reason  # fmt: skip
    assert load_evaluator(f"{path}::format_reward").mode == "groupwise"
    # TRL passes every argument by keyword: its own examples that do not start with completions
    mixed = Prompt("m", ({"role": "user", "content": "2+2?"},), row={"prompt": "2+2?", "task": "math"})
    group = [(mixed, completions("m", *texts))]
    assert [s.score for s in score_groups(load_evaluator(f"{path}::math_only"), group, timeout=5)[0]] == [
        1.0, 0.0, 0.0]  # fmt: skip
    assert [s.score for s in score_groups(load_evaluator(f"{path}::async_reward"), group, timeout=5)[0]] == [
        1.0] * 3  # fmt: skip
    by_tokens = score_groups(load_evaluator(f"{path}::by_token_count"), group, timeout=5)[0]
    assert all(s.is_valid for s in by_tokens), by_tokens
    assert all(load_evaluator(f"{path}::{name}").kind == "trl" for name in ("math_only", "async_reward",
                                                                               "by_token_count"))  # fmt: skip


def test_a_trl_reward_gets_the_columns_trl_passes():
    seen = {}

    def probe(completions, log_metric, **kwargs):  # TRL passes log_metric (openrft: None, as TRL allows)
        seen.update(kwargs, log_metric=log_metric)
        return [1.0] * len(completions)

    evaluator = as_evaluator(probe, "probe")
    text = Prompt("t", ({"role": "user", "content": "2+2?"},), row={"prompt": "2+2?", "messages": [
        {"role": "user", "content": "2+2?"}], "solution": "4"})  # fmt: skip
    assert missing_fields(evaluator, text) == []
    assert all(s.is_valid for s in score_groups(evaluator, [(text, completions("t", "4"))], timeout=5)[0])
    assert sorted(seen) == [
        "completion_ids",
        "log_extra",
        "log_metric",
        "prompts",
        "solution",
        "trainer_state",
    ]
    chat = Prompt(
        "c", ({"role": "user", "content": "q"},), row={"messages": [{"role": "user", "content": "q"}]}
    )
    score_groups(evaluator, [(chat, completions("c", "4"))], timeout=5)
    assert "messages" in seen  # a column of the user's: passed as TRL passes every column


def test_verl_compute_score_gets_a_dict_for_extra_info_as_verl_gives_it():
    seen = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        seen.append(extra_info)
        return float(extra_info.get("split", "train") == "train")

    evaluator = as_evaluator(compute_score, "compute_score")
    assert evaluator.kind == "verl"
    group = [
        (Prompt("v", ({"role": "user", "content": "q"},), row={"ground_truth": "4"}), completions("v", "4"))
    ]
    assert score_groups(evaluator, group, timeout=5) == [[Score(1.0)]] and seen == [{}]
    with pytest.raises(TypeError, match="a dict without a 'score' key \\(its keys: reward\\)"):
        to_score({"reward": 1.0})  # verl itself fails on it (KeyError: 'score')


def test_async_pointwise_and_concurrency_limit():
    active = 0
    peak = 0

    async def slow(completion: str, **_):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return len(completion)

    groups = [(prompt(str(i), None), completions(str(i), "ab", "abc")) for i in range(5)]
    scores = score_groups(as_evaluator(slow, "slow"), groups, max_concurrency=3, timeout=5)
    assert [[s.score for s in g] for g in scores] == [[2.0, 3.0]] * 5
    assert peak == 3


def test_sync_calls_run_in_threads_up_to_the_limit():
    lock = threading.Lock()
    active = 0
    peak = 0

    def slow(completion: str) -> float:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.03)
        with lock:
            active -= 1
        return 1.0

    groups = [(prompt(str(i), None), completions(str(i), "x", "y")) for i in range(4)]
    scores = score_groups(as_evaluator(slow, "slow"), groups, max_concurrency=2, timeout=5)
    assert all(s == Score(1.0) for g in scores for s in g)
    assert peak == 2


def test_header_concurrency_is_the_default_limit():
    active = 0
    peak = 0

    @evaluation_test(max_concurrent_evaluations=1)
    async def one_at_a_time(row: EvaluationRow) -> EvaluationRow:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        row.evaluation_result = EvaluateResult(score=1.0)
        return row

    groups = [(prompt("a", None), completions("a", "x", "y", "z"))]
    score_groups(as_evaluator(one_at_a_time, "one"), groups, timeout=5)
    assert peak == 1


def test_exceptions_and_timeouts_become_invalid_scores_and_the_rest_goes_on():
    release = threading.Event()

    def flaky(completion: str) -> float:
        if completion == "boom":
            raise ValueError("cannot parse 'boom'")
        if completion == "hang":
            release.wait(30)
            return 1.0
        return 0.75

    groups = [(prompt("a", None), completions("a", "fine", "boom", "hang", "fine"))]
    try:
        [scores] = score_groups(as_evaluator(flaky, "flaky"), groups, max_concurrency=4, timeout=0.3)
    finally:
        release.set()
    assert scores[0] == Score(0.75) and scores[3] == Score(0.75)
    assert scores[1] == Score(0.0, is_valid=False, reason="ValueError: cannot parse 'boom'")
    assert scores[2] == Score(0.0, is_valid=False, reason="timeout after 0.3s")


def test_async_timeout_and_groupwise_failures():
    @evaluation_test(mode="groupwise")
    async def stuck(rows: list[EvaluationRow]) -> list[EvaluationRow]:
        if rows[0].ground_truth == "slow":
            await asyncio.sleep(30)
        if rows[0].ground_truth == "short":
            return rows[:1]
        raise KeyError("missing")

    groups = [
        (prompt("s", "slow"), completions("s", "a", "b")),
        (prompt("t", "short"), completions("t", "a", "b")),
        (prompt("k", "key"), completions("k", "a")),
    ]
    scores = score_groups(as_evaluator(stuck, "stuck"), groups, timeout=0.2)
    assert scores[0] == [Score(0.0, is_valid=False, reason="timeout after 0.2s")] * 2
    assert scores[1][0].reason == "groupwise evaluator returned 1 rows for 2 completions"
    assert scores[2] == [Score(0.0, is_valid=False, reason="KeyError: 'missing'")]


def test_unusable_results_are_invalid():
    def bad(completion: str):
        return {"nan": float("nan"), "text": "high", "none": None, "row": EvaluationRow()}[completion]

    [scores] = score_groups(
        as_evaluator(bad, "bad"), [(prompt("a", 0), completions("a", "nan", "text", "none", "row"))]
    )
    assert scores[0] == Score(0.0, is_valid=False, reason="score is nan")
    assert scores[1].reason == "TypeError: evaluator returned str, not a score, row or EvaluateResult"
    assert scores[2].reason == "TypeError: evaluator returned NoneType, not a score, row or EvaluateResult"
    assert scores[3].reason == "the evaluator set no evaluation_result on the row"
    assert not any(s.is_valid for s in scores)


def test_to_score_accepts_the_documented_shapes():
    assert to_score(True) == Score(1.0)
    assert to_score((0.5, "half")) == Score(0.5, reason="half")
    assert to_score(
        {"score": 0.2, "is_score_valid": False, "error": "x", "metrics": {"m": {"score": 1}}}
    ) == Score(0.2, is_valid=False, reason="x")
    assert to_score({"score": 0.2, "metrics": {"m": {"score": 1}}}).metrics == {"m": 1.0}
    result = EvaluateResult(score=0.9, reason="good", metrics={"a": 0.5})
    assert to_score(result) == Score(0.9, reason="good") and to_score(result).metrics == {"a": 0.5}


def test_to_score_refuses_what_would_break_the_group_statistics():
    assert to_score(1e12) == Score(1e12)
    for huge in (1e13, -1e13, float("inf"), float("nan")):
        score = to_score({"score": huge})
        assert not score.is_valid and score.score == 0.0, huge
    with pytest.raises(TypeError, match="score must be a number, not bool"):
        to_score({"score": True})  # (a bare True is the documented pass: 1.0)


def test_score_groups_works_inside_a_running_event_loop():
    ev = Evaluator(name="len", fn=lambda completion: len(completion), kind="plain")

    async def main():
        return score_groups(ev, [(prompt("a", None), completions("a", "abc"))], timeout=5)

    assert asyncio.run(main()) == [[Score(3.0)]]


def test_bad_limits_are_clear_errors():
    ev = Evaluator(name="one", fn=lambda completion: 1.0, kind="plain")
    group = [(prompt("a", None), completions("a", "x"))]
    with pytest.raises(EvaluatorError, match="timeout must be > 0"):
        score_groups(ev, group, timeout=0)
    with pytest.raises(EvaluatorError, match="must be >= 1, not -2"):
        score_groups(ev, group, max_concurrency=-2)


def test_check_invalid_rate_and_summary():
    ok, bad = Score(1.0, metrics={"m": 1.0}), Score(0.0, is_valid=False, reason="ValueError: nope")
    check_invalid_rate([[ok, bad], [ok, bad]])  # exactly half: allowed
    with pytest.raises(
        EvaluatorError, match=r"3 of 5 evaluator scores are invalid .* one example: ValueError: nope"
    ):
        check_invalid_rate([ok, bad, bad, bad, Score(0.5)])
    check_invalid_rate([])
    stats = summarize([[ok, bad], [Score(0.0, metrics={"m": 0.0})]])
    assert stats["reward/count"] == 3 and stats["reward/invalid_count"] == 1
    assert math.isclose(stats["reward/invalid_frac"], 1 / 3)
    assert stats["reward/mean"] == 0.5 and stats["reward/std"] == 0.5
    assert stats["reward/m"] == 0.5
    assert (stats["reward/min"], stats["reward/max"]) == (0.0, 1.0)
    evaluation = summarize([Score(0.25, metrics={"m": 1.0})], prefix="eval")
    assert evaluation["eval/mean"] == 0.25 and evaluation["eval/m"] == 1.0
    assert summarize([bad])["reward/mean"] == 0.0 and summarize([bad])["reward/invalid_frac"] == 1.0


def test_verl_reward_functions_get_the_response_as_solution_str_and_reward_model_ground_truth():
    path = EVALS / "verl_rewards.py"
    row = {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "q"}], "ability": "math",
           "reward_model": {"style": "rule", "ground_truth": "72"}, "extra_info": {"split": "train", "index": 0}}  # fmt: skip
    verl = Prompt("v", ({"role": "user", "content": "q"},), row=row)
    texts = ["so #### 72", "#### 71", "no answer"]
    group = [(verl, completions("v", *texts))]
    assert load_evaluator(str(path)).name == "compute_score"  # verl's default function name, found alone
    for name, expected in [("compute_score", [1.0, 0.1, 0.0]), ("builtin_gsm8k", [1.0, 0.0, 0.0])]:
        evaluator = load_evaluator(f"{path}::{name}")
        assert evaluator.kind == "verl"
        assert [s.score for s in score_groups(evaluator, group, timeout=5)[0]] == expected
    details = score_groups(load_evaluator(f"{path}::with_details"), group, timeout=5)[0]
    assert [(s.score, s.metrics) for s in details[:2]] == [(1.0, {"acc": 1.0}), (0.0, {"acc": 0.0})]
    flat = Prompt("f", verl.messages, row={"ground_truth": "72", "extra_info": {"split": "train"},
                                            "data_source": "openai/gsm8k"})  # fmt: skip
    assert score_groups(load_evaluator(f"{path}::compute_score"), [(flat, completions("f", "#### 72"))],
                        timeout=5)[0][0].score == 1.0  # fmt: skip


def test_the_invalid_rate_hint_names_the_timeout_flag_only_when_calls_timed_out():
    broken = [Score(0.0, is_valid=False, reason="ModuleNotFoundError: No module named 'scipy'")] * 3
    with pytest.raises(EvaluatorError) as caught:
        check_invalid_rate(broken)
    assert "timeout" not in caught.value.hint and "openrft evaluate" in caught.value.hint
    slow = [Score(0.0, is_valid=False, reason="timeout after 60s"), *broken[:2]]
    with pytest.raises(EvaluatorError) as caught:
        check_invalid_rate(slow, timeout_flag="--timeout")
    assert caught.value.hint.startswith("1 of them timed out: raise --timeout")


def test_too_many_invalid_candidates_from_failed_agent_runs_name_the_agent():
    from dataclasses import replace

    from openrft.train.setup import _blame_agent

    error = EvaluatorError("4 of 4 evaluator scores are invalid (more than 50%); one example: x", hint="h")
    runs = completions("a", "", "", "", "ok")
    failed = [replace(c, error="agent: ValueError: no tools") for c in runs[:3]] + runs[3:]
    failed[0] = replace(failed[0], error="agent: " + "Traceback line\n" * 300)
    blamed = _blame_agent(error, failed, 3)
    assert blamed.message.startswith("3 of 4 agent runs failed") and len(blamed.message) < 500
    assert "--max-context-length" in blamed.hint and "evaluate" not in blamed.hint
    assert _blame_agent(error, runs, 3) is error  # the evaluator's own invalid scores: its message stands
    assert _blame_agent(error, failed[:1] + runs[1:], 3) is error  # 1 agent failure of 3 invalid


def test_a_plain_evaluator_gets_the_row_fields_it_names_and_never_a_second_completion():
    from openrft.evaluators.runner import plain_kwargs, required_parameters

    row = Prompt("p", ({"role": "user", "content": "q"},), {"completion": "ref", "ground_truth": 3, "x": 1})
    taken = plain_kwargs(lambda completion, **fields: 0, row)  # TRL datasets have a `completion` column
    assert "completion" not in taken and taken["ground_truth"] == 3 and taken["prompt_id"] == "p"

    def keyword_only(completion, *, ground_truth):
        return 0

    assert plain_kwargs(keyword_only, row) == {"ground_truth": 3}

    def optional(completion, ground_truth, bonus=1.0):
        return 0

    assert required_parameters(optional) == ("ground_truth",)  # a column with a default may be absent
