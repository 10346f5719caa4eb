"""The warehouse: canonical tables behind an Ibis connection.

Every query in nextbest is an Ibis expression, so the same code runs on DuckDB (the embedded
default, one file in the workspace) and, later, on the engines Ibis supports. The only
backend-specific part is here: opening the connection and transaction control.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa

from nextbest.config import WarehouseConfig
from nextbest.data.schema import LOAD_ORDER, TABLES
from nextbest.errors import ConfigError

__all__ = ["BOOKKEEPING", "Warehouse"]

log = logging.getLogger(__name__)

_TS = dt.Timestamp(timezone="UTC")

BOOKKEEPING: dict[str, dict[str, dt.DataType]] = {
    "quarantine": {
        "load_id": dt.String(),
        "source": dt.String(),
        "line": dt.Int64(),
        "table_name": dt.String(),
        "field": dt.String(),
        "expected": dt.String(),
        "received": dt.String(),
        "row": dt.String(),
        "ts": _TS,
    },
    "loads": {
        "load_id": dt.String(),
        "source": dt.String(),
        "sha256": dt.String(),
        "format": dt.String(),
        "started_ts": _TS,
        "finished_ts": _TS,
        "rows_read": dt.Int64(),
        "rows_loaded": dt.Int64(),
        "rows_quarantined": dt.Int64(),
        "rows_skipped": dt.Int64(),
        "tables": dt.String(),
    },
}
"""Tables beside the canonical ones: rejected rows, and one row per file load."""


class Warehouse:
    """Canonical tables in one Ibis backend, with all-or-nothing transactions."""

    def __init__(self, con: ibis.BaseBackend) -> None:
        self.con = con

    @classmethod
    def connect(cls, config: WarehouseConfig, root: Path) -> Warehouse:
        """Open (creating if needed) the warehouse a workspace configures."""
        if config.backend != "duckdb":
            raise ConfigError(f"warehouse.backend: expected 'duckdb', got {config.backend!r}")
        path = Path(config.path)
        if not path.is_absolute():
            path = root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        spill = path.parent / ".tmp"
        try:
            con = ibis.duckdb.connect(
                str(path), memory_limit=config.memory_limit, temp_directory=str(spill)
            )
        except Exception as exc:  # the driver's own exception types vary by version
            raise ConfigError(f"{path}: cannot open the warehouse ({exc})") from None
        wh = cls(con)
        wh.create_tables()
        return wh

    def create_tables(self) -> None:
        """Create the canonical and bookkeeping tables that do not exist yet."""
        existing = set(self.con.list_tables())
        schemas: dict[str, dict[str, dt.DataType]] = {
            name: TABLES[name].ibis_schema() for name in LOAD_ORDER
        }
        schemas.update(BOOKKEEPING)
        for name, schema in schemas.items():
            if name not in existing:
                self.con.create_table(name, schema=ibis.schema(schema))

    def table(self, name: str) -> ir.Table:
        return self.con.table(name)

    def count(self, name: str) -> int:
        return int(self.table(name).count().execute())

    def counts(self) -> dict[str, int]:
        """Rows per canonical and bookkeeping table."""
        return {name: self.count(name) for name in (*LOAD_ORDER, *BOOKKEEPING)}

    def insert(self, name: str, obj: Any) -> None:
        """Insert an Ibis expression or an Arrow table into a table."""
        if isinstance(obj, pa.Table):
            # ibis keeps every in-memory table registered for the connection's life; a large
            # load would hold all its batches in memory, so each one is released once copied.
            mem = ibis.memtable(obj)
            self.con.insert(name, mem)
            self.con.con.unregister(mem.op().name)
        else:
            self.con.insert(name, obj)

    def create_temp(self, name: str, schema: dict[str, dt.DataType]) -> None:
        self.con.create_table(name, schema=ibis.schema(schema), temp=True, overwrite=True)

    def drop(self, name: str) -> None:
        self.con.drop_table(name, force=True)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all."""
        raw = self.con.con  # DuckDB's connection: transaction control is backend-specific
        raw.begin()
        try:
            yield
        except BaseException:
            raw.rollback()
            raise
        else:
            raw.commit()

    def close(self) -> None:
        self.con.disconnect()
