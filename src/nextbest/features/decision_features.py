"""Features of logged decisions: who, what, where in the slate, and how it turned out.

One row per logged decision that showed an offer, between two dates, with

- the customer 360 of :func:`customer_features` as of the start (00:00 UTC) of the decision's
  day, so a row never sees an event from its own day or later (point-in-time correct);
- the customer's demographics: ``region``, ``gender``, ``age``, ``acquisition_channel``;
- the offer's features: ``offer_brand``, ``offer_category``, ``offer_discount``,
  ``offer_margin``, ``offer_unit_cost``, ``offer_age_days`` (since the offer opened),
  ``offer_new_designer`` (tagged ``new_designer``), ``offer_capacity``; and ``slot`` (position);
- customer-offer affinities from the same history: the customer's earlier views, clicks, carts
  and purchases of the offer's brand and of its category (``aff_brand_views`` ...), weighted
  together into ``aff_brand`` and ``aff_category`` (view 1, click 2, cart 3, purchase 5);
- exposure: how often the customer was shown the offer's brand and category before
  (``aff_brand_shown``) and her clicks per showing (``aff_brand_ctr``), and everyone's clicks
  per showing of the brand and category (``pop_brand_ctr``, ``pop_category_ctr``: popularity;
  missing for a brand never shown, such as a new designer's first sale);
- the label ``response``: whether the decision was followed by a response event linked to it
  by ``decision_id`` (click: ``email_click``, ``push_open`` or ``click``; purchase:
  ``purchase``).

Everything is Ibis; each day is one query, executed and appended, so memory grows with the
rows asked for and not with the history behind them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import ibis
import ibis.expr.types as ir
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import DataError
from nextbest.features.customer360 import customer_features
from nextbest.progress import NullReporter, Reporter

__all__ = [
    "AFFINITY_WEIGHTS",
    "CATEGORICAL",
    "LEVELS",
    "RESPONSES",
    "PairParts",
    "decision_days",
    "decision_features",
    "offer_customer_features",
    "pair_parts",
    "shown_and_clicked",
]

RESPONSES: dict[str, tuple[str, ...]] = {
    "click": ("email_click", "push_open", "click"),
    "purchase": ("purchase",),
}
AFFINITY_WEIGHTS = {"view": 1.0, "email_click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
CATEGORICAL = (
    "region",
    "gender",
    "acquisition_channel",
    "offer_brand",
    "offer_category",
    "top_category",
    "top_brand",
)
_DAY = timedelta(days=1)


def _ts(value: datetime) -> ir.TimestampValue:
    return ibis.literal(value, type="timestamp('UTC')")


def _affinity(warehouse: Warehouse, as_of: datetime, level: str) -> ir.Table:
    """Per customer and brand (or category): weighted interactions before ``as_of``."""
    ev = warehouse.table("events")
    ev = ev.filter(ev.ts < _ts(as_of), ev.customer_id.notnull(), ev.offer_id.notnull())
    ev = ev.filter(ev.type.isin(tuple(AFFINITY_WEIGHTS)))
    offers = warehouse.table("offers").select("offer_id", level)
    lines = ev.join(offers, "offer_id")
    counts = {
        f"aff_{level}_{kind}s": lines.count(where=lines.type == event)
        for kind, event in (
            ("view", "view"),
            ("click", "email_click"),
            ("cart", "add_to_cart"),
            ("purchase", "purchase"),
        )
    }
    weight = ibis.cases(*((lines.type == k, w) for k, w in AFFINITY_WEIGHTS.items()), else_=0.0)
    return lines.group_by(["customer_id", level]).aggregate(
        **counts, **{f"aff_{level}": weight.sum()}
    )


def shown_and_clicked(warehouse: Warehouse, as_of: datetime) -> tuple[ir.Table, ir.Table]:
    """The decisions logged before ``as_of`` that showed an offer (``decision_id``,
    ``customer_id``, ``offer_id``), and the ids of those a click answered before it."""
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.ts < _ts(as_of), dec.offer_id.notnull())
    ev = warehouse.table("events")
    clicks = ev.filter(
        ev.ts < _ts(as_of), ev.type.isin(RESPONSES["click"]), ev.decision_id.notnull()
    )
    return dec.select("decision_id", "customer_id", "offer_id"), clicks.select(
        "decision_id"
    ).distinct()


def _exposure(warehouse: Warehouse, as_of: datetime, level: str) -> tuple[ir.Table, ir.Table]:
    """Offers of each brand (or category) shown and clicked before ``as_of``.

    Per customer and level value: ``aff_<level>_shown`` and ``aff_<level>_ctr`` (her clicks
    per offer shown); per level value: ``pop_<level>_ctr``, everyone's clicks per offer shown
    (how popular the brand or category is; missing for a brand never shown, a new designer).
    """
    dec, clicks = shown_and_clicked(warehouse, as_of)
    offers = warehouse.table("offers").select("offer_id", level)
    clicks = clicks.mutate(_clicked=ibis.literal(1))
    shown = dec.join(offers, "offer_id")
    shown = shown.left_join(clicks, "decision_id").drop("decision_id_right")
    clicked = shown._clicked.notnull()
    per_customer = shown.group_by(["customer_id", level]).aggregate(
        **{f"aff_{level}_shown": shown.count(), "_clicks": shown.count(where=clicked)}
    )
    per_customer = per_customer.mutate(
        **{
            f"aff_{level}_ctr": per_customer._clicks.cast("float64")
            / per_customer[f"aff_{level}_shown"]
        }
    ).drop("_clicks")
    popular = shown.group_by(level).aggregate(_n=shown.count(), _clicks=shown.count(where=clicked))
    popular = popular.select(
        level, **{f"pop_{level}_ctr": popular._clicks.cast("float64") / popular._n}
    )
    return per_customer, popular


@dataclass(frozen=True)
class PairParts:
    """The pieces a customer x offer row is joined from, as Ibis tables as of one date.

    ``customers``: one row per customer (customer 360 and demographics); ``offers``: one row
    per offer (the ``offer_*`` columns); per level (``brand``, ``category``): ``affinity`` and
    ``exposure`` per customer and level value, ``popular`` per level value. A row's features
    are the join of its customer, its offer and the level values of that offer; scoring many
    pairs joins the pieces in memory instead (``nextbest.decide.day``), with the same columns.
    """

    customers: ir.Table
    offers: ir.Table
    affinity: dict[str, ir.Table]
    exposure: dict[str, ir.Table]
    popular: dict[str, ir.Table]


LEVELS = ("brand", "category")


def pair_parts(warehouse: Warehouse, as_of: datetime) -> PairParts:
    """The pieces of :func:`offer_customer_features` as of ``as_of``."""
    cut = _ts(as_of)
    customers = warehouse.table("customers")
    demo = customers.select(
        "customer_id",
        "region",
        "gender",
        "acquisition_channel",
        age=ibis.literal(as_of.year) - customers.birth_year,
    )
    features = customer_features(warehouse, as_of, ordered=False)
    # every customer (one who joins later in the day has demographics and no history yet)
    per_customer = demo.left_join(features, "customer_id").drop("customer_id_right")
    per_customer = per_customer.select(*features.columns, *demo.columns[1:])
    offers = warehouse.table("offers")
    offer_cols = offers.select(
        "offer_id",
        offer_brand=offers.brand,
        offer_category=offers.category,
        offer_discount=offers.discount,
        offer_margin=offers.margin,
        offer_unit_cost=offers.unit_cost,
        offer_capacity=offers.capacity.cast("float64"),
        offer_age_days=(cut.epoch_seconds() - offers.start_ts.epoch_seconds()) / 86_400.0,
        offer_new_designer=offers.tags.fill_null("").contains("new_designer").cast("int8"),
    )
    exposure, popular = {}, {}
    for level in LEVELS:
        exposure[level], popular[level] = _exposure(warehouse, as_of, level)
    return PairParts(
        customers=per_customer,
        offers=offer_cols,
        affinity={level: _affinity(warehouse, as_of, level) for level in LEVELS},
        exposure=exposure,
        popular=popular,
    )


def offer_customer_features(warehouse: Warehouse, pairs: ir.Table, as_of: datetime) -> ir.Table:
    """Add customer 360, demographics, offer features and affinities to ``pairs``.

    ``pairs`` has at least ``customer_id`` and ``offer_id`` (and may carry ``slot`` and other
    columns, kept as they are); features are as of ``as_of``. Counts of interactions and
    showings are 0 where there were none; rates (``*_ctr``) stay missing.
    """
    parts = pair_parts(warehouse, as_of)
    out = pairs.left_join(parts.customers, "customer_id").drop("customer_id_right")
    out = out.left_join(parts.offers, "offer_id").drop("offer_id_right")
    for level in LEVELS:
        aff = parts.affinity[level]
        key = f"offer_{level}"
        out = out.left_join(
            aff, (out.customer_id == aff.customer_id) & (out[key] == aff[level])
        ).drop("customer_id_right", level)
        names = [c for c in aff.columns if c.startswith("aff_")]
        out = out.mutate(**{c: out[c].fill_null(0) for c in names})
        per_customer, popular = parts.exposure[level], parts.popular[level]
        out = out.left_join(
            per_customer,
            (out.customer_id == per_customer.customer_id) & (out[key] == per_customer[level]),
        ).drop("customer_id_right", level)
        out = out.mutate(**{f"aff_{level}_shown": out[f"aff_{level}_shown"].fill_null(0)})
        out = out.left_join(popular, out[key] == popular[level]).drop(level)
    return out


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    """Halve the memory of a day's rows: float32 and int32 numbers (features, not ids)."""
    for col in frame.columns:
        kind = frame[col].dtype.kind
        if kind == "f":
            frame[col] = frame[col].astype("float32")
        elif kind == "i" and frame[col].dtype.itemsize > 4:
            frame[col] = frame[col].astype("int32")
    return frame


_HASH_SLOTS = 1_000_000


def _sampled(dec: ir.Table, most: int) -> ir.Table:
    """About ``most`` of the decisions ``dec``, by a hash of their id (all if fewer)."""
    if most < 1:
        raise DataError(f"max_rows_per_day must be at least 1, got {most}")
    count = int(dec.count().execute())
    if count <= most:
        return dec
    keep = max(1, int(_HASH_SLOTS * most / count))
    return dec.filter((dec.decision_id.hash() % _HASH_SLOTS).abs() < keep)


def decision_days(warehouse: Warehouse) -> list[datetime]:
    """The UTC days on which decisions showing an offer were logged, in order."""
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.offer_id.notnull())
    days = dec.select(day=dec.ts.truncate("D")).distinct().order_by("day").execute()["day"]
    return [pd.Timestamp(d).to_pydatetime().replace(tzinfo=UTC) for d in days]


def decision_features(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    *,
    response: str = "click",
    max_rows_per_day: int | None = None,
    reporter: Reporter | None = None,
) -> pd.DataFrame:
    """Feature rows and labels of the decisions logged in ``[start, end)``, day by day.

    Columns: ``decision_id``, ``customer_id``, ``offer_id``, ``day``, ``slot``, the features
    listed in the module docstring, and ``response`` (0 or 1). Categorical columns are strings;
    numbers are float32 or int32, so that millions of rows fit in memory.

    ``max_rows_per_day``: a day with more logged decisions keeps about that many, sampled by a
    hash of ``decision_id`` (the same rows on every run; a uniform sample, so rates and
    probabilities are not biased). A 5M-member shop logs 15M decisions a day: their 60
    features, ordered, do not fit the warehouse's default 4 GB.
    """
    if response not in RESPONSES:
        raise DataError(f"response must be one of {', '.join(RESPONSES)}, got {response!r}")
    reporter = reporter or NullReporter()
    day = datetime(start.year, start.month, start.day, tzinfo=UTC)
    days = []
    while day < end:
        days.append(day)
        day += _DAY
    ev = warehouse.table("events")
    hits = ev.filter(ev.type.isin(RESPONSES[response]), ev.decision_id.notnull())
    hits = hits.select("decision_id").distinct().mutate(response=ibis.literal(1, "int8"))
    frames = []
    reporter.start(len(days), f"Decision features ({response})")
    for day in days:
        dec = warehouse.table("decisions")
        dec = dec.filter(
            dec.offer_id.notnull(),
            dec.ts >= _ts(max(day, start)),
            dec.ts < _ts(min(day + _DAY, end)),
        ).select("decision_id", "customer_id", "offer_id", "slot")
        if max_rows_per_day is not None:
            dec = _sampled(dec, max_rows_per_day)
        rows = offer_customer_features(warehouse, dec, day)
        rows = rows.left_join(hits, "decision_id").drop("decision_id_right")
        rows = rows.mutate(response=rows.response.fill_null(0), day=_ts(day))
        frame = rows.order_by("decision_id").to_pandas()
        if len(frame):
            frames.append(_compact(frame))
        reporter.advance(1)
    reporter.finish()
    if not frames:
        raise DataError(
            f"no decisions showing an offer between {start:%Y-%m-%d} and {end:%Y-%m-%d}; "
            "load decisions (with offer_id) first, or choose other dates"
        )
    return pd.concat(frames, ignore_index=True)
