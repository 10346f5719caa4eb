"""The CLI as a user meets it: a real process, its output and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    full_env.pop("NEXTBEST_WORKSPACE", None) if env is None else None
    return subprocess.run(
        [sys.executable, "-m", "nextbest", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def demo_in_process(directory: Path, *args: str) -> str:
    """``nextbest demo --dir DIRECTORY --no-serve --no-loop ARGS`` run in this process, for the
    tests that need its workspace, not its process; its output. (In a process of its own the
    3,000-member demo overran run()'s 300 s timeout when the machine was loaded.)"""
    from typer.testing import CliRunner

    import nextbest.cli.main as main_module

    main_module.register_commands()
    args = ("demo", "--dir", str(directory), "--no-serve", "--no-loop", *args)
    done = CliRunner().invoke(main_module.app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert done.exit_code == 0, done.output
    return done.stdout


def test_init_ingest_status_quarantine_round_trip(tmp_path: Path) -> None:
    assert run("init", "shop", cwd=tmp_path).returncode == 0
    assert (tmp_path / "shop" / "nextbest.toml").exists()
    (tmp_path / "customers.csv").write_text("customer_id,birth_year\nc1,1980\nc2,old\n")
    done = run("ingest", "customers.csv", "--workspace", "shop", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (load,) = json.loads(done.stdout)
    assert load["tables"]["customers"] == {"read": 2, "loaded": 1, "quarantined": 1, "skipped": 0}
    report_path = tmp_path / load["report"]
    assert report_path.exists()
    report = json.loads(report_path.read_text())
    assert report["quarantine_by_field"] == [
        {
            "table_name": "customers",
            "field": "birth_year",
            "expected": "a whole number between 1900 and 2030",
            "rows": 1,
        }
    ]
    # NEXTBEST_WORKSPACE stands in for --workspace.
    env = {"NEXTBEST_WORKSPACE": str(tmp_path / "shop")}
    again = run("ingest", "customers.csv", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "already loaded" in again.stdout
    status = json.loads(run("status", "--json", cwd=tmp_path, env=env).stdout)
    assert status["tables"]["customers"] == 1 and status["tables"]["quarantine"] == 1
    q = json.loads(run("quarantine", "--json", cwd=tmp_path, env=env).stdout)
    assert [(r["line"], r["field"], r["received"]) for r in q] == [(3, "birth_year", "'old'")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status"], "is not a nextbest workspace; create one with 'nextbest init"),
        (["ingest", "missing.csv", "--workspace", "shop"], "missing.csv: no such file or folder"),
        (
            ["ingest", "x.csv", "--format", "nope", "--workspace", "shop"],
            "unknown format 'nope': expected one of csv, parquet, jsonl",
        ),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run("init", "shop", cwd=tmp_path)
    (tmp_path / "x.csv").write_text("a\n1\n")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    cwd = empty if args == ["status"] else tmp_path
    done = run(*args, cwd=cwd)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Error: "), done.stderr
    assert message in " ".join(lines)
    assert "Traceback" not in done.stderr
    debug = run("--debug", *args, cwd=cwd)
    if debug.returncode == 1 and "Error:" not in debug.stderr:
        assert "Traceback" in debug.stderr


def test_unknown_key_in_configuration_is_named(tmp_path: Path) -> None:
    run("init", "shop", cwd=tmp_path)
    cfg = tmp_path / "shop" / "nextbest.toml"
    cfg.write_text(cfg.read_text().replace("[warehouse]", "[warehouse]\npth = 'x.duckdb'"))
    done = run("status", "--workspace", "shop", cwd=tmp_path)
    assert done.returncode == 1
    assert "unknown key 'warehouse.pth'" in done.stderr


def test_every_command_has_help(tmp_path: Path) -> None:
    """A real process lists the commands; each one's help is read in this process (a process
    each took 68 s of the suite)."""
    from typer.testing import CliRunner

    import nextbest.cli.main as main_module

    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = done.stdout
    main_module.register_commands()

    cli, runner = main_module.app, CliRunner()
    for command in (
        "init",
        "ingest",
        "status",
        "quarantine",
        "simulate",
        "demo",
        "features",
        "rfm",
        "kpi",
        "basket",
        "segment",
        "clv",
        "train",
        "models",
        "decide",
        "explain",
        "experiment",
        "roi",
        "ope",
        "ideas",
        "loop",
        "snapshot",
        "serve",
        "sync",
        "forget",
        "keys",
        "report",
    ):
        assert command in listed, command
        done = runner.invoke(cli, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert done.exit_code == 0, (command, done.output)
        assert "Usage" in done.output, command


def test_features_and_rfm_commands(tmp_path: Path) -> None:
    run("init", "shop", cwd=tmp_path)
    (tmp_path / "customers.csv").write_text("customer_id\nc1\nc2\n")
    (tmp_path / "events.csv").write_text(
        "event_id,customer_id,ts,type,amount\ne1,c1,2024-05-01T00:00:00Z,purchase,10\n"
    )
    run("ingest", "customers.csv", "events.csv", "-w", "shop", cwd=tmp_path)
    done = run("features", "--as-of", "2024-06-01", "-w", "shop", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["customers"] == 2 and (tmp_path / info["out"]).exists()
    scores = json.loads(
        run("rfm", "--as-of", "2024-06-01", "-w", "shop", "--json", cwd=tmp_path).stdout
    )
    # A lone buyer has percent rank 0 on every axis: code 111, segment lost.
    assert {s["segment"]: s["customers"] for s in scores["segments"]} == {
        "lost": 1,
        "inactive": 1,
    }
    bad = run("rfm", "--as-of", "June", "-w", "shop", cwd=tmp_path)
    assert bad.returncode == 1
    assert "--as-of: expected a date such as 2026-03-01, got 'June'" in bad.stderr


def test_features_command_writes_the_shares_beside_the_360(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    run("init", "shop", cwd=tmp_path)
    (tmp_path / "customers.csv").write_text("customer_id\nc1\nc2\n")
    (tmp_path / "products.csv").write_text(
        "product_id,category,brand\np1,shoes,Acme\np2,bags,Acme\n"
    )
    (tmp_path / "events.csv").write_text(
        "event_id,customer_id,ts,type,product_id,amount\n"
        "e1,c1,2024-05-01T00:00:00Z,purchase,p1,10\n"
        "e2,c1,2024-05-02T00:00:00Z,purchase,p1,10\n"
        "e3,c1,2024-05-03T00:00:00Z,purchase,p2,10\n"
        "e4,c2,2024-06-03T00:00:00Z,purchase,p2,10\n"  # after the date: not seen
    )
    run("ingest", "customers.csv", "products.csv", "events.csv", "-w", "shop", cwd=tmp_path)
    done = run("features", "--as-of", "2024-06-01", "-w", "shop", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["share_rows"] == {"category": 2, "brand": 1}
    assert info["shares_out"] == info["out"].replace(".parquet", "-shares.parquet")
    assert not any(c.startswith("share_category") for c in info["columns"])
    rows = pq.read_table(tmp_path / info["shares_out"]).to_pylist()
    assert [(r["level"], r["value"], r["lines"], round(r["share"], 4)) for r in rows] == [
        ("category", "shoes", 2, 0.6667),
        ("category", "bags", 1, 0.3333),
        ("brand", "Acme", 3, 1.0),
    ]
    assert {r["customer_id"] for r in rows} == {"c1"}
    (tmp_path / info["shares_out"]).unlink()
    plain = run("features", "--as-of", "2024-06-01", "-w", "shop", "--no-shares", cwd=tmp_path)
    assert plain.returncode == 0 and "shares" not in plain.stdout
    assert not (tmp_path / info["shares_out"]).exists()
    helped = run("features", "--help", cwd=tmp_path).stdout
    assert "share of purchase lines per category" in " ".join(helped.split())


def test_demo_loads_the_simulation_without_quarantine(tmp_path: Path) -> None:
    done = run(
        "demo",
        "--dir",
        "d",
        "--customers",
        "800",
        "--days",
        "6",
        "--no-serve",
        "--no-loop",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["quarantined"] == 0
    assert result["kpis"]["members"] == 800
    assert 0.1 < result["kpis"]["open_rate"] < 0.3
    assert "a time split needs at least 11 days" in result["skipped_models"]["propensity"]
    assert result["decisions"] is None and "no propensity model" in result["skipped_decisions"]
    # Cross-sell over member baskets: every simulated purchase has a product with a category.
    cross = result["cross_sell"]
    assert cross["members_who_bought"] == result["kpis"]["active_members"] > 0
    assert "not same-order baskets" in cross["baskets"]
    text = run(
        "demo",
        "--dir",
        "d",
        "--customers",
        "800",
        "--days",
        "6",
        "--no-serve",
        "--no-loop",
        cwd=tmp_path,
    )
    assert text.returncode == 0
    for heading in (
        "Loads",
        "Headline KPIs",
        "RFM segments",
        "Cross-sell between categories: bought by the same member in the period",
        "Email funnel",
        "Site funnel",
    ):
        assert heading in text.stdout
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    refused = run("demo", "--dir", "mine", "--no-serve", "--no-loop", cwd=tmp_path)
    assert refused.returncode == 1 and "was not made by 'nextbest demo'" in refused.stderr


def test_simulate_command_writes_tables_and_truth(tmp_path: Path) -> None:
    done = run(
        "simulate", "--customers", "300", "--days", "2", "--out", "sim", "--json", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["rows"]["customers"] == 300 and info["rows"]["offers"] == 80
    assert (tmp_path / "sim" / "events.parquet").exists()
    assert (tmp_path / "sim" / "truth" / "members.parquet").exists()
    bad = run("simulate", "--customers", "3", "--out", "sim2", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: simulation settings:")


def test_simulate_command_holds_members_out(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    args = ("--customers", "2000", "--days", "3", "--holdout-share", "0.5", "--json")
    done = run("simulate", *args, "--out", "sim", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    decisions = pq.read_table(tmp_path / "sim" / "decisions.parquet").to_pandas()
    emails = decisions.drop_duplicates(["customer_id", "ts"])
    held_out = emails["arm"] == "holdout"
    assert 0.45 < held_out.mean() < 0.55
    assert decisions.loc[decisions["arm"] == "holdout", "offer_id"].isna().all()


@pytest.mark.shared_data
def test_basket_command_on_groceries(tmp_path: Path) -> None:
    from tests.conftest import shared_data

    path = shared_data("groceries", "groceries.csv")
    run("init", "shop", cwd=tmp_path)
    run("ingest", str(path), "--format", "baskets", "-w", "shop", cwd=tmp_path)
    done = run(
        "basket",
        "--min-support",
        "0.01",
        "--min-confidence",
        "0.4",
        "-w",
        "shop",
        "--json",
        "--out",
        "rules.csv",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["baskets"], result["itemsets"], len(result["rules"])) == (9_835, 333, 62)
    best = result["rules"][0]
    assert best["antecedents"] == ["groceries:citrus fruit", "groceries:root vegetables"]
    assert best["consequents"] == ["groceries:other vegetables"]
    assert best["lift"] == pytest.approx(3.0296, abs=1e-4)
    assert (tmp_path / "rules.csv").read_text().count("\n") == 63


def test_train_and_models_commands(tmp_path: Path) -> None:
    demo = json.loads(
        demo_in_process(tmp_path / "d", "--customers", "3000", "--days", "16", "--json")
    )
    made = {m["kind"]: m for m in demo["models"]}
    assert set(made) == {"propensity", "affinity_brand", "clv"}
    skipped = demo["skipped_models"]
    # 16 days cannot hold a 90-day churn label: its snapshot falls before the first purchase
    assert skipped["churn"].startswith("no customer made a purchase before 2025-")
    assert made["propensity"]["window"]["holdout"] == "2026-01-10..2026-01-16"
    assert 0.5 < made["propensity"]["metrics"]["auc"] < 0.9  # quality: tests/models
    ws = str(tmp_path / "d" / "workspace")
    args = ("--holdout-days", "3", "--calibration-days", "2", "--json")
    again = run("train", "propensity", *args, "-w", ws, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    manifest = json.loads(again.stdout)["models"][0]
    assert manifest["version"] == 2 and manifest["window"]["holdout"] == "2026-01-14..2026-01-16"
    assert manifest["features"]["offer_category"] == "categorical"
    listed = json.loads(run("models", "list", "-w", ws, "--json", cwd=tmp_path).stdout)
    assert [(m["kind"], m["version"]) for m in listed] == [
        ("affinity_brand", 1),
        ("clv", 1),
        ("propensity", 1),
        ("propensity", 2),
    ]
    shown = run("models", "show", "propensity", "-w", ws, cwd=tmp_path)
    assert "propensity v2" in shown.stdout and "libraries: python" in shown.stdout
    missing = run("models", "show", "propensity", "--version", "9", "-w", ws, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: propensity has no version 9; versions: 1, 2")
    unknown = run("train", "churnn", "-w", ws, cwd=tmp_path)
    assert unknown.returncode == 1 and "unknown model kind 'churnn'" in unknown.stderr


def test_segment_command(tmp_path: Path) -> None:
    demo_in_process(tmp_path / "d", "--customers", "600", "--days", "10")
    ws = tmp_path / "d" / "workspace"
    cfg = ws / "nextbest.toml"
    cfg.write_text(
        cfg.read_text() + '\n[segmentations.pressure]\npurpose = "e-mail pressure"\n'
        'features = ["open_rate_30", "visits_30"]\nk = 3\n'
    )
    listed = json.loads(run("segment", "-w", str(ws), "--json", cwd=tmp_path).stdout)
    assert listed["pressure"]["features"] == ["open_rate_30", "visits_30"]
    assert "engagement" in listed  # the demo declares one of its own
    done = run("segment", "pressure", "-w", str(ws), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["k"] == 3 and sum(p["customers"] for p in result["profiles"]) > 500
    missing = run("segment", "winback", "-w", str(ws), cwd=tmp_path)
    assert missing.returncode == 1
    assert "segmentation 'winback' is not in nextbest.toml; known: engagement, pressure" in (
        missing.stderr
    )
