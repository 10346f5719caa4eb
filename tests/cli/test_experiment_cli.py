"""``nextbest experiment`` and ``nextbest roi``: the same numbers as the library, errors named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nextbest.cli.experiment  # noqa: F401 - registers the commands on the app
from nextbest.cli.main import app
from nextbest.data.workspace import Workspace
from nextbest.measure import (
    ExperimentAnalysis,
    analyze_experiment,
    campaign_roi,
    plan_experiment,
)
from tests.measure.test_experiment import hillstrom_root, holdout_sim_root
from tests.measure.test_roi import _campaign

runner = CliRunner()


def _flat(value: object, key: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {
            k: v for name, item in value.items() for k, v in _flat(item, f"{key}.{name}").items()
        }
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{key}.{i}").items()}
    return {key: value}


def same(got: dict, want: dict) -> None:
    """Equal up to the last bits of a float (the warehouse sums in parallel)."""
    a, b = _flat(got), _flat(json.loads(json.dumps(want)))
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, float):
            assert v == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
        else:
            assert v == b[k], k


@pytest.fixture(scope="module")
def hillstrom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hillstrom_root(tmp_path_factory) / "ws"


def _library(root: Path, **kwargs: Any) -> ExperimentAnalysis:
    ws = Workspace.open(root)
    try:
        return analyze_experiment(ws.warehouse, **kwargs)
    finally:
        ws.close()


@pytest.mark.shared_data
def test_analyze_json_gives_the_library_numbers(hillstrom: Path) -> None:
    args = [
        "experiment",
        "analyze",
        "hillstrom-2008",
        "-m",
        "visit",
        "-m",
        "revenue",
        "--sequential",
        "--json",
        "--workspace",
        str(hillstrom),
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    got = json.loads(done.stdout)
    want = _library(hillstrom, name="hillstrom-2008", metrics=["visit", "revenue"], sequential=True)
    same(got, want.to_dict())
    visit = {m["metric"]: m for m in got["metrics"]}["visit"]
    mens = {c["arm"]: c for c in visit["comparisons"]}["Mens E-Mail"]
    assert round(mens["lift"]["absolute"]["value"], 4) == 0.0766
    assert got["sample_ratio"]["mismatch"] is False


@pytest.mark.shared_data
def test_analyze_prints_tables_and_lists_experiments(hillstrom: Path) -> None:
    done = runner.invoke(
        app,
        [
            "experiment",
            "analyze",
            "hillstrom-2008",
            "-m",
            "conversion",
            "--workspace",
            str(hillstrom),
        ],
    )
    assert done.exit_code == 0, done.output
    assert "Mens E-Mail" in done.stdout and "1.25%" in done.stdout and "0.57%" in done.stdout
    assert "CUPED not applied" in done.stdout and "no mismatch" in done.stdout
    listed = runner.invoke(app, ["experiment", "list", "--json", "--workspace", str(hillstrom)])
    assert json.loads(listed.stdout) == [
        {"experiment": "hillstrom-2008", "decisions": 64_000, "customers": 64_000, "arms": 3}
    ]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["nope"],
            "Error: unknown experiment 'nope'; expected one of the experiments logged in "
            "decisions: hillstrom-2008 (64,000 customers, 3 arms)",
        ),
        (
            ["hillstrom-2008", "--metric", "spend"],
            "Error: unknown metric 'spend'; expected one of conversion, revenue, margin, visit, "
            "open, click",
        ),
    ],
)
def test_analyze_errors_are_one_line(hillstrom: Path, args: list[str], message: str) -> None:
    done = runner.invoke(app, ["experiment", "analyze", *args, "--workspace", str(hillstrom)])
    assert done.exit_code == 1
    assert done.stderr.strip() == message


def test_plan_gives_the_library_figures_through_the_real_command(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nextbest",
            "experiment",
            "plan",
            "--baseline",
            "0.1",
            "--mde",
            "0.1",
            "--relative",
            "--arms",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = plan_experiment(0.1, mde=0.1, relative=True, arms=3)
    assert (got["n_per_arm"], got["total"]) == (want.n_per_arm, 3 * want.n_per_arm)
    inverse = runner.invoke(app, ["experiment", "plan", "--baseline", "0.1", "--n", "14751"])
    assert inverse.exit_code == 0 and "10.00%" in inverse.stdout  # the relative effect
    both = runner.invoke(app, ["experiment", "plan", "--baseline", "0.1", "--n", "5", "--mde", "1"])
    assert both.exit_code == 1
    assert both.stderr.strip() == (
        "Error: give either the minimum detectable effect (mde) or n per arm, not both"
    )


def test_roi_json_gives_the_library_numbers(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = holdout_sim_root(tmp_path_factory) / "ws"
    path = _campaign(tmp_path / "c.toml", {"S003-07": 2.0})
    done = runner.invoke(app, ["roi", "--campaign", str(path), "--json", "--workspace", str(root)])
    assert done.exit_code == 0, done.output
    ws = Workspace.open(root)
    try:
        want = campaign_roi(ws.warehouse, path).to_dict()
    finally:
        ws.close()
    same(json.loads(done.stdout), want)
    text = runner.invoke(app, ["roi", "--campaign", str(path), "--workspace", str(root)])
    assert text.exit_code == 0 and "Verdict: met; expected value: met" in text.stdout
