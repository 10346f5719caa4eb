"""The closed loop on the simulator: learning policies against the ground truth.

One seeded run of 2,000 members over 6 days (4 days of random warm-up, a retrain after the
first day decided) with the random, popularity, greedy, optimised and uplift policies; and a
larger run of the two simulator policies (cheap: nothing to learn) for the realised outcomes.
The true value of the optimised policy's logged decisions is recomputed here from the
response model, independently of the loop's own accounting.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nextbest.errors import ConfigError, DataError
from nextbest.measure.loop import (
    LoopConfig,
    LoopResult,
    latest_loop_result,
    run_loop,
    save_loop_result,
)
from nextbest.simulate import SimConfig, build_world
from nextbest.simulate import response as rm
from nextbest.simulate import tables as sim_tables

pytestmark = pytest.mark.slow

WARMUP = 4


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> LoopResult:
    config = LoopConfig(
        days=6,
        customers=2_000,
        policies=("random", "popular", "greedy", "optimised", "uplift"),
        warmup=WARMUP,
        retrain_every=1,
        seed=3,
        workdir=tmp_path_factory.mktemp("loop") / "run",
    )
    return run_loop(config)


def _by_policy(totals: list) -> dict:
    return {t.policy: t for t in totals}


def test_optimised_beats_random_and_popularity_on_true_profit(loop: LoopResult) -> None:
    # after the warm-up, where the policies differ: the optimised policy's slots earn at least
    # 1.3x random's true margin, and its true profit gains as much net of unit costs
    after = _by_policy(loop.totals_from(WARMUP))
    opt, rnd, pop = after["optimised"], after["random"], after["popular"]
    print({t.policy: (round(t.profit, 2), round(t.margin, 2)) for t in after.values()})
    assert rnd.margin > 0
    assert opt.margin >= 1.3 * rnd.margin
    assert opt.profit - rnd.profit >= 0.3 * rnd.margin
    assert opt.profit > pop.profit + 0.3 * rnd.margin
    # over the whole run (the warm-up days are the same for all)
    total = _by_policy(loop.totals)
    assert total["optimised"].profit > max(total["random"].profit, total["popular"].profit)
    assert loop.winner not in ("random", "popular")
    assert loop.verdict.startswith(f"{loop.winner} won")
    assert total["optimised"].margin_vs_random == pytest.approx(
        total["optimised"].margin / total["random"].margin
    )


def test_the_true_profit_is_the_response_models_value_of_the_logged_decisions(
    loop: LoopResult,
) -> None:
    """Recomputed from the optimised policy's own decision log and the response model."""
    c = loop.config
    assert loop.workdir is not None
    world = build_world(
        SimConfig(n_customers=c.customers, days=c.days, seed=c.seed, slots_per_email=c.slots)
    )
    logged = pd.concat(
        [pd.read_parquet(p) for p in sorted(Path(loop.workdir, "optimised", "loop").glob("dec*"))]
    )
    first = pd.Timestamp(world.config.start_date, tz="UTC")
    logged["day"] = (logged.ts.dt.normalize() - first).dt.days
    sent = logged[logged.offer_id.notna()]
    member = world.customer_index(pa.array(sent.customer_id.astype(str)))
    sale = world.sale_index(pa.array(sent.offer_id.astype(str)))
    mailed = np.zeros((c.days, world.n), dtype=bool)
    mailed[sent.day.to_numpy(), member] = True
    unit_cost = sim_tables.offers(world).column("unit_cost").to_numpy()
    ours = {d.day: d for d in loop.days if d.policy == "optimised"}
    for day in range(c.days):  # a loop over six days
        rows = np.flatnonzero(sent.day.to_numpy() == day)
        m, s = member[rows], sale[rows]
        fatigue = mailed[max(0, day - 7) : day, m].sum(axis=0)
        p = (
            rm.open_probability(world, m, fatigue)
            * rm.click_probability(world, m, s, sent.slot.to_numpy()[rows])
            * rm.conversion_probability(world, m, s, np.ones(len(rows), bool))
        )
        profit = float(np.sum(p * world.sale_margin[s] - unit_cost[s]))
        assert ours[day].slots == len(rows)
        assert ours[day].profit == pytest.approx(profit, rel=1e-4, abs=1e-3)
        assert ours[day].conversions == pytest.approx(float(p.sum()), rel=1e-4)


def test_every_policy_keeps_the_same_holdout_and_the_optimised_its_promises(
    loop: LoopResult,
) -> None:
    c = loop.config
    world = build_world(
        SimConfig(n_customers=c.customers, days=c.days, seed=c.seed, slots_per_email=c.slots)
    )
    days = pd.DataFrame([vars(d) for d in loop.days])
    held = days.pivot(index="day", columns="policy", values="held_out")
    assert (held.nunique(axis=1) == 1).all()  # the hashed holdout: the same members for all
    share = held["random"] / (held["random"] + days[days.policy == "random"].emails.to_numpy())
    assert ((share > 0.07) & (share < 0.13)).all()
    for d in loop.days:
        if d.policy in ("greedy", "random", "popular"):  # no constraints: every slot filled
            assert d.slots == c.slots * d.emails
        if d.policy == "optimised" and d.day >= WARMUP:
            new_open = world.brand_new[world.sale_brand[world.open_sales(d.day)]].any()
            if new_open:  # at least 15% of slots for new designers (to half a point)
                assert d.new_designer_slots >= (c.new_designer_share - 0.005) * d.slots
    # popularity shows everyone the same brands: little is new after the first day
    total = _by_policy(loop.totals)
    assert total["popular"].novelty_share < 0.5 < total["random"].novelty_share


def test_learners_retrain_on_their_own_logs_and_uplift_runs(loop: LoopResult) -> None:
    labels = {(d.policy, d.day): d.model for d in loop.days}
    for name in ("greedy", "optimised", "uplift"):
        assert labels[name, 0] == "random (warm-up)"
        assert labels[name, WARMUP].startswith("propensity v1")
        assert labels[name, WARMUP + 1].startswith("propensity v2")  # retrained after a day
    ours = {(d.policy, d.day): d for d in loop.days}
    for day in range(WARMUP, loop.config.days):
        uplift, twin = ours["uplift", day], ours["optimised", day]
        assert uplift.slots > 0
        if "no uplift model yet" in uplift.model:
            # too few purchases in the holdout to learn an effect (about 0.1% a member-day):
            # the uplift policy decides on profit, as the optimised one does
            assert uplift.profit == pytest.approx(twin.profit)
            assert uplift.slots == twin.slots
        else:
            assert "uplift v" in uplift.model
    assert all(t.quarantined == 0 for t in loop.totals)


@pytest.fixture(scope="module")
def large() -> LoopResult:
    return run_loop(LoopConfig(days=8, customers=25_000, policies=("random", "popular"), seed=5))


def test_realised_outcomes_agree_with_the_expected_ones(
    large: LoopResult, loop: LoopResult
) -> None:
    for t in [*large.totals, *loop.totals]:
        assert abs(t.realised_conversions - t.conversions) <= 3 * t.conversions_se + 1, t
        # unsubscribes: rare independent events, variance about their expected number
        assert abs(t.realised_unsubscribes - t.unsubscribes) <= 3 * math.sqrt(t.unsubscribes) + 1
    big = _by_policy(large.totals)["random"]
    assert big.conversions > 50 and big.unsubscribes > 100  # enough to mean something


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policies": ("nope",)}, "unknown policy 'nope'"),
        ({"policies": ("optimised",), "warmup": 2}, "at least 3 days of warm-up"),
        ({"policies": ("greedy",), "days": 4, "warmup": 4}, "must be below days"),
        ({"policies": ("random", "random")}, "each policy may be named once"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoopConfig(**settings)


def test_a_workdir_with_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    with pytest.raises(ConfigError, match="needs an empty folder"):
        run_loop(LoopConfig(days=2, policies=("random",), customers=100, workdir=tmp_path))


def test_a_result_is_kept_in_the_workspace_and_the_latest_one_found(tmp_path: Path) -> None:
    result = run_loop(LoopConfig(days=2, policies=("random",), customers=100, seed=2))
    assert latest_loop_result(tmp_path) is None
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "loop-20000101-000000.json").write_text(
        '{"config": {}, "days": [], "totals": []}'
    )
    first, second = save_loop_result(result, tmp_path), save_loop_result(result, tmp_path)
    assert first.parent == second.parent == tmp_path / "loop"
    assert re.fullmatch(r"loop-\d{8}-\d{6}\.json", first.name)
    # within one second the second gets a suffix, else a later time: it is the latest either way
    assert second.name == first.name.replace(".json", "-2.json") or second.name > first.name
    kept = json.loads(json.dumps(result.to_dict()))
    assert json.loads(second.read_text()) == kept
    assert latest_loop_result(tmp_path) == kept  # the newest, not the older file
    (tmp_path / "loop" / "loop-29991231-235959.json").write_text("{")
    with pytest.raises(DataError, match="not a closed-loop result"):
        latest_loop_result(tmp_path)
