"""An Azure Personalizer-compatible rank/reward service, for teams the retired service left behind.

The wire format is Personalizer's REST API v1.0 (``/rank``, ``/events/{eventId}/reward``,
``/events/{eventId}/activate``) plus the multi-slot calls of its later previews
(``/multislot/...``), in :mod:`nextbest.serve.personalizer_schemas`; the learner
(:mod:`nextbest.serve.personalizer_model`) is Personalizer's Vowpal Wabbit setting,
``--cb_explore_adf --epsilon 0.2`` with context x action interactions, kept in step across
worker processes through the shared SQLite file. This module holds the service,
:class:`Personalizer`, and its routes, :func:`personalizer_router`.

Behaviour worth knowing, where Personalizer left a choice:

* Rewards: the **first** reward of an event is kept, later ones are ignored (Personalizer's
  default ``rewardAggregation = earliest``); the reward route answers 204 either way and says
  which in the ``X-Reward-Status`` header (``recorded``, ``duplicate``, ``late``, ``pending``).
* An activated event with no reward after ``reward_wait`` seconds (default 600, Personalizer's
  10 minutes; counted from the rank, or from the activation of a deferred event) gets
  ``default_reward`` (default 0) and is learned from; a reward after that is ``late``. This is
  applied lazily, on the next call, with the injectable clock.
* A deferred event (``deferActivation: true``) is never learned from until it is activated; a
  reward that arrives first is kept and learned at activation (``pending``).
* A rank with an ``eventId`` already used returns the stored answer if the request is the same
  (a retry) and 409 if it differs. Excluded ids must be among the actions; they are listed last
  in the ranking with probability 0.
* Bad requests are 400 (as Personalizer answered, not FastAPI's 422) with the service's error
  body naming each field; unknown events are 404.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime,
# including aliases local to personalizer_router.
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from nextbest.errors import ConfigError
from nextbest.serve.errors import ErrorBody
from nextbest.serve.personalizer_model import SharedLearner, decide, queue_learning
from nextbest.serve.personalizer_schemas import (
    MultiSlotRankRequest,
    MultiSlotRankResponse,
    MultiSlotRewardRequest,
    PersonalizerError,
    PersonalizerRoute,
    RankedAction,
    RankRequest,
    RankResponse,
    RewardRequest,
    SlotResponse,
    check_actions,
    check_excluded,
    check_slots,
    fingerprint,
    parse,
)

__all__ = ["Personalizer", "PersonalizerError", "personalizer_router"]


_INSERT = (
    "INSERT INTO pz_events (event_id, slot_id, slot_pos, ts, request_hash, features, action_ids, "
    "probabilities, chosen, chosen_probability, activated, activated_ts) VALUES (:event_id, "
    ":slot_id, :slot_pos, :ts, :request_hash, :features, :ranking, :probabilities, :chosen, "
    ":chosen_probability, :activated, :activated_ts)"
)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _decision(slot_id: str, ranking: str, probabilities: str, chosen: str) -> dict[str, Any]:
    """A stored decision, as :func:`~nextbest.serve.personalizer_model.decide` returned it."""
    loaded = {"ranking": json.loads(ranking), "probabilities": json.loads(probabilities)}
    return {"slot_id": slot_id, "chosen": chosen, **loaded}


def _not_found(event_id: str, kind: str = "") -> PersonalizerError:
    message = f"no {kind}event with eventId {event_id!r}: rank it first"
    return PersonalizerError(404, "not_found", message, [])


class Personalizer(SharedLearner):
    """Rank, reward and activate, with the learner kept in step with the shared SQLite file.

    Parameters
    ----------
    db_path : Path
        The online store (``WORKSPACE/serving/online.db``); the ``pz_*`` tables are created.
    exploration : float
        Personalizer's ``explorationPercentage``: the epsilon of epsilon-greedy, in [0, 1].
    reward_wait : float
        Seconds an activated event waits for its reward before ``default_reward`` applies.
    default_reward : float
        In [-1, 1].
    learning_rate, hash_bits, hash_seed : float, int, int
        The regression's settings (:class:`~nextbest.serve.personalizer_model.LinearCB`).
    checkpoint_every : int
        Learned events between two checkpoints of the weights.
    clock : callable
        Returns epoch seconds; tests pass a fake one.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        exploration: float = 0.2,
        reward_wait: float = 600.0,
        default_reward: float = 0.0,
        learning_rate: float = 0.5,
        hash_bits: int = 18,
        hash_seed: int = 0,
        checkpoint_every: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        checks = [
            ("exploration", exploration, 0.0 <= exploration <= 1.0, "a number in [0, 1]"),
            ("reward_wait", reward_wait, reward_wait > 0, "a number of seconds > 0"),
            ("default_reward", default_reward, -1 <= default_reward <= 1, "a number in [-1, 1]"),
            ("learning_rate", learning_rate, learning_rate > 0, "a number > 0"),
            ("hash_bits", hash_bits, 8 <= hash_bits <= 26, "an integer in [8, 26]"),
            ("checkpoint_every", checkpoint_every, checkpoint_every >= 1, "an integer >= 1"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"Personalizer {name} must be {expected}, got {value!r}")
        super().__init__(
            db_path,
            learning_rate=learning_rate,
            hash_bits=hash_bits,
            hash_seed=hash_seed,
            checkpoint_every=checkpoint_every,
            clock=clock,
        )
        self.exploration = exploration
        self.reward_wait = reward_wait
        self.default_reward = default_reward

    # -- default rewards and learning ----------------------------------------------------------

    @staticmethod
    def _set_reward(
        conn: sqlite3.Connection, key: tuple[str, str], value: float, now: float, *,
        default: bool, learnable: bool,
    ) -> None:  # fmt: skip
        conn.execute(
            "UPDATE pz_events SET reward = ?, rewarded_ts = ?, default_reward = ? "
            "WHERE event_id = ? AND slot_id = ?",
            (value, now, int(default), *key),
        )
        if learnable:
            queue_learning(conn, key)

    def _apply_default_rewards(self, now: float) -> int:
        """Give ``default_reward`` to activated events whose wait is over; returns how many."""
        due = "FROM pz_events WHERE reward IS NULL AND activated = 1 AND activated_ts <= ?"
        cutoff = (now - self.reward_wait,)
        if self._db().execute(f"SELECT 1 {due} LIMIT 1", cutoff).fetchone() is None:
            return 0  # the common case costs one indexed read, no write lock

        def work(conn: sqlite3.Connection) -> int:
            keys = conn.execute(
                f"SELECT event_id, slot_id {due} ORDER BY activated_ts, event_id, slot_pos", cutoff
            ).fetchall()
            for key in keys:
                self._set_reward(conn, key, self.default_reward, now, default=True, learnable=True)
            return len(keys)

        return int(self._write(work))

    def sync(self) -> int:
        """Apply due default rewards, then learn every learnable event past the watermark.

        Returns
        -------
        int
            How many events this call learned.
        """
        self._apply_default_rewards(self.clock())
        return self.catch_up()

    # -- rank ----------------------------------------------------------------------------------

    def rank(self, request: RankRequest | Mapping[str, Any]) -> RankResponse:
        """Rank the actions; the first of the ranking is ``rewardActionId``, the one to show.

        Raises
        ------
        PersonalizerError
            400 for a malformed request, 409 for an ``eventId`` reused with another request.
        """
        req = parse(RankRequest, request)
        ids = check_actions(req.actions)
        excluded = check_excluded(req.excluded_actions or [], ids, "body.excludedActions")
        eligible = [a for a in req.actions if a.id not in excluded]
        if not eligible:
            raise PersonalizerError.invalid(
                "body.excludedActions",
                "at least one action left to rank once the excluded ones are removed",
                f"all {len(ids)} actions excluded",
            )
        event_id, context = req.event_id or uuid.uuid4().hex, req.context_features or []
        self.sync()
        with self._lock:
            slot = decide(self.model_, self.exploration, event_id, context, None, eligible)
        slot["ranking"] += [a.id for a in req.actions if a.id in excluded]
        slot["probabilities"] += [0.0] * len(excluded)
        stored = self._store(event_id, fingerprint("rank", req), [slot], req.defer_activation)
        ranking = [
            RankedAction(id=i, probability=p)
            for i, p in zip(stored[0]["ranking"], stored[0]["probabilities"], strict=True)
        ]
        return RankResponse(ranking=ranking, eventId=event_id, rewardActionId=stored[0]["chosen"])

    def rank_multi_slot(
        self, request: MultiSlotRankRequest | Mapping[str, Any]
    ) -> MultiSlotRankResponse:
        """Fill each slot, in order, with one action; an action fills at most one slot.

        Each slot is its own bandit decision, in the context plus the slot's features and id,
        over the actions it does not exclude and earlier slots did not take (VW's conditional
        contextual bandit). Rewards are per slot.
        """
        req = parse(MultiSlotRankRequest, request)
        ids = check_actions(req.actions)
        check_slots(req.slots, ids)
        event_id, context = req.event_id or uuid.uuid4().hex, req.context_features or []
        self.sync()
        placed: set[str] = set()
        decisions = []
        for i, slot in enumerate(req.slots):
            left = set(slot.excluded_actions or []) | placed
            eligible = [a for a in req.actions if a.id not in left]
            if not eligible:
                raise PersonalizerError.invalid(
                    f"body.slots.{i}",
                    "an action left for the slot once its exclusions and the actions of "
                    "earlier slots are removed",
                    "none left",
                )
            this = (slot.id, slot.features or [])
            with self._lock:
                decided = decide(self.model_, self.exploration, event_id, context, this, eligible)
            placed.add(decided["chosen"])
            decisions.append(decided)
        key = fingerprint("multislot", req)
        stored = self._store(event_id, key, decisions, req.defer_activation)
        slots = [SlotResponse(id=s["slot_id"], rewardActionId=s["chosen"]) for s in stored]
        return MultiSlotRankResponse(slots=slots, eventId=event_id)

    def _store(
        self, event_id: str, fingerprint: str, slots: list[dict[str, Any]], deferred: bool | None
    ) -> list[dict[str, Any]]:
        """Write the decisions, or return the stored ones for a retry of the same request."""
        now = self.clock()

        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT request_hash, slot_id, action_ids, probabilities, chosen FROM pz_events "
                "WHERE event_id = ? ORDER BY slot_pos",
                (event_id,),
            ).fetchall()
            if rows and rows[0][0] != fingerprint:
                raise PersonalizerError.invalid(
                    "body.eventId",
                    "an eventId not used before (or the same request again, for the same answer)",
                    f"{event_id!r}, already used for a different request",
                    status=409,
                    code="conflict",
                )
            if rows:
                return [_decision(*row[1:]) for row in rows]
            for pos, s in enumerate(slots):
                shown = {"activated": int(not deferred), "activated_ts": None if deferred else now}
                encoded = {k: _json(s[k]) for k in ("features", "ranking", "probabilities")}
                row = {**s, **encoded, **shown, "event_id": event_id, "slot_pos": pos, "ts": now}
                conn.execute(_INSERT, {**row, "request_hash": fingerprint})
            return slots

        result: list[dict[str, Any]] = self._write(work)
        return result

    # -- reward and activate -------------------------------------------------------------------

    def reward(self, event_id: str, value: float) -> str:
        """Record the reward of a single-slot event; the first reward is kept.

        Returns
        -------
        str
            ``"recorded"``; ``"pending"`` (a deferred event not yet activated: learned at
            activation); ``"duplicate"`` (a reward was already kept: this one is ignored);
            ``"late"`` (the wait was over, the default reward applied: ignored).

        Raises
        ------
        PersonalizerError
            404 for an unknown event, 400 for a value outside [-1, 1].
        """
        checked = parse(RewardRequest, {"value": value})
        return self._reward(event_id, [("", checked.value, "body.value")], multi=False)[0]

    def reward_multi_slot(
        self, event_id: str, request: MultiSlotRewardRequest | Mapping[str, Any]
    ) -> list[str]:
        """Record per-slot rewards of a multi-slot event; one status per reward, as in reward."""
        req = parse(MultiSlotRewardRequest, request)
        items = [(r.slot_id, r.value, f"body.reward.{i}.slotId") for i, r in enumerate(req.reward)]
        return self._reward(event_id, items, multi=True)

    def _reward(
        self, event_id: str, items: list[tuple[str, float, str]], *, multi: bool
    ) -> list[str]:
        now = self.clock()

        def work(conn: sqlite3.Connection) -> list[str]:
            rows = {
                r[0]: list(r[1:])
                for r in conn.execute(
                    "SELECT slot_id, activated, activated_ts, reward, default_reward "
                    "FROM pz_events WHERE event_id = ?",
                    (event_id,),
                )
            }
            if not rows or ("" in rows) == multi:
                raise _not_found(event_id, "multi-slot " if multi else "single-slot ")
            statuses = []
            for slot_id, value, where in items:
                if slot_id not in rows:
                    raise PersonalizerError.invalid(where, "a slot id of the event", repr(slot_id))
                activated, activated_ts, kept, was_default = rows[slot_id]
                key = (event_id, slot_id)
                if kept is not None:
                    statuses.append("late" if was_default else "duplicate")
                    continue
                late = activated and activated_ts + self.reward_wait <= now
                if late:
                    value = self.default_reward
                self._set_reward(conn, key, value, now, default=late, learnable=bool(activated))
                rows[slot_id][2:] = [value, late]
                statuses.append("late" if late else "recorded" if activated else "pending")
            return statuses

        result: list[str] = self._write(work)
        return result

    def activate(self, event_id: str) -> None:
        """Mark a deferred event as shown: it now waits for its reward and will be learned.

        Activating an event twice, or one that was not deferred, changes nothing.
        """
        now = self.clock()

        def work(conn: sqlite3.Connection) -> None:
            rows = conn.execute(
                "SELECT slot_id, activated, reward FROM pz_events WHERE event_id = ?", (event_id,)
            ).fetchall()
            if not rows:
                raise _not_found(event_id)
            for slot_id, activated, reward in rows:
                if activated:
                    continue
                conn.execute(
                    "UPDATE pz_events SET activated = 1, activated_ts = ? "
                    "WHERE event_id = ? AND slot_id = ?",
                    (now, event_id, slot_id),
                )
                if reward is not None:
                    queue_learning(conn, (event_id, slot_id))

        self._write(work)


# -- HTTP -------------------------------------------------------------------------------------


def personalizer_router(
    personalizer_for: Callable[[Request], Personalizer], auth: Callable[[str], Any]
) -> APIRouter:
    """The Personalizer REST routes, to mount at ``/personalizer/v1.0``.

    Parameters
    ----------
    personalizer_for : callable
        Returns the :class:`Personalizer` of a request (e.g. ``request.app.state.personalizer``).
    auth : callable
        ``auth(scope)`` returns a FastAPI dependency that admits callers with that scope: rank
        needs ``"decide"``, reward and activate ``"events"``.
    """
    router = APIRouter(route_class=PersonalizerRoute, tags=["personalizer"])
    decide_scope, events_scope = [Depends(auth("decide"))], [Depends(auth("events"))]
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "Invalid request: the body names the field"},
        404: {"model": ErrorBody, "description": "Unknown event"},
        409: {"model": ErrorBody, "description": "eventId already used for another request"},
    }

    def current(request: Request) -> Personalizer:
        return personalizer_for(request)

    Pz = Annotated[Personalizer, Depends(current)]
    EventId = Annotated[str, PathParam(min_length=1, max_length=256)]

    def rank(body: RankRequest, pz: Pz) -> RankResponse:
        """Rank actions for a context (Personalizer ``Rank``); the first is the one to show."""
        return pz.rank(body)

    def reward(eventId: EventId, body: RewardRequest, pz: Pz) -> Response:
        """Report an event's reward; the first is kept, ``X-Reward-Status`` says what happened."""
        status = pz.reward(eventId, body.value)
        return Response(status_code=204, headers={"X-Reward-Status": status})

    def activate(eventId: EventId, pz: Pz) -> Response:
        """Report that a deferred event was shown: from now on it waits for its reward."""
        pz.activate(eventId)
        return Response(status_code=204)

    def rank_multi_slot(body: MultiSlotRankRequest, pz: Pz) -> MultiSlotRankResponse:
        """Place actions in slots (Personalizer ``MultiSlot_Rank``)."""
        return pz.rank_multi_slot(body)

    def reward_multi_slot(eventId: EventId, body: MultiSlotRewardRequest, pz: Pz) -> Response:
        """Report per-slot rewards; ``X-Reward-Status`` lists one status per reward."""
        statuses = pz.reward_multi_slot(eventId, body)
        return Response(status_code=204, headers={"X-Reward-Status": ",".join(statuses)})

    routes: list[tuple[str, Callable[..., Any], int, list[Any]]] = [
        ("/rank", rank, 201, decide_scope),
        ("/events/{eventId}/reward", reward, 204, events_scope),
        ("/events/{eventId}/activate", activate, 204, events_scope),
        ("/multislot/rank", rank_multi_slot, 201, decide_scope),
        ("/multislot/events/{eventId}/reward", reward_multi_slot, 204, events_scope),
        ("/multislot/events/{eventId}/activate", activate, 204, events_scope),
    ]
    for path, endpoint, status, scope in routes:
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            status_code=status,
            dependencies=scope,
            responses=errors,
            name=path.strip("/").replace("/", "_").replace("{eventId}", "id"),
            response_class=Response if status == 204 else JSONResponse,
        )
    return router
