"""The simulated retailer's world: members with latent tastes, brands, categories, sales.

Everything here is drawn once from the seed, before the first day, so that any policy run in
the environment faces the same members and the same sales.

Members belong to one of four latent groups (``TASTE_GROUPS``: enthusiasts, browsers, bargain
hunters, sleepers), which set the centre of their taste vector, their e-mail open propensity,
their site activity and their price sensitivity. Members have a low-rank taste vector; brands
and categories have vectors in the same space, so
a member's affinity for a sale is the dot product of her taste with the sale's brand and
category vectors (standardised). Each member also has an e-mail open propensity, a site
activity level, a price sensitivity, a taste for novelty (new designers) and one of four
treatment-effect types (Kane, Lo & Zheng 2014):

- ``sure_thing``: buys whether contacted or not;
- ``persuadable``: buys mostly when contacted;
- ``sleeping_dog``: contact annoys (fewer visits and purchases, more unsubscribes);
- ``lost_cause``: rarely buys either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import numpy as np

from nextbest.simulate.config import SimConfig

__all__ = [
    "CATEGORIES",
    "EFFECT_TYPES",
    "REGIONS",
    "TASTE_GROUPS",
    "World",
    "build_world",
    "padded",
]

CATEGORIES = (
    "dresses",
    "shoes",
    "bags",
    "jewellery",
    "menswear",
    "kids",
    "home",
    "beauty",
    "sportswear",
    "watches",
    "lingerie",
    "outerwear",
)
REGIONS = ("north", "south", "east", "west", "central", "coast", "mountain", "capital")
ACQUISITION = ("organic", "paid_search", "social", "referral", "affiliate")
EFFECT_TYPES = ("sure_thing", "persuadable", "sleeping_dog", "lost_cause")
_EFFECT_SHARES = (0.10, 0.25, 0.07, 0.58)
_FACTORS = 6
TASTE_GROUPS = ("enthusiasts", "browsers", "bargain_hunters", "sleepers")
_GROUP_SHARES = (0.2, 0.3, 0.25, 0.25)
_OPEN = np.array([[32.0, 24.0], [16.0, 32.0], [8.0, 40.0], [2.0, 38.0]])  # beta(a, b) of open_base
_ACTIVITY = np.array([2.5, 1.5, 0.8, 0.3])
_PRICE = np.array([[2.0, 4.0], [2.0, 2.0], [6.0, 2.0], [2.0, 2.0]])  # beta(a, b)


def padded(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Ids such as ``C0000042``: the prefix and zero-padded numbers (empty in, empty out)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if not len(numbers):
        return np.empty(0, dtype=f"<U{len(prefix) + width}")
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), width))


@dataclass
class World:
    """Members, brands and the sales of every day, as parallel numpy arrays."""

    config: SimConfig
    # members
    signup_day: np.ndarray  # int: day index of signup (negative: before the run)
    signup_ts: np.ndarray  # datetime64[us]
    birth_year: np.ndarray
    gender: np.ndarray
    region: np.ndarray  # int index into REGIONS
    acquisition: np.ndarray  # int index into ACQUISITION
    referred_by: np.ndarray  # int member index or -1
    consent: dict[str, np.ndarray]
    taste_group: np.ndarray  # int index into TASTE_GROUPS
    taste: np.ndarray  # (n, factors)
    open_base: np.ndarray
    activity: np.ndarray
    price_sensitivity: np.ndarray
    novelty: np.ndarray
    effect_type: np.ndarray  # int index into EFFECT_TYPES
    # brands
    brand_vec: np.ndarray  # (n_brands, factors)
    brand_new: np.ndarray  # bool: a new designer
    brand_debut: np.ndarray  # day the brand first appears (0 for established brands)
    brand_popularity: np.ndarray
    category_vec: np.ndarray  # (n_categories, factors)
    # sales, one row per sale over the whole run
    sale_day: np.ndarray
    sale_brand: np.ndarray
    sale_category: np.ndarray
    sale_discount: np.ndarray
    sale_price: np.ndarray  # average item price before discount
    sale_margin: np.ndarray  # margin per unit sold, after discount
    sale_capacity: np.ndarray
    rain: np.ndarray  # (days, regions) bool

    @property
    def n(self) -> int:
        return len(self.signup_day)

    def customer_ids(self, idx: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self.n) if idx is None else idx
        return padded("C", rows + 1, 7)

    def sale_ids(self, idx: np.ndarray) -> np.ndarray:
        day = self.sale_day[idx]
        k = idx - day * self.config.sales_per_day
        return np.char.add(
            padded("S", day, 3),
            padded("-", k, 2),
        )

    def day_start(self, day: int) -> datetime:
        return datetime.combine(self.config.start_date, time(0), tzinfo=UTC) + timedelta(days=day)

    def open_sales(self, day: int) -> np.ndarray:
        """Indices of the sales open at noon of ``day`` (today's and the still-running ones)."""
        first = max(0, day - self.config.sale_days + 1) * self.config.sales_per_day
        return np.arange(first, (day + 1) * self.config.sales_per_day)

    def affinity(self, members: np.ndarray, sales: np.ndarray) -> np.ndarray:
        """Standardised taste match of members (rows) for sales (columns)."""
        item = self.brand_vec[self.sale_brand[sales]] + self.category_vec[self.sale_category[sales]]
        return (self.taste[members] @ item.T) / np.sqrt(2.0 * _FACTORS)


def build_world(config: SimConfig) -> World:
    """Draw the world from ``config.seed``."""
    rng = np.random.default_rng([config.seed, 0])
    n, days = config.n_customers, config.days
    newcomer = rng.random(n) < config.new_member_share
    signup_day = np.where(newcomer, rng.integers(0, days, n), -rng.integers(1, 1500, n))
    signup_day.sort()  # member ids follow signup order
    seconds = rng.integers(0, 86_400, n)
    start = np.datetime64(config.start_date, "us")
    signup_ts = start + (signup_day * 86_400 + seconds).astype("timedelta64[s]")
    acquisition = rng.choice(len(ACQUISITION), n, p=(0.35, 0.2, 0.2, 0.15, 0.1))
    referred_by = np.full(n, -1)
    referral = np.flatnonzero(acquisition == ACQUISITION.index("referral"))
    referral = referral[referral > 0]
    referred_by[referral] = (rng.random(len(referral)) * referral).astype(int)
    acquisition[(acquisition == ACQUISITION.index("referral")) & (referred_by < 0)] = 0
    consent = {
        "email": rng.random(n) < 0.85,
        "sms": rng.random(n) < 0.40,
        "push": rng.random(n) < 0.50,
        "profiling": rng.random(n) < 0.90,
    }
    n_new = round(config.n_brands * config.new_designer_share)
    brand_new = np.zeros(config.n_brands, dtype=bool)
    brand_new[config.n_brands - n_new :] = True
    brand_debut = np.where(brand_new, rng.integers(0, max(days, 1), config.n_brands), 0)
    sales = config.sales_per_day * days
    sale_day = np.repeat(np.arange(days), config.sales_per_day)
    popularity = rng.lognormal(0, 0.8, config.n_brands)
    sale_brand = np.empty(sales, dtype=np.int64)
    for d in range(days):  # a loop over days, not members
        live = np.flatnonzero(brand_debut <= d)
        weight = popularity[live] * np.where(brand_new[live], 2.0, 1.0)
        sale_brand[d * config.sales_per_day : (d + 1) * config.sales_per_day] = rng.choice(
            live, config.sales_per_day, p=weight / weight.sum()
        )
    price = np.round(rng.lognormal(np.log(60), 0.6, sales), 2)
    discount = np.round(rng.uniform(0.2, 0.7, sales), 2)
    base = max(20, n // 200)
    group = rng.choice(len(TASTE_GROUPS), n, p=_GROUP_SHARES)
    return World(
        config=config,
        signup_day=signup_day,
        signup_ts=signup_ts,
        birth_year=rng.integers(1950, 2007, n),
        gender=rng.choice(np.array(["f", "m", "x"]), n, p=(0.62, 0.36, 0.02)),
        region=rng.integers(0, len(REGIONS), n),
        acquisition=acquisition,
        referred_by=referred_by,
        consent=consent,
        taste_group=group,
        taste=rng.normal(0, 0.8, (len(TASTE_GROUPS), _FACTORS))[group]
        + rng.normal(0, 0.6, (n, _FACTORS)),
        open_base=rng.beta(_OPEN[group, 0], _OPEN[group, 1]),
        activity=rng.gamma(1.5, 0.012, n) * _ACTIVITY[group],
        price_sensitivity=rng.beta(_PRICE[group, 0], _PRICE[group, 1]),
        novelty=rng.beta(1.5, 3, n),
        effect_type=rng.choice(len(EFFECT_TYPES), n, p=_EFFECT_SHARES),
        brand_vec=rng.normal(0, 1, (config.n_brands, _FACTORS)),
        brand_new=brand_new,
        brand_debut=brand_debut,
        brand_popularity=popularity,
        category_vec=rng.normal(0, 1, (len(CATEGORIES), _FACTORS)),
        sale_day=sale_day,
        sale_brand=sale_brand,
        sale_category=rng.integers(0, len(CATEGORIES), sales),
        sale_discount=discount,
        sale_price=price,
        sale_margin=np.round(price * (1 - discount) * rng.uniform(0.15, 0.4, sales), 2),
        sale_capacity=rng.integers(base, base * 8, sales),
        rain=rng.random((days, len(REGIONS))) < 0.3,
    )
