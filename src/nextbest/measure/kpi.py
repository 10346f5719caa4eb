"""Headline KPIs of a warehouse, as Ibis expressions (so they run on any Ibis backend).

Definitions (all over the chosen period, by event time):

- members: customers in the warehouse; active members: customers with a purchase.
- revenue: sum of purchase amounts minus sum of return amounts; orders: purchase events
  grouped by basket where a basket id exists, else one per purchase event.
- open rate, click rate: e-mail opens and clicks per e-mail sent; click-to-open: clicks per open;
  unsubscribe rate: unsubscribes per e-mail sent.
- conversion: orders per site visit (``visit`` events).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import ibis

from nextbest.data.warehouse import Warehouse

__all__ = ["HeadlineKpis", "headline_kpis"]


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
