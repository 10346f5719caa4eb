"""Reading source files as batches of rows bound for a canonical table.

A *reader* turns one path (a file, or a folder for multi-file datasets) into an iterator of
:class:`Batch` objects. A batch carries the rows as an Arrow table whose columns are named after
the canonical columns (values may still be raw text: validation parses them), plus the source
line of every row, so that a rejected row can be traced to its place in the file. Readers never
load a whole large file into memory: they stream blocks of ``ReadOptions.batch_rows`` rows.

Readers for the generic layouts live here (CSV, Parquet, JSON Lines); readers for the public
datasets live in :mod:`nextbest.data.formats`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nextbest.errors import DataError

__all__ = ["Batch", "ReadOptions", "Reject", "read_csv", "read_jsonl", "read_parquet", "sniff_text"]

_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class Reject:
    """A row (or one field of it) that cannot enter the warehouse, and why."""

    source: str
    line: int | None
    table: str
    field: str
    expected: str
    received: str
    row: str = ""

    def message(self) -> str:
        where = f"{self.source} line {self.line}" if self.line is not None else self.source
        return f"{where}: {self.field} must be {self.expected}, got {self.received}"


@dataclass
class Batch:
    """Rows read from one source, bound for one canonical table.

    ``data`` holds canonical columns (raw text or typed values) and may hold extra columns,
    which validation keeps in ``attributes``. ``lines`` gives each row's line in the source
    (1-based, header included; for Parquet the row number). ``rejects`` carries rows the reader
    itself could not map (for example a malformed CSV line), so that nothing is lost.
    """

    table: str
    data: pa.Table
    lines: np.ndarray
    source: str
    rejects: list[Reject] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.lines) != self.data.num_rows:
            raise ValueError(f"{len(self.lines)} line numbers for {self.data.num_rows} rows")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a source: block size, delimiter, the time zone of naive timestamps."""

    batch_rows: int = 250_000
    delimiter: str = ","
    default_timezone: str | None = None
    table: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)


def sniff_text(path: Path) -> None:
    """Fail early, and clearly, on an empty or binary file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None
    if not head:
        raise DataError(f"{path}: the file is empty; expected a header line and rows")
    if b"\x00" in head:
        raise DataError(f"{path}: this is a binary file, not text; expected CSV or JSON Lines")


def _apply_mapping(data: pa.Table, options: ReadOptions) -> pa.Table:
    if options.rename:
        data = data.rename_columns([options.rename.get(n, n) for n in data.column_names])
    for name, value in options.constants.items():
        if name not in data.column_names:
            data = data.append_column(name, pa.array([value] * data.num_rows, pa.string()))
    return data


def read_csv(path: Path, table: str, options: ReadOptions) -> Iterator[Batch]:
    """Stream a delimited text file with a header line; every value is read as text."""
    sniff_text(path)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        header = fh.readline().rstrip("\r\n")
    names = header.split(options.delimiter)
    if len(names) == 1:
        for other, word in _DELIMITERS.items():
            if other != options.delimiter and other in header:
                raise DataError(
                    f"{path} line 1: found a single column {header[:60]!r}; the file seems to "
                    f"use {word} ({other!r}) as delimiter, expected {options.delimiter!r}. "
                    f"Pass --delimiter {other!r} or fix the file."
                )
    source = str(path)
    column_types = {n.strip().strip('"'): pa.string() for n in names}
    with path.open("rb") as fh:
        header_bytes = fh.readline()
        line = 2
        while True:
            chunk = fh.readlines(options.batch_rows * 64)
            if not chunk:
                break
            numbers = np.arange(line, line + len(chunk), dtype=np.int64)
            line += len(chunk)
            filled = [i for i, text in enumerate(chunk) if text.strip()]
            yield _parse_chunk(
                header_bytes,
                [chunk[i] for i in filled],
                numbers[filled],
                table,
                source,
                column_types,
                options,
            )


def _parse_chunk(
    header: bytes,
    lines: list[bytes],
    numbers: np.ndarray,
    table: str,
    source: str,
    column_types: dict[str, pa.DataType],
    options: ReadOptions,
) -> Batch:
    """Parse one block of non-blank lines; malformed lines become rejects with their number."""
    rejects: list[Reject] = []
    bad: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        index = (row.number or 2) - 2
        bad.append(index)
        rejects.append(
            Reject(
                source,
                int(numbers[index]) if 0 <= index < len(numbers) else None,
                table,
                "(row)",
                f"{row.expected_columns} fields separated by {options.delimiter!r}",
                f"{row.actual_columns} fields",
                row.text[:500],
            )
        )
        return "skip"

    try:
        data = pacsv.read_csv(
            io.BytesIO(header + b"".join(lines)),
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=options.delimiter, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{source}: cannot be parsed as delimited text ({exc})") from None
    keep = np.delete(numbers, bad) if bad else numbers
    return Batch(table, _apply_mapping(data, options), keep, source, rejects)


def read_parquet(path: Path, table: str, options: ReadOptions) -> Iterator[Batch]:
    """Stream a Parquet file in row groups; rows are numbered from 1."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    start = 1
    for rb in pf.iter_batches(batch_size=options.batch_rows):
        data = pa.Table.from_batches([rb])
        lines = np.arange(start, start + data.num_rows, dtype=np.int64)
        start += data.num_rows
        yield Batch(table, _apply_mapping(data, options), lines, str(path))


def read_jsonl(path: Path, table: str, options: ReadOptions) -> Iterator[Batch]:
    """Stream JSON Lines: one object per line; a line that is not an object is rejected."""
    sniff_text(path)
    source = str(path)
    rows: list[dict[str, object]] = []
    lines: list[int] = []
    rejects: list[Reject] = []

    def flush() -> Batch:
        keys: dict[str, None] = {}
        for r in rows:
            keys.update(dict.fromkeys(r))
        cols = {k: pa.array([_jsonl_value(r.get(k)) for r in rows], pa.string()) for k in keys}
        data = pa.table(cols) if cols else pa.table({"_": pa.array([None] * len(rows))})
        out = Batch(
            table, _apply_mapping(data, options), np.asarray(lines, np.int64), source, list(rejects)
        )
        rows.clear()
        lines.clear()
        rejects.clear()
        return out

    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                rejects.append(
                    Reject(
                        source,
                        number,
                        table,
                        "(row)",
                        "a JSON object",
                        f"invalid JSON ({exc.msg})",
                        text[:500],
                    )
                )
                continue
            if not isinstance(obj, dict):
                rejects.append(
                    Reject(
                        source,
                        number,
                        table,
                        "(row)",
                        "a JSON object",
                        type(obj).__name__,
                        text[:500],
                    )
                )
                continue
            rows.append(obj)
            lines.append(number)
            if len(rows) >= options.batch_rows:
                yield flush()
    if rows or rejects:
        yield flush()


def _jsonl_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)
