"""Contact policy and consent: who may be contacted, on which channel, now.

A :class:`ContactPolicy` comes from the workspace's configuration::

    [contact]
    per_day = { email = 1, push = 2 }     # contacts per customer per UTC day and channel
    per_week = { email = 3 }              # per rolling 7 days
    offer_impressions = 5                 # times one customer is shown one offer, ever
    suppress_after_ignores = 5            # the 5 most recent e-mails all ignored: suppressed
    suppress_days = 14                    # ... until 14 days after the last of them
    quiet_hours = { start = "21:00", end = "08:00", timezone = "Europe/Paris" }

:func:`contact_state` reads the warehouse as of a moment, with Ibis, and brings back only
per-customer results (and per customer x offer impressions), as numpy arrays in the order of
``customer_ids``. The data mean:

- consent: ``customers.consent_email``, ``consent_sms``, ``consent_push``; missing is no
  consent, and a customer absent from ``customers`` has none. Channels without a consent
  column (web, app, store, phone, mail) are allowed unless unsubscribed.
- unsubscribes: ``events`` of type ``unsubscribe`` at or before ``as_of``, on their
  ``channel`` (missing: email). They are permanent.
- contacts: ``email_sent``, ``push_sent`` and ``sms_sent`` events strictly before ``as_of``;
  ``per_day`` counts those of the UTC day of ``as_of``, ``per_week`` those of the 7 days before.
- ignored: a contact with no ``email_open``/``email_click``/``push_open``/``click``/``purchase``
  linked to its ``decision_id`` before ``as_of``; a contact without a decision id is ignored
  when no open or click on its channel by the customer follows within 3 days (and before
  ``as_of``). A contact still waiting for its answer counts as ignored so far. A customer whose
  N most recent contacts on a channel were all ignored is suppressed on it until
  ``suppress_days`` after the last of them.
- impressions: rows of ``decisions`` with an offer, before ``as_of``.

Consent and unsubscribes are hard rules: :meth:`ContactState.allowed` starts from them and
every other rule can only remove customers. Naive datetimes are taken as UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nextbest.data.schema import CHANNELS
from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError

__all__ = [
    "CONSENT_CHANNELS",
    "UNLIMITED",
    "ContactPolicy",
    "ContactState",
    "QuietHours",
    "contact_state",
    "parse_policy",
]

CONSENT_CHANNELS: tuple[str, ...] = ("email", "sms", "push")
"""Channels that need a ``consent_<channel>`` of true in ``customers``."""
UNLIMITED = np.iinfo(np.int32).max
"""What :meth:`ContactState.remaining` gives for a channel without caps."""

_SENDS = {"email_sent": "email", "push_sent": "push", "sms_sent": "sms"}
_LINKED_RESPONSES = ("email_open", "email_click", "push_open", "click", "purchase")
_OPENS = {"email_open": "email", "email_click": "email", "push_open": "push", "click": None}
_RESPONSE_WINDOW = timedelta(days=3)
_FILTER_MAX = 10_000  # up to this many customer ids are pushed into the query as a list
_NOUNS = {"email": ("e-mail", "e-mails"), "sms": ("SMS", "SMS"), "push": ("push", "pushes")}
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_NAT = np.datetime64("NaT", "us")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _channels(values: Any, what: str) -> Any:  # a list or a dict keyed by channel
    unknown = [c for c in values if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel {unknown[0]!r} in {what}; expected one of {CHANNELS}")
    return values


class QuietHours(_Strict):
    """Hours, in one time zone, when the listed channels are not used (may wrap midnight)."""

    start: str = "21:00"
    end: str = "08:00"
    timezone: str = "UTC"
    channels: list[str] = Field(default_factory=lambda: ["push", "sms", "phone"])

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"expected a time as HH:MM such as '21:00', got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}, e.g. 'Europe/Paris'") from None
        return value

    @field_validator("channels")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        result: list[str] = _channels(value, "quiet_hours.channels")
        return result

    def active(self, at: datetime) -> bool:
        """Whether ``at`` falls in the quiet hours (start included, end excluded)."""
        local = _utc(at).astimezone(ZoneInfo(self.timezone))
        now = local.hour * 60 + local.minute
        start, end = (int(t[:2]) * 60 + int(t[3:]) for t in (self.start, self.end))
        return start <= now < end if start <= end else (now >= start or now < end)


class ContactPolicy(_Strict):
    """Caps, suppression and quiet hours; see the module docstring for what each counts."""

    per_day: dict[str, int] = Field(default_factory=dict)
    per_week: dict[str, int] = Field(default_factory=dict)
    offer_impressions: int | None = Field(None, ge=1)
    suppress_after_ignores: int | None = Field(None, ge=1)
    suppress_days: int = Field(14, ge=1)
    quiet_hours: QuietHours | None = None

    @field_validator("per_day", "per_week")
    @classmethod
    def _caps(cls, value: dict[str, int]) -> dict[str, int]:
        _channels(value, "the caps")
        negative = {c: n for c, n in value.items() if n < 0}
        if negative:
            raise ValueError(f"caps must be whole numbers >= 0, got {negative}")
        return value


def parse_policy(raw: Mapping[str, Any], where: str = "contact") -> ContactPolicy:
    """Validate a ``[contact]`` table; errors name ``where`` and the key."""
    try:
        return ContactPolicy.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                model = QuietHours if err["loc"][0] == "quiet_hours" else ContactPolicy
                known = ", ".join(model.model_fields)
                problems.append(f"unknown key '{key}'; known keys: {known}")
            else:
                message = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"'{key}': {message} (got {err.get('input')!r})")
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _ts(value: datetime) -> ir.TimestampValue:
    return ibis.literal(value, type="timestamp('UTC')")


def _np_time(at: datetime) -> np.datetime64:
    return np.datetime64(_utc(at).replace(tzinfo=None), "us")


def _day(value: np.datetime64) -> str:
    return str(value.astype("datetime64[D]"))


@dataclass
class ContactState:
    """Who may be contacted as of :attr:`as_of`; every array follows :attr:`customer_ids`.

    Per channel: ``consent`` (bool, for :data:`CONSENT_CHANNELS`), ``unsubscribed`` (the first
    unsubscribe, NaT if none), ``sent_today`` and ``sent_week`` (contacts counted against the
    caps), ``suppressed_until`` (NaT if not suppressed); ``impressions`` is customers x
    :attr:`offer_ids`. A channel absent from a dict has nothing recorded.
    """

    customer_ids: np.ndarray
    as_of: datetime
    policy: ContactPolicy
    consent: dict[str, np.ndarray]
    unsubscribed: dict[str, np.ndarray] = field(default_factory=dict)
    sent_today: dict[str, np.ndarray] = field(default_factory=dict)
    sent_week: dict[str, np.ndarray] = field(default_factory=dict)
    suppressed_until: dict[str, np.ndarray] = field(default_factory=dict)
    offer_ids: tuple[str, ...] = ()
    impressions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int32))

    def _get(self, table: dict[str, np.ndarray], channel: str, empty: Any) -> np.ndarray:
        if channel not in CHANNELS:
            raise ConfigError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
        return table.get(channel, np.full(len(self.customer_ids), empty))

    def _reachable(self, channel: str) -> np.ndarray:
        """The hard rules: consent where the channel needs it, and never unsubscribed."""
        consent = self.consent.get(channel) if channel in CONSENT_CHANNELS else None
        ok = np.isnat(self._get(self.unsubscribed, channel, _NAT))
        return ok & consent if consent is not None else ok & (channel not in CONSENT_CHANNELS)

    def _headroom(self, channel: str) -> np.ndarray:
        room = np.full(len(self.customer_ids), UNLIMITED, dtype=np.int64)
        for caps, sent in (
            (self.policy.per_day, self.sent_today),
            (self.policy.per_week, self.sent_week),
        ):
            if channel in caps:
                room = np.minimum(room, caps[channel] - self._get(sent, channel, 0))
        return np.maximum(room, 0)

    def allowed(self, channel: str, at: datetime) -> np.ndarray:
        """Bool per customer: may be contacted on ``channel`` at ``at``."""
        ok = self._reachable(channel) & (self._headroom(channel) > 0)
        ok &= ~(self._get(self.suppressed_until, channel, _NAT) > _np_time(at))
        quiet = self.policy.quiet_hours
        if quiet is not None and channel in quiet.channels and quiet.active(at):
            ok[:] = False
        return ok

    def remaining(self, channel: str) -> np.ndarray:
        """Contacts still allowed today on ``channel``: the lower of the day's and the week's
        headroom, :data:`UNLIMITED` when uncapped, 0 when not allowed as of :attr:`as_of`
        (quiet hours aside)."""
        ok = self._reachable(channel)
        ok &= ~(self._get(self.suppressed_until, channel, _NAT) > _np_time(self.as_of))
        return np.where(ok, self._headroom(channel), 0)

    def offer_allowed(self, offer_ids: Sequence[str]) -> np.ndarray:
        """Customers x offers bool: under the per-offer impression limit."""
        n, limit = len(self.customer_ids), self.policy.offer_impressions
        if limit is None:
            return np.ones((n, len(offer_ids)), dtype=bool)
        missing = [o for o in offer_ids if o not in self.offer_ids]
        if missing:
            raise ConfigError(
                f"offer_allowed: no impressions were read for {missing[:5]}; "
                "pass every offer to contact_state(..., offer_ids=...)"
            )
        columns = pd.Index(self.offer_ids).get_indexer(list(offer_ids))
        return np.asarray(self.impressions[:, columns] < limit)

    def reasons(self, i: int, channel: str, at: datetime) -> list[str]:
        """Why customer ``i`` may not be contacted on ``channel`` at ``at``, in words."""
        one, many = _NOUNS.get(channel, (f"{channel} contact", f"{channel} contacts"))
        out = []
        if channel in CONSENT_CHANNELS and not self.consent.get(channel, np.zeros(1, bool))[i]:
            out.append(f"no {one} consent")
        since = self._get(self.unsubscribed, channel, _NAT)[i]
        if not np.isnat(since):
            out.append(f"unsubscribed from {channel} on {_day(since)}")
        for caps, sent, span in (
            (self.policy.per_day, self.sent_today, "today"),
            (self.policy.per_week, self.sent_week, "in the last 7 days"),
        ):
            count = int(self._get(sent, channel, 0)[i])
            if channel in caps and count >= caps[channel]:
                out.append(f"{count} {one if count == 1 else many} {span} (limit {caps[channel]})")
        until = self._get(self.suppressed_until, channel, _NAT)[i]
        if until > _np_time(at):
            out.append(
                f"ignored the last {self.policy.suppress_after_ignores} {many} "
                f"(suppressed until {_day(until)})"
            )
        quiet = self.policy.quiet_hours
        if quiet is not None and channel in quiet.channels and quiet.active(at):
            out.append(f"quiet hours {quiet.start}-{quiet.end} {quiet.timezone}")
        return out


class _Rows:
    """Where customer ids are in the day's order (-1: not there): Arrow's hash lookup, about
    twice as fast as a pandas index of a million Python strings."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = pa.array(ids, type=pa.string())
        self.size = len(ids)
        if pc.count_distinct(self.ids).as_py() != self.size:
            raise ConfigError("contact_state: customer_ids repeat; pass each customer once")

    def __call__(self, values: Any) -> np.ndarray:
        found = pc.index_in(pa.array(values, type=pa.string()), value_set=self.ids)
        return found.fill_null(-1).to_numpy().astype(np.int64)


def _per_channel(
    frame: pd.DataFrame, index: _Rows, column: str, empty: Any
) -> dict[str, np.ndarray]:
    """Scatter a (customer_id, channel, column) result into one array per channel."""
    out: dict[str, np.ndarray] = {}
    rows = index(frame["customer_id"])
    values = frame[column]
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    values = values.to_numpy().astype(np.asarray(empty).dtype)
    for channel in pd.unique(frame["channel"]):
        pick = (frame["channel"] == channel).to_numpy() & (rows >= 0)
        arr = np.full(index.size, empty)
        arr[rows[pick]] = values[pick]
        out[str(channel)] = arr
    return out


def _contacts(events: ir.Table, cut: ir.TimestampValue) -> ir.Table:
    """Every contact before the cut, with ``ignored`` 1 or 0 (see the module docstring)."""
    sends = events.filter(events.type.isin(tuple(_SENDS)), events.ts < cut)
    sends = sends.mutate(channel=ibis.cases(*((sends.type == t, c) for t, c in _SENDS.items())))
    sends = sends.select("event_id", "customer_id", "channel", "ts", "decision_id")
    answered = events.filter(
        events.type.isin(_LINKED_RESPONSES), events.ts < cut, events.decision_id.notnull()
    )
    answered = answered.select("decision_id").distinct().mutate(_answered=ibis.literal(1))
    linked = sends.filter(sends.decision_id.notnull()).left_join(answered, "decision_id")
    linked = linked.select(
        "event_id", "customer_id", "channel", "ts", ignored=linked._answered.isnull().cast("int64")
    )
    opens = events.filter(events.type.isin(tuple(_OPENS)), events.ts < cut)
    opens = opens.select(
        o_customer=opens.customer_id,
        o_channel=ibis.cases(
            *((opens.type == t, c) for t, c in _OPENS.items() if c), else_=opens.channel
        ),
        o_ts=opens.ts,
    )
    bare = sends.filter(sends.decision_id.isnull())
    matched = bare.left_join(
        opens,
        [
            bare.customer_id == opens.o_customer,
            bare.channel == opens.o_channel,
            opens.o_ts >= bare.ts,
            opens.o_ts < bare.ts + ibis.interval(days=_RESPONSE_WINDOW.days),
        ],
    )
    unlinked = matched.group_by(["event_id", "customer_id", "channel", "ts"]).aggregate(
        ignored=(matched.o_ts.count() == 0).cast("int64")
    )
    return linked.union(unlinked)


def contact_state(
    warehouse: Warehouse,
    as_of: datetime,
    policy: ContactPolicy,
    *,
    customer_ids: Sequence[str] | None = None,
    offer_ids: Sequence[str] | None = None,
) -> ContactState:
    """Read consent, unsubscribes, contacts and impressions as of ``as_of``.

    Parameters
    ----------
    warehouse : Warehouse
        The warehouse to read.
    as_of : datetime
        The moment of the decision; only what happened before it counts.
    policy : ContactPolicy
        The caps, suppression and quiet hours to apply.
    customer_ids : sequence of str, optional
        Customers, in the order of the arrays; default every customer, sorted.
    offer_ids : sequence of str, optional
        Offers whose impressions :meth:`ContactState.offer_allowed` may be asked about.

    Returns
    -------
    ContactState
    """
    as_of = _utc(as_of)
    cut, customers = _ts(as_of), warehouse.table("customers")
    if customer_ids is None:
        found = customers.select("customer_id").order_by("customer_id").execute()
        ids = found["customer_id"].to_numpy(dtype=object)
    else:
        ids = np.asarray(list(customer_ids), dtype=object)
    index = _Rows(ids)
    few = customer_ids is not None and len(ids) <= _FILTER_MAX

    def mine(table: ir.Table) -> ir.Table:
        return table.filter(table.customer_id.isin(list(ids))) if few else table

    consent_cols = [f"consent_{c}" for c in CONSENT_CHANNELS]
    found = mine(customers).select("customer_id", *consent_cols).execute()
    rows = index(found["customer_id"])
    consent = {}
    for channel, col in zip(CONSENT_CHANNELS, consent_cols, strict=True):
        arr = np.zeros(len(ids), dtype=bool)
        given = found[col].astype(object).to_numpy()
        arr[rows[rows >= 0]] = (given == True)[rows >= 0]  # noqa: E712 (missing is no consent)
        consent[channel] = arr
    state = ContactState(ids, as_of, policy, consent)

    events = mine(warehouse.table("events"))
    unsub = events.filter(events.type == "unsubscribe", events.ts <= cut)
    unsub = unsub.mutate(channel=unsub.channel.fill_null("email"))
    unsub = unsub.group_by(["customer_id", "channel"]).aggregate(since=unsub.ts.min())
    state.unsubscribed = _per_channel(unsub.execute(), index, "since", _NAT)

    if policy.per_day or policy.per_week:
        sends = events.filter(events.type.isin(tuple(_SENDS)), events.ts < cut)
        sends = sends.mutate(channel=ibis.cases(*((sends.type == t, c) for t, c in _SENDS.items())))
        day = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
        counts = sends.group_by(["customer_id", "channel"]).aggregate(
            today=sends.count(where=sends.ts >= _ts(day)),
            week=sends.count(where=sends.ts >= _ts(as_of - timedelta(days=7))),
        )
        counts = counts.filter(counts.week > 0).execute()
        state.sent_today = _per_channel(counts, index, "today", 0)
        state.sent_week = _per_channel(counts, index, "week", 0)

    if policy.suppress_after_ignores is not None:
        last_n = policy.suppress_after_ignores
        contacts = _contacts(events, cut)
        order = [ibis.desc("ts"), ibis.desc("event_id")]
        rank = ibis.row_number().over(group_by=["customer_id", "channel"], order_by=order)
        recent = contacts.mutate(_rank=rank)
        recent = recent.filter(recent._rank < last_n)
        streak = recent.group_by(["customer_id", "channel"]).aggregate(
            n=recent.count(), ignored=recent.ignored.sum(), last=recent.ts.max()
        )
        streak = streak.filter(
            streak.n == last_n,
            streak.ignored == last_n,
            streak.last > _ts(as_of - timedelta(days=policy.suppress_days)),
        )
        streak = streak.mutate(until=streak.last + ibis.interval(days=policy.suppress_days))
        state.suppressed_until = _per_channel(streak.execute(), index, "until", _NAT)

    state.offer_ids = tuple(offer_ids or ())
    state.impressions = np.zeros((len(ids), len(state.offer_ids)), dtype=np.int32)
    if policy.offer_impressions is not None and state.offer_ids:
        dec = mine(warehouse.table("decisions"))
        dec = dec.filter(dec.offer_id.isin(state.offer_ids), dec.ts < cut)
        shown = dec.group_by(["customer_id", "offer_id"]).aggregate(n=dec.count()).execute()
        rows = index(shown["customer_id"])
        cols = pd.Index(state.offer_ids).get_indexer(shown["offer_id"])
        keep = rows >= 0
        state.impressions[rows[keep], cols[keep]] = shown["n"].to_numpy()[keep]
    return state
