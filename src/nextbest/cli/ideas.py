"""``nextbest ideas``: the personalisation idea backlog, scored on the warehouse and ranked."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli.console import out, print_json, table
from nextbest.cli.decide import day_after_data
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command, open_workspace
from nextbest.measure.ideas import load_ideas, score_ideas

__all__ = ["ideas_cmd"]

_COLUMNS = ["rank", "idea", "audience", "usable", "privacy", "relevance", "feasible", "value"]
_COLUMNS += ["priority"]


@command("ideas")
def ideas_cmd(
    file: Annotated[
        Path | None,
        typer.Option("--file", help="The backlog (default: WORKSPACE/ideas.toml)."),
    ] = None,
    date: Annotated[
        str | None, typer.Option(help="Score as of this day (default: after the data).")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank the idea backlog: audience, privacy, relevance, feasibility and value."""
    ws = open_workspace(workspace)
    spec = load_ideas(file or ws.root / "ideas.toml")
    as_of = day_after_data(ws, date)
    scores = score_ideas(ws.warehouse, spec, as_of)
    if as_json:
        print_json({"as_of": f"{as_of:%Y-%m-%d}", "ideas": [asdict(s) for s in scores]})
        return
    out.print(
        table(
            f"Idea backlog as of {as_of:%Y-%m-%d}",
            _COLUMNS,
            [
                [
                    s.rank,
                    s.name,
                    f"{s.audience:,}",
                    f"{s.usable:,}",
                    f"{s.privacy:.0%}",
                    f"{s.relevance:.2f}x",
                    f"{s.feasibility}/5",
                    f"{s.value:,.0f}",
                    f"{s.priority:.2f}",
                ]
                for s in scores
            ],
        )
    )
    out.print(
        "value: usable x P(purchase in the horizon) x expected lift x margin per order - "
        "contact cost; privacy: share of the audience whose consents cover the idea's data and "
        "channel; relevance: the audience against the average member (1.00x = no better)"
    )
