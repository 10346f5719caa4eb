"""Candidate policies for off-policy evaluation, named by a small spec, and their evaluation.

``SPEC := NAME [":" VERSION] ["," "explore=" SHARE]``, where NAME is one of:

- ``uniform``: each slot of a context shows one of the day's candidates (the offers logged
  that day) uniformly at random;
- ``popular``: the day's candidates ranked by the rewards (clicks or purchases, as evaluated)
  linked to them before the day, the same slate for everyone; ties by offer id;
- ``logged``: the logging policy itself (``pi_e = p_b``), a sanity check: its IPS estimate is
  the on-policy value. The direct and doubly robust methods need its probability of every
  other offer, which the log does not hold, so they are not available for it;
- ``model[:VERSION]``: each context's candidates ranked by the propensity model of the
  workspace (the latest, or ``VERSION``), best first, among the pairs the campaign allows;
  scores come from :func:`nextbest.decide.day_inputs` for each logged day.

``explore=SHARE`` (``popular``, ``model``) shows in each slot, with probability SHARE, a
uniformly drawn candidate instead, so ``pi_e(a, k | x) = (1 - SHARE) 1[a = g_k(x)] +
SHARE / m``. Every candidate policy fills as many slots as the day's decisions did, for every
context, held-out customers included. The policy enters the estimators as *marginals*: the
probability of each offer in each slot, per day or per customer and day
(:func:`policy_feedback`); the reward model of the direct and doubly robust methods is
:func:`nextbest.measure.ope_data.reward_table`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.day import day_inputs
from nextbest.errors import ConfigError, DataError
from nextbest.features.decision_features import RESPONSES
from nextbest.measure.ope import ESTIMATORS, make_estimator
from nextbest.measure.ope_data import DecisionLog, reward_table
from nextbest.measure.ope_feedback import LoggedFeedback
from nextbest.models.store import Manifest, ModelStore

__all__ = [
    "POLICY_KINDS",
    "OpeReport",
    "OpeResult",
    "PolicySpec",
    "evaluate_policy",
    "parse_policy",
    "policy_feedback",
]

POLICY_KINDS: dict[str, str] = {
    "uniform": "uniform over the offers logged as candidates that day",
    "popular": "the offers most rewarded so far, the same for everyone",
    "logged": "the logging policy itself (a sanity check)",
    "model": "greedy top-k by the propensity model, model[:VERSION][,explore=SHARE]",
}
_SPEC = re.compile(r"^(?P<kind>[a-z]+)(?::v?(?P<version>\d+))?(?:,explore=(?P<explore>[0-9.]+))?$")


@dataclass(frozen=True)
class PolicySpec:
    """A parsed ``--policy`` spec."""

    kind: str
    version: int | None = None
    explore: float = 0.0

    def __str__(self) -> str:
        text = self.kind + (f":{self.version}" if self.version is not None else "")
        return text + (f",explore={self.explore:g}" if self.explore else "")


def parse_policy(text: str) -> PolicySpec:
    """``uniform``, ``popular[,explore=E]``, ``logged`` or ``model[:VERSION][,explore=E]``."""
    known = "; ".join(f"{k} ({v})" for k, v in POLICY_KINDS.items())
    found = _SPEC.match(text.strip().lower())
    if not found or found["kind"] not in POLICY_KINDS:
        raise ConfigError(f"--policy: unknown policy {text!r}; expected one of: {known}")
    kind, version, explore = found["kind"], found["version"], found["explore"]
    if version is not None and kind != "model":
        raise ConfigError(f"--policy {text!r}: only model takes a version (model:3)")
    if explore is not None and kind not in ("popular", "model"):
        raise ConfigError(f"--policy {text!r}: explore= applies to popular and model only")
    share = float(explore) if explore is not None else 0.0
    if not 0 <= share <= 1:
        raise ConfigError(f"--policy {text!r}: explore must be between 0 and 1, got {share:g}")
    return PolicySpec(kind, int(version) if version is not None else None, share)


def _candidates(log: DecisionLog) -> pd.DataFrame:
    """Per day and candidate offer: the day's slots ``k`` and candidates ``m``."""
    rows = log.rows
    cand = rows[["day", "offer_id"]].drop_duplicates().sort_values(["day", "offer_id"])
    per_day = rows.groupby("day").agg(k=("slot", "max"), m=("offer_id", "nunique"))
    return cand.merge(per_day, on="day").reset_index(drop=True)


def _uniform(log: DecisionLog, share: float = 1.0) -> pd.DataFrame:
    cand = _candidates(log)
    slots = [cand.assign(slot=j) for j in range(1, int(cand.k.max()) + 1)]  # a loop over slots
    table = pd.concat(slots, ignore_index=True)
    table = table[table.slot <= table.k]
    return table.assign(probability=share / table.m)[["day", "slot", "offer_id", "probability"]]


def _rewarded_before(warehouse: Warehouse, reward: str) -> pd.DataFrame:
    ev = warehouse.table("events")
    ev = ev.filter(ev.type.isin(RESPONSES[reward]), ev.offer_id.notnull())
    ev = ev.mutate(day=ev.ts.truncate("D"))
    got = ev.group_by(["offer_id", "day"]).aggregate(n=ev.count()).to_pandas()
    got["day"] = pd.to_datetime(got.day, utc=True)
    return got


def _popular(log: DecisionLog, warehouse: Warehouse, share: float) -> pd.DataFrame:
    history = _rewarded_before(warehouse, log.reward)
    parts = []
    for day, cand in _candidates(log).groupby("day"):  # a loop over logged days
        earlier = history[history.day < day].groupby("offer_id").n.sum()
        score = cand.offer_id.map(earlier).fillna(0).to_numpy()
        order = np.lexsort((cand.offer_id.to_numpy(), -score))[: int(cand.k.iloc[0])]
        parts.append(
            pd.DataFrame(
                {"day": day, "slot": np.arange(1, len(order) + 1), "probability": 1.0 - share}
            ).assign(offer_id=cand.offer_id.to_numpy()[order])
        )
    return pd.concat(parts, ignore_index=True)


class _PinnedStore(ModelStore):
    """A model store whose latest propensity model is a chosen version (``model:VERSION``)."""

    def __init__(self, root: Any, version: int) -> None:
        super().__init__(root)
        self.version = version

    def load(self, kind: str, version: int | None = None) -> tuple[Any, Manifest]:
        return super().load(kind, self.version if kind == "propensity" else version)


def _model(
    log: DecisionLog,
    warehouse: Warehouse,
    store: ModelStore,
    campaign: CampaignFile,
    spec: PolicySpec,
) -> pd.DataFrame:
    if spec.version is not None:
        store.manifest("propensity", spec.version)  # a clear error for an unknown version
        store = _PinnedStore(store.root, spec.version)
    parts = []
    cand = _candidates(log)
    for day, ctx in log.contexts.groupby("day"):  # a loop over logged days: one scoring each
        offers = cand[cand.day == day]
        if offers.empty:
            continue
        k = int(offers.k.iloc[0])
        ids = sorted(ctx.customer_id.unique())
        inputs = day_inputs(warehouse, store, campaign, day.to_pydatetime(), customer_ids=ids)
        column = {o: j for j, o in enumerate(inputs.offers.offer_id)}
        where = np.array([column.get(o, -1) for o in offers.offer_id])
        score = np.where(where >= 0, inputs.p_response[:, np.maximum(where, 0)], -np.inf)
        score[~inputs.eligible[:, np.maximum(where, 0)]] = -np.inf
        best = np.argsort(-score, axis=1, kind="stable")[:, :k]
        ok = np.isfinite(np.take_along_axis(score, best, axis=1))
        who, slot = np.nonzero(ok)
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": inputs.customer_ids[who],
                    "day": day,
                    "slot": slot + 1,
                    "offer_id": offers.offer_id.to_numpy()[best[who, slot]],
                    "probability": 1.0 - spec.explore,
                }
            )
        )
    if not parts:
        raise DataError("model: no logged day has candidate offers to rank")
    return pd.concat(parts, ignore_index=True)


def policy_feedback(
    log: DecisionLog,
    marginals: list[pd.DataFrame],
    reward_model: np.ndarray | None = None,
) -> LoggedFeedback:
    """The log's feedback with an evaluation policy given by its marginals, and a reward model.

    Each frame of ``marginals`` has ``slot``, ``offer_id``, ``probability`` and either ``day``
    (the same for every customer that day) or ``customer_id`` and ``day``; their probabilities
    add up (a greedy part and an exploring part). ``reward_model`` is positions x actions
    (default: :func:`reward_table` of the log); an offer the log never showed gets its slot's
    mean.
    """
    fb, rows, ctx = log.feedback, log.rows, log.contexts
    table = reward_table(fb) if reward_model is None else np.asarray(reward_model, float)
    code = {o: j for j, o in enumerate(log.offers)}
    shown = np.bincount(fb.position - 1, minlength=len(table))[: len(table)]
    earned = np.bincount(fb.position - 1, weights=fb.reward, minlength=len(table))[: len(table)]
    slot_mean = earned / np.maximum(shown, 1)
    pi_e = np.zeros(len(fb))
    q_pi = np.zeros(len(ctx))
    slots = np.zeros(len(ctx))
    for part in marginals:  # a loop over the policy's parts (at most two)
        by = ["customer_id", "day"] if "customer_id" in part.columns else ["day"]
        keyed = rows[[*by, "slot", "offer_id"]].merge(
            part, on=[*by, "slot", "offer_id"], how="left", validate="many_to_one"
        )
        pi_e += keyed.probability.fillna(0.0).to_numpy()
        j = part.offer_id.map(code).fillna(-1).to_numpy(dtype=np.int64)
        k = np.minimum(part.slot.to_numpy(dtype=np.int64), len(table)) - 1
        q = np.where(j >= 0, table[k, np.maximum(j, 0)], slot_mean[k])
        sums = part.assign(q=part.probability * q).groupby(by)[["q", "probability"]].sum()
        found = ctx[by].merge(sums, left_on=by, right_index=True, how="left")
        q_pi += found.q.fillna(0.0).to_numpy()
        slots += found.probability.fillna(0.0).to_numpy()
    q_hat = table[np.minimum(fb.position, len(table)) - 1, fb.action]
    return fb.replace(pi_e=np.minimum(pi_e, 1.0), pi_e_slots=slots, q_hat=q_hat, q_hat_pi=q_pi)


_FIXED_MODEL = "its interval holds the reward model fixed: it shows sampling, not model error"


@dataclass(frozen=True)
class OpeResult:
    """One estimator's estimate of a policy's value, or why it is not available."""

    estimator: str
    estimate: float | None
    lower: float | None
    upper: float | None
    relative: float | None  # estimate / the logging policy's on-policy value
    effective_sample_size: float | None
    note: str = ""


@dataclass(frozen=True)
class OpeReport:
    """A policy evaluated on a decision log by several estimators."""

    policy: str
    reward: str
    contexts: int
    rows: int
    on_policy_value: float
    alpha: float
    results: list[OpeResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy(
    log: DecisionLog,
    spec: PolicySpec | str,
    estimators: tuple[str, ...] = ("ips", "snips", "dm", "dr"),
    *,
    warehouse: Warehouse | None = None,
    store: ModelStore | None = None,
    campaign: CampaignFile | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 500,
    random_state: int | None = 0,
    clip: float | None = None,
) -> OpeReport:
    """Estimate the value of the policy ``spec`` on ``log`` with each of ``estimators``."""
    spec = parse_policy(spec) if isinstance(spec, str) else spec
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ConfigError(
            f"--estimator: unknown {unknown[0]!r}; expected one of {', '.join(ESTIMATORS)}"
        )
    if spec.kind == "logged":
        fb = log.feedback.replace(pi_e=log.feedback.propensity)
    else:
        if spec.kind != "uniform" and warehouse is None:
            raise ConfigError(f"policy {spec}: needs the workspace's warehouse")
        if spec.kind == "uniform":
            parts = [_uniform(log)]
        elif spec.kind == "popular":
            assert warehouse is not None
            parts = [_popular(log, warehouse, spec.explore)]
        else:
            if store is None or campaign is None or warehouse is None:
                raise ConfigError(
                    f"policy {spec}: needs the workspace's model store and a campaign"
                )
            parts = [_model(log, warehouse, store, campaign, spec)]
        if spec.explore and spec.kind != "uniform":
            parts.append(_uniform(log, spec.explore))
        fb = policy_feedback(log, parts)
    on_policy = log.on_policy_value
    results = []
    for name in estimators:  # a loop over at most five estimators
        est = make_estimator(name, clip)
        try:
            iv = est.estimate_interval(fb, alpha, n_bootstrap, random_state)
        except DataError as exc:
            results.append(OpeResult(name, None, None, None, None, None, str(exc)))
            continue
        relative = iv.estimate / on_policy if on_policy else None
        ess = est.effective_sample_size(fb)
        note = _FIXED_MODEL if name == "dm" else ""
        results.append(OpeResult(name, iv.estimate, iv.lower, iv.upper, relative, ess, note))
    return OpeReport(str(spec), log.reward, fb.n_contexts or 0, len(fb), on_policy, alpha, results)
