"""The FastAPI application of ``nextbest serve``: thin routes over the core functions.

One process per uvicorn worker builds its own :class:`Service` (the snapshot memory-mapped, the
model loaded, connections to the online store); every piece of shared state lives in files all
workers open: the snapshot's arrays and the online store's SQLite database. A new snapshot
(``nextbest snapshot``, or the daily batch) is picked up within a second, without a restart.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /v1/decide`` (scope decide): ranked offers for a customer on a channel, now;
- ``POST /v1/events`` (scope events): a batch of canonical events, acknowledged once on disk;
- ``GET /v1/customers/{id}`` (scope profiles): the 360 profile, segment, lifetime value, churn
  risk, open cart, recent decisions and their outcomes;
- ``GET /v1/offers`` (scope profiles): the offers open now, per serving campaign;
- ``POST /v1/customers/{id}/forget`` (scope admin): erase the customer everywhere;
- ``GET /healthz``, ``GET /readyz``;
- ``/personalizer/v1.0/...``: rank and reward, compatible with Azure Personalizer;
- ``/dashboard/...``: the web dashboard (:mod:`.dashboard`, pages in :mod:`.pages_insight`
  and :mod:`.pages_engine`).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from nextbest.errors import DataError
from nextbest.models.store import ModelStore
from nextbest.serve.dashboard import dashboard_router
from nextbest.serve.erasure import forget_everywhere
from nextbest.serve.fastpath import DirectRoute
from nextbest.serve.online import OnlineDecider, UnknownCustomer, serving_campaigns
from nextbest.serve.personalizer import Personalizer, personalizer_router
from nextbest.serve.schemas import DecideRequest, DecideResponse, EventsIn, EventsResult
from nextbest.serve.security import ERROR_RESPONSES, ApiError, install, require
from nextbest.serve.settings import ServeSettings
from nextbest.serve.snapshot import Snapshot, current_snapshot
from nextbest.serve.store import OnlineStore

__all__ = ["Service", "create_app", "factory"]

log = logging.getLogger(__name__)

_RELOAD_EVERY_S = 1.0
_CHECKPOINT_EVERY_S = 1.0  # the WAL is copied into the database off the request path
CustomerId = Annotated[str, PathParam(min_length=1, max_length=200)]
DecideKey = Annotated[Any, Depends(require("decide"))]
EventsKey = Annotated[Any, Depends(require("events"))]
ProfilesKey = Annotated[Any, Depends(require("profiles"))]
AdminKey = Annotated[Any, Depends(require("admin"))]


class Service:
    """The per-process state: snapshot, model, decider and store, reloaded when it changes."""

    def __init__(self, root: Path, db_path: Path) -> None:
        self.root = root
        self.store = OnlineStore(db_path, checkpoint_every=_CHECKPOINT_EVERY_S, queue_writers=True)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._pointer_mtime: float | None = None
        self.decider: OnlineDecider | None = None
        self.error: str | None = None
        self._load()

    def _load(self) -> None:
        pointer = self.root / "serving" / "snapshots" / "CURRENT"
        try:
            mtime = pointer.stat().st_mtime
            snap = Snapshot(current_snapshot(self.root))
            snap.populate()  # no page faults in requests
            model, manifest = ModelStore(self.root / "models").load(
                "propensity", int(snap.meta["model_version"])
            )
            self.decider = OnlineDecider(snap, model, serving_campaigns(self.root), self.store)
            self._pointer_mtime = mtime
            self.error = None
            log.info("serving snapshot %s (model %s)", snap.name, manifest.name)
        except (OSError, DataError, Exception) as exc:  # reported by /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("no snapshot could be loaded: %s", type(exc).__name__)

    def current(self) -> OnlineDecider:
        """The decider, after a reload if the snapshot pointer changed (checked once a second)."""
        now = time.monotonic()
        if now - self._checked > _RELOAD_EVERY_S:
            with self._lock:
                self._checked = now
                pointer = self.root / "serving" / "snapshots" / "CURRENT"
                try:
                    mtime = pointer.stat().st_mtime
                except OSError:
                    mtime = None
                if mtime is not None and mtime != self._pointer_mtime:
                    self._load()
        if self.decider is None:
            raise DataError(f"the service has no snapshot to decide from ({self.error})")
        return self.decider


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | datetime):
        return None if pd.isna(value) else value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value


def _unknown(exc: UnknownCustomer) -> ApiError:
    return ApiError(
        404,
        "unknown_customer",
        str(exc),
        details=[
            {
                "field": "customer_id",
                "expected": "a customer in the snapshot",
                "received": "an unknown id",
            }
        ],
    )


def _row(decider: OnlineDecider, customer_id: str) -> int:
    try:
        return decider.row(customer_id)
    except UnknownCustomer as exc:
        raise _unknown(exc) from None


def _dashboard_access(request: Request) -> None:
    """The dashboard reads with the ``profiles`` scope: a key in the header, in ``?key=`` (kept
    in a cookie) or the cookie; or nothing in local mode."""
    state = request.app.state
    header = request.headers.get("authorization", "")
    given = (
        header.removeprefix("Bearer ").strip()
        or request.query_params.get("key")
        or request.cookies.get("nextbest_key")
    )
    if given:
        info = state.keys.check(given)
        if info is None:
            raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
        if not info.allows("profiles"):
            raise ApiError(403, "forbidden", "the dashboard needs a key with the scope 'profiles'")
    elif not state.settings.local:
        raise ApiError(
            401,
            "unauthorized",
            "the dashboard needs a key with the scope 'profiles': open /dashboard?key=YOUR_KEY "
            "once (or run 'nextbest serve --local' on this machine)",
        )


def create_app(root: Path, settings: ServeSettings | None = None) -> FastAPI:
    """The application serving the workspace at ``root``."""
    settings = settings or ServeSettings()
    app = FastAPI(
        title="nextbest",
        version="1",
        description="Real-time next best actions: decisions, events and profiles.",
        responses=ERROR_RESPONSES,
    )
    db_path = settings.db_path(root)
    app.state.settings = settings
    app.state.root = root
    app.state.db_path = db_path
    service = Service(root, db_path)
    app.state.service = service
    app.state.personalizer = Personalizer(db_path)

    def decide_json(body: BaseModel) -> bytes:
        """The answer of ``POST /v1/decide``, serialised once by its pydantic model."""
        assert isinstance(body, DecideRequest)
        try:
            answer = service.current().decide(body)
        except UnknownCustomer as exc:
            raise _unknown(exc) from None
        return answer.model_dump_json().encode()

    # valid decide requests skip FastAPI's per-request work (the route below is the same code,
    # for everything else and for the OpenAPI schema); inside the body limit and the catch-all
    app.add_middleware(
        DirectRoute, path="/v1/decide", model=DecideRequest, scope="decide", handler=decide_json
    )
    install(app, settings)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str | int]:
        """The process is up; ``worker`` is its process id (with several workers, which one
        answered)."""
        return {"status": "ok", "worker": os.getpid()}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "no snapshot"}})
    def readyz() -> JSONResponse:
        """A snapshot is loaded and the online store answers."""
        try:
            decider = service.current()
            service.store.counts()
        except DataError as exc:
            return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
        snap = decider.snapshot
        return JSONResponse(
            {
                "status": "ready",
                "snapshot": snap.name,
                "as_of": snap.as_of.isoformat(),
                "customers": len(snap),
                "campaigns": sorted(decider.campaigns),
            }
        )

    # The decision runs on the event loop, not in the thread pool: it is a millisecond or two
    # of CPU (in-memory scoring and one short store transaction), and one decision at a time
    # per worker costs less than the hops to a thread and back (two per request for a sync
    # route: the route and its response validation) and the threads' fight for the GIL. The
    # answer is serialised once by its pydantic model, not validated again by FastAPI. Valid
    # requests are answered by DirectRoute (above) with this route's code; this route answers
    # the others (and documents the route).
    @app.post("/v1/decide", response_model=DecideResponse, tags=["decisions"])
    async def decide(body: DecideRequest, _key: DecideKey) -> Response:
        """Ranked offers for a customer on a channel now, with their probabilities and why."""
        return Response(decide_json(body), media_type="application/json")

    @app.post("/v1/events", response_model=EventsResult, tags=["events"])
    async def events(body: EventsIn, _key: EventsKey) -> EventsResult:
        """Store a batch of events; answered once they are on disk. A replay adds nothing."""
        # in a thread: the commit waits for the disk (fsync), which must not stop the loop
        return await run_in_threadpool(service.store.add_events, body.events)

    @app.get("/v1/customers/{customer_id}", tags=["customers"])
    def customer(customer_id: CustomerId, _key: ProfilesKey) -> dict[str, Any]:
        """The 360 profile, segment, lifetime value, churn risk, cart and recent decisions."""
        decider = service.current()
        row = _row(decider, customer_id)
        snap = decider.snapshot
        profile = {k: _jsonable(v) for k, v in snap.profile(row).items()}
        live = decider._live(customer_id, row)
        return {
            "customer_id": customer_id,
            "as_of": snap.as_of.isoformat(),
            "segment": profile.pop("segment", None),
            "value_rank": profile.pop("value_rank", None),
            "lifetime_value": profile.pop("lifetime_value", None),
            "churn_risk": profile.pop("churn_risk", None),
            "profile": profile,
            "consent": {ch: bool(snap.consent[ch][row]) for ch in snap.consent},
            "cart": live["cart"],
            "recent_decisions": service.store.decisions_for(customer_id),
        }

    @app.get("/v1/offers", tags=["offers"])
    def offers(_key: ProfilesKey) -> dict[str, Any]:
        """The offers open now, per serving campaign, with the stock left."""
        decider = service.current()
        now = pd.Timestamp(datetime.now(UTC))
        online = service.store.offer_units()
        out = {}
        for name, camp in decider.campaigns.items():
            rows = []
            for r in camp.offers.itertuples():
                if not (pd.isna(r.start_ts) or r.start_ts <= now):
                    continue
                left = None if pd.isna(r.stock) else r.stock - r.sold - online.get(r.offer_id, 0.0)
                rows.append(
                    {
                        "offer_id": r.offer_id,
                        "name": _jsonable(r.name),
                        "brand": _jsonable(r.brand),
                        "category": _jsonable(r.category),
                        "kind": r.kind,
                        "end_ts": _jsonable(r.end_ts),
                        "margin": _jsonable(r.margin),
                        "stock_left": left,
                        "open": bool(pd.isna(r.end_ts) or r.end_ts > now),
                    }
                )
            out[name] = {"channel": camp.spec.campaign.channel, "offers": rows}
        return {"snapshot": decider.snapshot.name, "campaigns": out}

    @app.post("/v1/customers/{customer_id}/forget", tags=["customers"])
    def forget(customer_id: CustomerId, _key: AdminKey) -> dict[str, Any]:
        """Erase the customer's personal data and events everywhere; keep a record that it
        happened (a hash of the id, the time and the counts, never the id)."""
        return forget_everywhere(root, service.store, customer_id)

    app.include_router(dashboard_router(root, service, _dashboard_access))
    app.include_router(
        personalizer_router(lambda request: request.app.state.personalizer, require),
        prefix="/personalizer/v1.0",
    )

    return app


def factory() -> FastAPI:
    """For uvicorn's ``--factory`` with workers: the workspace and settings from the
    environment (``NEXTBEST_WORKSPACE``, ``NEXTBEST_SERVE_SETTINGS`` as JSON)."""
    root = Path(os.environ.get("NEXTBEST_WORKSPACE", "."))
    raw = os.environ.get("NEXTBEST_SERVE_SETTINGS")
    settings = ServeSettings.model_validate_json(raw) if raw else ServeSettings()
    app = create_app(root, settings)
    # What start-up built (the model, the frames, FastAPI's routes: about 300,000 objects)
    # lives as long as the worker; frozen, the collector no longer walks it, and a full
    # collection stops costing a request a pause of a tenth of a second.
    gc.collect()
    gc.freeze()
    return app
