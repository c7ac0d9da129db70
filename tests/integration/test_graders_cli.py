"""OpenAI grader specs through the command line: ``openrft evaluate --evaluator grader.json``, the
``--dry-run`` check of template fields, and a tiny training job scored by a multi grader whose
sub-grader scores are logged as ``reward/<name>``."""

from __future__ import annotations

import json

from openrft.cli import main
from openrft.tracking.sinks import read_jsonl

ROWS = [  # OpenAI RFT rows: messages plus any item fields
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris"}], "reference_answer": "Paris"},
    {"messages": [{"role": "user", "content": "What is the capital of Italy?"},
                  {"role": "assistant", "content": "It is Rome."}], "reference_answer": "Rome"},
    {"messages": [{"role": "user", "content": "What is the capital of Spain?"},
                  {"role": "assistant", "content": "Lisbon"}], "reference_answer": "Madrid"},
]  # fmt: skip
STRING_CHECK = {"type": "string_check", "name": "capital", "operation": "ilike",
                "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"}  # fmt: skip
MULTI = {
    "type": "multi",
    "name": "capital and closeness",
    "graders": {
        "contains": {**STRING_CHECK, "name": "contains"},
        "closeness": {"type": "text_similarity", "name": "closeness", "evaluation_metric": "fuzzy_match",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"},
    },
    "calculate_output": "0.7 * contains + 0.3 * closeness",
}  # fmt: skip


def _write(tmp_path, rows=ROWS, grader=STRING_CHECK):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "grader.json"
    spec.write_text(json.dumps(grader))
    return data, spec


def test_evaluate_scores_rows_with_a_grader_file(tmp_path, capsys):
    data, spec = _write(tmp_path)
    out = tmp_path / "scores.jsonl"
    assert main(["evaluate", "--dataset", str(data), "--evaluator", str(spec), "--output", str(out)]) == 0
    assert [r["score"] for r in read_jsonl(out)] == [1.0, 1.0, 0.0]
    assert "mean score 0.6667" in capsys.readouterr().out


def test_evaluate_inline_multi_grader_prints_sub_grader_metrics(tmp_path, capsys):
    data, _ = _write(tmp_path)
    assert main(["evaluate", "--dataset", str(data), "--evaluator", json.dumps(MULTI), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "  contains: 0.6667" in text and "  closeness:" in text


def test_evaluate_refuses_a_missing_template_field_in_one_line(tmp_path, capsys):
    data, spec = _write(tmp_path, grader={**STRING_CHECK, "reference": "{{ item.answer }}"})
    assert main(["evaluate", "--dataset", str(data), "--evaluator", str(spec)]) == 2  # as job creation
    err = capsys.readouterr().err
    assert "string_check grader 'capital'" in err and "'answer'" in err and "row 1 of" in err


def test_dry_run_names_the_grader_and_the_missing_field(tmp_path, capsys):
    data, spec = _write(tmp_path, grader={**MULTI, "graders": {**MULTI["graders"], "contains": {
        **STRING_CHECK, "name": "contains", "reference": "{{ item.answer }}"}}})  # fmt: skip
    code = main(["rftj", "create", "--dataset", str(data), "--evaluator", str(spec), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert (
        "--evaluator: multi grader 'capital and closeness', sub-grader 'contains'" in err
        and "'answer'" in err
    )


def test_dry_run_checks_the_templates_against_every_row(tmp_path, capsys):
    rows = [*ROWS, *({"messages": r["messages"], "answer": r["reference_answer"]} for r in ROWS[:2])]
    data, spec = _write(tmp_path, rows=rows)  # the 4th and 5th rows name their reference 'answer'
    assert main(["rftj", "create", "--dataset", str(data), "--evaluator", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'reference_answer'" in err and "row 4 of" in err and "(2 of 5 rows fail this check)" in err


def test_dry_run_refuses_a_bad_formula(tmp_path, capsys):
    data, spec = _write(tmp_path, grader={**MULTI, "calculate_output": "contains + secret"})
    assert main(["rftj", "create", "--dataset", str(data), "--evaluator", str(spec), "--dry-run"]) == 2
    assert "uses 'secret', which is not a sub-grader" in capsys.readouterr().err


def test_tiny_job_trains_with_a_grader_and_logs_sub_grader_rewards(tiny_model_dir, tmp_path, capsys):
    rows = [{"messages": r["messages"][:1], "reference_answer": r["reference_answer"]} for r in ROWS] * 2
    data, spec = _write(tmp_path, rows=rows, grader=MULTI)
    out = tmp_path / "out"
    code = main([
        "rftj", "create", "--base-model", str(tiny_model_dir), "--dataset", str(data), "--evaluator", str(spec),
        "--rl-loss-method", "dapo", "--n", "4", "--max-output-tokens", "16", "--chunk-size", "3",
        "--batch-size", "160", "--micro-batch-tokens", "128", "--temperature", "1.0", "--seed", "3", "--quiet",
        "--output-model", str(out),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    steps = [r for r in read_jsonl(out / "metrics.jsonl") if "loss/policy" in r]
    assert steps and all("reward/contains" in r and "reward/closeness" in r for r in steps)
    assert all(0.0 <= r["reward/closeness"] <= 1.0 for r in steps)


def test_the_readme_example_grader_scores_its_rows_and_passes_the_dry_run(tmp_path, capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "openai-rft"
    rows = read_jsonl(example / "rows.jsonl")
    assert len(rows) == 48 == len({row["messages"][0]["content"] for row in rows})  # no question twice
    answered = tmp_path / "answered.jsonl"  # the first rows, answered right, wrong and in a sentence
    answers = [rows[0]["reference_answer"], "0", f"The answer is {rows[2]['reference_answer']}."]
    answered.write_text(
        "".join(
            json.dumps({**row, "messages": [*row["messages"], {"role": "assistant", "content": a}]}) + "\n"
            for row, a in zip(rows, answers, strict=False)
        )
    )
    out = tmp_path / "scores.jsonl"
    grader = str(example / "grader.json")
    assert main(["evaluate", "--dataset", str(answered), "--evaluator", grader, "--output", str(out)]) == 0
    assert [r["score"] for r in read_jsonl(out)] == [1.0, 0.0, 1.0]
    capsys.readouterr()
    flags = ["--rl-loss-method", "dapo", "--n", "8", "--temperature", "1.0", "--max-output-tokens", "16",
             "--chunk-size", "8", "--epochs", "2", "--learning-rate", "5e-4", "--eval-auto-carveout", "0.25",
             "--eval-every", "4"]  # fmt: skip
    code = main(["rftj", "create", "--dataset", str(example / "rows.jsonl"), "--evaluator", grader, *flags,
                 "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "repeat" not in err, err


def test_a_job_with_a_response_format_samples_json_that_graders_read_as_output_json(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    schema = {"type": "json_schema", "json_schema": {"name": "capital", "schema": {"type": "object",
              "properties": {"city": {"enum": ["Paris", "Rome", "Madrid"]}}, "required": ["city"]}}}  # fmt: skip
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    grader = {**STRING_CHECK, "input": "{{ sample.output_json.city }}"}
    rows = [{"messages": r["messages"][:1], "reference_answer": r["reference_answer"]} for r in ROWS] * 2
    data, spec = _write(tmp_path, rows=rows, grader=grader)
    out = tmp_path / "out"
    code = main([
        "rftj", "create", "--base-model", str(tiny_model_dir), "--dataset", str(data), "--evaluator", str(spec),
        "--response-format", str(tmp_path / "schema.json"), "--n", "4", "--max-output-tokens", "32",
        "--chunk-size", "6", "--epochs", "1", "--batch-size", "400", "--temperature", "1.0", "--seed", "3",
        "--quiet", "--output-model", str(out), "--job-id", "structured",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rollouts = read_jsonl(tmp_path / "home" / "jobs" / "structured" / "rollouts.jsonl")
    assert rollouts and all(
        json.loads(r["completion"])["city"] in ("Paris", "Rome", "Madrid") for r in rollouts
    )
    assert all(r["valid"] for r in rollouts)  # the grader read every reply's output_json
    rewards = [r["reward/mean"] for r in read_jsonl(out / "metrics.jsonl") if "reward/mean" in r]
    assert rewards and all(0.0 <= r <= 1.0 for r in rewards)


def test_evaluate_refuses_a_grader_that_cannot_load_as_job_creation_does(tmp_path, capsys):
    data, spec = _write(tmp_path, grader={**STRING_CHECK, "operation": "neq"})  # the guide's typo of 'ne'
    for argv in (["evaluate"], ["rftj", "create", "--dry-run"]):
        assert main([*argv, "--dataset", str(data), "--evaluator", str(spec)]) == 2
        assert "--evaluator:" in capsys.readouterr().err
