"""``nextbest simulate`` and ``nextbest demo``: a synthetic retailer, end to end."""

from __future__ import annotations

import shutil
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from nextbest.cli.console import RichReporter, out, print_json, table
from nextbest.cli.decide import print_decision_summary
from nextbest.cli.insight import print_segments
from nextbest.cli.loop import print_loop_result
from nextbest.cli.main import JsonOpt, command, print_loads
from nextbest.cli.models import print_train_report
from nextbest.cli.serve import make_snapshot, run_server
from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.decide import CampaignFile, DecisionRun, decide, explain, load_campaign
from nextbest.errors import ConfigError
from nextbest.features import SEGMENTS, rfm
from nextbest.measure.funnels import FUNNELS, MemberCrossSell, funnel, member_cross_sell
from nextbest.measure.kpi import HeadlineKpis, headline_kpis
from nextbest.measure.loop import LoopConfig, run_loop, save_loop_result
from nextbest.models import run_segmentation
from nextbest.models.store import ModelStore
from nextbest.models.training import TrainOptions, train
from nextbest.serve import KeyStore, ServeSettings
from nextbest.simulate import SimConfig, simulate

__all__ = ["demo", "simulate_cmd"]

_MARKER = ".nextbest-demo"
_DEMO_TRAIN_DAYS = 14
_DEMO_HOLDOUT = 0.1  # a daily control group: what uplift models and measurement learn from
# the closed loop, the demo's final act: small, so that it takes about a minute
_DEMO_LOOP = {"customers": 2_000, "days": 8, "warmup": 4, "retrain_every": 3}
_DEMO_LOOP_POLICIES = ("random", "popular", "greedy", "optimised")
_DEMO_CAMPAIGN = """# The demo's daily e-mail: see src/nextbest/decide/campaign.py for every key.
[campaign]
name = "daily-email"
channel = "email"
objective = "profit"
slots = 3
max_per_brand = 1

[[campaign.shares]]
tag = "new_designer"
min = 0.15

[campaign.exploration]
share = 0.05
method = "thompson"
novelty_share = 0.5

[campaign.experiment]
name = "daily-email"
holdout = 0.1

[campaign.contact]
suppress_after_ignores = 20   # members who ignored their last 20 e-mails rest for 14 days
"""
_DEMO_SEGMENTATION = """
[segmentations.engagement]
purpose = "match e-mail pressure to how members engage"
features = ["open_rate_90", "click_rate_90", "visits_90"]
k = 4
"""


@command("simulate")
def simulate_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the generated tables.")],
    customers: Annotated[int, typer.Option(help="Number of members.")] = 20_000,
    days: Annotated[int, typer.Option(help="Days to simulate.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 7,
    policy: Annotated[str, typer.Option(help="E-mail policy: random or popular.")] = "random",
    file_format: Annotated[str, typer.Option("--file-format", help="parquet or csv.")] = "parquet",
    holdout_share: Annotated[
        float, typer.Option(help="Share of members kept out of each day's e-mail (control).")
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic flash-sale retailer, and its ground truth in OUT/truth."""
    config = _sim_config(customers, days, seed, policy, file_format, holdout_share)
    started = time.perf_counter()
    summary = simulate(config, out_dir, reporter=RichReporter(enabled=not as_json))
    elapsed = time.perf_counter() - started
    if as_json:
        print_json({"out": str(out_dir), "seconds": round(elapsed, 2), **summary.to_dict()})
        return
    rows = [[name, n] for name, n in summary.rows.items()]
    out.print(table(f"Simulated retailer in {out_dir} ({elapsed:.1f} s)", ["table", "rows"], rows))
    out.print(f"Ground truth: {out_dir / 'truth'}")


@command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the demo.")] = Path(
        "nextbest-demo"
    ),
    customers: Annotated[int, typer.Option(help="Number of members.")] = 20_000,
    days: Annotated[int, typer.Option(help="Days to simulate.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve/--no-serve",
            help="End by serving the dashboard on this machine (local mode), until Ctrl+C.",
        ),
    ] = True,
    port: Annotated[int, typer.Option(help="Port of the dashboard's server.")] = 8000,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop/--no-loop",
            help="End with a short closed loop: policies learning on the simulator, compared "
            "on the truth (about a minute).",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a retailer, load it into a fresh workspace, and show what came in."""
    if directory.exists() and any(directory.iterdir()) and not (directory / _MARKER).exists():
        raise ConfigError(
            f"{directory}: exists and was not made by 'nextbest demo'; choose another --dir"
        )
    if serve:
        _check_port(port)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / _MARKER).write_text("made by nextbest demo; deleted by the next demo run\n")
    reporter = RichReporter(enabled=not as_json)
    sim_dir = directory / "simulated"
    steps = 7 if loop else 6
    if not as_json:
        out.print(
            f"[bold]1/{steps}[/] Simulating {customers:,} members over {days} days (seed {seed})"
        )
    sim_config = _sim_config(customers, days, seed, "random", "parquet", _DEMO_HOLDOUT)
    simulate(sim_config, sim_dir, reporter=reporter)
    if not as_json:
        out.print(f"[bold]2/{steps}[/] Creating the workspace {directory / 'workspace'}")
    ws = Workspace.init(directory / "workspace", name="demo")
    config = ws.root / "nextbest.toml"
    config.write_text(config.read_text() + _DEMO_SEGMENTATION, encoding="utf-8")
    ws = Workspace.open(ws.root)
    if not as_json:
        out.print(f"[bold]3/{steps}[/] Loading the simulated tables")
    results = ingest(
        ws.warehouse, [sim_dir], ws.config.ingest, reports=ws.reports, reporter=reporter
    )
    kpis = headline_kpis(ws.warehouse)
    quarantined = ws.warehouse.count("quarantine")
    if not as_json:
        out.print(f"[bold]4/{steps}[/] Training the models")
    trained = train(
        ws.warehouse,
        ModelStore(ws.models),
        "all",
        # the demo's experiment is a daily e-mail holdout: its outcome is that day's purchase
        TrainOptions(max_train_days=_DEMO_TRAIN_DAYS, uplift_window_days=1, random_state=seed),
        reporter=reporter,
    )
    if not as_json:
        out.print(f"[bold]5/{steps}[/] Deciding tomorrow's e-mails for every member")
    (ws.root / "campaign.toml").write_text(_DEMO_CAMPAIGN, encoding="utf-8")
    spec = load_campaign(ws.root / "campaign.toml")
    last = ws.warehouse.table("events").ts.max().execute().to_pydatetime()
    tomorrow = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    decided = None
    why_not = trained.skipped.get("propensity")
    if why_not is None:
        decided = decide(ws, spec, tomorrow, random_state=seed, reporter=reporter)
    looped = None
    if loop:
        if not as_json:
            out.print(
                f"[bold]6/{steps}[/] The closed loop: {', '.join(_DEMO_LOOP_POLICIES)} on "
                f"{_DEMO_LOOP['customers']:,} members x {_DEMO_LOOP['days']} days, each "
                "learning from its own logs"
            )
        looped = run_loop(
            LoopConfig(
                **_DEMO_LOOP,
                policies=_DEMO_LOOP_POLICIES,
                seed=seed,
                workdir=directory / "loop",
            ),
            reporter=reporter,
        )
        save_loop_result(looped, ws.root)  # the dashboard's closed-loop page draws it
    snapshot = None
    if why_not is None:
        if not as_json:
            out.print(
                f"[bold]{steps}/{steps}[/] Building the service's snapshot for {tomorrow:%Y-%m-%d}"
            )
        snapshot = make_snapshot(ws, None, quiet=as_json)
    elif not as_json:
        out.print(f"[bold]{steps}/{steps}[/] No service snapshot: there is no propensity model")
    key = None
    if serve:
        _, key = KeyStore(ServeSettings().db_path(ws.root)).create("demo", ["profiles"])
    dashboard = f"http://127.0.0.1:{port}/dashboard"
    if as_json:
        print_json(
            {
                "decisions": decided.summary if decided else None,
                "skipped_decisions": None if decided else f"no propensity model: {why_not}",
                "loads": [r.to_dict() for r in results],
                "quarantined": quarantined,
                "kpis": kpis.to_dict(),
                "cross_sell": _cross_sell_json(member_cross_sell(ws.warehouse)),
                "models": [m.to_dict() for m in trained.made],
                "skipped_models": trained.skipped,
                "workspace": str(ws.root),
                "loop": looped.to_dict() if looped else None,
                "snapshot": str(snapshot) if snapshot else None,
                "dashboard": dashboard if serve else None,
                "key": key,
            }
        )
    else:
        print_loads(results)
        out.print(
            f"Quarantined rows: {quarantined:,}"
            + ("" if quarantined else " (every simulated row met the contract)")
        )
        print_kpis(kpis)
        _print_insight(ws)
        print_train_report(trained)
        if decided is not None:
            print_decision_summary(decided.summary)
            _print_explanation(ws, spec, decided, tomorrow)
        else:
            out.print(f"No decisions: the propensity model was skipped ({why_not})")
        if looped is not None:
            print_loop_result(looped)
        out.print(f"\nWorkspace: {ws.root}   ground truth: {sim_dir / 'truth'}")
        out.print(f"Explore it: nextbest status --workspace {ws.root}")
        if not serve:
            out.print(f"Serve the dashboard: nextbest serve --local --workspace {ws.root}")
    ws.close()  # the service never holds the warehouse
    if not serve:
        return
    if not as_json:
        out.print(
            f"\n[bold]Dashboard: {dashboard}[/] (local mode: no key needed on this machine)\n"
            f"API key with the profiles scope, shown once: {key}\n"
            f"  e.g. curl -H 'Authorization: Bearer {key}' http://127.0.0.1:{port}/v1/offers\n"
            "Serving until Ctrl+C (--no-serve leaves this out)."
        )
        if snapshot is None:
            out.print("[yellow]No snapshot: the decision API answers 503 until there is one.[/]")
    run_server(ws.root, ServeSettings(port=port, local=True))


def _check_port(port: int) -> None:
    """Fail before the long demo, not after it, when the dashboard's port is taken."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected a port between 1 and 65535, got {port}")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(
                f"--port: expected a free port for the dashboard, but {port} is in use; "
                "pass another --port, or --no-serve"
            ) from None


def _print_explanation(ws: Workspace, spec: CampaignFile, run: DecisionRun, day: datetime) -> None:
    """Why the first member mailed got her e-mail: the same as 'nextbest explain'."""
    slates = run.plan.slates
    mailed = np.flatnonzero((slates >= 0).all(axis=1))
    if not len(mailed):
        return
    cid = str(run.plan.inputs.customer_ids[mailed[0]])
    result = explain(ws, spec, cid, day)
    rows = [
        [e.offer_id, e.brand, e.status, e.slot, f"{e.value:.4g}", "; ".join(e.reasons)[:60]]
        for e in result.offers[:6]
    ]
    out.print(
        table(
            f"Why {cid} gets these offers (nextbest explain {cid})",
            ["offer", "brand", "status", "slot", "value", "why not"],
            rows,
        )
    )


def _print_insight(ws: Workspace) -> None:
    """RFM segments, the segmentations, cross-sell between categories, and the funnels."""
    last = ws.warehouse.table("events").ts.max().execute()
    if last is None:
        return
    when = (last + timedelta(days=1)).to_pydatetime()
    scores = rfm(ws.warehouse, when)
    by = scores.group_by("segment").aggregate(
        customers=scores.count(), monetary=scores.monetary.sum()
    )
    rows = {r["segment"]: r for r in by.to_pyarrow().to_pylist()}
    out.print(
        table(
            f"RFM segments on {when:%Y-%m-%d}",
            ["segment", "customers", "monetary"],
            [[s, rows[s]["customers"], float(rows[s]["monetary"])] for s in SEGMENTS if s in rows],
        )
    )
    for name, spec in ws.config.segmentations.items():
        print_segments(run_segmentation(ws.warehouse, name, spec, when))
    print_member_cross_sell(member_cross_sell(ws.warehouse))
    for name in FUNNELS:
        steps = funnel(ws.warehouse, name)
        out.print(
            table(
                f"{name.capitalize()} funnel (member-days)",
                ["step", "count", "drop-off"],
                [
                    [s.step, s.count, "-" if s.drop_off is None else f"{100 * s.drop_off:.1f}%"]
                    for s in steps
                ],
            )
        )


def _cross_sell_json(found: MemberCrossSell, top: int = 10) -> dict[str, object]:
    rules = found.rules.head(top)
    return {
        "baskets": "everything a member bought in the period (not same-order baskets)",
        "members_who_bought": found.baskets,
        "members_in_2_or_more": found.multi,
        "rules": [
            {
                "if_bought": sorted(map(str, r.antecedents)),
                "also_bought": sorted(map(str, r.consequents)),
                "members": int(r.members),
                "support": float(r.support),
                "confidence": float(r.confidence),
                "lift": float(r.lift),
            }
            for r in rules.itertuples()
        ],
    }


def print_member_cross_sell(found: MemberCrossSell, top: int = 10) -> None:
    """The top category rules by lift over member baskets, labelled as such.

    The simulator's orders are single lines (one sale a member-day), so same-order baskets
    give no rules; a member's purchases over the whole period do.
    """
    title = (
        "Cross-sell between categories: bought by the same member in the period "
        "(member baskets, not same-order baskets)"
    )
    if found.rules.empty:
        out.print(
            f"{title}: no rule at these thresholds ({found.baskets:,} members bought, "
            f"{found.multi:,} of them in more than one category)"
        )
        return
    out.print(
        table(
            f"{title}; {found.baskets:,} members bought, {found.multi:,} in 2+ categories",
            ["members who bought", "also bought", "members", "confidence", "lift (1 = chance)"],
            [
                [
                    " & ".join(sorted(map(str, r.antecedents))),
                    " & ".join(sorted(map(str, r.consequents))),
                    int(r.members),
                    f"{100 * r.confidence:.1f}%",
                    f"{r.lift:.2f}",
                ]
                for r in found.rules.head(top).itertuples()
            ],
        )
    )


def print_kpis(k: HeadlineKpis) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    period = (
        f"{k.first_ts:%Y-%m-%d} to {k.last_ts:%Y-%m-%d}"
        if k.first_ts and k.last_ts
        else "no events"
    )
    rows = [
        ["members", f"{k.members:,}"],
        ["active members (bought)", f"{k.active_members:,}"],
        ["revenue (net of returns)", f"{k.revenue:,.2f}"],
        ["orders", f"{k.orders:,}"],
        ["e-mails sent", f"{k.emails_sent:,}"],
        ["open rate", pct(k.open_rate)],
        ["click rate", pct(k.click_rate)],
        ["click-to-open", pct(k.click_to_open)],
        ["unsubscribe rate", pct(k.unsubscribe_rate)],
        ["site visits", f"{k.visits:,}"],
        ["conversion (orders per visit)", pct(k.conversion)],
    ]
    out.print(table(f"Headline KPIs, {period}", ["KPI", "value"], rows))


def _sim_config(
    customers: int, days: int, seed: int, policy: str, file_format: str, holdout_share: float = 0.0
) -> SimConfig:
    try:
        return SimConfig(
            n_customers=customers,
            days=days,
            seed=seed,
            policy=policy,
            file_format=file_format,
            holdout_share=holdout_share,
        )
    except ValueError as exc:
        raise ConfigError(f"simulation settings: {exc}") from None
