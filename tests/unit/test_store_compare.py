"""Comparing stored jobs: exactly the differing parameters, and hand-computed reward summaries."""

from __future__ import annotations

import json

from openrft.tracking.compare import differing_parameters, format_comparison, summarize_run


def test_only_differing_learning_parameters_are_named():
    a = {"learning_rate": 1e-4, "temperature": 0.7, "job_id": "a", "output_model": "/x", "wandb_project": "p"}
    b = {"learning_rate": 2e-4, "temperature": 0.7, "job_id": "b", "output_model": "/y", "wandb_project": "q"}
    assert differing_parameters([a, b]) == {"learning_rate": [1e-4, 2e-4]}
    c = {**b, "temperature": 1.0}
    assert differing_parameters([a, b, c]) == {
        "learning_rate": [1e-4, 2e-4, 2e-4],
        "temperature": [0.7, 0.7, 1.0],
    }
    assert differing_parameters([a, dict(a)]) == {}


def test_list_values_read_as_their_items_not_as_python_lists():
    text, _ = format_comparison(["a", "b"], [{"stop": []}, {"stop": ["</answer>", "\n\n"]}], [])
    assert text.splitlines()[2].split(None, 1) == ["stop", 'none  "</answer>", "\\n\\n"']


def test_a_parameter_missing_from_an_older_job_takes_its_default():
    old = {"learning_rate": 1e-4}
    new = {"learning_rate": 1e-4, "eval_candidates": 1}
    assert differing_parameters([old, new], {"eval_candidates": 1}) == {}
    assert differing_parameters([old, new]) == {"eval_candidates": [None, 1]}
    assert differing_parameters([old, {**new, "eval_candidates": 4}], {"eval_candidates": 1}) == {
        "eval_candidates": [1, 4]
    }


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summary_final_and_best(tmp_path):
    rows = [
        {"step": 0, "eval/reward": 0.2},
        {"step": 1, "reward/mean": 0.3, "train/round": 1},
        {"step": 1, "reward/mean": 0.2, "train/round": 2, "filter/round_skipped": 1.0},  # trained nothing
        {"step": 2, "reward/mean": 0.6, "eval/reward": 0.5, "train/round": 3},
        {"step": 3, "reward/mean": 0.4, "eval/reward": None},
        {"step": 4, "reward/mean": 0.5, "eval/reward": 0.45},
    ]
    s = summarize_run("a", write(tmp_path / "m.jsonl", rows), state="COMPLETED", wall_s=75.0)
    assert (s.steps, s.final_reward, s.best_reward, s.best_reward_step) == (4, 0.5, 0.6, 2)
    assert (s.start_eval, s.final_eval, s.best_eval, s.best_eval_step) == (0.2, 0.45, 0.5, 2)
    before = summarize_run(
        "u", write(tmp_path / "u.jsonl", [{"step": 0, "eval/reward": 0.9}, {"step": 1, "reward/mean": 0.1}])
    )
    assert (before.start_eval, before.final_eval, before.best_eval) == (
        0.9,
        None,
        None,
    )  # never the untrained's
    assert (s.rounds, s.rounds_untrained) == (3, 1)
    nan = summarize_run("n", write(tmp_path / "n.jsonl", [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": float("nan")},
                                                           {"step": 3, "reward/mean": 0.3}]))  # fmt: skip
    assert (nan.best_reward, nan.final_reward) == (0.3, 0.3)  # a line that is not a number is left out
    empty = summarize_run("b", tmp_path / "missing.jsonl")
    assert (empty.steps, empty.final_reward, empty.best_reward) == (0, None, None)
    text, warnings = format_comparison(["a", "b"], [{"seed": 1}, {"seed": 2}], [s, empty])
    assert warnings == []
    lines = text.splitlines()
    assert lines[:3] == ["Parameters that differ:", "  parameter  a  b", "  seed       1  2"]
    assert lines[-2].split() == [
        "a",
        "COMPLETED",
        "4",
        "3",
        "(1",
        "no",
        "update)",
        "0.500",
        "0.600",
        "(step",
        "2)",
        "0.200",
        "0.450",
        "0.500",
        "(step",
        "2)",
        "1m15s",
    ]
    assert lines[-1].split() == ["b", "-", "0", "0", "-", "-", "-", "-", "-", "-"]


def test_metrics_written_before_namespaces_read_the_same(tmp_path):
    """Older versions logged epoch, round, optimizer_step, lr, tokens and sequences at the top level."""
    from openrft.tracking.sinks import LEGACY_METRIC_KEYS, read_metrics

    legacy = {"step": 1, "reward/mean": 0.3, "epoch": 0.5, "round": 1, "optimizer_step": 1, "lr": 1e-4,
              "tokens": 12.0, "sequences": 4.0}  # fmt: skip
    current = {"step": 1, "reward/mean": 0.3, "train/epoch": 0.5, "train/round": 1, "train/optimizer_step": 1,
               "train/lr": 1e-4, "loss/tokens": 12.0, "loss/sequences": 4.0}  # fmt: skip
    path = write(tmp_path / "m.jsonl", [legacy, current])
    assert read_metrics(path) == [current, current]
    assert set(LEGACY_METRIC_KEYS.values()) <= set(current)
    assert summarize_run("old", path).rounds == 1
