"""The Personalizer-compatible API's models: its wire schemas and the learner behind it.

The schemas are Azure Personalizer's REST bodies (camelCase, unknown fields refused). The
learner follows what Azure Personalizer ran, Vowpal Wabbit's ``--cb_explore_adf --epsilon 0.2``
with quadratic interactions between the context and the actions:

* **Features.** A list of feature objects is flattened (:func:`flatten`): text becomes
  ``"ns.key=value"`` with the value 1, a number becomes ``"ns.key"`` with the number, ``true``
  becomes ``"ns.key"`` with 1 (``false`` and ``null`` add nothing), nested objects extend the
  name with ``.``, arrays of numbers are indexed (``"ns.key[0]"``). Each action also gets an
  implicit ``_action.id=<id>`` feature, so actions that share features can still be told apart.
* **Hashing.** Names are hashed with keyed BLAKE2b (a fixed seed, stable across processes,
  unlike :func:`hash`) into ``2**bits`` buckets. Context features and action features, each
  with a constant added, are crossed: every pair (context x action) gets a bucket, so the crossed
  vector holds the interactions, the action-only and context-only features and a bias.
* **Regression.** A linear model of the reward on the crossed features, trained online on the
  chosen action only, with importance weight ``1 / p`` (the probability it was chosen with) on
  the squared loss: VW's ``cb_adf`` with its default ``mtr`` reduction (an IPS-weighted
  regression). Each step is VW's default one: per-coordinate adaptive (AdaGrad, Duchi et al.
  2011), normalized (Ross, Mineiro & Langford 2013, "Normalized online learning": without it
  the step grows with the number of features and the estimates chase the last few rewards) and
  importance-invariant (Karampatziakis & Langford 2011, "Online importance weight aware
  updates"): a large weight moves the prediction toward the reward but never past it.
* **Policy.** Epsilon-greedy over the eligible actions: the greedy one gets ``1 - eps + eps/k``,
  the others ``eps/k``; the draw is seeded from a hash of the event id (and slot id), so the same
  event and model give the same choice.

Everything is plain numpy and deterministic: the same sequence of updates gives bit-identical
weights in every process, which is what lets several workers share one event log.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from nextbest.errors import DataError

__all__ = [
    "CrossedFeatures",
    "ErrorBody",
    "LinearCB",
    "MultiSlotRankRequest",
    "MultiSlotRankResponse",
    "MultiSlotRewardRequest",
    "PersonalizerError",
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
    "choose",
    "context_features",
    "decide",
    "epsilon_greedy",
    "fingerprint",
    "flatten",
    "parse",
    "validation_error",
]

Feature = tuple[str, float]
M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 8  # nesting levels inside one feature object
MAX_FEATURES = 1_000  # flattened features per context, slot or action
_CONSTANT = "\x1fconstant"
_MIX = np.uint64(0x100000001B3)  # the 64-bit FNV prime, to combine two hashes
_STATE_VERSION = 1


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


# -- wire schemas (Personalizer REST v1.0, multi-slot from its 2022 preview) -----------------

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


class ErrorDetail(BaseModel):
    field: str
    expected: str
    received: str


class ErrorContent(BaseModel):
    status: int
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorBody(BaseModel):
    """The JSON body of every 4xx of the service."""

    error: ErrorContent


def validation_error(
    errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = ()
) -> PersonalizerError:
    """A 400 naming each field pydantic (or FastAPI) refused, from ``ValidationError.errors()``."""
    details = []
    for err in errors:
        loc = (*prefix, *err.get("loc", ()))
        kind, value = err.get("type"), err.get("input")
        if kind == "extra_forbidden":
            expected = "no field of this name (Personalizer's names, in camelCase)"
        elif kind == "missing":
            expected, value = "a value (the field is required)", None
        elif kind == "json_invalid":
            expected = "a JSON body"
            value = str(err.get("ctx", {}).get("error", "invalid JSON"))
        else:  # pydantic's "Input should be a valid string" -> "a valid string"
            msg = str(err.get("msg", "a valid value"))
            expected = msg.removeprefix("Input should be ").replace("Value error, ", "")
            expected = expected[:1].lower() + expected[1:]
        field = ".".join(str(part) for part in loc) or "body"
        received = "nothing" if kind == "missing" else describe(value)
        details.append({"field": field, "expected": expected, "received": received})
    first = details[0] if details else {"field": "body", "expected": "?", "received": "?"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    message = f"{first['field']}: expected {first['expected']}, got {first['received']}{more}"
    return PersonalizerError(400, "invalid_request", message, details)


# -- request checks ----------------------------------------------------------------------------


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


# -- features and the learner -----------------------------------------------------------------


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


@lru_cache(maxsize=1 << 16)
def _hash(name: str, key: bytes) -> int:
    data = name.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "little")


@dataclass(frozen=True)
class CrossedFeatures:
    """One (context, action) pair as a sparse vector: unique bucket indices and their values."""

    index: np.ndarray  # int64, unique
    value: np.ndarray  # float64


class LinearCB:
    """The reward regression of a contextual bandit with action-dependent features.

    Parameters
    ----------
    bits : int
        ``2**bits`` hash buckets (VW's ``-b``).
    learning_rate : float
        The base step (VW's ``-l``, default 0.5 there too).
    seed : int
        Keys the feature hash.
    """

    def __init__(self, bits: int = 18, learning_rate: float = 0.5, seed: int = 0) -> None:
        self.bits = bits
        self.learning_rate = learning_rate
        self.seed = seed
        self._key = hashlib.blake2b(str(seed).encode(), digest_size=16).digest()
        self._mask = np.uint64((1 << bits) - 1)
        self.weights_ = np.zeros(1 << bits)
        self.sq_grad_ = np.zeros(1 << bits)  # importance-weighted squared gradients (AdaGrad)
        self.scale_ = np.zeros(1 << bits)  # largest |x| seen per bucket (normalized updates)
        self.total_weight_ = 0.0  # sum of importance weights
        self.total_norm_ = 0.0  # sum of importance x squared norm of x, each x scaled by scale_
        self.n_updates_ = 0

    def _hashes(self, side: str, features: Sequence[Feature]) -> tuple[np.ndarray, np.ndarray]:
        names = [_CONSTANT, *(f"{side}\x1f{name}" for name, _ in features)]
        hashes = np.fromiter((_hash(n, self._key) for n in names), np.uint64, len(names))
        values = np.fromiter((1.0, *(v for _, v in features)), np.float64, len(names))
        return hashes, values

    def cross(self, context: Sequence[Feature], action: Sequence[Feature]) -> CrossedFeatures:
        """The crossed vector of one action in one context (constant x constant is the bias)."""
        hc, vc = self._hashes("c", context)
        ha, va = self._hashes("a", action)
        raw = ((hc[:, None] * _MIX) ^ ha[None, :]) & self._mask
        index, inverse = np.unique(raw.ravel().astype(np.int64), return_inverse=True)
        value = np.bincount(inverse, weights=np.outer(vc, va).ravel(), minlength=len(index))
        return CrossedFeatures(index, value)

    def predict(self, x: CrossedFeatures) -> float:
        """The predicted reward of one crossed vector."""
        return float(self.weights_[x.index] @ x.value)

    def scores(
        self, context: Sequence[Feature], actions: Sequence[Sequence[Feature]]
    ) -> np.ndarray:
        """Predicted rewards of each action in the context."""
        return np.array([self.predict(self.cross(context, a)) for a in actions])

    def learn(self, x: CrossedFeatures, reward: float, importance: float) -> None:
        """One importance-weighted step on the squared loss of ``x`` against ``reward``.

        VW's default update: adaptive (per-bucket AdaGrad rates), normalized (each bucket
        divided by the largest magnitude seen in it, and the step by the average squared norm
        of the examples, so neither the units of a feature nor the number of features sets the
        pace) and importance-invariant (the prediction approaches the reward geometrically in
        the importance weight, never past it).
        """
        residual = self.predict(x) - reward
        self.n_updates_ += 1
        if residual == 0.0 or importance <= 0.0:
            return
        old_scale = self.scale_[x.index]
        scale = np.maximum(old_scale, np.abs(x.value))
        grown = (scale > old_scale) & (old_scale > 0)  # a larger |x| than before: shrink the
        self.weights_[x.index[grown]] *= old_scale[grown] / scale[grown]  # weight, as VW does
        self.scale_[x.index] = scale
        self.total_weight_ += importance
        self.total_norm_ += importance * float(np.sum((x.value / scale) ** 2))
        self.sq_grad_[x.index] += importance * residual**2 * x.value**2
        rate = 1.0 / (np.sqrt(self.sq_grad_[x.index]) * scale)
        along = float(x.value**2 @ rate)  # how far a unit step moves the prediction
        eta = self.learning_rate * self.total_weight_ / self.total_norm_
        step = residual * -math.expm1(-eta * importance * along) / along
        self.weights_[x.index] -= step * rate * x.value

    def config(self) -> str:
        """What a checkpoint must match to be reused."""
        return f"v{_STATE_VERSION} bits={self.bits} lr={self.learning_rate!r} seed={self.seed}"

    def state(self) -> bytes:
        """The learned state, sparse and compressed (the touched buckets only)."""
        touched = np.flatnonzero(self.sq_grad_)
        header = struct.pack(
            "<qqdd", self.n_updates_, len(touched), self.total_weight_, self.total_norm_
        )
        arrays = (touched, self.weights_[touched], self.sq_grad_[touched], self.scale_[touched])
        payload = b"".join(
            a.astype("<i8" if i == 0 else "<f8").tobytes() for i, a in enumerate(arrays)
        )
        return zlib.compress(header + payload, 1)

    def load_state(self, blob: bytes) -> None:
        """Restore :meth:`state` exactly (bit for bit)."""
        raw = zlib.decompress(blob)
        self.n_updates_, n, self.total_weight_, self.total_norm_ = struct.unpack_from("<qqdd", raw)
        touched = np.frombuffer(raw, "<i8", offset=32, count=n)
        arrays = np.frombuffer(raw, "<f8", offset=32 + 8 * n, count=3 * n)
        for i, name in enumerate(("weights_", "sq_grad_", "scale_")):
            full = np.zeros(1 << self.bits)
            full[touched] = arrays[i * n : (i + 1) * n]
            setattr(self, name, full)


def epsilon_greedy(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """Probabilities over the eligible actions: ``1 - eps + eps/k`` to the best, ``eps/k`` else.

    Ties go to the first action (the request's order), as in VW.
    """
    k = len(scores)
    pmf = np.full(k, epsilon / k)
    pmf[int(np.argmax(scores))] += 1.0 - epsilon
    return pmf


def choose(pmf: np.ndarray, event_id: str, slot_id: str = "") -> int:
    """Draw an index from ``pmf`` with a uniform number seeded from the event (and slot) id."""
    data = f"{event_id}\x1f{slot_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8, person=b"nextbest-draw").digest()
    uniform = int.from_bytes(digest, "little") / 2**64
    index = int(np.searchsorted(np.cumsum(pmf), uniform, side="right"))
    return min(index, len(pmf) - 1)


def decide(
    model: LinearCB,
    exploration: float,
    event_id: str,
    context: list[dict[str, Any]],
    slot: tuple[str, list[dict[str, Any]]] | None,
    eligible: Sequence[RankableAction],
) -> dict[str, Any]:
    """Score the eligible actions and draw one; the ranking puts it first, then by score.

    Returns the row to store: the slot id, the raw features (to learn from later), the ranking
    with its probabilities, the chosen action and its probability.
    """
    slot_json = None if slot is None else {"id": slot[0], "features": slot[1]}
    flat = context_features(context, slot_json, "body.slots")
    raw = [a.model_dump(mode="json") for a in eligible]
    scores = model.scores(flat, [action_features(a, "body.actions") for a in raw])
    pmf = epsilon_greedy(scores, exploration)
    pick = choose(pmf, event_id, "" if slot is None else slot[0])
    order = [pick, *sorted((i for i in range(len(raw)) if i != pick), key=lambda i: -scores[i])]
    return {
        "slot_id": "" if slot is None else slot[0],
        "features": {"context": context, "slot": slot_json, "actions": raw},
        "ranking": [raw[i]["id"] for i in order],
        "probabilities": [float(pmf[i]) for i in order],
        "chosen": raw[pick]["id"],
        "chosen_probability": float(pmf[pick]),
    }
