"""An inline grader spec longer than a file name may be (NAME_MAX, 255 bytes on Linux) is still a grader
spec: every example in OpenAI's grader guide is longer than that once written out. Nothing that looks
for a file behind an evaluator value may fail on it with "File name too long"."""

from __future__ import annotations

import json

from openrft.cli import main
from openrft.jobs.snapshot import absolute_paths, code_path

# OpenAI's multi-grader shape: a string check, a similarity and a Python grader, combined by a formula
GRADER = {
    "type": "multi",
    "name": "combo",
    "graders": {
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.reference_answer}}", "operation": "ilike"},
        "sim": {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}", "evaluation_metric": "fuzzy_match"},
        "len": {"type": "python", "name": "len",
                "source": "def grade(sample, item):\n    return min(1.0, len(sample['output_text']) / 300)"},
    },
    "calculate_output": "0.5 * exact + 0.3 * sim + 0.2 * len",
}  # fmt: skip
SPEC = json.dumps(GRADER)


def test_a_long_inline_spec_is_not_taken_for_a_path(tmp_path):
    assert len(SPEC.encode()) > 255
    assert absolute_paths({"evaluator": SPEC}, tmp_path)["evaluator"] == SPEC
    assert code_path(SPEC) is None
    assert code_path("x" * 300 + ".py") is None  # a name no file can have is no file


def test_evaluate_writes_its_output_for_a_long_inline_spec(tmp_path, capsys):
    rows, responses, out = tmp_path / "rows.jsonl", tmp_path / "responses.jsonl", tmp_path / "scores.jsonl"
    rows.write_text(json.dumps({"id": "1", "messages": [{"role": "user", "content": "Capital of France?"}],
                                "reference_answer": "Paris"}) + "\n")  # fmt: skip
    responses.write_text(json.dumps({"prompt_id": "1", "response": "paris"}) + "\n")
    code = main(["evaluate", "--dataset", str(rows), "--evaluator", SPEC, "--responses", str(responses),
                 "--quiet", "--output", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (scored,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert scored["score"] > 0.5  # "paris" ilike "Paris": the string check passes
