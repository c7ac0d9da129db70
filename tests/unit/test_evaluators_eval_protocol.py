"""Evaluators written for the eval-protocol package, run unchanged (skipped when it is not installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# litellm (imported by eval-protocol) would otherwise try to download a price list at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("eval_protocol", reason="the optional eval-protocol extra is not installed")

from openrft.data import load_prompts  # noqa: E402
from openrft.evaluators import load_evaluator, score_groups  # noqa: E402
from openrft.records import Completion  # noqa: E402

EP_FILE = Path(__file__).parent.parent / "fixtures" / "evaluators" / "ep_evaluators.py"


def completion(text: str, index: int) -> Completion:
    return Completion("x", index, (), (), text, (), "stop")


def test_eval_protocol_pointwise_header_adapter_and_real_rows():
    ev = load_evaluator(f"{EP_FILE}::ep_pointwise")
    assert (ev.mode, ev.max_concurrent_rollouts, ev.max_concurrent_evaluations) == ("pointwise", 5, 2)
    assert ev.row_cls.__module__ == "eval_protocol.models"
    assert Path(ev.input_dataset).name == "ep_rows.jsonl" and Path(ev.input_dataset).exists()
    prompts = load_prompts(ev.input_dataset, adapter=ev.dataset_adapter)
    assert [(p.prompt_id, p.ground_truth) for p in prompts] == [("1", "red"), ("2", "9")]
    assert prompts[0].messages == ({"role": "user", "content": "Name a primary colour."},)
    groups = [(prompts[0], [completion("Red? no: red", 0), completion("blue", 1)])]
    [[hit, miss]] = score_groups(ev, groups, timeout=10)
    assert (hit.score, miss.score) == (1.0, 0.0)
    # The function received eval-protocol's own EvaluationRow, with the dataset row id.
    assert hit.reason == "eval_protocol.models:1"
    assert hit.metrics == {"hit": 1.0}


def test_eval_protocol_async_groupwise_and_ambiguous_file():
    ev = load_evaluator(f"{EP_FILE}::ep_groupwise")
    assert ev.mode == "groupwise" and ev.is_async
    prompts = load_prompts(ev.input_dataset, adapter=ev.dataset_adapter)
    [scores] = score_groups(ev, [(prompts[1], [completion(t, i) for i, t in enumerate("abc")])], timeout=10)
    assert [s.score for s in scores] == [0.0, 0.5, 1.0]
    with pytest.raises(Exception, match="2 evaluators"):
        load_evaluator(str(EP_FILE))


MORE_FILE = Path(__file__).parent.parent / "fixtures" / "evaluators" / "ep_more.py"


def test_eval_protocol_kwargs_completion_params_several_files_and_its_own_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    ev = load_evaluator(f"{MORE_FILE}::with_kwargs")
    # eval-protocol records 96 for both when the file sets neither: openrft's defaults apply then
    assert (ev.max_concurrent_rollouts, ev.max_concurrent_evaluations) == (None, None)
    prompts = load_prompts(ev.input_dataset, adapter=ev.dataset_adapter)  # both files, in order
    assert [p.ground_truth for p in prompts] == ["red", "9", "9"]
    [[hit, miss]] = score_groups(ev, [(prompts[2], [completion("9", 0), completion("8", 1)])], timeout=10)
    assert (hit.score, miss.score) == (0.75, 0.25)  # evaluation_test_kwargs reached the function
    assert hit.reason == "accounts/fireworks/models/some-model"  # and completion_params the row


def test_rows_given_in_code_are_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path))
    ev = load_evaluator(f"{MORE_FILE}::rows_in_code")
    assert (ev.max_concurrent_rollouts, ev.max_concurrent_evaluations) == (96, None)
    prompts = load_prompts(ev.input_dataset)
    assert [p.messages[0]["content"] for p in prompts] == ["Capital of France?", "2+2?"]


def test_a_reward_kit_function_gets_the_conversation_and_the_row_fields():
    ev = load_evaluator(f"{MORE_FILE}::reward_kit_style")
    assert ev.kind == "messages"
    prompts = load_prompts(str(EP_FILE.parent / "ep_rows_more.jsonl"), adapter=lambda rows: [
        {"messages": [{"role": "user", "content": r["q"]}], "ground_truth": r["a"], "q": r["q"]} for r in rows
    ])  # fmt: skip
    [[hit, miss]] = score_groups(ev, [(prompts[0], [completion("9", 0), completion("8", 1)])], timeout=10)
    assert (hit.score, miss.score) == (1.0, 0.0) and hit.reason == "2 messages, What is 5 + 4?"


def test_an_mcp_gym_file_gets_its_server_script_one_shared_server_and_rows_without_a_user_turn():
    ev = load_evaluator(f"{EP_FILE.parent / 'ep_gym.py'}::gym")
    spec = ev.rollout
    assert spec.name == "MCPGymRolloutProcessor" and Path(spec.server_script_path).name == "gym_server.py"
    assert Path(spec.server_script_path).is_file()  # found beside the evaluator file
    assert spec.kwargs["server_mode"] == "shared"  # one server for the candidates openrft runs one by one
    assert spec.kwargs["port"] != 9700  # a free port: eval-protocol's fixed one fails a second job
    assert Path(spec.server_script_path).is_absolute() and Path(ev.input_dataset).is_absolute()
    with pytest.raises(Exception, match="must end with a user message"):
        load_prompts(ev.input_dataset)  # a plain job samples a reply to the user: it needs one
    (prompt,) = load_prompts(ev.input_dataset, open_ended=True)  # the gym supplies the turns
    assert [m["role"] for m in prompt.messages] == ["system"]


def test_a_processor_agent_starts_gym_servers_with_this_interpreter(monkeypatch):
    import sys

    from openrft.rollout.ep_rollouts import processor_agent

    ev = load_evaluator(f"{EP_FILE.parent / 'ep_gym.py'}::gym")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a shell without the virtual environment
    processor_agent(ev.rollout)
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_openrft_eval_runs_a_file_s_rollout_processor():
    from openrft.jobs import model_eval as M
    from openrft.records import SamplingParams

    ev = load_evaluator(f"{EP_FILE.parent / 'ep_gym.py'}::gym")
    seen = {}

    def load(model, **options):
        seen.update(options)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        M.evaluate_model(None, [], SamplingParams(n=2), None, None, load=load, processor=ev)
    assert seen["processor"] is ev
