"""``nextbest clv``: customer lifetime value from BG/NBD and Gamma-Gamma."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from nextbest.cli.console import out, print_json, table
from nextbest.cli.insight import parse_date
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command, open_workspace
from nextbest.errors import DataError
from nextbest.models.clv import BetaGeoModel, GammaGammaModel
from nextbest.models.clv_summary import ClvResult, fit_clv

__all__ = ["clv_cmd", "print_clv"]


@command("clv")
def clv_cmd(
    calibration_end: Annotated[
        str | None,
        typer.Option(
            "--calibration-end", help="Last day fitted on (default: the last purchase day)."
        ),
    ] = None,
    horizon: Annotated[int, typer.Option(help="Weeks ahead for purchases and value.")] = 52,
    discount_rate: Annotated[
        float, typer.Option("--discount-rate", help="Discount rate per week.")
    ] = 0.0,
    top: Annotated[int, typer.Option(help="Customers to list by lifetime value.")] = 10,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lifetime value: purchases (BG/NBD), spend per purchase (Gamma-Gamma), top customers."""
    ws = open_workspace(workspace)
    if calibration_end:
        end = parse_date(calibration_end, "--calibration-end")
    else:
        ev = ws.warehouse.table("events")
        last = ev.filter(ev.type == "purchase", ev.customer_id.notnull()).ts.max().execute()
        if last is None or pd.isna(last):
            raise DataError(
                "the warehouse has no purchase events to fit lifetime value on; expected events "
                "of type 'purchase' with a customer_id: ingest some first"
            )
        end = pd.Timestamp(last).floor("D").to_pydatetime()
    result = fit_clv(ws.warehouse, end, horizon, discount_rate)
    if as_json:
        print_json(result.to_dict(top=top))
        return
    print_clv(result, top)


def _parameters(title: str, model: BetaGeoModel | GammaGammaModel) -> Table:
    s = model.summary()
    return table(
        title,
        ["parameter", "estimate", "std error", "lower 95%", "upper 95%"],
        [
            [r.parameter, *(f"{v:.4f}" for v in (r.estimate, r.std_error, r.lower_95, r.upper_95))]
            for r in s.itertuples()
        ],
    )


def print_clv(result: ClvResult, top: int = 10) -> None:
    """Both models' parameters and the customers of highest lifetime value."""
    rows = result.customers
    out.print(
        f"Lifetime value as of {result.calibration_end:%Y-%m-%d}: {len(rows):,} customers, "
        f"{result.horizon_weeks} weeks ahead, discount {100 * result.discount_rate_per_week:g}% "
        "per week"
    )
    out.print(_parameters("BG/NBD (repeat purchases per week)", result.bgnbd))
    out.print(
        _parameters(
            f"Gamma-Gamma (spend per purchase; {result.gamma_gamma.n_customers_:,} repeat "
            "customers)",
            result.gamma_gamma,
        )
    )
    out.print(
        table(
            f"Top {min(top, len(rows))} customers by lifetime value",
            [
                "customer",
                "repeat purchases",
                "recency (wk)",
                "T (wk)",
                "P(alive)",
                "expected purchases",
                "value/purchase",
                "CLV",
            ],
            [
                [
                    str(r.customer_id),
                    int(r.frequency),
                    r.recency,
                    r.T,
                    f"{100 * r.probability_alive:.1f}%",
                    r.expected_purchases,
                    r.expected_average_value,
                    r.clv,
                ]
                for r in rows.head(top).itertuples()
            ],
        )
    )
