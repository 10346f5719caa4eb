"""KPIs by group, funnels with their drop-off, and acquisition-channel profitability.

Definitions (over events in ``[start, end)``):

- ``kpis_by``: per group of members (a customers column such as ``region`` or
  ``acquisition_channel``, ``channel`` of the event, or ``segment`` = RFM segment at ``end``):
  members (by a customers column: the customers who had signed up before ``end``, or without
  a signup date; by segment: the customers scored at ``end``; by channel: the customers with
  an event in that channel in the period), orders, revenue, margin, revenue and margin per
  member, average order value, conversion (orders per visit), visits per member, open rate,
  click rate, click-to-open and unsubscribe rate (per e-mail sent). Margin of a purchase line
  is its amount minus quantity x the product's cost; lines without a product cost are left
  out of margin.
- ``funnel``: strict funnels counted in member-days: a member-day reaches a step if it has the
  step's event and reached every step before. ``email``: sent, opened, clicked, visited,
  carted, bought; ``site``: visit, view, cart, purchase. ``funnel_by_segment``: the same per
  RFM segment as of the period's start.
- ``segment_profiles``: size, share, average R/F/M and share of spend of each RFM segment.
- ``period_baskets``: the baskets of a period, per order or per member, for basket analysis;
  ``member_cross_sell``: association rules over member baskets (what one member bought in
  the period, not one order), for sources whose orders are single lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError
from nextbest.features import SEGMENTS, rfm
from nextbest.models.basket import (
    LEVELS,
    BasketMatrix,
    association_rules,
    frequent_itemsets,
    line_baskets,
)

__all__ = [
    "BASKETS",
    "FUNNELS",
    "GROUPS",
    "FunnelStep",
    "MemberCrossSell",
    "acquisition_profitability",
    "funnel",
    "funnel_by_segment",
    "kpis_by",
    "member_cross_sell",
    "period_baskets",
    "segment_profiles",
]

FUNNELS: dict[str, tuple[tuple[str, str], ...]] = {
    "email": (
        ("sent", "email_sent"),
        ("opened", "email_open"),
        ("clicked", "email_click"),
        ("visited", "visit"),
        ("carted", "add_to_cart"),
        ("bought", "purchase"),
    ),
    "site": (
        ("visit", "visit"),
        ("view", "view"),
        ("cart", "add_to_cart"),
        ("purchase", "purchase"),
    ),
}
GROUPS = ("segment", "channel", "region", "acquisition_channel")


@dataclass(frozen=True)
class FunnelStep:
    step: str
    count: int
    share_of_start: float | None
    drop_off: float | None  # share lost since the previous step


def _period(warehouse: Warehouse, start: datetime | None, end: datetime | None) -> ir.Table:
    ev = warehouse.table("events")
    if start is not None:
        ev = ev.filter(ev.ts >= ibis.literal(start, type="timestamp('UTC')"))
    if end is not None:
        ev = ev.filter(ev.ts < ibis.literal(end, type="timestamp('UTC')"))
    return ev.filter(ev.customer_id.notnull())


def _ratio(num: ir.NumericValue, den: ir.NumericValue) -> ir.NumericValue:
    return ibis.cases((den > 0, num.cast("float64") / den), else_=ibis.null("float64"))


def kpis_by(
    warehouse: Warehouse, by: str, start: datetime | None = None, end: datetime | None = None
) -> ir.Table:
    """One row of KPIs per group; see the module docstring."""
    if by not in GROUPS:
        from nextbest.errors import ConfigError

        raise ConfigError(f"--by: expected one of {', '.join(GROUPS)}, got {by!r}")
    ev = _period(warehouse, start, end)
    products = warehouse.table("products")
    ev = ev.left_join(products.select("product_id", unit_cost=products.cost), "product_id").drop(
        "product_id_right"
    )
    customers = warehouse.table("customers")
    if by == "segment":
        when = end or datetime.now().astimezone()
        groups = rfm(warehouse, when).select("customer_id", group=ibis._.segment)
    elif by == "channel":
        groups = None
    else:
        # Members are the customers who had joined by the period's end (as rfm's scored
        # customers); the events of every customer count, so no revenue is left out.
        joined = ibis.literal(True)
        if end is not None:
            cut = ibis.literal(end, type="timestamp('UTC')")
            joined = customers.signup_ts.isnull() | (customers.signup_ts < cut)
        groups = customers.select(
            "customer_id", group=customers[by].fill_null("unknown"), _joined=joined
        )
    if groups is not None:
        ev = ev.join(groups.select("customer_id", "group"), "customer_id")
        if "_joined" in groups.columns:
            members = groups.group_by("group").aggregate(members=groups.count(where=groups._joined))
        else:
            members = groups.group_by("group").aggregate(members=groups.count())
    else:
        ev = ev.mutate(group=ev.channel.fill_null("none"))
        members = ev.group_by("group").aggregate(members=ev.customer_id.nunique())
    t = ev.type
    purchase = t == "purchase"
    amount = ev.amount.fill_null(0)
    line_margin = amount - ev.quantity.fill_null(1) * ev.unit_cost
    agg = ev.group_by("group").aggregate(
        orders=ibis.cases(
            (purchase, ibis.coalesce(ev.basket_id, ev.event_id)), else_=ibis.null("string")
        ).nunique(),
        revenue=ibis.cases((purchase, amount), (t == "return", -amount), else_=0).sum(),
        margin=ibis.cases((purchase & ev.unit_cost.notnull(), line_margin), else_=0).sum(),
        visits=ev.count(where=t == "visit"),
        sent=ev.count(where=t == "email_sent"),
        opens=ev.count(where=t == "email_open"),
        clicks=ev.count(where=t == "email_click"),
        unsubscribes=ev.count(where=t == "unsubscribe"),
    )
    out = members.left_join(agg, "group").drop("group_right")
    zero = ibis.literal(0)
    return out.select(
        "group",
        "members",
        orders=out.orders.fill_null(zero),
        revenue=out.revenue.fill_null(zero),
        margin=out.margin.fill_null(zero),
        revenue_per_member=_ratio(out.revenue.fill_null(zero), out.members),
        margin_per_member=_ratio(out.margin.fill_null(zero), out.members),
        aov=_ratio(out.revenue, out.orders),
        conversion=_ratio(out.orders, out.visits),
        visits_per_member=_ratio(out.visits.fill_null(zero), out.members),
        open_rate=_ratio(out.opens, out.sent),
        click_rate=_ratio(out.clicks, out.sent),
        click_to_open=_ratio(out.clicks, out.opens),
        unsubscribe_rate=_ratio(out.unsubscribes, out.sent),
    ).order_by(ibis.desc("revenue"))


def funnel(
    warehouse: Warehouse,
    name: str = "email",
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[FunnelStep]:
    """The strict funnel ``name`` in member-days, with the drop-off at each step."""
    steps = FUNNELS[name]
    ev = _period(warehouse, start, end)
    row = _reached(ev, steps, ()).to_pyarrow().to_pylist()[0]
    return _funnel_steps(row, steps)


def _reached(ev: ir.Table, steps: tuple[tuple[str, str], ...], by: tuple[str, ...]) -> ir.Table:
    """Per group of ``by``: the member-days that reached each step of a strict funnel."""
    ev = ev.mutate(day=ev.ts.date())
    flags = ev.group_by([*by, "customer_id", "day"]).aggregate(
        **{label: (ev.type == kind).any() for label, kind in steps}
    )
    reached: ir.BooleanValue | None = None
    counts: dict[str, ir.Value] = {}
    for label, _ in steps:
        reached = flags[label] if reached is None else reached & flags[label]
        counts[label] = reached.cast("int64").sum()
    return flags.group_by(list(by)).aggregate(**counts) if by else flags.aggregate(**counts)


def _funnel_steps(row: dict[str, Any], steps: tuple[tuple[str, str], ...]) -> list[FunnelStep]:
    out, first, prev = [], None, None
    for label, _ in steps:
        n = int(row[label] or 0)
        first = n if first is None else first
        out.append(
            FunnelStep(label, n, n / first if first else None, 1 - n / prev if prev else None)
        )
        prev = n
    return out


def acquisition_profitability(
    warehouse: Warehouse, start: datetime | None = None, end: datetime | None = None
) -> ir.Table:
    """Revenue, margin and referrals per acquired member, by acquisition channel."""
    k = kpis_by(warehouse, "acquisition_channel", start, end)
    ev = _period(warehouse, start, end)
    customers = warehouse.table("customers")
    refs = ev.filter(ev.type == "referral").join(customers, "customer_id")
    referrals = refs.group_by(group=refs.acquisition_channel.fill_null("unknown")).aggregate(
        referrals=refs.count()
    )
    out = k.left_join(referrals, "group").drop("group_right")
    return out.select(
        acquisition_channel=out.group,
        members=out.members,
        revenue_per_member=out.revenue_per_member,
        margin_per_member=out.margin_per_member,
        referrals_per_member=_ratio(out.referrals.fill_null(0), out.members),
    ).order_by(ibis.desc("revenue_per_member"))


# By segment, segment profiles and baskets of a period (the dashboard's insight pages) ----------


def funnel_by_segment(
    warehouse: Warehouse,
    name: str,
    start: datetime,
    end: datetime | None = None,
    *,
    scores: ir.Table | None = None,
) -> dict[str, list[FunnelStep]]:
    """The strict funnel ``name`` per RFM segment as of ``start``, segments in SEGMENTS order.

    A member counts in the segment :func:`nextbest.features.rfm` gives them at ``start`` (so
    the period's own purchases do not move them; pass ``scores``, that table already
    computed, to reuse it); members who signed up later are left out. Segments without a
    member-day in the period are left out.
    """
    steps = FUNNELS[name]
    ev = _period(warehouse, start, end)
    scores = rfm(warehouse, start) if scores is None else scores
    ev = ev.join(scores.select("customer_id", "segment"), "customer_id")
    rows = {r["segment"]: r for r in _reached(ev, steps, ("segment",)).to_pyarrow().to_pylist()}
    return {s: _funnel_steps(rows[s], steps) for s in SEGMENTS if s in rows}


def segment_profiles(
    warehouse: Warehouse, as_of: datetime, *, scores: ir.Table | None = None
) -> ir.Table:
    """One row per named RFM segment at ``as_of``, in SEGMENTS order.

    Columns: ``segment``, ``customers``, ``share`` (of the customers scored), the averages
    ``recency_days``, ``frequency`` and ``monetary`` (365 days, as :func:`rfm`), and
    ``revenue_share``: the segment's share of the 365-day purchase amounts. ``scores``:
    ``rfm(warehouse, as_of)`` already computed, to reuse it.
    """
    scores = rfm(warehouse, as_of) if scores is None else scores
    agg = scores.group_by("segment").aggregate(
        customers=scores.count(),
        recency_days=scores.recency_days.mean(),
        frequency=scores.frequency.mean(),
        monetary=scores.monetary.mean(),
        spend=scores.monetary.sum(),
    )
    whole = ibis.window()
    order = ibis.cases(*((agg.segment == s, i) for i, s in enumerate(SEGMENTS)), else_=99)
    return (
        agg.mutate(
            share=agg.customers.cast("float64") / agg.customers.sum().over(whole),
            revenue_share=_ratio(agg.spend, agg.spend.sum().over(whole)),
            rank=order,
        )
        .order_by("rank")
        .select(
            "segment",
            "customers",
            "share",
            "recency_days",
            "frequency",
            "monetary",
            "revenue_share",
        )
    )


BASKETS = ("order", "member")


def period_baskets(
    warehouse: Warehouse,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    level: str = "category",
    per: str = "order",
    events: tuple[str, ...] = ("purchase",),
) -> BasketMatrix:
    """Baskets of the events in ``[start, end)`` at product, category or brand level.

    ``per="order"``: a basket is a ``basket_id`` where the source has one, else a member's
    lines of one day (as :func:`nextbest.models.warehouse_baskets`); ``per="member"``: all of
    a member's lines in the period (what one customer bought, the basis of item-to-item
    cross-sell). ``events`` are the event types whose product lines count (purchases by
    default; ``("view",)`` gives browsing baskets). Lines without a product, or whose product
    has no value at ``level``, and anonymous lines without a basket id are left out.
    """
    if level not in LEVELS:
        raise ConfigError(f"level: expected one of {', '.join(LEVELS)}, got {level!r}")
    if per not in BASKETS:
        raise ConfigError(f"per: expected one of {', '.join(BASKETS)}, got {per!r}")
    ev = warehouse.table("events")
    if start is not None:
        ev = ev.filter(ev.ts >= ibis.literal(start, type="timestamp('UTC')"))
    if end is not None:
        ev = ev.filter(ev.ts < ibis.literal(end, type="timestamp('UTC')"))
    ev = ev.filter(ev.type.isin(list(events)), ev.product_id.notnull())
    member_day = ev.customer_id.concat(":", ev.ts.date().cast("string"))
    key = ibis.coalesce(ev.basket_id, member_day) if per == "order" else ev.customer_id
    lines = ev.select(basket=key, product_id=ev.product_id)
    lines = lines.filter(lines.basket.notnull())  # anonymous lines without a basket id
    return line_baskets(warehouse, lines, level)


@dataclass(frozen=True)
class MemberCrossSell:
    """Rules over member baskets: ``baskets`` members who bought, ``rules`` as
    :func:`nextbest.models.association_rules` gives them plus ``members`` (who bought both)."""

    baskets: int
    multi: int  # members whose basket has more than one item
    rules: pd.DataFrame


def member_cross_sell(
    warehouse: Warehouse,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    level: str = "category",
    min_support: float = 0.005,
    min_members: int = 4,
    min_confidence: float = 0.05,
    min_lift: float | None = 1.0,
    max_len: int = 2,
) -> MemberCrossSell:
    """Cross-sell rules between what the same member bought in ``[start, end)``.

    A basket is everything one member bought in the period (:func:`period_baskets` with
    ``per="member"``), so a rule A -> B reads "members who bought A also bought B in the
    period", not "in the same order". An itemset must be bought by at least ``min_support``
    of the members who bought and by at least ``min_members`` of them (so a handful of
    members never makes a rule); rules need ``min_confidence`` and ``min_lift`` (1.0: at
    least as often as chance). The defaults suit a few thousand buyers over a dozen
    categories, where a category's share of buyers is 5-15%: a confidence threshold well
    below that, and lift to say whether A raises the chance of B. Rules are ordered by lift,
    then confidence.
    """
    baskets = period_baskets(warehouse, start, end, level=level, per="member")
    n = baskets.n_baskets
    multi = int((baskets.matrix.tocsr().getnnz(axis=1) > 1).sum()) if n else 0
    support = max(min_support, min_members / n) if n else 2.0
    if multi == 0 or support > 1:
        return MemberCrossSell(n, multi, pd.DataFrame(columns=[*_RULE_COLUMNS, "members"]))
    itemsets = frequent_itemsets(baskets, support, max_len)
    rules = association_rules(itemsets, min_confidence, min_lift)
    rules = rules.assign(members=(rules.support * n).round().astype("int64"))
    return MemberCrossSell(n, multi, rules.reset_index(drop=True))


_RULE_COLUMNS = (
    "antecedents",
    "consequents",
    "antecedent support",
    "consequent support",
    "support",
    "confidence",
    "lift",
    "leverage",
    "conviction",
)
