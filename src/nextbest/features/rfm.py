"""RFM scores, named segments, a value ranking and segment migration between two dates.

Scores are quintiles among the customers who bought in the 365 days before ``as_of``:
recency (days since the last purchase; more recent scores higher), frequency (orders over 365
days) and monetary value (purchase amounts over 365 days). A score is
``1 + floor(5 x percent_rank)`` (capped at 5), so tied customers always share a score and the
result does not depend on row order. The code is the three digits, e.g. ``"545"``.

Named segments, tested in this order (the first rule that holds names the customer):

============  ===========================  =======================================
segment       rule                         meaning
============  ===========================  =======================================
champions     R >= 4, F >= 4, M >= 4       bought recently, often, and spend most
cannot_lose   R <= 2, F >= 4, M >= 4       were among the best, have gone quiet
loyal         R >= 3, F >= 3               buy regularly
at_risk       R <= 2, F >= 3               bought regularly, not lately
new           R >= 4, F = 1                first orders, very recently
promising     R >= 3                       recent, not yet frequent
hibernating   R = 2                        infrequent, a while ago
lost          R = 1                        infrequent, long ago
============  ===========================  =======================================

Customers without a purchase in those 365 days are ``inactive`` (signed up before ``as_of``).
"""

from __future__ import annotations

from datetime import datetime

import ibis
import ibis.expr.types as ir

from nextbest.data.warehouse import Warehouse
from nextbest.features.customer360 import customer_features

__all__ = ["SEGMENTS", "rfm", "rfm_migration"]

SEGMENTS = (
    "champions",
    "cannot_lose",
    "loyal",
    "at_risk",
    "new",
    "promising",
    "hibernating",
    "lost",
    "inactive",
)


def _quintile(value: ir.NumericValue) -> ir.IntegerValue:
    rank = value.percent_rank()
    return ibis.least((rank * 5).floor().cast("int64") + 1, 5)


def rfm(warehouse: Warehouse, as_of: datetime) -> ir.Table:
    """Per customer: recency, frequency, monetary, R/F/M scores, code, segment, value rank."""
    f = customer_features(warehouse, as_of)
    base = f.select(
        "customer_id",
        recency_days=f.recency_days,
        frequency=f.frequency_365,
        monetary=f.monetary_365.round(2),  # cents: float sums differ in the last bits
    )
    buyers = base.filter(base.frequency > 0)
    scored = buyers.mutate(
        r=_quintile(-buyers.recency_days),
        f=_quintile(buyers.frequency),
        m=_quintile(buyers.monetary),
    )
    r, fr, m = scored.r, scored.f, scored.m
    segment = ibis.cases(
        ((r >= 4) & (fr >= 4) & (m >= 4), "champions"),
        ((r <= 2) & (fr >= 4) & (m >= 4), "cannot_lose"),
        ((r >= 3) & (fr >= 3), "loyal"),
        ((r <= 2) & (fr >= 3), "at_risk"),
        ((r >= 4) & (fr == 1), "new"),
        (r >= 3, "promising"),
        (r == 2, "hibernating"),
        else_="lost",
    )
    scored = scored.mutate(
        code=r.cast("string") + fr.cast("string") + m.cast("string"), segment=segment
    )
    rest = base.filter(base.frequency == 0).mutate(
        r=ibis.null("int64"),
        f=ibis.null("int64"),
        m=ibis.null("int64"),
        code=ibis.null("string"),
        segment=ibis.literal("inactive"),
    )
    both = scored.union(rest)
    return both.mutate(
        value_rank=ibis.dense_rank().over(order_by=[ibis.desc(both.monetary)]) + 1
    ).order_by(["value_rank", "customer_id"])


def rfm_migration(warehouse: Warehouse, before: datetime, after: datetime) -> ir.Table:
    """Transition counts between the segments at two dates (customers present at both)."""
    a = rfm(warehouse, before).select("customer_id", from_segment="segment")
    b = rfm(warehouse, after).select("customer_id", to_segment="segment")
    joined = a.join(b, "customer_id")
    return (
        joined.group_by(["from_segment", "to_segment"])
        .aggregate(customers=joined.count())
        .order_by(["from_segment", "to_segment"])
    )
