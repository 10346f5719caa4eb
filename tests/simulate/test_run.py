"""simulate(): deterministic files, realistic aggregate rates, the figures its docstring quotes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.simulate import SimConfig, simulate
from nextbest.simulate import run as run_module
from tests.simulate.conftest import Run


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, file_format: str) -> None:
    config = SimConfig(
        n_customers=2_000, days=5, seed=3, holdout_share=0.2, file_format=file_format
    )
    simulate(config, tmp_path / "a")
    simulate(config, tmp_path / "b")
    simulate(config.model_copy(update={"seed": 4}), tmp_path / "c")
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert a == b
    assert len(a) == 5 + 7  # five tables, six truth tables and summary.json
    for name in ("customers", "offers", "decisions", "events"):
        assert a[f"{name}.{file_format}"] != c[f"{name}.{file_format}"], name


def _counts(run: Run) -> dict[str, int]:
    return run["events"].type.value_counts().to_dict()


def test_aggregate_rates_are_in_the_published_bands(run: Run) -> None:
    counts = _counts(run)
    sent = counts["email_sent"]
    open_rate, click_rate = counts["email_open"] / sent, counts["email_click"] / sent
    assert 0.15 <= open_rate <= 0.25
    assert 0.01 <= click_rate <= 0.03
    assert 0.05 <= click_rate / open_rate <= 0.15
    assert 0.001 <= counts["unsubscribe"] / sent <= 0.003
    assert 0.015 <= counts["purchase"] / counts["visit"] <= 0.04


def test_observed_rates_match_the_rates_expected_under_the_truth(run: Run) -> None:
    counts, truth = _counts(run), run.summary.truth
    sent = counts["email_sent"]
    for event, base, rate in (
        ("email_open", sent, "expected_open_rate"),
        ("email_click", sent, "expected_click_rate"),
        ("unsubscribe", sent, "expected_unsubscribe_rate"),
    ):
        p = truth[rate]
        assert abs(counts[event] / base - p) < 4 * np.sqrt(p * (1 - p) / base), event
    intents = counts["purchase"] + counts.get("waitlist", 0)
    p = truth["expected_visit_conversion"]
    assert abs(intents / counts["visit"] - p) < 4 * np.sqrt(p / counts["visit"])


def test_the_module_docstring_quotes_the_measured_rates(run: Run) -> None:
    """The README quotes run.py's docstring: keep its figures those of the seed-7 run."""
    doc = " ".join((run_module.__doc__ or "").split())
    quoted = dict(re.findall(r"([a-z-]+(?: [a-z-]+)?) ([0-9.]+)%", doc))
    rates = run.summary.rates
    measured = {
        "open rate": rates["open_rate"],
        "click rate": rates["click_rate"],
        "click-to-open": rates["click_to_open"],
        "unsubscribes": rates["unsubscribe_rate"],
        "visit conversion": rates["visit_conversion"],
    }
    for name, value in measured.items():
        shown = quoted[name]
        decimals = len(shown.partition(".")[2])
        assert float(shown) == round(100 * value, decimals), (name, shown, value)


def test_summary_json_has_settings_rows_rates_and_truth(run: Run) -> None:
    body = json.loads((run.out / "truth" / "summary.json").read_text())
    assert body["config"]["n_customers"] == 20_000 and body["config"]["seed"] == 7
    assert body["rows"]["customers"] == 20_000 and body["rows"]["offers"] == 30 * 40
    assert body["rows"]["events"] == len(run["events"])
    assert body["rates"] == pytest.approx(run.summary.rates)
    shares = [body["truth"][f"share_{t}"] for t in ("sure_thing", "persuadable")]
    assert shares == pytest.approx([0.12, 0.25], abs=0.01)


def test_csv_output_meets_the_ingestion_contract(tmp_path: Path) -> None:
    simulate(SimConfig(n_customers=1_000, days=4, seed=2, file_format="csv"), tmp_path / "out")
    header = (tmp_path / "out" / "events.csv").read_text().splitlines()[:2]
    assert header[0].startswith('"event_id","customer_id","ts","type"')
    assert re.search(r'"2026-01-01T\d\d:\d\d:\d\d(\.\d+)?Z"', header[1])
    ws = Workspace.init(tmp_path / "ws")
    results = ingest(ws.warehouse, [tmp_path / "out"], ws.config.ingest)
    assert [r.status for r in results] == ["loaded"] * 5
    assert sum(r.total("quarantined") for r in results) == 0
    assert ws.warehouse.count("customers") == 1_000
    ws.close()


def test_a_tiny_run_with_empty_days_works(tmp_path: Path) -> None:
    """Regression: days without a referral, a return or a click still write their tables."""
    summary = simulate(SimConfig(n_customers=10, days=3, seed=1), tmp_path)
    assert summary.rows["customers"] == 10
    assert summary.rows["decisions"] % 3 == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_customers": 5}, "n_customers\n  Input should be greater than or equal to 10"),
        ({"days": 1000}, "days\n  Input should be less than or equal to 999"),
        ({"slots_per_email": 5, "sales_per_day": 4}, "slots_per_email must be <= sales_per_day"),
        ({"holdout_share": 1.0}, "holdout_share\n  Input should be less than 1"),
        ({"policy": "greedy"}, "policy\n  Input should be 'random' or 'popular'"),
        ({"n_customer": 10}, "n_customer\n  Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        SimConfig(**settings)  # type: ignore[arg-type]
