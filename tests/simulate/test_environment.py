"""RetailEnvironment: any policy's decisions in, one day's outcomes out; bad decisions named."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nextbest.errors import DataError
from nextbest.simulate import RetailEnvironment, SimConfig
from nextbest.simulate.policies import RandomPolicy
from nextbest.simulate.run import day_decisions

CONFIG = SimConfig(n_customers=3_000, days=6, seed=5)


@pytest.fixture(scope="module")
def env() -> RetailEnvironment:
    return RetailEnvironment(CONFIG)


def _emails(env: RetailEnvironment, day: int, members: np.ndarray, k: int = 3) -> pd.DataFrame:
    sales = env.open_sales(day)[:k]
    return pd.DataFrame(
        {
            "customer_id": np.repeat(env.world.customer_ids(members), k),
            "offer_id": np.tile(env.world.sale_ids(sales), len(members)),
            "slot": np.tile(np.arange(1, k + 1), len(members)),
        }
    )


def test_a_dataframe_from_any_policy_is_carried_out_and_numbered(env: RetailEnvironment) -> None:
    env.reset()
    members = env.eligible(0)[:500]
    frame = _emails(env, 0, members).assign(decision_id=lambda d: [f"mine-{i}" for i in d.index])
    frame.loc[frame.index[:3], "decision_id"] = None  # numbered by the environment
    out = env.step(0, frame)
    ids = out.decisions.column("decision_id").to_pylist()
    assert ids[:4] == ["D0000000000", "D0000000001", "D0000000002", "mine-3"]
    assert out.decisions.column_names[:3] == ["decision_id", "ts", "customer_id"]
    ev = out.events.to_pandas()
    sent = ev[ev.type == "email_sent"]
    assert sorted(sent.customer_id) == sorted(env.world.customer_ids(members))
    assert set(ev.decision_id.dropna()) <= set(ids)
    assert out.truth.num_rows == len(frame) and out.emails.num_rows == len(members)
    assert ev.event_id.iloc[0] == "E00000000000"
    nxt = env.step(1, _emails(env, 1, env.eligible(1)[:10]))
    assert nxt.decisions.column("decision_id")[0].as_py() == "D0000000003"
    assert nxt.events.column("event_id")[0].as_py() == f"E{len(ev):011d}"


def test_reset_replays_the_same_days(env: RetailEnvironment) -> None:
    runs = []
    for _ in range(2):
        env.reset()
        tables = [env.step(d, day_decisions(env, RandomPolicy(), d)).events for d in range(3)]
        runs.append(pa.concat_tables(tables))
    assert runs[0].equals(runs[1])


def test_an_empty_day_sends_nothing(env: RetailEnvironment) -> None:
    env.reset()
    out = env.step(0, _emails(env, 0, env.eligible(0)[:0]))
    types = set(out.events.column("type").to_pylist())
    assert out.decisions.num_rows == 0 and not types & {"email_sent", "email_open"}
    assert "visit" in types  # members still come on their own


def test_a_closed_loop_policy_that_uses_tastes_earns_more_clicks() -> None:
    """Greedy on the true affinity against random, from the same world and seed."""
    config = SimConfig(n_customers=5_000, days=4, seed=9)
    rates = {}
    for name in ("random", "greedy"):
        env = RetailEnvironment(config)
        clicks = sends = 0
        for day in range(config.days):
            members, sales = env.eligible(day), env.open_sales(day)
            if name == "random":
                table = day_decisions(env, RandomPolicy(), day)
            else:
                best = np.argsort(-env.world.affinity(members, sales), axis=1)[:, :3]
                table = pa.table(
                    {
                        "customer_id": np.repeat(env.world.customer_ids(members), 3),
                        "offer_id": env.world.sale_ids(sales[best].ravel()),
                        "slot": np.tile([1, 2, 3], len(members)),
                        "policy": np.full(3 * len(members), "greedy"),
                        "propensity": np.ones(3 * len(members)),
                    }
                )
            types = env.step(day, table).events.column("type").to_numpy(zero_copy_only=False)
            clicks += int((types == "email_click").sum())
            sends += int((types == "email_sent").sum())
        rates[name] = clicks / sends
    assert rates["greedy"] > 1.5 * rates["random"], rates


def _bad(env: RetailEnvironment, change: str) -> tuple[int, object]:
    w = env.world
    members = env.eligible(0)[:4]
    frame = _emails(env, 0, members)
    if change == "missing slot":
        return 0, frame.drop(columns="slot")
    if change == "unknown member":
        frame.loc[1, "customer_id"] = "C9999999"
        return 0, frame
    if change == "closed offer":
        frame.loc[0, "offer_id"] = w.sale_ids(np.array([200]))[0]
        return 0, frame
    if change == "no consent":
        frame.loc[0, "customer_id"] = w.customer_ids(np.array([np.argmin(w.consent["email"])]))[0]
        return 0, frame
    if change == "slot twice":
        frame.loc[1, "slot"] = 1
        return 0, frame
    if change == "slot 0":
        frame.loc[2, "slot"] = 0
        return 0, frame
    if change == "mailed and held":
        held = frame.iloc[:1].assign(offer_id=None, slot=0)
        return 0, pd.concat([frame, held])
    if change == "day out of order":
        return 3, frame
    return 0, object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing slot", "decisions for day 0: missing column(s) slot; expected customer_id"),
        ("unknown member", "1 rows name no known member: C9999999; customer ids run from"),
        ("closed offer", "1 rows feature an offer that is not open that day: S005-00; choose"),
        ("no consent", "1 rows address members who may not be e-mailed (not yet joined"),
        ("slot twice", "1 rows repeat a slot in one e-mail"),
        ("slot 0", "1 featured sales have no slot >= 1"),
        ("mailed and held", "1 members are held out twice, or both held out and mailed"),
        ("day out of order", "step: expected day 0 (days run 0 to 5, one at a time), got day 3"),
        ("not a table", "decisions: expected an Arrow table or a pandas DataFrame"),
    ],
)
def test_decisions_the_retailer_cannot_carry_out_are_named(
    env: RetailEnvironment, change: str, message: str
) -> None:
    env.reset()
    day, decisions = _bad(env, change)
    with pytest.raises(DataError, match=re.escape(message)):
        env.step(day, decisions)
    assert env.day == 0  # nothing happened
