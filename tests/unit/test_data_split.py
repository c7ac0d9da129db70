"""Evaluation carve-out and per-epoch order: deterministic, disjoint, stable."""

from __future__ import annotations

import pytest

from openrft.data import epoch_order, split_carveout
from openrft.errors import DataError
from openrft.records import Prompt


def prompts(n: int, start: int = 0) -> list[Prompt]:
    return [
        Prompt(prompt_id=f"p{i}", messages=({"role": "user", "content": str(i)},)) for i in range(start, n)
    ]


def ids(ps):
    return [p.prompt_id for p in ps]


def test_carveout_is_deterministic_disjoint_and_sized():
    data = prompts(100)
    train, held = split_carveout(data, 0.1, seed=7)
    assert len(held) == 10 and len(train) == 90
    assert set(ids(train)).isdisjoint(ids(held))
    assert set(ids(train)) | set(ids(held)) == set(ids(data))
    # Input order is kept in both parts.
    assert ids(train) == sorted(ids(train), key=lambda s: int(s[1:]))
    assert split_carveout(data, 0.1, seed=7) == (train, held)
    other_train, other_held = split_carveout(data, 0.1, seed=8)
    assert ids(other_held) != ids(held)


def test_carveout_is_stable_when_rows_are_added():
    _, held = split_carveout(prompts(100), 0.1, seed=3)
    _, held_more = split_carveout(prompts(110), 0.1, seed=3)
    # Rows are ranked by a hash of (seed, id): adding rows only moves the cut-off, so the
    # 10 held out of the first 100 rows stay held out (for this seed the 11th is a new row).
    assert len(held_more) == 11
    assert set(ids(held)) <= set(ids(held_more))


def test_carveout_keeps_one_on_each_side():
    train, held = split_carveout(prompts(2), 0.01, seed=0)
    assert len(train) == 1 and len(held) == 1
    with pytest.raises(DataError, match="cannot carve"):
        split_carveout(prompts(1), 0.1, seed=0)
    with pytest.raises(DataError, match="between 0 and 1"):
        split_carveout(prompts(5), 1.5, seed=0)


def test_epoch_order_is_a_permutation_reshuffled_each_epoch():
    orders = [epoch_order(50, epoch, seed=42) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(50))
    assert orders[0] != orders[1] != orders[2]
    assert epoch_order(50, 1, seed=42) == orders[1]
    assert epoch_order(50, 1, seed=43) != orders[1]
    assert epoch_order(0, 0, seed=1) == []


def test_quickstart_datasets_leave_whole_rounds_after_the_carve_out():
    """A quickstart of R rounds of C prompts asks for exactly the rows that leave R*C to train on."""
    from openrft.jobs.quickstart import dataset_rows

    for train in range(1, 200):
        for fraction in (0.05, 0.1, 0.2, 0.33):
            rows = dataset_rows(train, fraction)
            prompts = [type("P", (), {"prompt_id": f"row-{i}"})() for i in range(rows)]
            assert len(split_carveout(prompts, fraction, seed=7)[0]) == train
            assert rows == train + 1 or len(split_carveout(prompts[:-1], fraction, seed=7)[0]) < train
    assert (dataset_rows(18 * 8, 0.1), dataset_rows(8 * 8, 0.2)) == (
        160,
        80,
    )  # 161 and 81 gave a 1-prompt round


@pytest.mark.parametrize("rounds", ["0", "-3", "two"])
def test_quickstart_refuses_rounds_that_are_not_a_whole_number_above_zero(rounds, capsys):
    from openrft.cli import main

    with pytest.raises(SystemExit) as stop:  # before anything is built (0 ran the full default job)
        main(["quickstart", "--rounds", rounds])
    assert stop.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_a_question_asked_by_several_rows_is_held_out_whole_or_trained_on_whole():
    asked = [
        Prompt(prompt_id=f"r{i}", messages=({"role": "user", "content": f"{i % 7} + 1?"},)) for i in range(40)
    ]
    train, held = split_carveout(asked, 0.1, seed=7)
    trained = {p.messages[0]["content"] for p in train}
    assert trained.isdisjoint(p.messages[0]["content"] for p in held)  # never a trained question
    assert len(held) in (5, 6) and len(train) + len(held) == 40  # one question's rows: 4 asked, 5 or 6 held
    assert split_carveout(asked, 0.1, seed=7) == (train, held)
    same = [Prompt(prompt_id=f"s{i}", messages=({"role": "user", "content": "hi"},)) for i in range(5)]
    train, held = split_carveout(same, 0.2, seed=7)  # one question: only rows can be held out
    assert (len(train), len(held)) == (4, 1)


def test_the_quickstarts_held_out_problems_are_never_trained_on_and_its_rounds_stay_whole():
    """Single-digit sums repeat (81 questions): the quickstart's count is found by splitting its rows."""
    from openrft.data import load_prompts
    from openrft.data.split import question
    from openrft.jobs.quickstart import QUICKSTART_FLAGS, dataset_rows

    def prompts_of(rows: int):
        return load_prompts(f"arithmetic:digits=1,ops=+,count={rows}", seed=int(QUICKSTART_FLAGS["seed"]))

    seed = int(QUICKSTART_FLAGS["seed"])
    rows = dataset_rows(18 * 8, 0.1, prompts_of, seed=seed)
    train, held = split_carveout(prompts_of(rows), float(QUICKSTART_FLAGS["eval_auto_carveout"]), seed=seed)
    assert len(train) == 18 * 8 and len(held) >= 16
    assert {question(p) for p in train}.isdisjoint(question(p) for p in held)


def test_a_question_too_large_for_the_hold_out_is_passed_over_and_else_the_smallest_is_held():
    def rows(counts):
        return [Prompt(prompt_id=f"q{q}-{k}", messages=({"role": "user", "content": f"question {q}"},))
                for q, count in enumerate(counts) for k in range(count)]  # fmt: skip

    train, held = split_carveout(rows([30] + [1] * 10), 0.1, seed=7)  # asked 4 of 40
    assert len(held) == 4 and {p.messages[0]["content"] for p in held}.isdisjoint(
        p.messages[0]["content"] for p in train
    )  # four single questions, never the one asked 30 times
    train, held = split_carveout(rows([10, 10, 12, 8]), 0.1, seed=7)  # every question over 4 + 2 rows
    assert len(held) == 8 and len(train) == 32  # the smallest question, whole
