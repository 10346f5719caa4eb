"""``nextbest decide`` and ``nextbest explain``: the day's decisions, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from nextbest.cli.console import RichReporter, out, print_json, table
from nextbest.cli.insight import parse_date
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command, open_workspace
from nextbest.data.workspace import Workspace
from nextbest.decide import CampaignFile, decide, explain, load_campaign, parse_campaign
from nextbest.errors import ConfigError

__all__ = ["campaign_for", "day_after_data", "decide_cmd", "explain_cmd", "print_decision_summary"]

CampaignOpt = Annotated[
    Path | None,
    typer.Option(
        "--campaign",
        help="Campaign TOML (default: WORKSPACE/campaign.toml, else a daily 3-offer e-mail).",
    ),
]
DEFAULT_CAMPAIGN = {"campaign": {"name": "daily-email", "channel": "email", "slots": 3}}


def campaign_for(ws: Workspace, path: Path | None) -> CampaignFile:
    if path is not None:
        return load_campaign(path)
    own = ws.root / "campaign.toml"
    return load_campaign(own) if own.exists() else parse_campaign(DEFAULT_CAMPAIGN)


def day_after_data(ws: Workspace, text: str | None) -> datetime:
    if text is not None:
        return parse_date(text, "--date")
    last = ws.warehouse.table("events").ts.max().execute()
    if last is None:
        raise ConfigError("--date: the warehouse has no events to start from; give a date")
    last = last.to_pydatetime()
    return datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)


@command("decide")
def decide_cmd(
    date: Annotated[
        str | None, typer.Option(help="Day to decide (default: after the data).")
    ] = None,
    campaign: CampaignOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for slates and summary.")
    ] = None,
    file_format: Annotated[str, typer.Option("--format", help="Slates as csv or parquet.")] = "csv",
    seed: Annotated[int, typer.Option(help="Random seed (rounding, exploration).")] = 0,
    log: Annotated[
        bool, typer.Option("--log/--no-log", help="Write the decisions to the decision log.")
    ] = True,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide a campaign's messages for a day: optimal under its constraints, logged, exported."""
    if file_format not in ("csv", "parquet"):
        raise ConfigError(f"--format: expected csv or parquet, got {file_format!r}")
    ws = open_workspace(workspace)
    spec = campaign_for(ws, campaign)
    day = day_after_data(ws, date)
    run = decide(
        ws,
        spec,
        day,
        out=out_dir,
        fmt=file_format,
        log_decisions=log,
        random_state=seed,
        reporter=RichReporter(enabled=not as_json),
    )
    if as_json:
        print_json({**run.summary, "files": {k: str(v) for k, v in run.paths.items()}})
    else:
        print_decision_summary(run.summary)
        for name, path in run.paths.items():
            out.print(f"{name}: {path}")
    ws.close()


def print_decision_summary(s: dict[str, Any], top: int = 10) -> None:
    solver = s["solver"]
    rows = [
        ["customers", s["customers"]],
        ["held out (control)", s["held_out"]],
        ["contacted", s["contacted"]],
        ["offers sent (slots)", s["slots_filled"]],
        ["expected value (as sent)", s["expected_value"]],
        ["optimised value (before exploration)", s["optimised_value"]],
        ["expected purchases", s["expected_purchases"]],
        ["solver", f"{solver.get('solver')} in {solver.get('seconds', 0):.2f} s"],
        ["upper bound (LP)", solver.get("upper_bound")],
        ["proven gap of the optimised value", f"{100 * solver.get('gap', 0):.3f}%"],
        ["explored share", f"{100 * s['explored_share']:.1f}%"],
        ["novel share", f"{100 * s['novel_share']:.1f}%"],
    ]
    out.print(table(f"Decisions of {s['campaign']} on {s['date']}", ["", "value"], rows))
    offers = sorted(s["offers"], key=lambda o: -o["sent"])[:top]
    out.print(
        table(
            f"Allocation per offer (top {top} of {len(s['offers'])})",
            ["offer", "brand", "sent", "expected units", "stock left", "price / unit"],
            [
                [
                    o["offer_id"],
                    o["brand"],
                    o["sent"],
                    o["expected_units"],
                    o["stock_left"],
                    o["price_per_unit"],
                ]
                for o in offers
            ],
        )
    )
    binding = [c for c in s["constraints"] if c["binding"]]
    if binding:
        out.print(
            table(
                f"Binding constraints ({len(binding)} of {len(s['constraints'])})",
                ["constraint", "used", "bound", "shadow price"],
                [
                    [c["label"] or c["name"], c["used"], c["bound"], c["shadow_price"]]
                    for c in binding[:top]
                ],
            )
        )
    excluded = [[k, v] for k, v in s["excluded"].items() if v]
    if excluded:
        out.print(table("Excluded", ["reason", "count"], excluded))
    if solver.get("unmet"):
        out.print(f"[yellow]Unmet after rounding:[/] {solver['unmet']}")


@command("explain")
def explain_cmd(
    customer_id: Annotated[str, typer.Argument(help="The customer to explain.")],
    date: Annotated[
        str | None, typer.Option(help="Day of the decisions (default: latest).")
    ] = None,
    campaign: CampaignOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why a customer got her offers: score parts, exclusions, binding constraints."""
    ws = open_workspace(workspace)
    spec = campaign_for(ws, campaign)
    day = parse_date(date, "--date") if date else _latest_decided(ws, spec)
    result = explain(ws, spec, customer_id, day)
    if as_json:
        print_json(result.to_dict())
        ws.close()
        return
    out.print(
        f"[bold]{customer_id}[/], campaign {result.campaign} on {result.date}"
        + (" (held out: control)" if result.held_out else "")
    )
    out.print(
        table(
            "Offers",
            ["offer", "brand", "status", "slot", "value", "shadow cost", "reduced", "why"],
            [
                [
                    e.offer_id,
                    e.brand,
                    e.status,
                    e.slot,
                    e.value,
                    e.shadow_cost,
                    e.reduced_value,
                    "; ".join(e.reasons) or _parts(e.parts),
                ]
                for e in result.offers
            ],
        )
    )
    binding = {b.constraint: b for e in result.offers for b in e.binding}
    if binding:
        out.print(
            table(
                "Binding constraints on these offers",
                ["constraint", "shadow price"],
                [[b.label or b.constraint, b.shadow_price] for b in binding.values()],
            )
        )
    ws.close()


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _parts(parts: dict[str, Any]) -> str:
    keys = ("p_response", "p_buy", "gross", "cost", "lever")
    return ", ".join(f"{k} {parts[k]:.4g}" for k in keys if k in parts)


def _latest_decided(ws: Workspace, spec: CampaignFile) -> datetime:
    found = sorted((ws.root / "decisions").glob(f"summary-{spec.campaign.name}-*.json"))
    if not found:
        raise ConfigError(
            f"no decisions of campaign {spec.campaign.name} yet; run 'nextbest decide' first"
        )
    return parse_date(found[-1].stem[-10:], "--date")
