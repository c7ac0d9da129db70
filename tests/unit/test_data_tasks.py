"""Built-in tasks: arithmetic generation and the GSM8K adapter on real GSM8K rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openrft.data import load_prompts
from openrft.data.tasks import arithmetic, gsm8k
from openrft.errors import DataError

GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"
if not GSM8K_TRAIN.exists():
    GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")

QUESTION_RE = re.compile(r"What is (\d+) ([+\-*]) (\d+)\? Put the answer in <answer><\/answer> tags\.")


def test_arithmetic_rows_are_seeded_and_answers_right():
    task = arithmetic.ArithmeticTask(count=200, digits=2, ops="+-*")
    rows = arithmetic.generate_rows(task, seed=5)
    assert rows == arithmetic.generate_rows(task, seed=5)
    assert rows != arithmetic.generate_rows(task, seed=6)
    ops_seen = set()
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        assert "<answer></answer>" in row["messages"][0]["content"]
        a, op, b = QUESTION_RE.fullmatch(row["messages"][-1]["content"]).groups()
        a, b = int(a), int(b)
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert row["ground_truth"] == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert row["ground_truth"] >= 0
        ops_seen.add(op)
    assert ops_seen == {"+", "-", "*"}
    assert len({r["id"] for r in rows}) == 200


def test_arithmetic_one_digit_and_few_shot_examples():
    rows = arithmetic.generate_rows(arithmetic.ArithmeticTask(count=30, few_shot=2), seed=0)
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        example_q, example_a = row["messages"][1]["content"], row["messages"][2]["content"]
        a, op, b = QUESTION_RE.fullmatch(example_q).groups()
        assert op == "+"
        assert example_a == f"{a} + {b} = {int(a) + int(b)}. <answer>{int(a) + int(b)}</answer>"
        a, _, b = QUESTION_RE.fullmatch(row["messages"][-1]["content"]).groups()
        assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9


def test_arithmetic_source_options_and_errors():
    prompts = load_prompts("arithmetic:digits=3,ops=*,count=7,few_shot=1", seed=2)
    assert len(prompts) == 7
    # The worked example sits inside the prompt (it is not a trailing assistant message).
    assert [m["role"] for m in prompts[0].messages] == ["system", "user", "assistant", "user"]
    a, op, b = QUESTION_RE.fullmatch(prompts[0].messages[-1]["content"]).groups()
    assert op == "*" and prompts[0].ground_truth == int(a) * int(b) and len(a) == 3
    assert load_prompts("arithmetic", seed=2, limit=3)[0].prompt_id == "arithmetic-2-0"
    with pytest.raises(DataError, match="not understood"):
        load_prompts("arithmetic:colour=red")
    with pytest.raises(DataError, match="ops must be made of"):
        load_prompts("arithmetic:ops=/")
    with pytest.raises(DataError, match="whole number"):
        load_prompts("arithmetic:count=lots")


# ----------------------------------------------------------------------------- GSM8K


def test_number_extraction():
    assert gsm8k.extract_answer("so <answer>1,234</answer>") == ("1234", "tags")
    assert gsm8k.extract_answer("<answer>7</answer> then <answer> $18.00. </answer>") == ("18", "tags")
    assert gsm8k.extract_answer("48 + 24 = 72\n#### 72") == ("72", "hashes")
    assert gsm8k.extract_answer("#### $1,000.") == ("1000", "hashes")
    assert gsm8k.extract_answer("She earns 12 - 2 = 10 dollars.") == ("10", "last_number")
    assert gsm8k.extract_answer("It dropped to -5 degrees") == ("-5", "last_number")
    assert gsm8k.extract_answer("no digits here") == (None, "none")
    # Empty tags fall back to the other rules.
    assert gsm8k.extract_answer("<answer></answer> #### 3") == ("3", "hashes")
    assert gsm8k.numbers_equal("18.0", "18") and gsm8k.numbers_equal("0.5", ".5")
    assert not gsm8k.numbers_equal("17", "18") and not gsm8k.numbers_equal(None, "1")


def test_adapt_row_and_bad_rows():
    row = gsm8k.adapt_row({"question": " How many? ", "answer": "2+2=4\n#### 1,004"})
    assert row["ground_truth"] == "1004" and row["task"] == "gsm8k"
    assert row["messages"][-1] == {"role": "user", "content": "How many?"}
    assert row["question"] == " How many? "
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k.adapt_row({"question": "q", "answer": "no final line"})


@pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason="GSM8K train.jsonl not available")
def test_real_gsm8k_rows_adapt_and_their_solutions_score_correct():
    prompts = load_prompts(str(GSM8K_TRAIN), limit=300)
    assert len(prompts) == 300 and prompts.skipped == 0
    raw = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:300]]
    for prompt, original in zip(prompts, raw, strict=True):
        assert prompt.messages[-1]["content"] == original["question"].strip()
        expected = original["answer"].split("####")[-1].strip().replace(",", "")
        assert prompt.ground_truth == expected
        # The reference solution itself ends with '#### N': extraction must find N.
        number, where = gsm8k.extract_answer(original["answer"])
        assert where == "hashes" and gsm8k.numbers_equal(number, prompt.ground_truth)
        # The same number in tags, with a '$' and thousands separators, is also found.
        value = int(float(expected))
        number, where = gsm8k.extract_answer(f"Total: <answer>${value:,}.</answer>")
        assert where == "tags" and gsm8k.numbers_equal(number, prompt.ground_truth)
    assert prompts[0].ground_truth == "72"
    assert prompts[0].prompt_id == "1"
