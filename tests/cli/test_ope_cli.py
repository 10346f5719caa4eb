"""``nextbest ope`` as a user meets it, on a simulated workspace logged by the random policy.

One test runs the command in a real process; the others call the same command in-process
(typer's runner), which saves the interpreter start-up of each.

The random policy shows each of the day's ``n`` open sales in each slot with probability
``1 / n``, so the ``uniform`` candidate policy is the logging policy itself: its IPS and SNIPS
estimates must be the on-policy value exactly, as must ``logged``'s. The numbers are checked
against a computation from the simulator's own files, not through nextbest's reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import nextbest.cli.ope  # noqa: F401 - registers the command for the in-process runner
from nextbest.cli.main import app
from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.models import CalibratedBoostedClassifier, ModelStore
from nextbest.simulate import SimConfig, simulate
from tests.cli.test_cli import run

DAY = "2026-01-03"


@pytest.fixture(scope="module")
def sim_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ope_cli")
    simulate(SimConfig(n_customers=600, days=4, seed=3), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    ws.close()
    return root / "ws", root / "sim"


def _log(sim: Path) -> pd.DataFrame:
    """Decisions from the simulator's files, with ``clicked`` from its e-mail click events."""
    dec = pq.read_table(sim / "decisions.parquet").to_pandas()
    ev = pq.read_table(sim / "events.parquet").to_pandas()
    dec["clicked"] = dec.decision_id.isin(ev[ev.type == "email_click"].decision_id)
    dec["day"] = pd.to_datetime(dec.ts, utc=True).dt.strftime("%Y-%m-%d")
    return dec


def _ope(ws: Path, *args: str, process: bool = False) -> dict:
    if process:
        done = run("ope", *args, "--json", "-w", str(ws), cwd=ws)
        assert done.returncode == 0, done.stderr
        payload = json.loads(done.stdout)
    else:
        result = CliRunner().invoke(app, ["ope", *args, "--json", "-w", str(ws)])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
    payload["by"] = {r["estimator"]: r for r in payload["results"]}
    return payload


def test_logged_and_uniform_give_the_on_policy_value(sim_ws: tuple[Path, Path]) -> None:
    ws, sim = sim_ws
    dec = _log(sim)
    contexts = dec.groupby(["customer_id", "ts"]).ngroups
    on_policy = dec.clicked.sum() / contexts
    logged = _ope(ws, "--policy", "logged", process=True)
    assert logged["contexts"] == contexts and logged["rows"] == len(dec)
    assert logged["on_policy_value"] == pytest.approx(on_policy, rel=1e-12)
    assert logged["by"]["ips"]["estimate"] == pytest.approx(on_policy, rel=1e-12)
    assert logged["by"]["ips"]["relative"] == pytest.approx(1.0, rel=1e-12)
    assert logged["by"]["dm"]["estimate"] is None and "q_hat_pi" in logged["by"]["dm"]["note"]

    uniform = _ope(ws, "--policy", "uniform")
    for name in ("ips", "snips"):
        assert uniform["by"][name]["estimate"] == pytest.approx(on_policy, rel=1e-12), name
        assert uniform["by"][name]["effective_sample_size"] == pytest.approx(len(dec))
    dr = uniform["by"]["dr"]
    assert dr["lower"] <= on_policy <= dr["upper"]
    print(f"on-policy {on_policy:.5f}; uniform: DM {uniform['by']['dm']['estimate']:.5f}, "
          f"DR {dr['estimate']:.5f} [{dr['lower']:.5f}, {dr['upper']:.5f}]")  # fmt: skip


def test_model_policy_scores_each_day_with_the_stored_model(sim_ws: tuple[Path, Path]) -> None:
    """A stored model that rises with the discount: greedy = the day's top-3 discounts."""
    ws, sim = sim_ws
    rng = np.random.default_rng(0)
    discount = rng.uniform(0.1, 0.7, 4_000)
    X = pd.DataFrame({"offer_discount": discount})
    model = CalibratedBoostedClassifier(calibration="none", n_estimators=30, n_jobs=1)
    model.fit(X, (rng.random(4_000) < discount).astype(int))
    store = ModelStore(ws / "models")
    store.save("propensity", model, window={}, features=model.features_, metrics={},
               data_hash="test", params={"response": "click"})  # fmt: skip
    got = _ope(ws, "--policy", "model:1,explore=0.5", "--from", DAY, "--to", DAY)
    # independently: the day's candidates ranked by the model, ties by offer id
    dec = _log(sim)
    day = dec[dec.day == DAY]
    offers = pq.read_table(sim / "offers.parquet").to_pandas().set_index("offer_id")
    cand = np.array(sorted(day.offer_id.unique()))
    p = model.predict_proba(pd.DataFrame({"offer_discount": offers.loc[cand, "discount"]}))[:, 1]
    greedy = cand[np.lexsort((np.arange(len(cand)), -p))][:3]
    pi = 0.5 * (day.offer_id.to_numpy() == greedy[day.slot.to_numpy() - 1]) + 0.5 / len(cand)
    contexts = day.groupby(["customer_id", "ts"]).ngroups
    ips = float((pi / day.propensity * day.clicked).sum() / contexts)
    assert got["contexts"] == contexts and got["policy"] == "model:1,explore=0.5"
    assert got["by"]["ips"]["estimate"] == pytest.approx(ips, rel=1e-9)
    print(f"model,explore=0.5 on {DAY}: IPS {ips:.5f}, on-policy {got['on_policy_value']:.5f}")


def test_unknown_policy_names_the_known_ones(sim_ws: tuple[Path, Path]) -> None:
    ws, _ = sim_ws
    result = CliRunner().invoke(app, ["ope", "--policy", "best", "-w", str(ws)])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("Error: --policy: unknown policy 'best'; expected one of:"), line
    for known in ("uniform", "popular", "logged", "model[:VERSION][,explore=SHARE]"):
        assert known in line
    assert "Traceback" not in line


def test_popular_ranks_the_days_candidates_by_clicks_so_far(sim_ws: tuple[Path, Path]) -> None:
    ws, sim = sim_ws
    got = _ope(ws, "--policy", "popular", "--estimator", "ips")
    dec = _log(sim)
    ev = pq.read_table(sim / "events.parquet").to_pandas()
    clicks = ev[ev.type == "email_click"]
    clicks = clicks.assign(day=pd.to_datetime(clicks.ts, utc=True).dt.strftime("%Y-%m-%d"))
    total, weights = 0.0, []
    for day, rows in dec.groupby("day"):  # a loop over the four days
        cand = np.array(sorted(rows.offer_id.unique()))
        so_far = clicks[clicks.day < day].offer_id.value_counts()
        score = so_far.reindex(cand, fill_value=0).to_numpy()
        top = cand[np.lexsort((np.arange(len(cand)), -score))][:3]
        shown = rows.offer_id.to_numpy() == top[rows.slot.to_numpy() - 1]
        total += float((shown / rows.propensity * rows.clicked).sum())
        weights.append(shown / rows.propensity.to_numpy())
    expected = total / dec.groupby(["customer_id", "ts"]).ngroups
    assert [r["estimator"] for r in got["results"]] == ["ips"]
    assert got["by"]["ips"]["estimate"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    w = np.concatenate(weights)
    matched = int((w > 0).sum())
    assert got["by"]["ips"]["effective_sample_size"] == pytest.approx(w.sum() ** 2 / (w @ w))
    assert matched > 50 and expected > 0  # seed 3: the matched decisions include clicks
    print(f"popular: IPS {expected:.5f} on {matched} matched decisions, on-policy "
          f"{got['on_policy_value']:.5f}")  # fmt: skip
