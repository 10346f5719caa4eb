"""Serve stage: the real-time decision service (HTTP API), its snapshot and durable store.

``nextbest serve`` runs :func:`create_app` under uvicorn. The batch side writes a snapshot
(:func:`build_snapshot`) that every worker maps; events and decisions go to the
:class:`OnlineStore` (SQLite, WAL, fsync per commit) and back to the warehouse with
:func:`sync`.
"""

from __future__ import annotations

from nextbest.serve.app import Service, create_app
from nextbest.serve.erasure import forget_everywhere
from nextbest.serve.online import OnlineDecider, ServingCampaign, UnknownCustomer, serving_campaigns
from nextbest.serve.personalizer import Personalizer, personalizer_router
from nextbest.serve.security import SCOPES, KeyInfo, KeyStore, install, require
from nextbest.serve.settings import ServeSettings
from nextbest.serve.snapshot import Snapshot, build_snapshot, current_snapshot
from nextbest.serve.store import ContactCounts, DecisionRow, LiveEvent, OnlineStore
from nextbest.serve.sync import SyncResult, sync

__all__ = [
    "SCOPES",
    "ContactCounts",
    "DecisionRow",
    "KeyInfo",
    "KeyStore",
    "LiveEvent",
    "OnlineDecider",
    "OnlineStore",
    "Personalizer",
    "ServeSettings",
    "Service",
    "ServingCampaign",
    "Snapshot",
    "SyncResult",
    "UnknownCustomer",
    "build_snapshot",
    "create_app",
    "current_snapshot",
    "forget_everywhere",
    "install",
    "personalizer_router",
    "require",
    "serving_campaigns",
    "sync",
]
