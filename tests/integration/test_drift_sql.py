"""Data drift in the warehouse (dbt_project/models/monitoring/drift_*): PSI, KS and their
sample-size aware thresholds, on generated data and on reference builds written by hand.

One tiny build serves the module: its marts are the current build, and its export in the lake
(<lake>/features/<version>/) is copied into reference builds made for each case: an exact copy
(no drift), the copy with one feature shifted (only that one fails), a bootstrap resample at a
cutoff a week earlier (every statistic moves a little: each is recomputed here with numpy and
scipy from the same Parquet and tables), and two disjoint 200-row samples of each mart, one as
the reference and one written over the warehouse's marts in a copy of the data dir (same
distribution, small samples: PSI above the plain 0.1 threshold, yet no alarm; the same
samples with a real shift still fail).

Tolerances: PSI and KS are the same formulas here and in SQL, on the same values and the same
bin edges (numpy's linear quantiles = DuckDB's quantile_cont), so they agree to 1e-9. The PSI
noise floor uses Wilson-Hilferty's chi-squared quantile beyond 2 degrees of freedom: checked
against scipy.stats.chi2, never below it and at most 2% above (1.8% at 3 degrees).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy import stats

from recsys.ingest import ingest
from recsys.lake import Lake
from recsys.settings import Settings
from recsys.warehouse import BuildError, build, dbt_command

pytestmark = [pytest.mark.integration]

# the features and their marts, as macros/drift.sql lists them (name -> (kind, mart, column))
FEATURES: dict[str, tuple[str, str, str]] = {
    "category_id": ("categorical", "item_features", "category_id"),
    "root_category_id": ("categorical", "item_features", "root_category_id"),
    "is_available": ("categorical", "item_features", "is_available"),
    "price": ("numeric", "item_features", "price"),
    "item_views_7d": ("numeric", "item_features", "n_views_7d"),
    "item_views_30d": ("numeric", "item_features", "n_views_30d"),
    "item_views_all": ("numeric", "item_features", "n_views_all"),
    "item_carts_all": ("numeric", "item_features", "n_carts_all"),
    "item_purchases_all": ("numeric", "item_features", "n_purchases_all"),
    "item_cart_rate": ("numeric", "item_features", "cart_rate"),
    "item_purchase_rate": ("numeric", "item_features", "purchase_rate"),
    "item_trend_7d": ("numeric", "item_features", "trend_7d"),
    "item_popularity_score": ("numeric", "item_features", "popularity_score"),
    "item_days_since_last_event": ("numeric", "item_features", "days_since_last_event"),
    "visitor_events": ("numeric", "visitor_features", "n_events"),
    "visitor_sessions": ("numeric", "visitor_features", "n_sessions"),
    "visitor_distinct_items": ("numeric", "visitor_features", "n_distinct_items"),
    "visitor_carts": ("numeric", "visitor_features", "n_carts"),
    "visitor_purchases": ("numeric", "visitor_features", "n_purchases"),
    "visitor_recency_days": ("numeric", "visitor_features", "recency_days"),
    "visitor_tenure_days": ("numeric", "visitor_features", "tenure_days"),
    "visitor_top_category_share": ("numeric", "visitor_features", "top_category_share"),
    "visitor_features.top_category_id": ("categorical", "visitor_features", "top_category_id"),
    "pair_events": ("numeric", "interactions", "n_events"),
    "pair_weight": ("numeric", "interactions", "weight"),
    "days_since_item_interaction": ("numeric", "interactions", "last_interaction_at"),
    "interactions.n_views": ("numeric", "interactions", "n_views"),
    "interactions.n_carts": ("numeric", "interactions", "n_carts"),
    "interactions.n_purchases": ("numeric", "interactions", "n_purchases"),
    "category_events": ("numeric", "visitor_category_affinities", "n_events"),
    "category_affinity_share": ("numeric", "visitor_category_affinities", "affinity_share"),
    "category_affinity_score": ("numeric", "visitor_category_affinities", "affinity_score"),
    "days_since_category_event": ("numeric", "visitor_category_affinities", "last_event_at"),
    "visitor_category_affinities.n_carts": ("numeric", "visitor_category_affinities", "n_carts"),
}
# shrunk rates, watched over their build's global rate: {column: (events, views)}
PER_GLOBAL_RATE = {
    "cart_rate": ("n_carts_all", "n_views_all"),
    "purchase_rate": ("n_purchases_all", "n_views_all"),
}
# the feature marts and their keys (samples are drawn from rows in key order: reproducible)
MARTS = {
    "item_features": "item_id",
    "visitor_features": "visitor_id",
    "interactions": "visitor_id, item_id",
    "visitor_category_affinities": "visitor_id, category_id",
}
DRIFT_MODELS = (
    "drift_builds",
    "drift_feature_profiles",
    "drift_features",
    "drift_mix_shares",
    "drift_mixes",
    "drift_status",
)
# what the monitoring side reads: the columns, in order
COLUMNS = {
    "drift_features": [
        "feature", "kind", "source_mart", "source_column", "reference_version",
        "current_version", "n_reference", "n_current", "n_reference_non_null",
        "n_current_non_null", "n_bins", "psi", "ks", "psi_warn_at", "psi_fail_at",
        "ks_warn_at", "ks_fail_at", "status",
    ],
    "drift_mixes": [
        "dimension", "reference_version", "current_version", "reference_window_start_at",
        "reference_window_end_at", "current_window_start_at", "current_window_end_at",
        "n_reference", "n_current", "n_values", "psi", "psi_warn_at", "psi_fail_at", "status",
    ],
    "drift_status": [
        "reference_version", "current_version", "reference_cutoff_at", "current_cutoff_at",
        "status", "n_features", "n_mixes", "n_warn", "n_fail", "failing_names",
        "warning_names",
    ],
}  # fmt: skip
BINS, TOP_CATEGORIES, WINDOW_DAYS = 10, 20, 7  # the vars' defaults (dbt_project.yml)
PSI_WARN, PSI_FAIL, KS_WARN, KS_FAIL, ALPHA = 0.1, 0.25, 0.1, 0.2, 0.001
FLOOR = 1e-4  # drift_share_floor()
SMOOTHING = 20.0  # var rate_smoothing_views
SMALL = 200  # rows of each sample in the small-sample case


@dataclass
class Warehouse:
    settings: Settings
    version: str  # the current build's feature version
    cutoff: datetime

    @property
    def features_dir(self) -> Path:
        return self.settings.data_dir / "lake" / "features"

    def drift(self, reference: str | None) -> str:
        """Build the drift models (and their tests) against `reference`; dbt's output."""
        return dbt_command(
            self.settings,
            ["build", "--select", "drift_builds+"],
            extra_vars={"monitoring_reference_version": reference},
            echo=False,
        )

    def rows(self, sql: str) -> list[dict]:
        with duckdb.connect(str(self.settings.warehouse_path), read_only=True) as con:
            cursor = con.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def table(self, name: str, order_by: str = "all") -> pa.Table:
        with duckdb.connect(str(self.settings.warehouse_path), read_only=True) as con:
            return con.sql(f"select * from {name} order by {order_by}").to_arrow_table()

    def features(self) -> dict[str, dict]:
        return {row["feature"]: row for row in self.rows("select * from drift_features")}

    def mixes(self) -> dict[str, dict]:
        return {row["dimension"]: row for row in self.rows("select * from drift_mixes")}

    def status(self) -> dict:
        (row,) = self.rows("select * from drift_status")
        return row

    def reference(self, name: str, tables: dict[str, pa.Table]) -> str:
        """A reference build `name`: the current export, with `tables` written over it."""
        target = self.features_dir / name
        shutil.copytree(self.features_dir / self.version, target)
        for mart, table in tables.items():
            pq.write_table(table, target / f"{mart}.parquet")
        return name

    def exported(self, version: str, mart: str) -> pa.Table:
        path = self.features_dir / version / f"{mart}.parquet"
        keys = MARTS.get(mart, "all")
        return duckdb.sql(f"select * from read_parquet('{path}') order by {keys}").to_arrow_table()


def make_warehouse(raw: Path, data_dir: Path) -> Warehouse:
    settings = Settings(recsys_data_dir=data_dir, recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    ingest(raw, Lake.from_settings(settings))
    build(settings, echo=False)
    warehouse = Warehouse(settings, "", datetime.min)
    (row,) = warehouse.rows("select feature_version, cutoff_at from feature_builds")
    return Warehouse(settings, row["feature_version"], row["cutoff_at"])


@pytest.fixture(scope="module")
def warehouse(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    return make_warehouse(tiny_raw, tmp_path_factory.mktemp("drift") / "data")


# -- the statistics, computed here from the same data ------------------------------------------


def values(table: pa.Table, feature: str, cutoff: datetime) -> list:
    """A feature's values in a mart's rows: floats (nan for null) or text (None for null)."""
    kind, _, column = FEATURES[feature]
    data = table.column(column)
    if column in PER_GLOBAL_RATE:  # the rate over its build's global rate (its prior)
        prior = rate_prior(table, column)
        return [math.nan if v is None else v / prior for v in data.to_pylist()]
    if kind == "categorical":
        return [
            None if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            for v in data.to_pylist()
        ]
    if pa.types.is_timestamp(data.type):
        # days before the cutoff, as the SQL computes it: (epoch(cutoff) - epoch(ts)) / 86400
        micros = data.cast(pa.timestamp("us")).cast(pa.int64()).to_pylist()
        cutoff_seconds = (cutoff - datetime(1970, 1, 1)) / timedelta(microseconds=1) / 1e6
        return [math.nan if m is None else (cutoff_seconds - m / 1e6) / 86400.0 for m in micros]
    return [math.nan if v is None else float(v) for v in data.to_pylist()]


def rate_prior(table: pa.Table, column: str) -> float:
    """The prior a shrunk rate is shrunk towards: an item's rate without views nor events,
    else solved from the rates and counts, (rate * (views + s) - events) / s (the largest)."""
    events, views = PER_GLOBAL_RATE[column]
    rows = zip(*(table.column(c).to_pylist() for c in (column, events, views)), strict=True)
    rows = [(rate, e, v) for rate, e, v in rows if rate is not None]
    without_views = [rate for rate, e, v in rows if v == 0 and e == 0]
    if without_views:
        return max(without_views)
    return max((rate * (v + SMOOTHING) - e) / SMOOTHING for rate, e, v in rows)


def psi_of_shares(reference: np.ndarray, current: np.ndarray) -> float:
    r, c = np.maximum(reference, FLOOR), np.maximum(current, FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_shares(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, ...]:
    """Shares per bin (the reference's deduplicated quantile edges, bins (e_k, e_k+1], then
    the null bin) of both samples."""
    edges = np.unique(np.quantile(reference[~np.isnan(reference)], np.arange(1, BINS) / BINS))

    def shares(x: np.ndarray) -> np.ndarray:
        present = x[~np.isnan(x)]
        # searchsorted(..., 'left') = how many edges are below the value = its bin
        counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
        return np.append(counts, np.isnan(x).sum()) / len(x)

    return shares(reference), shares(current)


def categorical_shares(reference: list, current: list) -> tuple[np.ndarray, ...]:
    counts = Counter(v for v in reference if v is not None)
    top = sorted(counts, key=lambda v: (-counts[v], v))[:TOP_CATEGORIES]
    index = {v: i for i, v in enumerate(top)}

    def shares(xs: list) -> np.ndarray:
        bins = np.zeros(len(top) + 2)  # top categories, other, null
        for x in xs:
            bins[-1 if x is None else index.get(x, len(top))] += 1
        return bins / len(xs)

    return shares(reference), shares(current)


def expected(feature: str, reference: list, current: list) -> tuple[float, float | None]:
    """(PSI, KS) of a feature from its values in both builds."""
    if FEATURES[feature][0] == "categorical":
        return psi_of_shares(*categorical_shares(reference, current)), None
    ref, cur = np.array(reference), np.array(current)
    psi = psi_of_shares(*numeric_shares(ref, cur))
    ks = stats.ks_2samp(ref[~np.isnan(ref)], cur[~np.isnan(cur)]).statistic
    return psi, float(ks)


def mix_psi(events: pa.Table, reference_cutoff: datetime, current_cutoff: datetime) -> dict:
    """PSI of the event mix and the root-category mix between the two windows."""
    rows = events.select(["event_at", "event_type", "root_category_id"]).to_pylist()

    def window(cutoff: datetime) -> list[dict]:
        start = cutoff - timedelta(days=WINDOW_DAYS)
        return [r for r in rows if start < r["event_at"] <= cutoff]

    reference, current = window(reference_cutoff), window(current_cutoff)
    types = ["view", "addtocart", "transaction"]
    by_type = [Counter(r["event_type"] for r in w) for w in (reference, current)]
    result = {
        "event_mix": psi_of_shares(
            np.array([by_type[0][t] for t in types]) / len(reference),
            np.array([by_type[1][t] for t in types]) / len(current),
        )
    }
    by_root = [Counter(str(r["root_category_id"]) for r in w) for w in (reference, current)]
    top = sorted(by_root[0], key=lambda v: (-by_root[0][v], v))[:TOP_CATEGORIES]
    other = [v for v in set(by_root[0]) | set(by_root[1]) if v not in top]
    result["categories"] = psi_of_shares(
        np.array([by_root[0][v] for v in top] + [sum(by_root[0][v] for v in other)])
        / len(reference),
        np.array([by_root[1][v] for v in top] + [sum(by_root[1][v] for v in other)]) / len(current),
    )
    return result


def chi2_floor(n_bins: int, n: int, m: int) -> float:
    return float(stats.chi2.ppf(1 - ALPHA, max(n_bins - 1, 1))) * (1 / n + 1 / m)


def ks_floor(n: int, m: int) -> float:
    return math.sqrt(-math.log(ALPHA / 2) / 2) * math.sqrt((n + m) / (n * m))


# -- the tests --------------------------------------------------------------------------------


def test_without_a_reference_every_drift_model_is_empty(warehouse: Warehouse) -> None:
    warehouse.drift(None)
    for model in DRIFT_MODELS:
        assert warehouse.rows(f"select count(*) as n from {model}") == [{"n": 0}], model
    for model, columns in COLUMNS.items():
        found = warehouse.rows(
            "select column_name from information_schema.columns "
            f"where table_schema = 'main' and table_name = '{model}' order by ordinal_position"
        )
        assert [row["column_name"] for row in found] == columns, model


@pytest.mark.parametrize("version", ["../../etc", "..", "fv1/../../x", "a b"])
def test_a_reference_version_that_is_not_a_folder_name_is_refused(
    warehouse: Warehouse, version: str
) -> None:
    with pytest.raises(BuildError, match="monitoring_reference_version") as raised:
        warehouse.drift(version)
    assert "is not a feature version" in str(raised.value)


def test_a_reference_version_without_an_export_is_named(warehouse: Warehouse) -> None:
    with pytest.raises(BuildError, match=r"no export of that build at .*fv1_never_built"):
        warehouse.drift("fv1_never_built")


def test_a_copy_of_the_current_build_shows_no_drift(warehouse: Warehouse) -> None:
    reference = warehouse.reference("copy-of-current", {})
    warehouse.drift(reference)
    features = warehouse.features()
    assert set(features) == set(FEATURES)
    for name, row in features.items():
        assert row["status"] == "ok", row
        assert row["psi"] == pytest.approx(0, abs=1e-12), name
        assert row["ks"] in (None, 0.0), name
        assert (row["reference_version"], row["current_version"]) == (reference, warehouse.version)
        assert row["n_reference"] == row["n_current"] > 0
    mixes = warehouse.mixes()
    assert set(mixes) == {"event_mix", "categories"}
    for row in mixes.values():
        assert row["status"] == "ok" and row["psi"] == pytest.approx(0, abs=1e-12)
        assert row["n_reference"] == row["n_current"] > 0
        assert row["current_window_end_at"] == warehouse.cutoff
        assert row["current_window_start_at"] == warehouse.cutoff - timedelta(days=WINDOW_DAYS)
    status = warehouse.status()
    assert status["status"] == "ok"
    assert (status["n_features"], status["n_mixes"], status["n_warn"], status["n_fail"]) == (
        len(FEATURES), 2, 0, 0,
    )  # fmt: skip
    assert status["failing_names"] == status["warning_names"] == ""


def test_one_shifted_feature_fails_alone(warehouse: Warehouse) -> None:
    items = warehouse.exported(warehouse.version, "item_features")
    price = pc.multiply(items.column("price"), 2.0)
    shifted = items.set_column(items.schema.get_field_index("price"), "price", price)
    reference = warehouse.reference("price-doubled", {"item_features": shifted})
    output = warehouse.drift(reference)
    features = warehouse.features()
    assert features["price"]["status"] == "fail"
    assert features["price"]["psi"] > PSI_FAIL and features["price"]["ks"] > KS_FAIL
    assert {name for name, row in features.items() if row["status"] != "ok"} == {"price"}
    assert {row["status"] for row in warehouse.mixes().values()} == {"ok"}
    status = warehouse.status()
    assert (status["status"], status["n_fail"], status["n_warn"]) == ("fail", 1, 0)
    assert status["failing_names"] == "price"
    # and `dbt build` says so, as a warning
    assert any(
        "no_drift_status_drift_features_fail" in line and "WARN" in line.upper()
        for line in output.splitlines()
    ), output
    print(f"price doubled: psi {features['price']['psi']:.3f}, ks {features['price']['ks']:.3f}")


def test_psi_and_ks_agree_with_numpy_and_scipy(warehouse: Warehouse) -> None:
    """A bootstrap resample of every mart at a cutoff a week earlier: every feature and mix
    moves a little, and each statistic is recomputed here from the same data."""
    rng = np.random.default_rng(7)
    tables: dict[str, pa.Table] = {}
    for mart in MARTS:
        table = warehouse.exported(warehouse.version, mart)
        size = int(0.8 * table.num_rows)
        tables[mart] = table.take(pa.array(rng.integers(0, table.num_rows, size)))
    reference_cutoff = warehouse.cutoff - timedelta(days=WINDOW_DAYS)
    builds = warehouse.exported(warehouse.version, "feature_builds")
    cutoffs = pa.array([reference_cutoff], type=builds.schema.field("cutoff_at").type)
    tables["feature_builds"] = builds.set_column(
        builds.schema.get_field_index("cutoff_at"), "cutoff_at", cutoffs
    )
    reference = warehouse.reference("bootstrap-a-week-earlier", tables)
    warehouse.drift(reference)

    features = warehouse.features()
    current = {mart: warehouse.table(mart) for mart in MARTS}
    for name, (kind, mart, _) in FEATURES.items():
        ref_values = values(tables[mart], name, reference_cutoff)
        cur_values = values(current[mart], name, warehouse.cutoff)
        psi, ks = expected(name, ref_values, cur_values)
        row = features[name]
        assert row["kind"] == kind
        assert (row["n_reference"], row["n_current"]) == (len(ref_values), len(cur_values))
        assert row["psi"] == pytest.approx(psi, rel=1e-9, abs=1e-12), name
        if ks is None:
            assert row["ks"] is None, name
        else:
            assert row["ks"] == pytest.approx(ks, abs=1e-12), name
    moved = [name for name, row in features.items() if row["psi"] > 1e-3]
    assert len(moved) > len(FEATURES) / 2, moved  # a real comparison, not zeros

    mixes = warehouse.mixes()
    events = warehouse.table("events")
    for dimension, psi in mix_psi(events, reference_cutoff, warehouse.cutoff).items():
        assert mixes[dimension]["psi"] == pytest.approx(psi, rel=1e-9, abs=1e-12), dimension
        assert mixes[dimension]["reference_window_end_at"] == reference_cutoff
    assert mixes["categories"]["psi"] > 0 and mixes["event_mix"]["psi"] > 0


def test_thresholds_rise_above_sampling_noise_on_small_samples(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Two disjoint 200-row samples of each mart: one becomes the reference build, the other is
    written over the marts of a copy of the warehouse. One distribution, small samples: PSI
    above the plain 0.1 for several features, yet every status is ok. The same samples with
    price doubled in the reference: price fails."""
    settings = Settings(recsys_data_dir=tmp_path / "data", recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    shutil.copytree(warehouse.settings.data_dir, settings.data_dir)
    small = Warehouse(settings, warehouse.version, warehouse.cutoff)
    rng = np.random.default_rng(11)
    references: dict[str, pa.Table] = {}
    with duckdb.connect(str(settings.warehouse_path)) as con:
        for mart, keys in MARTS.items():
            table = con.sql(f"select * from {mart} order by {keys}").to_arrow_table()
            picked = rng.permutation(table.num_rows)[: 2 * SMALL]
            references[mart] = table.take(pa.array(picked[:SMALL]))
            con.register("current_sample", table.take(pa.array(picked[SMALL:])))
            con.execute(f"create or replace table {mart} as select * from current_sample")
            con.unregister("current_sample")
    reference = small.reference("small-sample", references)
    small.drift(reference)
    features = small.features()
    above_plain = {name: row["psi"] for name, row in features.items() if row["psi"] > PSI_WARN}
    print("small samples, PSI above 0.1:", {k: round(v, 3) for k, v in above_plain.items()})
    assert len(above_plain) >= 3, above_plain
    assert {row["status"] for row in features.values()} == {"ok"}, [
        (name, row["psi"], row["psi_warn_at"], row["ks"], row["ks_warn_at"])
        for name, row in features.items()
        if row["status"] != "ok"
    ]
    for name, row in features.items():
        n, m = row["n_reference"], row["n_current"]
        assert n == m == SMALL
        floor = chi2_floor(row["n_bins"], n, m)
        # Wilson-Hilferty (3+ degrees of freedom) is a little above the exact quantile
        for applied, plain in ((row["psi_warn_at"], PSI_WARN), (row["psi_fail_at"], PSI_FAIL)):
            assert max(plain, floor) * (1 - 1e-4) <= applied <= max(plain, floor) * 1.02, name
        if row["kind"] == "numeric":
            floor = ks_floor(row["n_reference_non_null"], row["n_current_non_null"])
            assert row["ks_warn_at"] == pytest.approx(max(KS_WARN, floor), rel=1e-9), name
            assert row["ks_fail_at"] == pytest.approx(max(KS_FAIL, floor), rel=1e-9), name
    for name in above_plain:
        assert features[name]["psi_warn_at"] > features[name]["psi"], name

    items = references["item_features"]
    price = pc.multiply(items.column("price"), 2.0)
    shifted = items.set_column(items.schema.get_field_index("price"), "price", price)
    shifted_reference = small.reference(
        "small-sample-price-doubled", {**references, "item_features": shifted}
    )
    small.drift(shifted_reference)
    features = small.features()
    print(
        f"small samples, price doubled: psi {features['price']['psi']:.3f} "
        f"(fail at {features['price']['psi_fail_at']:.3f}), ks {features['price']['ks']:.3f} "
        f"(fail at {features['price']['ks_fail_at']:.3f})"
    )
    assert features["price"]["status"] == "fail"
    assert {name for name, row in features.items() if row["status"] != "ok"} == {"price"}
