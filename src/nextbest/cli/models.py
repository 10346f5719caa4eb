"""``nextbest train`` and ``nextbest models``: train, store and inspect versioned models."""

from __future__ import annotations

from typing import Annotated

import typer

from nextbest.cli.console import RichReporter, out, print_json, table
from nextbest.cli.insight import parse_date
from nextbest.cli.main import JsonOpt, WorkspaceOpt, app, command, open_workspace
from nextbest.models.store import Manifest, ModelStore
from nextbest.models.training import KINDS, TrainOptions, TrainReport, train

__all__ = [
    "list_cmd",
    "models_app",
    "print_manifests",
    "print_train_report",
    "show_cmd",
    "train_cmd",
]

models_app = typer.Typer(help="The model store: trained models, their versions and metrics.")
app.add_typer(models_app, name="models")


@command("train")
def train_cmd(
    kind: Annotated[str, typer.Argument(help=f"What to train: {', '.join(KINDS)} or all.")] = "all",
    response: Annotated[
        str, typer.Option(help="Propensity response: click or purchase.")
    ] = "click",
    holdout_days: Annotated[int, typer.Option(help="Latest days held out for the metrics.")] = 7,
    calibration_days: Annotated[int, typer.Option(help="Days before those, to calibrate.")] = 3,
    train_days: Annotated[int, typer.Option(help="Most recent days to train on.")] = 28,
    calibration_end: Annotated[
        str | None, typer.Option(help="Lifetime value: last day fitted (default: last purchase).")
    ] = None,
    horizon: Annotated[int, typer.Option(help="Lifetime value horizon in weeks.")] = 52,
    experiment: Annotated[
        str | None, typer.Option(help="Uplift: experiment to learn from (default: largest).")
    ] = None,
    outcome: Annotated[
        str, typer.Option(help="Uplift outcome: purchase, visit, revenue, email_click.")
    ] = "purchase",
    window_days: Annotated[
        float, typer.Option(help="Uplift: days after assignment that count.")
    ] = 14.0,
    learner: Annotated[str, typer.Option(help="Uplift meta-learner: t, x or dr.")] = "x",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train models on the warehouse, keep them in the model store, print held-out metrics."""
    ws = open_workspace(workspace)
    options = TrainOptions(
        response=response,
        holdout_days=holdout_days,
        calibration_days=calibration_days,
        max_train_days=train_days,
        calibration_end=parse_date(calibration_end, "--calibration-end")
        if calibration_end
        else None,
        horizon_weeks=horizon,
        experiment=experiment,
        uplift_outcome=outcome,
        uplift_window_days=window_days,
        uplift_learner=learner,
        random_state=seed,
    )
    report = train(
        ws.warehouse,
        ModelStore(ws.models),
        kind,
        options,
        reporter=RichReporter(enabled=not as_json),
    )
    if as_json:
        print_json({"models": [m.to_dict() for m in report.made], "skipped": report.skipped})
        return
    print_train_report(report)


def print_train_report(report: TrainReport) -> None:
    for manifest in report.made:
        rows = [[name, f"{value:.4g}"] for name, value in manifest.metrics.items()]
        window = ", ".join(f"{k} {v}" for k, v in manifest.window.items())
        out.print(f"[bold]{manifest.name}[/] trained: {window}")
        out.print(table(f"{manifest.name}: metrics", ["metric", "value"], rows))
    for kind, why in report.skipped.items():
        out.print(f"[yellow]Skipped {kind}:[/] {why}")


def print_manifests(manifests: list[Manifest]) -> None:
    rows = [
        [
            m.kind,
            m.version,
            m.created_at,
            ", ".join(f"{k} {v}" for k, v in m.window.items()),
            ", ".join(f"{k} {v:.4g}" for k, v in list(m.metrics.items())[:4]),
        ]
        for m in manifests
    ]
    out.print(table("Models", ["kind", "version", "created", "window", "metrics"], rows))


@command("list", on=models_app)
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Every stored model version with its window and headline metrics."""
    manifests = ModelStore(open_workspace(workspace).models).list()
    if as_json:
        print_json([m.to_dict() for m in manifests])
    elif not manifests:
        out.print("No trained models yet: run 'nextbest train'.")
    else:
        print_manifests(manifests)


@command("show", on=models_app)
def show_cmd(
    kind: Annotated[str, typer.Argument(help="Model kind, e.g. propensity.")],
    version: Annotated[int | None, typer.Option(help="Version (default: latest).")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One model's manifest: window, features, metrics, library versions, data hash."""
    manifest = ModelStore(open_workspace(workspace).models).manifest(kind, version)
    if as_json:
        print_json(manifest.to_dict())
        return
    out.print(f"[bold]{manifest.name}[/] made {manifest.created_at}, data {manifest.data_hash}")
    out.print("window: " + ", ".join(f"{k} {v}" for k, v in manifest.window.items()))
    rows = [[name, f"{value:.4g}"] for name, value in manifest.metrics.items()]
    out.print(table("Metrics", ["metric", "value"], rows))
    out.print(f"features ({len(manifest.features)}): " + ", ".join(manifest.features))
    out.print("libraries: " + ", ".join(f"{k} {v}" for k, v in manifest.libraries.items()))
