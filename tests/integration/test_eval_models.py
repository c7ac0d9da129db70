"""`openrft eval`: sample and score models side by side (tiny random model and adapter), pass@k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrft.cli import main
from openrft.errors import ConfigError
from openrft.jobs.model_eval import pass_at_k, pass_rates
from openrft.records import Prompt, Score, ScoredGroup

# Scores that ignore the text: candidate i of a prompt passes (1.0) when i < ground_truth, else 0.5,
# so pass@k can be worked out by hand whatever the random model writes.
STUB = """
from openrft import EvaluateResult, EvaluationRow, evaluation_test


@evaluation_test(mode="pointwise")
def stub(row: EvaluationRow) -> EvaluationRow:
    index = int(row.execution_metadata.rollout_id.rsplit("/", 1)[1])
    hit = index < int(row.ground_truth)
    row.evaluation_result = EvaluateResult(score=1.0 if hit else 0.5, reason="stub", metrics={"hit": float(hit)})
    return row
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> dict[str, list[str]]:
    """``{row name: cells}`` of the printed side-by-side table (its first line holds the labels)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    labels = lines[start].split()[1:]
    rows = {"model": labels}
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) <= len(labels) or not line[0].isalpha():
            break
        rows[" ".join(parts[: -len(labels)])] = parts[-len(labels) :]
    return rows


@pytest.fixture
def stub(tmp_path):
    path = tmp_path / "stub.py"
    path.write_text(STUB)
    data = tmp_path / "rows.jsonl"
    rows = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Say {i}"}], "ground_truth": c, "alt": 2}
            for i, c in enumerate((0, 1, 3))]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, data


@pytest.fixture
def adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from openrft.testing import tiny_model

    model, _ = tiny_model(seed=0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(tmp_path / "trained")
    return tmp_path / "trained"


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k failures: some k-subset always passes
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_pass_rates_average_over_prompts_and_invalid_never_passes():
    from openrft.jobs.model_eval import PassRule

    def group(*scores):
        return ScoredGroup(Prompt("x", ({"role": "user", "content": "q"},)), (), tuple(scores))

    groups = [
        group(Score(1.0), Score(0.0)),
        group(Score(1.0, is_valid=False), Score(0.9, metrics={"ok": 1.0})),
    ]
    assert pass_rates(groups, PassRule(), [1, 2]) == {"pass@1": 0.25, "pass@2": 0.5}
    assert pass_rates(groups, PassRule(0.9), [1]) == {"pass@1": 0.5}
    assert pass_rates(groups, PassRule(1.0, "ok"), [1]) == {"pass@1": 0.25}
    PassRule(1.0, "ok").check(groups)  # one valid score carries it: fine
    with pytest.raises(
        ConfigError, match=r"--pass-metric nosuch: .*no metric of that name \(they have: ok\)"
    ):
        PassRule(1.0, "nosuch").check(groups)  # it would pass nothing, silently


def test_eval_refuses_an_output_it_could_not_write_before_loading_anything(stub, tmp_path, capsys):
    evaluator, data = stub
    blocker = tmp_path / "a_file"
    blocker.write_text("mine\n")
    for output, reason in ((tmp_path, "a folder is there"), (blocker / "out.jsonl", f"{blocker} is a file")):
        code, out, err = run(
            capsys, "eval", "--dataset", data, "--evaluator", f"{evaluator}::stub",
            "--base-model", tmp_path / "no_such_model", "--output", output,
        )  # fmt: skip
        assert code == 2 and f"--output {output}: " in err and reason in err, err
    assert blocker.read_text() == "mine\n"


def test_eval_base_and_adapter_side_by_side(tiny_model_dir, adapter, stub, tmp_path, capsys):
    evaluator, data = stub
    out_file = tmp_path / "samples.jsonl"
    code, out, err = run(
        capsys, "eval", "--dataset", data, "--evaluator", f"{evaluator}::stub", "--base-model", tiny_model_dir,
        "--base", "--adapter", adapter, "--n", "4", "--max-output-tokens", "16", "--seed", "3",
        "--output", out_file,
    )  # fmt: skip
    assert code == 0, err
    rows = table(out)
    assert rows["model"] == ["base", "trained"]
    # c = 0, 1, 3 passes of n = 4: pass@1 = (0 + 1/4 + 3/4) / 3; pass@4 = (0 + 1 + 1) / 3
    assert rows["pass@1"] == ["33.3%", "33.3%"] and rows["pass@4"] == ["66.7%", "66.7%"]
    assert rows["mean reward"] == ["0.667", "0.667"]  # (4 x 0.5 + 1 + 3 x 0.5 + 3 + 0.5) / 12
    assert rows["hit (mean)"] == ["0.333", "0.333"] and rows["invalid scores"] == ["0.0%", "0.0%"]
    assert "3 prompts x 4 samples; pass = score >= 1" in out
    samples = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(samples) == 24 and {s["model"] for s in samples} == {"base", "trained"}
    texts = {m: [s["response"] for s in samples if s["model"] == m] for m in ("base", "trained")}
    assert texts["base"] != texts["trained"]  # the adapter changes what is sampled
    tokens = [s["response_tokens"] for s in samples if s["model"] == "base"]
    truncated = sum(s["finish_reason"] == "length" for s in samples if s["model"] == "base") / 12
    assert rows["mean response tokens"][0] == f"{sum(tokens) / 12:.1f}"
    assert rows["truncated"][0] == f"{truncated:.1%}"
    assert all(s["passed"] == (s["score"] >= 1.0) for s in samples)

    code, out, err = run(
        capsys, "eval", "--dataset", data, "--evaluator", f"{evaluator}::stub", "--base-model", tiny_model_dir,
        "--n", "2", "--max-output-tokens", "16", "--limit", "2", "--reference-field", "alt",
    )  # fmt: skip
    assert code == 0, err
    rows = table(out)  # the base alone by default; ground truth 2 (from 'alt'): both candidates pass
    assert rows["model"] == ["base"] and rows["pass@1"] == ["100.0%"] and rows["mean reward"] == ["1.000"]
    assert "2 prompts x 2 samples; pass = score >= 1" in out


def test_eval_a_job_uses_its_adapter_and_sampling_settings(
    tiny_model_dir, stub, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    evaluator, data = stub
    flags = [
        "--base-model", tiny_model_dir, "--dataset", "arithmetic:count=4", "--evaluator", f"{evaluator}::stub",
        "--n", "3", "--max-output-tokens", "16", "--temperature", "1.3", "--top-k", "7", "--stop", "!",
        "--chunk-size", "2", "--batch-size", "2k", "--micro-batch-tokens", "128", "--quiet",
    ]  # fmt: skip
    assert main(["rftj", "create", "--job-id", "tiny", *map(str, flags)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "eval", "--dataset", data, "--job", "tiny", "--base", "--limit", "2")
    assert code == 0, err
    assert "2 prompts x 3 responses, temperature 1.3, top-p 1, top-k 7, max 16 tokens, stop ['!']" in err
    assert f"tiny: {tiny_model_dir} + adapter {tmp_path / 'home' / 'jobs' / 'tiny' / 'output'}" in err
    rows = table(out)
    assert rows["model"] == ["base", "tiny"]
    assert rows["pass@3"] == ["50.0%", "50.0%"]  # c = 0 and 1 of 3: (0 + 1) / 2
    code, out, err = run(capsys, "eval", "--dataset", data, "--job", "tiny", "--limit", "1", "--n", "1")
    assert code == 0, err
    assert "1 prompts x 1 responses, temperature 1.3" in err and table(out)["model"] == ["tiny"]
    Path(evaluator).unlink()  # the job's own copy of its evaluator serves, as for a resume
    code, out, err = run(capsys, "eval", "--dataset", data, "--job", "tiny", "--limit", "1", "--n", "1")
    assert code == 0 and "goes on with its copy" in err, err


def test_eval_unknown_job_and_bad_flags_are_one_line(capsys):
    code, _, err = run(capsys, "eval", "--dataset", "arithmetic", "--job", "nope")
    assert code == 2 and err.startswith("--job nope: no job with id 'nope'")  # bad input
    code, _, err = run(capsys, "eval", "--dataset", "arithmetic", "--temperature", "9")
    assert code == 2 and "--temperature: 9.0 is not valid" in err
