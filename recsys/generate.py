"""Synthetic shop data in the RetailRocket Kaggle layout.

Writes `events.csv`, `item_properties_part1.csv`, `item_properties_part2.csv` and
`category_tree.csv` exactly as RetailRocket ships them, with a shape close to the real data:

- a category tree with roots, leaves holding items, heavy-tailed category sizes;
- heavy-tailed item popularity (lognormal) with a per-item trend over time, and items that
  become unavailable (fewer views, no purchases once unavailable);
- heavy-tailed visitor activity: most visitors have one event, a few loyal ones come back;
- visitors with category tastes (a primary and a secondary category), sessions that stay in one
  category, returning visitors that come back to items they looked at before;
- a view -> add-to-cart -> transaction funnel inside sessions, driven by latent item quality and
  visitor propensity, so that a ranker has signal to learn; transactions group one or more items.

Everything is vectorised with NumPy and written with Arrow's CSV writer; one seed gives the same
bytes every time (one `numpy.random.Generator` per component, spawned from the seed).

Beside the CSVs the generator writes its latent state, `latent.npz` (`LATENT_FILE`), so that the
simulated shoppers of `recsys simulate` (`recsys.simulate`) behave as the shop's own visitors did:
same tastes, same item popularity, same funnel. Writing it draws no random number, so the CSVs
of a seed are the same bytes with or without it. It is a NumPy `.npz` (compressed, no pickles:
`numpy.load(path, allow_pickle=False)` reads it), 2.4 MB at `small` scale, about 25 MB at `full`:

- `meta`: a JSON string (0-d array): `format_version` (`LATENT_FORMAT_VERSION`), `scale`,
  `scale_factor` (only when it is not 1: the default's file is the same bytes as before the
  factor existed; a reader takes a missing one as 1.0), `seed`, `revisits`, `cart_bias` and
  `purchase_bias` (the biases b that calibrate the cart and purchase Bernoullis,
  sigmoid(logit + b), to `CART_RATE` and `PURCHASE_RATE` on the data set's own views),
  `n_transaction_ids`, `current_period` (the last weekly period: the shop as of the
  data's end) and `constants` (every behaviour constant below, the funnel coefficients
  included, by name);
- per visitor (`visitor_*`, in the generator's visitor order): `id`, `primary` and `secondary`
  (category ids of the two tastes), `propensity` (added to the cart logit, x0.5 to the purchase
  logit), `loyal`, `sessions` (how many sessions the data holds), `last_item` (the item id the
  visitor's last session opened on: where a returning session may open again);
- per item (`item_*`, sorted by id): `id`, `category` (category id that views draw from;
  the first `categoryid` property), `moved_category` and `moved_at` (the category the
  properties move the item to and the snapshot week they do, `N_SNAPSHOTS` = never),
  `base_weight` (lognormal popularity, 0 = never viewed), `trend` (log change of popularity
  over the span), `quality` (the funnel's item term), `unavailable_from` (snapshot week it goes
  out of stock, `N_SNAPSHOTS` = never), `price` (the first `790` value) and `price_last` (the
  last one), `has_properties`;
- per category (`category_*`, in the generator's order): `id`, `parent` (id, -1 for roots),
  `weight` (the summed base weight of its items: how often a session that browses anywhere
  lands on it).

`weekly_weights` and `unavailable_in_period` are the popularity and availability of a week, used
by the generator and the simulator alike.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

# 2015-05-03 03:00:00 UTC, the first event of RetailRocket, in epoch milliseconds.
START_MS = 1_430_622_000_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
N_DAYS = 139
# Property snapshots are weekly, Sundays 03:00 UTC, from 2015-05-10 to 2015-09-13 (19 of them).
FIRST_SNAPSHOT_MS = START_MS + WEEK_MS
N_SNAPSHOTS = 19
N_PERIODS = (N_DAYS + 6) // 7  # weekly periods over the event span

LATENT_FILE = "latent.npz"
LATENT_FORMAT_VERSION = 1

EVENTS_HEADER = b"timestamp,visitorid,event,itemid,transactionid\n"
PROPERTIES_HEADER = b"timestamp,itemid,property,value\n"
CATEGORY_HEADER = b"categoryid,parentid\n"


@dataclass(frozen=True)
class Scale:
    """Sizes of one generated data set. `full` matches RetailRocket's counts."""

    n_visitors: int
    n_items: int  # items with properties
    n_categories: int
    n_roots: int
    active_item_share: float  # items that can be viewed at all
    n_hashed_properties: int
    hashed_per_item: float  # mean number of hashed properties per item


SCALES: dict[str, Scale] = {
    "tiny": Scale(2_600, 900, 40, 4, 0.7, 60, 6.0),
    "small": Scale(150_000, 30_000, 300, 12, 0.72, 400, 12.0),
    "full": Scale(1_407_580, 417_053, 1_669, 25, 0.72, 1_100, 13.5),
}

# `--scale-factor`: a named scale's visitors, items and categories times the factor, so that
# events, visitors and items grow linearly with it (the scaling benchmark's sizes). The shape
# (category roots, active share, hashed properties and their count per item) stays the scale's.
# The upper bound guards against typos: 16 x full is ~44 M events, more than one machine runs.
MAX_SCALE_FACTOR = 16.0
MIN_SCALED = {"n_visitors": 100, "n_items": 50, "n_categories": 4}


def check_scale_factor(factor: float | str) -> float:
    """`factor` (a number or its text) as a float when it is a usable scale factor, else
    ValueError saying why."""
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"scale factor must be a number, not {factor!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"scale factor must be a finite number > 0, not {factor!r}")
    if value > MAX_SCALE_FACTOR:
        raise ValueError(
            f"scale factor {value:g} is over the limit of {MAX_SCALE_FACTOR:g} "
            f"({MAX_SCALE_FACTOR:g} x full is ~44 M events)"
        )
    return value


def scaled(scale: Scale, factor: float) -> Scale:
    """`scale` with its visitors, items and categories times `factor` (the same object for 1.0,
    so the default's bytes never change); ValueError when the factor is unusable or leaves
    fewer than `MIN_SCALED` of one of them."""
    factor = check_scale_factor(factor)
    if factor == 1.0:
        return scale
    counts = {
        name: round(getattr(scale, name) * factor)
        for name in ("n_visitors", "n_items", "n_categories")
    }
    for name, count in counts.items():
        if count < MIN_SCALED[name]:
            raise ValueError(
                f"scale factor {factor:g} leaves {count} {name[2:]} (at least "
                f"{MIN_SCALED[name]} needed): use a larger factor or scale"
            )
    # roots stay the scale's, unless the categories are too few to hang below them
    n_roots = min(scale.n_roots, counts["n_categories"] // 2)
    return dataclasses.replace(scale, **counts, n_roots=n_roots)


# Behaviour, the same at every scale.
LOYAL_SHARE = 0.05  # visitors who come back often
LOYAL_SESSIONS_P = 0.11  # geometric parameter: loyal visitors have ~9 sessions
CASUAL_SESSIONS_P = 0.88
SESSION_VIEWS_P = 0.8  # geometric parameter: views per session
REPEAT_VIEW_PROB = 0.2  # a view repeats the previous item of the session
REVISIT_PROB = 0.4  # a returning session opens on an item seen in the previous session
PRIMARY_TASTE, SECONDARY_TASTE = 0.62, 0.25  # the rest of the sessions browse anywhere
OFF_CATEGORY_VIEW = 0.1  # a view inside a session that leaves the session's category
# RetailRocket: 69,332 add-to-carts and 22,457 purchased items in 17,672 transactions for
# 2,664,312 views. Extra items join transactions at checkout (about 0.27 per transaction), the
# rest come from viewed items: 2.42% of views go to the cart, 27.4% of those are bought.
CART_RATE = 0.0242
PURCHASE_RATE = 0.274
EXTRA_ITEM_P = 0.787  # geometric parameter: items a transaction adds at checkout, plus one
# the funnel's logits: cart = CART_QUALITY x quality + propensity + CART_REVISIT x (the view
# reopens an earlier session's item); purchase = BUY_QUALITY x quality + BUY_PROPENSITY x propensity
CART_QUALITY, CART_REVISIT = 1.1, 1.6
BUY_QUALITY, BUY_PROPENSITY = 0.7, 0.5
PROPENSITY_SD = 0.6  # visitors' propensity ~ Normal(0, PROPENSITY_SD)
UNAVAILABLE_WEIGHT = 0.15  # an unavailable item keeps this share of its popularity (views only)
UNAVAILABLE_SHARE = 0.15  # items that go out of stock at some week
CATEGORY_CHANGE_SHARE = 0.02  # items moved to another category at some week


def _calibrated_bernoulli(
    rng: np.random.Generator, logits: np.ndarray, target: float, mask: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Draw Bernoulli(sigmoid(logits + b)) with b chosen so that the mean rate is `target`;
    the draws and b (the simulator reuses b on its own logits)."""
    b = 0.0
    for _ in range(30):  # Newton steps on the mean probability
        p = 1.0 / (1.0 + np.exp(-(logits + b)))
        if mask is not None:
            p = p * mask
        mean = p.mean()
        grad = (p * (1 - p)).mean()
        if grad <= 0:
            break
        b -= (mean - target) / grad
        if abs(mean - target) < 1e-6:
            break
    p = 1.0 / (1.0 + np.exp(-(logits + b)))
    if mask is not None:
        p = p * mask
    return rng.random(len(logits)) < p, float(b)


def weekly_weights(
    base_weight: np.ndarray, trend: np.ndarray, unavailable_from: np.ndarray, periods: np.ndarray
) -> np.ndarray:
    """Item popularity in each of `periods` (rows): base x trend, x UNAVAILABLE_WEIGHT once the
    item is out of stock. Period p covers week p of the span."""
    x = (periods + 0.5) / N_PERIODS - 0.5
    weights = base_weight[None, :] * np.exp(trend[None, :] * x[:, None])
    unavailable = unavailable_in_period(unavailable_from, periods)
    return np.where(unavailable, weights * UNAVAILABLE_WEIGHT, weights)


def unavailable_in_period(unavailable_from: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """(periods x items) True where the item is out of stock in the period: from the snapshot
    week before it (the snapshot at the start of week p is p - 1)."""
    snapshot_of_period = np.clip(periods - 1, 0, N_SNAPSHOTS - 1)
    return snapshot_of_period[:, None] >= unavailable_from[None, :]


def _category_tree(rng: np.random.Generator, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
    """Category ids and parent index (-1 for roots), grown breadth-first to depth <= 4."""
    n = scale.n_categories
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    for i in range(scale.n_roots, n):
        # prefer shallow parents so that the tree is bushy, with a few deep branches
        candidates = np.flatnonzero(depth[:i] < 4)
        weights = 1.0 / (1.0 + depth[candidates]) ** 1.5
        j = rng.choice(candidates, p=weights / weights.sum())
        parent[i] = j
        depth[i] = depth[j] + 1
    ids = rng.permutation(int(n * 1.02) + 1)[:n].astype(np.int64)
    return ids, parent


def _session_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Session start offsets in ms from START_MS: uniform days, a daily traffic cycle."""
    day = rng.integers(0, N_DAYS, n)
    hour_weights = 1.0 + 0.8 * np.sin((np.arange(24) - 9) / 24 * 2 * np.pi)
    hour = rng.choice(24, n, p=hour_weights / hour_weights.sum())
    within = rng.integers(0, 3_600_000, n)
    return day * DAY_MS + hour * 3_600_000 + within


class _Writer:
    """Appends Arrow tables to a CSV file in the RetailRocket form (no quotes, header first)."""

    def __init__(self, path: Path, header: bytes, schema: pa.Schema) -> None:
        self.sink = pa.OSFile(str(path), "wb")
        self.sink.write(header)
        self.writer = pcsv.CSVWriter(
            self.sink,
            schema,
            write_options=pcsv.WriteOptions(include_header=False, quoting_style="none"),
        )
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self.writer.close()
        self.sink.close()


def latent_constants() -> dict[str, float]:
    """The behaviour constants, by name, as `latent.npz` records them."""
    return {
        "LOYAL_SHARE": LOYAL_SHARE,
        "LOYAL_SESSIONS_P": LOYAL_SESSIONS_P,
        "CASUAL_SESSIONS_P": CASUAL_SESSIONS_P,
        "SESSION_VIEWS_P": SESSION_VIEWS_P,
        "REPEAT_VIEW_PROB": REPEAT_VIEW_PROB,
        "REVISIT_PROB": REVISIT_PROB,
        "PRIMARY_TASTE": PRIMARY_TASTE,
        "SECONDARY_TASTE": SECONDARY_TASTE,
        "OFF_CATEGORY_VIEW": OFF_CATEGORY_VIEW,
        "CART_RATE": CART_RATE,
        "PURCHASE_RATE": PURCHASE_RATE,
        "EXTRA_ITEM_P": EXTRA_ITEM_P,
        "UNAVAILABLE_SHARE": UNAVAILABLE_SHARE,
        "CATEGORY_CHANGE_SHARE": CATEGORY_CHANGE_SHARE,
        "CART_QUALITY": CART_QUALITY,
        "CART_REVISIT": CART_REVISIT,
        "BUY_QUALITY": BUY_QUALITY,
        "BUY_PROPENSITY": BUY_PROPENSITY,
        "PROPENSITY_SD": PROPENSITY_SD,
        "UNAVAILABLE_WEIGHT": UNAVAILABLE_WEIGHT,
        "START_MS": START_MS,
        "DAY_MS": DAY_MS,
        "WEEK_MS": WEEK_MS,
        "N_DAYS": N_DAYS,
        "N_PERIODS": N_PERIODS,
        "N_SNAPSHOTS": N_SNAPSHOTS,
        "FIRST_SNAPSHOT_MS": FIRST_SNAPSHOT_MS,
    }


# How visitors come back to items they have met: `retailrocket` as in the real data (repeat
# views in a session, returning sessions that open on an earlier item), or `never` (each visitor
# meets each item once, as in a catalogue of one-off goods or a dataset of ratings).
REVISITS = ("retailrocket", "never")


def generate(
    scale_name: str,
    seed: int,
    out_dir: Path,
    progress: Callable[[str], None] | None = None,
    revisits: str = "retailrocket",
    scale_factor: float = 1.0,
) -> dict[str, int | float]:
    """Write the four CSVs for `scale_name` (its counts times `scale_factor`) into `out_dir`;
    return row counts and shape figures."""
    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r}; choose one of {', '.join(SCALES)}")
    if revisits not in REVISITS:
        raise ValueError(f"unknown revisits {revisits!r}; choose one of {', '.join(REVISITS)}")
    never = revisits == "never"
    scale_factor = check_scale_factor(scale_factor)
    scale = scaled(SCALES[scale_name], scale_factor)
    say = progress or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    rng_tree, rng_items, rng_vis, rng_sess, rng_view, rng_funnel, rng_props, rng_values = streams
    t0 = time.perf_counter()

    # --- categories -------------------------------------------------------------------------
    cat_ids, cat_parent = _category_tree(rng_tree, scale)
    n_cat = len(cat_ids)
    has_child = np.zeros(n_cat, dtype=bool)
    has_child[cat_parent[cat_parent >= 0]] = True
    leaves = np.flatnonzero(~has_child)
    with open(out_dir / "category_tree.csv", "wb") as fh:
        fh.write(CATEGORY_HEADER)
        lines = [
            f"{cat_ids[i]},{cat_ids[cat_parent[i]] if cat_parent[i] >= 0 else ''}\n"
            for i in range(n_cat)
        ]
        fh.write("".join(lines).encode())

    # --- items ------------------------------------------------------------------------------
    n_items = scale.n_items
    id_space = int(n_items * 1.12) + 10
    item_ids = np.sort(rng_items.choice(id_space, n_items, replace=False)).astype(np.int64)
    # leaf categories get heavy-tailed sizes; a few items sit on inner nodes
    leaf_size = rng_items.pareto(1.2, len(leaves)) + 1.0
    item_cat = leaves[rng_items.choice(len(leaves), n_items, p=leaf_size / leaf_size.sum())]
    inner = np.flatnonzero(has_child)
    on_inner = rng_items.random(n_items) < 0.03
    if len(inner):
        item_cat[on_inner] = inner[rng_items.integers(0, len(inner), on_inner.sum())]
    is_active = rng_items.random(n_items) < scale.active_item_share
    base_weight = rng_items.lognormal(0.0, 1.5, n_items) * is_active
    trend = rng_items.normal(0.0, 0.9, n_items)  # log change of popularity over the span
    quality = rng_items.normal(0.0, 0.9, n_items)  # latent conversion propensity
    # out-of-stock week (snapshot index) or N_SNAPSHOTS when always available
    goes_unavailable = rng_items.random(n_items) < UNAVAILABLE_SHARE
    unavailable_from = np.where(
        goes_unavailable, rng_items.integers(0, N_SNAPSHOTS, n_items), N_SNAPSHOTS
    )
    # a few items move to another leaf at some week
    moves = rng_items.random(n_items) < CATEGORY_CHANGE_SHARE
    moved_at = np.where(moves, rng_items.integers(1, N_SNAPSHOTS, n_items), N_SNAPSHOTS)
    new_cat = leaves[rng_items.integers(0, len(leaves), n_items)]
    # some items that have events have no properties at all (they land in `unknown`)
    no_properties = is_active & (rng_items.random(n_items) < 0.03)
    price = np.round(rng_items.lognormal(8.5, 1.0, n_items)).astype(np.int64) * 12 + 12

    order = np.lexsort((np.arange(n_items), item_cat))  # items grouped by category
    # weekly popularity: base x trend x availability (period p covers week p)
    period_weights = weekly_weights(base_weight, trend, unavailable_from, np.arange(N_PERIODS))
    unavailable = unavailable_in_period(unavailable_from, np.arange(N_PERIODS))
    cat_weight = np.bincount(item_cat, weights=base_weight, minlength=n_cat)
    say(f"categories and items ready ({time.perf_counter() - t0:.1f}s)")

    # --- visitors and sessions --------------------------------------------------------------
    n_vis = scale.n_visitors
    visitor_ids = rng_vis.permutation(n_vis).astype(np.int64)
    loyal = rng_vis.random(n_vis) < LOYAL_SHARE
    n_sessions = np.where(
        loyal,
        rng_vis.geometric(LOYAL_SESSIONS_P, n_vis),
        rng_vis.geometric(CASUAL_SESSIONS_P, n_vis),
    )
    propensity = rng_vis.normal(0.0, PROPENSITY_SD, n_vis)
    leaf_weight = cat_weight[leaves]
    primary = leaves[rng_vis.choice(len(leaves), n_vis, p=leaf_weight / leaf_weight.sum())]
    # the secondary taste is a sibling of the primary when there is one, else anything popular
    secondary = leaves[rng_vis.choice(len(leaves), n_vis, p=leaf_weight / leaf_weight.sum())]
    sib_pool: dict[int, list[int]] = {}
    for leaf in leaves:
        sib_pool.setdefault(int(cat_parent[leaf]), []).append(int(leaf))
    take_sibling = rng_vis.random(n_vis) < 0.5
    parents_of_primary = cat_parent[primary]
    for par, members in sib_pool.items():
        arr = np.asarray(members)
        if par < 0 or len(arr) < 2:
            continue
        sel = take_sibling & (parents_of_primary == par)
        secondary[sel] = arr[rng_vis.integers(0, len(arr), sel.sum())]

    sess_vis = np.repeat(np.arange(n_vis), n_sessions)
    n_sess = len(sess_vis)
    sess_start = _session_times(rng_sess, n_sess)
    by_visitor_time = np.lexsort((sess_start, sess_vis))
    sess_vis, sess_start = sess_vis[by_visitor_time], sess_start[by_visitor_time]
    first_of_visitor = np.ones(n_sess, dtype=bool)
    first_of_visitor[1:] = sess_vis[1:] != sess_vis[:-1]
    taste = rng_sess.random(n_sess)
    sess_cat = np.where(
        taste < PRIMARY_TASTE,
        primary[sess_vis],
        np.where(
            taste < PRIMARY_TASTE + SECONDARY_TASTE,
            secondary[sess_vis],
            rng_sess.choice(n_cat, n_sess, p=cat_weight / cat_weight.sum()),
        ),
    )
    sess_len = rng_sess.geometric(SESSION_VIEWS_P, n_sess)
    say(f"{n_vis:,} visitors, {n_sess:,} sessions ({time.perf_counter() - t0:.1f}s)")

    # --- views ------------------------------------------------------------------------------
    view_sess = np.repeat(np.arange(n_sess), sess_len)
    n_views = len(view_sess)
    pos = np.arange(n_views) - np.repeat(np.cumsum(sess_len) - sess_len, sess_len)
    gaps = rng_view.exponential(70_000.0, n_views).astype(np.int64) + 1_000
    gaps[pos == 0] = 0
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[np.cumsum(sess_len) - sess_len], sess_len)
    view_t = sess_start[view_sess] + np.minimum(offset, 25 * 60_000 * (pos + 1))
    view_t = np.minimum(view_t, N_DAYS * DAY_MS - 1)
    view_cat = sess_cat[view_sess].copy()
    wander = rng_view.random(n_views) < OFF_CATEGORY_VIEW
    view_cat[wander] = rng_view.choice(n_cat, wander.sum(), p=cat_weight / cat_weight.sum())
    # categories with no active item borrow from a random leaf that has one
    empty_cat = cat_weight <= 0
    if empty_cat[view_cat].any():
        good = np.flatnonzero(~empty_cat)
        bad = empty_cat[view_cat]
        view_cat[bad] = good[rng_view.integers(0, len(good), bad.sum())]
    period = np.minimum(view_t // WEEK_MS, N_PERIODS - 1)
    sorted_cat = item_cat[order]
    cat_lo = np.searchsorted(sorted_cat, np.arange(n_cat), side="left")
    cat_hi = np.searchsorted(sorted_cat, np.arange(n_cat), side="right")
    cum_by_period = [
        np.concatenate([[0.0], np.cumsum(period_weights[p, order])]) for p in range(N_PERIODS)
    ]

    def sample_items(cats: np.ndarray, periods: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items drawn by popularity inside each category, with the weights of their week."""
        out = np.empty(len(cats), dtype=np.int64)
        for p in range(N_PERIODS):
            sel = np.flatnonzero(periods == p)
            if not len(sel):
                continue
            cum, c = cum_by_period[p], cats[sel]
            lo, hi = cum[cat_lo[c]], cum[cat_hi[c]]
            idx = np.searchsorted(cum, lo + u[sel] * (hi - lo), side="right") - 1
            idx = np.clip(idx, cat_lo[c], np.maximum(cat_hi[c] - 1, cat_lo[c]))
            out[sel] = order[idx]
        return out

    view_item = sample_items(view_cat, period, rng_view.random(n_views))
    # repeat views of the previous item in the session
    repeat = (rng_view.random(n_views) < REPEAT_VIEW_PROB) & (pos > 0) & (not never)
    for _ in range(3):  # chains of repeats resolve in a few passes
        view_item[1:][repeat[1:]] = view_item[:-1][repeat[1:]]
    # returning sessions open on the first item of the visitor's previous session
    first_view = np.cumsum(sess_len) - sess_len
    returning = ~first_of_visitor & (rng_view.random(n_sess) < REVISIT_PROB) & (not never)
    prev_first_item = np.empty(n_sess, dtype=np.int64)
    prev_first_item[1:] = view_item[first_view[:-1]]
    view_item[first_view[returning]] = prev_first_item[returning]
    is_revisit = np.zeros(n_views, dtype=bool)
    is_revisit[first_view[returning]] = True
    # the item each visitor's last session opened on (sessions are sorted by visitor, then time)
    last_session = np.flatnonzero(np.append(sess_vis[1:] != sess_vis[:-1], True))
    visitor_last_item = item_ids[view_item[first_view[last_session]]]
    if never:  # a visitor's later views of an item they already met are not made
        meeting = sess_vis[view_sess].astype(np.int64) * n_items + view_item
        by_time = np.argsort(view_t, kind="stable")
        _, first_meeting = np.unique(meeting[by_time], return_index=True)
        kept = np.sort(by_time[first_meeting])
        view_sess, view_t, view_cat = view_sess[kept], view_t[kept], view_cat[kept]
        view_item, period, is_revisit = view_item[kept], period[kept], is_revisit[kept]
        n_views = len(kept)
    say(f"{n_views:,} views ({time.perf_counter() - t0:.1f}s)")

    # --- funnel -----------------------------------------------------------------------------
    v_vis = sess_vis[view_sess]
    available_now = ~unavailable[period, view_item]
    cart_logit = CART_QUALITY * quality[view_item] + propensity[v_vis] + CART_REVISIT * is_revisit
    carted, cart_bias = _calibrated_bernoulli(rng_funnel, cart_logit, CART_RATE, available_now)
    cart_idx = np.flatnonzero(carted)
    cart_t = view_t[cart_idx] + rng_funnel.exponential(40_000.0, len(cart_idx)).astype(np.int64)
    buy_logit = (
        BUY_QUALITY * quality[view_item[cart_idx]] + BUY_PROPENSITY * propensity[v_vis[cart_idx]]
    )
    bought, purchase_bias = _calibrated_bernoulli(rng_funnel, buy_logit, PURCHASE_RATE)
    buy_idx = cart_idx[bought]
    # a transaction groups the session's purchased items plus, now and then, more items of the
    # session's category that went to the cart on the way to checkout
    tx_sessions = np.unique(view_sess[buy_idx])
    n_extra = rng_funnel.geometric(EXTRA_ITEM_P, len(tx_sessions)) - 1
    if never:  # items added at checkout could be items the visitor met before
        n_extra[:] = 0
    extra_sess = np.repeat(tx_sessions, n_extra)
    extra_period = np.minimum(sess_start[extra_sess] // WEEK_MS, N_PERIODS - 1)
    extra_item = sample_items(
        np.where(cat_weight[sess_cat[extra_sess]] > 0, sess_cat[extra_sess], view_cat[0]),
        extra_period,
        rng_funnel.random(len(extra_sess)),
    )
    last_view = np.zeros(n_sess, dtype=np.int64)
    np.maximum.at(last_view, view_sess, view_t)
    extra_t = last_view[extra_sess] + rng_funnel.integers(5_000, 120_000, len(extra_sess))
    cart_sess = np.concatenate([view_sess[cart_idx], extra_sess])
    cart_item = np.concatenate([view_item[cart_idx], extra_item])
    cart_t = np.concatenate([cart_t, extra_t])
    buy_sess = np.concatenate([view_sess[buy_idx], extra_sess])
    buy_item = np.concatenate([view_item[buy_idx], extra_item])
    # one transaction per session: every purchased item of the session shares its id and time
    last_cart = np.zeros(n_sess, dtype=np.int64)
    np.maximum.at(last_cart, cart_sess, cart_t)
    tx_time = last_cart[tx_sessions] + 60_000 + rng_funnel.integers(0, 300_000, len(tx_sessions))
    tx_order = np.argsort(tx_time, kind="stable")
    tx_id_of_session = np.full(n_sess, -1, dtype=np.int64)
    tx_id_of_session[tx_sessions[tx_order]] = np.arange(len(tx_sessions))
    tx_time_of_session = np.zeros(n_sess, dtype=np.int64)
    tx_time_of_session[tx_sessions] = tx_time
    say(
        f"{len(cart_sess):,} add-to-carts, {len(buy_sess):,} purchased items in "
        f"{len(tx_sessions):,} transactions ({time.perf_counter() - t0:.1f}s)"
    )

    # --- events.csv -------------------------------------------------------------------------
    ts = np.concatenate([view_t, cart_t, tx_time_of_session[buy_sess]]) + START_MS
    visitor = visitor_ids[sess_vis[np.concatenate([view_sess, cart_sess, buy_sess])]]
    kind = np.concatenate(
        [
            np.zeros(n_views, np.int8),
            np.ones(len(cart_sess), np.int8),
            np.full(len(buy_sess), 2, np.int8),
        ]
    )
    item = item_ids[np.concatenate([view_item, cart_item, buy_item])]
    txid = np.concatenate(
        [np.full(n_views + len(cart_sess), -1, np.int64), tx_id_of_session[buy_sess]]
    )
    ev_order = np.lexsort((item, kind, visitor, ts))
    names = pa.array(["view", "addtocart", "transaction"])
    events = pa.table(
        {
            "timestamp": pa.array(ts[ev_order]),
            "visitorid": pa.array(visitor[ev_order]),
            "event": pc.take(names, pa.array(kind[ev_order])),
            "itemid": pa.array(item[ev_order]),
            "transactionid": pa.array(txid[ev_order], mask=txid[ev_order] < 0),
        }
    )
    writer = _Writer(out_dir / "events.csv", EVENTS_HEADER, events.schema)
    writer.write(events)
    writer.close()
    say(f"events.csv: {events.num_rows:,} rows ({time.perf_counter() - t0:.1f}s)")

    # --- item_properties_part{1,2}.csv ------------------------------------------------------
    prop_rows, price_last = _write_properties(
        out_dir,
        scale,
        rng_props,
        rng_values,
        item_ids=item_ids,
        has_properties=~no_properties,
        category=cat_ids[item_cat],
        moved_category=cat_ids[new_cat],
        moved_at=moved_at,
        unavailable_from=unavailable_from,
        price=price,
    )
    say(f"item properties: {prop_rows:,} rows ({time.perf_counter() - t0:.1f}s)")

    # --- latent.npz: the state behind the data, for the simulator (draws no random number) ---
    meta = {
        "format_version": LATENT_FORMAT_VERSION,
        "scale": scale_name,
        **({"scale_factor": scale_factor} if scale_factor != 1.0 else {}),
        "seed": seed,
        "revisits": revisits,
        "cart_bias": cart_bias,
        "purchase_bias": purchase_bias,
        "n_transaction_ids": len(tx_sessions),
        "current_period": N_PERIODS - 1,
        "constants": latent_constants(),
    }
    with open(out_dir / LATENT_FILE, "wb") as fh:
        np.savez_compressed(
            fh,
            meta=np.array(json.dumps(meta, sort_keys=True)),
            visitor_id=visitor_ids,
            visitor_primary=cat_ids[primary].astype(np.int32),
            visitor_secondary=cat_ids[secondary].astype(np.int32),
            visitor_propensity=propensity.astype(np.float32),
            visitor_loyal=loyal,
            visitor_sessions=n_sessions.astype(np.int32),
            visitor_last_item=visitor_last_item,
            item_id=item_ids,
            item_category=cat_ids[item_cat].astype(np.int32),
            item_moved_category=np.where(moved_at < N_SNAPSHOTS, cat_ids[new_cat], -1).astype(
                np.int32
            ),
            item_moved_at=moved_at.astype(np.int8),
            item_base_weight=base_weight.astype(np.float32),
            item_trend=trend.astype(np.float32),
            item_quality=quality.astype(np.float32),
            item_unavailable_from=unavailable_from.astype(np.int8),
            item_price=price,
            item_price_last=price_last,
            item_has_properties=~no_properties,
            category_id=cat_ids.astype(np.int32),
            category_parent=np.where(cat_parent >= 0, cat_ids[cat_parent], -1).astype(np.int32),
            category_weight=cat_weight.astype(np.float32),
        )
    say(f"{LATENT_FILE}: the latent state ({time.perf_counter() - t0:.1f}s)")

    items_with_events = len(np.unique(np.concatenate([view_item, cart_item])))
    visitor_events = np.bincount(
        sess_vis[np.concatenate([view_sess, cart_sess, buy_sess])], minlength=n_vis
    )
    return {
        "events": int(events.num_rows),
        "views": int(n_views),
        "addtocarts": len(cart_sess),
        "transactions": len(buy_sess),
        "transaction_ids": len(tx_sessions),
        "visitors": int(n_vis),
        "items_with_events": int(items_with_events),
        "property_rows": int(prop_rows),
        "items_with_properties": int((~no_properties).sum()),
        "categories": int(n_cat),
        "days": N_DAYS,
        "single_event_visitor_share": float((visitor_events == 1).mean()),
        "scale_factor": scale_factor,
    }


def _write_properties(
    out_dir: Path,
    scale: Scale,
    rng: np.random.Generator,
    rng_values: np.random.Generator,
    *,
    item_ids: np.ndarray,
    has_properties: np.ndarray,
    category: np.ndarray,
    moved_category: np.ndarray,
    moved_at: np.ndarray,
    unavailable_from: np.ndarray,
    price: np.ndarray,
) -> tuple[int, np.ndarray]:
    """Weekly property snapshots: a row when a value is first seen and whenever it changes.
    The row count and each item's last price."""
    items = np.flatnonzero(has_properties)
    # hashed properties: ids as strings, popular ones shared by many items
    n_prop = scale.n_hashed_properties
    prop_names = rng.choice(np.arange(1, 1_200), n_prop, replace=False)
    prop_names = prop_names[prop_names != 790]
    n_prop = len(prop_names)
    prop_popularity = 1.0 / np.arange(1, n_prop + 1) ** 0.9
    change_rate = rng.beta(0.6, 4.0, n_prop)  # weekly probability that a value changes
    per_item = rng.poisson(scale.hashed_per_item, len(items)) + 1
    pair_item = np.repeat(items, per_item)
    pair_prop = rng.choice(n_prop, len(pair_item), p=prop_popularity / prop_popularity.sum())
    pairs = np.unique(pair_item * n_prop + pair_prop)  # distinct (item, property) pairs
    pair_item, pair_prop = pairs // n_prop, pairs % n_prop

    # a vocabulary of values in the RetailRocket form: hashed words and n-prefixed numbers
    n_vocab = 20_000 if scale.n_items > 10_000 else 2_000
    tokens = []
    for _ in range(n_vocab):
        k = int(rng_values.integers(1, 4))
        parts = [
            f"n{rng_values.integers(1, 100_000) * 12}.000"
            if rng_values.random() < 0.3
            else str(int(rng_values.integers(1, 1_000_000)))
            for _ in range(k)
        ]
        tokens.append(" ".join(parts))
    vocab = pa.array(tokens)
    prop_name_arr = pc.cast(pa.array(prop_names.astype(np.int64)), pa.string())

    schema = pa.schema(
        [
            ("timestamp", pa.int64()),
            ("itemid", pa.int64()),
            ("property", pa.string()),
            ("value", pa.string()),
        ]
    )
    price_now = price.copy()
    weeks: list[pa.Table] = []
    for week in range(N_SNAPSHOTS):
        ts = FIRST_SNAPSHOT_MS + week * WEEK_MS
        frames = []
        # categoryid: first snapshot, and the week an item moves
        sel = items if week == 0 else items[moved_at[items] == week]
        cat_now = np.where(moved_at[sel] <= week, moved_category[sel], category[sel])
        frames.append((sel, "categoryid", pc.cast(pa.array(cat_now), pa.string())))
        # available: first snapshot, and the week it goes out of stock
        sel = items if week == 0 else items[unavailable_from[items] == week]
        avail = (unavailable_from[sel] > week).astype(np.int64)
        frames.append((sel, "available", pc.cast(pa.array(avail), pa.string())))
        # 790, the price: first snapshot, then changes now and then
        if week == 0:
            sel = items
        else:
            sel = items[rng.random(len(items)) < 0.3]
            price_now[sel] = np.maximum(
                12, (price_now[sel] * rng.uniform(0.85, 1.15, len(sel))).astype(np.int64) // 12 * 12
            )
        values = pc.binary_join_element_wise(
            "n", pc.cast(pa.array(price_now[sel]), pa.string()), ".000", ""
        )
        frames.append((sel, "790", values))
        # hashed properties: first snapshot, then at their weekly change rate
        if week == 0:
            psel = np.arange(len(pair_item))
        else:
            psel = np.flatnonzero(rng.random(len(pair_item)) < change_rate[pair_prop])
        value_idx = rng_values.integers(0, n_vocab, len(psel))
        hashed = pa.table(
            {
                "timestamp": pa.array(np.full(len(psel), ts, dtype=np.int64)),
                "itemid": pa.array(item_ids[pair_item[psel]]),
                "property": pc.take(prop_name_arr, pa.array(pair_prop[psel])),
                "value": pc.take(vocab, pa.array(value_idx)),
            }
        )
        tables = [
            pa.table(
                {
                    "timestamp": pa.array(np.full(len(sel_items), ts, dtype=np.int64)),
                    "itemid": pa.array(item_ids[sel_items]),
                    "property": pa.array([name] * len(sel_items), pa.string()),
                    "value": vals,
                }
            )
            for sel_items, name, vals in frames
        ]
        weeks.append(pa.concat_tables([*tables, hashed]))
    # RetailRocket splits the properties into two files of roughly equal size
    everything = pa.concat_tables(weeks)
    half = everything.num_rows // 2
    for name, part in (("part1", everything.slice(0, half)), ("part2", everything.slice(half))):
        writer = _Writer(out_dir / f"item_properties_{name}.csv", PROPERTIES_HEADER, schema)
        writer.write(part)
        writer.close()
    return int(everything.num_rows), price_now
