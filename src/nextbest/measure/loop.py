"""The closed loop: policies run on the simulator day after day, learning from their own logs.

:func:`run_loop` gives every policy of :data:`~nextbest.measure.loop_policies.LOOP_POLICIES`
(rules in :mod:`nextbest.measure.loop_policies`) its own simulated retailer: the same world
(members, tastes, sales) drawn from ``seed``, the same draws of chance day by day, and a
workspace of its own from which it retrains. Each day it decides, the simulator answers, and
its decisions are scored against the ground truth (:mod:`nextbest.simulate.response`):

- **true profit**: over the slots sent, ``P(open) x P(click | slot) x P(buy | click) x
  margin - unit cost``, the simulator's own probabilities of each decision;
- **conversions**: ``sum P(open) P(click | slot) P(buy | click)``, the purchases the e-mails
  are expected to bring through their clicks (intents: a purchase beyond the stock becomes a
  waitlist), beside the realised ones (purchase and waitlist events linked to the decisions),
  with the standard error ``sqrt(sum p (1 - p))`` of their difference;
- **incremental purchases**: the true effect of the e-mails on buying that day, summed over
  the members mailed (``P(buy | mailed) - P(buy | not mailed)``);
- **unsubscribes**: expected (``sum P(unsubscribe)`` over the e-mails sent) and realised;
- **novelty**: the share of slots showing a brand the member had not been shown before in the
  run, and the share of new designers' sales.

The model-based policies share their random warm-up days (the same decisions and draws, so
the same outcomes): the warm-up is simulated and logged once, its workspace and first models
are copied to each of them, and from then on each lives apart.

:func:`save_loop_result` keeps a result in a workspace (``loop/loop-YYYYMMDD-HHMMSS.json``),
where :func:`latest_loop_result` finds it for the dashboard.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from nextbest.decide import holdout_mask
from nextbest.errors import ConfigError, DataError
from nextbest.measure.loop_policies import (
    EXPERIMENT,
    LOOP_POLICIES,
    MODEL_POLICIES,
    LoopPolicy,
    PolicyWorkspace,
    make_policy,
    offer_costs,
    simulator_rows,
)
from nextbest.progress import NullReporter, Reporter
from nextbest.simulate import DayOutcome, RandomPolicy, RetailEnvironment, SimConfig, World

__all__ = [
    "LoopConfig",
    "LoopDay",
    "LoopResult",
    "PolicyTotals",
    "latest_loop_result",
    "run_loop",
    "save_loop_result",
]

log = logging.getLogger(__name__)

_PURCHASE = pa.array(["purchase", "waitlist"])  # a purchase intent: bought, or out of stock
_RESULT_NAME = re.compile(r"^loop-(\d{8})-(\d{6})(?:-(\d+))?\.json$")


class LoopConfig(BaseModel):
    """What to run in the closed loop. Same settings and seed, same results.

    Parameters
    ----------
    days
        Days simulated, from the simulator's first day.
    policies
        Names of :data:`LOOP_POLICIES`, in the order of the report.
    customers
        Members of the simulated retailer.
    seed
        Seed of the world, of the simulator's draws and of the policies' own.
    retrain_every
        Model-based policies retrain after every this many days of their own decisions.
    warmup
        Days of the random policy before the model-based policies start (at least 3: the
        propensity model's time split needs a day to train, one to calibrate, one held out).
    holdout
        Share of members held out of every policy's e-mail (the experiment's control).
    slots
        Sales per e-mail.
    budget_share
        The optimised campaigns' daily budget, as a share of the cost of filling every slot
        of every member they may write to.
    new_designer_share
        The optimised campaigns' minimum share of slots for new designers' sales.
    exploration, novelty_share
        ``optimised_explore``: share of slots explored (Thompson sampling), and of those the
        share drawn among brands new to the member.
    n_jobs
        Threads for model training; one by default, as the loop's training sets are small
        (LightGBM's threads cost more than they save there); None for LightGBM's default.
    workdir
        Folder for the policies' workspaces (kept); a temporary one, deleted after, when None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: int = Field(14, ge=2, le=999)
    policies: tuple[str, ...] = tuple(LOOP_POLICIES)
    customers: int = Field(3_000, ge=100, le=9_999_999)
    seed: int = 7
    retrain_every: int = Field(3, ge=1)
    warmup: int = Field(4, ge=0)
    holdout: float = Field(0.1, gt=0, lt=0.5)
    slots: int = Field(3, ge=1, le=10)
    budget_share: float = Field(0.9, gt=0, le=1)
    new_designer_share: float = Field(0.15, ge=0, le=1)
    exploration: float = Field(0.1, gt=0, le=1)
    novelty_share: float = Field(0.5, ge=0, le=1)
    n_jobs: int | None = Field(1, ge=1)
    workdir: Path | None = None

    @field_validator("policies")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in LOOP_POLICIES]
        if unknown:
            raise ValueError(
                f"unknown policy {unknown[0]!r}; expected some of {', '.join(LOOP_POLICIES)}"
            )
        if not value:
            raise ValueError(f"give at least one policy of {', '.join(LOOP_POLICIES)}")
        if len(set(value)) != len(value):
            raise ValueError("each policy may be named once")
        return value

    @field_validator("warmup")
    @classmethod
    def _warmup_fits(cls, value: int, info: ValidationInfo) -> int:
        days, policies = info.data.get("days"), info.data.get("policies", ())
        if not any(p in MODEL_POLICIES for p in policies):
            return value
        if value < 3:
            raise ValueError(
                "the model-based policies need at least 3 days of warm-up (their propensity "
                "model trains on one day, calibrates on one and holds one out)"
            )
        if days is not None and value >= days:
            raise ValueError(
                f"must be below days ({days}), or the model-based policies never decide"
            )
        return value

    @property
    def salt(self) -> str:
        """The salt of the holdout's hash: one per seed."""
        return f"loop-{self.seed}"


@dataclass(frozen=True)
class LoopDay:
    """One policy's day, against the truth (sums over the day's decisions)."""

    policy: str
    day: int
    date: str
    model: str  # what decided: a propensity model version, or the rule
    emails: int
    held_out: int  # control rows: members of the holdout the policy could have written to
    slots: int
    margin: float  # true expected margin of the purchases the slots bring, before unit costs
    profit: float  # margin less the unit costs of the slots sent
    conversions: float
    conversions_variance: float
    realised_conversions: int
    incremental: float
    unsubscribes: float
    realised_unsubscribes: int
    novel_slots: int
    new_designer_slots: int


@dataclass(frozen=True)
class PolicyTotals:
    """A policy over the run (or the days asked for), and its true profit against random's."""

    policy: str
    rule: str
    emails: int
    slots: int
    margin: float
    profit: float
    conversions: float
    conversions_se: float
    realised_conversions: int
    incremental: float
    unsubscribes: float
    realised_unsubscribes: int
    novelty_share: float
    new_designer_share: float
    profit_over_random: float | None  # true profit less the random policy's
    profit_vs_random: float | None  # true profit / the random policy's, when that is > 0
    margin_vs_random: float | None  # true margin / the random policy's
    seconds: float
    quarantined: int = 0


@dataclass
class LoopResult:
    """Every policy's days and totals, and who won on true profit."""

    config: LoopConfig
    days: list[LoopDay]
    totals: list[PolicyTotals]
    winner: str
    verdict: str
    seconds: float = 0.0
    warmup_seconds: float = 0.0  # the model-based policies' shared warm-up and first training
    workdir: str | None = None

    def total(self, policy: str) -> PolicyTotals:
        """The totals of ``policy``; a clear error if it did not run."""
        for t in self.totals:
            if t.policy == policy:
                return t
        raise KeyError(f"policy {policy!r} did not run; ran {[t.policy for t in self.totals]}")

    def totals_from(self, first_day: int) -> list[PolicyTotals]:
        """The totals over the days from ``first_day`` on (say, after the warm-up)."""
        days = [d for d in self.days if d.day >= first_day]
        random = (
            [d for d in days if d.policy == "random"] if "random" in self.config.policies else None
        )
        return [
            _totals(
                t.policy,
                [d for d in days if d.policy == t.policy],
                t.seconds,
                t.quarantined,
                random,
            )
            for t in self.totals
        ]

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["config"] = self.config.model_dump(mode="json")
        return body


class _Ledger:
    """Scores a policy's days against the truth; remembers which brands each member has seen."""

    def __init__(self, world: World, margin: np.ndarray, unit_cost: np.ndarray) -> None:
        self.world = world
        self.margin = margin
        self.unit_cost = unit_cost
        self.seen = np.zeros((world.n, len(world.brand_new)), dtype=bool)

    def record(self, policy: str, day: int, outcome: DayOutcome, model: str) -> LoopDay:
        w = self.world
        dec, truth = outcome.decisions, outcome.truth
        offer = dec.column("offer_id")
        sent = np.asarray(pc.is_valid(offer).to_numpy(zero_copy_only=False), dtype=bool)
        member = w.customer_index(dec.column("customer_id"))[sent]
        sale = w.sale_index(offer)[sent]
        click = np.asarray(pc.fill_null(truth.column("p_click"), 0.0).to_numpy(), np.float64)
        buy = np.asarray(
            pc.fill_null(truth.column("p_buy_after_click"), 0.0).to_numpy(), np.float64
        )
        p = (click * buy)[sent]
        margin = float(np.sum(p * self.margin[sale]))
        ev = outcome.events
        kind = ev.column("type")
        linked = pc.and_(pc.is_in(kind, value_set=_PURCHASE), pc.is_valid(ev.column("decision_id")))
        brand = w.sale_brand[sale]
        novel = ~self.seen[member, brand]
        self.seen[member, brand] = True
        uplift = pc.fill_null(outcome.emails.column("uplift"), 0.0).to_numpy()
        return LoopDay(
            policy=policy,
            day=day,
            date=f"{w.day_start(day):%Y-%m-%d}",
            model=model,
            emails=int(outcome.expected.sends),
            held_out=int((~sent).sum()),
            slots=int(sent.sum()),
            margin=margin,
            profit=margin - float(np.sum(self.unit_cost[sale])),
            conversions=float(p.sum()),
            conversions_variance=float(np.sum(p * (1 - p))),
            realised_conversions=int(pc.sum(linked.cast("int64")).as_py() or 0),
            incremental=float(np.sum(uplift, dtype=np.float64)),
            unsubscribes=float(outcome.expected.unsubscribes),
            realised_unsubscribes=int(
                pc.sum(pc.equal(kind, "unsubscribe").cast("int64")).as_py() or 0
            ),
            novel_slots=int(novel.sum()),
            new_designer_slots=int(w.brand_new[brand].sum()),
        )


def _workdir(config: LoopConfig) -> tuple[Path, bool]:
    if config.workdir is None:
        return Path(tempfile.mkdtemp(prefix="nextbest-loop-")), True
    root = config.workdir
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"{root}: the closed loop needs an empty folder for its workspaces, and this one "
            "has files; choose another or leave it out (a temporary folder is used)"
        )
    root.mkdir(parents=True, exist_ok=True)
    return root, False


def _run(
    policy: LoopPolicy,
    env: RetailEnvironment,
    ledger: _Ledger,
    days: range,
    reporter: Reporter,
) -> tuple[list[LoopDay], int]:
    """Decide, step, score and learn, day after day; returns the days and rows quarantined."""
    out, bad = [], 0
    for day in days:  # a loop over days: each depends on the one before
        rows = policy.decisions(env, day)
        outcome = env.step(day, rows)
        out.append(ledger.record(policy.name, day, outcome, policy.model))
        bad += policy.observe(day, outcome)
        reporter.advance(1)
    return out, bad


def _totals(
    name: str,
    days: list[LoopDay],
    seconds: float,
    quarantined: int,
    random: list[LoopDay] | None,
) -> PolicyTotals:
    slots = sum(d.slots for d in days)
    profit = sum(d.profit for d in days)
    margin = sum(d.margin for d in days)
    base_profit = sum(d.profit for d in random) if random is not None else None
    base_margin = sum(d.margin for d in random) if random is not None else None
    return PolicyTotals(
        policy=name,
        rule=LOOP_POLICIES[name],
        emails=sum(d.emails for d in days),
        slots=slots,
        margin=margin,
        profit=profit,
        conversions=sum(d.conversions for d in days),
        conversions_se=float(np.sqrt(sum(d.conversions_variance for d in days))),
        realised_conversions=sum(d.realised_conversions for d in days),
        incremental=sum(d.incremental for d in days),
        unsubscribes=sum(d.unsubscribes for d in days),
        realised_unsubscribes=sum(d.realised_unsubscribes for d in days),
        novelty_share=sum(d.novel_slots for d in days) / max(slots, 1),
        new_designer_share=sum(d.new_designer_slots for d in days) / max(slots, 1),
        profit_over_random=None if base_profit is None else profit - base_profit,
        profit_vs_random=profit / base_profit if base_profit and base_profit > 0 else None,
        margin_vs_random=margin / base_margin if base_margin and base_margin > 0 else None,
        seconds=seconds,
        quarantined=quarantined,
    )


def _verdict(totals: list[PolicyTotals], days: int) -> tuple[str, str]:
    """Who earned the most true profit, and by how much over random and the runner-up."""
    ranked = sorted(totals, key=lambda t: -t.profit)
    best = ranked[0]
    text = f"{best.policy} won: true profit {best.profit:,.2f} over {days} days"
    if best.profit_over_random is not None and best.policy != "random":
        random = next(t for t in totals if t.policy == "random")
        text += f", {best.profit_over_random:,.2f} more than random ({random.profit:,.2f}"
        if best.profit_vs_random is not None:
            text += f": {best.profit_vs_random:.2f}x"
        if best.margin_vs_random is not None:
            text += f"; true margin {best.margin_vs_random:.2f}x random's"
        text += ")"
    if len(ranked) > 1:
        second = ranked[1]
        ahead = best.profit - second.profit
        share = f" (+{100 * ahead / second.profit:.1f}%)" if second.profit > 0 else ""
        text += f"; ahead of {second.policy} ({second.profit:,.2f}) by {ahead:,.2f}{share}"
    return best.policy, text


def run_loop(config: LoopConfig, *, reporter: Reporter | None = None) -> LoopResult:
    """Run every policy of ``config`` on the simulator for ``config.days`` days.

    Parameters
    ----------
    config
        The policies, the size of the retailer, the days, the warm-up and the retraining.
    reporter
        Told about progress, one step per policy and day; silent by default.

    Returns
    -------
    LoopResult
        Per policy and day the decisions' true value and what was realised, the totals per
        policy with the ratio of true profit to the random policy's, and the winner.
    """
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    sim = SimConfig(
        n_customers=config.customers,
        days=config.days,
        seed=config.seed,
        slots_per_email=config.slots,
    )
    first = RetailEnvironment(sim)
    world = first.world
    held = holdout_mask(world.customer_ids(), EXPERIMENT, config.salt, config.holdout)
    margin, unit_cost = offer_costs(world)
    learners = [p for p in config.policies if p in MODEL_POLICIES]
    simple = [p for p in config.policies if p not in MODEL_POLICIES]
    later = config.days - config.warmup
    total = config.days * len(simple) + (config.warmup + later * len(learners) if learners else 0)
    root, temporary = _workdir(config)
    days: dict[str, list[LoopDay]] = {}
    seconds: dict[str, float] = {}
    bad: dict[str, int] = {}
    warm_seconds = 0.0
    reporter.start(total, f"Closed loop: {len(config.policies)} policies x {config.days} days")
    try:
        for name in simple:  # a loop over at most two policies
            t0 = time.perf_counter()
            env = RetailEnvironment(sim, world=world)
            ledger = _Ledger(world, margin, unit_cost)
            policy = make_policy(name, config, held)
            days[name], bad[name] = _run(policy, env, ledger, range(config.days), reporter)
            seconds[name] = time.perf_counter() - t0
        if learners:
            t0 = time.perf_counter()
            warm = PolicyWorkspace.create(root / "warm-up", world)
            ledger = _Ledger(world, margin, unit_cost)
            warm_days, outcomes = [], []
            for day in range(config.warmup):  # a loop over the shared warm-up days
                rows = simulator_rows(first, RandomPolicy(), day, held, config, "random")
                outcomes.append(first.step(day, rows))
                warm_days.append(ledger.record("warm-up", day, outcomes[-1], "random (warm-up)"))
                reporter.advance(1)
            warm_bad = warm.log(range(config.warmup), outcomes)  # nothing decides in between
            del outcomes
            warm.train(
                ("propensity", "uplift") if "uplift" in learners else ("propensity",), config
            )
            warm.close()
            warm_seconds = time.perf_counter() - t0
            keep = {id(world): world}
            for name in learners:  # a loop over at most four policies
                t0 = time.perf_counter()
                ws = warm.fork(root / name)
                env = copy.deepcopy(first, dict(keep))
                own = copy.deepcopy(ledger, dict(keep))
                policy = make_policy(name, config, held, ws, unit_cost)
                rest, rest_bad = _run(policy, env, own, range(config.warmup, config.days), reporter)
                ws.close()
                days[name] = [replace(d, policy=name) for d in warm_days] + rest
                bad[name] = warm_bad + rest_bad
                seconds[name] = time.perf_counter() - t0
    finally:
        reporter.finish()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    random = days.get("random")
    totals = [
        _totals(name, days[name], seconds[name], bad[name], random) for name in config.policies
    ]
    winner, verdict = _verdict(totals, config.days)
    log.info("closed loop: %s", verdict)
    return LoopResult(
        config=config,
        days=[d for name in config.policies for d in days[name]],
        totals=totals,
        winner=winner,
        verdict=verdict,
        seconds=time.perf_counter() - started,
        warmup_seconds=warm_seconds,
        workdir=None if temporary else str(root),
    )


def save_loop_result(result: LoopResult, root: Path) -> Path:
    """Keep ``result`` in the workspace at ``root``: ``loop/loop-YYYYMMDD-HHMMSS.json`` (UTC).

    The file holds :meth:`LoopResult.to_dict`; a second run within the same second gets a
    ``-2``, ``-3``... suffix, so nothing is overwritten. Returns the file written.
    """
    folder = Path(root) / "loop"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"loop-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    path, n = folder / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.json"
    text = json.dumps(result.to_dict(), indent=1, default=str) + "\n"
    staged = path.with_suffix(".tmp")
    staged.write_text(text, encoding="utf-8")
    staged.replace(path)  # a reader never sees half a file
    return path


def latest_loop_result(root: Path) -> dict[str, Any] | None:
    """The latest result :func:`save_loop_result` kept in the workspace at ``root`` (the
    :meth:`LoopResult.to_dict` shape), or None when there is none."""
    found = []
    for path in (Path(root) / "loop").glob("loop-*.json"):
        m = _RESULT_NAME.match(path.name)
        if m:
            found.append(((m.group(1), m.group(2), int(m.group(3) or 1)), path))
    if not found:
        return None
    path = max(found)[1]
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a closed-loop result ({type(exc).__name__}); run 'nextbest loop' again"
        ) from None
    if not isinstance(body, dict) or not {"config", "days", "totals"} <= set(body):
        raise DataError(
            f"{path}: expected a closed-loop result with config, days and totals; run "
            "'nextbest loop' again"
        )
    return body
