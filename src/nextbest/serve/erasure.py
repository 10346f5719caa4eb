"""Erasure on request (``POST /v1/customers/{id}/forget``): the customer removed everywhere.

In order: the online store (events, decisions, contacts; a record of the erasure that holds
only a hash of the id), every snapshot on disk (the id's hash and the customer's rows blanked in
place, seen at once by every worker, since they map the same files), and the warehouse with the
workspace's files (:func:`nextbest.data.erase.erase_customer`). The warehouse is a single-writer
DuckDB file: when a batch job holds it, that last step waits in the store's queue and the next
``nextbest sync`` applies it; the answer says which happened.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nextbest.data.erase import erase_customer
from nextbest.data.workspace import Workspace
from nextbest.serve.snapshot import Snapshot
from nextbest.serve.store import OnlineStore

__all__ = ["forget_everywhere"]

log = logging.getLogger(__name__)


def forget_everywhere(
    root: Path, store: OnlineStore, customer_id: str, ws: Workspace | None = None
) -> dict[str, Any]:
    """Erase ``customer_id`` from the store, the snapshots and the warehouse (``ws``, or the
    workspace at ``root`` if its warehouse is free; else queued for ``nextbest sync``)."""
    store_counts = store.forget(customer_id)
    snapshots = 0
    folder = root / "serving" / "snapshots"
    if folder.exists():
        for path in sorted(p for p in folder.iterdir() if (p / "meta.json").exists()):
            snapshots += bool(Snapshot(path, writable=True).erase(customer_id))
    warehouse: dict[str, Any] | str
    if ws is not None:
        warehouse = erase_customer(ws, customer_id)
        store.mark_erased(customer_id)
    else:
        try:
            own = Workspace.open(root)
            try:
                warehouse = erase_customer(own, customer_id)
            finally:
                own.close()
            store.mark_erased(customer_id)
        except Exception as exc:  # the warehouse is busy: queued for sync
            log.warning("warehouse erasure queued (%s)", type(exc).__name__)
            warehouse = "pending: the warehouse is in use; the next 'nextbest sync' erases there"
    return {
        "erased": True,
        "online_store": store_counts,
        "snapshots": snapshots,
        "warehouse": warehouse,
    }
