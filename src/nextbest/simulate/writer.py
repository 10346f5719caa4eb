"""Stream tables to disk, one file per table, batch after batch, so memory stays flat.

Parquet files (``<table>.parquet``, zstd) are written with :class:`pyarrow.parquet.ParquetWriter`
as one row group per batch; CSV files (``<table>.csv``) have one header line and timestamps as
ISO-8601 in UTC with a ``Z`` (``2026-01-01T12:00:00Z``, with microseconds where there are
any). The first batch of a table fixes its schema; later batches are cast to it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = ["TableWriter", "csv_ready"]

log = logging.getLogger(__name__)


def csv_ready(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 text with 'Z' (Arrow's ``%S`` carries any fraction of a second)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            text = pc.strftime(table.column(i), format="%Y-%m-%dT%H:%M:%SZ")
            table = table.set_column(i, f.name, text)
    return table


class TableWriter:
    """Appends Arrow tables to one Parquet or CSV file per table name in ``folder``.

    Use as a context manager, or call :meth:`close`; ``rows`` counts the rows written per table.
    """

    def __init__(self, folder: Path, file_format: Literal["parquet", "csv"]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.format = file_format
        self.rows: dict[str, int] = {}
        self._open: dict[str, pq.ParquetWriter | pacsv.CSVWriter] = {}
        self._schemas: dict[str, pa.Schema] = {}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.{self.format}"

    def write(self, name: str, table: pa.Table) -> None:
        """Append ``table`` to the file of ``name`` (created on the first call)."""
        if name in self._schemas:
            table = table.cast(self._schemas[name])
        else:
            self._schemas[name] = table.schema
            self.rows[name] = 0
        out = csv_ready(table) if self.format == "csv" else table
        if name not in self._open:
            self._open[name] = (
                pq.ParquetWriter(self.path(name), out.schema, compression="zstd")
                if self.format == "parquet"
                else pacsv.CSVWriter(self.path(name), out.schema)
            )
        self._open[name].write_table(out)
        self.rows[name] += table.num_rows

    def close(self) -> None:
        for writer in self._open.values():
            writer.close()
        self._open.clear()
        log.debug("wrote %s to %s", self.rows, self.folder)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
