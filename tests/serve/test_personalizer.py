"""The Personalizer-compatible API, over HTTP, against a synthetic problem with known truth.

The problem: 4 actions, contexts of 3 features (a segment of 4 values, a weather of 3 values, a
number in [0, 1)); the right action is the one matching the segment, the other two features are
noise. The right action pays 1 with probability 0.8, the others with probability 0.2.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.errors import ConfigError
from nextbest.serve.personalizer import Personalizer, personalizer_router
from nextbest.serve.personalizer_schemas import flatten

PREFIX = "/personalizer/v1.0"
SEGMENTS = ["gold", "silver", "bronze", "new"]
WEATHER = ["sun", "rain", "snow"]
ACTIONS = [
    {"id": f"offer-{i}", "features": [{"offer": {"kind": kind}}]}
    for i, kind in enumerate(["discount", "bundle", "gift", "points"])
]
P_RIGHT, P_WRONG, EPS = 0.8, 0.2, 0.2


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def no_auth(scope: str) -> Any:
    def allow() -> None:
        return None

    return allow


def client_for(pz: Personalizer, auth: Any = no_auth) -> TestClient:
    app = FastAPI()
    app.include_router(personalizer_router(lambda request: pz, auth), prefix=PREFIX)
    return TestClient(app)


def draw_context(rng: np.random.Generator) -> tuple[int, list[dict[str, Any]]]:
    segment = int(rng.integers(4))
    context = [
        {"user": {"segment": SEGMENTS[segment]}},
        {"env": {"weather": WEATHER[int(rng.integers(3))], "hour": float(rng.random())}},
    ]
    return segment, context


def rank(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(f"{PREFIX}/rank", json={"actions": ACTIONS, **body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def reward(client: TestClient, event_id: str, value: float) -> str:
    response = client.post(f"{PREFIX}/events/{event_id}/reward", json={"value": value})
    assert response.status_code == 204, response.text
    return response.headers["X-Reward-Status"]


def play(client: TestClient, rng: np.random.Generator, rounds: int, tag: str) -> list[float]:
    """Rank and reward ``rounds`` times; the rewards the policy earned."""
    earned = []
    for r in range(rounds):
        segment, context = draw_context(rng)
        ranked = rank(client, contextFeatures=context, eventId=f"{tag}-{r}")
        right = ranked["rewardActionId"] == ACTIONS[segment]["id"]
        value = float(rng.random() < (P_RIGHT if right else P_WRONG))
        reward(client, ranked["eventId"], value)
        earned.append(value)
    return earned


def greedy(ranked: dict[str, Any]) -> str:
    """The greedy action: the one with the largest logged probability."""
    best = max(ranked["ranking"], key=lambda a: a["probability"])
    return str(best["id"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pz(tmp_path: Path, clock: FakeClock) -> Personalizer:
    return Personalizer(tmp_path / "serving" / "online.db", clock=clock)


@pytest.fixture
def client(pz: Personalizer) -> Iterator[TestClient]:
    with client_for(pz) as test_client:  # one event loop for all requests: much faster
        yield test_client


def stored(pz: Personalizer, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(pz.db_path) as conn:
        return conn.execute(sql, args).fetchall()


# -- (1) learning the known truth -------------------------------------------------------------


@pytest.mark.slow
def test_learns_the_best_action_and_earns_the_optimum_under_exploration(
    client: TestClient,
) -> None:
    rng = np.random.default_rng(2024)
    earned = play(client, rng, 2_000, "learn")
    # Greedy choice on fresh contexts (deferred, so never learned from).
    hits = 0
    for r in range(400):
        segment, context = draw_context(rng)
        ranked = rank(client, contextFeatures=context, eventId=f"probe-{r}", deferActivation=True)
        hits += greedy(ranked) == ACTIONS[segment]["id"]
    assert hits / 400 >= 0.9
    # The optimum under epsilon-greedy with k actions: the right one is shown with probability
    # (1 - eps) + eps/k and pays P_RIGHT, each of the k - 1 others with eps/k and pays P_WRONG:
    # V* = (1 - eps) P_RIGHT + eps (P_RIGHT + (k - 1) P_WRONG) / k = 0.64 + 0.07 = 0.71.
    k = len(ACTIONS)
    optimum = (1 - EPS) * P_RIGHT + EPS * (P_RIGHT + (k - 1) * P_WRONG) / k
    assert optimum == pytest.approx(0.71)
    # One standard error of a 500-round mean is sqrt(0.71 * 0.29 / 500) = 0.020; allow 3.
    last = float(np.mean(earned[-500:]))
    assert abs(last - optimum) <= 0.06, (last, optimum)
    assert float(np.mean(earned[:200])) < last  # it learned: the start earned less


# -- (2) the logged probabilities -------------------------------------------------------------


@pytest.mark.parametrize("exploration", [0.2, 0.5])
def test_probabilities_are_epsilon_greedy_and_excluded_actions_get_zero(
    tmp_path: Path, exploration: float
) -> None:
    pz = Personalizer(tmp_path / "online.db", exploration=exploration)
    with client_for(pz) as client:
        _check_probabilities(pz, client, exploration)


def _check_probabilities(pz: Personalizer, client: TestClient, exploration: float) -> None:
    excluded = [ACTIONS[0]["id"], ACTIONS[2]["id"]]
    k = len(ACTIONS) - len(excluded)
    high, low = (1 - exploration) + exploration / k, exploration / k
    explored = 0
    for r in range(200):
        ranked = rank(client, excludedActions=excluded, eventId=f"p-{r}", deferActivation=True)
        probabilities = {a["id"]: a["probability"] for a in ranked["ranking"]}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
        assert len(ranked["ranking"]) == len(ACTIONS)  # excluded ones listed, at the end
        assert [a["id"] for a in ranked["ranking"][-2:]] == excluded
        assert all(probabilities[a] == 0.0 for a in excluded)
        assert ranked["ranking"][0]["id"] == ranked["rewardActionId"] not in excluded
        chosen = probabilities[ranked["rewardActionId"]]
        assert chosen == pytest.approx(high) or chosen == pytest.approx(low)
        assert sorted(probabilities.values())[-k:] == pytest.approx([low] * (k - 1) + [high])
        explored += chosen == pytest.approx(low)
    # P(explored) = eps (k - 1) / k; a binomial over 200 draws, within 4 standard errors.
    p = exploration * (k - 1) / k
    assert abs(explored / 200 - p) <= 4 * np.sqrt(p * (1 - p) / 200)
    # The log holds what was answered (the last one, say).
    [(ids, logged, chosen_p)] = stored(
        pz,
        "SELECT action_ids, probabilities, chosen_probability FROM pz_events "
        "WHERE event_id = 'p-199'",
    )
    assert json.loads(ids) == [a["id"] for a in ranked["ranking"]]
    assert json.loads(logged) == [a["probability"] for a in ranked["ranking"]]
    assert chosen_p == ranked["ranking"][0]["probability"]


def test_the_draw_is_seeded_by_the_event_id(tmp_path: Path) -> None:
    answers = []
    for name in ("a.db", "b.db"):
        with client_for(Personalizer(tmp_path / name)) as client:
            answers.append([rank(client, eventId=f"same-{r}")["rewardActionId"] for r in range(40)])
    assert answers[0] == answers[1]
    assert len(set(answers[0])) > 1  # and it does explore


def test_a_retry_gets_the_same_answer_and_a_reused_event_id_is_a_conflict(
    client: TestClient,
) -> None:
    first = rank(client, eventId="once", contextFeatures=[{"user": {"segment": "gold"}}])
    play(client, np.random.default_rng(1), 50, "move")  # the model changes meanwhile
    again = rank(client, eventId="once", contextFeatures=[{"user": {"segment": "gold"}}])
    assert again == first
    other = client.post(f"{PREFIX}/rank", json={"actions": ACTIONS[:2], "eventId": "once"})
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["code"] == "conflict" and error["details"][0]["field"] == "body.eventId"
    generated = rank(client)["eventId"]
    assert len(generated) == 32 and generated != rank(client)["eventId"]


# -- (3) rewards: the first is kept; unknown events --------------------------------------------


def test_the_first_reward_is_kept_and_unknown_events_are_404(
    pz: Personalizer, client: TestClient
) -> None:
    event = rank(client, eventId="r1")["eventId"]
    assert reward(client, event, 1.0) == "recorded"
    assert reward(client, event, 0.0) == "duplicate"
    assert reward(client, event, -1.0) == "duplicate"
    assert stored(pz, "SELECT reward FROM pz_events WHERE event_id = 'r1'") == [(1.0,)]
    assert stored(pz, "SELECT count(*) FROM pz_learn") == [(1,)]
    pz.sync()
    assert pz.seq_ == 1 and pz.model_.n_updates_ == 1  # learned once
    for path in ("events/nope/reward", "events/nope/activate", "multislot/events/r1/reward"):
        body = {"reward": [{"slotId": "x", "value": 1}]} if "multislot" in path else {"value": 1}
        response = client.post(f"{PREFIX}/{path}", json=body)
        assert response.status_code == 404, path
        error = response.json()["error"]
        assert error["status"] == 404 and error["code"] == "not_found"
        assert "rank it first" in error["message"]


# -- (4) deferred activation -------------------------------------------------------------------


def test_a_deferred_event_is_not_learned_until_activated(
    pz: Personalizer, client: TestClient, clock: FakeClock
) -> None:
    event = rank(client, eventId="d1", deferActivation=True)["eventId"]
    assert reward(client, event, 1.0) == "pending"
    clock.now += 3 * pz.reward_wait  # no default reward either: it was never shown
    assert pz.sync() == 0
    assert not pz.weights.any()
    assert client.post(f"{PREFIX}/events/{event}/activate").status_code == 204
    assert pz.sync() == 1
    assert pz.weights.any()
    assert client.post(f"{PREFIX}/events/{event}/activate").status_code == 204  # idempotent
    assert pz.sync() == 0


# -- (5) the default reward after the wait ----------------------------------------------------


def test_the_default_reward_applies_after_the_wait(tmp_path: Path, clock: FakeClock) -> None:
    pz = Personalizer(tmp_path / "online.db", clock=clock, reward_wait=600, default_reward=0.5)
    with client_for(pz) as client:
        _check_default_reward(pz, client, clock)


def _check_default_reward(pz: Personalizer, client: TestClient, clock: FakeClock) -> None:
    only = ACTIONS[:1]  # one action: chosen with probability 1
    event = rank(client, actions=only, eventId="w1")["eventId"]
    deferred = rank(client, actions=only, eventId="w2", deferActivation=True)["eventId"]
    clock.now += 599
    assert pz.sync() == 0
    client.post(f"{PREFIX}/events/{deferred}/activate")  # its wait starts now
    clock.now += 1
    assert pz.sync() == 1  # w1 reached 600 s
    rows = stored(pz, "SELECT event_id, reward, default_reward FROM pz_events ORDER BY event_id")
    assert rows == [("w1", 0.5, 1), ("w2", None, 0)]
    x = pz.model_.cross([], [*flatten(only[0]["features"], "a"), ("_action.id=offer-0", 1.0)])
    assert 0.25 < pz.model_.predict(x) <= 0.5  # learned toward the default, not past it
    assert reward(client, event, 1.0) == "late"  # after the wait: ignored, 0.5 kept
    assert stored(pz, "SELECT reward FROM pz_events WHERE event_id = 'w1'") == [(0.5,)]
    clock.now += 598  # 599 s after its activation
    assert reward(client, deferred, 0.25) == "recorded"  # within its own wait
    assert pz.sync() == 1


# -- (6) several workers on one file ----------------------------------------------------------


def _worker(db_path: str, tag: str, rounds: int, barrier: Any, out: Any) -> None:
    pz = Personalizer(Path(db_path), checkpoint_every=100)
    with client_for(pz) as client:
        play(client, np.random.default_rng(sum(map(ord, tag))), rounds, tag)
    barrier.wait()  # every worker has written all its events
    pz.sync()
    out.put((tag, pz.seq_, pz.weights.tobytes()))


@pytest.mark.slow
def test_workers_sharing_the_file_end_with_the_same_weights(tmp_path: Path) -> None:
    db_path = tmp_path / "online.db"
    Personalizer(db_path)  # create the tables once, as the app does at start
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(str(db_path), tag, 300, barrier, out))
        for tag in ("w1", "w2")
    ]
    for worker in workers:
        worker.start()
    results = sorted(out.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    (_, seq1, weights1), (_, seq2, weights2) = results
    assert seq1 == seq2 == 600
    assert weights1 == weights2  # bit for bit
    # A restart loads the last checkpoint and replays only the tail: the same weights again.
    restarted = Personalizer(db_path, checkpoint_every=100)
    assert restarted.checkpoint_seq_ >= 500
    replayed = restarted.sync()
    assert replayed == 600 - restarted.checkpoint_seq_
    assert restarted.weights.tobytes() == weights1


def test_a_checkpoint_of_other_settings_is_not_reused(tmp_path: Path) -> None:
    db_path = tmp_path / "online.db"
    first = Personalizer(db_path, checkpoint_every=10)
    with client_for(first) as client:
        play(client, np.random.default_rng(3), 30, "c")
    first.sync()
    other = Personalizer(db_path, learning_rate=0.1)
    assert other.checkpoint_seq_ == 0 and other.sync() == 30  # replays everything


# -- (7) malformed bodies ---------------------------------------------------------------------

ONE = [{"id": "a", "features": [{"x": 1}]}]
BAD_RANKS = [
    ({"actions": ONE, "contextFeature": []}, "body.contextFeature", "no field of this name"),
    ({"actions": [{"id": "a", "features": [], "feature": 1}]}, "body.actions.0.feature", "no"),
    ({}, "body.actions", "a value (the field is required)"),
    ({"actions": []}, "body.actions", "list should have at least 1 item"),
    ({"actions": [{"id": 5, "features": []}]}, "body.actions.0.id", "a valid string"),
    ({"actions": [{"id": "a"}]}, "body.actions.0.features", "a value (the field is required)"),
    ({"actions": ONE * 2}, "body.actions.1.id", "action ids unique within the request"),
    ({"actions": ONE, "excludedActions": ["b"]}, "body.excludedActions.0", "an action"),
    ({"actions": ONE, "excludedActions": ["a"]}, "body.excludedActions", "at least one action"),
    ({"actions": ONE, "deferActivation": "yes"}, "body.deferActivation", "a valid boolean"),
    ({"actions": ONE, "contextFeatures": [1]}, "body.contextFeatures.0", "a valid dictionary"),
    ({"actions": ONE, "eventId": "e" * 257}, "body.eventId", "at most 256 characters"),
    ({"actions": ONE, "eventId": ""}, "body.eventId", "at least 1 character"),
    ({"actions": [{"id": f"a{i}", "features": []} for i in range(51)]}, "body.actions", "50"),
    (
        {"actions": [{"id": "a", "features": [{"x": {"y": {"z": [[[[[[[1]]]]]]]}}}]}]},
        "body.actions.0.features.0.x.y.z.0.0.0.0.0.0",
        "at most 8 levels of nesting",
    ),
]


@pytest.mark.parametrize(("body", "field", "expected"), BAD_RANKS)
def test_a_malformed_rank_is_a_400_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, expected: str
) -> None:
    response = client.post(f"{PREFIX}/rank", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == 400 and error["code"] == "invalid_request"
    detail = error["details"][0]
    assert detail["field"] == field
    assert expected in detail["expected"]
    assert detail["received"] and field in error["message"]


RAW_BAD = [
    (
        "rank",
        b'{"actions": [{"id": "a", "features": [{"x": NaN}]}]}',
        "body.actions.0.features.0.x",
    ),
    ("rank", b'{"actions": [{"id": "a", "features": [{"x": 1e999}]}]}', "body.actions.0.features"),
    ("rank", b'{"actions": [', "body.13"),
    ("events/e/reward", b'{"value": "high"}', "body.value"),
    ("events/e/reward", b'{"value": 1.5}', "body.value"),
    ("events/e/reward", b'{"valu": 1}', "body.value"),
    ("events/e/reward", b"[]", "body"),
    ("events/" + "e" * 257 + "/reward", b'{"value": 1}', "path.eventId"),
    ("multislot/events/e/reward", b'{"reward": [{"slot": "s", "value": 1}]}', "body.reward.0"),
]


@pytest.mark.parametrize(("path", "content", "field"), RAW_BAD)
def test_malformed_json_is_a_400_naming_the_field(
    client: TestClient, path: str, content: bytes, field: str
) -> None:
    response = client.post(
        f"{PREFIX}/{path}", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert any(f.startswith(field) for f in fields), fields


def test_python_callers_get_the_same_errors(pz: Personalizer) -> None:
    from nextbest.serve.personalizer import PersonalizerError

    with pytest.raises(PersonalizerError, match=r"body.actions: expected a value"):
        pz.rank({})
    with pytest.raises(PersonalizerError, match=r"body.value: expected less than or equal to 1"):
        pz.reward("any", 2.0)
    with pytest.raises(ConfigError, match=r"exploration must be a number in \[0, 1\], got 1.5"):
        Personalizer(pz.db_path, exploration=1.5)


# -- multi-slot, scopes, features --------------------------------------------------------------


def test_multi_slot_fills_each_slot_once_and_learns_per_slot(
    pz: Personalizer, client: TestClient
) -> None:
    rng = np.random.default_rng(11)
    slots = [
        {"id": "hero", "baselineAction": "offer-0"},
        {"id": "side", "baselineAction": "offer-1"},
    ]
    best = {"hero": "offer-2", "side": "offer-3"}  # regardless of context
    for r in range(400):
        body = {"actions": ACTIONS, "slots": slots, "eventId": f"m-{r}"}
        answer = client.post(f"{PREFIX}/multislot/rank", json=body)
        assert answer.status_code == 201
        placed = {s["id"]: s["rewardActionId"] for s in answer.json()["slots"]}
        assert placed["hero"] != placed["side"]
        values = [
            {"slotId": s, "value": float(rng.random() < (0.8 if a == best[s] else 0.2))}
            for s, a in placed.items()
        ]
        response = client.post(f"{PREFIX}/multislot/events/m-{r}/reward", json={"reward": values})
        assert response.headers["X-Reward-Status"] == "recorded,recorded"
    probe = {"actions": ACTIONS, "slots": slots, "eventId": "probe", "deferActivation": True}
    client.post(f"{PREFIX}/multislot/rank", json=probe)
    rows = stored(
        pz,
        "SELECT slot_id, action_ids, probabilities FROM pz_events WHERE event_id = 'probe' "
        "ORDER BY slot_pos",
    )
    pairs = zip(json.loads(rows[0][1]), json.loads(rows[0][2]), strict=True)
    greedy_hero = max(pairs, key=lambda t: t[1])[0]
    assert rows[0][0] == "hero" and greedy_hero == "offer-2"
    bad = {"actions": ACTIONS, "slots": [{"id": "s", "baselineAction": "zzz"}]}
    error = client.post(f"{PREFIX}/multislot/rank", json=bad).json()["error"]
    assert error["details"][0]["field"] == "body.slots.0.baselineAction"


def test_routes_ask_for_their_scopes(pz: Personalizer) -> None:
    asked: list[str] = []

    def auth(scope: str) -> Any:
        asked.append(scope)

        def check() -> None:
            if scope == "events":
                raise HTTPException(403, f"needs scope {scope}")

        return check

    with client_for(pz, auth) as client:
        assert sorted(set(asked)) == ["decide", "events"]
        event = rank(client, eventId="s1")["eventId"]
        response = client.post(f"{PREFIX}/events/{event}/reward", json={"value": 1})
        assert response.status_code == 403


def test_features_are_flattened_the_personalizer_way() -> None:
    features = [
        {"user": {"tier": "gold", "age": 31, "mobile": True, "guest": False, "note": None}},
        {"cart": {"items": ["milk", "eggs"], "prices": [2.5, 0], "last": {"kind": "dairy"}}},
        {"weather": "rain"},
    ]
    assert flatten(features, "body.contextFeatures") == [
        ("user.tier=gold", 1.0),
        ("user.age", 31.0),
        ("user.mobile", 1.0),
        ("cart.items=milk", 1.0),
        ("cart.items=eggs", 1.0),
        ("cart.prices[0]", 2.5),
        ("cart.last.kind=dairy", 1.0),
        ("weather=rain", 1.0),
    ]


# -- no input is a server error ----------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
FEATURES = st.lists(st.dictionaries(st.text(max_size=6), JSON, max_size=3), max_size=3)
ACTION = st.fixed_dictionaries({"id": st.sampled_from(["a", "b", "c"]), "features": FEATURES})
RANK_BODY = st.fixed_dictionaries(
    {"actions": st.lists(ACTION, max_size=4)},
    optional={
        "contextFeatures": FEATURES | JSON,
        "excludedActions": st.lists(st.sampled_from(["a", "b", "z"]), max_size=3),
        "eventId": st.sampled_from(["e1", "e2"]) | JSON,
        "deferActivation": st.booleans() | JSON,
        "extra": JSON,
    },
)
REWARD_BODY = st.fixed_dictionaries({"value": JSON}) | JSON
PATHS = st.sampled_from(
    [
        "rank",
        "multislot/rank",
        "events/e1/reward",
        "events/e1/activate",
        "multislot/events/e1/reward",
        "events/e2/activate",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=PATHS, body=RANK_BODY | REWARD_BODY | JSON)
def test_no_body_is_a_server_error(client: TestClient, path: str, body: Any) -> None:
    content = json.dumps(body).encode()  # NaN and Infinity included, as Python's json allows
    response = client.post(
        f"{PREFIX}/{path}", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in {201, 204, 400, 404, 409}, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["status"] == response.status_code and error["message"]
