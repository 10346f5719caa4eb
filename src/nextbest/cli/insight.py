"""``nextbest features`` and ``nextbest rfm``: the customer 360 and its RFM view."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from nextbest.cli.console import out, print_json, table
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command, open_workspace
from nextbest.errors import ConfigError
from nextbest.features import (
    SEGMENTS,
    SHARE_LEVELS,
    customer_features,
    preference_shares,
    rfm,
    rfm_migration,
)
from nextbest.measure.funnels import FUNNELS, acquisition_profitability, funnel, kpis_by
from nextbest.models import (
    SegmentationResult,
    association_rules,
    cross_sell_lift,
    frequent_itemsets,
    run_segmentation,
    warehouse_baskets,
)

__all__ = ["basket_cmd", "features_cmd", "kpi_cmd", "rfm_cmd", "segment_cmd"]


def parse_date(text: str, option: str) -> datetime:
    """A date or timestamp from the command line; dates are midnight UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option}: expected a date such as 2026-03-01, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@command("features")
def features_cmd(
    as_of: Annotated[str, typer.Option("--as-of", help="Date: features use events before it.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Parquet file (default: in the workspace).")
    ] = None,
    shares: Annotated[
        bool,
        typer.Option(
            "--shares/--no-shares",
            help="Also write each customer's share of purchase lines per category and per "
            "brand (365 days) as a long table (customer_id, level, value, lines, share) beside "
            "the 360: <out>-shares.parquet.",
        ),
    ] = True,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the customer 360 as of a date: one row per customer (and the category and brand
    shares beside it, unless --no-shares)."""
    ws = open_workspace(workspace)
    when = parse_date(as_of, "--as-of")
    path = out_file or ws.root / "features" / f"customer360-{when:%Y-%m-%d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = customer_features(ws.warehouse, when).to_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(data, path)
    summary: dict[str, object] = {
        "as_of": when.isoformat(),
        "customers": data.num_rows,
        "columns": data.column_names,
        "out": str(path),
    }
    if shares:
        shares_path = path.with_name(f"{path.stem}-shares.parquet")
        long = pa.concat_tables(
            [preference_shares(ws.warehouse, when, level).to_pyarrow() for level in SHARE_LEVELS]
        )
        pq.write_table(long, shares_path)
        levels = long.column("level").to_pylist()
        summary["shares_out"] = str(shares_path)
        summary["share_rows"] = {level: levels.count(level) for level in SHARE_LEVELS}
    if as_json:
        print_json(summary)
        return
    out.print(
        f"Customer 360 as of {when:%Y-%m-%d}: {data.num_rows:,} customers x "
        f"{data.num_columns} columns -> {path}"
    )
    if shares:
        rows = summary["share_rows"]
        assert isinstance(rows, dict)
        out.print(
            f"Category and brand shares: {rows['category']:,} customer-category and "
            f"{rows['brand']:,} customer-brand rows -> {summary['shares_out']}"
        )


@command("rfm")
def rfm_cmd(
    as_of: Annotated[str, typer.Option("--as-of", help="Date of the scores.")],
    compare: Annotated[
        str | None, typer.Option(help="An earlier date: show migration from it.")
    ] = None,
    top: Annotated[int, typer.Option(help="Customers to list by value.")] = 10,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """RFM scores and segments, the most valuable customers, and migration between dates."""
    ws = open_workspace(workspace)
    when = parse_date(as_of, "--as-of")
    scores = rfm(ws.warehouse, when)
    by = (
        scores.group_by("segment")
        .aggregate(customers=scores.count(), monetary=scores.monetary.sum())
        .to_pyarrow()
        .to_pylist()
    )
    order = {s: i for i, s in enumerate(SEGMENTS)}
    by.sort(key=lambda x: order[x["segment"]])
    best = scores.limit(top).to_pyarrow().to_pylist()
    moves = None
    if compare:
        moves = rfm_migration(ws.warehouse, parse_date(compare, "--compare"), when)
        moves = moves.to_pyarrow().to_pylist()
    if as_json:
        print_json({"segments": by, "top": best, "migration": moves})
        return
    out.print(
        table(
            f"RFM segments as of {when:%Y-%m-%d}",
            ["segment", "customers", "monetary"],
            [[x["segment"], x["customers"], float(x["monetary"])] for x in by],
        )
    )
    out.print(
        table(
            "Most valuable customers",
            ["rank", "customer", "code", "segment", "monetary"],
            [
                [x["value_rank"], x["customer_id"], x["code"], x["segment"], float(x["monetary"])]
                for x in best
            ],
        )
    )
    if moves:
        present = [
            s
            for s in SEGMENTS
            if any(m["from_segment"] == s or m["to_segment"] == s for m in moves)
        ]
        grid = {(m["from_segment"], m["to_segment"]): m["customers"] for m in moves}
        out.print(
            table(
                f"Migration {compare} -> {as_of} (rows: from, columns: to)",
                ["from", *present],
                [[a, *[grid.get((a, b), 0) for b in present]] for a in present],
            )
        )


@command("kpi")
def kpi_cmd(
    start: Annotated[str | None, typer.Option("--from", help="First day (inclusive).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last day (exclusive).")] = None,
    by: Annotated[
        str, typer.Option(help="Group by segment, channel, region or acquisition_channel.")
    ] = "acquisition_channel",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """KPIs by group, the e-mail and site funnels, and acquisition-channel profitability."""
    ws = open_workspace(workspace)
    lo = parse_date(start, "--from") if start else None
    hi = parse_date(end, "--to") if end else None
    rows = kpis_by(ws.warehouse, by, lo, hi).to_pyarrow().to_pylist()
    funnels = {name: funnel(ws.warehouse, name, lo, hi) for name in FUNNELS}
    acquisition = acquisition_profitability(ws.warehouse, lo, hi).to_pyarrow().to_pylist()
    if as_json:
        print_json(
            {
                "by": by,
                "kpis": rows,
                "funnels": {k: [asdict(s) for s in v] for k, v in funnels.items()},
                "acquisition": acquisition,
            }
        )
        return
    print_kpi_tables(by, rows, funnels, acquisition)


def print_kpi_tables(by: str, rows: list[dict], funnels: dict, acquisition: list[dict]) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    out.print(
        table(
            f"KPIs by {by}",
            [
                by,
                "members",
                "orders",
                "revenue/member",
                "AOV",
                "conversion",
                "open",
                "click",
                "unsub",
            ],
            [
                [
                    r["group"],
                    r["members"],
                    r["orders"],
                    r["revenue_per_member"],
                    r["aov"],
                    pct(r["conversion"]),
                    pct(r["open_rate"]),
                    pct(r["click_rate"]),
                    pct(r["unsubscribe_rate"]),
                ]
                for r in rows
            ],
        )
    )
    for name, steps in funnels.items():
        out.print(
            table(
                f"{name.capitalize()} funnel (member-days)",
                ["step", "count", "of start", "drop-off"],
                [[s.step, s.count, pct(s.share_of_start), pct(s.drop_off)] for s in steps],
            )
        )
    out.print(
        table(
            "Acquisition channels",
            ["channel", "members", "revenue/member", "margin/member", "referrals/member"],
            [
                [
                    a["acquisition_channel"],
                    a["members"],
                    a["revenue_per_member"],
                    a["margin_per_member"],
                    a["referrals_per_member"],
                ]
                for a in acquisition
            ],
        )
    )


@command("basket")
def basket_cmd(
    min_support: Annotated[float, typer.Option(help="Minimum share of baskets.")] = 0.01,
    min_confidence: Annotated[float, typer.Option(help="Minimum confidence of a rule.")] = 0.3,
    min_lift: Annotated[float | None, typer.Option(help="Minimum lift of a rule.")] = None,
    max_len: Annotated[int | None, typer.Option(help="Largest itemset.")] = None,
    level: Annotated[str, typer.Option(help="product, category or brand.")] = "product",
    top: Annotated[int, typer.Option(help="Rules to print.")] = 20,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write all rules (CSV).")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Frequent itemsets and association rules with support, confidence, lift and more."""
    ws = open_workspace(workspace)
    baskets = warehouse_baskets(ws.warehouse, level)
    itemsets = frequent_itemsets(baskets, min_support, max_len)
    rules = association_rules(itemsets, min_confidence, min_lift)
    printable = rules.assign(
        antecedents=rules.antecedents.map(lambda s: sorted(map(str, s))),
        consequents=rules.consequents.map(lambda s: sorted(map(str, s))),
    )
    if out_file is not None:
        printable.assign(
            antecedents=printable.antecedents.str.join(" & "),
            consequents=printable.consequents.str.join(" & "),
        ).to_csv(out_file, index=False)
    pairs = cross_sell_lift(baskets)
    pairs = pairs[pairs.baskets >= max(1.0, min_support * baskets.n_baskets)]
    if as_json:
        print_json(
            {
                "baskets": baskets.n_baskets,
                "itemsets": len(itemsets),
                "rules": printable.replace([float("inf")], None).to_dict("records"),
                "cross_sell": pairs.head(top).to_dict("records"),
            }
        )
        return
    out.print(
        f"{baskets.n_baskets:,} baskets over {len(baskets.items):,} {level}s: "
        f"{len(itemsets):,} frequent itemsets, {len(rules):,} rules"
    )
    out.print(
        table(
            f"Top rules by lift ({level})",
            ["if bought", "then", "support", "confidence", "lift", "leverage"],
            [
                [
                    " & ".join(r.antecedents),
                    " & ".join(r.consequents),
                    r.support,
                    r.confidence,
                    r.lift,
                    r.leverage,
                ]
                for r in printable.head(top).itertuples()
            ],
        )
    )
    out.print(
        table(
            f"Cross-sell lift between {level}s (pairs in at least min-support of baskets)",
            ["bought", "also buys", "baskets", "P(B|A)", "P(B)", "lift"],
            [
                [str(p.a), str(p.b), int(p.baskets), p.p_b_given_a, p.p_b, p.lift]
                for p in pairs.head(top).itertuples()
            ],
        )
    )


@command("segment")
def segment_cmd(
    name: Annotated[str | None, typer.Argument(help="A segmentation in nextbest.toml.")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Date (default: the day after the last event).")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cluster customers for a purpose declared in nextbest.toml, and profile the segments."""
    ws = open_workspace(workspace)
    specs = ws.config.segmentations
    if name is None:
        listing = {n: s.model_dump() for n, s in specs.items()}
        if as_json:
            print_json(listing)
        elif not specs:
            out.print(
                "No segmentations in nextbest.toml yet; declare one under "
                "[segmentations.NAME] (see src/nextbest/models/segmentation.py)."
            )
        else:
            out.print(
                table(
                    "Segmentations",
                    ["name", "purpose", "features", "method"],
                    [[n, s.purpose, ", ".join(s.features), s.method] for n, s in specs.items()],
                )
            )
        return
    if name not in specs:
        known = ", ".join(specs) or "none declared"
        raise ConfigError(f"segmentation {name!r} is not in nextbest.toml; known: {known}")
    if as_of:
        when = parse_date(as_of, "--as-of")
    else:
        last = ws.warehouse.table("events").ts.max().execute()
        if last is None:
            raise ConfigError("the warehouse has no events to segment on; ingest some first")
        when = (last + pd.Timedelta(days=1)).floor("D").to_pydatetime()
    result = run_segmentation(ws.warehouse, name, specs[name], when)
    path = ws.root / "segments" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    result.labels.to_parquet(path, index=False)
    if as_json:
        print_json(
            {
                "name": name,
                "purpose": result.purpose,
                "as_of": when.isoformat(),
                "k": result.k,
                "scores": result.scores,
                "out": str(path),
                "profiles": result.profiles.to_dict("records"),
            }
        )
        return
    print_segments(result, path)


def print_segments(result: SegmentationResult, path: Path | None = None) -> None:
    out.print(
        f"Segmentation [bold]{result.name}[/]: {result.purpose} (as of "
        f"{result.as_of:%Y-%m-%d}, k = {result.k})"
    )
    p = result.profiles
    out.print(
        table(
            "Segment profiles",
            ["segment", "customers", "share", "value", "what sets it apart"],
            [
                [int(r.segment), int(r.customers), f"{100 * r.share:.1f}%", r.value, r.apart]
                for r in p.itertuples()
            ],
        )
    )
    if path is not None:
        out.print(f"  segment of every customer: {path}")
