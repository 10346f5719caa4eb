"""The Personalizer-compatible API's learner, and the shared log that keeps every process in step.

The learner follows what Azure Personalizer ran, Vowpal Wabbit's ``--cb_explore_adf --epsilon
0.2`` with quadratic interactions between the context and the actions, over the features of
:func:`~nextbest.serve.personalizer_schemas.flatten`:

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

The learner is plain numpy and deterministic: the same sequence of updates gives bit-identical
weights in every process. :class:`SharedLearner` builds on that to let several workers share one
event log in SQLite: ``pz_events`` (one row per event and slot), ``pz_learn`` (the order events
became learnable in, one global sequence) and ``pz_model`` (a checkpoint). Each process keeps
its weights in memory and learns the ``pz_learn`` rows past its watermark, in sequence order, so
every worker converges to the same model; a checkpoint every ``checkpoint_every`` learned
events means a restart replays only the tail.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from nextbest.serve.personalizer_schemas import (
    Feature,
    RankableAction,
    action_features,
    context_features,
)

__all__ = [
    "LOG_SCHEMA",
    "CrossedFeatures",
    "LinearCB",
    "SharedLearner",
    "choose",
    "decide",
    "epsilon_greedy",
    "queue_learning",
]

logger = logging.getLogger(__name__)

_CONSTANT = "\x1fconstant"
_MIX = np.uint64(0x100000001B3)  # the 64-bit FNV prime, to combine two hashes
_STATE_VERSION = 1


# -- the learner ------------------------------------------------------------------------------


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


# -- the shared log ---------------------------------------------------------------------------

_BATCH = 2_000  # pz_learn rows read at a time
_LEARNABLE = (
    "SELECT l.seq, e.features, e.chosen, e.chosen_probability, e.reward FROM pz_learn l "
    "JOIN pz_events e USING (event_id, slot_id) WHERE l.seq > ? ORDER BY l.seq LIMIT ?"
)
LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS pz_events (
    event_id TEXT NOT NULL,
    slot_id TEXT NOT NULL,            -- '' for a single-slot rank
    slot_pos INTEGER NOT NULL,
    ts REAL NOT NULL,                 -- rank time, epoch seconds
    request_hash TEXT NOT NULL,       -- a retry with the same body gets the same answer
    features TEXT NOT NULL,           -- {"context", "slot", "actions": the eligible ones}
    action_ids TEXT NOT NULL,         -- the ranking, JSON
    probabilities TEXT NOT NULL,      -- aligned with action_ids, JSON
    chosen TEXT NOT NULL,
    chosen_probability REAL NOT NULL,
    activated INTEGER NOT NULL,
    activated_ts REAL,
    reward REAL,
    rewarded_ts REAL,
    default_reward INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, slot_id)
);
CREATE INDEX IF NOT EXISTS pz_events_due ON pz_events (activated_ts)
    WHERE reward IS NULL AND activated = 1;
CREATE TABLE IF NOT EXISTS pz_learn (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    slot_id TEXT NOT NULL,
    UNIQUE (event_id, slot_id)
);
CREATE TABLE IF NOT EXISTS pz_model (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    state BLOB NOT NULL
);
"""


def queue_learning(conn: sqlite3.Connection, key: tuple[str, str]) -> None:
    """Queue an (event, slot) for learning: the one global order every worker learns in."""
    conn.execute("INSERT OR IGNORE INTO pz_learn (event_id, slot_id) VALUES (?, ?)", key)


class SharedLearner:
    """A :class:`LinearCB` kept in step with the event log of a shared SQLite file.

    The tables (:data:`LOG_SCHEMA`) are created if absent and the last checkpoint of the same
    settings is loaded; :meth:`catch_up` then learns the events any process queued with
    :func:`queue_learning`. Writing the events is the subclass's part
    (:class:`~nextbest.serve.personalizer.Personalizer`).

    Parameters
    ----------
    db_path : Path
        The SQLite file (created with its folder).
    learning_rate, hash_bits, hash_seed : float, int, int
        The regression's settings (:class:`LinearCB`).
    checkpoint_every : int
        Learned events between two checkpoints of the weights.
    clock : callable
        Returns epoch seconds (the checkpoints' time).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        learning_rate: float,
        hash_bits: int,
        hash_seed: int,
        checkpoint_every: int,
        clock: Callable[[], float],
    ) -> None:
        self.db_path = Path(db_path)
        self.checkpoint_every = checkpoint_every
        self.clock = clock
        self.model_ = LinearCB(hash_bits, learning_rate, hash_seed)
        self.seq_ = 0  # the watermark: every pz_learn row up to it is in the weights
        self.checkpoint_seq_ = 0
        self._lock = threading.RLock()
        self._local = threading.local()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._write(lambda conn: [conn.execute(s) for s in LOG_SCHEMA.split(";") if s.strip()])
        self._load_checkpoint()

    def _db(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode (writes open ``BEGIN IMMEDIATE``)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def close(self) -> None:
        """Close the calling thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _load_checkpoint(self) -> None:
        sql = "SELECT config, seq, state FROM pz_model WHERE name = 'default'"
        found = self._db().execute(sql).fetchone()
        if found is None or found[0] != self.model_.config():
            return
        self.model_.load_state(found[2])
        self.seq_ = self.checkpoint_seq_ = int(found[1])
        logger.info("personalizer: checkpoint loaded at learned event %d", self.seq_)

    def _save_checkpoint(self) -> None:
        state, seq = self.model_.state(), self.seq_
        self._db().execute(
            "INSERT INTO pz_model (name, config, seq, ts, state) VALUES ('default', ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET config = excluded.config, seq = excluded.seq, "
            "ts = excluded.ts, state = excluded.state "
            "WHERE excluded.seq > pz_model.seq OR excluded.config != pz_model.config",
            (self.model_.config(), seq, self.clock(), state),
        )
        self.checkpoint_seq_ = seq
        logger.info("personalizer: checkpoint at learned event %d (%d bytes)", seq, len(state))

    def catch_up(self) -> int:
        """Learn every queued event past the watermark, in queue order; returns how many."""
        learned = 0
        with self._lock:
            while True:
                rows = self._db().execute(_LEARNABLE, (self.seq_, _BATCH)).fetchall()
                for seq, features, chosen, probability, reward in rows:
                    stored = json.loads(features)
                    context = context_features(stored["context"], stored["slot"], "stored")
                    action = next(a for a in stored["actions"] if a["id"] == chosen)
                    x = self.model_.cross(context, action_features(action, "stored"))
                    self.model_.learn(x, float(reward), 1.0 / float(probability))
                    self.seq_ = int(seq)
                learned += len(rows)
                if self.seq_ - self.checkpoint_seq_ >= self.checkpoint_every:
                    self._save_checkpoint()
                if len(rows) < _BATCH:
                    return learned

    @property
    def weights(self) -> np.ndarray:
        """A copy of the regression weights (one per hash bucket)."""
        with self._lock:
            return self.model_.weights_.copy()
