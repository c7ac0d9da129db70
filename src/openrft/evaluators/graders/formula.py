"""``calculate_output`` of a multi grader: a small arithmetic language, checked and evaluated safely.

The formula is parsed with :mod:`ast` and only these constructs are accepted: numbers, the names
of the sub-graders, ``+ - * /``, ``^`` and ``**`` (both raise to a power), unary ``+``/``-``,
parentheses, and calls of ``min``, ``max``, ``abs``, ``floor``, ``ceil``, ``exp``, ``sqrt`` and
``log`` (natural). Anything else (attributes, subscripts, comparisons, lambdas, strings, other
names or functions) is refused when the grader is loaded, naming the construct. Nothing is passed
to ``eval``: the checked tree is walked here.
"""

from __future__ import annotations

import ast
import keyword
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from openrft.errors import EvaluatorError

# floats throughout: Python's exact integers would make 9 ^ 9 ^ 9 take hours
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)), "exp": math.exp, "sqrt": math.sqrt, "log": math.log,
}  # fmt: skip
ARITY = {"min": (2, 1 << 30), "max": (2, 1 << 30), "log": (1, 2)}  # (fewest, most); the others take one
BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}  # fmt: skip
UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class Formula:
    """A checked ``calculate_output`` formula over the sub-grader ``names``."""

    def __init__(self, text: str, names: Iterable[str]):
        self.text, self.names = text, set(names)
        # a sub-grader may be called what Python reserves ("pass", "class"): it is read under an alias
        self.aliases = {f"kw__{n}": n for n in self.names if keyword.iskeyword(n)}
        source = text.strip().replace("^", "**")  # ^ is a power (strings are refused: no text changes)
        for alias, name in self.aliases.items():
            source = re.sub(rf"(?<![\w.]){name}(?!\w)", alias, source)
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            reserved = [w for w in re.findall(r"[A-Za-z_]\w*", source) if keyword.iskeyword(w)]
            why = f" ({reserved[0]!r} is not one of the sub-graders)" if reserved else ""
            raise EvaluatorError(
                f"calculate_output {text!r} is not a valid formula: {exc.msg}{why}"
            ) from None
        self._check(tree.body)
        self.tree = tree.body

    def __call__(self, values: Mapping[str, float]) -> float:
        """The formula's value for the sub-graders' scores ``values``."""
        try:
            result = self._eval(self.tree, values)
            if isinstance(result, complex):  # a negative number to a fractional power
                raise ValueError(f"the result {result} is not a real number")
            return float(result)
        except OverflowError:
            raise EvaluatorError(
                f"calculate_output {self.text!r}: a value is too large for a number (past 1.8e308)"
            ) from None
        except (ArithmeticError, ValueError, TypeError) as exc:  # 1/0, sqrt(-1), log(0)
            raise EvaluatorError(f"calculate_output {self.text!r}: {exc}") from None

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return
        if isinstance(node, ast.Name):
            node.id = self.aliases.get(node.id, node.id)
            if node.id not in self.names:
                known = ", ".join(sorted(self.names))
                raise EvaluatorError(
                    f"calculate_output {self.text!r} uses {node.id!r}, which is not a sub-grader "
                    f"(the sub-graders are {known})"
                )
            return
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            self._check(node.left)
            self._check(node.right)
            return
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            self._check(node.operand)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            if node.func.id not in FUNCTIONS:
                raise EvaluatorError(
                    f"calculate_output {self.text!r} calls {node.func.id}(), which is not allowed "
                    f"(functions: {', '.join(FUNCTIONS)})"
                )
            low, high = ARITY.get(node.func.id, (1, 1))
            if not low <= len(node.args) <= high:
                wanted = f"{low}" if low == high else f"at least {low}"
                raise EvaluatorError(f"calculate_output {self.text!r}: {node.func.id}() takes {wanted} "
                                     f"argument{'s' if high > 1 else ''}, not {len(node.args)}")  # fmt: skip
            for arg in node.args:
                self._check(arg)
            return
        raise EvaluatorError(
            f"calculate_output {self.text!r} contains {_describe(node)}, which is not allowed "
            "(numbers, sub-grader names, + - * / ^, parentheses and "
            f"{', '.join(FUNCTIONS)} only)"
        )

    def _eval(self, node: Any, values: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)  # a float: a power overflows at once instead of growing exactly
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](self._eval(node.left, values), self._eval(node.right, values))
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](self._eval(node.operand, values))
        return FUNCTIONS[node.func.id](*(self._eval(a, values) for a in node.args))


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.BinOp | ast.UnaryOp | ast.BoolOp):
        return f"the operator {type(node.op).__name__}"
    if isinstance(node, ast.Call):
        return "a call of something other than a named function"
    try:
        return f"{type(node).__name__.lower()} {ast.unparse(node)!r}"
    except Exception:
        return type(node).__name__.lower()


__all__ = ["FUNCTIONS", "Formula"]
