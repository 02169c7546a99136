"""The closed loop in the warehouse: attribution of events to impressions, and the experiment
statistics, on a lake written by hand.

The lake's raw/ Parquet is written here with pyarrow (as `recsys ingest` would write it, in the
contract's schema), so that each attribution rule has an event made for it, and thousands of
visitors in two arms give the statistics something to be compared with scipy on. One dbt build
serves the whole module.

Tolerances: where the SQL computes the same formula as the reference (estimates, lifts,
standard errors, intervals, chi-squared statistics, the continuity-corrected sign test) they
are tight (1e-9 relative, or 1e-6 where erfc's 1.5e-7 enters); where the SQL uses the normal
distribution for what scipy computes exactly (Welch's t, the binomial test, chi-squared beyond 2
degrees of freedom by Wilson-Hilferty) they are looser and say why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from recsys.ingest import IMPRESSIONS_SCHEMA  # the raw table's contract
from recsys.settings import Settings
from recsys.warehouse import build

pytestmark = pytest.mark.integration

CUTOFF = datetime(2015, 6, 1)
T0 = datetime(2015, 5, 10, 10, 0)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)

# an events file from before `impression_id` existed (lakes ingested then still build)
OLD_EVENTS_SCHEMA = pa.schema(
    [
        ("timestamp", pa.int64()),
        ("visitorid", pa.int64()),
        ("event", pa.string()),
        ("itemid", pa.int64()),
        ("transactionid", pa.int64()),
    ]
)
EVENTS_SCHEMA = OLD_EVENTS_SCHEMA.append(pa.field("impression_id", pa.string()))

# experiment_weights as the experiments file would declare them: `srm` is split 60/40 but
# declared 50/50 (to be flagged); `srm_ok` is split 60/40 and declared so
WEIGHTS = {
    "srm": {"control": 50, "treatment": 50},
    "srm_ok": {"control": 60, "treatment": 40},
}
SPLITS = {  # visitors per variant of the sample-ratio experiments
    "srm": {"control": 600, "treatment": 400},
    "srm_ok": {"control": 600, "treatment": 400},
    "three": {"a": 340, "b": 300, "c": 360},
    "four": {"a": 250, "b": 280, "c": 240, "d": 230},
}
ITEM_PRICE = 10.0  # every item of the statistics' visitors


def ms(at: datetime) -> int:
    return int(at.replace(tzinfo=UTC).timestamp() * 1000)


@dataclass
class Lake:
    """Rows of the raw tables, written to Parquet at the end."""

    impressions: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # the new files, with impression_id
    old_events: list[dict] = field(default_factory=list)  # a file from before the column
    properties: list[dict] = field(default_factory=list)
    n_impressions: int = 0

    def impression(
        self,
        visitor: int | None,
        at: datetime,
        items: list[int],
        *,
        experiment: str | None = None,
        variant: str | None = None,
        policy: str = "ranker",
        teams: list[str] | None = None,
    ) -> str:
        self.n_impressions += 1
        impression_id = f"{self.n_impressions:032x}"
        self.impressions.append(
            {
                "impression_id": impression_id,
                "served_at": ms(at),
                "visitor_id": visitor,
                "route": "visitor",
                "strategy": "personalized",
                "policy": policy,
                "experiment": experiment,
                "variant": variant,
                "snapshot_version": "20150501T000000Z-abc",
                "model_version": "ranker-1",
                "anchor_item_id": None,
                "items": [
                    {
                        "item_id": item,
                        "rank": rank,
                        "source": "ranker",
                        "team": teams[rank - 1] if teams else None,
                    }
                    for rank, item in enumerate(items, start=1)
                ],
            }
        )
        return impression_id

    def event(
        self,
        visitor: int,
        at: datetime,
        kind: str,
        item: int,
        impression_id: str | None = None,
        *,
        old_file: bool = False,
    ) -> None:
        row = {
            "timestamp": ms(at),
            "visitorid": visitor,
            "event": kind,
            "itemid": item,
            "transactionid": (len(self.events) + len(self.old_events) + 1)
            if kind == "transaction"
            else None,
        }
        if old_file:
            self.old_events.append(row)
        else:
            self.events.append({**row, "impression_id": impression_id})

    def price(self, item: int, at: datetime, value: float) -> None:
        self.properties.append(
            {"timestamp": ms(at), "itemid": item, "property": "790", "value": f"n{value:.3f}"}
        )

    def write(self, root: Path) -> None:
        def put(rows: list[dict], schema: pa.Schema, rel: str) -> None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / rel)

        put(self.old_events, OLD_EVENTS_SCHEMA, "raw/events/events.parquet")
        put(self.events, EVENTS_SCHEMA, "raw/events/landed-20150601T000000000000Z-a.parquet")
        put(self.impressions, IMPRESSIONS_SCHEMA, "raw/impressions/landed-a.parquet")
        properties = pa.schema(
            [
                ("timestamp", pa.int64()),
                ("itemid", pa.int64()),
                ("property", pa.string()),
                ("value", pa.string()),
            ]
        )
        put(self.properties, properties, "raw/item_properties/item_properties.parquet")
        tree = pa.schema([("categoryid", pa.int64()), ("parentid", pa.int64())])
        put([{"categoryid": 1, "parentid": None}], tree, "raw/category_tree/category_tree.parquet")


@dataclass
class Arm:
    """Per visitor of one variant, what the lake was made to hold: the reference data."""

    items: list[int] = field(default_factory=list)
    views: list[int] = field(default_factory=list)
    purchases: list[int] = field(default_factory=list)

    @property
    def converted(self) -> np.ndarray:
        return (np.array(self.purchases) > 0).astype(float)

    @property
    def revenue(self) -> np.ndarray:
        return np.array(self.purchases, dtype=float) * ITEM_PRICE


@dataclass
class Loop:
    settings: Settings
    ids: dict[str, str]
    arms: dict[str, Arm]
    preferences: dict[str, int]

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.settings.warehouse_path), read_only=True) as con:
            return con.execute(sql).fetchall()

    def outcome(self, name: str, item: int) -> dict:
        rows = self.query(
            "select is_viewed, first_viewed_at, is_added_to_cart, is_purchased, "
            "is_attributed_by_impression_id, revenue from recommendation_outcomes "
            f"where impression_id = '{self.ids[name]}' and item_id = {item}"
        )
        assert len(rows) == 1, (name, item, rows)
        keys = ("viewed", "viewed_at", "carted", "purchased", "by_id", "revenue")
        return dict(zip(keys, rows[0], strict=True))


def hand_made_cases(lake: Lake) -> dict[str, str]:
    """One visitor per rule (ids 1..7). Returns the impression ids by name."""
    ids = {}
    # 1: repeated views count once; first touch: a view in both A1's and A2's windows is A1's
    ids["A1"] = lake.impression(1, T0, [10, 11])
    ids["A2"] = lake.impression(1, T0 + 20 * MINUTE, [10])
    lake.event(1, T0 + 5 * MINUTE, "view", 10, old_file=True)
    lake.event(1, T0 + 10 * MINUTE, "view", 10, old_file=True)
    lake.event(1, T0 + 25 * MINUTE, "view", 10)
    lake.event(1, T0 + 31 * MINUTE, "view", 11)  # out of the 30-minute window
    # an anonymous impression of the same item: never gets an outcome
    ids["F1"] = lake.impression(None, T0, [10])
    # an impression after the cutoff: not in the mart
    ids["G1"] = lake.impression(1, CUTOFF + HOUR, [10])
    # 2: an event naming its impression wins over the earlier one in the window, and counts
    # with no window at all (a cart 3 hours later)
    ids["B1"] = lake.impression(2, T0, [20])
    ids["B2"] = lake.impression(2, T0 + 10 * MINUTE, [20])
    lake.event(2, T0 + 15 * MINUTE, "view", 20, ids["B2"])
    lake.event(2, T0 + 3 * HOUR, "addtocart", 20, ids["B1"])
    # 3: events before the impression never count, even naming it
    lake.event(3, T0 - MINUTE, "view", 30)
    ids["C1"] = lake.impression(3, T0, [30])
    lake.event(3, T0 - 30 * timedelta(seconds=1), "view", 30, ids["C1"])
    # 4: naming another visitor's impression, or one without the item: the window decides
    ids["D1"] = lake.impression(4, T0, [40])
    lake.event(4, T0 + 5 * MINUTE, "view", 40, ids["B1"])
    ids["D2"] = lake.impression(4, T0 + HOUR, [41])
    ids["D3"] = lake.impression(4, T0 + 2 * HOUR, [43, 44])
    lake.event(4, T0 + 2 * HOUR + 2 * MINUTE, "view", 43, ids["D2"])
    # 5: a purchase within 24 hours, priced as of the purchase; one after 25 hours is not
    ids["E1"] = lake.impression(5, T0, [50, 51])
    lake.price(50, T0 - timedelta(days=7), 100.0)
    lake.price(50, T0 + 10 * HOUR, 120.0)
    lake.price(50, T0 + 30 * HOUR, 150.0)
    lake.event(5, T0 + 10 * MINUTE, "view", 50)
    lake.event(5, T0 + 20 * HOUR + MINUTE, "transaction", 50)
    lake.event(5, T0 + 25 * HOUR, "transaction", 51)
    # 6: the same click with and without an impression id: two events, counted once
    ids["H1"] = lake.impression(6, T0, [60])
    lake.event(6, T0 + MINUTE, "view", 60, ids["H1"])
    lake.event(6, T0 + MINUTE, "view", 60, old_file=True)
    return ids


def two_arms(lake: Lake, rng: np.random.Generator) -> dict[str, Arm]:
    """Experiment `ab`: visitors 10_000.. in control and treatment, 1..3 impressions of 4
    items each, two days apart (so no window reaches another impression); the treatment's
    items are viewed and bought more often."""
    arms = {"control": Arm(), "treatment": Arm()}
    rates = {"control": (0.10, 0.05), "treatment": (0.125, 0.065)}  # P(view), P(buy | view)
    for i in range(3000):
        visitor = 10_000 + i
        variant = "control" if rng.random() < 0.5 else "treatment"
        p_view, p_buy = rates[variant]
        n_items = n_views = n_purchases = 0
        start = T0 + timedelta(minutes=int(rng.integers(0, 60 * 24 * 10)))
        for k in range(int(rng.integers(1, 4))):
            served = start + k * timedelta(days=2)
            items = [int(x) for x in rng.choice(100, size=4, replace=False) + 1000]
            impression_id = lake.impression(
                visitor, served, items, experiment="ab", variant=variant
            )
            for item in items:
                n_items += 1
                if rng.random() < p_view:
                    n_views += 1
                    named = impression_id if rng.random() < 0.5 else None
                    lake.event(visitor, served + MINUTE, "view", item, named)
                    if rng.random() < p_buy:
                        n_purchases += 1
                        lake.event(visitor, served + 2 * MINUTE, "transaction", item, named)
        arm = arms[variant]
        arm.items.append(n_items)
        arm.views.append(n_views)
        arm.purchases.append(n_purchases)
    for item in range(1000, 1100):
        lake.price(item, T0 - timedelta(days=30), ITEM_PRICE)
    return arms


def sample_ratio_experiments(lake: Lake) -> None:
    visitor = 20_000
    for experiment, split in SPLITS.items():
        for variant, n in split.items():
            for _ in range(n):
                visitor += 1
                lake.impression(visitor, T0, [2000], experiment=experiment, variant=variant)


def interleaving(lake: Lake, rng: np.random.Generator) -> dict[str, int]:
    """Experiment `il`: 400 visitors get interleave:ranker,als answers (teams alternating);
    the ranker's items are viewed more. Returns who preferred whom (the reference)."""
    counts = {"ranker": 0, "als": 0, "ties": 0, "none": 0}
    for i in range(400):
        visitor = 30_000 + i
        served = T0 + timedelta(hours=i)
        teams = ["ranker", "als", "ranker", "als"] if i % 2 else ["als", "ranker", "als", "ranker"]
        items = [3000 + 4 * (i % 10) + j for j in range(4)]
        lake.impression(
            visitor,
            served,
            items,
            experiment="il",
            variant="mixed",
            policy="interleave:ranker,als",
            teams=teams,
        )
        credit = {"ranker": 0, "als": 0}
        for item, team in zip(items, teams, strict=True):
            if rng.random() < (0.35 if team == "ranker" else 0.25):
                credit[team] += 1
                lake.event(visitor, served + MINUTE, "view", item)
        if credit["ranker"] == credit["als"]:
            counts["ties" if credit["ranker"] else "none"] += 1
        else:
            counts[max(credit, key=lambda team: credit[team])] += 1
    return counts


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    data_dir = tmp_path_factory.mktemp("closed_loop") / "data"
    settings = Settings(recsys_data_dir=data_dir, recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    rng = np.random.default_rng(13)
    lake = Lake()
    ids = hand_made_cases(lake)
    arms = two_arms(lake, rng)
    sample_ratio_experiments(lake)
    preferences = interleaving(lake, rng)
    lake.write(data_dir / "lake")
    build(
        settings,
        cutoff_at=CUTOFF.isoformat(sep=" "),
        extra_vars={"experiment_weights": WEIGHTS},
        echo=False,
    )
    yield Loop(settings, ids, arms, preferences)


# -- attribution ------------------------------------------------------------------------------


def test_views_in_the_window_count_once_for_the_first_impression(loop: Loop) -> None:
    a1 = loop.outcome("A1", 10)
    assert a1["viewed"] and not a1["by_id"]
    assert a1["viewed_at"] == T0 + 5 * MINUTE  # the first of three views, counted once
    # the view at +25 min is in A2's window too, but A1 was first: counted for A1 only
    assert not loop.outcome("A2", 10)["viewed"]
    # 31 minutes after the impression: out of the view window
    assert not loop.outcome("A1", 11)["viewed"]


def test_anonymous_impressions_get_nothing_and_later_ones_are_not_there(loop: Loop) -> None:
    assert not loop.outcome("F1", 10)["viewed"]
    assert loop.query(
        f"select count(*) from recommendation_outcomes where impression_id = '{loop.ids['G1']}'"
    ) == [(0,)]


def test_an_event_naming_its_impression_is_attributed_to_it(loop: Loop) -> None:
    b1, b2 = loop.outcome("B1", 20), loop.outcome("B2", 20)
    # the view names B2: B2's, although B1 is earlier and in the window
    assert b2["viewed"] and b2["by_id"] and not b1["viewed"]
    # the cart names B1, 3 hours later: out of every window, but named
    assert b1["carted"] and b1["by_id"] and not b2["carted"]


def test_an_event_before_the_impression_never_counts(loop: Loop) -> None:
    assert not loop.outcome("C1", 30)["viewed"]


def test_naming_someone_elses_impression_or_one_without_the_item_falls_back(loop: Loop) -> None:
    d1 = loop.outcome("D1", 40)
    assert d1["viewed"] and not d1["by_id"]
    d3 = loop.outcome("D3", 43)
    assert d3["viewed"] and not d3["by_id"]
    assert not loop.outcome("D3", 44)["viewed"]
    # and the impressions named wrongly got nothing from it
    assert not loop.outcome("B1", 20)["viewed"]
    assert not loop.outcome("D2", 41)["viewed"]


def test_a_purchase_in_the_window_brings_the_price_as_of_the_purchase(loop: Loop) -> None:
    e1 = loop.outcome("E1", 50)
    assert e1["viewed"] and e1["purchased"]
    assert e1["revenue"] == 120.0  # not 100 (older) nor 150 (after the purchase)
    assert not loop.outcome("E1", 51)["purchased"]  # 25 hours after the impression


def test_an_event_with_and_without_an_impression_id_are_two_events(loop: Loop) -> None:
    # both survive with distinct event ids (the build's unique test passed), one outcome
    assert loop.query("select count(distinct event_id) from events where visitor_id = 6") == [(2,)]
    assert loop.outcome("H1", 60)["viewed"]


def test_no_event_is_counted_for_two_impressions(loop: Loop) -> None:
    # every view attributed is one event; the hand-made visitors' views: A1/10, B2/20, D1/40,
    # D3/43, E1/50, H1/60 (C1's are before it, A1/11's out of its window)
    rows = loop.query(
        "select visitor_id, count(*) from recommendation_outcomes "
        "where is_viewed and visitor_id < 10 group by visitor_id order by visitor_id"
    )
    assert rows == [(1, 1), (2, 1), (4, 2), (5, 1), (6, 1)]


def test_business_metrics_add_up(loop: Loop) -> None:
    (row,) = loop.query(
        "select sum(n_impressed_items), sum(n_attributed_views), sum(attributed_revenue) "
        "from business_metrics_daily"
    )
    (outcomes,) = loop.query(
        "select count(*), count(*) filter (where is_viewed), sum(revenue) "
        "from recommendation_outcomes"
    )
    assert row == pytest.approx(outcomes)
    # the daily breakdown adds up to the same
    (daily,) = loop.query(
        "select sum(n_impressed_items), sum(n_attributed_views), sum(attributed_revenue) "
        "from recommendation_metrics_daily"
    )
    assert daily == pytest.approx(outcomes)
    # site-wide revenue: every purchase at or before the cutoff with its price as of then
    (revenue,) = loop.query(
        "select sum(revenue), sum(n_purchased_items), sum(n_priced_purchased_items) "
        "from business_metrics_daily"
    )
    bought = sum(sum(arm.purchases) for arm in loop.arms.values())
    assert revenue == pytest.approx((bought * ITEM_PRICE + 120.0, bought + 2, bought + 1))


# -- statistics against scipy -----------------------------------------------------------------


def result(loop: Loop, experiment: str, variant: str, metric: str) -> dict:
    with duckdb.connect(str(loop.settings.warehouse_path), read_only=True) as con:
        cursor = con.execute(
            "select * from experiment_results where experiment = ? and variant = ? and metric = ?",
            [experiment, variant, metric],
        )
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    assert len(rows) == 1
    return dict(zip(names, rows[0], strict=True))


Z = stats.norm.ppf(0.975)


@pytest.mark.parametrize("metric", ["conversion_rate", "revenue_per_visitor"])
def test_mean_metrics_match_welch(loop: Loop, metric: str) -> None:
    def values(arm: Arm) -> np.ndarray:
        return arm.converted if metric == "conversion_rate" else arm.revenue

    control, treatment = values(loop.arms["control"]), values(loop.arms["treatment"])
    row = result(loop, "ab", "treatment", metric)
    assert row["control_variant"] == "control" and not row["is_control"]
    assert row["n_visitors"] == len(treatment)
    diff = treatment.mean() - control.mean()
    se = math.sqrt(treatment.var(ddof=1) / len(treatment) + control.var(ddof=1) / len(control))
    assert row["estimate"] == pytest.approx(treatment.mean(), rel=1e-9)
    assert row["absolute_lift"] == pytest.approx(diff, rel=1e-9)
    assert row["absolute_lift_ci_low"] == pytest.approx(diff - Z * se, rel=1e-9)
    assert row["absolute_lift_ci_high"] == pytest.approx(diff + Z * se, rel=1e-9)
    welch = stats.ttest_ind(treatment, control, equal_var=False)
    assert row["z_statistic"] == pytest.approx(welch.statistic, rel=1e-9)
    # the normal distribution against Welch's t with ~3000 degrees of freedom: 1e-3 apart at
    # most (and within 1.5e-7 of the normal's own p-value)
    assert row["p_value"] == pytest.approx(welch.pvalue, abs=1e-3)
    assert row["p_value"] == pytest.approx(2 * stats.norm.sf(abs(welch.statistic)), abs=1e-6)
    # relative lift by the delta method, both means uncertain
    m_t, m_c = treatment.mean(), control.mean()
    v_t, v_c = treatment.var(ddof=1) / len(treatment), control.var(ddof=1) / len(control)
    rel_se = math.sqrt(v_t / m_c**2 + m_t**2 * v_c / m_c**4)
    assert row["relative_lift"] == pytest.approx(m_t / m_c - 1, rel=1e-9)
    assert row["relative_lift_ci_low"] == pytest.approx(m_t / m_c - 1 - Z * rel_se, rel=1e-9)


def test_ctr_is_a_ratio_of_sums_with_the_delta_method(loop: Loop) -> None:
    def ratio(arm: Arm) -> tuple[float, float]:
        views, items = np.array(arm.views, float), np.array(arm.items, float)
        r = views.sum() / items.sum()
        cov = np.cov(views, items, ddof=1)
        var = (cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / (len(items) * items.mean() ** 2)
        return r, var

    (r_t, v_t), (r_c, v_c) = ratio(loop.arms["treatment"]), ratio(loop.arms["control"])
    row = result(loop, "ab", "treatment", "ctr")
    assert row["estimate"] == pytest.approx(r_t, rel=1e-9)
    assert row["standard_error"] == pytest.approx(math.sqrt(v_t), rel=1e-9)
    assert row["absolute_lift"] == pytest.approx(r_t - r_c, rel=1e-9)
    z = (r_t - r_c) / math.sqrt(v_t + v_c)
    assert row["z_statistic"] == pytest.approx(z, rel=1e-9)
    assert row["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-6)
    # the treatment's items were viewed 25% more often: found, and significant
    assert row["p_value"] < 0.05 and row["absolute_lift_ci_low"] > 0
    control = result(loop, "ab", "control", "ctr")
    assert control["is_control"] and control["absolute_lift"] is None
    assert control["p_value"] is None


@pytest.mark.parametrize("experiment", list(SPLITS))
def test_sample_ratio_check_matches_chisquare(loop: Loop, experiment: str) -> None:
    split = SPLITS[experiment]
    observed = np.array(list(split.values()), float)
    weights = np.array([WEIGHTS.get(experiment, {}).get(v, 1) for v in split], float)
    expected = observed.sum() * weights / weights.sum()
    reference = stats.chisquare(observed, expected)
    row = result(loop, experiment, next(iter(split)), "ctr")
    assert row["sample_ratio_degrees_of_freedom"] == len(split) - 1
    assert row["sample_ratio_chi_squared"] == pytest.approx(
        reference.statistic, rel=1e-9, abs=1e-12
    )
    if len(split) <= 3:  # exact (erfc, exp) to erfc's 1.5e-7
        assert row["sample_ratio_p_value"] == pytest.approx(reference.pvalue, abs=1e-6)
    else:  # Wilson-Hilferty
        assert row["sample_ratio_p_value"] == pytest.approx(reference.pvalue, abs=5e-3)
    assert row["has_sample_ratio_mismatch"] == (reference.pvalue < 0.001)
    # the 60/40 split declared 50/50 is flagged; declared 60/40, it is not
    assert row["has_sample_ratio_mismatch"] == (experiment == "srm")


def test_interleaving_preferences_and_sign_test(loop: Loop) -> None:
    (row,) = loop.query(
        "select team_a, team_b, n_visitors, n_prefer_a, n_prefer_b, n_ties, sign_test_p_value "
        "from interleaving_results where experiment = 'il'"
    )
    team_a, team_b, n_visitors, prefer_a, prefer_b, ties, p_value = row
    counts = loop.preferences
    assert (team_a, team_b, n_visitors) == ("ranker", "als", 400)
    assert (prefer_a, prefer_b, ties) == (counts["ranker"], counts["als"], counts["ties"])
    n = prefer_a + prefer_b
    # the same formula (normal, continuity correction): tight
    z = max(abs(prefer_a - n / 2) - 0.5, 0) / (math.sqrt(n) / 2)
    assert p_value == pytest.approx(2 * stats.norm.sf(z), abs=1e-6)
    # against the exact binomial test: the approximation's error at n ~ 150
    assert p_value == pytest.approx(stats.binomtest(prefer_a, n, 0.5).pvalue, abs=0.01)
