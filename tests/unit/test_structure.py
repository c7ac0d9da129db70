"""The code's shape: no file over 600 lines, no function over 80 (the layer contract is `lint-imports`)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "openrft"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


def test_files_and_functions_stay_small():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)


def test_the_layer_contract_is_written_down():
    import tomllib

    config = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    order = [name.strip() for layer in layers for name in layer.split(":")]
    assert order.index("cli") < order.index("jobs") < order.index("train") < order.index("distributed")
    assert order.index("distributed") < order.index("rollout") < order.index("algo") < order.index("records")
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(order)  # every part of the package has its place


def test_the_command_line_starts_without_torch():
    import subprocess
    import sys

    probe = (
        "import sys, openrft.cli, openrft.config; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"  # `openrft --help` and flag validation stay instant
