"""``nextbest loop``: policies on the simulator day after day, each learning, against the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from nextbest.cli.console import RichReporter, err, out, print_json, table
from nextbest.cli.main import JsonOpt, WorkspaceOpt, command
from nextbest.config import CONFIG_FILE, find_workspace, validation_message
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError
from nextbest.measure.loop import LoopConfig, LoopResult, run_loop, save_loop_result
from nextbest.measure.loop_policies import LOOP_POLICIES

__all__ = ["loop_cmd", "loop_config", "print_loop_result"]


def loop_config(**settings: Any) -> LoopConfig:
    """A validated :class:`LoopConfig`; bad settings are a ConfigError naming the option."""
    try:
        return LoopConfig(**{k: v for k, v in settings.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(validation_message("loop settings", exc)) from None


@command("loop")
def loop_cmd(
    days: Annotated[int, typer.Option(help="Days to run every policy.")] = 14,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="A policy to run (repeat the option for several; default: all). "
            + "; ".join(f"{k}: {v}" for k, v in LOOP_POLICIES.items())
            + ".",
            show_default=False,
        ),
    ] = None,
    customers: Annotated[int, typer.Option(help="Members of the simulated retailer.")] = 3_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same results.")] = 7,
    retrain_every: Annotated[
        int, typer.Option(help="Model-based policies retrain after every this many days.")
    ] = 3,
    warmup: Annotated[
        int, typer.Option(help="Days of the random policy before the models take over (>= 3).")
    ] = 4,
    holdout: Annotated[
        float, typer.Option(help="Share of members held out of every policy's e-mail.")
    ] = 0.1,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Keep the policies' workspaces here (default: a temporary folder)."
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run policies on the simulator, each retraining from its own logs, against the truth.

    In a workspace (given, $NEXTBEST_WORKSPACE or the current folder) the result is kept in
    its loop/ folder, where the dashboard's closed-loop page reads it.
    """
    keep = _workspace_for_result(workspace)
    config = loop_config(
        days=days,
        policies=tuple(policy) if policy else None,
        customers=customers,
        seed=seed,
        retrain_every=retrain_every,
        warmup=warmup,
        holdout=holdout,
        workdir=directory,
    )
    result = run_loop(config, reporter=RichReporter(enabled=not as_json))
    saved = save_loop_result(result, keep) if keep is not None else None
    if as_json:
        print_json(result.to_dict())
    else:
        print_loop_result(result)
    if saved is not None:
        (err if as_json else out).print(f"result: {saved}", soft_wrap=True)


def _workspace_for_result(given: Path | None) -> Path | None:
    """Where to keep the result: the workspace given (it must be one), else the one found
    ($NEXTBEST_WORKSPACE or the current folder) if it is a workspace, else nowhere."""
    if given is not None:
        return Workspace.open(given).root  # not a workspace: the usual error, before the run
    found = find_workspace(None)
    return found if (found / CONFIG_FILE).exists() else None


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_loop_result(result: LoopResult) -> None:
    """The totals per policy against the truth, and who won by how much."""
    c = result.config
    rows = [
        [
            t.policy,
            t.profit,
            _ratio(t.margin_vs_random),
            f"{t.conversions:.1f}±{t.conversions_se:.1f} ({t.realised_conversions})",
            t.incremental,
            f"{t.unsubscribes:.1f} ({t.realised_unsubscribes})",
            _pct(t.novelty_share),
            _pct(t.new_designer_share),
        ]
        for t in result.totals
    ]
    shown = table(
        f"Closed loop: {c.customers:,} members x {c.days} days, seed {c.seed} (random "
        f"warm-up {c.warmup} days, retrained every {c.retrain_every}), against the truth",
        [
            "policy",
            "true profit",
            "x random",
            "conversions",
            "incremental",
            "unsubscribes",
            "novelty",
            "new designers",
        ],
        rows,
    )
    shown.columns[0].min_width = max(len(t.policy) for t in result.totals)  # names in full
    out.print(shown)
    out.print(
        "true profit: P(open) P(click | slot) P(buy | click) x margin - unit cost, over the "
        "slots sent; x random: the same before unit costs (the true margin), against random's; "
        "conversions: expected purchases through the e-mails ± standard error (realised: "
        "purchase intents linked to them); incremental: the true effect of the e-mails on "
        "buying; unsubscribes: expected (realised); novelty: slots showing a brand new to the "
        "member."
    )
    fallback = [d.day for d in result.days if "no uplift model" in d.model]
    if fallback:
        out.print(
            f"[yellow]uplift, days {min(fallback)} to {max(fallback)}: its logs could not "
            "support an uplift model yet (too few purchases in the holdout), so it decided on "
            "profit.[/]"
        )
    out.print(f"[bold]{result.verdict}[/] ({result.seconds:.0f} s)")
