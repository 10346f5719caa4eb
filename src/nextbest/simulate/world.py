"""The simulated retailer's world: members with latent tastes, brands, categories, sales.

Everything here is drawn once from the seed, before the first day, so that any policy run in
the environment faces the same members and the same sales.

Members belong to one of four latent groups (``TASTE_GROUPS``: enthusiasts, browsers, bargain
hunters, sleepers), which set the centre of their taste vector, their e-mail open propensity,
their site activity and their price sensitivity. Tastes are low-rank: members, brands and
categories have vectors in the same ``FACTORS``-dimensional space, and a member's affinity for
a sale is ``taste . (brand + category) / sqrt(2 FACTORS)`` (:meth:`World.affinity`), so every
member has an implicit affinity for each of the 150 brands and 12 categories. Each member also
has an e-mail open propensity, a site activity level, a price sensitivity, a taste for novelty
(new designers) and one of four treatment-effect types (Kane, Lo & Zheng 2014):

- ``sure_thing``: buys whether contacted or not;
- ``persuadable``: buys mostly when contacted;
- ``sleeping_dog``: contact annoys (fewer visits and purchases, more unsubscribes);
- ``lost_cause``: rarely buys either way.

Members are numbered in signup order, so a referrer (``referred_by``) always joined earlier.
Each sale has ``PRODUCTS_PER_SALE`` products with a list price and a unit cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.simulate.config import SimConfig

__all__ = [
    "ACQUISITION",
    "CATEGORIES",
    "EFFECT_TYPES",
    "FACTORS",
    "PRODUCTS_PER_SALE",
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
_EFFECT_SHARES = (0.12, 0.25, 0.10, 0.53)
FACTORS = 6
PRODUCTS_PER_SALE = 4
TASTE_GROUPS = ("enthusiasts", "browsers", "bargain_hunters", "sleepers")
_GROUP_SHARES = (0.2, 0.3, 0.25, 0.25)
_OPEN = np.array([[32.0, 24.0], [16.0, 32.0], [8.0, 40.0], [2.0, 38.0]])  # beta(a, b) of open_base
_ACTIVITY = np.array([2.5, 1.5, 0.8, 0.3])
_PRICE = np.array([[2.0, 4.0], [2.0, 2.0], [6.0, 2.0], [2.0, 2.0]])  # beta(a, b)
_CUSTOMER = r"^C[0-9]{7}$"
_SALE = r"^S[0-9]{3}-[0-9]{2}$"


def padded(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Ids such as ``C0000042``: the prefix and zero-padded numbers, as a numpy string array.

    Built from digit codes, without a Python loop over the numbers; numbers must be in
    ``[0, 10**width)``.
    """
    numbers = np.asarray(numbers, dtype=np.int64).ravel()
    size = len(prefix) + width
    if numbers.size and (numbers.min() < 0 or numbers.max() >= 10**width):
        raise ValueError(f"ids {prefix}...: numbers must be in [0, {10**width}), got {numbers}")
    codes = np.empty((len(numbers), size), dtype=np.uint32)
    codes[:, : len(prefix)] = [ord(c) for c in prefix]
    for j in range(width):  # a loop over digits
        codes[:, len(prefix) + j] = (numbers // 10 ** (width - 1 - j)) % 10 + ord("0")
    return codes.view(f"<U{size}").reshape(len(numbers))


@dataclass
class World:
    """Members, brands and the sales of every day, as parallel numpy arrays."""

    config: SimConfig
    # members, in signup order
    signup_day: np.ndarray  # int: day index of signup (negative: before the run)
    signup_ts: np.ndarray  # datetime64[us]
    birth_year: np.ndarray
    gender: np.ndarray
    region: np.ndarray  # int index into REGIONS
    acquisition: np.ndarray  # int index into ACQUISITION
    referred_by: np.ndarray  # int member index or -1
    consent: dict[str, np.ndarray]
    taste_group: np.ndarray  # int index into TASTE_GROUPS
    taste: np.ndarray  # (n, FACTORS)
    open_base: np.ndarray
    activity: np.ndarray  # probability of an own-initiative site visit a day
    price_sensitivity: np.ndarray
    novelty: np.ndarray
    effect_type: np.ndarray  # int index into EFFECT_TYPES
    # brands and categories
    brand_vec: np.ndarray  # (n_brands, FACTORS)
    brand_new: np.ndarray  # bool: a new designer
    brand_debut: np.ndarray  # day the brand first appears (0 for established brands)
    brand_popularity: np.ndarray
    category_vec: np.ndarray  # (n_categories, FACTORS)
    # sales, one row per sale over the whole run; products, PRODUCTS_PER_SALE per sale
    sale_day: np.ndarray
    sale_brand: np.ndarray
    sale_category: np.ndarray
    sale_discount: np.ndarray
    sale_price: np.ndarray  # average list price of the sale's products
    sale_margin: np.ndarray  # average margin per unit sold, after discount
    sale_capacity: np.ndarray
    product_price: np.ndarray  # (sales, PRODUCTS_PER_SALE) list price
    product_cost: np.ndarray  # (sales, PRODUCTS_PER_SALE) unit cost
    rain: np.ndarray  # (days, regions) bool

    @property
    def n(self) -> int:
        return len(self.signup_day)

    def customer_ids(self, idx: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self.n) if idx is None else np.asarray(idx)
        return padded("C", rows + 1, 7)

    def sale_ids(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        day = self.sale_day[idx]
        k = idx - day * self.config.sales_per_day
        return np.char.add(padded("S", day, 3), padded("-", k, 2))

    def product_ids(self, sale: np.ndarray, product: np.ndarray) -> np.ndarray:
        return np.char.add(np.char.add("P", self.sale_ids(sale)), padded("-", product, 1))

    def brand_names(self) -> np.ndarray:
        idx = np.arange(len(self.brand_new))
        return np.where(self.brand_new, padded("Atelier ", idx, 3), padded("Maison ", idx, 3))

    def day_start(self, day: int) -> datetime:
        return datetime.combine(self.config.start_date, time(0), tzinfo=UTC) + timedelta(days=day)

    def day_start_us(self, day: int) -> int:
        """Midnight UTC of ``day`` in microseconds since the epoch."""
        epoch = np.datetime64(self.config.start_date, "us").astype(np.int64)
        return int(epoch) + day * 86_400_000_000

    def open_sales(self, day: int) -> np.ndarray:
        """Indices of the sales open at noon of ``day`` (today's and the still-running ones)."""
        first = max(0, day - self.config.sale_days + 1) * self.config.sales_per_day
        return np.arange(first, (day + 1) * self.config.sales_per_day)

    def affinity(self, members: np.ndarray, sales: np.ndarray) -> np.ndarray:
        """Standardised taste match of members (rows) for sales (columns)."""
        item = self.brand_vec[self.sale_brand[sales]] + self.category_vec[self.sale_category[sales]]
        return (self.taste[members] @ item.T) / np.sqrt(2.0 * FACTORS)

    def pair_affinity(self, members: np.ndarray, sales: np.ndarray) -> np.ndarray:
        """Taste match of each member with the sale beside it (two arrays of one length)."""
        item = self.brand_vec[self.sale_brand[sales]] + self.category_vec[self.sale_category[sales]]
        return np.einsum("ij,ij->i", self.taste[members], item) / np.sqrt(2.0 * FACTORS)

    def customer_index(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Member index of each customer id; -1 where the id is null, malformed or unknown."""
        ok = pc.fill_null(pc.match_substring_regex(ids, _CUSTOMER), False)
        digits = pc.utf8_slice_codeunits(pc.if_else(ok, ids, "C0000000"), 1)
        idx = pc.cast(digits, pa.int64()).to_numpy() - 1
        mask = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
        return np.where(mask & (idx >= 0) & (idx < self.n), idx, -1)

    def sale_index(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Sale index of each offer id; -1 where the id is null, malformed or unknown."""
        ok = pc.fill_null(pc.match_substring_regex(ids, _SALE), False)
        text = pc.if_else(ok, ids, "S000-00")
        day = pc.cast(pc.utf8_slice_codeunits(text, 1, 4), pa.int64()).to_numpy()
        k = pc.cast(pc.utf8_slice_codeunits(text, 5), pa.int64()).to_numpy()
        per_day = self.config.sales_per_day
        mask = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
        valid = mask & (day < self.config.days) & (k < per_day)
        return np.where(valid, day * per_day + k, -1)


def build_world(config: SimConfig) -> World:
    """Draw the world from ``config.seed``."""
    rng = np.random.default_rng([config.seed, 0])
    n, days = config.n_customers, config.days
    newcomer = rng.random(n) < config.new_member_share
    signup_day = np.where(newcomer, rng.integers(0, days, n), -rng.integers(1, 1500, n))
    signup_sec = signup_day * 86_400 + rng.integers(0, 86_400, n)
    signup_sec.sort()  # member ids follow signup order
    signup_day = signup_sec // 86_400
    signup_ts = np.datetime64(config.start_date, "us") + signup_sec.astype("timedelta64[s]")
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
    per_day = config.sales_per_day
    sales = per_day * days
    popularity = rng.lognormal(0, 0.8, config.n_brands)
    sale_brand = np.empty(sales, dtype=np.int64)
    for d in range(days):  # a loop over days, not members
        live = np.flatnonzero(brand_debut <= d)
        weight = popularity[live] * np.where(brand_new[live], 2.0, 1.0)
        sale_brand[d * per_day : (d + 1) * per_day] = rng.choice(
            live, per_day, p=weight / weight.sum()
        )
    sale_price = rng.lognormal(np.log(60), 0.6, sales)
    discount = np.round(rng.uniform(0.2, 0.7, sales), 2)
    margin_rate = rng.uniform(0.15, 0.4, sales)
    product_price = np.round(
        sale_price[:, None] * rng.uniform(0.6, 1.4, (sales, PRODUCTS_PER_SALE)), 2
    )
    sold_at = product_price * (1 - discount[:, None])
    product_cost = np.round(sold_at * (1 - margin_rate[:, None]), 2)
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
        taste=rng.normal(0, 0.8, (len(TASTE_GROUPS), FACTORS))[group]
        + rng.normal(0, 0.6, (n, FACTORS)),
        open_base=rng.beta(_OPEN[group, 0], _OPEN[group, 1]),
        activity=np.minimum(0.5, rng.gamma(1.5, 0.04, n) * _ACTIVITY[group]),
        price_sensitivity=rng.beta(_PRICE[group, 0], _PRICE[group, 1]),
        novelty=rng.beta(1.5, 3, n),
        effect_type=rng.choice(len(EFFECT_TYPES), n, p=_EFFECT_SHARES),
        brand_vec=rng.normal(0, 1, (config.n_brands, FACTORS)),
        brand_new=brand_new,
        brand_debut=brand_debut,
        brand_popularity=popularity,
        category_vec=rng.normal(0, 1, (len(CATEGORIES), FACTORS)),
        sale_day=np.repeat(np.arange(days), per_day),
        sale_brand=sale_brand,
        sale_category=rng.integers(0, len(CATEGORIES), sales),
        sale_discount=discount,
        sale_price=np.round(product_price.mean(axis=1), 2),
        sale_margin=np.maximum(0, np.round((sold_at - product_cost).mean(axis=1), 2)),
        sale_capacity=rng.integers(base, base * 8, sales),
        product_price=product_price,
        product_cost=product_cost,
        rain=rng.random((days, len(REGIONS))) < 0.3,
    )
