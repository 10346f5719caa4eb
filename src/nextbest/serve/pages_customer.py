"""The customer lookup page, and the workspace look-ups the engine pages share.

:func:`customer_page` (registered by :mod:`.pages_engine`, last): the customer's 360 profile
(from the service's snapshot when served, else the warehouse's customer 360 features), her
history (events and decisions over time) and her current next best action with its
explanation (:func:`nextbest.decide.explain` for the latest decided day of the campaign).

The shared look-ups: the workspace around the page's read-only warehouse
(:func:`workspace_of`), the campaign files (:func:`campaign_spec`), the decision summaries the
batch wrote (:func:`summary_files`) and the figure layout (:func:`layout`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
import plotly.graph_objects as go

from nextbest.data.workspace import Workspace
from nextbest.decide import CampaignFile, Explanation, explain, load_campaign
from nextbest.errors import ConfigError, DataError
from nextbest.features import customer_features, rfm
from nextbest.serve.dashboard import Block, Chart, Metrics, Note, PageContext, Table

__all__ = [
    "SummaryFile",
    "campaign_spec",
    "customer_page",
    "figure",
    "layout",
    "num",
    "pct",
    "read_summary",
    "summary_files",
    "workspace_of",
]

_SUMMARY = re.compile(r"^summary-(.+)-(\d{4}-\d{2}-\d{2})\.json$")
_MAX_EVENTS = 2_000  # points of the history timeline
_CART_DAYS = 7


def layout(fig: go.Figure, x: str, y: str, **more: Any) -> go.Figure:
    """The dashboard's figure layout: no figure title (the block has one), axis titles."""
    fig.update_layout(margin=dict(t=30), xaxis_title=x, yaxis_title=y, **more)
    return fig


def figure(traces: list[Any], x: str, y: str, **more: Any) -> go.Figure:
    """A figure of ``traces`` with the dashboard's layout."""
    return layout(go.Figure(traces), x, y, **more)


def num(value: Any, digits: int = 4) -> str:
    """A number for a tile: ``digits`` significant digits, ``-`` when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}g}" if isinstance(value, float) else str(value)


def pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def workspace_of(ctx: PageContext) -> Workspace:
    """The workspace at ``ctx.root`` around the page's read-only warehouse (not to be closed:
    the page's connection is closed by the dashboard)."""
    ws = Workspace.open(ctx.root)
    ws.__dict__["warehouse"] = ctx.warehouse  # the cached property, already open read-only
    return ws


@dataclass(frozen=True)
class SummaryFile:
    """A decision summary ``nextbest decide`` kept: ``decisions/summary-<campaign>-<day>.json``."""

    campaign: str
    day: date
    path: Path


def summary_files(root: Path, campaign: str | None = None) -> list[SummaryFile]:
    """The decision summaries of the workspace (of ``campaign``), oldest day first."""
    found = []
    for path in (root / "decisions").glob("summary-*.json"):
        m = _SUMMARY.match(path.name)
        if not m or (campaign is not None and m.group(1) != campaign):
            continue
        try:
            day = date.fromisoformat(m.group(2))
        except ValueError:  # not a file 'nextbest decide' wrote
            continue
        found.append((day, path.stat().st_mtime, m.group(1), path))
    return [SummaryFile(name, day, path) for day, _, name, path in sorted(found)]


def read_summary(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a decision summary ({type(exc).__name__}); run 'nextbest decide' again"
        ) from None
    if not isinstance(body, dict) or "offers" not in body:
        raise DataError(f"{path}: expected a decision summary with offers; decide again")
    return body


def _campaign_paths(root: Path) -> list[Path]:
    own = root / "campaign.toml"
    return ([own] if own.exists() else []) + sorted((root / "campaigns").glob("*.toml"))


def campaign_spec(root: Path, name: str | None) -> CampaignFile | None:
    """The campaign file: ``WORKSPACE/campaign.toml`` when no name is given; else
    ``campaigns/<name>.toml``, or the campaign file whose campaign has that name."""
    if name is None:
        own = root / "campaign.toml"
        return load_campaign(own) if own.exists() else None
    named = root / "campaigns" / f"{name}.toml"
    if named.exists():
        return load_campaign(named)
    for path in _campaign_paths(root):
        try:
            spec = load_campaign(path)
        except ConfigError:  # another file's mistake is not this page's
            continue
        if spec.campaign.name == name:
            return spec
    return None


def _examples(ctx: PageContext, k: int = 5) -> list[str]:
    """A few customers worth looking up: those with the most events."""
    ev = ctx.warehouse.table("events")
    ev = ev.filter(ev.customer_id.notnull())
    top = ev.group_by("customer_id").aggregate(n=ev.count())
    top = top.order_by([ibis.desc("n"), "customer_id"]).limit(k).to_pandas()
    return [str(c) for c in top.customer_id]


def _as_of(ctx: PageContext) -> datetime:
    """The day after the last event: the warehouse's customer 360 as of now."""
    last = ctx.warehouse.table("events").ts.max().execute()
    if last is None or pd.isna(last):
        return datetime.now(UTC)
    day = pd.Timestamp(last).floor("D").to_pydatetime()
    return (day if day.tzinfo else day.replace(tzinfo=UTC)) + timedelta(days=1)


@dataclass
class _View:
    """What the page knows of a customer, and from where."""

    source: str
    profile: dict[str, Any]
    consent: dict[str, bool | None]
    cart: list[str]


def _from_snapshot(ctx: PageContext, customer_id: str) -> _View | None:
    """The service's view of the customer (as ``GET /v1/customers`` gives it), if it has one."""
    if ctx.service is None:
        return None
    try:
        snap = ctx.service.current().snapshot
    except DataError:
        return None
    row = snap.row(customer_id)
    if row is None:
        return None
    cart = dict.fromkeys(snap.cart_of(row))
    for e in ctx.service.store.customer_events(customer_id, snap.as_of):
        if e.type == "add_to_cart" and e.product_id:
            cart[e.product_id] = None
        elif e.type == "purchase" and e.product_id:
            cart.pop(e.product_id, None)
    return _View(
        f"snapshot {snap.name} (as of {snap.as_of:%Y-%m-%d})",
        snap.profile(row),
        {ch: bool(snap.consent[ch][row]) for ch in snap.consent},
        list(cart),
    )


def _from_warehouse(ctx: PageContext, customer_id: str) -> _View:
    as_of = _as_of(ctx)
    wh = ctx.warehouse
    f = customer_features(wh, as_of)
    profile = f.filter(f.customer_id == customer_id).to_pandas()
    seg = rfm(wh, as_of)
    seg = seg.filter(seg.customer_id == customer_id).to_pandas()
    out: dict[str, Any] = {}
    if not profile.empty:
        out = {k: v for k, v in profile.iloc[0].items() if k != "customer_id"}
    if not seg.empty:
        out["segment"] = seg.segment.iloc[0]
        out["value_rank"] = int(seg.value_rank.iloc[0])
    cu = wh.table("customers")
    info = cu.filter(cu.customer_id == customer_id).to_pandas()
    consent: dict[str, bool | None] = {}
    if not info.empty:
        consent = {
            c.removeprefix("consent_"): bool(info[c].iloc[0]) if pd.notna(info[c].iloc[0]) else None
            for c in info.columns
            if c.startswith("consent_")
        }
    ev = wh.table("events")
    since = ibis.literal(as_of - timedelta(days=_CART_DAYS), type="timestamp('UTC')")
    ev = ev.filter(ev.customer_id == customer_id, ev.ts >= since, ev.product_id.notnull())
    moves = ev.filter(ev.type.isin(["add_to_cart", "purchase"])).order_by("ts").to_pandas()
    cart: dict[str, None] = {}
    for kind, product in zip(moves.type, moves.product_id, strict=True):
        if kind == "add_to_cart":
            cart[str(product)] = None
        else:
            cart.pop(str(product), None)
    return _View(f"the warehouse's customer 360 as of {as_of:%Y-%m-%d}", out, consent, list(cart))


def _profile_blocks(view: _View) -> list[Block]:
    p = view.profile
    consent = ", ".join(f"{ch} {'yes' if ok else 'no'}" for ch, ok in view.consent.items())
    tiles = {
        "Segment": (str(p.get("segment") or "-"), f"value rank {num(p.get('value_rank'))}"),
        "Lifetime value": (num(p.get("lifetime_value")), "52 weeks, BG/NBD x Gamma-Gamma"),
        "Churn risk": (num(p.get("churn_risk"), 3), "1 - P(alive)"),
        "Purchases (365 days)": (
            num(p.get("frequency_365")),
            f"spent {num(p.get('monetary_365'))}",
        ),
        "Days since purchase": (num(p.get("recency_days"), 3), None),
        "Open cart": (str(len(view.cart)), ", ".join(view.cart[:5]) or None),
        "Consent": (consent or "-", None),
    }
    rows = [[k, num(v)] for k, v in p.items()]
    return [
        Metrics(tiles, title="Profile"),
        Table("The 360 profile", ["field", "value"], rows, note=f"From {view.source}."),
    ]


def _timeline(ctx: PageContext, customer_id: str) -> Block:
    ev = ctx.warehouse.table("events")
    ev = ev.filter(ev.customer_id == customer_id)
    cols = ["ts", "type", "product_id", "offer_id", "channel", "amount"]
    events = ev.select(*cols).order_by(ibis.desc("ts")).limit(_MAX_EVENTS).to_pandas()
    dec = ctx.warehouse.table("decisions")
    dec = dec.filter(dec.customer_id == customer_id)
    decided = dec.select("ts", "offer_id", "channel", "policy", "arm")
    decided = decided.order_by(ibis.desc("ts")).limit(_MAX_EVENTS // 2).to_pandas()
    if events.empty and decided.empty:
        return Note(f"{customer_id} has no events and no decisions in the warehouse yet.")
    fig = go.Figure()
    for kind, rows in events.groupby("type", sort=True):
        text = [
            " ".join(str(x) for x in (r.product_id, r.offer_id, r.channel, r.amount) if pd.notna(x))
            for r in rows.itertuples()
        ]
        fig.add_trace(
            go.Scatter(
                x=rows.ts,
                y=rows.type,
                mode="markers",
                name=str(kind),
                text=text,
                hovertemplate="%{x}<br>%{y}: %{text}<extra></extra>",
            )
        )
    if not decided.empty:
        text = [
            f"{r.offer_id if pd.notna(r.offer_id) else 'no offer'} ({r.channel}, {r.policy}"
            + (f", arm {r.arm}" if pd.notna(r.arm) else "")
            + ")"
            for r in decided.itertuples()
        ]
        fig.add_trace(
            go.Scatter(
                x=decided.ts,
                y=["decision"] * len(decided),
                mode="markers",
                name="decision",
                text=text,
                marker=dict(symbol="diamond"),
                hovertemplate="%{x}<br>decision: %{text}<extra></extra>",
            )
        )
    layout(fig, "time (UTC)", "event")
    return Chart(
        "History",
        fig,
        f"{len(events):,} events and {len(decided):,} decisions (at most the latest "
        f"{_MAX_EVENTS:,} and {_MAX_EVENTS // 2:,}).",
    )


def _default_campaign(root: Path) -> CampaignFile | None:
    """The campaign to explain: campaign.toml, else the first campaign file with decisions."""
    specs = []
    for path in _campaign_paths(root):
        try:
            specs.append(load_campaign(path))
        except ConfigError:
            continue
    for spec in specs:
        if summary_files(root, spec.campaign.name):
            return spec
    return specs[0] if specs else None


def _why(e: Any) -> str:
    text = "; ".join(e.reasons)
    if not text:
        keys = ("p_response", "p_buy", "gross", "cost", "lever")
        text = ", ".join(f"{k} {e.parts[k]:.4g}" for k in keys if k in e.parts)
    if e.binding:
        text += "; binding: " + ", ".join(
            f"{b.label or b.constraint} (shadow price {b.shadow_price:.4g})" for b in e.binding
        )
    return text


def explanation_rows(result: Explanation) -> tuple[list[list[Any]], list[list[Any]]]:
    """The chosen offers, and the others (not chosen, excluded), as table rows."""

    def row(e: Any) -> list[Any]:
        return [
            e.offer_id,
            e.brand,
            e.status,
            e.slot,
            e.value,
            e.shadow_cost,
            e.reduced_value,
            _why(e),
        ]

    chosen = [row(e) for e in result.offers if e.status == "chosen"]
    others = [row(e) for e in result.offers if e.status != "chosen"]
    return chosen, others


_EXPLAIN_COLUMNS = [
    "offer",
    "brand",
    "status",
    "slot",
    "value",
    "shadow cost",
    "reduced value",
    "explanation",
]


def _next_best_action(ctx: PageContext, customer_id: str) -> list[Block]:
    spec = (
        campaign_spec(ctx.root, ctx.filters.campaign)
        if ctx.filters.campaign
        else _default_campaign(ctx.root)
    )
    if spec is None:
        wanted = ctx.filters.campaign or "campaign.toml"
        return [
            Note(
                f"No campaign file for {wanted} (WORKSPACE/campaign.toml or campaigns/NAME.toml):"
                " the next best action is explained for a campaign decided by 'nextbest decide'."
            )
        ]
    name = spec.campaign.name
    days = [s.day for s in summary_files(ctx.root, name)]
    if not days:
        return [Note(f"Campaign {name} has no decisions yet: run 'nextbest decide' first.")]
    day = ctx.filters.day if ctx.filters.day in days else days[-1]
    try:
        result = explain(
            workspace_of(ctx), spec, customer_id, datetime(day.year, day.month, day.day, tzinfo=UTC)
        )
    except (DataError, ConfigError) as exc:
        return [Note(f"The explanation of {name} on {day} failed: {exc}", "warning")]
    chosen, others = explanation_rows(result)
    held = " She is in the holdout (the control): nothing was sent." if result.held_out else ""
    head = f"Campaign {name} on {day}, its latest decided day" if day == days[-1] else ""
    head = head or f"Campaign {name} on {day}"
    blocks: list[Block] = [
        Table(
            "Next best action",
            _EXPLAIN_COLUMNS,
            chosen,
            note=f"{head}: the offers chosen, in slot order, with the parts of their value.{held}",
        )
    ]
    if not chosen:
        blocks.append(Note(f"No offer of {name} was chosen for {customer_id} on {day}.{held}"))
    blocks.append(
        Table(
            "Why not the others",
            _EXPLAIN_COLUMNS,
            others,
            note="Eligible offers not chosen (their reduced value against the lowest chosen) and "
            "offers excluded (every rule that excluded them).",
        )
    )
    return blocks


def customer_page(ctx: PageContext) -> list[Block]:
    """Customer lookup: the 360 profile, the history and the next best action explained."""
    customer_id = ctx.filters.customer
    if not customer_id:
        examples = ", ".join(_examples(ctx)) or "none yet: load customers and events"
        return [Note(f"Give a customer id to look up (the field above), e.g. {examples}.")]
    cu = ctx.warehouse.table("customers")
    known = int(cu.filter(cu.customer_id == customer_id).count().execute())
    if not known:
        examples = ", ".join(_examples(ctx)) or "none"
        return [Note(f"No customer {customer_id!r} in the warehouse; e.g. {examples}.", "warning")]
    view = _from_snapshot(ctx, customer_id) or _from_warehouse(ctx, customer_id)
    return [
        *_profile_blocks(view),
        _timeline(ctx, customer_id),
        *_next_best_action(ctx, customer_id),
    ]
