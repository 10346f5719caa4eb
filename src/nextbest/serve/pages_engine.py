"""Dashboard pages of the engine: models, decisions, experiments, the closed loop, customers.

Each page reads what the engine keeps (the model store, the decision summaries and log, the
experiments in the log and the campaign files, the closed-loop results) through the core
functions, and says what to run when something is missing. The customer lookup is in
:mod:`.pages_customer`; it is registered here, last.

- **Models**: metrics per kind and version, the main metric per version, the calibration of
  the latest propensity model, the Qini curves of the latest uplift model, the distribution of
  lifetime value.
- **Decisions**: for a campaign and day, the allocation per offer, the constraints' use and
  shadow prices, the exploration and novelty shares and the solver's gap.
- **Experiments**: per experiment of the decision log, every arm's rate or mean with its
  interval, the lift against control, the sample-ratio check; the campaign's ROI against its
  hypothesis.
- **Closed loop**: the latest ``nextbest loop`` result, true profit and conversions per day.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import ibis
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from nextbest.errors import ConfigError, DataError
from nextbest.features import experiment_frame, experiments
from nextbest.measure import (
    CampaignRoi,
    Estimate,
    ExperimentAnalysis,
    LoopDay,
    PolicyTotals,
    analyze_experiment,
    campaign_roi,
)
from nextbest.measure.loop import latest_loop_result
from nextbest.models import ModelStore, qini_curve
from nextbest.models.clv_summary import fit_clv
from nextbest.models.store import Manifest
from nextbest.serve.dashboard import Block, Chart, Metrics, Note, PageContext, Table, page
from nextbest.serve.pages_customer import (
    campaign_spec,
    customer_page,
    figure,
    num,
    pct,
    read_summary,
    summary_files,
)
from nextbest.serve.snapshot import Snapshot, current_snapshot

__all__ = ["decisions_page", "experiments_page", "loop_page", "models_page"]

log = logging.getLogger(__name__)

_MAIN_METRIC = ("auc", "ndcg", "recall", "mean_clv", "bgnbd_log_likelihood")
_MAX_EXPERIMENTS = 5
_CURVE_POINTS = 500
_MEMO: dict[tuple[Any, ...], Any] = {}  # held-out evaluations, by model version or data state


def _memo(key: tuple[Any, ...], make: Any) -> Any:
    if key not in _MEMO:
        if len(_MEMO) > 16:
            _MEMO.clear()
        _MEMO[key] = make()
    return _MEMO[key]


# --- models --------------------------------------------------------------------------------


def _main_metric(metrics: dict[str, float]) -> str | None:
    for name in _MAIN_METRIC:
        if name in metrics:
            return name
    qini = [k for k in metrics if k.endswith(": qini")]
    return qini[0] if qini else next(iter(metrics), None)


def _kind_blocks(kind: str, versions: list[Manifest]) -> list[Block]:
    names = list(dict.fromkeys(k for m in versions for k in m.metrics))
    rows = [[f"v{m.version}", m.created_at, *[m.metrics.get(k) for k in names]] for m in versions]
    blocks: list[Block] = [Table(f"{kind}: metrics per version", ["version", "made", *names], rows)]
    main = _main_metric(versions[-1].metrics)
    if main is not None:
        x, y = [f"v{m.version}" for m in versions], [m.metrics.get(main) for m in versions]
        fig = figure([go.Scatter(x=x, y=y, mode="lines+markers", name=main)], "version", main)
        blocks.append(Chart(f"{kind}: {main} per version", fig))
    return blocks


def _window(text: str) -> tuple[datetime, datetime]:
    """``YYYY-MM-DD..YYYY-MM-DD`` (last day included) as ``[start, end)``."""
    a, b = (datetime.fromisoformat(x).replace(tzinfo=UTC) for x in text.split(".."))
    return a, b + timedelta(days=1)


def _calibration_chart(store: ModelStore) -> Block:
    if "propensity" not in store.kinds():
        return Note("No propensity model yet: run 'nextbest train propensity'.")
    m = store.manifest("propensity")
    if not m.params.get("calibration_table"):  # every nextbest since the model store keeps it
        return Note(f"{m.name} keeps no calibration bins: retrain it ('nextbest train').")
    table = pd.DataFrame(m.params["calibration_table"])
    top = float(max(table.predicted.max(), table.observed.max()))
    rows = [f"{n:,} rows" for n in table.n]
    traces = [
        go.Scatter(
            x=table.predicted, y=table.observed, mode="lines+markers", name=m.name, text=rows
        ),
        go.Scatter(x=[0, top], y=[0, top], mode="lines", name="perfect", line=dict(dash="dot")),
    ]
    return Chart(
        f"Calibration of {m.name}",
        figure(traces, "predicted probability", "observed rate"),
        f"Held-out days {m.window.get('holdout', '?')}, {len(table)} bins of equal count; "
        f"calibration error {num(m.metrics.get('ece'))}.",
    )


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), _CURVE_POINTS)).round().astype(int))
    return x[keep].tolist(), y[keep].tolist()


def _qini_curves(ctx: PageContext, store: ModelStore, m: Manifest) -> dict[str, Any]:
    """Per treated arm, the Qini curve on the model's held-out customers."""
    stored = m.params.get("qini_curves")  # {arm: {"x": [...], "qini": [...]}}, when kept
    if stored:
        return {arm: (c["x"], c["qini"]) for arm, c in stored.items()}

    def compute() -> dict[str, Any]:  # the held-out 30% of customers, as training split them
        model, _ = store.load(m.kind, m.version)
        p, wh = m.params, ctx.warehouse
        start, end = _window(m.window["assignments"])
        days = float(p["window_days"])
        frame = experiment_frame(
            wh, p["experiment"], outcome=p["outcome"], window_days=days, start=start
        )
        frame = frame[frame.ts < pd.Timestamp(end)]
        held = (pd.util.hash_pandas_object(frame.customer_id, index=False) % 10 >= 7).to_numpy()
        test = frame[held]
        m.check_features(test.columns)
        effect = np.asarray(model.predict_effect(test[list(m.features)]))
        effect = effect.reshape(len(test), -1)
        out = {}
        for j, arm in enumerate(p["treatments"]):
            rows = test.arm.isin([p["control"], arm]).to_numpy()
            t = (test.arm.to_numpy()[rows] == arm).astype(int)
            out[arm] = _thin(*qini_curve(test.y.to_numpy()[rows], t, effect[rows, j]))
        log.info("Qini curves of %s on %d held-out assignments", m.name, len(test))
        return out

    return dict(_memo(("qini", str(ctx.root.resolve()), m.version, m.created_at), compute))


def _qini_chart(ctx: PageContext, store: ModelStore) -> Block:
    if "uplift" not in store.kinds():
        return Note("No uplift model yet: run 'nextbest train uplift' for the Qini curves.")
    m = store.manifest("uplift")
    curves = _qini_curves(ctx, store, m)
    traces = []
    for arm, (x, q) in curves.items():
        traces.append(go.Scatter(x=x, y=q, mode="lines", name=f"{arm}: {m.name}"))
        dots = dict(dash="dot")
        traces.append(go.Scatter(x=[0, 1], y=[0, q[-1]], name=f"{arm}: random", line=dots))
    coefficients = ", ".join(
        f"{arm} {num(m.metrics.get(f'{arm}: qini'))} (random p95 "
        f"{num(m.metrics.get(f'{arm}: random qini p95'))})"
        for arm in curves
    )
    return Chart(
        f"Qini curves of {m.name}",
        figure(traces, "share targeted, by predicted effect", "incremental outcomes per unit"),
        f"Experiment {m.params.get('experiment')}, outcome {m.params.get('outcome')}, on its "
        f"held-out customers; Qini coefficients: {coefficients}.",
    )


def _snapshot(ctx: PageContext) -> Snapshot | None:
    """The service's snapshot; without a service (a report), the workspace's current one."""
    try:
        if ctx.service is not None:
            return ctx.service.current().snapshot  # type: ignore[no-any-return]
        return Snapshot(current_snapshot(ctx.root))
    except (DataError, OSError):
        return None


def _lifetime_values(ctx: PageContext) -> tuple[np.ndarray, str]:
    """Lifetime values from the snapshot, else fitted on the warehouse's purchases."""
    snap = _snapshot(ctx)
    if snap is not None and "lifetime_value" in snap.meta["numeric"]:
        j = snap.meta["numeric"].index("lifetime_value")
        values = np.asarray(snap.profile_num[:, j], dtype=np.float64)
        return values[np.isfinite(values)], f"snapshot {snap.name}"
    ev = ctx.warehouse.table("events")
    buys = ev.filter(ev.type == "purchase", ev.customer_id.notnull())
    got = buys.aggregate(last=buys.ts.max(), n=buys.count()).to_pandas()
    if not int(got.n.iloc[0]):
        raise DataError("no purchase with a customer yet: lifetime value needs purchases")
    last = pd.Timestamp(got["last"].iloc[0]).floor("D")

    def compute() -> np.ndarray:
        with np.errstate(all="ignore"):  # the optimiser's trial steps overflow harmlessly
            clv = fit_clv(ctx.warehouse, last, 52).customers.clv.to_numpy(dtype=np.float64)
        return clv[np.isfinite(clv)]

    key = ("clv", str(ctx.root.resolve()), str(last), int(got.n.iloc[0]))
    return _memo(key, compute), f"BG/NBD and Gamma-Gamma fitted up to {last:%Y-%m-%d}"


def _ltv_chart(ctx: PageContext) -> Block:
    try:
        values, source = _lifetime_values(ctx)
    except (DataError, ConfigError, ValueError) as exc:
        return Note(f"No lifetime values: {exc}.")
    if not len(values):
        return Note(f"No lifetime values in the {source}: too few purchases to fit on.")
    counts, edges = np.histogram(values, bins=min(40, max(1, len(np.unique(values)))))
    mid, width = ((edges[:-1] + edges[1:]) / 2).tolist(), float(edges[1] - edges[0])
    bars = [go.Bar(x=mid, y=counts.tolist(), width=width, name="customers")]
    return Chart(
        "Lifetime value (52 weeks)",
        figure(bars, "lifetime value", "customers"),
        f"{len(values):,} customers, from the {source}; mean {values.mean():,.2f}, median "
        f"{np.median(values):,.2f}.",
    )


@page("models", "Models")
def models_page(ctx: PageContext) -> list[Block]:
    """Metrics per version, calibration, Qini curves, lifetime value."""
    store = ModelStore(ctx.root / "models")
    manifests = store.list()
    blocks: list[Block] = []
    if not manifests:
        blocks.append(Note("No trained model yet: run 'nextbest train all' (or 'make demo')."))
    for kind in store.kinds():
        blocks += _kind_blocks(kind, [m for m in manifests if m.kind == kind])
    blocks += [_calibration_chart(store), _qini_chart(ctx, store), _ltv_chart(ctx)]
    return blocks


# --- decisions -----------------------------------------------------------------------------

_OFFER_KEYS = ("offer_id", "brand", "sent", "logged", "expected_units", "stock_left")
_OFFER_COLUMNS = ["offer", "brand", "sent", "logged", "expected units", "stock left"]


def _logged(ctx: PageContext, campaign: str, day: Any) -> dict[str, int]:
    """Offers sent per offer in the decision log, for the campaign's day."""
    dec = ctx.warehouse.table("decisions")
    prefix = f"{campaign}:{day:%Y%m%d}:"
    dec = dec.filter(dec.decision_id.startswith(prefix), dec.offer_id.notnull())
    got = dec.group_by("offer_id").aggregate(n=dec.count()).to_pandas()
    return {str(o): int(n) for o, n in zip(got.offer_id, got.n, strict=True)}


def _decision_tiles(body: dict[str, Any], title: str) -> Metrics:
    solver = body.get("solver", {})
    tiles = {
        "Customers": (f"{body['customers']:,}", f"{body['held_out']:,} held out"),
        "Contacted": (f"{body['contacted']:,}", f"{body['slots_filled']:,} offers sent"),
        "Expected value": (num(body["expected_value"]), "as sent"),
        "Expected purchases": (num(body["expected_purchases"]), None),
        "Explored share": (pct(body["explored_share"]), "of the slots sent"),
        "Novelty share": (pct(body["novel_share"]), "slots new to the customer"),
        "Solver gap": (pct(solver.get("gap")), f"{solver.get('solver', '?')}, proven"),
    }
    return Metrics(tiles, title=title)


def _constraint_blocks(cons: list[dict[str, Any]]) -> list[Block]:
    if not cons:
        return [Note("This campaign has no budget, stock, capacity or share constraint.")]
    names = [c["label"] or c["name"] for c in cons]
    use = [go.Bar(x=names, y=[c[k] for c in cons], name=k) for k in ("used", "bound")]
    prices = go.Bar(x=names, y=[c["shadow_price"] for c in cons], name="shadow price")
    return [
        Chart("Constraint use", figure(use, "constraint", "used / bound", barmode="group")),
        Chart(
            "Shadow prices",
            figure([prices], "constraint", "shadow price (value per unit)"),
            "What one more unit of the constraint's bound would earn; 0 when it does not bind.",
        ),
    ]


@page("decisions", "Decisions", filters=("campaign",))
def decisions_page(ctx: PageContext) -> list[Block]:
    """For a campaign and day: allocation, constraints and their prices, exploration, gap."""
    found = summary_files(ctx.root)
    if not found:
        return [Note("No decisions yet: run 'nextbest decide' (or 'make demo').")]
    f = ctx.filters
    listing = "; ".join(
        f"{c}: {', '.join(str(s.day) for s in found if s.campaign == c)}"
        for c in dict.fromkeys(s.campaign for s in found)
    )
    chosen = [s for s in found if f.campaign in (None, s.campaign) and f.day in (None, s.day)]
    if not chosen:
        asked = " on ".join(str(x) for x in (f.campaign, f.day) if x is not None)
        return [Note(f"No decisions of {asked}. Decided so far: {listing}.", "warning")]
    s = chosen[-1]  # the latest day; on one day, the summary written last
    body = read_summary(s.path)
    logged = _logged(ctx, s.campaign, s.day)
    offers = sorted(body["offers"], key=lambda o: (-o["sent"], o["offer_id"]))
    offers = [{**o, "logged": logged.get(o["offer_id"], 0)} for o in offers]
    ids = [o["offer_id"] for o in offers]
    bars = [
        go.Bar(x=ids, y=[o["sent"] for o in offers], name="sent"),
        go.Bar(x=ids, y=[o["expected_units"] for o in offers], name="expected units", yaxis="y2"),
    ]
    bars[1].hovertext = [f"stock left: {num(o['stock_left'])}" for o in offers]
    right = dict(title="expected units", overlaying="y", side="right")
    note = "logged: the offer's rows in the decision log for that day."
    if not logged:
        note += " None logged: the day was decided with --no-log (a preview)."
    return [
        _decision_tiles(body, f"{s.campaign} on {s.day}"),
        Chart(
            "Allocation per offer",
            figure(bars, "offer", "offers sent", barmode="group", yaxis2=right),
            "Offers sent, and the units they are expected to sell (right axis), most sent first.",
        ),
        Table(
            "Offers",
            [*_OFFER_COLUMNS, "price per unit"],
            [[o[k] for k in _OFFER_KEYS] + [o["price_per_unit"]] for o in offers],
            note,
        ),
        *_constraint_blocks(body["constraints"]),
        Note(f"Campaigns and days decided: {listing}."),
    ]


# --- experiments ---------------------------------------------------------------------------

_ARM_COLUMNS = ["metric", "arm", "n", "rate or mean", "low", "high", "lift", "relative lift"]


def _errors(estimates: list[Estimate]) -> dict[str, Any]:
    """Asymmetric error bars from the estimates' intervals."""
    return dict(
        type="data",
        symmetric=False,
        array=[e.high - e.value for e in estimates],
        arrayminus=[e.value - e.low for e in estimates],
    )


def _arm_chart(a: ExperimentAnalysis, binary: bool) -> Chart | None:
    metrics = [m for m in a.metrics if m.binary == binary]
    if not metrics:
        return None
    bars = []
    for arm in a.arms:
        est = [m.arm(arm).estimate for m in metrics]
        x = [m.metric for m in metrics]
        bars.append(go.Bar(x=x, y=[e.value for e in est], name=arm, error_y=_errors(est)))
    what = "rate" if binary else f"mean per {a.unit}"
    fig = figure(bars, "metric", what, barmode="group")
    return Chart(f"{a.experiment}: {what} per arm", fig, f"{a.level:.0%} intervals.")


def _lift_chart(a: ExperimentAnalysis) -> Chart:
    points = []
    for arm in a.arms[1:]:
        lifts = [(m.metric, m.comparison(arm).lift.relative) for m in a.metrics]
        lifts = [(k, e) for k, e in lifts if math.isfinite(e.value)]
        est = [e for _, e in lifts]
        points.append(
            go.Scatter(
                x=[k for k, _ in lifts],
                y=[e.value for e in est],
                mode="markers",
                name=f"{arm} vs {a.control}",
                error_y=_errors(est),
            )
        )
    fig = figure(points, "metric", "relative lift", yaxis_tickformat=".0%")
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    return Chart(f"{a.experiment}: lift against {a.control}", fig, f"{a.level:.0%} intervals.")


def _experiment_blocks(a: ExperimentAnalysis) -> list[Block]:
    srm = a.sample_ratio
    counts = ", ".join(
        f"{k} {n:,} (expected {srm.expected[k]:,.0f})" for k, n in srm.observed.items()
    )
    blocks: list[Block] = []
    if srm.mismatch:
        blocks.append(
            Note(
                f"{a.experiment}: SAMPLE RATIO MISMATCH (chi-square p = {srm.p_value:.2g} < "
                f"{srm.threshold}): {counts}. The assignment or the logging is broken; do not "
                "trust the lifts below.",
                "warning",
            )
        )
    blocks += [c for c in (_arm_chart(a, True), _arm_chart(a, False)) if c is not None]
    if len(a.arms) > 1:
        blocks.append(_lift_chart(a))
    rows = []
    for m in a.metrics:
        for arm in m.arms:
            e = arm.estimate
            c = next((x for x in m.comparisons if x.arm == arm.arm), None)
            vs = [c.lift.absolute.value, c.lift.relative.value, c.p_adjusted] if c else [None] * 3
            rows.append([m.metric, arm.arm, arm.n, e.value, e.low, e.high, *vs])
    note = f"{a.units:,} {a.unit}s, outcomes over {a.window_days:g} days; sample ratio: {counts}"
    blocks.append(
        Table(
            f"{a.experiment}: arms",
            [*_ARM_COLUMNS, "p (Holm)"],
            rows,
            f"{note}, p = {srm.p_value:.3g}.",
        )
    )
    return blocks


def _roi_tiles(r: CampaignRoi, lift: Estimate, expected: float, relative: bool) -> Metrics:
    h = r.hypothesis
    assert h is not None
    show = pct if relative else num
    roi = r.roi
    interval = f"[{pct(roi.low)}, {pct(roi.high)}]" if roi else None
    margin = r.total_incremental_margin.value
    tiles = {
        "Verdict": (r.verdict, f"expected value: {r.value_verdict or '-'}"),
        "ROI": (pct(roi.value) if roi else "-", interval),
        "Incremental margin": (num(margin), f"expected {num(h.expected_value)}"),
        "Incremental revenue": (num(r.total_incremental_revenue.value), None),
        "Cost": (num(r.cost), f"{r.sends:,} sends, {r.redemptions:,} redemptions"),
        f"{h.metric} lift": (show(lift.value), f"expected {show(expected)}"),
    }
    return Metrics(tiles, title=f"{r.campaign} against its hypothesis (experiment {r.experiment})")


def _roi_blocks(ctx: PageContext) -> list[Block]:
    name = ctx.filters.campaign
    spec = campaign_spec(ctx.root, name)
    if spec is None:
        where = f"campaigns/{name}.toml" if name else "campaign.toml"
        return [Note(f"No campaign file {where}: the ROI needs a campaign with an experiment.")]
    c = spec.campaign
    if c.hypothesis is None or c.experiment is None:
        return [
            Note(
                f"Campaign {c.name} has no [campaign.hypothesis] and [campaign.experiment]: add "
                "them to compare what it earned with what was expected ('nextbest roi')."
            )
        ]
    r = campaign_roi(ctx.warehouse, spec)
    h = r.hypothesis
    assert h is not None and r.lift is not None
    relative = h.expected_lift is not None
    lift = r.lift.relative if relative else r.lift.absolute
    expected = (h.expected_lift if relative else h.expected_absolute_lift) or 0.0
    bars = [("measured lift", lift), ("expected lift", _exact(expected, r.level))]
    if h.expected_value is not None:
        bars += [("measured margin", r.total_incremental_margin)]
        bars += [("expected margin", _exact(h.expected_value, r.level))]
    est = [e for _, e in bars]
    fig = go.Bar(x=[k for k, _ in bars], y=[e.value for e in est], error_y=_errors(est))
    what = f"{'relative' if relative else 'absolute'} lift of {h.metric}"
    blocks: list[Block] = [
        _roi_tiles(r, lift, expected, relative),
        Chart(
            "Expected against measured",
            figure([fig], "measure", f"{what}; incremental margin"),
            f"{r.level:.0%} intervals; {r.n_treated:,} treated {r.unit}s against "
            f"{r.n_control:,} in {r.control}.",
        ),
    ]
    if r.sample_ratio.mismatch:
        p = r.sample_ratio.p_value
        blocks.append(
            Note(f"{c.name}: SAMPLE RATIO MISMATCH (p = {p:.2g}); do not trust it.", "warning")
        )
    return blocks + [Note(n) for n in r.notes]


def _exact(value: float, level: float) -> Estimate:
    return Estimate(value, 0.0, value, value, level)


def _experiment_names(ctx: PageContext) -> list[str]:
    """The experiments to show: the campaign's own, or all; with assignments in the period."""
    names = list(experiments(ctx.warehouse).experiment)
    spec = campaign_spec(ctx.root, ctx.filters.campaign) if ctx.filters.campaign else None
    if spec is not None and spec.campaign.experiment is not None:
        names = [n for n in names if n == spec.campaign.experiment.name]
    start, end = ctx.filters.span()
    dec = ctx.warehouse.table("decisions")
    if start:
        dec = dec.filter(dec.ts >= ibis.literal(start, type="timestamp('UTC')"))
    if end:
        dec = dec.filter(dec.ts < ibis.literal(end, type="timestamp('UTC')"))
    if start or end:
        active = set(
            dec.filter(dec.experiment.notnull())
            .select("experiment")
            .distinct()
            .to_pandas()
            .experiment
        )
        names = [n for n in names if n in active]
    return names


@page("experiments", "Experiments", filters=("campaign", "dates"))
def experiments_page(ctx: PageContext) -> list[Block]:
    """Arms with intervals, lifts and sample ratios; the campaign's ROI against its hypothesis."""
    names = _experiment_names(ctx)
    blocks: list[Block] = []
    if not names:
        text = "No experiment in the decision log (for these filters): give a campaign a "
        blocks.append(Note(text + "[campaign.experiment] and run 'nextbest decide'."))
    elif ctx.filters.start or ctx.filters.end:
        text = "The period picks the experiments with assignments in it; each is analysed "
        blocks.append(Note(text + "over its whole log."))
    for name in names[:_MAX_EXPERIMENTS]:
        blocks += _experiment_blocks(analyze_experiment(ctx.warehouse, name))
    if len(names) > _MAX_EXPERIMENTS:
        text = f"The {_MAX_EXPERIMENTS} largest of {len(names)} experiments are shown; "
        blocks.append(Note(text + "pick a campaign to see its own."))
    return blocks + _roi_blocks(ctx)


# --- closed loop ---------------------------------------------------------------------------

_TOTALS = {  # column: field of PolicyTotals
    "policy": "policy",
    "true profit": "profit",
    "margin x random": "margin_vs_random",
    "conversions": "conversions",
    "± se": "conversions_se",
    "realised": "realised_conversions",
    "incremental": "incremental",
    "unsubscribes": "unsubscribes",
    "novelty share": "novelty_share",
    "new-designer share": "new_designer_share",
}


@page("loop", "Closed loop", needs_warehouse=False)
def loop_page(ctx: PageContext) -> list[Block]:
    """The policies of the latest closed-loop run: true profit and conversions per day."""
    body = latest_loop_result(ctx.root)
    if body is None:
        text = "No closed-loop result in this workspace yet: run 'nextbest loop' here (it keeps "
        return [Note(text + "its result in loop/), or 'make demo'.")]
    try:
        days = [LoopDay(**d) for d in body["days"]]
        totals = [PolicyTotals(**t) for t in body["totals"]]
    except TypeError as exc:
        raise DataError(f"the closed-loop result has another shape ({exc}); run it again") from None
    profit, conversions = [], []
    for t in totals:
        mine = sorted((d for d in days if d.policy == t.policy), key=lambda d: d.day)
        x = [d.date for d in mine]
        cum = np.cumsum([d.profit for d in mine]).tolist()
        profit.append(go.Scatter(x=x, y=cum, mode="lines+markers", name=t.policy))
        y = [d.conversions for d in mine]
        conversions.append(go.Scatter(x=x, y=y, mode="lines+markers", name=t.policy))
    c = body["config"]
    warm = c.get("warmup", 0) if any(d.model == "random (warm-up)" for d in days) else 0
    after = f"; the model-based policies start after {warm} days of random warm-up" if warm else ""
    return [
        Note(str(body.get("verdict", ""))),
        Chart(
            "Cumulative true profit",
            figure(profit, "day", "true profit, cumulative"),
            f"{c.get('customers', 0):,} members x {c.get('days')} days, seed "
            f"{c.get('seed')}{after}.",
        ),
        Chart(
            "Conversions per day",
            figure(conversions, "day", "expected purchases"),
            "Purchases the e-mails are expected to bring through their clicks (the truth).",
        ),
        Table(
            "Totals",
            list(_TOTALS),
            [[getattr(t, k) for k in _TOTALS.values()] for t in totals],
            "Against the simulator's ground truth; x random: true margin over random's.",
        ),
    ]


page("customer", "Customer", filters=("customer",))(customer_page)  # registered last
