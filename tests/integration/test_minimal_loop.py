"""examples/minimal_loop.py runs for a few steps on the embedded model and trains the adapter."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minimal_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("minimal_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.embedded
def test_minimal_loop_runs_on_the_embedded_model(capsys):
    example = load_example()
    method = "grpo"  # the method with a KL term, so the reference pass runs too
    # partial credit (a bare right number scores) so that the base model's groups have variance
    argv = ["--method", method, "--steps", "2", "--prompts-per-step", "3", "--candidates", "4",
            "--max-output-tokens", "24", "--evaluator", "arithmetic"]  # fmt: skip
    history = example.main(argv)
    out = capsys.readouterr().out
    assert len(history) == 2 and "step   2  reward" in out and "mean reward: first step" in out
    assert all(0.0 <= h["reward/mean"] <= 1.0 for h in history)
    trained = [h for h in history if "loss/policy" in h]
    assert trained, history  # at least one round had a group with a learning signal
    assert all(h["grad/norm"] > 0 for h in trained)
    if method == "grpo":
        assert all(h["kl/coef"] == 0.001 for h in trained)


def test_the_example_is_short_and_uses_only_public_pieces():
    text = EXAMPLE.read_text()
    assert len(text.splitlines()) <= 220
    imported = {line.split()[1] for line in text.splitlines() if line.startswith("from openrft")}
    assert all(not any(part.startswith("_") for part in name.split(".")) for name in imported)
