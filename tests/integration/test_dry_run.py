"""`rftj create --dry-run` refuses, before any model loads, every job that would fail for a knowable reason.

Each case: exit code 2, a first line that names the flag and the problem, no traceback, nothing
recorded in the job store and no file of the user's changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from openrft.cli import main

MCP_SERVER = Path(__file__).parent.parent / "fixtures" / "mcp_calculator.py"

EVALUATOR = "def score(completion, ground_truth=None, **row):\n    return 1.0\n"


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    (tmp_path / "good.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n'
        '{"messages": [{"role": "user", "content": "3+3?"}], "ground_truth": 6}\n'
    )
    (tmp_path / "broken.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\nthis is not json\n'
    )
    long_question = "Please add these numbers: " + " + ".join(str(i) for i in range(1200)) + "?"
    (tmp_path / "long.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n'
        f'{{"messages": [{{"role": "user", "content": "{long_question}"}}], "ground_truth": 0}}\n'
    )
    (tmp_path / "ev.py").write_text(EVALUATOR)
    (tmp_path / "tools.py").write_text('def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b\n')
    (tmp_path / "needs.py").write_text("def score(completion, solution, **row):\n    return 1.0\n")
    (tmp_path / "third_lacks.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4, "solution": "4"}\n' * 2
        + '{"messages": [{"role": "user", "content": "3+3?"}], "ground_truth": 6}\n'
    )
    (tmp_path / "no_truth.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n'
        '{"messages": [{"role": "user", "content": "3+3?"}], "ground_truth": null}\n'
    )
    (tmp_path / "raises.py").write_text("raise RuntimeError('import-time failure')\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    return tmp_path


def dry_run(capsys, model_dir, *flags):
    code = main(["rftj", "create", "--dry-run", "--base-model", str(model_dir), *flags])
    out, err = capsys.readouterr()
    return code, out, err


CASES = [
    # (flags, the start of the first line of the error)
    (
        ["--ray-address", "local", "--rollout-engine", "endpoint", "--endpoint-url", "http://127.0.0.1:9/v1"],
        "--ray-address runs the rollouts on Ray actors, but --rollout-engine endpoint",
    ),
    (
        ["--overlong-penalty", "--overlong-buffer", "64", "--max-output-tokens", "32"],
        "--overlong-buffer (64) must not exceed --max-output-tokens (32)",
    ),
    (["--dataset", "{d}/missing.jsonl", "--evaluator", "{d}/ev.py::score"], "--dataset: "),
    (
        ["--dataset", "{d}/broken.jsonl", "--evaluator", "{d}/ev.py::score"],
        "--dataset: {d}/broken.jsonl: 1 of 2 rows are malformed",
    ),
    (["--dataset", "{d}/good.jsonl"], "--evaluator: no evaluator given"),
    (  # the server is started once at creation, as each conversation would start it
        [
            "--dataset",
            "{d}/good.jsonl",
            "--evaluator",
            "{d}/ev.py::score",
            "--mcp-server",
            "python3 {d}/gone.py",
        ],
        "--mcp-server: cannot use the MCP server 'python3 {d}/gone.py'",
    ),
    (
        [
            "--dataset",
            "{d}/good.jsonl",
            "--evaluator",
            "{d}/ev.py::score",
            "--tools",
            "{d}/tools.py",
            "--mcp-server",
            f"{sys.executable} {MCP_SERVER}",
        ],
        f"--mcp-server: the tool name 'add' is offered twice, by --mcp-server '{sys.executable} {MCP_SERVER}' "
        "and by --tools {d}/tools.py; tool names must be unique",
    ),  # fmt: skip
    (  # every row is checked, not the first one only
        ["--dataset", "{d}/third_lacks.jsonl", "--evaluator", "{d}/needs.py::score"],
        "--evaluator: score() needs solution, which 1 of 3 rows of {d}/third_lacks.jsonl lack (the first: line 3)",
    ),
    (  # the reference taken from another field: a row without it is named
        ["--dataset", "{d}/third_lacks.jsonl", "--evaluator", "gsm8k", "--reference-field", "solution"],
        "--reference-field: {d}/third_lacks.jsonl: 1 of 3 rows are malformed",
    ),
    (
        ["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/needs.py::score"],
        "--evaluator: score() needs solution, which every row of {d}/good.jsonl lacks (the first: line 1)",
    ),
    (  # the evaluation set is scored by the same evaluator: its rows are checked too
        ["--dataset", "{d}/good.jsonl", "--evaluation-dataset", "{d}/no_truth.jsonl", "--evaluator", "gsm8k"],
        "--evaluator: gsm8k() needs ground_truth, which 1 of 2 rows of {d}/no_truth.jsonl lack",
    ),
    (  # a built-in evaluator compares with each row's ground_truth: rows without one are refused
        ["--dataset", "{d}/no_truth.jsonl", "--evaluator", "gsm8k"],
        "--evaluator: gsm8k() needs ground_truth, which 1 of 2 rows of {d}/no_truth.jsonl lack (the first: line 2)",
    ),
    (["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/ev.py::no_such_function"], "--evaluator: "),
    (["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/raises.py::score"], "--evaluator: "),
    (["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/nowhere.py::score"], "--evaluator: "),
    (
        [
            "--dataset",
            "{d}/good.jsonl",
            "--evaluator",
            "{d}/ev.py::score",
            "--evaluation-dataset",
            "{d}/broken.jsonl",
        ],
        "--evaluation-dataset: ",
    ),
    (
        [
            "--dataset",
            "{d}/good.jsonl",
            "--evaluation-dataset",
            "{d}/good.jsonl",
            "--eval-auto-carveout",
            "0.2",
        ],
        "--eval-auto-carveout and --evaluation-dataset are mutually exclusive",
    ),
    (
        ["--rl-loss-method", "dapo", "--rl-kl-beta", "0.01"],
        "loss_config.kl_beta must be 0/unset when method is DAPO",
    ),
    (["--warm-start-from", "{d}"], "--warm-start-from and --base-model are mutually exclusive"),
    (["--rollout-engine", "vllm"], "--rollout-engine vllm needs the 'vllm' package"),
    (["--device", "cuda"], "--device: cuda is not available: this machine has no CUDA device"),
    (["--device", "cuda:3", "--dtype", "bfloat16"], "--device: cuda:3 is not available"),
    # nothing a user made is replaced by the outputs, and an unwritable output fails now, not after training
    (
        [
            "--dataset",
            "{d}/good.jsonl",
            "--evaluator",
            "{d}/ev.py::score",
            "--output-model",
            "{d}/good.jsonl",
        ],
        "--output-model {d}/good.jsonl: this is an input of the job",
    ),
    (
        ["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/ev.py::score", "--output-model", "{d}"],
        "--output-model {d}: this is an input of the job",
    ),
    (
        [
            "--dataset",
            "{d}/good.jsonl",
            "--evaluator",
            "{d}/ev.py::score",
            "--output-model",
            "{d}/home/jobs/j1",
        ],
        "--output-model {d}/home/jobs/j1: this is openrft's own job store",
    ),
    (
        ["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/ev.py::score", "--output-model", "{d}/home"],
        "--output-model {d}/home: this is openrft's own job store",
    ),
    (
        ["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/ev.py::score", "--output-model", "{d}/mine"],
        "--output-model {d}/mine: the folder exists and is not an openrft output folder",
    ),
    (
        ["--dataset", "{d}/good.jsonl", "--evaluator", "{d}/ev.py::score", "--output-model", "{d}/ev.py/out"],
        "--output-model {d}/ev.py/out: {d}/ev.py is not a writable folder",
    ),
    (
        ["--seed", str(10**30)],
        "--seed: 1000000000000000000000000000000 is not valid; expected a whole number from 0",
    ),
    (["--rl-kl-beta", "inf"], "--rl-kl-beta: inf is not valid"),
    # prompts are measured with the model's tokenizer before anything is recorded
    (
        ["--dataset", "{d}/long.jsonl", "--evaluator", "{d}/ev.py::score"],
        "--dataset: {d}/long.jsonl: 1 of 2 rows are malformed",
    ),
    (
        ["--max-output-tokens", "4096"],
        "--max-output-tokens: 4096 leaves no room for a prompt in the 4096-token",
    ),
    (["--optimizer-weight-decay", "nan"], "--optimizer-weight-decay: nan is not valid"),
    (["--max-context-length", "5000"], "--max-context-length: 5000 is more than"),  # the tiny model has 4096
    (["--rollout-engine", "endpoint", "--endpoint-url", "gpu-host:8000"],
     "--endpoint-url: gpu-host:8000 is not valid; expected an http:// or https:// URL"),
    (["--grader-endpoint", "ftp://judge"], "--grader-endpoint: ftp://judge is not valid"),
    (["--grader-endpoint", "http://:8000/v1"], "--grader-endpoint: http://:8000/v1 is not valid"),  # no host
    (["--dataset", "{d}/no-such.jsonl"], "--dataset: {d}/no-such.jsonl: no such file"),  # (not "no evaluator")
    (["--mcp-server", "no-such-mcp-server --stdio"], "--mcp-server: the command 'no-such-mcp-server' is not found"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "first_line"), CASES)
def test_dry_run_refuses_with_one_clear_line(files, tiny_model_dir, capsys, flags, first_line):
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    code, out, err = dry_run(capsys, tiny_model_dir, *[f.format(d=files) for f in flags])
    assert code == 2, err
    assert err.splitlines()[0].startswith(first_line.format(d=files)), err
    assert "Traceback" not in err and out == ""
    assert {p: p.read_bytes() for p in files.rglob("*") if p.is_file()} == before
    assert not (files / "home" / "jobs").exists()  # nothing was recorded


def test_a_folder_that_is_not_a_model_is_refused(files, capsys):
    (files / "not-a-model").mkdir()
    (files / "not-a-model" / "config.json").write_text("{}")
    for folder, first in (
        (files / "mine", "has no config.json"),
        (files / "not-a-model", "cannot read the config"),
    ):
        code, _, err = dry_run(capsys, folder, "--dataset", str(files / "good.jsonl"), "--evaluator",
                               f"{files}/ev.py::score")  # fmt: skip
        assert code == 2 and err.startswith("--base-model: ") and first in err.splitlines()[0], err


def test_missing_base_model_is_refused(files, capsys):
    code, _, err = dry_run(capsys, files / "no-model-here", "--dataset", str(files / "good.jsonl"), "--evaluator",
                           f"{files}/ev.py::score")  # fmt: skip
    assert code == 2 and err.startswith("--base-model: ") and "Traceback" not in err


def test_an_earlier_output_folder_or_an_empty_one_is_accepted(files, tiny_model_dir, capsys):
    earlier = files / "earlier"
    earlier.mkdir()
    (earlier / "adapter_config.json").write_text("{}")
    (earlier / "job.json").write_text("{}")
    (earlier / ".openrft-job").write_text(
        f"{files / 'gone-job'}\nadapter_config.json\njob.json\n"
    )  # its mark
    (files / "empty").mkdir()
    for out in (earlier, files / "empty", files / "new" / "deeper"):
        code, _, err = dry_run(capsys, tiny_model_dir, "--dataset", str(files / "good.jsonl"), "--evaluator",
                               f"{files}/ev.py::score", "--output-model", str(out))  # fmt: skip
        assert code == 0, err


def test_a_good_job_prints_every_parameter(files, tiny_model_dir, capsys):
    code, out, err = dry_run(capsys, tiny_model_dir, "--dataset", str(files / "good.jsonl"), "--evaluator",
                             f"{files}/ev.py::score", "--eval-auto-carveout", "0.5")  # fmt: skip
    assert code == 0, err
    assert "rl-loss-method" in out and "flag" in out and not (files / "home" / "jobs").exists()


def test_the_reference_can_come_from_another_field(files, tiny_model_dir, capsys):
    (files / "answers.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "answer": "2 and 2 make 4 #### 4"}\n' * 3
    )
    flags = ("--dataset", str(files / "answers.jsonl"), "--evaluator", "gsm8k")
    code, _, err = dry_run(capsys, tiny_model_dir, *flags)
    assert code == 2 and "needs ground_truth" in err  # the built-in evaluator needs a reference
    code, out, err = dry_run(capsys, tiny_model_dir, *flags, "--reference-field", "answer")
    assert code == 0, err


def test_concurrency_from_the_evaluator_header_is_shown_as_such(files, tiny_model_dir, capsys):
    header = (
        "from openrft.evaluators import evaluation_test\n\n"
        "@evaluation_test(max_concurrent_rollouts=3, max_concurrent_evaluations=5)\n"
        "def score(completion, ground_truth=None, **row):\n    return 1.0\n"
    )
    (files / "header.py").write_text(header)
    code, out, err = dry_run(capsys, tiny_model_dir, "--dataset", str(files / "good.jsonl"), "--evaluator",
                             f"{files}/header.py::score", "--max-concurrent-evaluations", "2")  # fmt: skip
    assert code == 0, err
    lines = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("rollout")}
    assert lines["max-concurrent-rollouts"] == ["3", "evaluator", "header"]
    assert lines["max-concurrent-evaluations"] == ["2", "flag"]  # a flag wins over the header
    (files / "with_data.py").write_text(
        header.replace("max_concurrent_rollouts=3", f"input_dataset='{files}/good.jsonl'")
    )
    code, out, err = dry_run(capsys, tiny_model_dir, "--evaluator", f"{files}/with_data.py::score")
    assert code == 0, err
    rows = {
        line.split()[1]: line.split()[2:]
        for line in out.splitlines()
        if line.split()[:1] in (["data"], ["loss"])
    }
    assert rows["dataset"] == [f"{files}/good.jsonl", "evaluator", "header"]  # not "unset default"
    assert rows["rl-kl-beta"] == ["0.0", "(grpo", "applies", "its", "built-in", "0.001)", "default"]


def test_verl_rows_and_reward_functions(files, tiny_model_dir, capsys):
    row = {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "2+2? Answer after ####."}],
           "reward_model": {"style": "rule", "ground_truth": "4"}, "extra_info": {"split": "train"}}  # fmt: skip
    lacking = {**row, "reward_model": {"style": "rule"}}
    import json

    (files / "verl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (row, row, lacking)))
    verl = str(Path(__file__).parents[1] / "fixtures" / "evaluators" / "verl_rewards.py")
    code, _, err = dry_run(
        capsys, tiny_model_dir, "--dataset", str(files / "verl.jsonl"), "--evaluator", verl
    )
    assert code == 2 and "compute_score() needs reward_model.ground_truth, which 1 of 3 rows" in err
    (files / "verl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (row, row)))
    code, _, err = dry_run(
        capsys, tiny_model_dir, "--dataset", str(files / "verl.jsonl"), "--evaluator", verl
    )
    assert code == 0, err
    flags = ("--dataset", str(files / "verl.jsonl"), "--evaluator", "gsm8k", "--reference-field")
    code, _, err = dry_run(capsys, tiny_model_dir, *flags, "reward_model")  # an object is no answer
    assert code == 2 and "--reference-field reward_model.ground_truth" in err
    assert dry_run(capsys, tiny_model_dir, *flags, "reward_model.ground_truth")[0] == 0
    code, _, err = dry_run(capsys, tiny_model_dir, "--dataset", str(files / "verl.jsonl"), "--evaluator",
                           f"{files}/needs.py::score")  # fmt: skip
    assert code == 2 and "the first parameter (completion) receives the response" in err


def test_a_context_stretched_by_rope_scaling_counts_as_the_models():
    from types import SimpleNamespace

    from openrft.train.job import model_context

    assert model_context(SimpleNamespace(max_position_embeddings=4096, rope_scaling=None)) == 4096
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert model_context(SimpleNamespace(max_position_embeddings=32768, rope_scaling=yarn)) == 131072
    assert model_context(SimpleNamespace()) is None


def test_a_warm_start_folder_that_is_not_there_is_named_so(files, capsys):
    code = main(["rftj", "create", "--dataset", "arithmetic:count=4", "--dry-run",
                 "--warm-start-from", str(files / "no-adapter-here")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"--warm-start-from {files / 'no-adapter-here'}: no such folder"), err
    assert "jobs/JOB_ID/output" in err  # where a job's adapter is


def test_a_warm_start_keeps_its_adapters_rank_and_a_differing_one_is_refused(files, tiny_model_dir, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = files / "peft-r4"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        adapter
    )
    flags = [
        "rftj",
        "create",
        "--dataset",
        "arithmetic:count=4",
        "--dry-run",
        "--warm-start-from",
        str(adapter),
    ]
    capsys.readouterr()  # (transformers' loading bar)
    assert main([*flags, "--lora-rank", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "--lora-rank: 16 differs from the --warm-start-from adapter's (4), which it keeps"
    ), err
    assert main([*flags, "--lora-alpha", "8"]) == 0  # what the adapter has: accepted
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line.split()[2:] for line in out if line.startswith("training ")}
    assert rows["lora-rank"] == ["4", "warm-start", "adapter"] and rows["lora-alpha"] == [
        "8",
        "warm-start",
        "adapter",
    ]
    assert rows["base-model"] == [str(tiny_model_dir), "warm-start", "adapter"]  # what peft recorded


def test_an_adapter_made_on_the_hubs_copy_of_the_embedded_model_warm_starts_the_embedded_one(tmp_path):
    import json

    from openrft.train.policy import adapter_base_model

    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    )
    assert adapter_base_model(tmp_path) == "smollm2-135m-instruct"


def test_a_dry_run_names_the_rows_skip_bad_rows_leaves_out(files, tiny_model_dir, capsys):
    good = '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n'
    (files / "some_bad.jsonl").write_text(good * 3 + "this is not json\n")
    code, _, err = dry_run(capsys, tiny_model_dir, "--dataset", str(files / "some_bad.jsonl"), "--evaluator",
                           f"{files}/ev.py::score", "--skip-bad-rows")  # fmt: skip
    assert code == 0 and "skipped 1 malformed rows (line 4: invalid JSON" in err, err


def test_a_dry_run_warns_of_rows_without_the_ground_truth_others_have_and_of_repeated_rows(
    files, tiny_model_dir, capsys
):
    def row(question: str, truth: int | None, **more) -> str:
        return json.dumps(
            {"messages": [{"role": "user", "content": question}], "ground_truth": truth, **more}
        )

    lines = [
        row("2+2?", 4, id="a"),
        row("3+3?", None),
        row("2+2?", 4, id="b"),
        row("4+4?", 8),
        row("4+4?", 8),
    ]
    (files / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    mixed = ["--dataset", str(files / "mixed.jsonl"), "--evaluator"]
    code, _, err = dry_run(capsys, tiny_model_dir, *mixed, f"{files}/ev.py::score")
    assert code == 0
    assert "1 of 5 rows has no ground_truth (line 2) while the others have one" in err, err
    assert "2 rows repeat an earlier row (line 3 repeats 1, 5 repeats 4)" in err, err
    code, _, err = dry_run(capsys, tiny_model_dir, "--dataset", str(files / "good.jsonl"), "--evaluator",
                           f"{files}/ev.py::score")  # fmt: skip
    assert "ground_truth" not in err and "repeat" not in err
    code, _, err = dry_run(capsys, tiny_model_dir, *mixed, "gsm8k")  # its own evaluator: no **row_fields
    assert code == 2 and err.splitlines()[1] == "hint: add the fields to those rows or drop them", err


def test_a_reply_longer_than_the_models_context_is_not_sent_to_a_flag_that_cannot_help(
    files, tiny_model_dir, capsys
):
    """At the model's whole context, --max-context-length cannot make room: the hint says what can."""
    code, _, err = dry_run(capsys, tiny_model_dir, "--max-output-tokens", "4096")
    assert (
        code == 2
        and err.splitlines()[1]
        == "hint: lower --max-output-tokens, or train a model with a longer context than 4096"
    )
