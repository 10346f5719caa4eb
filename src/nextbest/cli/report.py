"""``nextbest report``: the dashboard's pages in one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli.console import RichReporter, out, print_json
from nextbest.cli.insight import parse_date
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command
from nextbest.config import find_workspace
from nextbest.errors import ConfigError
from nextbest.serve.dashboard import Filters
from nextbest.serve.report import build_report

__all__ = ["report_cmd"]


@command("report")
def report_cmd(
    out_file: Annotated[
        Path, typer.Option("--out", help="The HTML file to write.", show_default=False)
    ],
    campaign: Annotated[
        str | None, typer.Option(help="Campaign (and experiment) the campaign pages show.")
    ] = None,
    date: Annotated[
        str | None, typer.Option("--date", help="Day the decision and campaign pages show.")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="First day of the period shown.")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Day after the period shown (exclusive).")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write every dashboard page into one HTML file that opens offline (charts embedded)."""
    if out_file.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out: expected a file name ending in .html, got {str(out_file)!r}")
    root = find_workspace(workspace)
    first = parse_date(start, "--from").date() if start else None
    after = parse_date(end, "--to").date() if end else None
    if first and after and after <= first:
        raise ConfigError(f"--to: expected a day after --from ({first}), got {after}")
    filters = Filters(start=first, end=after)
    day = parse_date(date, "--date").date() if date else None
    text = build_report(
        root,
        campaign=campaign,
        day=day,
        filters=filters,
        reporter=RichReporter(enabled=not as_json),
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text, encoding="utf-8")
    size = out_file.stat().st_size
    if as_json:
        print_json({"out": str(out_file), "bytes": size})
        return
    out.print(f"Report written to {out_file} ({size / 1e6:.1f} MB)")
