"""Simulated shoppers for the closed loop: they act on the running API's recommendations.

`recsys simulate` draws shoppers from the generator's latent state (`latent.npz`, written by
`recsys generate` beside the CSVs; see `recsys.generate`), asks the API for each shopper's
recommendations, lets the shopper browse, cart and buy with the generator's own model extended
by what was shown, and sends the events back to `POST /v1/events`. The next ingest, build and
training then learn from what the last model showed: the loop.

The behaviour model (pure, seedable, no I/O: `draw_shopper`, `simulate_session`):

- Shoppers: a known visitor with probability 1 - `new_share`, drawn in proportion to the number
  of sessions the data holds for them (so loyal, returning visitors come back most), or a new
  visitor with a fresh id above the known range and tastes, propensity and loyalty drawn as the
  generator draws them. A shopper makes the generator's geometric number of sessions (loyal or
  casual), at most `max_sessions`, or exactly `sessions`.
- A session: its category by taste (primary 62%, secondary 25%, else anywhere by category
  weight), its length from the generator's geometric (mean 1.25 views), and at its start one
  list of recommendations (`GET /v1/recommendations/{visitor}?k=10`; with `session_requests`,
  a new `POST /v1/recommendations` with the session's items after each view).
- A view: with `REPEAT_VIEW_PROB` the previous item again; a returning session opens with
  `REVISIT_PROB` on the item the shopper's previous session opened on; otherwise an item drawn
  from q(i) proportional to p(i) * (1 + boost * examine(rank(i))) for the shown items and p(i)
  for the others, where p is the generator's view distribution of the session (its category's
  items by popularity in the data's last week, with the generator's 10% off-category wander)
  and examine(r) = 1 / log2(r + 1) is the position bias. So a shown item the shopper would have
  looked at anyway gets up to (1 + boost) times the attention, and a shown item outside the
  shopper's interest (p near 0) stays unseen: relevant lists get clicks, irrelevant ones do not,
  and a list of irrelevant items leaves behaviour as it was without one.
- The funnel: each view of an available item goes to the cart with sigmoid(1.1 quality +
  propensity + 1.6 revisit + b_cart), each cart is bought with sigmoid(0.7 quality + 0.5
  propensity + b_buy), b_cart and b_buy being the generator's calibrated biases (they give its
  rates, 2.4% of views carted and 27% of carts bought, over its own visitors; the simulated
  ones, weighted towards returning visitors who reopen items, cart 3.6% of views on `small`).
  A session with a purchase adds the generator's extra checkout items (available items of the
  session's category). Unavailable items are viewed now and then, never carted.
- Times: the generator's gaps order the session's actions; the events carry the wall clock at
  the moment the simulator makes each one (strictly increasing per shopper, never ahead of the
  clock: the API refuses events from the future).

The HTTP part (`run`): one keep-alive `http.client` connection per worker thread, an
`Idempotency-Key` on every request made from the seed, the shopper number and the session
(`sim-<seed>-<shopper>-<session>[-...]`), so a retry (connection errors and 5xx, twice, with a
short back-off) lands a session's events once; the same key with another body is a 409: a
second run with the same seed against the same lake is refused, by design, and counted as
refused. Every event of an item that was in the shown list carries the list's
`impression_id` (when the API's answers carry one). Bounded by `duration`, `shoppers` and
`rate`.

Ids: new visitors get `max(known id) + 1 + (seed % 1000) * 10**9 + shopper number` and
transactions `n_transaction_ids + ((seed % 1000) * 10**9 + shopper number) * 100 + session`,
so runs with different seeds do not share ids.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.generate import (
    LATENT_FORMAT_VERSION,
    unavailable_in_period,
    weekly_weights,
)

DEFAULT_API_URL = "http://127.0.0.1:8000"
MAX_EVENTS_PER_REQUEST = 1_000  # the API's batch limit
MAX_SESSION_ITEMS = 100  # the API's limit on session_item_ids
SEED_BLOCK = 10**9  # new ids: each seed (mod 1000) has its own block of this many shoppers
MAX_SESSIONS = 100  # transaction ids leave room for this many sessions per shopper


class LatentError(ValueError):
    """The latent file is missing, unreadable or of another format."""


class SimulateError(RuntimeError):
    """The simulation cannot go on (no API, a refused key)."""


def examine(rank: int) -> float:
    """Position bias: the chance that a shopper looks at the list's item at `rank` (1 = first)."""
    return 1.0 / math.log2(rank + 1)


@dataclass(frozen=True)
class Behaviour:
    """The simulator's own parameters (the rest is the generator's model, from the file)."""

    boost: float = 4.0  # a shown item at rank 1 gets (1 + boost) x its organic attention
    new_share: float = 0.2  # shoppers who are new visitors
    sessions: int | None = None  # sessions per shopper; None: the generator's geometric
    max_sessions: int = 10  # cap on the geometric (loyal visitors average ~9)
    k: int = 10  # list length asked for
    session_requests: bool = False  # ask again (POST, with the session's items) after each view

    def __post_init__(self) -> None:
        if self.boost < 0:
            raise ValueError("boost must be >= 0")
        if not 0.0 <= self.new_share <= 1.0:
            raise ValueError("new_share must be in [0, 1]")
        if self.sessions is not None and not 1 <= self.sessions <= MAX_SESSIONS:
            raise ValueError(f"sessions must be in 1..{MAX_SESSIONS}")
        if not 1 <= self.max_sessions <= MAX_SESSIONS:
            raise ValueError(f"max_sessions must be in 1..{MAX_SESSIONS}")
        if not 1 <= self.k <= 100:
            raise ValueError("k must be in 1..100")


# --- the latent state ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Shop:
    """`latent.npz`, loaded and indexed for drawing. Categories and items are indices here
    (ids only at the edges: `item_id`, `category_id`, `visitor_id`)."""

    meta: dict[str, Any]
    constants: dict[str, float]
    visitor_id: np.ndarray
    visitor_primary: np.ndarray  # category index
    visitor_secondary: np.ndarray
    visitor_propensity: np.ndarray
    visitor_loyal: np.ndarray
    visitor_last_item: np.ndarray  # item index, -1 if unknown
    visitor_cum: np.ndarray  # cumulative session counts: known shoppers are drawn by them
    item_id: np.ndarray  # sorted
    item_category: np.ndarray  # category index
    item_quality: np.ndarray
    item_available: np.ndarray  # in the current week
    item_weight: np.ndarray  # popularity in the current week
    category_id: np.ndarray
    category_parent: np.ndarray  # index, -1 for roots
    category_total: np.ndarray  # summed current-week weight of the category's items
    wander_cum: np.ndarray  # cumulative category probabilities of a session or view anywhere
    leaves: np.ndarray
    leaf_cum: np.ndarray  # cumulative leaf weights (new visitors' tastes)
    order: np.ndarray  # item indices grouped by category
    cat_lo: np.ndarray  # items of category c: order[cat_lo[c]:cat_hi[c]]
    cat_hi: np.ndarray
    cum: np.ndarray  # cumulative current-week weights along `order`, with a leading 0
    available_cum: np.ndarray  # the same for available items only (checkout extras)
    cart_bias: float
    purchase_bias: float
    next_visitor_id: int
    n_transaction_ids: int

    def c(self, name: str) -> float:
        return float(self.constants[name])

    def item_index(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Indices of `item_ids`, -1 for items the shop does not know."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.item_id, ids), 0, len(self.item_id) - 1)
        return np.where(self.item_id[pos] == ids, pos, -1)

    def view_probability(self, category: int, items: np.ndarray) -> np.ndarray:
        """p(i): the generator's probability that a view of a session in `category` (index) is
        item i (indices; -1 gives 0), in the current week, before the list's effect."""
        items = np.asarray(items, dtype=np.int64)
        known = items >= 0
        safe = np.where(known, items, 0)
        cats = self.item_category[safe]
        total = self.category_total[cats]
        within = np.divide(self.item_weight[safe], total, out=np.zeros(len(safe)), where=total > 0)
        wander_p = np.diff(self.wander_cum, prepend=0.0)[cats]
        off = self.c("OFF_CATEGORY_VIEW")
        p = within * ((1.0 - off) * (cats == category) + off * wander_p)
        return np.where(known, p, 0.0)

    def draw_category(self, u: float) -> int:
        """A category anywhere, by category weight."""
        return _search(self.wander_cum, u)

    def draw_item(self, category: int, u: float, available_only: bool = False) -> int:
        """An item of `category` by current-week popularity (-1 if the category has none)."""
        cum = self.available_cum if available_only else self.cum
        lo, hi = cum[self.cat_lo[category]], cum[self.cat_hi[category]]
        if hi <= lo:
            return -1
        idx = int(np.searchsorted(cum, lo + u * (hi - lo), side="right")) - 1
        idx = min(max(idx, int(self.cat_lo[category])), int(self.cat_hi[category]) - 1)
        return int(self.order[idx])


def load_shop(path: Path) -> Shop:
    """Read `latent.npz` (see `recsys.generate`) and index it for drawing."""
    if not path.is_file():
        raise LatentError(
            f"no latent file at {path}: `recsys generate` writes one beside the CSVs (demo data "
            "made before it did has none: delete the demo folder and run `recsys run` or "
            "`recsys generate` again), or pass --latent"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise LatentError(f"{path} is not a readable latent file: {exc}") from None
    version = meta.get("format_version")
    if version != LATENT_FORMAT_VERSION:
        raise LatentError(
            f"{path} has latent format {version!r}; this version reads {LATENT_FORMAT_VERSION}: "
            "generate the data again"
        )
    try:
        return _index(meta, arrays)
    except KeyError as exc:
        raise LatentError(f"{path} lacks the array {exc}") from None


def _index(meta: dict[str, Any], a: dict[str, np.ndarray]) -> Shop:
    constants = {k: float(v) for k, v in meta["constants"].items()}
    category_id = a["category_id"].astype(np.int64)
    n_cat = len(category_id)
    cat_sort = np.argsort(category_id)

    def cat_index(ids: np.ndarray) -> np.ndarray:
        ids = ids.astype(np.int64)
        pos = np.clip(np.searchsorted(category_id[cat_sort], ids), 0, n_cat - 1)
        found = category_id[cat_sort][pos] == ids
        return np.where(found, cat_sort[pos], -1)

    item_id = a["item_id"].astype(np.int64)
    if np.any(np.diff(item_id) <= 0):
        raise LatentError("item ids in the latent file are not sorted and unique")
    item_category = cat_index(a["item_category"])
    if (item_category < 0).any():
        raise LatentError("an item's category is not in the latent file's categories")
    period = np.array([int(meta["current_period"])])
    unavailable_from = a["item_unavailable_from"].astype(np.int64)
    base = a["item_base_weight"].astype(np.float64)
    trend = a["item_trend"].astype(np.float64)
    weight = weekly_weights(base, trend, unavailable_from, period)[0]
    available = ~unavailable_in_period(unavailable_from, period)[0]
    order = np.lexsort((np.arange(len(item_id)), item_category))
    cats_sorted = item_category[order]
    cat_lo = np.searchsorted(cats_sorted, np.arange(n_cat), side="left")
    cat_hi = np.searchsorted(cats_sorted, np.arange(n_cat), side="right")
    cum = np.concatenate([[0.0], np.cumsum(weight[order])])
    available_cum = np.concatenate([[0.0], np.cumsum((weight * available)[order])])
    category_total = np.bincount(item_category, weights=weight, minlength=n_cat)
    # where a session "anywhere" or a wandering view lands: categories by base weight, as the
    # generator draws them (a category without an active item has weight 0: never drawn)
    cat_weight = a["category_weight"].astype(np.float64)
    cat_weight = np.where(category_total > 0, cat_weight, 0.0)
    wander_cum = np.cumsum(cat_weight) / cat_weight.sum()
    parent = cat_index(a["category_parent"])
    has_child = np.zeros(n_cat, dtype=bool)
    has_child[parent[parent >= 0]] = True
    leaves = np.flatnonzero(~has_child)
    leaf_weight = cat_weight[leaves]
    sessions = a["visitor_sessions"].astype(np.float64)
    visitor_id = a["visitor_id"].astype(np.int64)
    return Shop(
        meta=meta,
        constants=constants,
        visitor_id=visitor_id,
        visitor_primary=cat_index(a["visitor_primary"]),
        visitor_secondary=cat_index(a["visitor_secondary"]),
        visitor_propensity=a["visitor_propensity"].astype(np.float64),
        visitor_loyal=a["visitor_loyal"].astype(bool),
        visitor_last_item=_index_of(item_id, a["visitor_last_item"].astype(np.int64)),
        visitor_cum=np.cumsum(sessions) / sessions.sum(),
        item_id=item_id,
        item_category=item_category,
        item_quality=a["item_quality"].astype(np.float64),
        item_available=available,
        item_weight=weight,
        category_id=category_id,
        category_parent=parent,
        category_total=category_total,
        wander_cum=wander_cum,
        leaves=leaves,
        leaf_cum=np.cumsum(leaf_weight) / leaf_weight.sum(),
        order=order,
        cat_lo=cat_lo,
        cat_hi=cat_hi,
        cum=cum,
        available_cum=available_cum,
        cart_bias=float(meta["cart_bias"]),
        purchase_bias=float(meta["purchase_bias"]),
        next_visitor_id=int(visitor_id.max()) + 1 if len(visitor_id) else 0,
        n_transaction_ids=int(meta["n_transaction_ids"]),
    )


def _search(cum: np.ndarray, value: float) -> int:
    """The index a uniform draw falls on along cumulative weights `cum`."""
    return min(int(np.searchsorted(cum, value, side="right")), len(cum) - 1)


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


# --- the behaviour model (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class Shopper:
    number: int  # which shopper of the run (0, 1, ...)
    visitor_id: int
    known: bool
    primary: int  # category index
    secondary: int
    propensity: float
    loyal: bool
    n_sessions: int
    last_item: int  # item index the previous session opened on, -1 if none


@dataclass(frozen=True)
class Shown:
    """A list the API answered: item ids in rank order, and what the answer said about it."""

    items: tuple[int, ...]
    impression_id: str | None = None
    experiment: str | None = None
    variant: str | None = None
    strategy: str | None = None


@dataclass(frozen=True)
class Action:
    """One event the shopper makes. `offset_ms`: the generator's clock since the session
    started (it orders the session's actions; the wire gets the wall clock)."""

    offset_ms: int
    event: str  # view | addtocart | transaction
    item_id: int
    impression_id: str | None = None  # the list the item was shown in when viewed
    rank: int | None = None  # its rank there; None: not a recommended item
    transaction_id: int | None = None

    @property
    def recommended(self) -> bool:
        return self.rank is not None


@dataclass(frozen=True)
class SessionOutcome:
    category_id: int
    actions: tuple[Action, ...]  # in time order
    lists: tuple[Shown, ...]  # every list the session was shown
    first_item: int  # item index the session opened on (the next session may reopen it)


Recommend = Callable[[Sequence[int]], Shown | None]  # session item ids so far -> a list


def shopper_rng(seed: int, number: int, session: int | None = None) -> np.random.Generator:
    """The random stream of a shopper (session None) or of one of its sessions: fixed by the
    seed and the numbers alone, whichever thread runs them and in whatever order."""
    key = [seed, number] if session is None else [seed, number, session + 1]
    return np.random.default_rng(np.random.SeedSequence(key))


def draw_shopper(shop: Shop, seed: int, number: int, behaviour: Behaviour) -> Shopper:
    """Shopper `number` of the run with `seed`: known (by session count) or new."""
    rng = shopper_rng(seed, number)
    u_new, u_who, u_loyal, u_prim, u_sib, u_sec, u_sib_pick = rng.random(7)
    prop = float(rng.normal(0.0, shop.c("PROPENSITY_SD")))
    if u_new >= behaviour.new_share and len(shop.visitor_id):
        v = _search(shop.visitor_cum, u_who)
        loyal = bool(shop.visitor_loyal[v])
        known = True
        visitor_id = int(shop.visitor_id[v])
        primary, secondary = int(shop.visitor_primary[v]), int(shop.visitor_secondary[v])
        prop = float(shop.visitor_propensity[v])
        last_item = int(shop.visitor_last_item[v])
    else:
        known = False
        visitor_id = shop.next_visitor_id + (seed % 1000) * SEED_BLOCK + number
        loyal = bool(u_loyal < shop.c("LOYAL_SHARE"))
        primary = _leaf(shop, u_prim)
        secondary = _leaf(shop, u_sec)
        # as the generator: half the time the secondary taste is a sibling of the primary
        par = int(shop.category_parent[primary])
        if u_sib < 0.5 and par >= 0:
            siblings = shop.leaves[shop.category_parent[shop.leaves] == par]
            if len(siblings) >= 2:
                secondary = int(siblings[min(int(u_sib_pick * len(siblings)), len(siblings) - 1)])
        last_item = -1
    if behaviour.sessions is not None:
        n_sessions = behaviour.sessions
    else:
        p = shop.c("LOYAL_SESSIONS_P") if loyal else shop.c("CASUAL_SESSIONS_P")
        n_sessions = min(int(rng.geometric(p)), behaviour.max_sessions)
    return Shopper(
        number=number,
        visitor_id=visitor_id,
        known=known,
        primary=primary,
        secondary=secondary,
        propensity=prop,
        loyal=loyal,
        n_sessions=n_sessions,
        last_item=last_item,
    )


def _leaf(shop: Shop, u: float) -> int:
    i = _search(shop.leaf_cum, u)
    return int(shop.leaves[i])


def transaction_id(shop: Shop, seed: int, shopper: Shopper, session: int) -> int:
    return (
        shop.n_transaction_ids
        + ((seed % 1000) * SEED_BLOCK + shopper.number) * MAX_SESSIONS
        + session
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def simulate_session(
    shop: Shop,
    shopper: Shopper,
    previous_first_item: int,
    behaviour: Behaviour,
    rng: np.random.Generator,
    recommend: Recommend,
    transaction: int,
) -> SessionOutcome:
    """One session of `shopper`: lists asked for through `recommend`, views drawn from the
    generator's distribution tilted towards the shown items, then the funnel. Pure given `rng`
    and what `recommend` answers. `previous_first_item`: the item index the shopper's previous
    session opened on (-1: none, the session cannot reopen it). `transaction`: the id its
    purchases get, if any."""
    never = shop.meta.get("revisits") == "never"
    u_taste, u_anywhere = rng.random(2)
    primary_p, secondary_p = shop.c("PRIMARY_TASTE"), shop.c("SECONDARY_TASTE")
    if u_taste < primary_p:
        category = shopper.primary
    elif u_taste < primary_p + secondary_p:
        category = shopper.secondary
    else:
        category = shop.draw_category(u_anywhere)
    n_views = int(rng.geometric(shop.c("SESSION_VIEWS_P")))
    gaps = (rng.exponential(70_000.0, n_views) + 1_000).astype(np.int64)
    gaps[0] = 0
    offsets = np.minimum(np.cumsum(gaps), 25 * 60_000 * (np.arange(n_views) + 1))
    # fixed numbers of draws per view, whatever the list: a list that changes nothing
    # (irrelevant items) leaves every other draw, and so the behaviour, exactly as it was
    u = rng.random((n_views, 6))
    off = shop.c("OFF_CATEGORY_VIEW")
    opens_on_earlier = (
        not never and previous_first_item >= 0 and float(rng.random()) < shop.c("REVISIT_PROB")
    )

    lists: list[Shown] = []
    shown = recommend([])
    if shown is not None:
        lists.append(shown)
    views: list[tuple[int, int, bool, str | None, int | None]] = []  # offset, item, revisit, ...
    session_items: list[int] = []
    shown_idx, tilt = _tilt(shop, category, shown, behaviour.boost)
    for pos in range(n_views):
        u_repeat, u_mix, u_wander, u_cat, u_item, u_pick = u[pos]
        if pos == 0 and opens_on_earlier:
            item, revisit = previous_first_item, True
        elif pos > 0 and not never and u_repeat < shop.c("REPEAT_VIEW_PROB"):
            item, revisit = views[-1][1], False
        elif tilt is not None and u_mix < tilt[-1] / (1.0 + tilt[-1]):
            # a shown item, in proportion to p(i) * boost * examine(rank)
            j = _search(tilt, u_pick * tilt[-1])
            item, revisit = int(shown_idx[min(j, len(shown_idx) - 1)]), False
        else:
            cat = shop.draw_category(u_cat) if u_wander < off else category
            item, revisit = shop.draw_item(cat, u_item), False
            if item < 0:  # a category without items: anywhere instead
                item = shop.draw_item(shop.draw_category(u_cat), u_item)
        impression, rank = None, None
        if shown is not None and item >= 0:
            item_id = int(shop.item_id[item])
            if item_id in shown.items:
                impression, rank = shown.impression_id, shown.items.index(item_id) + 1
        views.append((int(offsets[pos]), item, revisit, impression, rank))
        session_items.append(int(shop.item_id[item]))
        if behaviour.session_requests and pos < n_views - 1:
            again = recommend(session_items[-MAX_SESSION_ITEMS:])
            if again is not None:
                shown = again
                lists.append(again)
                shown_idx, tilt = _tilt(shop, category, shown, behaviour.boost)

    actions = [Action(t, "view", int(shop.item_id[i]), imp, rank) for t, i, _, imp, rank in views]
    # the funnel: the generator's logits and calibrated biases; unavailable items never carted
    u_cart = rng.random(n_views)
    u_buy = rng.random(n_views)
    cart_delay = rng.exponential(40_000.0, n_views).astype(np.int64)
    carts: list[Action] = []
    bought: list[Action] = []
    for n, (t, i, revisit, imp, rank) in enumerate(views):
        if not shop.item_available[i]:
            continue
        logit = (
            shop.c("CART_QUALITY") * shop.item_quality[i]
            + shopper.propensity
            + shop.c("CART_REVISIT") * revisit
            + shop.cart_bias
        )
        if u_cart[n] >= _sigmoid(logit):
            continue
        cart = Action(t + int(cart_delay[n]), "addtocart", int(shop.item_id[i]), imp, rank)
        carts.append(cart)
        buy_logit = (
            shop.c("BUY_QUALITY") * shop.item_quality[i]
            + shop.c("BUY_PROPENSITY") * shopper.propensity
            + shop.purchase_bias
        )
        if u_buy[n] < _sigmoid(buy_logit):
            bought.append(cart)
    if bought:
        # extra items join at checkout, available ones of the session's category
        n_extra = 0 if never else int(rng.geometric(shop.c("EXTRA_ITEM_P"))) - 1
        last_view = int(offsets[-1])
        for _ in range(n_extra):
            extra = shop.draw_item(category, float(rng.random()), available_only=True)
            t_extra = last_view + int(rng.integers(5_000, 120_000))
            if extra >= 0:
                cart = Action(t_extra, "addtocart", int(shop.item_id[extra]))
                carts.append(cart)
                bought.append(cart)
        last_cart = max(c.offset_ms for c in carts)
        t_tx = last_cart + 60_000 + int(rng.integers(0, 300_000))
        actions += [
            Action(t_tx, "transaction", b.item_id, b.impression_id, b.rank, transaction)
            for b in bought
        ]
    actions += carts
    kind = {"view": 0, "addtocart": 1, "transaction": 2}
    actions.sort(key=lambda a: (a.offset_ms, kind[a.event], a.item_id))
    return SessionOutcome(
        category_id=int(shop.category_id[category]),
        actions=tuple(actions),
        lists=tuple(lists),
        first_item=views[0][1],
    )


def _tilt(
    shop: Shop, category: int, shown: Shown | None, boost: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The shown items (indices) and the cumulative boost * p(i) * examine(rank) over them
    (None without a list or without any mass)."""
    if shown is None or not shown.items or boost <= 0:
        return np.empty(0, dtype=np.int64), None
    idx = shop.item_index(shown.items)
    ranks = np.arange(1, len(idx) + 1)
    mass = boost * shop.view_probability(category, idx) / np.log2(ranks + 1)
    if mass.sum() <= 0:
        return idx, None
    return idx, np.cumsum(mass)


# --- the HTTP part --------------------------------------------------------------------------


class Api:
    """The API over http.client: one keep-alive connection per thread, retries on connection
    errors and 5xx (the Idempotency-Key makes them safe)."""

    def __init__(
        self, url: str, api_key: str | None, timeout: float = 10.0, retries: int = 2
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SimulateError(f"--api-url {url!r} is not an http(s) URL")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.url = url
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def close(self) -> None:
        self._drop()

    def check(self) -> None:
        """SimulateError unless the API answers its liveness check."""
        status, _ = self.request("GET", "/healthz")
        if status != 200:
            raise SimulateError(
                f"no API answering at {self.url} (status {status or 'none'}): start it with "
                "`recsys serve`, or pass --api-url"
            )

    def request(
        self, method: str, path: str, body: Any = None, idempotency_key: str | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None). Status 0: no answer after the retries."""
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        status, parsed = 0, None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            try:
                conn = self._connection()
                conn.request(method, self.prefix + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
                if response.will_close:
                    self._drop()
            except (OSError, http.client.HTTPException):
                self._drop()
                status, parsed = 0, None
                continue
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            if status < 500:
                break
        return status, parsed


@dataclass
class Report:
    """What a run did (`run`'s answer; the command prints it)."""

    shoppers: int = 0
    known_shoppers: int = 0
    new_shoppers: int = 0
    sessions: int = 0
    recommendation_calls: int = 0
    recommendation_failures: int = 0
    impressions: int = 0  # answers that carried an impression_id
    shown_items: int = 0
    actions: Counter[str] = field(default_factory=Counter)  # "view/recommended", "view/other", ..
    events_posted: int = 0
    events_refused: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # events by "status: reason"
    strategies: Counter[str] = field(default_factory=Counter)
    experiments: Counter[str] = field(default_factory=Counter)  # "experiment/variant"
    seconds: float = 0.0

    def merge(self, other: Report) -> None:
        for name in (
            "shoppers",
            "known_shoppers",
            "new_shoppers",
            "sessions",
            "recommendation_calls",
            "recommendation_failures",
            "impressions",
            "shown_items",
            "events_posted",
            "events_refused",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("actions", "refusals", "strategies", "experiments"):
            getattr(self, name).update(getattr(other, name))

    def lines(self) -> list[str]:
        a = self.actions
        rate = self.shoppers / self.seconds if self.seconds else 0.0
        shown_views = a["view/recommended"]
        out = [
            f"shoppers: {self.shoppers:,} ({self.known_shoppers:,} known, {self.new_shoppers:,} "
            f"new) in {self.seconds:.1f}s ({rate:.1f}/s); sessions: {self.sessions:,}",
            f"recommendation calls: {self.recommendation_calls:,} "
            f"({self.recommendation_failures:,} failed); impressions seen: {self.impressions:,}; "
            f"items shown: {self.shown_items:,}",
        ]
        for event in ("view", "addtocart", "transaction"):
            rec, other = a[f"{event}/recommended"], a[f"{event}/other"]
            out.append(f"{event}s: {rec:,} of recommended items, {other:,} of other items")
        views = a["view/recommended"] + a["view/other"]
        if self.shown_items:
            out.append(
                f"views of shown items per item shown: {shown_views / self.shown_items:.4f}; "
                f"share of views on recommended items: {shown_views / max(views, 1):.3f}"
            )
        out.append(f"events posted: {self.events_posted:,}; refused: {self.events_refused:,}")
        for status, count in sorted(self.refusals.items()):
            out.append(f"  refused ({status}): {count:,} events")
        if self.strategies:
            out.append(
                "strategies: " + ", ".join(f"{k} {v:,}" for k, v in self.strategies.most_common())
            )
        if self.experiments:
            out.append(
                "experiments (experiment/variant: answers): "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(self.experiments.items()))
            )
        else:
            out.append("experiments: none in the answers")
        return out


def _parse_list(body: Any) -> Shown | None:
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return None
    items = []
    for entry in sorted(
        body["items"], key=lambda e: e.get("rank", 0) if isinstance(e, dict) else 0
    ):
        if isinstance(entry, dict) and isinstance(entry.get("item_id"), int):
            items.append(int(entry["item_id"]))

    def text(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) else None

    return Shown(
        items=tuple(items),
        impression_id=text("impression_id"),
        experiment=text("experiment"),
        variant=text("variant"),
        strategy=text("strategy"),
    )


class _Clock:
    """Event times: the wall clock in ms, strictly increasing (never ahead of the clock)."""

    def __init__(self) -> None:
        self.last = 0

    def now(self) -> int:
        while True:
            now = time.time_ns() // 1_000_000
            if now > self.last:
                self.last = now
                return now
            time.sleep(0.0005)


FATAL = (401, 403)


def run_shopper(
    api: Api,
    shop: Shop,
    seed: int,
    number: int,
    behaviour: Behaviour,
    deadline: float,
    stop: threading.Event,
) -> Report:
    """Shopper `number`: its sessions against the API (stopping at a session boundary once the
    deadline passes or `stop` is set)."""
    report = Report(shoppers=1)
    shopper = draw_shopper(shop, seed, number, behaviour)
    if shopper.known:
        report.known_shoppers = 1
    else:
        report.new_shoppers = 1
    clock = _Clock()
    previous_first = shopper.last_item
    for session in range(shopper.n_sessions):
        if session and (time.monotonic() > deadline or stop.is_set()):
            break
        key = f"sim-{seed}-{number}-{session}"
        calls = 0

        def recommend(items: Sequence[int], key: str = key) -> Shown | None:
            nonlocal calls
            calls += 1
            report.recommendation_calls += 1
            if items:
                body = {
                    "visitor_id": shopper.visitor_id,
                    "session_item_ids": list(items),
                    "k": behaviour.k,
                }
                status, answer = api.request(
                    "POST", "/v1/recommendations", body, idempotency_key=f"{key}-r{calls}"
                )
            else:
                status, answer = api.request(
                    "GET",
                    f"/v1/recommendations/{shopper.visitor_id}?k={behaviour.k}",
                    idempotency_key=f"{key}-r{calls}",
                )
            if status in FATAL:
                stop.set()
                raise SimulateError(f"the API refused the key ({status}): {_detail(answer)}")
            shown = _parse_list(answer) if status == 200 else None
            if shown is None:
                report.recommendation_failures += 1
                return None
            report.shown_items += len(shown.items)
            report.impressions += shown.impression_id is not None
            report.strategies[shown.strategy or "?"] += 1
            if shown.experiment is not None:
                report.experiments[f"{shown.experiment}/{shown.variant}"] += 1
            return shown

        outcome = simulate_session(
            shop,
            shopper,
            previous_first,
            behaviour,
            shopper_rng(seed, number, session),
            recommend,
            transaction_id(shop, seed, shopper, session),
        )
        previous_first = outcome.first_item
        report.sessions += 1
        events = []
        for action in outcome.actions:
            report.actions[
                f"{action.event}/{'recommended' if action.recommended else 'other'}"
            ] += 1
            event: dict[str, Any] = {
                "timestamp": clock.now(),
                "visitorid": shopper.visitor_id,
                "event": action.event,
                "itemid": action.item_id,
            }
            if action.transaction_id is not None:
                event["transactionid"] = action.transaction_id
            if action.impression_id is not None:
                event["impression_id"] = action.impression_id
            events.append(event)
        for n, start in enumerate(range(0, len(events), MAX_EVENTS_PER_REQUEST)):
            chunk = events[start : start + MAX_EVENTS_PER_REQUEST]
            status, answer = api.request(
                "POST", "/v1/events", chunk, idempotency_key=key if n == 0 else f"{key}-e{n}"
            )
            if status == 202:
                report.events_posted += len(chunk)
            else:
                if status in FATAL:
                    stop.set()
                    raise SimulateError(f"the API refused the key ({status}): {_detail(answer)}")
                report.events_refused += len(chunk)
                report.refusals[_refusal(status, answer)] += len(chunk)
    return report


def _detail(answer: Any) -> str:
    if isinstance(answer, dict) and "detail" in answer:
        return str(answer["detail"])[:200]
    return "no detail"


def _refusal(status: int, answer: Any) -> str:
    if status == 0:
        return "no answer"
    if status == 409:
        return "409: an Idempotency-Key of this seed was used before (another --seed?)"
    return f"{status}: {_detail(answer)}"


def shopper_numbers(shoppers: int | None) -> Iterator[int]:
    n = 0
    while shoppers is None or n < shoppers:
        yield n
        n += 1


def run(
    shop: Shop,
    api: Api,
    *,
    seed: int,
    behaviour: Behaviour,
    duration: float,
    shoppers: int | None = None,
    rate: float = 0.0,
    concurrency: int = 4,
    progress: Callable[[int], object] | None = None,
) -> Report:
    """Shoppers against the API until `duration` seconds pass or `shoppers` are done, starting
    at most `rate` per second (0: as fast as `concurrency` threads go)."""
    if seed < 0:
        raise SimulateError("--seed must be >= 0")
    if concurrency < 1:
        raise SimulateError("--concurrency must be >= 1")
    if duration <= 0 or rate < 0 or (shoppers is not None and shoppers < 0):
        raise SimulateError("--duration must be > 0, --rate and --shoppers >= 0")
    api.check()
    t0 = time.monotonic()
    deadline = t0 + duration
    stop = threading.Event()
    total = Report()
    running: set[Future[Report]] = set()

    def collect(done: set[Future[Report]]) -> None:
        for future in done:
            report = future.result()  # a SimulateError stops the run here
            total.merge(report)
            if progress:
                progress(1)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="shopper") as pool:
        try:
            for number in shopper_numbers(shoppers):
                now = time.monotonic()
                if now >= deadline or stop.is_set():
                    break
                if rate > 0:
                    start_at = t0 + number / rate
                    if start_at >= deadline:
                        break
                    if start_at > now:
                        time.sleep(start_at - now)
                while len(running) >= 2 * concurrency:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    running -= done
                    collect(done)
                running.add(
                    pool.submit(run_shopper, api, shop, seed, number, behaviour, deadline, stop)
                )
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                running -= done
                collect(done)
        except BaseException:
            stop.set()
            for future in running:
                future.cancel()
            raise
    total.seconds = time.monotonic() - t0
    return total
