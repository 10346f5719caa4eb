"""The Personalizer-compatible API's wire: its REST bodies, how feature objects read, its 400s.

The schemas are Azure Personalizer's REST v1.0 bodies, plus the multi-slot ones of its 2022
preview: camelCase, unknown fields refused, ``null`` accepted wherever Azure's SDKs send it.
Whatever pydantic cannot say is checked here too (:func:`check_actions`, :func:`check_excluded`,
:func:`check_slots`: unique ids, exclusions and baselines among the actions). A refusal is a
:class:`PersonalizerError`: 400 with the service's error body naming each field (a
:class:`PersonalizerRoute` answers FastAPI's own validation errors that way too), or the 404
and 409 of the service.

Features are lists of feature objects, flattened (:func:`flatten`) the way Personalizer read
them: text becomes ``"ns.key=value"`` with the value 1, a number becomes ``"ns.key"`` with the
number, ``true`` becomes ``"ns.key"`` with 1 (``false`` and ``null`` add nothing), nested
objects extend the name with ``.``, arrays of numbers are indexed (``"ns.key[0]"``). Each
action also gets an implicit ``_action.id=<id>`` feature, so actions that share features can
still be told apart; a slot's features are prefixed ``_slot.`` and its id added.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.exceptions import HTTPException

from nextbest.errors import DataError

__all__ = [
    "MAX_DEPTH",
    "MAX_FEATURES",
    "Feature",
    "MultiSlotRankRequest",
    "MultiSlotRankResponse",
    "MultiSlotRewardRequest",
    "PersonalizerError",
    "PersonalizerRoute",
    "RankRequest",
    "RankResponse",
    "RankableAction",
    "RankedAction",
    "RewardRequest",
    "SlotRequest",
    "SlotResponse",
    "SlotReward",
    "action_features",
    "check_actions",
    "check_excluded",
    "check_slots",
    "context_features",
    "describe",
    "fingerprint",
    "flatten",
    "parse",
    "validation_error",
]

Feature = tuple[str, float]
M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 8  # nesting levels inside one feature object
MAX_FEATURES = 1_000  # flattened features per context, slot or action


# -- the error --------------------------------------------------------------------------------


class PersonalizerError(DataError):
    """A Personalizer request that cannot be served, with the HTTP answer it maps to.

    Parameters
    ----------
    status : int
        400 (bad request), 404 (unknown event) or 409 (event id reused).
    code : str
        ``invalid_request``, ``not_found`` or ``conflict``.
    message : str
        What was expected, what was received, what to do.
    details : list of dict
        ``{"field", "expected", "received"}`` per problem.
    """

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []

    @classmethod
    def invalid(
        cls, field: str, expected: str, received: str, status: int = 400, code: str = ""
    ) -> PersonalizerError:
        """One bad field: ``"<field>: expected <expected>, got <received>"``."""
        message = f"{field}: expected {expected}, got {received}"
        detail = {"field": field, "expected": expected, "received": received}
        return cls(status, code or "invalid_request", message, [detail])

    def body(self) -> dict[str, Any]:
        """The JSON error body shared by every 4xx of the service."""
        error = {"status": self.status, "code": self.code, "message": self.message}
        return {"error": {**error, "details": self.details}}


def describe(value: Any) -> str:
    """A short, data-free description of a received value, for error messages."""
    if isinstance(value, str):
        return repr(value[:60] + ("..." if len(value) > 60 else ""))
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    return "null" if value is None else repr(value)[:60]


# -- wire schemas (Personalizer REST v1.0, multi-slot from its 2022 preview) ------------------

Id = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
Features = Annotated[list[dict[str, Any]], Field(max_length=100)]
Reward = Annotated[float, Field(strict=True, ge=-1.0, le=1.0, allow_inf_nan=False)]  # no bools


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankableAction(_Wire):
    """An action and its features (a list of feature objects)."""

    id: Id
    features: Features


class RankRequest(_Wire):
    """``POST /rank``: at most 50 actions; ``null`` is accepted wherever Azure's SDKs send it."""

    context_features: Features | None = Field(None, alias="contextFeatures")
    actions: list[RankableAction] = Field(min_length=1, max_length=50)
    excluded_actions: list[Id] | None = Field(None, alias="excludedActions", max_length=50)
    event_id: Id | None = Field(None, alias="eventId")
    defer_activation: StrictBool | None = Field(False, alias="deferActivation")


class RankedAction(BaseModel):
    id: str
    probability: float


class RankResponse(BaseModel):
    """The chosen action first (``rewardActionId``), then the others, excluded ones last at 0."""

    ranking: list[RankedAction]
    event_id: str = Field(alias="eventId")
    reward_action_id: str = Field(alias="rewardActionId")


class RewardRequest(_Wire):
    value: Reward


class SlotRequest(_Wire):
    id: Id
    features: Features | None = None
    excluded_actions: list[Id] | None = Field(None, alias="excludedActions", max_length=50)
    baseline_action: Id = Field(alias="baselineAction")


class MultiSlotRankRequest(_Wire):
    """``POST /multislot/rank``: the actions are placed in the slots, in the slots' order."""

    context_features: Features | None = Field(None, alias="contextFeatures")
    actions: list[RankableAction] = Field(min_length=1, max_length=50)
    slots: list[SlotRequest] = Field(min_length=1, max_length=50)
    event_id: Id | None = Field(None, alias="eventId")
    defer_activation: StrictBool | None = Field(False, alias="deferActivation")


class SlotResponse(BaseModel):
    id: str
    reward_action_id: str = Field(alias="rewardActionId")


class MultiSlotRankResponse(BaseModel):
    slots: list[SlotResponse]
    event_id: str = Field(alias="eventId")


class SlotReward(_Wire):
    slot_id: Id = Field(alias="slotId")
    value: Reward


class MultiSlotRewardRequest(_Wire):
    reward: list[SlotReward] = Field(min_length=1, max_length=50)


def validation_error(
    errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = ()
) -> PersonalizerError:
    """A 400 naming each field pydantic (or FastAPI) refused, from ``ValidationError.errors()``."""
    details = []
    for err in errors:
        loc = (*prefix, *err.get("loc", ()))
        kind, received = err.get("type"), describe(err.get("input"))
        if kind == "extra_forbidden":
            expected = "no field of this name (Personalizer's names, in camelCase)"
        elif kind == "missing":
            expected, received = "a value (the field is required)", "nothing"
        elif kind == "json_invalid":  # FastAPI's loc: ("body", the character it failed at)
            problem = err.get("ctx", {}).get("error", "invalid")
            expected, received = "a JSON body", f"not JSON ({problem} at character {loc[-1]})"
        else:  # pydantic's "Input should be a valid string" -> "a valid string"
            msg = str(err.get("msg", "a valid value"))
            expected = msg.removeprefix("Input should be ").replace("Value error, ", "")
            expected = expected[:1].lower() + expected[1:]
        field = ".".join(str(part) for part in loc) or "body"
        details.append({"field": field, "expected": expected, "received": received})
    first = details[0] if details else {"field": "body", "expected": "?", "received": "?"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    message = f"{first['field']}: expected {first['expected']}, got {first['received']}{more}"
    code = "invalid_json" if [e.get("type") for e in errors] == ["json_invalid"] else ""
    return PersonalizerError(400, code or "invalid_request", message, details)


class PersonalizerRoute(APIRoute):
    """A route answering its bad requests itself: 400 and the service's error body.

    (Personalizer answered 400 where FastAPI would say 422; the body names each field.) A
    :class:`PersonalizerError` keeps its own status (404, 409); 401 and 403 are the app's.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                error = validation_error(exc.errors())
            except PersonalizerError as exc:
                error = exc
            except HTTPException as exc:  # FastAPI's "error parsing the body" (not UTF-8 JSON)
                if exc.status_code != 400:
                    raise  # the body limit's 413 is the app's to answer
                error = PersonalizerError.invalid(
                    "body", "a JSON body", "unreadable bytes", code="invalid_json"
                )
            return JSONResponse(error.body(), status_code=error.status)

        return route


# -- request checks ---------------------------------------------------------------------------


def parse(model: type[M], data: M | Mapping[str, Any]) -> M:
    """``data`` as ``model``; a :class:`PersonalizerError` (400) naming the fields if it is not."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(), prefix=("body",)) from None


def fingerprint(kind: str, request: BaseModel) -> str:
    """A hash of a request without its ``eventId``: a retry has the same, a new request not."""
    body = request.model_dump(mode="json", by_alias=True, exclude={"event_id"})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(f"{kind}:{text}".encode()).hexdigest()


def check_actions(actions: Sequence[RankableAction]) -> list[str]:
    """The action ids, once checked unique and their features valid."""
    ids: list[str] = []
    for i, action in enumerate(actions):
        if action.id in ids:
            raise PersonalizerError.invalid(
                f"body.actions.{i}.id", "action ids unique within the request", repr(action.id)
            )
        ids.append(action.id)
        # Validate the parsed values: a JSON dump would have turned NaN into null.
        action_features(
            {"id": action.id, "features": action.features}, f"body.actions.{i}.features"
        )
    return ids


def check_excluded(excluded: Sequence[str], ids: Sequence[str], where: str) -> set[str]:
    """The excluded ids, once checked to be among the actions' (a typo is an error)."""
    for i, action_id in enumerate(excluded):
        if action_id not in ids:
            raise PersonalizerError.invalid(
                f"{where}.{i}", "the id of an action of the request", repr(action_id)
            )
    return set(excluded)


def check_slots(slots: Sequence[SlotRequest], ids: Sequence[str]) -> None:
    """Slot ids unique; each baseline an action of the request, not excluded, not shared."""
    seen: dict[str, str] = {}  # baseline action -> slot id
    for i, slot in enumerate(slots):
        where = f"body.slots.{i}"
        if slot.id in seen.values():
            raise PersonalizerError.invalid(f"{where}.id", "slot ids unique", repr(slot.id))
        excluded = check_excluded(slot.excluded_actions or [], ids, f"{where}.excludedActions")
        flatten(slot.features or [], f"{where}.features")  # validates
        if slot.baseline_action not in ids or slot.baseline_action in excluded:
            raise PersonalizerError.invalid(
                f"{where}.baselineAction",
                "the id of an action of the request that the slot does not exclude",
                repr(slot.baseline_action),
            )
        if slot.baseline_action in seen:
            raise PersonalizerError.invalid(
                f"{where}.baselineAction",
                "a baseline action of this slot only",
                f"{slot.baseline_action!r}, the baseline of slot {seen[slot.baseline_action]!r}",
            )
        seen[slot.baseline_action] = slot.id


# -- features ---------------------------------------------------------------------------------


def flatten(objects: Sequence[Any], where: str, prefix: str = "") -> list[Feature]:
    """Flatten a list of feature objects into ``(name, value)`` pairs.

    Parameters
    ----------
    objects : sequence
        The objects, as in ``contextFeatures`` or an action's ``features``.
    where : str
        Where they came from (``"body.contextFeatures"``), for error messages.
    prefix : str
        Prepended to every name (``"_slot."`` for slot features).

    Raises
    ------
    PersonalizerError
        For an item that is not an object, a number that is not finite, nesting deeper than
        ``MAX_DEPTH`` or more than ``MAX_FEATURES`` features.
    """
    out: list[Feature] = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise PersonalizerError.invalid(f"{where}.{i}", "an object of features", describe(obj))
        for key, value in obj.items():
            _walk(f"{prefix}{key}", value, f"{where}.{i}.{key}", 1, out)
    if len(out) > MAX_FEATURES:
        raise PersonalizerError.invalid(
            where, f"at most {MAX_FEATURES} features once flattened", f"{len(out)}"
        )
    return out


def _walk(name: str, value: Any, where: str, depth: int, out: list[Feature]) -> None:
    if depth > MAX_DEPTH:
        raise PersonalizerError.invalid(where, f"at most {MAX_DEPTH} levels of nesting", "more")
    if value is None or value is False:
        return
    if value is True:
        out.append((name, 1.0))
    elif isinstance(value, str):
        out.append((f"{name}={value}", 1.0))
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise PersonalizerError.invalid(where, "a finite number", describe(value))
        if number != 0.0:
            out.append((name, number))
    elif isinstance(value, dict):
        for key, inner in value.items():
            _walk(f"{name}.{key}", inner, f"{where}.{key}", depth + 1, out)
    elif isinstance(value, list):
        for j, item in enumerate(value):
            if isinstance(item, str):
                out.append((f"{name}={item}", 1.0))
            else:
                _walk(f"{name}[{j}]", item, f"{where}.{j}", depth + 1, out)
    else:  # pragma: no cover - JSON has no other types
        raise PersonalizerError.invalid(where, "a JSON value", type(value).__name__)


def context_features(
    context: Sequence[Any], slot: Mapping[str, Any] | None, where: str
) -> list[Feature]:
    """The context's features; a slot adds its own (prefixed ``_slot.``) and its id."""
    flat = flatten(context, "body.contextFeatures")
    if slot is not None:
        flat += flatten(slot["features"], f"{where}.features", prefix="_slot.")
        flat.append((f"_slot.id={slot['id']}", 1.0))
    return flat


def action_features(action: Mapping[str, Any], where: str) -> list[Feature]:
    """An action's features plus its implicit id feature."""
    return [*flatten(action["features"], where), (f"_action.id={action['id']}", 1.0)]
