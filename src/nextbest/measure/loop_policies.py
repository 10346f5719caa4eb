"""The policies of the closed loop, each with its rule, and the workspace each learns in.

Every policy fills the daily e-mail (``slots`` sales) of the members the simulator may write
to, except the experiment's holdout: ``hash(salt, "loop", customer) < holdout`` (the
assignment of :func:`nextbest.decide.assign`), the same members for every policy, logged as
control rows (no offer, arm ``holdout``) so that an uplift model can be trained. The rules:

- ``random``: the simulator's uniformly random ordered choice of the open sales;
- ``popular``: the simulator's most popular sales, the same for everyone;
- ``greedy``: each member's top ``slots`` open sales by the propensity model's ``P(buy) x
  margin``, with no constraint but consent and eligibility (two sales of one brand may share
  an e-mail);
- ``optimised``: ``nextbest decide`` with a profit campaign: the sales' stock, a daily budget
  (``budget_share`` of the cost of a full e-mail to every member it may write to), at least
  ``new_designer_share`` of the slots for new designers (dropped on a day without any open),
  one sale per brand, no exploration;
- ``optimised_explore``: the same with ``exploration`` of the slots drawn by Thompson
  sampling, ``novelty_share`` of those among brands new to the member;
- ``uplift``: the ``optimised`` campaign with the objective ``incremental_margin``: the value
  of an e-mail is the uplift model's effect on the member's purchase (sleeping dogs get none).

Model-based policies (all but ``random`` and ``popular``) run the random policy for the first
``warmup`` days, so that there is something to learn from, and each keeps a workspace of its
own: its decisions and events go into its warehouse day by day through the ordinary
ingestion, and its models (propensity; uplift for ``uplift``) are retrained on those logs
alone every ``retrain_every`` days.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.decide import CampaignFile, day_inputs, decide, parse_campaign
from nextbest.decide.output import decision_rows
from nextbest.errors import ConfigError, DataError
from nextbest.models import ModelStore, TrainOptions, train
from nextbest.simulate import DayOutcome, PopularPolicy, RandomPolicy, RetailEnvironment, World
from nextbest.simulate import tables as sim_tables
from nextbest.simulate.policies import Policy

if TYPE_CHECKING:
    from nextbest.measure.loop import LoopConfig

__all__ = [
    "ARM",
    "EXPERIMENT",
    "LOOP_POLICIES",
    "LoopPolicy",
    "PolicyWorkspace",
    "make_policy",
    "simulator_rows",
]

log = logging.getLogger(__name__)

EXPERIMENT = "loop"
"""The experiment every policy's decisions carry; its control arm is ``holdout``."""
ARM = "mailed"
"""The treatment arm of the experiment: the members a policy may write to."""
LOOP_POLICIES: dict[str, str] = {
    "random": "a uniformly random choice of the open sales",
    "popular": "the most popular sales, the same for everyone",
    "greedy": "top slots by the propensity model's P(buy) x margin, no constraints",
    "optimised": "nextbest decide: profit under stock, a budget and a new-designer share",
    "optimised_explore": "optimised with 10% Thompson exploration, half on new brands",
    "uplift": "optimised on the uplift model's incremental margin",
}
"""Policy name -> its rule in a line (the module docstring has the details)."""
MODEL_POLICIES = ("greedy", "optimised", "optimised_explore", "uplift")


class LoopPolicy(Protocol):
    """Fills one day's e-mails; learns from what happened if it can."""

    name: str
    model: str  # what the day's decisions came from: a model version, or the rule

    def decisions(self, env: RetailEnvironment, day: int) -> Any:
        """The day's decisions (a table ``RetailEnvironment.step`` accepts)."""
        ...

    def observe(self, day: int, outcome: DayOutcome) -> int:
        """Take in the day's outcome; return the rows quarantined on the way (0 for none)."""
        ...


def simulator_rows(
    env: RetailEnvironment,
    policy: Policy,
    day: int,
    held: np.ndarray,
    config: LoopConfig,
    label: str | None = None,
) -> pa.Table:
    """One day of a simulator policy, with the loop's holdout as control rows.

    ``held`` is a mask over all members; the choices draw from ``[seed, 2, day]``, as
    :func:`nextbest.simulate.simulate` does, so a warm-up day is the random policy's day.
    Propensities are the policy's times ``1 - holdout``; a control row's is the holdout share.
    """
    world = env.world
    members = env.eligible(day)
    control, mailed = members[held[members]], members[~held[members]]
    rng = np.random.default_rng([config.seed, 2, day])
    slates = policy.choose(world, day, mailed, env.open_sales(day), config.slots, rng)
    k = slates.sales.shape[1]
    n, c = len(mailed) * k, len(control)
    sent = np.r_[np.ones(n, bool), np.zeros(c, bool)]
    return pa.table(
        {
            "customer_id": pa.array(
                np.r_[world.customer_ids(np.repeat(mailed, k)), world.customer_ids(control)]
            ),
            "offer_id": pa.array(
                np.r_[world.sale_ids(slates.sales.ravel()), np.full(c, "")], mask=~sent
            ),
            "slot": pa.array(np.r_[np.tile(np.arange(1, k + 1), len(mailed)), np.zeros(c, int)]),
            "policy": pa.array(np.full(n + c, label or policy.name)),
            "score": pa.array(np.r_[slates.scores.ravel(), np.zeros(c)], mask=~sent),
            "propensity": pa.array(
                np.r_[
                    slates.propensities.ravel() * (1 - config.holdout), np.full(c, config.holdout)
                ]
            ),
            "experiment": pa.array(np.full(n + c, EXPERIMENT)),
            "arm": pa.array(np.where(sent, ARM, "holdout")),
        }
    )


class SimulatorPolicy:
    """``random`` or ``popular``: the simulator's policy, with the loop's holdout; no learning."""

    def __init__(self, name: str, config: LoopConfig, held: np.ndarray) -> None:
        self.name = name
        self.model = name
        self.config = config
        self.held = held
        self.rule: Policy = RandomPolicy() if name == "random" else PopularPolicy()

    def decisions(self, env: RetailEnvironment, day: int) -> pa.Table:
        return simulator_rows(env, self.rule, day, self.held, self.config)

    def observe(self, day: int, outcome: DayOutcome) -> int:
        return 0


class PolicyWorkspace:
    """A policy's own workspace: the world's tables, then its logs day by day, and its models."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.store = ModelStore(ws.models)
        self._open = True

    @classmethod
    def create(cls, root: Path, world: World) -> PolicyWorkspace:
        """A new workspace in ``root`` with the world's customers, products and offers loaded."""
        ws = Workspace.init(root, name=root.name)
        folder = root / "loop"
        folder.mkdir(parents=True, exist_ok=True)
        parts = [
            ("customers", sim_tables.customers(world)),
            ("products", sim_tables.products(world)),
            ("offers", sim_tables.offers(world)),
        ]
        made = cls(ws)
        for name, table in parts:  # a loop over three tables
            made._load(folder / f"{name}.parquet", table, name)
        return made

    def fork(self, root: Path) -> PolicyWorkspace:
        """A copy of this workspace (warehouse, logs, models) in ``root``, opened."""
        self.close()
        shutil.copytree(self.ws.root, root)
        return PolicyWorkspace(Workspace.open(root))

    def close(self) -> None:
        if self._open:
            self.ws.close()
            self._open = False

    def _load(self, path: Path, table: pa.Table, name: str) -> int:
        pq.write_table(table, path)
        result = ingest(
            self.ws.warehouse, [path], self.ws.config.ingest, table=name, reports=self.ws.reports
        )[0]
        if result.status == "failed":
            raise DataError(f"closed loop: {path.name} did not load: {result.message}")
        bad = result.total("quarantined")
        if bad:
            log.warning("closed loop: %s rows of %s quarantined: %s", bad, path, result.problems)
        return bad

    def log(self, days: range, outcomes: list[DayOutcome]) -> int:
        """Ingest the decisions of ``days``, then their events; returns the rows quarantined."""
        folder = self.ws.root / "loop"
        stem = f"{days[0]:03d}" if len(days) == 1 else f"{days[0]:03d}-{days[-1]:03d}"
        bad = 0
        for name in ("decisions", "events"):  # decisions first: events refer to them
            table = pa.concat_tables([getattr(o, name) for o in outcomes])
            bad += self._load(folder / f"{name}-{stem}.parquet", table, name)
        return bad

    def train(self, kinds: tuple[str, ...], config: LoopConfig) -> None:
        """Train ``kinds`` on the logs so far.

        An uplift model that the logs cannot support yet (no purchase in an arm: purchases
        are rare on a small retailer) is not an error: the previous one stays, if any.
        """
        options = TrainOptions(
            holdout_days=1,
            calibration_days=1,
            experiment=EXPERIMENT,
            uplift_outcome="purchase",
            uplift_window_days=1,
            random_state=config.seed,
            n_jobs=config.n_jobs,
        )
        for kind in kinds:  # a loop over at most two kinds
            try:
                train(self.ws.warehouse, self.store, kind, options)
            except DataError as exc:
                if kind != "uplift":
                    raise
                log.warning("closed loop, %s: no new uplift model: %s", self.ws.root.name, exc)

    def latest(self, kind: str) -> str | None:
        """The latest version of ``kind`` (``uplift v2``), None when there is none."""
        try:
            return self.store.manifest(kind).name
        except ConfigError:
            return None


class ModelPolicy:
    """A policy that learns: random during the warm-up, then its rule on its own models."""

    kinds: tuple[str, ...] = ("propensity",)

    def __init__(
        self,
        name: str,
        config: LoopConfig,
        held: np.ndarray,
        workspace: PolicyWorkspace,
        unit_cost: np.ndarray,
    ) -> None:
        self.name = name
        self.config = config
        self.held = held
        self.workspace = workspace
        self.unit_cost = unit_cost
        self.model = self._label()

    def _label(self) -> str:
        """The models today's decisions come from."""
        return self.workspace.latest("propensity") or "none"

    def decisions(self, env: RetailEnvironment, day: int) -> Any:
        if day < self.config.warmup:
            self.model = "random (warm-up)"
            return simulator_rows(env, RandomPolicy(), day, self.held, self.config, "random")
        rows = self._choose(env, day)
        # the warehouse knows who joined before noon; the simulator mails only those who
        # joined before the day began
        allowed = env.world.customer_ids(env.eligible(day))
        keep = np.isin(rows.customer_id.to_numpy(dtype=str), allowed)
        return rows[keep].reset_index(drop=True)

    def observe(self, day: int, outcome: DayOutcome) -> int:
        bad = self.workspace.log(range(day, day + 1), [outcome])
        c = self.config
        lived = day + 1 - c.warmup
        if day + 1 < c.days and lived > 0 and lived % c.retrain_every == 0:
            self.workspace.train(self.kinds, c)
            self.model = self._label()
            log.info("%s: retrained after day %s: %s", self.name, day, self.model)
        return bad

    def _choose(self, env: RetailEnvironment, day: int) -> pd.DataFrame:
        raise NotImplementedError

    def _experiment(self) -> dict[str, Any]:
        c = self.config
        return {"name": EXPERIMENT, "holdout": c.holdout, "salt": c.salt, "arms": {ARM: 1.0}}


class GreedyPolicy(ModelPolicy):
    """Top ``slots`` by ``P(buy) x margin`` per member, from the latest propensity model."""

    def _choose(self, env: RetailEnvironment, day: int) -> pd.DataFrame:
        c = self.config
        spec = parse_campaign(
            {
                "campaign": {
                    "name": "greedy",
                    "slots": c.slots,
                    "max_per_brand": None,
                    "experiment": self._experiment(),
                }
            },
            "loop policy greedy",
        )
        inputs = day_inputs(
            self.workspace.ws.warehouse, self.workspace.store, spec, env.world.day_start(day)
        )
        margin = inputs.offers.margin.fillna(0).to_numpy(np.float64)
        value = inputs.p_buy * margin[None, :]
        value = np.where(inputs.eligible & ~inputs.holdout[:, None], value, -np.inf)
        top = np.argsort(-value, axis=1, kind="stable")[:, : c.slots]
        best = np.take_along_axis(value, top, axis=1)
        who, slot = np.nonzero(np.isfinite(best))
        ids = inputs.customer_ids
        held = np.flatnonzero(inputs.holdout & inputs.eligible.any(axis=1))
        sent = pd.DataFrame(
            {
                "customer_id": ids[who],
                "offer_id": inputs.offers.offer_id.to_numpy()[top[who, slot]],
                "slot": slot + 1,
                "policy": "greedy",
                "score": best[who, slot],
                "propensity": 1.0,
            }
        )
        control = pd.DataFrame(
            {
                "customer_id": ids[held],
                "offer_id": None,
                "slot": 0,
                "policy": "greedy/holdout",
                "score": np.nan,
                "propensity": c.holdout,
            }
        )
        rows = pd.concat([sent, control], ignore_index=True)
        return rows.assign(experiment=EXPERIMENT, arm=np.where(rows.slot > 0, ARM, "holdout"))


class CampaignPolicy(ModelPolicy):
    """``nextbest decide`` with the loop's campaign: optimised, exploring or on uplift."""

    def __init__(self, *args: Any, objective: str, explore: bool, **kwargs: Any) -> None:
        self.objective = objective
        self.explore = explore
        if objective == "incremental_margin":
            self.kinds = ("propensity", "uplift")
        super().__init__(*args, **kwargs)

    def _label(self) -> str:
        label = super()._label()
        if self.objective != "incremental_margin":
            return label
        uplift = self.workspace.latest("uplift")
        return f"{label}, {uplift}" if uplift else f"{label}, no uplift model yet: profit"

    def campaign(self, env: RetailEnvironment, day: int) -> CampaignFile:
        """The day's campaign: its budget follows the members it may write to."""
        c, w = self.config, env.world
        objective = self.objective
        if objective == "incremental_margin" and self.workspace.latest("uplift") is None:
            objective = "profit"  # until the logs can support an uplift model
        members = env.eligible(day)
        reachable = int((~self.held[members]).sum())
        sales = env.open_sales(day)
        cost = float(self.unit_cost[sales].mean()) if len(sales) else 0.0
        body: dict[str, Any] = {
            "name": self.name.replace("_", "-"),
            "objective": objective,
            "slots": c.slots,
            "max_per_brand": 1,
            "budget": c.budget_share * cost * c.slots * reachable,
            "experiment": self._experiment(),
        }
        if c.new_designer_share > 0 and w.brand_new[w.sale_brand[sales]].any():
            body["shares"] = [{"tag": "new_designer", "min": c.new_designer_share}]
        if self.explore:
            body["exploration"] = {
                "share": c.exploration,
                "method": "thompson",
                "novelty_share": c.novelty_share,
            }
        return parse_campaign({"campaign": body}, f"loop policy {self.name}")

    def _choose(self, env: RetailEnvironment, day: int) -> pd.DataFrame:
        spec = self.campaign(env, day)
        when = env.world.day_start(day)
        ws = self.workspace.ws
        run = decide(
            ws,
            spec,
            when,
            out=ws.root / "decisions",
            log_decisions=False,
            random_state=self.config.seed * 1000 + day,
        )
        return decision_rows(run.plan, spec, when)


def make_policy(
    name: str,
    config: LoopConfig,
    held: np.ndarray,
    workspace: PolicyWorkspace | None = None,
    unit_cost: np.ndarray | None = None,
) -> LoopPolicy:
    """The policy ``name`` of :data:`LOOP_POLICIES`; model-based ones need their workspace."""
    if name in ("random", "popular"):
        return SimulatorPolicy(name, config, held)
    if workspace is None or unit_cost is None:
        raise ValueError(f"policy {name} learns: give it its workspace and the unit costs")
    if name == "greedy":
        return GreedyPolicy(name, config, held, workspace, unit_cost)
    objective = "incremental_margin" if name == "uplift" else "profit"
    return CampaignPolicy(
        name,
        config,
        held,
        workspace,
        unit_cost,
        objective=objective,
        explore=name == "optimised_explore",
    )


def offer_costs(world: World) -> tuple[np.ndarray, np.ndarray]:
    """Per sale (index): the margin per unit sold and the unit cost of featuring it."""
    offers = sim_tables.offers(world)
    margin = pc.fill_null(offers.column("margin"), 0.0).to_numpy()
    cost = pc.fill_null(offers.column("unit_cost"), 0.0).to_numpy()
    return np.asarray(margin, np.float64), np.asarray(cost, np.float64)
