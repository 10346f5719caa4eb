"""Moving what the service recorded into the warehouse, through the ordinary ingestion.

:func:`sync` exports the decisions, then the events, recorded in the online store since the
last sync to Parquet files in ``WORKSPACE/serving/outbox/`` (canonical columns; a decision's
``request_id`` goes in its ``attributes``), and loads each one with
:func:`nextbest.data.ingest.ingest`, so they are validated and quarantined like any file (an
event of a customer the warehouse does not know is quarantined, and counted). A watermark per
table (the last ``seq`` exported, in the store's ``meta``) moves only once its file is loaded,
so a sync that fails or is killed is simply run again: the same rows go out again and the rows
already loaded are skipped. Both tables are read up to one snapshot taken at the start, so an
event never reaches the warehouse before the online decision it names.

Then the erasures asked of the service (:meth:`OnlineStore.forget`) are applied to the
warehouse and the workspace's files with :func:`nextbest.data.erase.erase_customer`, and marked
done. Running sync twice adds nothing the second time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from nextbest.data.erase import erase_customer
from nextbest.data.ingest import LoadResult, TableCounts, ingest
from nextbest.data.schema import TABLES
from nextbest.data.workspace import Workspace
from nextbest.errors import DataError
from nextbest.progress import NullReporter, Reporter
from nextbest.serve.store import OnlineStore

__all__ = ["SyncResult", "outbox_folder", "sync"]

log = logging.getLogger(__name__)

_TABLES: tuple[Literal["decisions", "events"], ...] = ("decisions", "events")
_ARROW = {
    "string": pa.string(),
    "json": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_DONE = ("loaded", "already loaded")


@dataclass
class SyncResult:
    """What one sync did: rows per table, files written, erasures applied, watermarks."""

    tables: dict[str, TableCounts] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    loads: list[LoadResult] = field(default_factory=list)
    erased: int = 0
    watermarks: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def total(self, what: str) -> int:
        """Rows ``loaded``, ``quarantined``, ``skipped`` or ``read`` over both tables."""
        return sum(getattr(c, what) for c in self.tables.values())


def outbox_folder(ws: Workspace) -> Path:
    """Where sync writes the files it loads (kept as the record of what went in)."""
    return ws.root / "serving" / "outbox"


def _watermark(table: str) -> str:
    return f"sync.{table}.seq"


def sync(
    ws: Workspace,
    store: OnlineStore,
    reporter: Reporter | None = None,
    *,
    chunk_rows: int = 100_000,
) -> SyncResult:
    """Load the store's new decisions and events into the warehouse, then apply erasures.

    Parameters
    ----------
    ws
        The workspace; its warehouse must not be locked by another process.
    store
        The service's online store.
    reporter
        Told about each file loaded; silent by default.
    chunk_rows
        Rows per outbox file at most; a long backlog goes out in several files.

    Returns
    -------
    SyncResult
        Counts per table (``read == loaded + quarantined + skipped``); ``failed`` holds the
        message of a load that failed, in which case its watermark did not move (and, for the
        decisions, the events wait for them). Erasures are applied in any case.
    """
    if chunk_rows < 1:
        raise DataError(f"sync: chunk_rows must be a whole number >= 1, got {chunk_rows!r}")
    reporter = reporter or NullReporter()
    result = SyncResult()
    outbox = outbox_folder(ws)
    outbox.mkdir(parents=True, exist_ok=True)
    with _exclusive(outbox.parent / "sync.lock"):
        upto = store.high_water()
        for table in _TABLES:
            result.tables[table] = TableCounts()
            if not _sync_table(ws, store, table, upto[table], chunk_rows, result, reporter):
                break
        pending = store.pending_erasures()
        if pending:
            reporter.start(len(pending), "Applying erasures to the warehouse")
            for customer_id in pending:
                erase_customer(ws, customer_id)
                store.mark_erased(customer_id)
                result.erased += 1
                reporter.advance(1)
            reporter.finish()
        for table in _TABLES:
            result.watermarks[table] = int(store.get_meta(_watermark(table)) or 0)
    log.info(
        "sync: %d rows loaded, %d quarantined, %d skipped, %d erasures",
        result.total("loaded"),
        result.total("quarantined"),
        result.total("skipped"),
        result.erased,
    )
    return result


def _sync_table(
    ws: Workspace,
    store: OnlineStore,
    table: Literal["decisions", "events"],
    upto: int,
    chunk_rows: int,
    result: SyncResult,
    reporter: Reporter,
) -> bool:
    """Export and load one table's new rows, file by file; False if a load failed."""
    key = _watermark(table)
    counts = result.tables[table]
    while True:
        after = int(store.get_meta(key) or 0)
        rows = store.rows_after(table, after, upto, chunk_rows)
        if not rows:
            return True
        last = int(rows[-1]["seq"])
        path = outbox_folder(ws) / f"{table}-{after + 1:012d}-{last:012d}.parquet"
        _write(path, _arrow(table, rows))
        result.files.append(path)
        reporter.start(None, f"Loading {path.name}")
        load = ingest(ws.warehouse, [path], ws.config.ingest, table=table, reports=ws.reports)[0]
        reporter.finish()
        result.loads.append(load)
        for c in load.tables.values():
            counts.read += c.read
            counts.loaded += c.loaded
            counts.quarantined += c.quarantined
            counts.skipped += c.skipped
        if load.status not in _DONE:
            result.failed.append(f"{path.name}: {load.message or load.status}")
            log.warning("sync: %s was not loaded (%s); it will be sent again", path, load.status)
            return False
        store.set_meta(key, str(last))


def _arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Store rows as an Arrow table of the canonical columns, ``attributes`` as JSON text."""
    spec = TABLES[table]
    columns: dict[str, pa.Array] = {}
    for col in spec.columns:
        if col.name == "attributes":
            continue
        values = [r[col.name] for r in rows]
        if col.kind == "timestamp":
            values = [datetime.fromisoformat(v) if v is not None else None for v in values]
        columns[col.name] = pa.array(values, _ARROW[col.kind])
    if table == "decisions":
        attrs = [json.dumps({"request_id": r["request_id"]}) for r in rows]
    else:
        attrs = [r["attributes"] for r in rows]
    columns["attributes"] = pa.array(attrs, pa.string())
    return pa.table(columns)


def _write(path: Path, data: pa.Table) -> None:
    """Write a Parquet file whole or not at all (a killed sync leaves no half file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(data, tmp)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """One sync at a time per workspace, across processes."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the warehouse's own file lock still allows one writer
        yield
        return
    with lock.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
