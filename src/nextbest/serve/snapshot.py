"""The batch side's customer 360 snapshot, laid out for the real-time service.

:func:`build_snapshot` reads the warehouse as of 00:00 UTC of a day through the same paths as
the daily batch (:func:`nextbest.decide.scoring.pair_scorer`, :func:`nextbest.decide.contact
.contact_state`), codes every customer's features once for the current propensity model, and
writes plain numpy arrays to ``WORKSPACE/serving/snapshots/<name>/``. :class:`Snapshot` opens
them memory-mapped, so every worker process shares one copy in the page cache and a worker
starts in milliseconds whatever the number of customers.

What a snapshot holds, per customer (rows in the warehouse's customer order):

- ``coded``: the model's customer-level features, coded as the trees read them (float32);
- the pair history of the offers' brands and categories (sorted by customer, as in the batch);
- the raw profile (customer 360, demographics, RFM segment, lifetime value, churn risk), for
  rules and for ``GET /v1/customers``: numbers as float64, texts as codes into a vocabulary;
- consent, unsubscribes, contacts today and in the last 7 days, suppression, impressions.

Per offer (every offer open at some moment of the 7 days from the snapshot's day): its row,
its coded features, the click-to-purchase rate and the Thompson posterior the batch uses, and
the batch's latest dual prices per campaign (``summary-*.json``), so real-time choices pay for
the budgets and stock the batch priced.

Customer ids are kept only as 64-bit BLAKE2b hashes, sorted, so an erasure
(:meth:`Snapshot.erase`) removes the id itself: the hash is overwritten by its neighbour (the
array stays sorted) and the customer's rows are blanked in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import ibis
import numpy as np
import pandas as pd

from nextbest.data.schema import CHANNELS
from nextbest.data.workspace import Workspace
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.contact import CONSENT_CHANNELS, ContactPolicy, contact_state
from nextbest.decide.day import click_to_purchase, position_weights, units_sold
from nextbest.decide.explore import offer_posteriors
from nextbest.decide.scoring import pair_scorer
from nextbest.errors import ConfigError, DataError
from nextbest.features.rfm import rfm
from nextbest.models.store import ModelStore
from nextbest.progress import NullReporter, Reporter

__all__ = ["SNAPSHOT_FORMAT", "Snapshot", "build_snapshot", "current_snapshot", "customer_hash"]

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_WEEK = timedelta(days=7)
_NAT = np.datetime64("NaT", "us")
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14


def customer_hash(customer_ids: Any) -> np.ndarray:
    """64-bit BLAKE2b of each id (uint64): the only form in which a snapshot keeps ids."""
    ids = [customer_ids] if isinstance(customer_ids, str) else list(customer_ids)
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(str(c).encode(), digest_size=8).digest(), "little")
            for c in ids
        ],
        dtype=np.uint64,
    )


def _serving(ws: Workspace) -> Path:
    return ws.root / "serving" / "snapshots"


def current_snapshot(root: Path) -> Path:
    """The snapshot named by ``WORKSPACE/serving/snapshots/CURRENT``."""
    pointer = root / "serving" / "snapshots" / "CURRENT"
    if not pointer.exists():
        raise DataError(
            f"no snapshot in {pointer.parent}; run 'nextbest snapshot' (or 'nextbest serve', "
            "which builds one) after loading data and training the propensity model"
        )
    return pointer.parent / pointer.read_text(encoding="utf-8").strip()


def _save(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def _latest_summary(ws: Workspace, campaign: str, day: datetime) -> dict[str, Any] | None:
    folder = ws.root / "decisions"
    best = None
    for path in folder.glob(f"summary-{campaign}-*.json"):
        stamp = path.stem.removeprefix(f"summary-{campaign}-")
        try:
            when = datetime.strptime(stamp, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            continue
        if when <= day and (best is None or when > best[0]):
            best = (when, path)
    return json.loads(best[1].read_text(encoding="utf-8")) if best else None


def _snapshot_offers(ws: Workspace, day: datetime) -> pd.DataFrame:
    t = ws.warehouse.table("offers")
    start = ibis.literal(day, type="timestamp('UTC')")
    end = ibis.literal(day + _WEEK, type="timestamp('UTC')")
    t = t.filter(t.start_ts.isnull() | (t.start_ts < end), t.end_ts.isnull() | (t.end_ts > start))
    offers = t.order_by("offer_id").to_pandas()
    if offers.empty:
        raise DataError(
            f"no offer is open between {day:%Y-%m-%d} and {day + _WEEK:%Y-%m-%d}; load offers "
            "before building a snapshot"
        )
    return offers


def _union_policy(campaigns: list[CampaignFile]) -> ContactPolicy:
    """Counts for every channel; the first serving campaign's suppression rule."""
    every = dict.fromkeys(CHANNELS, 1)
    suppress = next(
        (c.campaign.contact for c in campaigns if c.campaign.contact.suppress_after_ignores), None
    )
    return ContactPolicy(
        per_day=every,
        per_week=every,
        offer_impressions=1
        if any(c.campaign.contact.offer_impressions for c in campaigns)
        else None,
        suppress_after_ignores=suppress.suppress_after_ignores if suppress else None,
        suppress_days=suppress.suppress_days if suppress else 14,
    )


def _profile_extras(ws: Workspace, ids: np.ndarray, as_of: datetime) -> pd.DataFrame:
    """RFM segment and value rank, lifetime value and churn risk (1 - P(alive)), by customer."""
    index = pd.Index(ids)
    out = pd.DataFrame(index=index)
    seg = rfm(ws.warehouse, as_of).select("customer_id", "segment", "value_rank").to_pandas()
    seg = seg.set_index("customer_id").reindex(index)
    out["segment"] = seg.segment.to_numpy(dtype=object)
    out["value_rank"] = seg.value_rank.to_numpy(dtype=np.float64)
    out["lifetime_value"] = np.nan
    out["churn_risk"] = np.nan
    try:
        from nextbest.models.clv_summary import fit_clv

        with np.errstate(all="ignore"):  # the optimiser's trial steps overflow harmlessly
            clv = fit_clv(ws.warehouse, as_of - timedelta(days=1), 52, 0.0).customers
        clv = clv.set_index("customer_id").reindex(index)
        out["lifetime_value"] = clv.clv.to_numpy(dtype=np.float64)
        out["churn_risk"] = 1.0 - clv.probability_alive.to_numpy(dtype=np.float64)
    except (DataError, ConfigError, ValueError) as exc:  # too few purchases to fit on
        log.warning("lifetime value left out of the snapshot: %s", exc)
    return out.reset_index(drop=True)


def _save_carts(ws: Workspace, folder: Path, ids: np.ndarray, as_of: datetime) -> None:
    """Open carts: products added in the 7 days before ``as_of`` and not bought since."""
    ev = ws.warehouse.table("events")
    start = ibis.literal(as_of - _WEEK, type="timestamp('UTC')")
    cut = ibis.literal(as_of, type="timestamp('UTC')")
    ev = ev.filter(
        ev.ts >= start,
        ev.ts < cut,
        ev.type.isin(("add_to_cart", "purchase")),
        ev.product_id.notnull(),
        ev.customer_id.notnull(),
    )
    last = ev.group_by(["customer_id", "product_id", "type"]).aggregate(ts=ev.ts.max()).to_pandas()
    added = last[last.type == "add_to_cart"].drop(columns="type")
    bought = last[last.type == "purchase"].drop(columns="type")
    both = added.merge(bought, on=["customer_id", "product_id"], how="left", suffixes=("", "_b"))
    both = both[both.ts_b.isna() | (both.ts_b < both.ts)]
    rows = pd.Index(ids).get_indexer(both.customer_id)
    keep = rows >= 0
    products = ws.warehouse.table("products").select("product_id", "brand", "category")
    catalogue = products.order_by("product_id").to_pandas()
    catalogue.to_parquet(folder / "products.parquet", index=False)
    codes = pd.Index(catalogue.product_id).get_indexer(both.product_id)
    order = np.argsort(rows[keep], kind="stable")
    _save(folder, "cart_customer", rows[keep][order].astype(np.int64))
    _save(folder, "cart_product", codes[keep][order].astype(np.int32))


def build_snapshot(
    ws: Workspace,
    day: datetime,
    campaigns: list[CampaignFile],
    *,
    reporter: Reporter | None = None,
) -> Path:
    """Write the snapshot of ``day`` (features as of its 00:00 UTC) and make it current."""
    reporter = reporter or NullReporter()
    as_of = datetime(day.year, day.month, day.day, tzinfo=UTC)
    store = ModelStore(ws.models)
    try:
        model, manifest = store.load("propensity")
    except ConfigError as exc:
        raise ConfigError(
            f"the service scores with a propensity model ({exc}); run 'nextbest train propensity'"
        ) from None
    reporter.start(None, "Snapshot: reading customers, offers and histories")
    cust = ws.warehouse.table("customers")
    cut = ibis.literal(as_of + timedelta(days=1), type="timestamp('UTC')")
    cust = cust.filter(cust.signup_ts.isnull() | (cust.signup_ts < cut))
    ids = cust.select("customer_id").order_by("customer_id").to_pandas().customer_id.to_numpy()
    if not len(ids):
        raise DataError(f"no customer had joined by {as_of:%Y-%m-%d}; load customers first")
    offers = _snapshot_offers(ws, as_of)
    scorer = pair_scorer(ws.warehouse, ids, offers, as_of)
    reporter.finish()
    missing = [f for f in manifest.features if f not in scorer.known()]
    if missing:
        raise ConfigError(
            f"the propensity model {manifest.name} needs features that decisions do not build "
            f"({', '.join(missing[:5])}); retrain it with 'nextbest train propensity'"
        )
    name = f"{as_of:%Y%m%d}-{datetime.now(UTC):%H%M%S%f}"
    folder = _serving(ws) / name
    tmp = folder.with_name(name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reporter.start(None, "Snapshot: coding features")
    coded = scorer.coded(model)
    n = len(ids)
    hashes = customer_hash(ids)
    order = np.argsort(hashes, kind="stable")
    if len(np.unique(hashes)) != n:
        raise DataError("two customer ids share a 64-bit hash; report this as a bug")
    _save(tmp, "id_hash", hashes[order])
    _save(tmp, "id_rows", order.astype(np.int64))
    cust_cols = [f for f in model.features_ if f in scorer.customers.columns]
    coded_matrix = np.empty((n, len(cust_cols)), dtype=np.float32)
    for f, col in enumerate(cust_cols):
        coded_matrix[:, f] = coded[col]
    _save(tmp, "coded", coded_matrix)
    offer_cols = [f for f in model.features_ if f in scorer.offers.columns]
    offer_coded = np.column_stack([coded[c] for c in offer_cols]) if offer_cols else None
    history_meta = {}
    for level, h in scorer.history.items():
        _save(tmp, f"hist_{level}_customer", h.customer)
        _save(tmp, f"hist_{level}_value", h.value.astype(np.int32))
        cols = [c for c in h.values if c in coded or c in (f"aff_{level}", f"aff_{level}_shown")]
        for col in cols:
            values = coded[col] if col in coded else h.values[col].astype(np.float32)
            _save(tmp, f"hist_{level}_{col}", values)
        history_meta[level] = {
            "columns": cols,
            "offer_value": h.offer_value.tolist(),
            "n_values": h.n_values,
        }
    reporter.finish()
    reporter.start(None, "Snapshot: profiles, consent and contacts")
    profile = scorer.customers.drop(columns=["customer_id"], errors="ignore").reset_index(drop=True)
    extras = _profile_extras(ws, ids, as_of)
    for col in extras.columns:
        profile[col] = extras[col].to_numpy()
    numeric = [c for c in profile.columns if pd.api.types.is_numeric_dtype(profile[c])]
    texts = [c for c in profile.columns if c not in numeric]
    _save(tmp, "profile_num", profile[numeric].to_numpy(dtype=np.float64, na_value=np.nan))
    vocab: dict[str, list[str]] = {}
    text_codes = np.full((n, len(texts)), -1, dtype=np.int32)
    for t, col in enumerate(texts):
        codes, uniques = pd.factorize(profile[col].astype(object), use_na_sentinel=True)
        text_codes[:, t] = codes
        vocab[col] = [str(u) for u in uniques]
    _save(tmp, "profile_text", text_codes)
    policy = _union_policy(campaigns)
    state = contact_state(
        ws.warehouse, as_of, policy, customer_ids=list(ids), offer_ids=list(offers.offer_id)
    )
    for ch in CONSENT_CHANNELS:
        _save(tmp, f"consent_{ch}", state.consent[ch])
    for ch in CHANNELS:
        _save(tmp, f"unsubscribed_{ch}", state.unsubscribed.get(ch, np.full(n, _NAT)))
        _save(tmp, f"sent_today_{ch}", state.sent_today.get(ch, np.zeros(n)).astype(np.int32))
        _save(tmp, f"sent_week_{ch}", state.sent_week.get(ch, np.zeros(n)).astype(np.int32))
        _save(tmp, f"suppressed_{ch}", state.suppressed_until.get(ch, np.full(n, _NAT)))
    shown_rows, shown_cols = np.nonzero(state.impressions)
    _save(tmp, "impressions_customer", shown_rows.astype(np.int64))
    _save(tmp, "impressions_offer", shown_cols.astype(np.int32))
    _save(tmp, "impressions_count", state.impressions[shown_rows, shown_cols].astype(np.int32))
    _save_carts(ws, tmp, ids, as_of)
    reporter.finish()
    reporter.start(None, "Snapshot: offers, posteriors and the batch's prices")
    offer_ids = list(offers.offer_id)
    frame = scorer.offers.copy()
    frame["sold"] = units_sold(ws.warehouse, offer_ids, as_of)
    frame["click_to_purchase"] = click_to_purchase(ws.warehouse, offers, as_of)
    alpha, beta = offer_posteriors(ws.warehouse, offer_ids, as_of)
    frame["posterior_alpha"], frame["posterior_beta"] = alpha, beta
    raw = offers.drop(columns=[c for c in frame.columns if c in offers.columns and c != "offer_id"])
    frame = raw.merge(frame, on="offer_id", how="left", validate="one_to_one")
    frame.to_parquet(tmp / "offers.parquet", index=False)
    if offer_coded is not None:
        _save(tmp, "offer_coded", offer_coded.astype(np.float32))
    batch = {}
    for spec in campaigns:
        c = spec.campaign
        got = _latest_summary(ws, c.name, as_of)
        prices = {}
        if got is not None:
            for basis, values in got["prices"].items():
                prices[basis] = dict(zip(got["offer_ids"], values, strict=True))
        weights = (
            list(c.position_weights[: c.slots])
            or (got or {}).get("position_weights")
            or position_weights(model, scorer, c.slots)
        )
        batch[c.name] = {
            "prices": prices,
            "prices_from": got["date"] if got else None,
            "position_weights": [float(w) for w in weights],
        }
    reporter.finish()
    meta = {
        "format": SNAPSHOT_FORMAT,
        "name": name,
        "as_of": as_of.isoformat(),
        "built": datetime.now(UTC).isoformat(),
        "customers": n,
        "offers": len(offer_ids),
        "model": manifest.name,
        "model_version": manifest.version,
        "response": str(manifest.params.get("response", "click")),
        "customer_columns": cust_cols,
        "offer_columns": offer_cols,
        "history": history_meta,
        "numeric": numeric,
        "texts": texts,
        "vocab": vocab,
        "suppression": policy.model_dump(include={"suppress_after_ignores", "suppress_days"}),
        "batch": batch,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, folder)
    pointer = _serving(ws) / "CURRENT"
    staged = pointer.with_suffix(".tmp")
    staged.write_text(name, encoding="utf-8")
    os.replace(staged, pointer)
    return folder


@dataclass
class _History:
    customer: np.ndarray
    value: np.ndarray
    columns: dict[str, np.ndarray]
    offer_value: np.ndarray  # per snapshot offer: its value code, -1 if none
    n_values: int


class Snapshot:
    """A snapshot opened read-only and memory-mapped (``writable``: for erasures)."""

    def __init__(self, folder: Path, *, writable: bool = False) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            raise DataError(f"{self.folder} is not a snapshot (no meta.json); build one")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != SNAPSHOT_FORMAT:
            raise DataError(
                f"{self.folder}: snapshot format {self.meta.get('format')}, expected "
                f"{SNAPSHOT_FORMAT}; build a new one with 'nextbest snapshot'"
            )
        mode: Literal["r+", "r"] = "r+" if writable else "r"
        self._mode = mode
        self._maps: list[mmap.mmap] = []
        self.name = str(self.meta["name"])
        self.as_of = datetime.fromisoformat(self.meta["as_of"])
        self.id_hash = self._load("id_hash")
        self.id_rows = self._load("id_rows")
        self.coded = self._load("coded")
        self.profile_num = self._load("profile_num")
        self.profile_text = self._load("profile_text")
        self.offers = pd.read_parquet(self.folder / "offers.parquet")
        self.offer_coded = (
            self._load("offer_coded")
            if (self.folder / "offer_coded.npy").exists()
            else np.zeros((len(self.offers), 0), dtype=np.float32)
        )
        self.history: dict[str, _History] = {}
        for level, h in self.meta["history"].items():
            self.history[level] = _History(
                customer=self._load(f"hist_{level}_customer"),
                value=self._load(f"hist_{level}_value"),
                columns={c: self._load(f"hist_{level}_{c}") for c in h["columns"]},
                offer_value=np.asarray(h["offer_value"], dtype=np.int64),
                n_values=int(h["n_values"]),
            )
        self.consent = {ch: self._load(f"consent_{ch}") for ch in CONSENT_CHANNELS}
        self.unsubscribed = {ch: self._load(f"unsubscribed_{ch}") for ch in CHANNELS}
        self.sent_today = {ch: self._load(f"sent_today_{ch}") for ch in CHANNELS}
        self.sent_week = {ch: self._load(f"sent_week_{ch}") for ch in CHANNELS}
        self.suppressed = {ch: self._load(f"suppressed_{ch}") for ch in CHANNELS}
        self.products = pd.read_parquet(self.folder / "products.parquet")
        self.cart = (self._load("cart_customer"), self._load("cart_product"))
        self.impressions = (
            self._load("impressions_customer"),
            self._load("impressions_offer"),
            self._load("impressions_count"),
        )

    def _load(self, name: str) -> np.ndarray:
        """The array memory-mapped; read-only ones as plain ndarray views of the map, since
        every slice of an ``np.memmap`` pays for its subclass (a writable one is kept as a
        memmap, to be flushed by :meth:`erase`)."""
        path = self.folder / f"{name}.npy"
        array: np.ndarray = np.load(path, mmap_mode=self._mode, allow_pickle=False)
        mapped = getattr(array, "_mmap", None)
        if mapped is not None:
            self._maps.append(mapped)
        return array if self._mode == "r+" else array.view(np.ndarray)

    def populate(self) -> bool:
        """Map every page of the snapshot into this process now (``MADV_POPULATE_READ``,
        reading from disk what the page cache lacks), so that no request pays for page faults
        on the customer rows it touches: several hundred microseconds a request otherwise,
        on random customers among a million. The pages stay shared with the other workers
        through the page cache. False where the kernel (before Linux 5.14) cannot."""
        try:
            for mapped in self._maps:
                mapped.madvise(_MADV_POPULATE_READ)
        except (OSError, ValueError):
            return False
        return True

    @cached_property
    def product_ids(self) -> np.ndarray:
        """The products' ids, in the order cart rows code them (object array)."""
        return self.products.product_id.astype(str).to_numpy(dtype=object)

    @cached_property
    def offer_ids(self) -> np.ndarray:
        """The offers' ids, in the order impression rows code them (object array)."""
        return self.offers.offer_id.astype(str).to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.id_rows)

    def row(self, customer_id: str) -> int | None:
        """The customer's row, or None when unknown or erased."""
        h = customer_hash(customer_id)[0]
        k = int(self.id_hash.searchsorted(h))
        if k < len(self.id_hash) and self.id_hash[k] == h:
            row = int(self.id_rows[k])
            return row if row >= 0 else None
        return None

    def profile(self, row: int) -> dict[str, Any]:
        """The raw profile of a row: numbers (None when missing) and texts."""
        out: dict[str, Any] = {}
        for col, v in zip(self.meta["numeric"], self.profile_num[row].tolist(), strict=True):
            out[col] = None if v != v else (int(v) if v.is_integer() and abs(v) < 2**53 else v)
        vocab = self.meta["vocab"]
        for col, code in zip(self.meta["texts"], self.profile_text[row].tolist(), strict=True):
            out[col] = vocab[col][code] if code >= 0 else None
        return out

    def cart_of(self, row: int) -> list[str]:
        """Products in the customer's open cart as of the snapshot."""
        customers, products = self.cart
        lo, hi = customers.searchsorted(row), customers.searchsorted(row + 1)
        ids = self.product_ids
        return [ids[p] for p in products[lo:hi].tolist() if p >= 0]

    def impressions_of(self, row: int) -> dict[str, int]:
        customers, offers, counts = self.impressions
        lo, hi = customers.searchsorted(row), customers.searchsorted(row + 1)
        ids = self.offer_ids
        return {
            ids[o]: c for o, c in zip(offers[lo:hi].tolist(), counts[lo:hi].tolist(), strict=True)
        }

    def erase(self, customer_id: str) -> bool:
        """Remove a customer in place: the id's hash, features, profile and contact rows."""
        if self._mode != "r+":
            raise ConfigError("erase: open the snapshot with writable=True")
        h = customer_hash(customer_id)[0]
        k = int(np.searchsorted(self.id_hash, h))
        if k >= len(self.id_hash) or self.id_hash[k] != h:
            return False
        row = int(self.id_rows[k])
        self.id_hash[k] = self.id_hash[k - 1] if k > 0 else 0
        self.id_rows[k] = self.id_rows[k - 1] if k > 0 else -1
        per_customer = [self.coded, self.profile_num, self.profile_text]
        per_customer += [*self.consent.values(), *self.sent_today.values()]
        per_customer += [*self.sent_week.values(), *self.unsubscribed.values()]
        per_customer += self.suppressed.values()
        blank = {"f": np.nan, "i": -1, "u": 0, "b": False, "M": _NAT}
        for arr in per_customer:
            arr[row] = 0 if arr.dtype.kind == "i" and arr.ndim == 1 else blank[arr.dtype.kind]
        touched = [self.id_hash, self.id_rows, *per_customer]
        for level in self.history.values():
            lo, hi = np.searchsorted(level.customer, [row, row + 1])
            for col in level.columns.values():
                col[lo:hi] = 0.0
                touched.append(col)
        customers, _, counts = self.impressions
        lo, hi = np.searchsorted(customers, [row, row + 1])
        counts[lo:hi] = 0
        cart_customers, cart_products = self.cart
        a, b = np.searchsorted(cart_customers, [row, row + 1])
        cart_products[a:b] = -1
        touched += [counts, cart_products]
        for arr in touched:
            if isinstance(arr, np.memmap):
                arr.flush()
        return True
