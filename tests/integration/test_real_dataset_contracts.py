"""What a user converting a real dataset (GSM8K) trips on: a whole GSM8K solution as ``ground_truth``
is scored by its final answer; an object, a list or a boolean there is refused when the job is created;
rows with and without ids mix; and an evaluator's sibling modules are imported without a ``__pycache__``
left in the user's folder (a ``--dry-run`` changes nothing of theirs), even where Python would write one."""

from __future__ import annotations

import json
import subprocess
import sys

from openrft.cli import main
from openrft.data.jsonl import prompts_from_rows
from openrft.evaluators.builtin import score_gsm8k

SOLUTION = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72"


def test_a_whole_gsm8k_solution_as_ground_truth_is_scored_by_its_final_answer():
    right = score_gsm8k("She sold <answer>72</answer>", SOLUTION)
    assert right.metrics["correct"].score == 1.0 and right.score == 1.0
    assert score_gsm8k("She sold <answer>48</answer>", SOLUTION).metrics["correct"].score == 0.0
    assert score_gsm8k("<answer>1000</answer>", "#### 1,000").metrics["correct"].score == 1.0


def _rows(tmp_path, *ground_truths):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "ground_truth": g})
             for i, g in enumerate(ground_truths)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_ground_truth_that_is_no_answer_is_refused_at_creation(tmp_path, capsys):
    for value, said in (({"unit": "boxes", "answer": "72"}, "holds an object, not an answer (--reference-field "
                         "ground_truth.answer reads it)"), ([72, "72"], "holds a list"), (True, "holds a boolean")):  # fmt: skip
        rows = _rows(tmp_path, SOLUTION, value)
        code = main(["rftj", "create", "--dataset", str(rows), "--evaluator", "gsm8k", "--dry-run"])
        err = capsys.readouterr().err
        assert code == 2 and f"rows.jsonl: ground_truth {said}" in err, err
    assert main(["rftj", "create", "--dataset", str(_rows(tmp_path, SOLUTION, 7, "7")), "--evaluator", "gsm8k",
                 "--dry-run"]) == 0  # fmt: skip


def test_rows_without_an_id_never_take_one_another_row_names_itself_with():
    message = {"messages": [{"role": "user", "content": "q"}]}
    rows = [
        (1, {"id": 3, **message}),
        (2, message),
        (3, message),
        (4, {"id": "line-2", **message}),
        (5, message),
    ]
    loaded = prompts_from_rows(rows, source="rows.jsonl")
    assert [p.prompt_id for p in loaded] == ["3", "2", "line-3", "line-2", "5"]
    assert not loaded.bad_rows


EVALUATOR = """
from helper_mod import answer


def score(completion: str, **row) -> float:
    return float(answer() in completion)
"""


def test_an_evaluators_sibling_module_leaves_no_pycache_even_where_python_would_write_one(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "my_eval.py").write_text(EVALUATOR)
    (folder / "helper_mod.py").write_text("def answer():\n    return '4'\n")
    before = sorted(p.name for p in folder.rglob("*"))
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["OPENRFT_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from openrft.cli import main; sys.exit(main(sys.argv[1:]))", "rftj", "create", "--dataset", "arithmetic:count=4",
         "--evaluator", str(folder / "my_eval.py::score"), "--dry-run"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.rglob("*")) == before  # no __pycache__/helper_mod.*.pyc


def test_a_file_holding_one_reward_kit_or_verl_function_needs_no_name(tmp_path):
    from openrft.evaluators.loader import load_evaluator

    kit = tmp_path / "kit.py"
    kit.write_text("def evaluate(messages, ground_truth=None, **kwargs):\n    return 1.0\n")
    verl = tmp_path / "verl_reward.py"
    verl.write_text(
        "def my_reward(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n"
    )
    mixed = tmp_path / "mixed.py"
    mixed.write_text(
        "def score(completion, **row):\n    return 1.0\n\n\ndef tidy(messages):\n    return messages\n"
    )
    assert load_evaluator(str(kit)).name == "evaluate"
    assert load_evaluator(str(verl)).name == "my_reward"
    assert load_evaluator(str(mixed)).name == "score"  # f(completion, ...) is the evaluator; tidy a helper


def test_eval_refuses_or_skips_a_prompt_longer_than_the_context_before_sampling(
    tiny_model_dir, tmp_path, capsys
):
    rows = tmp_path / "rows.jsonl"
    long = {"messages": [{"role": "user", "content": "word " * 6000}], "ground_truth": 1}
    short = {"messages": [{"role": "user", "content": "1+1?"}], "ground_truth": 2}
    rows.write_text("".join(json.dumps(r) + "\n" for r in (short, long, short)))
    flags = ["eval", "--dataset", str(rows), "--evaluator", "gsm8k", "--base-model", str(tiny_model_dir),
             "--n", "1", "--max-output-tokens", "16"]  # fmt: skip
    assert main(flags) == 2  # bad input, named as at job creation
    err = capsys.readouterr().err
    assert err.startswith("--dataset: ") and "line 2: prompt is" in err, err
    assert "longer than the 4080 allowed" in err
    assert main([*flags, "--skip-bad-rows"]) == 0
    assert "2 prompts x 1 samples" in capsys.readouterr().out


def test_an_evaluator_may_return_numpy_numbers():
    import numpy as np

    from openrft.evaluators.runner import to_score

    assert to_score(np.float32(0.5)).score == 0.5 and to_score(np.float32(0.5)).is_valid
    assert to_score({"score": np.float16(0.25), "metrics": {"len": np.int64(3)}}).metrics == {"len": 3.0}
    assert to_score((np.float64(1.0), "right")).reason == "right"


def test_a_trl_reward_needing_a_column_the_rows_lack_is_refused_at_creation(tmp_path, capsys):
    (tmp_path / "rewards.py").write_text(
        "def accuracy(completions, solution, **kwargs):\n"
        "    return [float(s in c[0]['content']) for c, s in zip(completions, solution)]\n"
    )
    rows = _rows(tmp_path, "72")  # a ground_truth, no solution column
    evaluator = f"{tmp_path / 'rewards.py'}::accuracy"
    code = main(["rftj", "create", "--dataset", str(rows), "--evaluator", evaluator, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "accuracy() needs solution, which every row" in err and "TRL reward function" in err
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"prompt_id": "1", "response": "72"}) + "\n")
    assert (
        main(["evaluate", "--dataset", str(rows), "--evaluator", evaluator, "--responses", str(responses)])
        == 2
    )
    assert "needs solution" in capsys.readouterr().err
    with_solution = tmp_path / "solved.jsonl"
    with_solution.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "q"}], "solution": "72"}) + "\n"
    )
    assert (
        main(["rftj", "create", "--dataset", str(with_solution), "--evaluator", evaluator, "--dry-run"]) == 0
    )
    (tmp_path / "ids.py").write_text(
        "def by_ids(completion_ids, **kwargs):\n    return [len(i) for i in completion_ids]\n"
    )
    capsys.readouterr()
    scored = main(["evaluate", "--dataset", str(rows), "--evaluator", f"{tmp_path / 'ids.py'}::by_ids",
                   "--responses", str(responses)])  # fmt: skip
    assert scored == 0 and "completion_ids are empty lists here" in capsys.readouterr().err


def test_a_dry_run_warns_that_a_trl_rewards_trainer_state_is_none(tmp_path, capsys):
    (tmp_path / "curriculum.py").write_text(
        "def curriculum(completions, trainer_state, **kwargs):\n"
        "    return [float(trainer_state.global_step > 10)] * len(completions)\n"
    )
    evaluator = f"{tmp_path / 'curriculum.py'}::curriculum"
    rows = _rows(tmp_path, "72")
    assert main(["rftj", "create", "--dataset", str(rows), "--evaluator", evaluator, "--dry-run"]) == 0
    assert "curriculum() takes trainer_state, which openrft passes as None" in capsys.readouterr().err
