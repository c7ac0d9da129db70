"""``openrft evaluate`` and ``openrft eval``: what they read from the user's files and flags.

No model is sampled here: ``openrft eval``'s models and sampling settings are checked as the command
resolves them, and the engine loader with stubbed weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_evaluate_cli import table

from openrft.cli import build_parser, main
from openrft.cli.eval_models import _models, _sampling
from openrft.config import build_config
from openrft.jobs import model_eval
from openrft.jobs.store import JobStore

TOOL_CALL_SCORER = (
    "def reward(completion: str, **row) -> float:\n    return 1.0 if '<tool_call>' in completion else 0.0\n"
)
ANY_SCORER = "def reward(completion: str, **row) -> float:\n    return 1.0 if completion else 0.0\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scores(out: str) -> list[tuple[str, str]]:
    """``(prompt_id, score)`` of the printed table's rows."""
    return [(row[0], row[2]) for row in table(out)]


def test_evaluate_matches_a_numeric_prompt_id_to_the_datasets_id(capsys, tmp_path):
    data = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": "1", "messages": [{"role": "user", "content": "Hi"}]}]
    )
    responses = write_jsonl(tmp_path / "responses.jsonl", [{"prompt_id": 1, "response": "Hello"}])
    scorer = tmp_path / "scorer.py"
    scorer.write_text(ANY_SCORER)
    code = main(
        ["evaluate", "--dataset", str(data), "--evaluator", str(scorer), "--responses", str(responses)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert scores(out) == [("1", "1.000")]


def test_evaluate_scores_a_final_assistant_turn_of_tool_calls_with_its_calls(capsys, tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    row = {"id": "calc", "messages": [{"role": "user", "content": "1 + 2?"},
                                      {"role": "assistant", "content": "", "tool_calls": [call]}]}  # fmt: skip
    data = write_jsonl(tmp_path / "rows.jsonl", [row])
    scorer = tmp_path / "scorer.py"
    scorer.write_text(TOOL_CALL_SCORER)
    code = main(["evaluate", "--dataset", str(data), "--evaluator", str(scorer)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert scores(out) == [("calc", "1.000")]  # the calls are what the model answered


@pytest.mark.parametrize("timeout", ["0", "-1", "inf"])
def test_evaluate_refuses_a_timeout_that_is_not_a_positive_finite_number(capsys, timeout):
    with pytest.raises(SystemExit) as refused:
        main(["evaluate", "--dataset", "arithmetic", "--evaluator", "arithmetic", "--timeout", timeout])
    assert refused.value.code == 2
    assert "expected a finite number of seconds > 0" in capsys.readouterr().err


def eval_args(*argv: str):
    return build_parser().parse_args(["eval", "--dataset", "arithmetic", *argv])


def finished_job(store: JobStore, job_id: str, adapter_base: str, **flags) -> Path:
    """A job record whose output folder holds an adapter trained on ``adapter_base``."""
    cfg, _ = build_config({}, {"dataset": "arithmetic", "job_id": job_id, **flags})
    record = store.create(job_id, cfg)
    output = record.job_dir / "output"
    output.mkdir(parents=True, exist_ok=True)
    (output / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": adapter_base}))
    return output


def test_eval_of_a_job_with_base_model_given_samples_that_base_under_the_jobs_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    output = finished_job(JobStore(tmp_path), "j", "smollm2-135m-instruct")
    models, jobs = _models(eval_args("--job", "j", "--base-model", "/models/other"))
    assert [(m.label, m.base_model, m.adapter) for m in models] == [("j", "/models/other", output)]
    assert [j.job_id for j in jobs] == ["j"]


def test_a_warm_started_job_is_evaluated_on_the_base_its_adapter_records(tmp_path):
    store = JobStore(tmp_path)
    start = tmp_path / "earlier"
    start.mkdir()
    (start / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/models/earlier-base"})
    )
    finished_job(store, "warm", "/models/earlier-base", warm_start_from=str(start))
    # the job records the base it trains, read off the adapter it grew from, not the flag's default
    assert store.get("warm").config["training"]["base_model"] == "/models/earlier-base"
    assert model_eval.job_source("warm", store).base_model == "/models/earlier-base"


def test_eval_samples_with_the_seed_given():
    params, _ = _sampling(eval_args("--seed", "7"), [])
    assert params.seed == 7
    assert _sampling(eval_args(), [])[0].seed == 0


def test_two_adapters_with_the_same_folder_name_get_distinct_columns(tmp_path):
    first, second = tmp_path / "x" / "run" / "output", tmp_path / "y" / "run" / "output"
    models, _ = _models(eval_args("--adapter", str(first), "--adapter", str(second), "--adapter", str(first)))
    assert [m.label for m in models] == ["run", "run#2", "run#3"]
    assert [m.adapter for m in models] == [first, second, first]


def test_an_adapters_own_chat_template_is_used_when_it_is_evaluated(tmp_path, monkeypatch):
    import openrft.models
    import openrft.rollout.local

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "chat_template.jinja").write_text("{{ 'trained with this template' }}")
    monkeypatch.setattr(openrft.models, "resolve_device", lambda *a: ("cpu", None))
    monkeypatch.setattr(
        openrft.models, "load_model", lambda *a, **k: (object(), SimpleNamespace(chat_template="base's"))
    )
    monkeypatch.setattr(openrft.models, "load_adapter", lambda weights, path: weights)
    monkeypatch.setattr(
        openrft.rollout.local, "LocalEngine", lambda w, tok, **k: SimpleNamespace(tokenizer=tok)
    )
    engine = model_eval.load_engine(model_eval.EvalModel("trained", "base", adapter))
    assert engine.tokenizer.chat_template == "{{ 'trained with this template' }}"
    plain = model_eval.load_engine(model_eval.EvalModel("base", "base"))  # no adapter: the base's own
    assert plain.tokenizer.chat_template == "base's"


def test_eval_and_evaluate_refuse_bad_inputs_with_exit_2_naming_the_flag_before_sampling(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(model_eval, "evaluate_model", lambda *a, **k: pytest.fail("a model was sampled"))
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"messages": [{"role": "user", "content": "2+2?"}]}])
    quick = ["--n", "1", "--max-output-tokens", "16"]
    cases = [
        (["--dataset", "arithmetic", "--evaluator", str(tmp_path / "nosuch.py")], "--evaluator: "),
        (["--dataset", "arithmetic", "--evaluator", "arithmetic:bogus=1"], "--evaluator: unknown option"),
        (["--dataset", "arithmetic", "--job", "nosuchjob"], "--job nosuchjob: "),
        (["--dataset", "arithmetic", "--base", "--adapter", str(tmp_path / "nosuchdir")], "--adapter "),
        (["--dataset", "arithmetic", "--base-model", str(tmp_path / "nomodel")], "--base-model: "),
        (["--dataset", str(rows), "--evaluator", "gsm8k"], "gsm8k() needs ground_truth"),
        (
            ["--dataset", str(tmp_path / "missing.jsonl")],
            f"--dataset: {tmp_path / 'missing.jsonl'}: no such file",
        ),
    ]
    for flags, said in cases:
        code = main(["eval", *flags, *quick])
        err = capsys.readouterr().err
        assert code == 2 and said in err, (flags, err)
    answered = write_jsonl(tmp_path / "answered.jsonl", [{"messages": [{"role": "user", "content": "q"}],
                                                          "ground_truth": "4"}])  # fmt: skip
    code = main(["evaluate", "--dataset", str(answered), "--evaluator", "gsm8k",
                 "--responses", str(tmp_path / "missing.jsonl")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--responses: no such file" in err, err
