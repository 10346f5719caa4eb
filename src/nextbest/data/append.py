"""A typed append: rows the engine wrote itself, copied into the warehouse without re-reading.

:func:`~nextbest.data.ingest.ingest` reads a file back, validates every row, and checks ids and
references table-wide: what a file from outside needs. Rows the engine typed itself (the batch
decision log) cannot be malformed, and the caller can prove their ids new more cheaply than a
join against the whole table (a day's decision ids share a prefix no logged id has). For those,
:class:`TypedAppend` inserts a stream of Arrow batches as they are made, in one transaction with
the record of the load in ``loads`` (the file's SHA-256 and format, as ingestion records them,
so that ingesting the same file later adds nothing), and returns the :class:`LoadResult`
ingestion would have returned. What it checks: every batch has the contract's columns (a
subset; the rest are null) with the contract's Arrow types.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import ibis
import pyarrow as pa

from nextbest.data.ingest import LoadResult, TableCounts
from nextbest.data.schema import contract
from nextbest.data.warehouse import BOOKKEEPING, Warehouse
from nextbest.errors import DataError

__all__ = ["TypedAppend", "arrow_schema", "file_sha256", "write_report"]

log = logging.getLogger(__name__)

_VIEW = "_typed_append_batch"


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a canonical table's contract (``ts`` as microseconds in UTC)."""
    return ibis.schema(contract(table).ibis_schema()).to_pyarrow()


def file_sha256(path: Path) -> str:
    """A single file's content hash as ingestion records it in ``loads.sha256``: the SHA-256
    of the list of its files' SHA-256 digests (here a list of one)."""
    with path.open("rb") as fh:
        return hashlib.sha256(hashlib.file_digest(fh, "sha256").digest()).hexdigest()


class TypedAppend:
    """Insert typed Arrow batches into ``table``, all or nothing, as one recorded load.

    Use as a context manager: :meth:`insert` the batches, then :meth:`finish` once the file
    the rows were also written to is closed; leaving the block without finishing (or with an
    exception) rolls the warehouse back.

    The caller guarantees what ingestion would check table-wide: keys unique and not yet in
    the table, references known, no erased customer. Use ``ingest`` for anything else.
    """

    def __init__(self, warehouse: Warehouse, table: str, source: Path) -> None:
        self.warehouse = warehouse
        self.table = table
        self.source = source
        self.schema = arrow_schema(table)
        self.rows = 0
        self.result: LoadResult | None = None
        self._started = datetime.now(UTC)
        self._open = False

    def __enter__(self) -> TypedAppend:
        self.warehouse.con.con.begin()
        self._open = True
        return self

    def insert(self, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
        """Insert a stream of batches of ``schema`` (the contract's columns, a subset, with
        the contract's types) in one statement, pulling them as the engine takes them in."""
        for name, kind in zip(schema.names, schema.types, strict=True):
            if name not in self.schema.names:
                raise DataError(
                    f"{self.source}: column {name!r} is no column of {self.table}; expected "
                    f"some of {', '.join(self.schema.names)}"
                )
            want = self.schema.field(name).type
            if kind != want:
                raise DataError(
                    f"{self.source}: column {self.table}.{name} must be {want}, got {kind}"
                )

        def counted() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                self.rows += batch.num_rows
                yield batch

        raw = self.warehouse.con.con
        raw.register(_VIEW, pa.RecordBatchReader.from_batches(schema, counted()))
        try:
            columns = ", ".join(f'"{n}"' for n in schema.names)
            raw.execute(f"INSERT INTO {self.table} ({columns}) SELECT {columns} FROM {_VIEW}")
        finally:
            raw.unregister(_VIEW)

    def finish(self, fmt: str = "parquet") -> LoadResult:
        """Record the load of ``source`` (written and closed by now) and commit."""
        digest = file_sha256(self.source)
        load_id = f"{self._started:%Y%m%dT%H%M%S}-{digest[:10]}"
        counts = TableCounts(read=self.rows, loaded=self.rows)
        result = LoadResult(
            str(self.source),
            fmt,
            "loaded",
            load_id,
            tables={self.table: counts},
            files=[str(self.source)],
        )
        record = {
            "load_id": [load_id],
            "source": [str(self.source)],
            "sha256": [digest],
            "format": [fmt],
            "started_ts": [self._started],
            "finished_ts": [datetime.now(UTC)],
            "rows_read": [self.rows],
            "rows_loaded": [self.rows],
            "rows_quarantined": [0],
            "rows_skipped": [0],
            "tables": [self.table],
        }
        schema = ibis.schema(BOOKKEEPING["loads"]).to_pyarrow()
        self.warehouse.insert("loads", pa.table(record, schema=schema))
        self.warehouse.con.con.commit()
        self._open = False
        self.result = result
        log.info("appended %s: %s rows into %s", self.source, self.rows, self.table)
        return result

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open:
            self.warehouse.con.con.rollback()
            self._open = False


def write_report(result: LoadResult, folder: Path) -> Path:
    """The load report ingestion writes (counts per table; no row was quarantined)."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {**result.to_dict(), "quarantine_by_field": []}
    path = folder / f"load-{result.load_id}.json"
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    result.report = str(path)
    return path
