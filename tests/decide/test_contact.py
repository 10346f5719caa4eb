"""Contact policy: each rule on a hand-built warehouse, the hard rules as a property, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import ibis
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.data.schema import CHANNELS, TABLES
from nextbest.data.warehouse import Warehouse
from nextbest.decide.contact import (
    UNLIMITED,
    ContactPolicy,
    QuietHours,
    contact_state,
    parse_policy,
)
from nextbest.errors import ConfigError

AS_OF = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
NOON = AS_OF
NIGHT = datetime(2026, 1, 20, 22, 0, tzinfo=UTC)

_ARROW = {
    "string": pa.string(),
    "json": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a canonical Arrow table: every column, missing ones null."""
    cols = TABLES[table].columns
    return pa.table(
        {c.name: pa.array([r.get(c.name) for r in rows], type=_ARROW[c.kind]) for c in cols}
    )


def _warehouse(customers: list[dict], events: list[dict], decisions: list[dict]) -> Warehouse:
    wh = Warehouse(ibis.duckdb.connect())
    wh.create_tables()
    for name, rows in (("customers", customers), ("events", events), ("decisions", decisions)):
        if rows:
            wh.insert(name, _arrow(name, rows))
    return wh


def _consent(cid: str, email: Any = True, sms: Any = True, push: Any = True) -> dict:
    return {"customer_id": cid, "consent_email": email, "consent_sms": sms, "consent_push": push}


_n = iter(range(10_000))


def _event(cid: str, ts: str, kind: str, **extra: Any) -> dict:
    return {"event_id": f"e{next(_n)}", "customer_id": cid, "ts": _t(ts), "type": kind, **extra}


def _sent(cid: str, ts: str, decision: str | None = None, kind: str = "email_sent") -> dict:
    return _event(cid, ts, kind, decision_id=decision)


CUSTOMERS = [
    _consent("c1"),
    _consent("c2", email=False, sms=None),
    _consent("c3"),  # unsubscribed from e-mail (no channel) and push
    _consent("c4"),  # e-mailed and pushed today
    _consent("c5"),  # three e-mails this week, all opened
    _consent("c6"),  # last three e-mails ignored (decision-linked)
    _consent("c7"),  # bare e-mails, the middle one opened within 3 days
    _consent("c8"),  # bare e-mails, opens too late or too early
    _consent("c9"),  # three ignored e-mails, long ago
]
EVENTS = [
    _event("c3", "2026-01-05T10:00:00", "unsubscribe"),
    _event("c3", "2026-01-10T10:00:00", "unsubscribe", channel="push"),
    _event("c3", "2026-01-25T10:00:00", "unsubscribe", channel="sms"),  # after as_of
    _sent("c4", "2026-01-20T09:00:00"),
    _sent("c4", "2026-01-20T09:30:00", kind="push_sent"),
    _sent("c4", "2026-01-20T13:00:00"),  # after as_of: not counted
    _sent("c5", "2026-01-12T09:00:00", "d50"),  # 8 days before: outside the week
    *(_sent("c5", f"2026-01-{d}T09:00:00", f"d5{d}") for d in (14, 16, 18)),
    *(_event("c5", f"2026-01-{d}T10:00:00", "email_open", decision_id=f"d5{d}") for d in (14, 16)),
    _event("c5", "2026-01-18T11:00:00", "purchase", decision_id="d518", amount=20.0),
    _sent("c6", "2025-12-20T09:00:00", "d60"),
    _event("c6", "2025-12-20T10:00:00", "email_click", decision_id="d60"),
    *(_sent("c6", f"2026-01-{d:02d}T09:00:00", f"d6{d}") for d in (1, 5, 10)),
    _event("c6", "2026-01-05T12:00:00", "email_open"),  # not linked: does not count
    *(_sent("c7", f"2026-01-{d:02d}T09:00:00") for d in (2, 6, 11)),
    _event("c7", "2026-01-08T20:00:00", "email_open"),  # 2.5 days after the 6th
    *(_sent("c8", f"2026-01-{d:02d}T09:00:00") for d in (2, 6, 11)),
    _event("c8", "2026-01-10T10:00:00", "email_open"),  # 4 days after the 6th
    _event("c8", "2026-01-09T10:00:00", "push_open"),  # another channel
    *(_sent("c9", f"2025-12-0{d}T09:00:00") for d in (1, 2, 3)),
]


def _decision(key: str, ts: str, cid: str, offer: str | None) -> dict:
    return {"decision_id": key, "ts": _t(ts), "customer_id": cid, "offer_id": offer}


DECISIONS = [
    _decision("x1", "2026-01-11T08:00:00", "c1", "o1"),
    _decision("x2", "2026-01-12T08:00:00", "c1", "o1"),
    _decision("x3", "2026-01-13T08:00:00", "c1", "o2"),
    _decision("x4", "2026-01-14T08:00:00", "c1", None),  # a control: no offer shown
    _decision("x5", "2026-01-21T08:00:00", "c1", "o2"),  # after as_of
    _decision("x6", "2026-01-15T08:00:00", "c2", "o1"),
]
POLICY = ContactPolicy(
    per_day={"email": 1, "push": 2},
    per_week={"email": 3},
    offer_impressions=2,
    suppress_after_ignores=3,
    suppress_days=14,
    quiet_hours=QuietHours(start="21:00", end="08:00", channels=["push", "sms"]),
)
IDS = [c["customer_id"] for c in CUSTOMERS]


@pytest.fixture(scope="module")
def state():
    wh = _warehouse(CUSTOMERS, EVENTS, DECISIONS)
    yield contact_state(wh, AS_OF, POLICY, offer_ids=["o1", "o2", "o9"])
    wh.close()


def _by_id(values: np.ndarray) -> dict[str, Any]:
    return dict(zip(IDS, values.tolist(), strict=True))


def test_all_customers_sorted_by_default(state) -> None:
    assert state.customer_ids.tolist() == IDS


def test_allowed_per_channel_at_noon(state) -> None:
    email = _by_id(state.allowed("email", NOON))
    assert [c for c, ok in email.items() if ok] == ["c1", "c7", "c9"]
    push = _by_id(state.allowed("push", NOON))
    assert [c for c, ok in push.items() if not ok] == ["c3"]
    sms = _by_id(state.allowed("sms", NOON))
    assert [c for c, ok in sms.items() if not ok] == ["c2"]  # c3's sms unsubscribe is later
    assert state.allowed("web", NOON).all()  # no consent column, nobody unsubscribed


def test_quiet_hours_close_only_their_channels(state) -> None:
    assert not state.allowed("push", NIGHT).any()
    assert not state.allowed("sms", NIGHT).any()
    assert state.allowed("email", NIGHT).tolist() == state.allowed("email", NOON).tolist()
    assert state.reasons(0, "push", NIGHT) == ["quiet hours 21:00-08:00 UTC"]
    assert state.reasons(0, "push", datetime(2026, 1, 21, 8, 0, tzinfo=UTC)) == []


def test_remaining_is_the_tighter_cap(state) -> None:
    email = _by_id(state.remaining("email"))
    assert email == {c: int(c in ("c1", "c7", "c9")) for c in IDS}
    push = _by_id(state.remaining("push"))
    assert (push["c1"], push["c3"], push["c4"]) == (2, 0, 1)
    sms = _by_id(state.remaining("sms"))
    assert (sms["c1"], sms["c2"]) == (UNLIMITED, 0)


def test_suppression_ends_after_suppress_days(state) -> None:
    c6 = IDS.index("c6")
    assert state.suppressed_until["email"][c6] == np.datetime64("2026-01-24T09:00:00")
    assert state.allowed("email", datetime(2026, 1, 24, 9, 0, tzinfo=UTC))[c6]
    assert not state.allowed("email", datetime(2026, 1, 24, 8, 59, tzinfo=UTC))[c6]
    assert np.isnat(state.suppressed_until["email"][IDS.index("c7")])
    assert np.isnat(state.suppressed_until["email"][IDS.index("c9")])  # expired in December


def test_reasons_in_words(state) -> None:
    def why(cid: str, channel: str) -> list[str]:
        return state.reasons(IDS.index(cid), channel, NOON)

    assert why("c1", "email") == []
    assert why("c2", "email") == ["no e-mail consent"]
    assert why("c2", "sms") == ["no SMS consent"]
    assert why("c3", "email") == ["unsubscribed from email on 2026-01-05"]
    assert why("c3", "push") == ["unsubscribed from push on 2026-01-10"]
    assert why("c4", "email") == ["1 e-mail today (limit 1)"]
    assert why("c4", "push") == []
    assert why("c5", "email") == ["3 e-mails in the last 7 days (limit 3)"]
    assert why("c6", "email") == ["ignored the last 3 e-mails (suppressed until 2026-01-24)"]
    assert why("c8", "email") == ["ignored the last 3 e-mails (suppressed until 2026-01-25)"]


def test_reasons_are_empty_exactly_where_allowed(state) -> None:
    for channel in CHANNELS:
        for at in (NOON, NIGHT):
            allowed = state.allowed(channel, at)
            for i in range(len(IDS)):
                assert (state.reasons(i, channel, at) == []) == allowed[i], (IDS[i], channel, at)


def test_offer_impressions_before_as_of(state) -> None:
    got = state.offer_allowed(["o2", "o1", "o9"])
    assert got.shape == (len(IDS), 3)
    # c1: o1 twice (at the limit), o2 once (the later one is after as_of); c2: o1 once.
    assert got[0].tolist() == [True, False, True]
    assert got[1:].all()
    assert state.impressions[0].tolist() == [2, 1, 0]
    with pytest.raises(ConfigError, match=r"no impressions were read for \['o7'\]"):
        state.offer_allowed(["o7"])


def test_given_customers_keep_their_order_and_unknowns_get_nothing() -> None:
    wh = _warehouse(CUSTOMERS, EVENTS, DECISIONS)
    got = contact_state(wh, AS_OF, POLICY, customer_ids=["c6", "zz", "c1"])
    assert got.customer_ids.tolist() == ["c6", "zz", "c1"]
    assert got.allowed("email", NOON).tolist() == [False, False, True]
    assert got.allowed("web", NOON).tolist() == [True, True, True]
    assert got.reasons(1, "push", NOON) == ["no push consent"]
    with pytest.raises(ConfigError, match="customer_ids repeat"):
        contact_state(wh, AS_OF, POLICY, customer_ids=["c1", "c1"])
    with pytest.raises(ConfigError, match="unknown channel 'fax'"):
        got.allowed("fax", NOON)
    wh.close()


def test_no_policy_means_only_the_hard_rules() -> None:
    wh = _warehouse(CUSTOMERS, EVENTS, DECISIONS)
    got = contact_state(wh, AS_OF, ContactPolicy())
    assert _by_id(got.allowed("email", NIGHT)) == {c: c not in ("c2", "c3") for c in IDS}
    assert got.offer_allowed(["o1"]).all()
    assert got.remaining("email")[0] == UNLIMITED
    wh.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"per_dya": {"email": 1}},
            "contact: unknown key 'per_dya'; known keys: per_day, per_week, offer_impressions, "
            "suppress_after_ignores, suppress_days, quiet_hours",
        ),
        (
            {"quiet_hours": {"strat": "21:00"}},
            "contact: unknown key 'quiet_hours.strat'; known keys: start, end, timezone, channels",
        ),
        (
            {"per_day": {"emial": 1}},
            "contact: 'per_day': unknown channel 'emial' in the caps; expected one of ('email', "
            "'sms', 'push', 'web', 'app', 'store', 'phone', 'mail') (got {'emial': 1})",
        ),
        (
            {"per_week": {"email": -1}},
            "contact: 'per_week': caps must be whole numbers >= 0, got {'email': -1}",
        ),
        (
            {"quiet_hours": {"start": "25:00"}},
            "contact: 'quiet_hours.start': expected a time as HH:MM such as '21:00', got '25:00' "
            "(got '25:00')",
        ),
        (
            {"quiet_hours": {"timezone": "Mars/Olympus"}},
            "contact: 'quiet_hours.timezone': unknown time zone 'Mars/Olympus', "
            "e.g. 'Europe/Paris' (got 'Mars/Olympus')",
        ),
        (
            {"quiet_hours": {"channels": ["push", "pigeon"]}},
            "contact: 'quiet_hours.channels': unknown channel 'pigeon' in quiet_hours.channels",
        ),
        (
            {"offer_impressions": 0},
            "contact: 'offer_impressions': Input should be greater than or equal to 1 (got 0)",
        ),
    ],
)
def test_config_errors_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policy(raw)
    assert str(err.value).startswith(message)


def test_parse_policy_reads_a_full_table() -> None:
    policy = parse_policy({"per_day": {"email": 1}, "quiet_hours": {"timezone": "Europe/Paris"}})
    assert policy.per_day == {"email": 1} and policy.suppress_days == 14
    assert policy.quiet_hours is not None and policy.quiet_hours.channels == [
        "push",
        "sms",
        "phone",
    ]
    # 21:30 in Paris is 20:30 UTC; 07:59 in Paris is 06:59 UTC.
    assert policy.quiet_hours.active(datetime(2026, 1, 20, 20, 30, tzinfo=UTC))
    assert not policy.quiet_hours.active(datetime(2026, 1, 20, 19, 59, tzinfo=UTC))
    assert policy.quiet_hours.active(datetime(2026, 1, 21, 6, 59, tzinfo=UTC))
    assert not policy.quiet_hours.active(datetime(2026, 1, 21, 7, 0, tzinfo=UTC))
    day = QuietHours(start="12:00", end="14:00")
    assert day.active(datetime(2026, 1, 1, 13, 0)) and not day.active(datetime(2026, 1, 1, 14, 0))


def _at(key: str, cid: str, ts: datetime, kind: str, **extra: Any) -> dict:
    return {"event_id": key, "customer_id": cid, "ts": ts, "type": kind, **extra}


_consents = st.sampled_from([True, False, None])
_unsub = st.sampled_from([None, "before", "after"])
_unsubs = st.dictionaries(st.sampled_from([*CHANNELS, None]), _unsub, max_size=3)
_kinds = st.sampled_from(["email_sent", "push_sent", "sms_sent", "email_open"])
_sends = st.lists(st.tuples(_kinds, st.integers(0, 200)), max_size=6)  # hours before as_of
_customer = st.tuples(_consents, _consents, _consents, _unsubs, _sends)
_policy = st.builds(
    ContactPolicy,
    per_day=st.dictionaries(st.sampled_from(CHANNELS), st.integers(0, 3), max_size=3),
    per_week=st.dictionaries(st.sampled_from(CHANNELS), st.integers(0, 5), max_size=3),
    suppress_after_ignores=st.one_of(st.none(), st.integers(1, 3)),
    quiet_hours=st.one_of(st.none(), st.just(QuietHours())),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    customers=st.lists(_customer, min_size=1, max_size=5), policy=_policy, hour=st.integers(0, 23)
)
def test_never_allowed_without_consent_or_after_unsubscribe(customers, policy, hour) -> None:
    rows, events = [], []
    for k, (email, sms, push, unsubs, sends) in enumerate(customers):
        cid = f"h{k}"
        rows.append(_consent(cid, email, sms, push))
        for channel, when in unsubs.items():
            if when is not None:
                ts = AS_OF + (timedelta(hours=-5) if when == "before" else timedelta(hours=5))
                key = f"{cid}u{channel}"
                events.append(_at(key, cid, ts, "unsubscribe", channel=channel))
        for j, (kind, hours) in enumerate(sends):
            ts = AS_OF - timedelta(hours=hours)
            events.append(_at(f"{cid}s{j}", cid, ts, kind))
    wh = _warehouse(rows, events, [])
    state = contact_state(wh, AS_OF, policy)
    at = AS_OF.replace(hour=hour)
    for channel in CHANNELS:
        allowed, remaining = state.allowed(channel, at), state.remaining(channel)
        for k, (email, sms, push, unsubs, _) in enumerate(customers):
            consent = {"email": email, "sms": sms, "push": push}.get(channel, True)
            unsubscribed = unsubs.get(channel) == "before" or (
                channel == "email" and unsubs.get(None) == "before"
            )
            if consent is not True or unsubscribed:
                assert not allowed[k] and remaining[k] == 0, (channel, customers[k])
            assert (state.reasons(k, channel, at) == []) == allowed[k]
    wh.close()
