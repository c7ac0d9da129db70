"""docs/metrics.md lists every metric key the code writes, and only those."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMESPACES = ("reward", "eval", "loss", "kl", "clip", "ratio", "filter", "mismatch", "completion", "rollout",
              "agent", "batch", "grad", "throughput", "time", "train", "sampling", "job", "rollouts")  # fmt: skip
KEY = re.compile(rf"(?:{'|'.join(NAMESPACES)})/[a-z0-9_<>]+")


def _source_keys() -> tuple[set[str], list[str]]:
    """The metric-like string literals under src/openrft, and f-string templates (``{x}`` as ``*``)."""
    literals, templates = set(), []
    for path in (ROOT / "src" / "openrft").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY.fullmatch(node.value):
                literals.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                parts = [p.value if isinstance(p, ast.Constant) else "*" for p in node.values]
                text = "".join(str(p) for p in parts)
                if "/" in text and re.fullmatch(r"[a-z*]+/[a-z0-9_*]+", text):
                    templates.append(text)
    return literals, templates


def _documented() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return {key for quoted in re.findall(r"`([^`]+)`", text) for key in [quoted] if KEY.fullmatch(key)}


def test_every_metric_the_code_writes_is_documented_and_every_documented_one_is_written():
    literals, templates = _source_keys()
    documented = _documented()
    assert literals - documented - {"eval/mean"} == set(), (
        "metric keys missing from docs/metrics.md"
    )  # (renamed)
    written = {key for key in documented if "<" not in key}
    unknown = {
        key for key in written if key not in literals and not any(fnmatch.fnmatch(key, t) for t in templates)
    }
    assert unknown == set(), "docs/metrics.md names keys the code never writes"
    assert {
        "reward/<metric>",
        "eval/<metric>",
        "agent/<name>",
    } <= documented  # the evaluator's and the agents'
