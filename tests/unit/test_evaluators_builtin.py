"""Built-in evaluators: graded arithmetic scores and GSM8K answers on real GSM8K rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.data import load_prompts
from openrft.evaluators import (
    arithmetic_evaluator,
    load_evaluator,
    score_arithmetic,
    score_groups,
    score_gsm8k,
)
from openrft.records import Completion

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")
for parent in Path(__file__).resolve().parents:
    if (parent / "shared" / "data" / "gsm8k" / "train.jsonl").exists():
        GSM8K_TRAIN = parent / "shared" / "data" / "gsm8k" / "train.jsonl"
        break


def completion(text: str, index: int = 0) -> Completion:
    return Completion("p", index, (), (), text, (), "stop")


@pytest.mark.parametrize(
    ("text", "score", "correct_in_tags", "fmt"),
    [
        ("3 + 4 = 7. <answer>7</answer>", 1.0, 1, 1),  # format 0.2 + correct 0.8
        ("<answer> 7 </answer>", 1.0, 1, 1),
        ("<answer>3 + 4 = 7</answer>", 1.0, 1, 1),  # the last number inside the tags counts
        ("<answer>8</answer>", 0.2, 0, 1),  # format only
        ("The answer is 7.", 0.1, 0, 0),  # partial: right last number, no tags
        ("<answer>8</answer> no wait, 7", 0.3, 0, 1),  # format + partial
        ("<answer>7</answer><answer>7</answer>", 0.8, 1, 0),  # correct but the tags twice
        ("<answer>5</answer> no, <answer>7</answer>", 0.8, 1, 0),  # the last pair is the answer
        ("<answer>7</answer> no, <answer>5</answer>", 0.0, 0, 0),  # ... even when an earlier one was right
        ("<answer>7", 0.1, 0, 0),  # unclosed tag: no format credit, last number right
        ("I do not know", 0.0, 0, 0),
        ("", 0.0, 0, 0),
    ],
)
def test_arithmetic_graded_scores(text, score, correct_in_tags, fmt):
    result = score_arithmetic(text, 7)
    assert result.score == pytest.approx(score)
    assert result.metrics["correct_in_tags"].score == correct_in_tags
    assert result.metrics["format"].score == fmt
    assert 0.0 <= result.score <= 1.0


def test_arithmetic_weights_are_keyword_arguments():
    result = score_arithmetic("<answer>8</answer>", 7, format_weight=0.5, correct_weight=0.5)
    assert result.score == 0.5
    assert score_arithmetic("it is 7", 7, partial_weight=0.0).score == 0.0
    custom = arithmetic_evaluator(format_weight=0.0, correct_weight=1.0)
    prompt = load_prompts("arithmetic", seed=1, limit=1)[0]
    answer = prompt.ground_truth
    [[right, wrong]] = score_groups(
        custom, [(prompt, [completion(f"<answer>{answer}</answer>"), completion("<answer>-1</answer>", 1)])]
    )
    assert (right.score, wrong.score) == (1.0, 0.0)


def test_arithmetic_evaluator_on_generated_prompts_spreads_scores():
    evaluator = load_evaluator("arithmetic")
    prompts = load_prompts("arithmetic:ops=+-*,digits=2", seed=3, limit=20)
    groups = []
    for p in prompts:
        truth = p.ground_truth
        texts = [f"<answer>{truth}</answer>", f"so {truth}", f"<answer>{truth + 1}</answer>", "no idea"]
        groups.append((p, [completion(t, i) for i, t in enumerate(texts)]))
    scores = score_groups(evaluator, groups)
    assert all([s.score for s in g] == pytest.approx([1.0, 0.1, 0.2, 0.0]) for g in scores)
    assert all(s.reason for g in scores for s in g)


def test_gsm8k_scores():
    assert score_gsm8k("so <answer>1,000</answer>", "1000").score == pytest.approx(1.0)
    assert score_gsm8k("#### $72", "72").score == pytest.approx(1.0)
    assert score_gsm8k("#### 72", "72").metrics["correct_in_tags"].score == 0.0  # right, but not in tags
    assert score_gsm8k("<answer>72</answer>", "72").metrics["correct_in_tags"].score == 1.0
    assert score_gsm8k("the result is 72.", "72").score == pytest.approx(0.9)
    assert score_gsm8k("<answer>71</answer>", "72").score == pytest.approx(0.1)
    result = score_gsm8k("nothing", "72")
    assert result.score == 0.0 and result.reason == "no number found"
    assert result.metrics["correct"].score == 0.0


@pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason="GSM8K train.jsonl not available")
def test_gsm8k_evaluator_on_real_rows():
    evaluator = load_evaluator(None, dataset=str(GSM8K_TRAIN))
    assert evaluator.name == "gsm8k"
    prompts = load_prompts(str(GSM8K_TRAIN), limit=50)
    raw = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:50]]
    groups = []
    for p, original in zip(prompts, raw, strict=True):
        value = float(p.ground_truth)
        texts = [
            original["answer"],  # the reference solution, ending in '#### N'
            f"Working...\n<answer>{value:,.2f}</answer>",
            f"<answer>{value + 1:g}</answer>",
        ]
        groups.append((p, [completion(t, i) for i, t in enumerate(texts)]))
    scores = score_groups(evaluator, groups)
    for group in scores:
        assert [s.score for s in group] == pytest.approx([1.0, 1.0, 0.1])
        assert [s.metrics["correct"] for s in group] == [1.0, 1.0, 0.0]


def test_empty_answer_tags_are_not_the_format():
    from openrft.evaluators.builtin import score_arithmetic

    echoed = score_arithmetic("To put 0 + 4 in <answer></answer> tags, add them: 4", 4)
    assert echoed.metrics["format"].score == 0.0 and echoed.score == pytest.approx(0.1)
    good = score_arithmetic("0 + 4 = 4. <answer>4</answer>", 4)
    assert good.metrics["format"].score == 1.0 and good.score == pytest.approx(1.0)


def test_builtin_weights_as_spec_options():
    from openrft.errors import EvaluatorError
    from openrft.evaluators.loader import load_evaluator

    strict = load_evaluator("arithmetic:partial_weight=0, format_weight=0.3")
    assert strict.fn("3 + 4 = 7", 7).score == 0.0
    assert strict.fn("<answer>8</answer>", 7).score == pytest.approx(0.3)
    assert load_evaluator("arithmetic").fn("3 + 4 = 7", 7).score == pytest.approx(0.1)
    with pytest.raises(EvaluatorError, match="unknown option 'speed'"):
        load_evaluator("arithmetic:speed=1")
    with pytest.raises(EvaluatorError, match="must be a number"):
        load_evaluator("gsm8k:format_weight=high")
