"""The benchmarks that wrap openrft's internals still find what they wrap (they run outside CI)."""

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_vs_trl_instrumentation_finds_its_hooks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import openrft.train.loop as loop
    import openrft.train.rounds as rounds
    import openrft.train.setup as setup

    for module, name in [(loop, "start_round"), (loop, "plan_step"), (rounds, "sample_and_score"),
                         (setup, "build_policy")]:  # fmt: skip
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    bench = importlib.import_module("_vs_trl_openrft")
    bench._instrument(bench.StepRecorder(1), {})
    assert setup.build_policy.__name__ == "capturing_build_policy"
    sys.modules.pop("_vs_trl_openrft", None)
