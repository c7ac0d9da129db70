"""Reading a user's Python files (an evaluator, tools, an agent) writes nothing beside them."""

from __future__ import annotations

import sys

import pytest

from openrft.errors import ConfigError
from openrft.evaluators import load_evaluator
from openrft.rollout.agents import load_agent
from openrft.rollout.tools import python_tools


def test_importing_a_user_s_files_writes_no_bytecode_beside_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs by default
    (tmp_path / "ev.py").write_text("def score(completion, **row):\n    return 1.0\n")
    (tmp_path / "tools.py").write_text('def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b\n')
    (tmp_path / "agent.py").write_text("async def run(row, client):\n    return row\n")
    load_evaluator(f"{tmp_path}/ev.py::score")
    python_tools(tmp_path / "tools.py")
    load_agent(f"{tmp_path}/agent.py::run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.py", "ev.py", "tools.py"]  # no __pycache__


def test_a_file_that_is_not_python_source_is_refused(tmp_path):
    (tmp_path / "tools.txt").write_text("def add(a, b): return a + b\n")
    with pytest.raises(ConfigError, match="is it a .py file"):
        python_tools(tmp_path / "tools.txt")
