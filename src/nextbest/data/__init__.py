"""Data stage: the contract, the warehouse, and validated, idempotent ingestion."""

from __future__ import annotations

from nextbest.data.erase import erase_customer
from nextbest.data.ingest import LoadResult, ingest
from nextbest.data.schema import TABLES, TableContract, contract
from nextbest.data.sources import Batch, ReadOptions, Reject
from nextbest.data.warehouse import Warehouse
from nextbest.data.workspace import Workspace

__all__ = [
    "TABLES",
    "Batch",
    "LoadResult",
    "ReadOptions",
    "Reject",
    "TableContract",
    "Warehouse",
    "Workspace",
    "contract",
    "erase_customer",
    "ingest",
]
