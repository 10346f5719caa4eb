"""Small helpers shared by the dataset readers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from nextbest.data.sources import Batch, Reject

__all__ = ["batch", "lines_in_chunks", "reject"]


def batch(
    table: str,
    columns: Mapping[str, object],
    lines: np.ndarray,
    source: Path | str,
    rejects: list[Reject] | None = None,
) -> Batch:
    """A batch from columns given as numpy arrays, lists or Arrow arrays (text by default)."""
    arrays = {}
    for name, values in columns.items():
        if isinstance(values, pa.Array | pa.ChunkedArray):
            arrays[name] = values
        else:
            arrays[name] = pa.array(np.asarray(values, dtype=object), pa.string())
    return Batch(table, pa.table(arrays), np.asarray(lines, np.int64), str(source), rejects or [])


def reject(
    source: Path, line: int, table: str, field: str, expected: str, got: str, row: str
) -> Reject:
    shown = repr(got) if got.strip() else "an empty value"
    return Reject(str(source), line, table, field, expected, shown, row.rstrip("\r\n")[:500])


def lines_in_chunks(path: Path, size: int, skip: int = 0) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, lines)`` of a text file, ``size`` lines at a time."""
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        for _ in range(skip):
            fh.readline()
        number = skip + 1
        while True:
            chunk = [fh.readline() for _ in range(size)]
            chunk = [c for c in chunk if c]
            if not chunk:
                return
            yield number, [c.rstrip("\r\n") for c in chunk]
            number += len(chunk)
