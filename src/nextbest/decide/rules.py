"""Eligibility rules: a small, safe expression language evaluated over whole columns at once.

Marketers write rules in offer and campaign files, in Python's expression syntax::

    region == "north" and age >= 25
    not (weather == "rain" and offer_category == "sunglasses")
    has(cart, "P0042") and channel in ("email", "push")
    days_since_purchase > 30 or is_null(days_since_purchase)

A rule is parsed once with :mod:`ast` into closures over numpy arrays; nothing reaches
``eval``. Accepted: ``and or not``, unary ``- +``, comparisons ``== != < <= > >=`` (chained),
``in``/``not in`` a list or tuple of constants, ``+ - * / %`` on numbers, names, constants
(numbers, text, True, False, None), and ``has(text, item)`` (the ``|``/``,``-separated text
holds ``item`` as a whole item), ``is_null``, ``not_null``, ``abs``, ``min``, ``max``,
``lower``. Names map to arrays or Series of length ``n`` (or 1) or to scalars, broadcast
together. Values are numbers, text or true/false; mixing them (``region > 3``) is an error.

Missing values (None, NaN, pd.NA) follow SQL's three-valued logic:

- a comparison, ``in``, ``has``, arithmetic, ``abs``/``min``/``max``/``lower`` with a missing
  operand is *unknown*; so are ``x / 0`` and ``x % 0``;
- ``not unknown`` is unknown; ``False and unknown`` is False, ``True or unknown`` is True, and
  any other combination with unknown is unknown (Kleene logic);
- ``is_null(x)`` and ``not_null(x)`` are never unknown;
- at the end, unknown counts as False: missing data never makes a customer eligible unless the
  rule asks for it with ``is_null``. Thus ``not has(tags, "vip")`` is False where ``tags`` is
  missing; write ``not has(tags, "vip") or is_null(tags)`` to include those customers.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np
import pandas as pd

from nextbest.errors import ConfigError

__all__ = ["FUNCTIONS", "Rule", "compile_rule"]

FUNCTIONS: dict[str, int] = {"abs": 1, "has": 2, "is_null": 1, "lower": 1, "max": 2, "min": 2}
FUNCTIONS["not_null"] = 1
"""The functions a rule may call, with their number of arguments."""

_TEXT = np.dtypes.StringDType()
_KIND_WORDS = {"num": "a number", "text": "text", "bool": "true/false", "null": "missing"}
_SYMBOLS: dict[type, str] = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<="}
_SYMBOLS |= {ast.Gt: ">", ast.GtE: ">="}
_COMPARE: dict[str, Any] = {"==": np.equal, "!=": np.not_equal, "<": np.less, ">": np.greater}
_COMPARE |= {"<=": np.less_equal, ">=": np.greater_equal}
_ARITH: dict[type, Any] = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply}
_ARITH |= {ast.Div: np.true_divide, ast.Mod: np.remainder}
_MAX_DEPTH = 60
_FORMS = {"Attribute": "attribute access", "Subscript": "indexing", "Lambda": "lambda"}
_FORMS |= {"ListComp": "a comprehension", "JoinedStr": "an f-string", "NamedExpr": "':='"}
_TYPES_HINT = 'compare text with text ("north"), numbers with numbers (25)'
_GRAMMAR = (
    "rules use and/or/not, comparisons (== != < <= > >=), in (...), + - * / %, names, "
    "constants and the functions " + ", ".join(sorted(FUNCTIONS))
)


@dataclass(frozen=True)
class _Val:
    """A value under evaluation: data, its missing mask (both 0-d or 1-d) and its type."""

    data: np.ndarray
    null: np.ndarray
    kind: str  # num, text, bool, or null (missing, of no type)


_Node = Callable[["_Env"], _Val]
_Fail = Callable[[str, str], ConfigError]


@dataclass
class _Env:
    values: Mapping[str, Any]
    n: int
    cache: dict[str, _Val] = field(default_factory=dict)


def _boolean(data: Any, null: Any) -> _Val:
    null = np.asarray(null, dtype=bool)
    return _Val(np.asarray(data, dtype=bool) & ~null, null, "bool")


def _from_objects(arr: np.ndarray, name: str, fail: _Fail) -> _Val:
    null = np.asarray(pd.isna(arr), dtype=bool)
    inferred = pd.api.types.infer_dtype(arr, skipna=True)
    if inferred == "string":
        return _Val(np.where(null, "", arr).astype(_TEXT), null, "text")
    if inferred == "boolean":
        return _boolean(np.where(null, False, arr), null)
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        return _Val(np.where(null, np.nan, arr).astype(float), null, "num")
    if inferred == "empty":
        return _unknown(_Val(arr, null, "null"))
    raise fail(f"'{name}' holds {inferred} values", "give numbers, text or true/false")


def _convert(value: Any, name: str, fail: _Fail) -> _Val:
    """Turn a scalar, numpy array or pandas Series into a :class:`_Val`."""
    if value is None or value is pd.NA:
        return _unknown()
    if hasattr(value, "to_pandas") and not isinstance(value, pd.Series | pd.Index):
        value = value.to_pandas()  # a pyarrow array
    if isinstance(value, pd.Series | pd.Index | pd.api.extensions.ExtensionArray):
        s = pd.Series(value)  # nullable, text and categorical dtypes go through objects
        is_numpy = isinstance(s.dtype, np.dtype)
        value = s.to_numpy() if is_numpy else s.to_numpy(dtype=object, na_value=None)
    arr, kind = np.asarray(value), np.asarray(value).dtype.kind
    if arr.ndim > 1:
        raise fail(f"'{name}' has {arr.ndim} dimensions", "give one value per customer")
    if kind == "O":
        return _from_objects(arr, name, fail)
    if kind not in "biufUT":
        hint = "give numbers, text or true/false (for dates, a number such as days_since_...)"
        raise fail(f"'{name}' has type {arr.dtype}, which rules cannot use", hint)
    null = np.isnan(arr) if kind == "f" else np.zeros(arr.shape, dtype=bool)
    if kind in "UT":
        return _Val(arr.astype(_TEXT), null, "text")
    return _Val(arr, null, "bool" if kind == "b" else "num")


@dataclass(frozen=True)
class Rule:
    """A compiled eligibility rule.

    Attributes
    ----------
    source : str
        The rule's text.
    names : frozenset of str
        The attribute names it reads; :meth:`evaluate` needs a value for each.
    """

    source: str
    names: frozenset[str]
    _root: _Node = field(repr=False, compare=False)
    _where: str = field(default="rule", repr=False, compare=False)

    def evaluate(self, values: Mapping[str, Any], n: int) -> np.ndarray:
        """Evaluate the rule for ``n`` rows at once.

        Parameters
        ----------
        values : mapping of str to array-like or scalar
            One entry per name in :attr:`names`: an array or Series of length ``n`` or 1, or a
            scalar; extra entries are ignored.
        n : int
            Number of rows.

        Returns
        -------
        numpy.ndarray
            Boolean, of length ``n``: True where the rule holds (unknown counts as False).
        """
        val = self._root(_Env(values, n))
        if val.kind not in ("bool", "null"):
            raise ConfigError(
                f"{self._where}: '{self.source}' gives {_KIND_WORDS[val.kind]}, not true/false; "
                "compare it, e.g. 'x > 0'"
            )
        return np.array(np.broadcast_to(val.data & ~val.null, (n,)))


class _Compiler:
    def __init__(self, text: str, where: str, known: frozenset[str] | None) -> None:
        self.text, self.where, self.known = text, where, known
        self.names: set[str] = set()

    def error(self, node: ast.AST, problem: str, hint: str = _GRAMMAR) -> ConfigError:
        col, lineno = getattr(node, "col_offset", 0), getattr(node, "lineno", 1)
        lines = self.text.splitlines() or [""]
        before = lines[lineno - 1].encode()[:col].decode(errors="ignore")  # ast counts bytes
        at = f"column {len(before) + 1}" + (f" of line {lineno}" if len(lines) > 1 else "")
        return ConfigError(f"{self.where}: {problem} at {at} of '{self.text}'; {hint}")

    def part(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ast.unparse(node)

    def fail_at(self, node: ast.AST) -> _Fail:
        return lambda problem, hint: self.error(node, f"{problem} in '{self.part(node)}'", hint)

    def expect(self, node: ast.AST, val: _Val, kind: str) -> None:
        if val.kind not in (kind, "null"):
            got = f"expected {_KIND_WORDS[kind]}, got {_KIND_WORDS[val.kind]}"
            raise self.fail_at(node)(got, _TYPES_HINT)

    def compile(self, node: ast.AST) -> _Node:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            form = _FORMS.get(type(node).__name__, type(node).__name__)
            raise self.error(node, f"{form} '{self.part(node)}' is not allowed")
        result: _Node = method(node)
        return result

    def _Constant(self, node: ast.Constant) -> _Node:
        if not isinstance(node.value, bool | int | float | str | None):
            raise self.error(node, f"constant {node.value!r} is not allowed")
        val = _convert(node.value, repr(node.value), self.fail_at(node))
        return lambda env: val

    def _Name(self, node: ast.Name) -> _Node:
        name, fail = node.id, self.fail_at(node)
        if self.known is not None and name not in self.known:
            close = difflib.get_close_matches(name, self.known, n=3)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            if name.lower() in ("true", "false", "null", "none"):
                hint = "write True or False, and is_null(x) for a missing value; "
            listed = ", ".join(sorted(self.known)) or "(none)"
            raise self.error(node, f"unknown name '{name}'", f"{hint}known names: {listed}")
        self.names.add(name)

        def load(env: _Env) -> _Val:
            if name not in env.cache:
                if name not in env.values:
                    given = ", ".join(sorted(env.values)) or "(none)"
                    raise fail(f"no value for '{name}'", f"values given: {given}; pass every name")
                val = _convert(env.values[name], name, fail)
                if val.data.ndim == 1 and len(val.data) not in (1, env.n):
                    raise fail(f"'{name}' has {len(val.data)} values", f"expected {env.n} or 1")
                env.cache[name] = val
            return env.cache[name]

        return load

    def _BoolOp(self, node: ast.BoolOp) -> _Node:
        parts = [(sub, self.compile(sub)) for sub in node.values]
        join = _and if isinstance(node.op, ast.And) else _or

        def run(env: _Env) -> _Val:
            vals = [part(env) for _, part in parts]
            for (sub, _), val in zip(parts, vals, strict=True):
                self.expect(sub, val, "bool")
            return reduce(join, vals)

        return run

    def _UnaryOp(self, node: ast.UnaryOp) -> _Node:
        inner, negate = self.compile(node.operand), isinstance(node.op, ast.Not)
        if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            raise self.error(node, f"operator in '{self.part(node)}' is not allowed")
        sign = -1 if isinstance(node.op, ast.USub) else 1

        def run(env: _Env) -> _Val:
            val = inner(env)
            self.expect(node.operand, val, "bool" if negate else "num")
            if val.kind == "null":
                return val
            return (
                _boolean(~val.data, val.null) if negate else _Val(val.data * sign, val.null, "num")
            )

        return run

    def _BinOp(self, node: ast.BinOp) -> _Node:
        func = _ARITH.get(type(node.op))
        if func is None:
            raise self.error(node, f"operator in '{self.part(node)}' is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        by_zero = isinstance(node.op, ast.Div | ast.Mod)

        def run(env: _Env) -> _Val:
            a, b = left(env), right(env)
            self.expect(node, a, "num")
            self.expect(node, b, "num")
            if "null" in (a.kind, b.kind):
                return _unknown(a, b)
            null = a.null | b.null | ((b.data == 0) if by_zero else False)
            with np.errstate(all="ignore"):
                return _Val(func(a.data, b.data), null, "num")

        return run

    def _Compare(self, node: ast.Compare) -> _Node:
        steps: list[_Node] = []
        left_node, left = node.left, self.compile(node.left)
        for i, (op, right_node) in enumerate(zip(node.ops, node.comparators, strict=True)):
            if isinstance(op, ast.In | ast.NotIn):
                if i < len(node.ops) - 1:
                    raise self.error(node, f"'{self.part(node)}' chains after 'in'")
                steps.append(self._member(node, left, right_node, isinstance(op, ast.NotIn)))
                break
            if type(op) not in _SYMBOLS:
                raise self.error(node, f"'{self.part(node)}' is not allowed")
            if any(
                isinstance(s, ast.Constant) and s.value is None for s in (left_node, right_node)
            ):
                problem = f"'{self.part(node)}' compares with None (always unknown)"
                raise self.error(node, problem, "use is_null(x) or not_null(x)")
            right = self.compile(right_node)
            steps.append(self._compare(node, left, right, _SYMBOLS[type(op)]))
            left_node, left = right_node, right
        return steps[0] if len(steps) == 1 else lambda env: reduce(_and, [s(env) for s in steps])

    def _compare(self, node: ast.AST, left: _Node, right: _Node, symbol: str) -> _Node:
        func = _COMPARE[symbol]

        def run(env: _Env) -> _Val:
            a, b = left(env), right(env)
            if "null" in (a.kind, b.kind):
                return _unknown(a, b)
            if a.kind != b.kind:
                problem = f"'{symbol}' compares {_KIND_WORDS[a.kind]} with {_KIND_WORDS[b.kind]}"
                raise self.fail_at(node)(problem, _TYPES_HINT)
            if a.kind == "bool" and symbol not in ("==", "!="):
                raise self.fail_at(node)(f"'{symbol}' orders true/false", "use == or !=")
            return _boolean(func(a.data, b.data), a.null | b.null)

        return run

    def _member(self, node: ast.AST, left: _Node, right: ast.AST, negate: bool) -> _Node:
        hint = 'write constants in brackets, e.g. channel in ("email", "push"); to look inside '
        hint += 'a text column use has(column, "item")'
        try:
            items = ast.literal_eval(right) if isinstance(right, ast.List | ast.Tuple) else None
        except (ValueError, TypeError, SyntaxError):
            items = None
        if items is None or any(type(i) not in (int, float, str) for i in items):
            raise self.error(
                right, f"'in' needs a list of constants, got '{self.part(right)}'", hint
            )
        kinds = {"text" if isinstance(i, str) else "num" for i in items}
        if len(kinds) > 1:
            raise self.error(right, f"'{self.part(right)}' mixes text and numbers", "use one type")
        pool = np.array(list(items), dtype=_TEXT if kinds == {"text"} else float)

        def run(env: _Env) -> _Val:
            a = left(env)
            for kind in kinds:
                self.expect(node, a, kind)
            if a.kind == "null":
                return _unknown(a)
            return _boolean(np.isin(a.data, pool) != negate, a.null)

        return run

    def _Call(self, node: ast.Call) -> _Node:
        allowed = f"allowed functions: {', '.join(sorted(FUNCTIONS))}"
        if not isinstance(node.func, ast.Name):
            raise self.error(node, f"calling '{self.part(node.func)}' is not allowed", allowed)
        name = node.func.id
        if name not in FUNCTIONS:
            problem = f"function '{name}' is not allowed in '{self.part(node)}'"
            raise self.error(node, problem, allowed)
        if node.keywords or len(node.args) != FUNCTIONS[name]:
            hint = f"{name} takes {FUNCTIONS[name]} argument(s)"
            raise self.error(node, f"'{self.part(node)}' is a bad call", hint)
        args = [(sub, self.compile(sub)) for sub in node.args]
        kind = "text" if name in ("has", "lower") else "num"

        def run(env: _Env) -> _Val:
            vals = [arg(env) for _, arg in args]
            if name in ("is_null", "not_null"):
                return _boolean(vals[0].null == (name == "is_null"), False)
            for (sub, _), val in zip(args, vals, strict=True):
                self.expect(sub, val, kind)
            if any(v.kind == "null" for v in vals):
                return _unknown(*vals)
            null = vals[0].null | vals[-1].null
            if name == "lower":
                return _Val(np.strings.lower(vals[0].data), null, "text")
            if name == "has":
                return _boolean(_has(vals[0].data, vals[1].data), null)
            func = {"abs": np.abs, "min": np.minimum, "max": np.maximum}[name]
            return _Val(func(*(v.data for v in vals)), null, "num")

        return run


def _and(a: _Val, b: _Val) -> _Val:
    false = (~a.data & ~a.null) | (~b.data & ~b.null)
    return _boolean(a.data & b.data, (a.null | b.null) & ~false)


def _or(a: _Val, b: _Val) -> _Val:
    true = a.data | b.data  # data is False wherever null
    return _boolean(true, (a.null | b.null) & ~true)


def _unknown(*vals: _Val) -> _Val:
    """Missing, of no type, in the broadcast shape of ``vals``."""
    shape = np.broadcast_shapes(*(v.null.shape for v in vals))
    return _Val(np.zeros(shape, dtype=bool), np.ones(shape, dtype=bool), "null")


def _has(data: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Whether each ``|`` or ``,``-separated text holds ``item`` as a whole item."""
    text = np.strings.replace(data.astype(_TEXT), ",", "|")
    for spaced in (" |", "| "):
        while np.any(np.strings.find(text, spaced) >= 0):
            text = np.strings.replace(text, spaced, "|")
    needle = "|" + np.strings.strip(item.astype(_TEXT)) + "|"
    return np.asarray(np.strings.find("|" + np.strings.strip(text) + "|", needle) >= 0)


def _depth(node: ast.AST) -> int:
    return 1 + max((_depth(child) for child in ast.iter_child_nodes(node)), default=0)


def compile_rule(text: str, *, where: str = "rule", known: Iterable[str] | None = None) -> Rule:
    """Parse and check a rule once, for fast evaluation over many rows.

    Parameters
    ----------
    text : str
        The rule, e.g. ``'region == "north" and age >= 25'``.
    where : str
        Where the rule comes from, named by every error (``'offers.toml [offers.S1]'``).
    known : iterable of str, optional
        The names a rule may read; when given, any other name is an error now.

    Returns
    -------
    Rule

    Raises
    ------
    ConfigError
        The rule is not valid or uses anything outside the language; the message names the
        part, its column, what is allowed and what to do.
    """
    body = text.strip()
    compiler = _Compiler(body, where, None if known is None else frozenset(known))
    try:
        tree = ast.parse(body, mode="eval")
        if _depth(tree) > _MAX_DEPTH:
            raise RecursionError
        root = compiler.compile(tree.body)
    except SyntaxError as exc:
        line = f" of line {exc.lineno}" if "\n" in body else ""
        raise ConfigError(
            f"{where}: not a valid rule at column {exc.offset or 1}{line} of '{body}' ({exc.msg}); "
            f"{_GRAMMAR}; compare with == and join with and/or"
        ) from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{where}: '{text[:80]}...' is nested too deeply; simplify it") from None
    return Rule(text, frozenset(compiler.names), root, where)
