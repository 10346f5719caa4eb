"""``nextbest experiment`` (analyze, plan, list) and ``nextbest roi``: measure what was earned."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from nextbest.cli.console import err, out, print_json, table
from nextbest.cli.decide import CampaignOpt, campaign_for
from nextbest.cli.main import JsonOpt, WorkspaceOpt, app, command, open_workspace
from nextbest.features.experiment_features import experiments
from nextbest.measure.experiment import METRICS, ExperimentAnalysis, analyze_experiment
from nextbest.measure.roi import CampaignRoi, campaign_roi
from nextbest.measure.stats import Estimate, SampleRatio, plan_experiment

__all__ = ["analyze_cmd", "experiment_app", "list_cmd", "plan_cmd", "roi_cmd"]

experiment_app = typer.Typer(help="Experiments: analysis per arm, sample sizes, the list.")
app.add_typer(experiment_app, name="experiment")


def _num(value: float | None, pct: bool = False, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2%}" if pct else f"{value:,.{digits}g}"


def _interval(e: Estimate | None, pct: bool = False) -> str:
    if e is None or not math.isfinite(e.low):
        return "-"
    return f"[{_num(e.low, pct)}, {_num(e.high, pct)}]"


def _with(e: Estimate | None, pct: bool = False) -> str:
    """A value and its interval in one cell."""
    return "-" if e is None else f"{_num(e.value, pct)} {_interval(e, pct)}"


def _p(p: float | None) -> str:
    return "-" if p is None or not math.isfinite(p) else f"{p:.3g}"


def _srm(srm: SampleRatio) -> None:
    counts = ", ".join(
        f"{a} {n:,} (expected {srm.expected[a]:,.0f})" for a, n in srm.observed.items()
    )
    if srm.mismatch:
        err.print(
            f"[bold red]SAMPLE RATIO MISMATCH[/] (chi-square p = {srm.p_value:.2g} < "
            f"{srm.threshold}): {counts}. The assignment or the logging is broken; do not trust "
            "the lifts below.",
            soft_wrap=True,
        )
    else:
        out.print(f"Sample ratio: {counts}; chi-square p = {srm.p_value:.3g}, no mismatch.")


def print_analysis(a: ExperimentAnalysis) -> None:
    out.print(
        f"[bold]{a.experiment}[/]: {a.units:,} {a.unit}s, control [bold]{a.control}[/], "
        f"outcomes over {a.window_days:g} days, pre-period {a.pre_days:g} days, "
        f"{a.level:.0%} intervals"
    )
    _srm(a.sample_ratio)
    for m in a.metrics:
        pct = m.binary
        adjusted = m.variance_reduction is not None
        sequential = any(c.sequential for c in m.comparisons)
        cols = ["arm", "n", "rate" if pct else "mean", "lift", "relative lift", "p", "p (Holm)"]
        cols += ["CUPED lift", "p (Holm)"] if adjusted else []
        cols += ["always-valid p"] if sequential else []
        rows: list[list[Any]] = []
        for arm in m.arms:
            row: list[Any] = [arm.arm, arm.n, _with(arm.estimate, pct)]
            c = next((x for x in m.comparisons if x.arm == arm.arm), None)
            if c is None:
                row += ["control"] + [None] * (len(cols) - 4)
            else:
                row += [
                    _with(c.lift.absolute, pct),
                    _with(c.lift.relative, True),
                    _p(c.lift.test.p_value),
                    _p(c.p_adjusted),
                ]
                if adjusted:
                    row += [
                        _with(c.cuped.absolute if c.cuped else None, pct),
                        _p(c.cuped_p_adjusted),
                    ]
                if sequential:
                    row += [_p(c.sequential.p_value) if c.sequential else None]
            rows.append(row)
        out.print(table(m.metric, cols, rows))
        if adjusted:
            out.print(
                f"  CUPED with {m.metric} over the pre-period: theta {m.cuped_theta:.4g}, "
                f"variance reduced by {m.variance_reduction:.2%}"
            )
        for note in m.notes:
            out.print(f"  [yellow]{note}[/]")


@command("analyze", on=experiment_app)
def analyze_cmd(
    name: Annotated[str, typer.Argument(help="Experiment, as logged in decisions.")],
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric", "-m", help=f"{', '.join(METRICS)} (repeat; default: all with data)."
        ),
    ] = None,
    window_days: Annotated[float, typer.Option(help="Days after assignment that count.")] = 14.0,
    pre_days: Annotated[float, typer.Option(help="Days before assignment, for CUPED.")] = 28.0,
    control: Annotated[
        str | None, typer.Option(help="Control arm (default: the arm that showed no offer).")
    ] = None,
    cuped: Annotated[
        bool, typer.Option("--cuped/--no-cuped", help="Adjust with the pre-period (CUPED).")
    ] = True,
    sequential: Annotated[
        bool, typer.Option("--sequential", help="Always-valid p-values (peeking allowed).")
    ] = False,
    mixture_lift: Annotated[
        float, typer.Option(help="--sequential: relative lift the test is tuned for.")
    ] = 0.1,
    level: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per arm and metric: rate or mean, lift against control, p-values, CUPED, sample ratio."""
    ws = open_workspace(workspace)
    result = analyze_experiment(
        ws.warehouse,
        name,
        metric or None,
        window_days=window_days,
        pre_days=pre_days,
        control=control,
        cuped=cuped,
        sequential=sequential,
        mixture_lift=mixture_lift,
        level=level,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        print_analysis(result)


@command("plan", on=experiment_app)
def plan_cmd(
    baseline: Annotated[
        float, typer.Option(help="The control's rate (0-1), or its mean with --sd.")
    ],
    mde: Annotated[
        float | None, typer.Option(help="Minimum detectable effect: gives n per arm.")
    ] = None,
    n: Annotated[
        int | None, typer.Option(help="Units per arm: gives the detectable effect.")
    ] = None,
    relative: Annotated[
        bool, typer.Option("--relative", help="--mde is relative to the baseline.")
    ] = False,
    sd: Annotated[
        float | None, typer.Option(help="Standard deviation per unit (a mean, not a rate).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Significance level (two-sided).")] = 0.05,
    power: Annotated[float, typer.Option(help="Power wanted.")] = 0.8,
    arms: Annotated[int, typer.Option(help="Arms including the control (Bonferroni).")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Sample size per arm for an effect, or the effect detectable with n per arm."""
    p = plan_experiment(
        baseline, mde=mde, n=n, relative=relative, sd=sd, alpha=alpha, power=power, arms=arms
    )
    if as_json:
        print_json({**p.__dict__, "total": p.total})
        return
    pct = p.metric == "rate"
    rows: list[list[Any]] = [
        ["baseline", _num(p.baseline, pct)],
        ["effect (absolute)", _num(p.effect, pct)],
        ["effect (relative)", _num(p.relative_effect, True)],
        ["n per arm", p.n_per_arm],
        ["arms", p.arms],
        ["n in all", p.total],
        ["alpha per comparison", _num(p.alpha / (p.arms - 1))],
        ["power", _num(p.power)],
    ]
    out.print(table(f"Experiment plan ({p.metric})", ["", "value"], rows))


@command("list", on=experiment_app)
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """The experiments logged in decisions: decisions, customers and arms."""
    found = experiments(open_workspace(workspace).warehouse)
    if as_json:
        print_json(found.to_dict(orient="records"))
    elif found.empty:
        out.print("No experiment in the decision log yet.")
    else:
        rows: list[list[Any]] = [
            list(r)
            for r in found[["experiment", "decisions", "customers", "arms"]].itertuples(index=False)
        ]
        out.print(table("Experiments", ["experiment", "decisions", "customers", "arms"], rows))


def print_roi(r: CampaignRoi) -> None:
    out.print(
        f"[bold]{r.campaign}[/] (experiment {r.experiment}): {r.n_treated:,} treated "
        f"{r.unit}s in {', '.join(r.treated_arms)} against {r.n_control:,} in {r.control}, "
        f"outcomes over {r.window_days:g} days, {r.level:.0%} intervals"
    )
    _srm(r.sample_ratio)
    money: list[list[Any]] = [
        [
            "incremental revenue per treated",
            _num(r.incremental_revenue.value),
            _interval(r.incremental_revenue),
        ],
        [
            "incremental margin per treated",
            _num(r.incremental_margin.value),
            _interval(r.incremental_margin),
        ],
        [
            "incremental revenue",
            _num(r.total_incremental_revenue.value),
            _interval(r.total_incremental_revenue),
        ],
        [
            "incremental margin",
            _num(r.total_incremental_margin.value),
            _interval(r.total_incremental_margin),
        ],
        [f"cost of {r.sends:,} sends", _num(r.send_cost), None],
        [f"cost of {r.redemptions:,} redemptions", _num(r.redemption_cost), None],
        ["ROI", _num(r.roi.value, True) if r.roi else "-", _interval(r.roi, True)],
    ]
    out.print(table("Return", ["", "measured", "interval"], money))
    h = r.hypothesis
    if h is not None and r.lift is not None:
        pct = h.metric not in ("revenue", "margin")
        rows: list[list[Any]] = [
            ["metric", h.metric, None],
            ["relative lift", _num(r.lift.relative.value, True), _num(h.expected_lift, True)],
            ["", _interval(r.lift.relative, True), None],
            [
                "absolute lift",
                _num(r.lift.absolute.value, pct),
                _num(h.expected_absolute_lift, pct),
            ],
            ["", _interval(r.lift.absolute, pct), None],
            [
                "detectable effect",
                _num(r.detectable_effect, True),
                _num(h.minimum_detectable_effect, True),
            ],
            ["incremental margin", _num(r.total_incremental_margin.value), _num(h.expected_value)],
            ["p-value", _p(r.lift.test.p_value), f"alpha {h.alpha:g}"],
        ]
        out.print(table("Against the hypothesis", ["", "measured", "expected"], rows))
        value = f"; expected value: [bold]{r.value_verdict}[/]" if r.value_verdict else ""
        out.print(f"Verdict: [bold]{r.verdict}[/]{value}")
    else:
        out.print("No [campaign.hypothesis] in the campaign file: nothing to compare with.")
    for note in r.notes:
        out.print(f"[yellow]{note}[/]")


@command("roi")
def roi_cmd(
    campaign: CampaignOpt = None,
    window_days: Annotated[
        float | None, typer.Option(help="Days after assignment (default: the hypothesis').")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A campaign's incremental revenue, margin, cost and ROI against its holdout and hypothesis."""
    ws = open_workspace(workspace)
    spec = campaign_for(ws, campaign)
    result = campaign_roi(ws.warehouse, spec, window_days=window_days)
    if as_json:
        print_json(result.to_dict())
    else:
        print_roi(result)
