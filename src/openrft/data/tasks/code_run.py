"""Running a model's Python program against a problem's tests, each in a child process of its own.

Three kinds of tests, as the common code datasets write them (see :mod:`openrft.data.tasks.code`):

* ``{"asserts": [...], "setup": "..."}``: statements run after the program (MBPP's ``test_list``); each
  one passes when it raises nothing.
* ``{"check": "def check(candidate): ...", "entry_point": "f"}``: HumanEval's test, one for the lot.
* ``{"inputs": [...], "outputs": [...]}``: standard input and the expected standard output (APPS, TACO,
  CodeContests), compared token by token (numbers within 1e-6); with ``"fn_name"``, the inputs are the
  arguments of that function (or of the method of LeetCode's ``Solution`` class) and the outputs its
  results.

The child runs ``python -I`` in an empty temporary folder with limits on its address space, CPU time,
written file size and core dumps, each test under its own time limit, and the whole row under
``time_limit``. This keeps a wrong or runaway program from hurting the job (an endless loop, a huge
allocation, a flood of output); it is not a security boundary: the code runs as the user running
openrft, with its files and network. Run untrusted tasks in a container or on Ray workers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTPUT_LIMIT = 16 << 20  # bytes a program may write (its standard output included)

# Runs in the child before the program: the limits, then each test (the argument file says which).
_PROLOGUE = """\
import json, resource, signal, sys
_limits = json.loads(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (_limits["memory"], _limits["memory"]))
resource.setrlimit(resource.RLIMIT_CPU, (_limits["cpu"], _limits["cpu"] + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (_limits["output"], _limits["output"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
"""

_HARNESS = """
def _openrft_run_tests():
    import json, signal, sys
    spec = json.loads(open(sys.argv[1]).read())
    results = []
    def _alarm(signum, frame):
        raise TimeoutError("time limit")
    signal.signal(signal.SIGALRM, _alarm)
    target = None
    if spec.get("fn_name"):
        name = spec["fn_name"]
        target = globals().get(name)
        if target is None and "Solution" in globals():
            target = getattr(globals()["Solution"](), name, None)
    for case in spec["cases"]:
        signal.setitimer(signal.ITIMER_REAL, spec["timeout"])
        try:
            if spec.get("fn_name"):
                if target is None:
                    raise NameError("no function " + spec["fn_name"])
                got = target(*case["args"])
                want = case["want"]
                ok = got == want or (isinstance(want, list) and len(want) == 1 and got == want[0]) or (
                    isinstance(got, tuple) and list(got) == want)
                results.append([bool(ok), "" if ok else "returned %r, expected %r" % (got, want)])
            else:
                exec(case, globals())
                results.append([True, ""])
        except BaseException as exc:
            results.append([False, (type(exc).__name__ + (": " + str(exc) if str(exc) else ""))[:300]])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    with open(sys.argv[1] + ".out", "w") as out:
        out.write(json.dumps(results))

_openrft_run_tests()
"""


@dataclass
class Limits:
    """What one child may use: seconds per test, seconds for the whole row, memory in MB."""

    timeout: float = 5.0
    time_limit: float = 40.0
    memory_mb: float = 2048.0


@dataclass
class TestRun:
    """The outcome of a row's tests: how many passed of how many, and the first failure's reason."""

    passed: int
    total: int
    reason: str = ""


def run_tests(code: str, tests: dict[str, Any], limits: Limits | None = None) -> TestRun:
    """Run ``code`` against ``tests`` (one of the three kinds in the module docstring)."""
    limits = limits or Limits()
    if "inputs" in tests and not tests.get("fn_name"):
        return _run_stdio(code, tests, limits)
    if "inputs" in tests:
        cases = [
            {"args": _arguments(i), "want": o} for i, o in zip(tests["inputs"], tests["outputs"], strict=True)
        ]
        return _run_harnessed(code, "", {"cases": cases, "fn_name": tests["fn_name"]}, limits)
    if "check" in tests:
        call = f"{tests['check']}\ncheck({tests['entry_point']})"
        return _run_harnessed(code, tests.get("setup", ""), {"cases": [call]}, limits)
    return _run_harnessed(code, tests.get("setup", ""), {"cases": list(tests["asserts"])}, limits)


def _arguments(raw: Any) -> list[Any]:
    """A call's arguments: APPS writes them as a list, a JSON text, or lines of JSON values."""
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):
        try:
            return [json.loads(line) for line in raw.strip().splitlines()]
        except ValueError:
            return [raw]
    return [raw]


def _limits(limits: Limits, seconds: float) -> str:
    return json.dumps({"memory": int(limits.memory_mb * 2**20), "cpu": max(1, math.ceil(seconds)),
                       "output": OUTPUT_LIMIT})  # fmt: skip


def _child(
    folder: Path, program: str, argv: list[str], seconds: float, stdin: str = ""
) -> tuple[int, bytes, str]:
    """Run ``program`` in ``folder`` for at most ``seconds``: its exit code (-9 when killed at the time
    limit), standard output (cut at :data:`OUTPUT_LIMIT`) and the last line of its standard error."""
    script = folder / "program.py"
    script.write_text(program, encoding="utf-8")
    out_path, err_path = folder / "stdout", folder / "stderr"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "HOME": str(folder),
           "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}  # fmt: skip
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-I", str(script), *argv], cwd=folder, env=env,
                                stdin=subprocess.PIPE, stdout=out, stderr=err, process_group=0)  # fmt: skip
        try:
            proc.communicate(stdin.encode("utf-8", "replace"), timeout=seconds)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return -9, b"", ""
        finally:
            _kill(proc)
    with open(err_path, "rb") as err:
        err.seek(max(0, err_path.stat().st_size - 4096))
        lines = err.read().decode("utf-8", "replace").strip().splitlines()
    with open(out_path, "rb") as out:
        return proc.returncode, out.read(OUTPUT_LIMIT), lines[-1][:300] if lines else ""


def _kill(proc: subprocess.Popen) -> None:
    """The child and anything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    proc.wait()


def _run_harnessed(code: str, setup: str, spec: dict[str, Any], limits: Limits) -> TestRun:
    """The program, then each case under its own alarm, in one child; results come back in a file."""
    total = len(spec["cases"])
    seconds = min(limits.time_limit, limits.timeout * total + 2.0)
    with tempfile.TemporaryDirectory(prefix="openrft-code-") as tmp:
        folder = Path(tmp)
        spec_path = folder / "tests.json"
        spec_path.write_text(json.dumps({**spec, "timeout": limits.timeout}), encoding="utf-8")
        program = f"{_PROLOGUE}\n{setup}\n{code}\n{_HARNESS}"
        status, _, error = _child(folder, program, [str(spec_path), _limits(limits, seconds)], seconds)
        results_path = folder / "tests.json.out"
        if not results_path.exists():
            why = "timed out" if status == -9 else f"exited with status {status} before its tests ran"
            return TestRun(0, total, f"the program {why}" + (f" ({error})" if error else ""))
        results = json.loads(results_path.read_text(encoding="utf-8"))
    passed = sum(ok for ok, _ in results)
    failure = next((f"test {k + 1}: {why or 'failed'}" for k, (ok, why) in enumerate(results) if not ok), "")
    return TestRun(passed, total, failure)


def _run_stdio(code: str, tests: dict[str, Any], limits: Limits) -> TestRun:
    """Each input on standard input of a child of its own; its output compared with the expected one."""
    cases = list(zip(tests["inputs"], tests["outputs"], strict=True))
    deadline = time.monotonic() + limits.time_limit
    passed, reason = 0, ""
    with tempfile.TemporaryDirectory(prefix="openrft-code-") as tmp:
        folder = Path(tmp)
        program = f"{_PROLOGUE}\ndel json, resource, signal, sys, _limits\n{code}\n"
        for k, (given, expected) in enumerate(cases):
            seconds = min(limits.timeout, deadline - time.monotonic())
            if seconds <= 0:
                reason = reason or f"test {k + 1}: the row's time limit ran out"
                break
            given, expected = _text(given), _text(expected)
            status, out, error = _child(folder, program, ["-", _limits(limits, seconds)], seconds, given)
            ok = status == 0 and outputs_match(out.decode("utf-8", "replace"), expected)
            passed += ok
            if not ok and not reason:
                why = (
                    "wrong output"
                    if status == 0
                    else "timed out"
                    if status == -9
                    else f"exit status {status}"
                )
                reason = f"test {k + 1}: {why}" + (f" ({error})" if error and status not in (0, -9) else "")
    return TestRun(passed, len(cases), reason)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return str(value)


def outputs_match(got: str, expected: str) -> bool:
    """Whether two outputs agree token by token (whitespace and line ends aside), numbers within 1e-6."""
    a, b = got.split(), expected.split()
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        try:
            if not math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6):
                return False
        except ValueError:
            return False
    return True


__all__ = ["Limits", "TestRun", "outputs_match", "run_tests"]
