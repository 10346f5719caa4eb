"""Customer 360 as of a date: one row per customer, from events strictly before that date.

Point-in-time correct by construction: every feature is an aggregate over
``events.ts < as_of`` and over customers who signed up before ``as_of``, so adding events at
or after ``as_of`` never changes a feature (a property test checks it). All of it is Ibis, so
it runs on any Ibis backend.

Features (``w`` in 30, 90, 365 days; an order is a basket where the source has baskets, else
one purchase event; monetary values are purchase amounts):

- ``tenure_days``, ``recency_days`` (days since the last purchase), ``frequency_w``,
  ``monetary_w``, ``frequency_all``, ``monetary_all``, ``aov`` (all-time monetary per order);
- e-mail: ``emails_sent_w``, ``open_rate_w``, ``click_rate_w``, ``click_to_open_w`` (w = 30, 90);
- ``visits_w``; channel habits over 365 days: the share of visits and purchases made in web,
  app, store and phone (``share_web`` ...);
- ``cart_abandonment`` (365 days): carts not followed by a purchase, per cart;
- ``returns_365`` and ``return_rate`` (returns per purchase line);
- ``discount_sensitivity``: mean discount of the offers behind purchases (365 days);
- ``referrals_made`` (all time), ``days_since_contact`` (last e-mail, push or SMS sent);
- ``top_category``, ``top_category_share``, ``top_brand``, ``top_brand_share`` (365 days of
  purchase lines, through the product, or the offer where the line has no product); the
  full shares per category and brand are :mod:`nextbest.features.shares` (not columns here:
  the propensity and churn models take every column of this table).

:func:`training_set` adds future labels from the window after ``as_of``:
``purchase_next_14d`` and ``no_purchase_next_90d``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from nextbest.data.warehouse import Warehouse
from nextbest.features.shares import purchase_lines

__all__ = ["WINDOWS", "customer_features", "training_set"]

WINDOWS = (30, 90, 365)
_DAY = 86_400.0
_CONTACT = ("email_sent", "push_sent", "sms_sent")
_CHANNELS = ("web", "app", "store", "phone")


def _ratio(num: ir.NumericValue, den: ir.NumericValue) -> ir.NumericValue:
    return ibis.cases((den > 0, num.cast("float64") / den), else_=ibis.null("float64"))


def customer_features(warehouse: Warehouse, as_of: datetime, *, ordered: bool = True) -> ir.Table:
    """The customer 360 table as of ``as_of`` (an Ibis expression; execute or write it).

    ``ordered``: rows by ``customer_id``. A caller that only joins the table to others passes
    ``False``: DuckDB would still sort the inner ORDER BY, a second or more at 1M customers.
    """
    cut = ibis.literal(as_of, type="timestamp('UTC')")
    cut_s = ibis.literal(as_of.timestamp())
    customers = warehouse.table("customers")
    customers = customers.filter(customers.signup_ts.isnull() | (customers.signup_ts < cut))
    ev = warehouse.table("events")
    ev = ev.filter(ev.ts < cut, ev.customer_id.notnull())
    # each event's age, kind and windows computed once (DuckDB would otherwise evaluate the
    # age expression once per metric: 40 times a row)
    ev = ev.mutate(
        _age=(cut_s - ev.ts.epoch_seconds()) / _DAY,
        _amount=ev.amount.fill_null(0),
        _order=ibis.coalesce(ev.basket_id, ev.event_id),
    )
    ev = ev.mutate(
        _buy=ev.type == "purchase",
        _act=ev.type.isin(("visit", "purchase", "store_visit")),
        _contact=ev.type.isin(_CONTACT),
        **{f"_in{w}": ev._age <= w for w in WINDOWS},
    )
    age = ev._age
    t = ev.type
    amount = ev._amount
    purchase = ev._buy

    def within(days: int) -> ir.BooleanValue:
        return ev[f"_in{days}"]

    def rows(where: ir.BooleanValue) -> ir.IntegerScalar:
        # COUNT(*) FILTER: a SUM of 0/1 integers is a 128-bit sum in DuckDB, 0.5 s a column
        # at 1M customers x 5M events
        return ev.count(where=where)

    metrics: dict[str, ir.Value] = {
        "last_purchase_age": ibis.cases((purchase, age), else_=ibis.null("float64")).min(),
        "monetary_all": ibis.cases((purchase, amount), else_=0).sum(),
        "referrals_made": rows(t == "referral"),
        "last_contact_age": ibis.cases((ev._contact, age), else_=ibis.null("float64")).min(),
        "carts_365": rows((t == "add_to_cart") & within(365)),
        "lines_365": rows(purchase & within(365)),
        "returns_365": rows((t == "return") & within(365)),
        "acts_365": rows(ev._act & within(365)),
    }
    for ch in _CHANNELS:
        metrics[f"acts_{ch}"] = rows(ev._act & within(365) & (ev.channel == ch))
    for w in WINDOWS:
        metrics[f"monetary_{w}"] = ibis.cases((purchase & within(w), amount), else_=0).sum()
        metrics[f"visits_{w}"] = rows((t == "visit") & within(w))
    for w in WINDOWS[:2]:
        for kind, name in (
            ("email_sent", "sent"),
            ("email_open", "opens"),
            ("email_click", "clicks"),
        ):
            metrics[f"_{name}_{w}"] = rows((t == kind) & within(w))
    # orders (a basket, or a line without one) counted once: an order is in a window when
    # one of its lines is
    lines = ev.filter(purchase)
    orders = lines.group_by(["customer_id", "_order"]).aggregate(_age=lines._age.min())
    frequency = orders.group_by("customer_id").aggregate(
        frequency_all=orders.count(),
        **{f"frequency_{w}": orders.count(where=orders._age <= w) for w in WINDOWS},
    )
    agg = ev.group_by("customer_id").aggregate(**metrics)
    agg = agg.left_join(frequency, "customer_id").drop("customer_id_right")

    offers = warehouse.table("offers")
    bought = ev.filter(purchase & within(365))
    disc = (
        bought.join(offers, bought.offer_id == offers.offer_id)
        .group_by("customer_id")
        .aggregate(discount_sensitivity=offers.discount.mean())
    )
    out = customers.select("customer_id", "signup_ts").left_join(agg, "customer_id")
    out = out.drop("customer_id_right").left_join(disc, "customer_id").drop("customer_id_right")
    out = out.left_join(_top_share(warehouse, bought, "category"), "customer_id").drop(
        "customer_id_right"
    )
    out = out.left_join(_top_share(warehouse, bought, "brand"), "customer_id").drop(
        "customer_id_right"
    )
    zero = ibis.literal(0)
    cols: dict[str, ir.Value] = {
        "customer_id": out.customer_id,
        "tenure_days": (cut_s - out.signup_ts.epoch_seconds()) / _DAY,
        "recency_days": out.last_purchase_age,
    }
    for w in WINDOWS:
        cols[f"frequency_{w}"] = out[f"frequency_{w}"].fill_null(zero)
        cols[f"monetary_{w}"] = out[f"monetary_{w}"].fill_null(zero)
    cols["frequency_all"] = out.frequency_all.fill_null(zero)
    cols["monetary_all"] = out.monetary_all.fill_null(zero)
    cols["aov"] = _ratio(out.monetary_all, out.frequency_all)
    for w in WINDOWS[:2]:
        sent = out[f"_sent_{w}"].fill_null(zero)
        cols[f"emails_sent_{w}"] = sent
        cols[f"open_rate_{w}"] = _ratio(out[f"_opens_{w}"], sent)
        cols[f"click_rate_{w}"] = _ratio(out[f"_clicks_{w}"], sent)
        cols[f"click_to_open_{w}"] = _ratio(out[f"_clicks_{w}"], out[f"_opens_{w}"])
    for w in WINDOWS:
        cols[f"visits_{w}"] = out[f"visits_{w}"].fill_null(zero)
    for ch in _CHANNELS:
        cols[f"share_{ch}"] = _ratio(out[f"acts_{ch}"], out.acts_365)
    cols["cart_abandonment"] = ibis.cases(
        (
            out.carts_365 > 0,
            ibis.greatest(out.carts_365 - out.lines_365, 0).cast("float64") / out.carts_365,
        ),
        else_=ibis.null("float64"),
    )
    cols["returns_365"] = out.returns_365.fill_null(zero)
    cols["return_rate"] = _ratio(out.returns_365, out.lines_365)
    cols["discount_sensitivity"] = out.discount_sensitivity
    cols["referrals_made"] = out.referrals_made.fill_null(zero)
    cols["days_since_contact"] = out.last_contact_age
    for level in ("category", "brand"):
        cols[f"top_{level}"] = out[f"top_{level}"]
        cols[f"top_{level}_share"] = out[f"top_{level}_share"]
    out = out.select(**cols)
    return out.order_by("customer_id") if ordered else out


def _top_share(warehouse: Warehouse, bought: ir.Table, level: str) -> ir.Table:
    """Each customer's most bought category (or brand) and its share of purchase lines.

    The full shares, one per value, are :func:`nextbest.features.shares.preference_shares`.
    """
    lines = purchase_lines(warehouse, bought, level)
    counts = lines.group_by(["customer_id", "value"]).aggregate(n=lines.count())
    ranked = counts.mutate(
        total=counts.n.sum().over(group_by="customer_id"),
        rank=ibis.row_number().over(
            group_by="customer_id", order_by=[ibis.desc("n"), ibis.asc("value")]
        ),
    )
    top = ranked.filter(ranked["rank"] == 0)
    return top.select(
        "customer_id",
        **{f"top_{level}": top.value, f"top_{level}_share": top.n.cast("float64") / top.total},
    )


def training_set(
    warehouse: Warehouse, as_of: datetime, horizons: tuple[int, int] = (14, 90)
) -> ir.Table:
    """Features as of ``as_of`` with labels from the days after it (for supervised models)."""
    features = customer_features(warehouse, as_of)
    ev = warehouse.table("events")
    start = ibis.literal(as_of, type="timestamp('UTC')")
    short, long = horizons
    future = ev.filter(
        ev.type == "purchase",
        ev.ts >= start,
        ev.ts < ibis.literal(as_of + timedelta(days=long), type="timestamp('UTC')"),
    )
    soon = ibis.literal(as_of + timedelta(days=short), type="timestamp('UTC')")
    labels = future.group_by("customer_id").aggregate(
        _soon=future.count(where=future.ts < soon), _any=future.count()
    )
    out = features.left_join(labels, "customer_id").drop("customer_id_right")
    return out.mutate(
        **{
            f"purchase_next_{short}d": out._soon.fill_null(0) > 0,
            f"no_purchase_next_{long}d": out._any.fill_null(0) == 0,
        }
    ).drop("_soon", "_any")
