"""Dashboard pages on what the warehouse says: overview, funnels, segments, basket.

Each page is a thin front end over the core: the overview over
:func:`nextbest.measure.kpi.daily_kpis` and :func:`~nextbest.measure.kpi.period_kpis`, the
funnels over :func:`nextbest.measure.funnel` and
:func:`~nextbest.measure.funnels.funnel_by_segment`, the segments over
:func:`nextbest.features.rfm`, :func:`~nextbest.features.rfm_migration` and
:func:`~nextbest.measure.funnels.segment_profiles`, the basket over
:func:`~nextbest.measure.funnels.period_baskets` and :mod:`nextbest.models.basket`.

Unless the filters say otherwise, a page shows the last 28 days of data (``to`` is the day
after the last event); the segments page reads ``to`` as its as-of date and ``from`` as the
"before" date of the migration.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from math import cos, pi, sin
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import plotly.graph_objects as go

from nextbest.features import SEGMENTS, rfm, rfm_migration
from nextbest.measure import FUNNELS, funnel
from nextbest.measure.funnels import (
    FunnelStep,
    funnel_by_segment,
    period_baskets,
    segment_profiles,
)
from nextbest.measure.kpi import PeriodKpis, daily_kpis, period_kpis
from nextbest.models import BasketMatrix, association_rules, cross_sell_lift, frequent_itemsets
from nextbest.serve.dashboard import Block, Chart, Metrics, Note, PageContext, Table, page

__all__ = ["basket", "funnels", "overview", "segments"]

DEFAULT_DAYS = 28
RULES_SHOWN = 20
MIN_SUPPORT = 0.01  # and at least 2 baskets
MIN_CONFIDENCE = 0.1

# Basket definitions the basket page tries in turn: the first with a rule of lift >= 1 is shown.
BASKET_CHOICES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("order", ("purchase",), "an order (its basket id, else a member's purchases of one day)"),
    ("member", ("purchase",), "the categories one member bought in the period"),
    ("member", ("view",), "the categories one member viewed in the period"),
)

_FUNNEL_TITLES = {"email": "E-mail funnel", "site": "Site funnel"}


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _day(d: datetime) -> str:
    return d.date().isoformat()


def _last_day(end: datetime) -> str:
    return (end - timedelta(days=1)).date().isoformat()


def _period(ctx: PageContext) -> tuple[datetime, datetime] | Note:
    """The page's period ``[start, end)``: the filters, else the last 28 days of data."""
    f = ctx.filters
    if f.start is not None and f.end is not None:
        start, end = _utc(f.start), _utc(f.end)
    elif f.end is not None:
        end = _utc(f.end)
        start = end - timedelta(days=DEFAULT_DAYS)
    elif f.start is not None:
        start = _utc(f.start)
        end = start + timedelta(days=DEFAULT_DAYS)
    else:
        last = ctx.warehouse.table("events").ts.max().to_pyarrow().as_py()
        if last is None:
            return Note("The warehouse has no events yet: load some with 'nextbest ingest'.")
        end = _utc(last.date()) + timedelta(days=1)
        start = end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        return Note(
            f"From ({_day(start)}) must be before To ({_day(end)}, exclusive): "
            "choose a later To or an earlier From.",
            "warning",
        )
    return start, end


def _scores(ctx: PageContext, as_of: datetime) -> ir.Table:
    """``rfm`` as of a date, computed once for the page (a page uses it several times)."""
    return ibis.memtable(rfm(ctx.warehouse, as_of).to_pyarrow())


def _segment_check(segment: str | None) -> Note | None:
    if segment is not None and segment not in SEGMENTS:
        return Note(f"segment: expected one of {', '.join(SEGMENTS)}, got {segment!r}.", "warning")
    return None


def _layout(fig: go.Figure, x: str, y: str, **extra: Any) -> go.Figure:
    fig.update_layout(
        margin=dict(t=30),
        xaxis_title=x,
        yaxis_title=y,
        legend=dict(orientation="h", x=0, y=1, yanchor="bottom"),
        **extra,
    )
    return fig


def _days_axis(fig: go.Figure, days: int) -> go.Figure:
    """A date axis with a tick every day (every few days over long periods), no hours."""
    step = 86_400_000 * max(1, -(-days // 14))
    fig.update_xaxes(type="date", tickformat="%d %b", hoverformat="%a %d %b %Y", dtick=step)
    return fig


# Overview -------------------------------------------------------------------------------------

_TILES: tuple[tuple[str, str, str], ...] = (
    # label, PeriodKpis attribute, kind (money, rate or count)
    ("Revenue", "revenue", "money"),
    ("Margin", "margin", "money"),
    ("Conversion", "conversion", "rate"),
    ("Open rate", "open_rate", "rate"),
    ("Click rate", "click_rate", "rate"),
    ("Unsubscribe rate", "unsubscribe_rate", "rate"),
    ("Active members", "active_members", "count"),
)


def _value(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "rate":
        return f"{value:.2%}"
    return f"{int(value):,}"


def _trend(now: float | None, before: float | None, kind: str, days: int) -> str:
    against = f"vs previous {days} days"
    if now is None or before is None:
        return f"{against}: n/a"
    if kind == "rate":
        return f"{(now - before) * 100:+.2f} pp {against}"
    if before == 0:
        return f"{against}: none before"
    return f"{(now - before) / abs(before):+.1%} {against}"


def _overview_tiles(now: PeriodKpis, before: PeriodKpis) -> Metrics:
    """KPI tiles of a period, each with its change against the period before."""
    days = (now.end - now.start).days
    return Metrics(
        {
            label: (
                _value(getattr(now, attr), kind),
                _trend(getattr(now, attr), getattr(before, attr), kind, days),
            )
            for label, attr, kind in _TILES
        }
    )


@page("overview", "Overview", filters=("dates", "segment", "channel"))
def overview(ctx: PageContext) -> list[Block]:
    span = _period(ctx)
    if isinstance(span, Note):
        return [span]
    bad = _segment_check(ctx.filters.segment)
    if bad is not None:
        return [bad]
    start, end = span
    segment, channel = ctx.filters.segment, ctx.filters.channel
    length = end - start
    scores = _scores(ctx, start) if segment else None
    now = period_kpis(ctx.warehouse, start, end, segment, channel, scores=scores)
    before = period_kpis(ctx.warehouse, start - length, start, segment, channel)
    daily = daily_kpis(ctx.warehouse, start, end, segment, channel, scores=scores).to_pandas()
    scope = [f"{_day(start)} to {_last_day(end)} ({length.days} days)"]
    if segment:
        scope.append(
            f"members in RFM segment {segment!r} as of {_day(start)} (for the period before: "
            "as of its own start)"
        )
    if channel:
        scope.append(f"events of channel {channel!r}")
    blocks: list[Block] = [
        Note(
            "; ".join(scope) + f". Trends compare with the {length.days} days before "
            f"({_day(start - length)} to {_last_day(start)}). Revenue is purchases minus "
            "returns; margin counts purchase lines with a product cost; conversion is orders "
            "per site visit; e-mail rates are per e-mail sent."
        ),
        _overview_tiles(now, before),
    ]
    if channel and not (now.orders or now.visits or now.emails_sent):
        ev = ctx.warehouse.table("events")
        known = sorted(c for c in ev.select("channel").distinct().to_pandas()["channel"].dropna())
        blocks.append(
            Note(f"No events of channel {channel!r} in the period; channels: {', '.join(known)}.")
        )
    days = pd.to_datetime(daily["day"]).dt.strftime("%Y-%m-%d").tolist()
    money = go.Figure(
        [
            go.Scatter(x=days, y=daily["revenue"].tolist(), name="revenue", mode="lines+markers"),
            go.Scatter(x=days, y=daily["margin"].tolist(), name="margin", mode="lines+markers"),
        ]
    )
    blocks.append(
        Chart("Revenue and margin per day", _days_axis(_layout(money, "day", "amount"), len(days)))
    )
    members = go.Figure(
        [
            go.Bar(x=days, y=daily["active_members"].tolist(), name="active members"),
            go.Scatter(
                x=days,
                y=daily["conversion"].tolist(),
                name="conversion",
                yaxis="y2",
                mode="lines+markers",
            ),
        ]
    )
    _layout(
        members,
        "day",
        "members with a purchase",
        yaxis2=dict(title="orders per visit", overlaying="y", side="right", tickformat=".1%"),
    )
    blocks.append(Chart("Active members and conversion per day", _days_axis(members, len(days))))
    rates = go.Figure(
        [
            go.Scatter(x=days, y=daily["open_rate"].tolist(), name="open rate"),
            go.Scatter(x=days, y=daily["click_rate"].tolist(), name="click rate"),
            go.Scatter(
                x=days, y=daily["unsubscribe_rate"].tolist(), name="unsubscribe rate", yaxis="y2"
            ),
        ]
    )
    _layout(
        rates,
        "day",
        "per e-mail sent",
        yaxis=dict(tickformat=".1%"),
        yaxis2=dict(
            title="unsubscribes per e-mail", overlaying="y", side="right", tickformat=".2%"
        ),
    )
    blocks.append(
        Chart(
            "E-mail rates per day",
            _days_axis(rates, len(days)),
            "Days without e-mails have no rates.",
        )
    )
    return blocks


# Funnels --------------------------------------------------------------------------------------


def _funnel_figure(steps: list[FunnelStep]) -> go.Figure:
    """A funnel chart: member-days reaching each step, the drop-off from the step before."""
    text = [
        f"{s.count:,}" + ("" if s.drop_off is None else f" (drop-off {s.drop_off:.1%})")
        for s in steps
    ]
    fig = go.Figure(
        go.Funnel(
            y=[s.step for s in steps],
            x=[s.count for s in steps],
            text=text,
            textinfo="text",
            customdata=[s.share_of_start for s in steps],
            hovertemplate="%{y}: %{x:,} member-days, %{customdata:.1%} of the first step"
            "<extra></extra>",
        )
    )
    return _layout(fig, "member-days", "step")


@page("funnels", "Funnels", filters=("dates", "segment"))
def funnels(ctx: PageContext) -> list[Block]:
    span = _period(ctx)
    if isinstance(span, Note):
        return [span]
    bad = _segment_check(ctx.filters.segment)
    if bad is not None:
        return [bad]
    start, end = span
    segment = ctx.filters.segment
    scores = _scores(ctx, start)
    by_segment = {
        name: funnel_by_segment(ctx.warehouse, name, start, end, scores=scores) for name in FUNNELS
    }
    who = f"members in RFM segment {segment!r} as of {_day(start)}" if segment else "all members"
    blocks: list[Block] = [
        Note(
            f"{_day(start)} to {_last_day(end)}, {who}. Strict funnels in member-days: a "
            "member-day reaches a step if it has the step's event and reached every step "
            "before; the drop-off is the share lost since the step before. Segments are the "
            f"members' RFM segments as of {_day(start)}."
        )
    ]
    for name in FUNNELS:
        if segment is None:
            steps = funnel(ctx.warehouse, name, start, end)
        elif segment in by_segment[name]:
            steps = by_segment[name][segment]
        else:
            blocks.append(Note(f"{_FUNNEL_TITLES[name]}: no member-day of {segment!r} here."))
            continue
        blocks.append(Chart(_FUNNEL_TITLES[name], _funnel_figure(steps)))
    for name in FUNNELS:
        groups = by_segment[name]
        if not groups:
            continue
        first = FUNNELS[name][0][0]
        fig = go.Figure(
            [
                go.Bar(
                    x=[s.step for s in steps],
                    y=[s.share_of_start for s in steps],
                    name=f"{seg} ({steps[0].count:,})",
                )
                for seg, steps in groups.items()
            ]
        )
        _layout(fig, "step", f"share of '{first}' member-days", barmode="group")
        fig.update_yaxes(tickformat=".0%")
        blocks.append(
            Chart(
                f"{_FUNNEL_TITLES[name]} by segment",
                fig,
                "The share of each segment's first-step member-days that reach each step "
                "(member-days at the first step in brackets).",
            )
        )
    return blocks


# Segments -------------------------------------------------------------------------------------


@page("segments", "Segments", filters=("dates",))
def segments(ctx: PageContext) -> list[Block]:
    span = _period(ctx)
    if isinstance(span, Note):
        return [span]
    before, as_of = span
    scores = _scores(ctx, as_of)
    buyers = scores.filter(scores.r.notnull())
    grid = (
        buyers.group_by(["r", "f"])
        .aggregate(customers=buyers.count(), monetary=buyers.monetary.mean())
        .to_pandas()
    )
    blocks: list[Block] = [
        Note(
            f"RFM as of {_day(as_of)} (the To date, exclusive: purchases up to "
            f"{_last_day(as_of)}), over the 365 days before; scores are quintiles among the "
            f"buyers. Migration from {_day(before)} (the From date) to {_day(as_of)}."
        )
    ]
    if grid.empty:
        blocks.append(Note(f"No member bought in the 365 days before {_day(as_of)}."))
    else:
        counts = grid.pivot(index="r", columns="f", values="customers").reindex(
            index=range(1, 6), columns=range(1, 6)
        )
        money = grid.pivot(index="r", columns="f", values="monetary").reindex(
            index=range(1, 6), columns=range(1, 6)
        )
        heat = go.Figure(
            go.Heatmap(
                z=counts.fillna(0).astype(int).values.tolist(),
                x=[f"F{f}" for f in counts.columns],
                y=[f"R{r}" for r in counts.index],
                customdata=money.round(2).values.tolist(),
                texttemplate="%{z:,}",
                colorscale="Blues",
                colorbar=dict(title="customers"),
                hovertemplate="%{y} %{x}: %{z:,} customers, average monetary %{customdata:,.2f}"
                "<extra></extra>",
            )
        )
        blocks.append(
            Chart(
                "RFM grid: customers by recency and frequency score",
                _layout(heat, "frequency score", "recency score"),
                f"{int(grid.customers.sum()):,} buyers; hover for the average 365-day spend.",
            )
        )
    profiles = segment_profiles(ctx.warehouse, as_of, scores=scores).to_pandas()
    blocks.append(
        Table(
            "Segment profiles",
            [
                "segment",
                "customers",
                "share",
                "avg recency (days)",
                "avg frequency",
                "avg monetary",
                "revenue share",
            ],
            [
                [
                    p.segment,
                    int(p.customers),
                    f"{p.share:.1%}",
                    None if pd.isna(p.recency_days) else float(p.recency_days),
                    float(p.frequency),
                    float(p.monetary),
                    "n/a" if pd.isna(p.revenue_share) else f"{p.revenue_share:.1%}",
                ]
                for p in profiles.itertuples()
            ],
            "Averages over the segment's customers (365 days before the as-of date); revenue "
            "share is the segment's share of the 365-day purchase amounts.",
        )
    )
    bars = go.Figure(
        [
            go.Bar(x=profiles.segment.tolist(), y=profiles.share.tolist(), name="customers"),
            go.Bar(
                x=profiles.segment.tolist(),
                y=profiles.revenue_share.fillna(0).tolist(),
                name="revenue (365 days)",
            ),
        ]
    )
    _layout(bars, "segment", "share", barmode="group")
    bars.update_yaxes(tickformat=".0%")
    blocks.append(Chart("Segments: share of customers and of revenue", bars))
    moves = rfm_migration(ctx.warehouse, before, as_of).to_pandas()
    if moves.empty:
        blocks.append(Note(f"No customer was a member on both {_day(before)} and {_day(as_of)}."))
        return blocks
    present = [s for s in SEGMENTS if s in set(moves.from_segment) | set(moves.to_segment)]
    matrix = (
        moves.pivot(index="from_segment", columns="to_segment", values="customers")
        .reindex(index=[s for s in present if s in set(moves.from_segment)], columns=present)
        .fillna(0)
        .astype(int)
    )
    row_share = matrix.div(matrix.sum(axis=1), axis=0)
    heat = go.Figure(
        go.Heatmap(
            z=row_share.round(4).values.tolist(),
            x=list(matrix.columns),
            y=list(matrix.index),
            text=matrix.values.tolist(),
            texttemplate="%{text:,}",
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar=dict(title="share of row", tickformat=".0%"),
            hovertemplate="%{y} -> %{x}: %{text:,} customers (%{z:.1%} of %{y})<extra></extra>",
        )
    )
    _layout(heat, f"segment on {_day(as_of)}", f"segment on {_day(before)}")
    heat.update_yaxes(autorange="reversed")
    blocks.append(
        Chart(
            "Segment migration",
            heat,
            f"{int(matrix.values.sum()):,} customers who were members at both dates: the "
            "count in each cell, coloured by the share of the row (the segment before).",
        )
    )
    return blocks


# Basket ---------------------------------------------------------------------------------------


def _basket_rules(
    baskets: BasketMatrix, min_support: float = MIN_SUPPORT, min_confidence: float = MIN_CONFIDENCE
) -> pd.DataFrame:
    """Pair rules (A -> B) of support >= max(min_support, 2 baskets) and lift >= 1, by lift."""
    if baskets.n_baskets == 0:
        return association_rules(pd.DataFrame({"support": [], "itemsets": []}))
    support = max(min_support, 2 / baskets.n_baskets)
    itemsets = frequent_itemsets(baskets, min(support, 1.0), max_len=2)
    return association_rules(itemsets, min_confidence, min_lift=1.0)


def _one(items: frozenset[Any]) -> str:
    return " & ".join(sorted(map(str, items)))


def _network_figure(rules: pd.DataFrame, support: dict[str, float]) -> go.Figure:
    """Items on a circle, one edge per rule pair, its width growing with the lift."""
    nodes = sorted({_one(a) for a in rules.antecedents} | {_one(c) for c in rules.consequents})
    at = {
        n: (cos(2 * pi * i / len(nodes)), sin(2 * pi * i / len(nodes))) for i, n in enumerate(nodes)
    }
    top = float(rules.lift.max())
    low = float(rules.lift.min())
    data: list[go.Scatter] = []
    seen: set[frozenset[str]] = set()
    for r in rules.itertuples():
        a, c = _one(r.antecedents), _one(r.consequents)
        if frozenset((a, c)) in seen:
            continue
        seen.add(frozenset((a, c)))
        width = 1.5 + 8 * ((r.lift - low) / (top - low) if top > low else 1.0)
        data.append(
            go.Scatter(
                x=[at[a][0], at[c][0]],
                y=[at[a][1], at[c][1]],
                mode="lines",
                line=dict(width=width, color="#6b8fd6"),
                hoverinfo="text",
                text=f"{a} - {c}: lift {r.lift:.2f}, support {r.support:.1%}",
                showlegend=False,
            )
        )
    data.append(
        go.Scatter(
            x=[at[n][0] for n in nodes],
            y=[at[n][1] for n in nodes],
            mode="markers+text",
            text=nodes,
            textposition="top center",
            marker=dict(
                size=[10 + 60 * support.get(n, 0.0) for n in nodes],
                color="#1d2433",
            ),
            hovertext=[f"{n}: in {support.get(n, 0.0):.1%} of baskets" for n in nodes],
            hoverinfo="text",
            showlegend=False,
        )
    )
    fig = go.Figure(data)
    _layout(fig, "", "")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return fig


@page("basket", "Basket", filters=("dates",))
def basket(ctx: PageContext) -> list[Block]:
    span = _period(ctx)
    if isinstance(span, Note):
        return [span]
    start, end = span
    tried: list[str] = []
    for per, events, meaning in BASKET_CHOICES:
        baskets = period_baskets(
            ctx.warehouse, start, end, level="category", per=per, events=events
        )
        rules = _basket_rules(baskets)
        if not rules.empty:
            break
        tried.append(meaning)
    else:
        return [
            Note(
                f"No pair of categories goes together (support >= {MIN_SUPPORT:.0%} and 2 "
                f"baskets, lift >= 1) in {_day(start)} to {_last_day(end)}, whatever a basket "
                "is: choose a longer period."
            )
        ]
    n = baskets.n_baskets
    why = (
        f" Tried first, with no rule at these thresholds (too few baskets holding two "
        f"categories): {'; '.join(tried)}."
        if tried
        else ""
    )
    blocks: list[Block] = [
        Note(
            f"{_day(start)} to {_last_day(end)}, at category level. A basket here is {meaning}: "
            f"{n:,} baskets.{why} Rules A -> B between two categories with support >= "
            f"{max(MIN_SUPPORT, 2 / n):.1%} of baskets (and 2 baskets), confidence >= "
            f"{MIN_CONFIDENCE:.0%} and lift = support(A and B) / (support(A) x support(B)) >= 1."
        )
    ]
    shown = rules.head(RULES_SHOWN)
    blocks.append(
        Table(
            f"Top rules by lift ({len(shown)} of {len(rules)})",
            ["antecedents", "consequents", "support", "confidence", "lift"],
            [
                [
                    _one(r.antecedents),
                    _one(r.consequents),
                    float(r.support),
                    float(r.confidence),
                    float(r.lift),
                ]
                for r in shown.itertuples()
            ],
        )
    )
    item_support = dict(
        zip(
            map(str, baskets.items),
            (baskets.matrix.getnnz(axis=0) / n).tolist(),
            strict=True,
        )
    )
    blocks.append(
        Chart(
            "Rule network",
            _network_figure(shown, item_support),
            "Categories (size: share of baskets) joined by the rules above; wider is a higher "
            "lift.",
        )
    )
    pairs = cross_sell_lift(baskets)
    pairs = pairs[pairs.baskets >= 2]
    if not pairs.empty:
        labels = sorted(set(map(str, pairs.a)) | set(map(str, pairs.b)))
        lift = (
            pairs.assign(a=pairs.a.astype(str), b=pairs.b.astype(str))
            .pivot(index="a", columns="b", values="lift")
            .reindex(index=labels, columns=labels)
        )
        heat = go.Figure(
            go.Heatmap(
                z=lift.round(3).values.tolist(),
                x=labels,
                y=labels,
                colorscale="RdBu",
                zmid=1.0,
                colorbar=dict(title="lift"),
                hovertemplate="%{y} with %{x}: lift %{z:.2f}<extra></extra>",
            )
        )
        _layout(heat, "also in the basket", "category")
        heat.update_yaxes(autorange="reversed")
        blocks.append(
            Chart(
                "Cross-sell lift between categories",
                heat,
                "P(B | A) / P(B) for every pair of categories together in at least 2 baskets: "
                "blue above 1 (together more often than chance), red below.",
            )
        )
    return blocks
