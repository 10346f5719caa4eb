"""Eligibility rules: pinned error messages, hand-computed results, and a row-by-row reference."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextbest.decide.rules import FUNCTIONS, compile_rule
from nextbest.errors import ConfigError

KNOWN = ["age", "region", "cart", "tags", "monetary_365", "days_since_purchase", "tier"]
WHERE = "offers.toml [offers.S1] eligibility"
ALLOWED = "allowed functions: abs, has, is_null, lower, max, min, not_null"
GRAMMAR = (
    "rules use and/or/not, comparisons (== != < <= > >=), in (...), + - * / %, names, "
    "constants and the functions abs, has, is_null, lower, max, min, not_null"
)
IN_HINT = (
    'write constants in brackets, e.g. channel in ("email", "push"); to look inside a text '
    'column use has(column, "item")'
)


def _error(text: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as err:
        compile_rule(text, where=WHERE, known=KNOWN, **kwargs)
    return str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'regoin == "north"',
            "unknown name 'regoin' at column 1 of 'regoin == \"north\"'; did you mean 'region'? "
            "known names: age, cart, days_since_purchase, monetary_365, region, tags, tier",
        ),
        (
            "age > 3 and monetary_356 > 5",
            "unknown name 'monetary_356' at column 13 of 'age > 3 and monetary_356 > 5'; "
            "did you mean 'monetary_365'? "
            "known names: age, cart, days_since_purchase, monetary_365, region, tags, tier",
        ),
        (
            "true or age > 3",
            "unknown name 'true' at column 1 of 'true or age > 3'; write True or False, and "
            "is_null(x) for a missing value; known names: age, cart, days_since_purchase, "
            "monetary_365, region, tags, tier",
        ),
        (
            "open(age)",
            f"function 'open' is not allowed in 'open(age)' at column 1 of 'open(age)'; {ALLOWED}",
        ),
        (
            'age > 1 and eval("1")',
            "function 'eval' is not allowed in 'eval(\"1\")' at column 13 of "
            f"'age > 1 and eval(\"1\")'; {ALLOWED}",
        ),
        (
            "region.upper() == 'N'",
            "calling 'region.upper' is not allowed at column 1 of 'region.upper() == 'N''; "
            + ALLOWED,
        ),
        (
            "tags[0] == 'a'",
            f"indexing 'tags[0]' is not allowed at column 1 of 'tags[0] == 'a''; {GRAMMAR}",
        ),
        (
            "age ** 2 > 4",
            f"operator in 'age ** 2' is not allowed at column 1 of 'age ** 2 > 4'; {GRAMMAR}",
        ),
        (
            "region in cart",
            "'in' needs a list of constants, got 'cart' at column 11 of 'region in cart'; "
            + IN_HINT,
        ),
        (
            "tier in (region, 'gold')",
            "'in' needs a list of constants, got '(region, 'gold')' at column 9 of "
            f"'tier in (region, 'gold')'; {IN_HINT}",
        ),
        (
            "tier in ('gold', 1)",
            "'('gold', 1)' mixes text and numbers at column 9 of 'tier in ('gold', 1)'; "
            "use one type",
        ),
        (
            "tier in ('gold',) == True",
            f"'tier in ('gold',) == True' chains after 'in' at column 1 of "
            f"'tier in ('gold',) == True'; {GRAMMAR}",
        ),
        (
            "age == None",
            "'age == None' compares with None (always unknown) at column 1 of 'age == None'; "
            "use is_null(x) or not_null(x)",
        ),
        (
            "has(cart)",
            "'has(cart)' is a bad call at column 1 of 'has(cart)'; has takes 2 argument(s)",
        ),
        (
            "is_null(x=age)",
            "'is_null(x=age)' is a bad call at column 1 of 'is_null(x=age)'; "
            "is_null takes 1 argument(s)",
        ),
        (
            'region = "north"',
            "not a valid rule at column 8 of 'region = \"north\"' (invalid syntax); "
            f"{GRAMMAR}; compare with == and join with and/or",
        ),
        ("age > 1j", f"constant 1j is not allowed at column 7 of 'age > 1j'; {GRAMMAR}"),
        (
            "(tier := 1)",
            f"':=' 'tier := 1' is not allowed at column 2 of '(tier := 1)'; {GRAMMAR}",
        ),
    ],
)
def test_compile_errors_are_pinned(text: str, message: str) -> None:
    assert _error(text) == f"{WHERE}: {message}"


def test_columns_count_characters_and_lines() -> None:
    assert "not a valid rule at column 3 of line 2 of" in _error("(age > 1 and\n  == 2)")
    assert "unknown name 'x' at column 19 of" in _error('region == "é" and x > 1')
    assert "at column 5 of line 2" in _error("(age > 1 and\n    zz == 2)")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "().__class__",
        "(lambda: 1)()",
        "[x for x in y]",
        "{x for x in y}",
        "age if age else 1",
        "f'{age}' == 'x'",
        "open('/etc/passwd').read()",
        "getattr(age, '__class__')",
        "age.__class__.__bases__[0].__subclasses__()",
        "'a' * 10000000000 == 'b'",
        "9 ** 9 ** 9 ** 9 > 1",
        "not " * 200 + "age > 1",
        "(" * 300 + "age" + ")" * 300,
    ],
)
def test_hostile_input_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        rule = compile_rule(text, where=WHERE)
        rule.evaluate({"age": 1, "y": [1]}, 1)  # only text * number reaches evaluation
    assert str(err.value).startswith(f"{WHERE}: ")


VALUES = {
    "region": pd.Series(["north", "south", None, "north", "NORTH"]),
    "age": np.array([30.0, 20.0, 40.0, np.nan, 25.0]),
    "cart": pd.Series(["P0042|P0001", "P0001, P0042 ", None, "", "P00421"], dtype="str"),
    "tier": pd.Series(["gold", "bronze", "silver", None, "gold"], dtype="category"),
    "vip": pd.Series([True, False, None, True, False], dtype="boolean"),
    "visits": pd.Series([1, 0, None, 3, 2], dtype="Int64"),
    "channel": "email",
    "hour": 9,
    "weather": np.array(["rain"]),
    "offer_category": "sunglasses",
}
CASES = [
    ('region == "north" and age >= 25', [1, 0, 0, 0, 0]),
    ('region != "north"', [0, 1, 0, 0, 1]),
    ('not (region == "north")', [0, 1, 0, 0, 1]),  # unknown stays unknown under not
    ('lower(region) == "north"', [1, 0, 0, 1, 1]),
    ("age > 25 or is_null(age)", [1, 0, 1, 1, 0]),
    ("not_null(region) and not_null(age)", [1, 1, 0, 0, 1]),
    ("age < 26 or age > 26", [1, 1, 1, 0, 1]),
    ("not (age < 26 or age > 26)", [0, 0, 0, 0, 0]),
    ('region == "north" or age > 35', [1, 0, 1, 1, 0]),  # True or unknown is True
    ('region == "south" and age > 35', [0, 0, 0, 0, 0]),  # False and unknown is False
    ("20 <= age < 30", [0, 1, 0, 0, 1]),
    ("18 < age <= 30 < 31", [1, 1, 0, 0, 1]),
    ('has(cart, "P0042")', [1, 1, 0, 0, 0]),
    ('not has(cart, "P0042")', [0, 0, 0, 1, 1]),
    ('not has(cart, "P0042") or is_null(cart)', [0, 0, 1, 1, 1]),
    ('tier in ["gold", "silver"]', [1, 0, 1, 0, 1]),
    ('tier not in ("gold",)', [0, 1, 1, 0, 0]),
    ("tier in ()", [0, 0, 0, 0, 0]),
    ('channel in ("email", "push")', [1, 1, 1, 1, 1]),
    ("hour >= 8 and hour < 21", [1, 1, 1, 1, 1]),
    ('not (weather == "rain" and offer_category == "sunglasses")', [0, 0, 0, 0, 0]),
    ("age * 0.1 > 2.4", [1, 0, 1, 0, 1]),
    ("age / 0 > 0 or is_null(age / 0)", [1, 1, 1, 1, 1]),
    ("age % 7 == 6", [0, 1, 0, 0, 0]),
    ("-age < -24 and +age > 0", [1, 0, 1, 0, 1]),
    ("abs(20 - age) == 5", [0, 0, 0, 0, 1]),
    ("min(age, 26) == 26 and max(age, 26) > 26", [1, 0, 1, 0, 0]),
    ("vip", [1, 0, 0, 1, 0]),
    ("vip == True or visits >= 2", [1, 0, 0, 1, 1]),
    ("visits in (0, 2) or is_null(visits)", [0, 1, 1, 0, 1]),
    ("visits in (-1, 1.0)", [1, 0, 0, 0, 0]),
    ("True", [1, 1, 1, 1, 1]),
    ("None", [0, 0, 0, 0, 0]),
    ("not None", [0, 0, 0, 0, 0]),
    ("None or age > 39", [0, 0, 1, 0, 0]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_evaluation_matches_hand_computed_truth(text: str, expected: list[int]) -> None:
    rule = compile_rule(text)
    got = rule.evaluate(VALUES, 5)
    assert got.dtype == bool and got.shape == (5,)
    assert got.astype(int).tolist() == expected


def test_names_and_length_one_mixing() -> None:
    rule = compile_rule('region == "north" and age >= limit', known=["region", "age", "limit"])
    assert rule.names == frozenset({"region", "age", "limit"})
    assert rule.source == 'region == "north" and age >= limit'
    one = rule.evaluate({"region": ["north"], "age": np.array([30]), "limit": 25}, 1)
    assert one.tolist() == [True]
    many = rule.evaluate({"region": "north", "age": np.array([30, 20, 26]), "limit": [25]}, 3)
    assert many.tolist() == [True, False, True]
    scalars = rule.evaluate({"region": "south", "age": 30, "limit": 25}, 4)
    assert scalars.tolist() == [False] * 4
    assert compile_rule("x > 1").evaluate({"x": np.array([])}, 0).tolist() == []


def test_all_missing_object_column_is_unknown_of_any_type() -> None:
    nothing = np.array([None, None], dtype=object)
    for text in ('has(cart, "a")', "cart == 1", 'lower(cart) == "a"', "cart in ('a',)"):
        assert compile_rule(text).evaluate({"cart": nothing}, 2).tolist() == [False, False]
    assert compile_rule("is_null(cart)").evaluate({"cart": nothing}, 2).tolist() == [True, True]


@pytest.mark.parametrize(
    ("text", "values", "message"),
    [
        (
            "region > 3",
            {"region": ["north"]},
            "'>' compares text with a number in 'region > 3' at column 1 of 'region > 3'; "
            'compare text with text ("north"), numbers with numbers (25)',
        ),
        (
            "age * 2 > 1",
            {"age": ["old"]},
            "expected a number, got text in 'age * 2' at column 1 of 'age * 2 > 1'; "
            'compare text with text ("north"), numbers with numbers (25)',
        ),
        (
            "age and region == 'x'",
            {"age": 3, "region": "x"},
            "expected true/false, got a number in 'age' at column 1 of 'age and region == 'x''",
        ),
        (
            "has(age, 'x')",
            {"age": 3},
            "expected text, got a number in 'age' at column 5 of 'has(age, 'x')'",
        ),
        (
            "tier in ('gold',)",
            {"tier": [1, 2, 3]},
            "expected text, got a number in 'tier in ('gold',)' at column 1",
        ),
        ("vip < True", {"vip": [True]}, "'<' orders true/false in 'vip < True' at column 1"),
        (
            "age > 25",
            {"agee": [30]},
            "no value for 'age' in 'age' at column 1 of 'age > 25'; values given: agee; "
            "pass every name",
        ),
        (
            "age > 25",
            {"age": [30, 20]},
            "'age' has 2 values in 'age' at column 1 of 'age > 25'; expected 3 or 1",
        ),
        (
            "age > 25",
            {"age": np.array(["2024-01-01"], dtype="datetime64[D]")},
            "'age' has type datetime64[D], which rules cannot use in 'age'",
        ),
        (
            "age > 25",
            {"age": pd.Series([1, "a", 2], dtype=object)},
            "'age' holds mixed-integer values in 'age'",
        ),
        ("age + 1", {"age": 3}, "'age + 1' gives a number, not true/false"),
    ],
)
def test_evaluation_errors_are_pinned(text: str, values: dict, message: str) -> None:
    rule = compile_rule(text, where=WHERE)
    with pytest.raises(ConfigError) as err:
        rule.evaluate(values, 3)
    got = str(err.value)
    assert got.startswith(f"{WHERE}: {message}"), got


def test_every_function_is_covered_by_the_cases() -> None:
    used = {name for text, _ in CASES for name in FUNCTIONS if f"{name}(" in text}
    assert used == set(FUNCTIONS)


# --- property: vectorised evaluation equals a row-by-row reference with SQL nulls -------------

Ref = Callable[[dict[str, Any]], Any]
Expr = tuple[str, Ref]
NUMS, TEXTS = ("a", "b"), ("s", "t")
_WORDS = ["a", "b", "A", "a b", ""]


def _null(*xs: Any) -> bool:
    return any(x is None for x in xs)


def _kleene_and(x: Any, y: Any) -> Any:
    if x is False or y is False:
        return False
    return None if _null(x, y) else True


def _kleene_or(x: Any, y: Any) -> Any:
    if x is True or y is True:
        return True
    return None if _null(x, y) else False


def _arith(op: str, x: float, y: float) -> float | None:
    if op in "/%" and y == 0:
        return None
    funcs = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    return funcs[op](x, y) if op in funcs else (x / y if op == "/" else x % y)


def _items(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"[|,]", text.strip())]


def _strategies(depth: int) -> tuple[st.SearchStrategy[Expr], ...]:
    num_leaf = st.one_of(
        st.sampled_from([(n, lambda r, n=n: r[n]) for n in NUMS]),
        st.integers(-3, 3).map(lambda k: (f"({k})", lambda r, k=k: float(k))),
    )
    text_leaf = st.one_of(
        st.sampled_from([(n, lambda r, n=n: r[n]) for n in TEXTS]),
        st.sampled_from(_WORDS).map(lambda w: (repr(w), lambda r, w=w: w)),
    )
    bool_leaf = st.just(("f", lambda r: r["f"]))
    if depth == 0:
        return num_leaf, text_leaf, bool_leaf
    num, text, boolean = _strategies(depth - 1)

    def binop(op: str, x: Expr, y: Expr) -> Expr:
        def ref(r: dict[str, Any]) -> Any:
            vx, vy = x[1](r), y[1](r)
            return None if _null(vx, vy) else _arith(op, vx, vy)

        return f"({x[0]} {op} {y[0]})", ref

    def call(name: str, *args: Expr) -> Expr:
        funcs: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max}
        funcs |= {"lower": str.lower, "has": lambda s, w: w.strip() in _items(s)}

        def ref(r: dict[str, Any]) -> Any:
            vals = [a[1](r) for a in args]
            if name in ("is_null", "not_null"):
                return (vals[0] is None) == (name == "is_null")
            return None if _null(*vals) else funcs[name](*vals)

        return f"{name}({', '.join(a[0] for a in args)})", ref

    def compare(pairs: tuple[Expr, list[tuple[str, Expr]]]) -> Expr:
        first, rest = pairs
        ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le}
        ops |= {">": operator.gt, ">=": operator.ge}

        def ref(r: dict[str, Any]) -> Any:
            out: Any = True
            left = first[1](r)
            for op, right in rest:
                value = right[1](r)
                out = _kleene_and(out, None if _null(left, value) else ops[op](left, value))
                left = value
            return out

        return first[0] + "".join(f" {op} {e[0]}" for op, e in rest), ref

    def member(x: Expr, items: list[Any], negate: bool) -> Expr:
        word = "not in" if negate else "in"

        def ref(r: dict[str, Any]) -> Any:
            v = x[1](r)
            return None if v is None else (v in items) != negate

        return f"({x[0]} {word} {tuple(items)!r})", ref

    def join(word: str, x: Expr, y: Expr) -> Expr:
        func = _kleene_and if word == "and" else _kleene_or
        return f"({x[0]} {word} {y[0]})", lambda r: func(x[1](r), y[1](r))

    def has(x: Expr, word: str) -> Expr:
        return call("has", x, (repr(word), lambda r: word))

    def negate(x: Expr) -> Expr:
        return f"(not {x[0]})", lambda r: None if (v := x[1](r)) is None else not v

    def minus(x: Expr) -> Expr:
        return f"(-{x[0]})", lambda r: None if (v := x[1](r)) is None else -v

    op = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
    num_d = st.one_of(
        num,
        st.builds(binop, st.sampled_from("+-*/%"), num, num),
        st.builds(minus, num),
        st.builds(lambda x: call("abs", x), num),
        st.builds(call, st.sampled_from(["min", "max"]), num, num),
    )
    text_d = st.one_of(text, st.builds(lambda x: call("lower", x), text))
    bool_d = st.one_of(
        boolean,
        st.builds(compare, st.tuples(num, st.lists(st.tuples(op, num), min_size=1, max_size=2))),
        st.builds(compare, st.tuples(text, st.lists(st.tuples(op, text), min_size=1, max_size=1))),
        st.builds(member, num, st.lists(st.integers(-3, 3), max_size=3), st.booleans()),
        st.builds(member, text, st.lists(st.sampled_from(_WORDS), max_size=3), st.booleans()),
        st.builds(has, text, st.sampled_from(_WORDS)),
        st.builds(call, st.sampled_from(["is_null", "not_null"]), st.one_of(num, text, boolean)),
        st.builds(negate, boolean),
        st.builds(join, st.sampled_from(["and", "or"]), boolean, boolean),
    )
    return num_d, text_d, bool_d


RULES = _strategies(3)[2]
_num_value = st.one_of(st.none(), st.integers(-3, 3).map(float))
_text_value = st.one_of(st.none(), st.sampled_from(["a", "b", "A", "a|b", "b, a b", " a ", ""]))
_bool_value = st.one_of(st.none(), st.booleans())


def _column(kind: str, values: list[Any], form: int) -> Any:
    """The same values in one of several shapes the batch and real-time paths pass."""
    if form == 0 and len(set(map(str, values))) == 1:
        return values[0]  # a scalar
    if kind == "num":
        floats = np.array([np.nan if v is None else v for v in values])
        return [floats, pd.Series(values, dtype="Float64"), pd.Series(values, dtype=object)][form]
    if kind == "text":
        objects = np.array(values, dtype=object)
        return [pd.Series(values, dtype=object), pd.Series(values, dtype="str"), objects][form]
    return [pd.Series(values, dtype="boolean"), np.array(values, dtype=object)][form % 2]


@settings(max_examples=300, deadline=None)
@given(rule=RULES, data=st.data())
def test_vectorised_matches_row_by_row_reference(rule: Expr, data: st.DataObject) -> None:
    text, ref = rule
    n = data.draw(st.integers(1, 6))
    kinds = {"a": "num", "b": "num", "s": "text", "t": "text", "f": "bool"}
    draws = {"num": _num_value, "text": _text_value, "bool": _bool_value}
    columns = {k: data.draw(st.lists(draws[v], min_size=n, max_size=n)) for k, v in kinds.items()}
    forms = {k: data.draw(st.integers(0, 2)) for k in kinds}
    values = {k: _column(kinds[k], columns[k], forms[k]) for k in kinds}
    compiled = compile_rule(text, known=kinds)
    got = compiled.evaluate(values, n)
    for i in range(n):
        row = {k: columns[k][i] if not np.isscalar(values[k]) else columns[k][0] for k in kinds}
        want = ref(row)
        assert bool(got[i]) == (want is True), (text, row, want)
