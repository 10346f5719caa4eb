"""Headline KPIs of a warehouse, as Ibis expressions (so they run on any Ibis backend).

Definitions (all over the chosen period, by event time):

- members: customers in the warehouse; active members: customers with a purchase.
- revenue: sum of purchase amounts minus sum of return amounts; orders: purchase events
  grouped by basket where a basket id exists, else one per purchase event.
- open rate, click rate: e-mail opens and clicks per e-mail sent; click-to-open: clicks per open;
  unsubscribe rate: unsubscribes per e-mail sent.
- conversion: orders per site visit (``visit`` events).

:func:`daily_kpis` and :func:`period_kpis` add margin and a slice of the events (one channel,
one RFM segment as of the period's start): the dashboard's overview and its trends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from nextbest.data.warehouse import Warehouse
from nextbest.features import rfm

__all__ = ["HeadlineKpis", "PeriodKpis", "daily_kpis", "headline_kpis", "period_kpis"]


@dataclass(frozen=True)
class HeadlineKpis:
    """What a newcomer wants to see first about a retailer's data."""

    members: int
    active_members: int
    revenue: float
    orders: int
    emails_sent: int
    open_rate: float | None
    click_rate: float | None
    click_to_open: float | None
    unsubscribe_rate: float | None
    visits: int
    conversion: float | None
    first_ts: datetime | None
    last_ts: datetime | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def headline_kpis(
    warehouse: Warehouse, start: datetime | None = None, end: datetime | None = None
) -> HeadlineKpis:
    """Compute the headline KPIs over ``[start, end)`` (all time when not given)."""
    ev = warehouse.table("events")
    if start is not None:
        ev = ev.filter(ev.ts >= start)
    if end is not None:
        ev = ev.filter(ev.ts < end)
    t = ev.type
    amount = ev.amount.fill_null(0)
    purchases = ev.filter(t == "purchase")
    order_key = ibis.coalesce(purchases.basket_id, purchases.event_id)
    row = (
        ev.aggregate(
            revenue=ibis.cases((t == "purchase", amount), (t == "return", -amount), else_=0).sum(),
            emails_sent=(t == "email_sent").sum(),
            opens=(t == "email_open").sum(),
            clicks=(t == "email_click").sum(),
            unsubscribes=(t == "unsubscribe").sum(),
            visits=(t == "visit").sum(),
            first_ts=ev.ts.min(),
            last_ts=ev.ts.max(),
        )
        .to_pyarrow()
        .to_pylist()[0]
    )
    orders = int(purchases.aggregate(n=order_key.nunique()).to_pyarrow()["n"][0].as_py() or 0)
    active = int(
        purchases.aggregate(n=purchases.customer_id.nunique()).to_pyarrow()["n"][0].as_py() or 0
    )
    sent = int(row["emails_sent"] or 0)
    opens = int(row["opens"] or 0)
    clicks = int(row["clicks"] or 0)
    visits = int(row["visits"] or 0)
    return HeadlineKpis(
        members=warehouse.count("customers"),
        active_members=active,
        revenue=float(row["revenue"] or 0.0),
        orders=orders,
        emails_sent=sent,
        open_rate=_ratio(opens, sent),
        click_rate=_ratio(clicks, sent),
        click_to_open=_ratio(clicks, opens),
        unsubscribe_rate=_ratio(int(row["unsubscribes"] or 0), sent),
        visits=visits,
        conversion=_ratio(orders, visits),
        first_ts=row["first_ts"],
        last_ts=row["last_ts"],
    )


# Daily and period KPIs for a slice of members (the dashboard's overview) --------------------


@dataclass(frozen=True)
class PeriodKpis:
    """The KPIs of one period for a slice of events (see :func:`period_kpis`)."""

    start: datetime
    end: datetime
    revenue: float
    margin: float
    orders: int
    active_members: int
    visits: int
    emails_sent: int
    opens: int
    clicks: int
    unsubscribes: int

    @property
    def conversion(self) -> float | None:
        return _ratio(self.orders, self.visits)

    @property
    def open_rate(self) -> float | None:
        return _ratio(self.opens, self.emails_sent)

    @property
    def click_rate(self) -> float | None:
        return _ratio(self.clicks, self.emails_sent)

    @property
    def unsubscribe_rate(self) -> float | None:
        return _ratio(self.unsubscribes, self.emails_sent)


_COUNTS = (
    "revenue",
    "margin",
    "orders",
    "active_members",
    "visits",
    "emails_sent",
    "opens",
    "clicks",
    "unsubscribes",
)


def _slice(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    segment: str | None,
    channel: str | None,
    scores: ir.Table | None,
) -> ir.Table:
    """Events in ``[start, end)``, of one channel and one RFM segment (as of ``start``)."""
    ev = warehouse.table("events")
    ev = ev.filter(
        ev.ts >= ibis.literal(start, type="timestamp('UTC')"),
        ev.ts < ibis.literal(end, type="timestamp('UTC')"),
    )
    if channel is not None:
        ev = ev.filter(ev.channel == channel)
    if segment is not None:
        scores = rfm(warehouse, start) if scores is None else scores
        ev = ev.semi_join(scores.filter(scores.segment == segment), "customer_id")
    products = warehouse.table("products")
    return ev.left_join(products.select("product_id", unit_cost=products.cost), "product_id").drop(
        "product_id_right"
    )


def _metrics(ev: ir.Table) -> dict[str, ir.Value]:
    t = ev.type
    purchase = t == "purchase"
    amount = ev.amount.fill_null(0)
    line_margin = amount - ev.quantity.fill_null(1) * ev.unit_cost
    return {
        "revenue": ibis.cases((purchase, amount), (t == "return", -amount), else_=0).sum(),
        "margin": ibis.cases((purchase & ev.unit_cost.notnull(), line_margin), else_=0).sum(),
        "orders": ibis.cases(
            (purchase, ibis.coalesce(ev.basket_id, ev.event_id)), else_=ibis.null("string")
        ).nunique(),
        "active_members": ibis.cases(
            (purchase, ev.customer_id), else_=ibis.null("string")
        ).nunique(),
        "visits": ev.count(where=t == "visit"),
        "emails_sent": ev.count(where=t == "email_sent"),
        "opens": ev.count(where=t == "email_open"),
        "clicks": ev.count(where=t == "email_click"),
        "unsubscribes": ev.count(where=t == "unsubscribe"),
    }


def _rate(num: ir.NumericValue, den: ir.NumericValue) -> ir.NumericValue:
    return ibis.cases((den > 0, num.cast("float64") / den), else_=ibis.null("float64"))


def daily_kpis(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    segment: str | None = None,
    channel: str | None = None,
    *,
    scores: ir.Table | None = None,
) -> ir.Table:
    """One row per day of ``[start, end)``: the headline KPIs of that day, margin included.

    Columns: ``day``, ``revenue`` (purchases minus returns), ``margin`` (as :func:`kpis_by`:
    purchase lines with a product cost, amount minus quantity x cost), ``orders``,
    ``active_members`` (members with a purchase that day), ``visits``, ``emails_sent``,
    ``opens``, ``clicks``, ``unsubscribes`` and the rates ``conversion`` (orders per visit),
    ``open_rate``, ``click_rate``, ``unsubscribe_rate`` (per e-mail sent; null on a day without
    e-mails). Days without events are rows of zeros. ``channel`` keeps the events of that
    channel; ``segment`` keeps the members in that RFM segment as of ``start``
    (:func:`nextbest.features.rfm`; pass ``scores``, that table already computed, to reuse
    it). Days are the UTC dates of the events.
    """
    ev = _slice(warehouse, start, end, segment, channel, scores)
    agg = ev.group_by(day=ev.ts.date()).aggregate(**_metrics(ev))
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    calendar = ibis.memtable(
        {"day": [first + timedelta(days=i) for i in range((last - first).days + 1)]},
        schema={"day": "date"},
    )
    out = calendar.left_join(agg, "day").drop("day_right")
    filled = out.select("day", **{c: out[c].fill_null(0) for c in _COUNTS})
    return filled.mutate(
        conversion=_rate(filled.orders, filled.visits),
        open_rate=_rate(filled.opens, filled.emails_sent),
        click_rate=_rate(filled.clicks, filled.emails_sent),
        unsubscribe_rate=_rate(filled.unsubscribes, filled.emails_sent),
    ).order_by("day")


def period_kpis(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    segment: str | None = None,
    channel: str | None = None,
    *,
    scores: ir.Table | None = None,
) -> PeriodKpis:
    """The KPIs of :func:`daily_kpis` over the whole of ``[start, end)`` (members counted once)."""
    ev = _slice(warehouse, start, end, segment, channel, scores)
    row = ev.aggregate(**_metrics(ev)).to_pyarrow().to_pylist()[0]
    return PeriodKpis(
        start=start,
        end=end,
        revenue=float(row["revenue"] or 0.0),
        margin=float(row["margin"] or 0.0),
        **{c: int(row[c] or 0) for c in _COUNTS if c not in ("revenue", "margin")},
    )
