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
