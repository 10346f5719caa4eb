"""Row-level validation of a batch against its table's contract, vectorised per column.

Each value is parsed to its column's type and checked against the column's rule. A row with
any bad value is rejected as a whole (one :class:`~nextbest.data.sources.Reject` per bad
field); the other rows come out typed, with non-canonical columns packed into ``attributes``.
Checks that need the warehouse (references, duplicate ids) happen later, in
:mod:`nextbest.data.ingest`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.data.schema import Column, TableContract
from nextbest.data.sources import Batch, Reject
from nextbest.errors import DataError

__all__ = ["Validated", "received", "validate"]

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}
_TZ_SUFFIX = re.compile(
    r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|UTC|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE
)
_MAX_SHOWN = 80

Problem = tuple[np.ndarray, str, str, list[object]]
"""Rows (indices) with a bad value in one column: the column, the rule, the raw values."""


@dataclass
class Validated:
    """The typed rows that passed, their source lines, and the rejects."""

    data: pa.Table
    lines: np.ndarray
    rejects: list[Reject]
    rows_rejected: int


def received(value: object) -> str:
    """A value as error messages show it: quoted, shortened, or 'an empty value'."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "an empty value"
    text = str(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return repr(text)


def validate(batch: Batch, contract: TableContract, default_timezone: str | None) -> Validated:
    """Parse and check every canonical column of ``batch``; see the module docstring."""
    missing = [
        c.name for c in contract.columns if c.required and c.name not in batch.data.column_names
    ]
    if missing:
        found = ", ".join(batch.data.column_names) or "none"
        raise DataError(
            f"{batch.source}: missing required column(s) {', '.join(missing)} for table "
            f"{contract.name}; found columns: {found}"
        )
    n = batch.data.num_rows
    bad = np.zeros(n, dtype=bool)
    problems: list[Problem] = []
    columns: dict[str, pa.Array] = {}
    for col in contract.columns:
        if col.name in batch.data.column_names:
            raw = batch.data.column(col.name).combine_chunks()
        else:
            raw = pa.nulls(n, pa.string())
        values, invalid = _parse(raw, col, default_timezone)
        if col.required:
            invalid = invalid | _is_null(values)
        if invalid.any():
            idx = np.flatnonzero(invalid)
            shown = raw.take(pa.array(idx)).to_pylist()
            expected = col.expectation() + (" (required)" if col.required else "")
            problems.append((idx, col.name, expected, shown))
            bad |= invalid
        columns[col.name] = values
    columns["attributes"] = _attributes(batch.data, contract)
    typed = pa.table(columns)
    rejects = _rejects(batch, problems)
    keep = ~bad
    return Validated(typed.filter(pa.array(keep)), batch.lines[keep], rejects, int(bad.sum()))


def _rejects(
    batch: Batch, problems: list[tuple[np.ndarray, str, str, list[object]]]
) -> list[Reject]:
    if not problems:
        return []
    rows: dict[int, str] = {}
    all_idx = np.unique(np.concatenate([p[0] for p in problems]))
    raw_rows = batch.data.take(pa.array(all_idx)).to_pylist()
    for i, row in zip(all_idx.tolist(), raw_rows, strict=True):
        rows[i] = json.dumps(row, default=str, ensure_ascii=False)
    out = []
    for idx, name, expected, shown in problems:
        for i, value in zip(idx.tolist(), shown, strict=True):
            out.append(
                Reject(
                    batch.source,
                    int(batch.lines[i]),
                    batch.table,
                    name,
                    expected,
                    received(value),
                    rows[i],
                )
            )
    out.sort(key=lambda r: r.line or 0)
    return out


def _is_null(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_null(values).to_numpy(zero_copy_only=False), dtype=bool)


def _as_text(raw: pa.Array) -> pd.Series:
    """Raw values as stripped text, with empty strings as missing."""
    text = pd.Series(raw.cast(pa.string()).to_pandas(), dtype="object")
    text = text.str.strip()
    return text.where(text != "", None)


def _parse(raw: pa.Array, col: Column, tz: str | None) -> tuple[pa.Array, np.ndarray]:
    """Typed values (null where invalid) and a mask of values present but invalid."""
    kind = col.kind
    if kind in ("string", "json"):
        values, invalid = _parse_string(raw, col)
    elif kind == "timestamp":
        values, invalid = _parse_timestamp(raw, tz)
    elif kind == "bool":
        values, invalid = _parse_bool(raw)
    else:
        values, invalid = _parse_number(raw, col)
    return values, invalid


def _parse_string(raw: pa.Array, col: Column) -> tuple[pa.Array, np.ndarray]:
    """Text as given (blank means missing); enum values are trimmed and lower-cased."""
    text = raw if pa.types.is_string(raw.type) else raw.cast(pa.string())
    trimmed = pc.utf8_trim_whitespace(text)
    present = pc.fill_null(pc.not_equal(trimmed, ""), False)
    ok: pa.Array = present
    if col.enum is not None:
        text = pc.utf8_lower(trimmed)
        if col.multi:
            parts = pd.Series(text.to_pandas(), dtype="object").str.replace(",", "|").str.split("|")
            text = pa.array(
                parts.map(lambda p: "|".join(x.strip() for x in p) if isinstance(p, list) else p),
                pa.string(),
            )
            allowed = set(col.enum)
            ok = pa.array(
                parts.map(lambda p: isinstance(p, list) and all(x.strip() in allowed for x in p)),
                pa.bool_(),
            )
        else:
            ok = pc.is_in(text, value_set=pa.array(col.enum))
    elif col.kind == "json":
        ok = _json_objects(text)
    present_np = present.to_numpy(zero_copy_only=False)
    invalid = present_np & ~pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    keep = pa.array(present_np & ~invalid)
    return pc.if_else(keep, text, pa.scalar(None, pa.string())), invalid


def _json_objects(text: pa.Array) -> pa.Array:
    """Whether each text is a JSON object (null where missing).

    DuckDB's parser (strict RFC 8259) checks the whole column at once; the few texts it
    refuses are asked of Python's, which also takes NaN and Infinity, so the verdict is
    Python's ``json.loads`` either way, a hundred times faster on a clean column.
    """
    con = duckdb.connect()
    try:
        con.register("texts", pa.table({"v": text}))
        verdict = con.sql(
            "SELECT CASE WHEN json_valid(v) THEN json_type(v::JSON) = 'OBJECT' END AS ok FROM texts"
        ).to_arrow_table()["ok"]
    finally:
        con.close()
    ok = verdict.combine_chunks() if isinstance(verdict, pa.ChunkedArray) else verdict
    unsure = np.flatnonzero(
        pc.fill_null(pc.and_(pc.is_null(ok), pc.is_valid(text)), False).to_numpy(
            zero_copy_only=False
        )
    )
    if not len(unsure):
        return ok
    values = ok.to_pylist()
    for i in unsure:
        values[i] = _is_json_object(text[int(i)].as_py())
    return pa.array(values, pa.bool_())


def _is_json_object(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def _parse_bool(raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_boolean(raw.type):
        return raw, np.zeros(len(raw), dtype=bool)
    text = _as_text(raw).str.lower()
    truth = text.isin(_TRUE)
    falsity = text.isin(_FALSE)
    invalid = (text.notna() & ~truth & ~falsity).to_numpy()
    out = pd.Series(np.where(truth, True, False), dtype="object").where(truth | falsity, None)
    return pa.array(out, pa.bool_()), invalid


def _parse_number(raw: pa.Array, col: Column) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type):
        num = pd.Series(raw.to_pandas(), dtype="float64")
        present = num.notna().to_numpy()
    else:
        text = _as_text(raw)
        present = text.notna().to_numpy()
        num = pd.to_numeric(text, errors="coerce").astype("float64")
    arr = num.to_numpy(dtype="float64", na_value=np.nan)
    ok = np.isfinite(arr)
    if col.kind == "int":
        ok &= np.equal(np.floor(arr), arr, where=ok, out=np.zeros_like(ok))
    if col.minimum is not None:
        ok &= np.greater_equal(arr, col.minimum, where=ok, out=np.zeros_like(ok))
    if col.maximum is not None:
        ok &= np.less_equal(arr, col.maximum, where=ok, out=np.zeros_like(ok))
    invalid = present & ~ok
    mask = ~ok
    if col.kind == "int":
        ints = np.where(ok, arr, 0).astype(np.int64)
        return pa.array(ints, pa.int64(), mask=mask), invalid
    return pa.array(np.where(ok, arr, 0.0), pa.float64(), mask=mask), invalid


def _parse_timestamp(raw: pa.Array, tz: str | None) -> tuple[pa.Array, np.ndarray]:
    target = pa.timestamp("us", tz="UTC")
    if pa.types.is_timestamp(raw.type):
        if raw.type.tz is not None:
            return raw.cast(target), np.zeros(len(raw), dtype=bool)
        if tz is None:
            return pa.nulls(len(raw), target), ~_is_null(raw)
        series = pd.Series(raw.to_pandas()).dt.tz_localize(tz).dt.tz_convert("UTC")
        return pa.array(series, target), np.zeros(len(raw), dtype=bool)
    text = _as_text(raw)
    present = text.notna().to_numpy()
    has_zone = text.str.contains(_TZ_SUFFIX, na=False).to_numpy()
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    if has_zone.any():
        parsed[has_zone] = pd.to_datetime(
            text[has_zone], utc=True, errors="coerce", format="ISO8601"
        )
    naive = present & ~has_zone
    if tz is not None and naive.any():
        local = pd.to_datetime(text[naive], errors="coerce", format="ISO8601")
        parsed[naive] = local.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert(
            "UTC"
        )
    invalid = present & parsed.isna().to_numpy()
    return pa.array(parsed, target), invalid


def _attributes(data: pa.Table, contract: TableContract) -> pa.Array:
    """Source columns beyond the canonical ones, as one JSON object per row."""
    canonical = set(contract.column_names)
    extras = [c for c in data.column_names if c not in canonical and not c.startswith("_")]
    given = data.column("attributes") if "attributes" in data.column_names else None
    if not extras:
        if given is None:
            return pa.nulls(data.num_rows, pa.string())
        return given.combine_chunks().cast(pa.string())
    frame = data.select(extras).to_pandas()
    frame = frame.astype("object").where(frame.notna(), None)
    lines = frame.to_json(orient="records", lines=True, force_ascii=False, date_format="iso")
    objects = lines.rstrip("\n").split("\n") if data.num_rows else []
    if given is not None:
        merged = []
        for extra, own in zip(objects, given.to_pylist(), strict=True):
            obj = json.loads(extra)
            if own and _is_json_object(own):
                obj.update(json.loads(own))
            merged.append(json.dumps(obj, ensure_ascii=False))
        objects = merged
    return pa.array(objects, pa.string())
