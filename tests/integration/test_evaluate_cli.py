"""`openrft evaluate` and `openrft data` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrft.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"
EVALS = FIXTURES / "evaluators"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("prompt_id"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line.split(None, 4))
    return rows


def test_evaluate_responses_file_prints_rows_and_summary(capsys, tmp_path):
    out_file = tmp_path / "scores.jsonl"
    code, out, err = run(
        capsys,
        "evaluate",
        "--dataset", FIXTURES / "tiny_rows.jsonl",
        "--evaluator", EVALS / "own_pointwise.py",
        "--responses", FIXTURES / "tiny_responses.jsonl",
        "--output", out_file,
    )  # fmt: skip
    assert code == 0, err
    rows = table(out)
    assert [r[:4] for r in rows] == [
        ["cap-france", "0", "1.000", "yes"],
        ["cap-france", "1", "0.500", "yes"],
        ["cap-france", "2", "0.000", "yes"],
        ["two-plus", "0", "0.500", "yes"],
    ]
    assert rows[1][4] == "contains (geography)"
    assert "exact_match (pointwise): 4 responses for 2 prompts; mean score 0.5000, invalid 0 (0.0%)" in out
    assert "  exact: 0.2500" in out and "  contains: 0.7500" in out
    written = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(w["prompt_id"], w["score"]) for w in written] == [
        ("cap-france", 1.0),
        ("cap-france", 0.5),
        ("cap-france", 0.0),
        ("two-plus", 0.5),
    ]


def test_evaluate_rows_ending_with_assistant_and_header_dataset(capsys):
    # No --dataset: the evaluator header's input_dataset; no --responses: the rows' last assistant message.
    code, out, err = run(capsys, "evaluate", "--evaluator", EVALS / "own_pointwise.py")
    assert code == 0, err
    assert [r[:3] for r in table(out)] == [["cap-peru", "0", "1.000"], ["two-plus", "0", "0.000"]]


def test_evaluate_builtin_arithmetic_on_a_generated_file(capsys, tmp_path):
    data = tmp_path / "arith.jsonl"
    code, out, _ = run(
        capsys, "data", "arithmetic", "--out", data, "--count", "3", "--seed", "4", "--ops", "+*"
    )
    assert code == 0 and f"wrote 3 arithmetic problems to {data}" in out
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "".join(
            json.dumps({"prompt_id": r["id"], "response": text}) + "\n"
            for r in rows
            for text in (f"<answer>{r['ground_truth']}</answer>", "no idea")
        )
    )
    # The evaluator defaults to the rows' task: arithmetic.
    code, out, err = run(capsys, "evaluate", "--dataset", data, "--responses", responses, "--quiet")
    assert code == 0, err
    assert "prompt_id" not in out
    assert "arithmetic (pointwise): 6 responses for 3 prompts; mean score 0.5000" in out
    assert "  correct_in_tags: 0.5000" in out


def test_evaluate_failing_evaluator_reports_and_exits_nonzero(capsys, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(completion: str, **row) -> float:\n    raise ValueError('bad input')\n")
    code, out, err = run(
        capsys,
        "evaluate",
        "--dataset", FIXTURES / "tiny_rows.jsonl",
        "--evaluator", broken,
        "--responses", FIXTURES / "tiny_responses.jsonl",
    )  # fmt: skip
    assert code == 4
    assert "invalid 4 (100.0%)" in out
    assert [r[3] for r in table(out)] == ["NO"] * 4
    assert "4 of 4 evaluator scores are invalid" in err and "ValueError: bad input" in err
    assert "reason is in the table above" in err and "`openrft evaluate" not in err  # not itself again


def test_evaluate_bad_responses_file_names_the_lines(capsys, tmp_path):
    responses = tmp_path / "r.jsonl"
    responses.write_text(
        '{"prompt_id": "cap-france", "response": "Paris"}\n{"prompt_id": "nope", "response": "x"}\n{"response": "y"}\n'
    )
    code, _, err = run(
        capsys,
        "evaluate",
        "--dataset", FIXTURES / "tiny_rows.jsonl",
        "--evaluator", "gsm8k",
        "--responses", responses,
    )  # fmt: skip
    assert code == 2 and err.startswith("--responses: ")  # bad input, named by its flag
    assert "2 malformed response rows" in err
    assert "line 2: prompt_id 'nope' is not in the dataset" in err and "line 3: missing 'prompt_id'" in err
    assert "(its ids: 'cap-france', 'cap-peru', 'two-plus')" in err  # what the dataset's ids look like


def test_data_gsm8k_converts_and_validates(capsys, tmp_path):
    source = tmp_path / "gsm.jsonl"
    rows = [
        {"question": f"What is {i} + {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i:,}"} for i in range(1, 6)
    ]
    source.write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"question": "q", "answer": "no final"}\n'
    )
    out_file = tmp_path / "rows.jsonl"
    code, _, err = run(capsys, "data", "gsm8k", "--input", source, "--out", out_file)
    assert code == 2 and err.startswith("--input: ")  # named by its flag, as rftj create names --dataset
    assert "line 6: GSM8K row: 'answer' has no '####'" in err and not out_file.exists()
    code, out, _ = run(
        capsys, "data", "gsm8k", "--input", source, "--out", out_file, "--skip-bad-rows", "--limit", "4"
    )
    assert code == 0 and "wrote 4 GSM8K rows" in out and "(1 malformed rows skipped)" in out
    written = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [w["ground_truth"] for w in written] == ["2", "4", "6", "8"]
    assert written[0]["messages"][-1]["content"] == "What is 1 + 1?"


def test_help_lists_commands_and_the_cli_module_imports_little():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from openrft.cli import main; main(['--help'])"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "evaluate" in result.stdout and "data" in result.stdout
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, openrft.cli.evaluate; print('asyncio' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert modules.stdout.strip() == "False"


def test_evaluate_reference_field_reads_a_gsm8k_answer(capsys, tmp_path):
    """Rows in the messages shape keep GSM8K's worked solution in 'answer' and have no ground_truth."""
    data = tmp_path / "gsm.jsonl"
    rows = [
        {
            "id": "a",
            "messages": [{"role": "user", "content": "Cost?"}],
            "answer": "10 x 100 = 1000\n#### 1,000",
        },
        {"id": "b", "messages": [{"role": "user", "content": "Count?"}], "answer": "#### 7"},
        {"id": "c", "messages": [{"role": "user", "content": "Other?"}], "answer": 12},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    responses = tmp_path / "responses.jsonl"
    texts = {"a": "<answer>1000</answer>", "b": "<answer>7</answer>", "c": "<answer>12</answer>"}
    responses.write_text(
        "".join(json.dumps({"prompt_id": k, "response": v}) + "\n" for k, v in texts.items())
    )
    argv = ["evaluate", "--dataset", data, "--evaluator", "gsm8k", "--responses", responses]
    code, out, err = run(capsys, *argv)
    assert code == 2 and "gsm8k() needs ground_truth, which every row" in err  # as job creation says
    code, out, err = run(capsys, *argv, "--reference-field", "answer")
    assert code == 0, err
    assert "mean score 1.0000" in out and "  correct: 1.0000" in out
    rows.append({"id": "d", "messages": [{"role": "user", "content": "None?"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, *argv, "--reference-field", "answer")
    assert code == 2 and "line 4: no reference answer in field 'answer' (--reference-field)" in err
    code, out, err = run(capsys, *argv, "--reference-field", "answer", "--skip-bad-rows")
    assert code == 0, err
    assert "mean score 1.0000" in out and "1 malformed dataset rows were skipped:" in out
    assert "  line 4: no reference answer in field 'answer'" in out  # each one listed, with its reason


def test_evaluate_skip_bad_rows_also_skips_bad_response_lines(capsys, tmp_path):
    responses = tmp_path / "r.jsonl"
    responses.write_text(
        '{"prompt_id": "cap-france", "response": "Paris"}\n'
        '{"prompt_id": "nope", "response": "x"}\n'
        "not json\n"
        '{"prompt_id": "cap-france", "text": "Lyon"}\n'
        '{"prompt_id": "two-plus", "response": "<answer>4</answer>"}\n'
        '{"prompt_id": "two-plus", "response": "4"}\n'
    )
    argv = ["evaluate", "--dataset", FIXTURES / "tiny_rows.jsonl", "--evaluator", EVALS / "own_pointwise.py"]
    code, _, err = run(capsys, *argv, "--responses", responses)
    assert code == 2 and "2 malformed response rows" in err and "--skip-bad-rows" in err
    code, out, err = run(capsys, *argv, "--responses", responses, "--skip-bad-rows")
    assert code == 0, err
    assert [r[:2] for r in table(out)] == [
        ["cap-france", "0"],
        ["cap-france", "1"],
        ["two-plus", "0"],
        ["two-plus", "1"],
    ]
    assert "4 responses for 2 prompts" in out
    assert "2 malformed response rows were skipped:" in out
    assert "line 2: prompt_id 'nope' is not in the dataset" in out and "line 3: invalid JSON" in out
    responses.write_text(
        '{"prompt_id": "cap-france", "response": "Paris"}\n{"prompt_id": "nope"}\nnot json\n'
    )
    code, _, err = run(capsys, *argv, "--responses", responses, "--skip-bad-rows")
    assert code == 2 and "2 malformed response rows (too many to skip: more than half of the file)" in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["arithmetic", "--digits", "0"], "--digits: digits must be from 1 to 9, not 0"),
        (["arithmetic", "--ops", "%"], "--ops: ops must be made of"),
        (["gsm8k", "--input", "/nowhere.jsonl"], "--input: dataset file not found: /nowhere.jsonl"),
    ],
)
def test_a_data_commands_bad_value_names_its_flag(capsys, tmp_path, argv, said):
    code, _, err = run(capsys, "data", *argv, "--out", tmp_path / "x.jsonl")
    assert code == 2 and err.startswith(said), err
