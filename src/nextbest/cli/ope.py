"""``nextbest ope``: estimate a candidate policy's value from the decision log, before launch."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from nextbest.cli.console import out, print_json, table
from nextbest.cli.decide import CampaignOpt, campaign_for
from nextbest.cli.insight import parse_date
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command, open_workspace
from nextbest.errors import ConfigError
from nextbest.measure.ope import ESTIMATORS
from nextbest.measure.ope_data import decision_log
from nextbest.measure.ope_policies import POLICY_KINDS, OpeReport, evaluate_policy, parse_policy
from nextbest.models.store import ModelStore

__all__ = ["ope_cmd", "print_ope_report"]

_DEFAULT = ("ips", "snips", "dm", "dr")


@command("ope")
def ope_cmd(
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Candidate policy: "
            + "; ".join(f"{k}: {v}" for k, v in POLICY_KINDS.items())
            + ". popular and model take ,explore=SHARE.",
        ),
    ],
    estimator: Annotated[
        str, typer.Option(help=f"{', '.join(ESTIMATORS)} or all (ips, snips, dm, dr).")
    ] = "all",
    reward: Annotated[str, typer.Option(help="Reward: click or purchase.")] = "click",
    date_from: Annotated[
        str | None, typer.Option("--from", help="First day of decisions (default: all).")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Last day of decisions, included.")
    ] = None,
    window_hours: Annotated[
        float, typer.Option(help="Hours after a decision in which its reward counts.")
    ] = 24.0,
    clip: Annotated[
        float | None, typer.Option(help="Clip importance weights at this value (ips, snips, dr).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the contexts.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed of the bootstrap.")] = 0,
    campaign: CampaignOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Off-policy evaluation: a policy's value estimated from the logged decisions."""
    spec = parse_policy(policy)
    names = _DEFAULT if estimator == "all" else (estimator,)
    if estimator != "all" and estimator not in ESTIMATORS:
        raise ConfigError(
            f"--estimator: expected all or one of {', '.join(ESTIMATORS)}, got {estimator!r}"
        )
    start = parse_date(date_from, "--from") if date_from else None
    end = parse_date(date_to, "--to") + timedelta(days=1) if date_to else None
    ws = open_workspace(workspace)
    log = decision_log(ws.warehouse, reward=reward, start=start, end=end, window_hours=window_hours)
    report = evaluate_policy(
        log,
        spec,
        names,
        warehouse=ws.warehouse,
        store=ModelStore(ws.models),
        campaign=campaign_for(ws, campaign) if spec.kind == "model" else None,
        n_bootstrap=bootstrap,
        random_state=seed,
        clip=clip,
    )
    ws.close()
    if as_json:
        print_json(report.to_dict())
    else:
        print_ope_report(report)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3f}%"


def print_ope_report(report: OpeReport) -> None:
    level = round(100 * (1 - report.alpha))
    rows = [
        [
            r.estimator,
            _pct(r.estimate),
            "-" if r.lower is None else f"{_pct(r.lower)} .. {_pct(r.upper)}",
            "-" if r.relative is None else f"{100 * (r.relative - 1):+.1f}%",
            "-" if r.effective_sample_size is None else f"{r.effective_sample_size:,.0f}",
        ]
        for r in report.results
    ]
    out.print(
        table(
            f"Policy {report.policy}: {report.reward}s per context ({report.contexts:,} contexts, "
            f"{report.rows:,} decisions)",
            ["estimator", "estimate", f"{level}% interval", "vs logged", "effective sample"],
            rows,
        )
    )
    out.print(
        f"Logged policy, on-policy: {_pct(report.on_policy_value)} {report.reward}s per context"
    )
    for r in report.results:
        if r.note:
            out.print(f"{r.estimator}: {r.note}")
