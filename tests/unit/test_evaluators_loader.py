"""Loading evaluators from specs: each form, headers, and clear errors for broken files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from openrft.errors import EvaluatorError
from openrft.evaluators import load_evaluator
from openrft.evaluators.loader import default_evaluator_name

EVALS = Path(__file__).parent.parent / "fixtures" / "evaluators"
FIXTURES = EVALS.parent


def write(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_own_decorator_file_with_header_and_single_evaluator():
    ev = load_evaluator(str(EVALS / "own_pointwise.py"))
    assert (ev.name, ev.mode, ev.kind) == ("exact_match", "pointwise", "row")
    assert (ev.max_concurrent_rollouts, ev.max_concurrent_evaluations) == (4, 3)
    # The header's relative input_dataset is found next to the evaluator file.
    assert Path(ev.input_dataset).resolve() == (FIXTURES / "tiny_rows.jsonl").resolve()
    assert not ev.is_async


def test_groupwise_async_file_and_explicit_name():
    ev = load_evaluator(f"{EVALS / 'own_groupwise.py'}::shortest_correct")
    assert (ev.name, ev.mode, ev.is_async) == ("shortest_correct", "groupwise", True)
    assert ev.max_concurrent_evaluations is None and ev.input_dataset is None


def test_plain_function_file_ignores_private_helpers():
    ev = load_evaluator(str(EVALS / "plain_reward.py"))
    assert (ev.name, ev.kind, ev.mode) == ("reward", "plain", "pointwise")


def test_a_function_the_file_imports_is_not_one_of_its_evaluators(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from openrft.evaluators.builtin import score_arithmetic\n\n"
                    "def reward(completion, ground_truth=None):\n    return 1.0 if score_arithmetic(completion, ground_truth).score else 0.0\n")  # fmt: skip
    assert load_evaluator(str(path)).name == "reward"  # (it said: 2 evaluators, name one)


def test_module_colon_function(monkeypatch):
    monkeypatch.syspath_prepend(str(EVALS))
    ev = load_evaluator("two_plain:match_reward")
    assert (ev.name, ev.kind) == ("match_reward", "plain")
    with pytest.raises(EvaluatorError, match="importing the evaluator no_such_module_xyz failed"):
        load_evaluator("no_such_module_xyz:f")
    with pytest.raises(EvaluatorError, match="two colons") as caught:  # file.py:function, one colon short
        load_evaluator(f"{EVALS / 'two_plain.py'}:match_reward")
    assert caught.value.hint == f"--evaluator {EVALS / 'two_plain.py'}::match_reward"


def test_builtins_and_defaults(tmp_path):
    assert load_evaluator("arithmetic").name == "arithmetic"
    assert load_evaluator("gsm8k").name == "gsm8k"
    assert load_evaluator(None).name == "arithmetic"
    assert default_evaluator_name("arithmetic:digits=2") == "arithmetic"
    gsm = write(tmp_path, "g.jsonl", '{"question": "q", "answer": "#### 1"}\n')
    assert load_evaluator(None, dataset=gsm).name == "gsm8k"
    with pytest.raises(EvaluatorError, match="no evaluator given"):
        load_evaluator(None, dataset=str(FIXTURES / "tiny_rows.jsonl"))
    with pytest.raises(EvaluatorError, match="unknown evaluator 'nonsense'"):
        load_evaluator("nonsense")


def test_more_than_one_candidate_needs_a_name():
    with pytest.raises(
        EvaluatorError, match=r"has 2 evaluators \(length_reward, match_reward\): name one"
    ) as info:
        load_evaluator(str(EVALS / "two_plain.py"))
    assert "::length_reward" in info.value.hint
    assert load_evaluator(f"{EVALS / 'two_plain.py'}::length_reward").name == "length_reward"


def test_broken_files_fail_at_load_with_clear_messages(tmp_path):
    with pytest.raises(EvaluatorError, match="evaluator file not found"):
        load_evaluator(str(tmp_path / "missing.py"))

    bad_syntax = write(tmp_path, "syntax.py", "def reward(completion):\n    return (1\n")
    with pytest.raises(EvaluatorError, match=r"syntax\.py:2: syntax error in the evaluator"):
        load_evaluator(bad_syntax)

    raises = write(tmp_path, "raises.py", "x = 1\nraise RuntimeError('no config found')\n")
    with pytest.raises(EvaluatorError, match=r"failed \(line 2\): RuntimeError: no config found"):
        load_evaluator(raises)

    with pytest.raises(EvaluatorError, match="has no function 'nope' \\(evaluators found there: reward\\)"):
        load_evaluator(f"{EVALS / 'plain_reward.py'}::nope")

    empty = write(tmp_path, "empty.py", "def helper(x):\n    return x\n")
    with pytest.raises(EvaluatorError, match="no evaluator found"):
        load_evaluator(empty)

    wrong = write(
        tmp_path,
        "wrong.py",
        """
        from openrft import evaluation_test

        @evaluation_test(mode="pointwise")
        def judge(row, extra):
            return row
        """,
    )
    with pytest.raises(
        EvaluatorError, match=r"wrong\.py: pointwise evaluator 'judge' must take one argument"
    ):
        load_evaluator(wrong)

    no_args = write(tmp_path, "noargs.py", "def reward():\n    return 1.0\n")
    with pytest.raises(EvaluatorError, match="wrong signature"):
        load_evaluator(f"{no_args}::reward")

    not_function = write(tmp_path, "value.py", "reward = 3\n")
    with pytest.raises(EvaluatorError, match="'reward' is not a function"):
        load_evaluator(f"{not_function}::reward")


def test_evaluator_file_can_import_a_sibling_module(tmp_path):
    write(tmp_path, "helpers_sibling_mod.py", "BONUS = 0.25\n")
    path = write(
        tmp_path,
        "uses_sibling.py",
        """
        from helpers_sibling_mod import BONUS

        def reward(completion: str, **row) -> float:
            return BONUS
        """,
    )
    ev = load_evaluator(path)
    assert ev.fn("anything") == 0.25


def test_a_decorated_evaluator_chosen_over_plain_ones_is_said_and_all_are_offered_by_name(tmp_path):
    from openrft.evaluators.loader import passed_over_note

    source = """
        from openrft.evaluators import evaluation_test

        @evaluation_test(mode="pointwise")
        def exact(row):
            return row

        def reward(completion: str, **row) -> float:
            return 1.0

        def accuracy(completions, **columns):
            return [1.0 for _ in completions]

        def parse_answer(completion: str) -> int:  # a helper: it takes no row field
            return int(completion)
    """
    path = write(tmp_path, "my_eval.py", textwrap.dedent(source))
    chosen = load_evaluator(path)
    assert chosen.name == "exact" and chosen.passed_over == ("accuracy", "reward")
    note = passed_over_note(chosen)
    assert note.startswith(f"--evaluator {path}: scoring with exact(), the file's decorated evaluator")
    assert "(accuracy, reward) are not used" in note
    with pytest.raises(
        EvaluatorError, match=r"evaluators found there: accuracy, exact, parse_answer, reward\)"
    ):
        load_evaluator(f"{path}::score")
    assert passed_over_note(load_evaluator(f"{path}::reward")) is None  # named: nothing passed over
