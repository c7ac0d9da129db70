"""Load an uploaded evaluator in a fresh interpreter and report whether it loads.

The server runs ``python -m openrft.server.evaluator_check SPEC`` while it builds an uploaded
evaluator, so that the uploaded code is imported in a throw-away process (an import that hangs is
killed, and nothing it does stays in the server). The last line of output is JSON:
``{"ok": true, "name": ..., "mode": ...}`` or ``{"ok": false, "message": ...}``.
"""

from __future__ import annotations

import json
import sys


def check(spec: str) -> dict[str, object]:
    from openrft.errors import OpenRFTError
    from openrft.evaluators.loader import load_evaluator

    try:
        evaluator = load_evaluator(spec)
    except OpenRFTError as exc:
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return {"ok": False, "message": message}
    except Exception as exc:  # a loader bug must still end as a readable build failure
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "name": evaluator.name, "mode": evaluator.mode}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m openrft.server.evaluator_check PATH.py::FUNCTION", file=sys.stderr)
        return 2
    result = check(argv[0])
    sys.stdout.flush()
    print("\n" + json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
