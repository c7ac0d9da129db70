"""OpenAI's grader test calls on ``openrft server`` (``/v1/fine_tuning/alpha/graders/validate`` and
``/run``), driven by the ``openai`` SDK as OpenAI's graders guide writes them, its base URL pointed at
the server (the app in-process, reached through Starlette's test client). A python grader really runs
in a worker process; a score_model grader asks the stub judge of test_graders_model."""

from __future__ import annotations

import os

import openai
import pytest
from fastapi.testclient import TestClient
from rapidfuzz import fuzz, utils
from test_graders import SCORE_MODEL, STRING_CHECK
from test_graders_model import StubServer

from openrft.server.app import create_app
from openrft.server.settings import ServerSettings

FUZZY = """
from rapidfuzz import fuzz, utils

def grade(sample, item) -> float:
    output_text = sample["output_text"]
    reference_answer = item["reference_answer"]
    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0
"""  # the python grader of OpenAI's graders guide


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENRFT_GRADER_ENDPOINT", raising=False)
    app = create_app(ServerSettings(home=tmp_path / "home", run_queue=False, api_keys=("k",)))
    with TestClient(app) as http:
        yield http


def graders(http, key: str = "k"):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0
    ).fine_tuning.alpha.graders


def test_a_string_check_runs_as_openai_reports_it(server):
    run = graders(server).run(grader=STRING_CHECK, model_sample="Paris", item={"label": "Paris"})
    assert run.reward == 1.0 and run.sub_rewards == {}
    assert run.metadata.name == "Example string check grader" and run.metadata.type == "string_check"
    assert not any(
        v for k, v in run.metadata.errors.model_dump().items() if not k.endswith(("details", "type"))
    )
    assert (
        graders(server).run(grader=STRING_CHECK, model_sample="Lyon", item={"label": "Paris"}).reward == 0.0
    )


def test_the_guides_python_grader_runs_in_a_worker_and_its_failure_is_flagged(server):
    item, sample = {"reference_answer": "fuzzy wuzzy had no hair"}, "fuzzy wuzzy was a bear"
    run = graders(server).run(
        grader={"type": "python", "name": "fuzzy", "source": FUZZY}, model_sample=sample, item=item
    )
    expected = fuzz.WRatio(sample, item["reference_answer"], processor=utils.default_process) / 100.0
    assert run.reward == pytest.approx(expected) and 0 < run.reward < 1
    assert run.metadata.type == "python" and run.metadata.execution_time > 0

    broken = {"type": "python", "name": "broken", "source": "def grade(sample, item):\n    return 1 / 0\n"}
    run = graders(server).run(grader=broken, model_sample="x")
    assert run.reward == 0.0 and run.metadata.errors.python_grader_runtime_error
    assert "ZeroDivisionError" in run.metadata.errors.python_grader_runtime_error_details

    where = {
        "type": "python",
        "source": "import os\ndef grade(sample, item):\n    return float(os.getpid())\n",
    }
    assert graders(server).run(grader=where, model_sample="x").reward not in (
        0.0,
        float(os.getpid()),
    )  # a worker
    fatal = {"type": "python", "source": "import os\ndef grade(sample, item):\n    os._exit(3)\n"}
    run = graders(server).run(grader=fatal, model_sample="x")  # kills its worker, not the server
    assert run.reward == 0.0 and run.metadata.errors.python_grader_runtime_error
    assert (
        graders(server).run(grader=STRING_CHECK, model_sample="Paris", item={"label": "Paris"}).reward == 1.0
    )

    multi = {"type": "multi", "calculate_output": "p + s", "graders": {"p": broken, "s": STRING_CHECK}}
    run = graders(server).run(grader=multi, model_sample="Paris", item={"label": "Paris"})
    assert run.metadata.errors.python_grader_runtime_error and run.sub_rewards["s"] == 1.0
    assert run.metadata.errors.python_grader_runtime_error_details.startswith("p: ZeroDivisionError")


def test_a_multi_grader_reports_each_sub_grader_and_json_samples_are_read(server):
    multi = {
        "type": "multi", "name": "both",
        "graders": {
            "exact": {**STRING_CHECK, "name": "exact", "input": "{{ sample.output_json.city }}"},
            "close": {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
                      "reference": "{{ item.label }}", "evaluation_metric": "fuzzy_match"},
        },
        "calculate_output": "0.5 * exact + 0.5 * close",
    }  # fmt: skip
    run = graders(server).run(grader=multi, model_sample='{"city": "Paris"}', item={"label": "Paris"})
    assert run.sub_rewards["exact"] == 1.0 and 0 < run.sub_rewards["close"] < 1
    assert run.reward == pytest.approx(0.5 + 0.5 * run.sub_rewards["close"])


def test_a_field_the_item_lacks_is_an_invalid_variable_not_an_http_error(server):
    run = graders(server).run(grader=STRING_CHECK, model_sample="Paris", item={"answer": "Paris"})
    assert run.reward == 0.0 and run.metadata.errors.invalid_variable_error
    assert "refers to 'label', which the item does not have" in run.metadata.scores["reason"]


def test_validate_echoes_a_good_grader_and_names_what_is_wrong_with_a_bad_one(server):
    assert graders(server).validate(grader=STRING_CHECK).grader.reference == "{{ item.label }}"
    assert graders(server).validate(grader=SCORE_MODEL).grader.type == "score_model"  # no endpoint needed
    with pytest.raises(openai.BadRequestError, match="missing field 'operation'"):
        graders(server).validate(grader={k: v for k, v in STRING_CHECK.items() if k != "operation"})
    with pytest.raises(openai.BadRequestError, match="unknown grader type 'regex'"):
        graders(server).validate(grader={"type": "regex"})
    with pytest.raises(openai.BadRequestError, match="imports nosuchpackage"):
        graders(server).validate(
            grader={"type": "python", "source": "import nosuchpackage\ndef grade(s, i):\n  return 1"}
        )


def test_bad_requests_are_400s_naming_the_field_and_the_key_is_required(server):
    with pytest.raises(openai.BadRequestError, match="OPENRFT_GRADER_ENDPOINT"):
        graders(server).run(grader=SCORE_MODEL, model_sample="Paris", item={"label": "Paris"})
    for body, field in [({"grader": STRING_CHECK}, "model_sample"), ({"model_sample": "x"}, "grader"),
                        ({"grader": STRING_CHECK, "model_sample": "x", "item": [1]}, "item"),
                        ({"grader": STRING_CHECK, "model_sample": 3}, "model_sample"),
                        ({"grader": STRING_CHECK, "model_sample": "x", "extra": 1}, "extra")]:  # fmt: skip
        answer = server.post(
            "/v1/fine_tuning/alpha/graders/run", json=body, headers={"Authorization": "Bearer k"}
        )
        error = answer.json()["error"]  # OpenAI's shape: the SDK reads param and type
        assert (
            answer.status_code == 400 and error["param"] == field and error["type"] == "invalid_request_error"
        )
    with pytest.raises(openai.BadRequestError) as refused:
        graders(server).validate(grader=STRING_CHECK, extra_body={"x": 1})
    assert refused.value.param == "x"
    with pytest.raises(openai.AuthenticationError):
        graders(server, key="wrong").validate(grader=STRING_CHECK)
    for answer in (server.post("/v1/fine_tuning/alpha/graders/run", json={}), server.get("/v1/fine_tuning/alpha/graders/run",
                   headers={"Authorization": "Bearer k"})):  # fmt: skip
        assert answer.status_code in (401, 405) and answer.json()["error"]["type"] == "invalid_request_error"


def test_a_score_model_asks_the_servers_judge(tmp_path, monkeypatch):
    with StubServer() as judge:
        monkeypatch.setenv("OPENRFT_GRADER_ENDPOINT", judge.url)
        monkeypatch.setenv("OPENRFT_GRADER_RETRIES", "0")
        judge.script.append('{"result": 0.75}')
        app = create_app(ServerSettings(home=tmp_path / "home", run_queue=False, api_keys=("k",)))
        with TestClient(app) as http:
            run = graders(http).run(grader=SCORE_MODEL, model_sample="Paris", item={"label": "Paris"})
            assert run.reward == 0.75 and run.metadata.sampled_model_name == "o4-mini-2025-04-16"
            assert "Model answer: Paris" in judge.requests[-1]["messages"][0]["content"]
            judge.script.append(503)
            run = graders(http).run(grader=SCORE_MODEL, model_sample="Paris", item={"label": "Paris"})
            assert run.reward == 0.0 and run.metadata.errors.api_model_grader_server_error
            assert "503" in run.metadata.errors.api_model_grader_server_error_details
            monkeypatch.setenv("OPENRFT_GRADER_MODEL", "judge")  # the model that answered is named
            judge.script.append("0.5")
            again = graders(http).run(grader=SCORE_MODEL, model_sample="P", item={"label": "P"})
            assert again.metadata.sampled_model_name == "judge" and judge.requests[-1]["model"] == "judge"
