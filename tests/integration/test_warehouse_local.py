"""The warehouse on a local lake: generate -> ingest -> dbt build, point in time, offline docs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from recsys.ingest import ingest
from recsys.lake import Lake
from recsys.settings import DBT_PROJECT_DIR, Settings
from recsys.warehouse import build, dbt_command
from tests.conftest import dbt_target_dir

pytestmark = pytest.mark.integration

MARTS = (
    "events",
    "sessions",
    "categories",
    "item_features",
    "visitor_features",
    "visitor_category_affinities",
    "interactions",
)


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_build_from_generated_data(tiny_raw: Path, settings: Settings) -> None:
    lake = Lake.from_settings(settings)
    ingest(tiny_raw, lake)
    build(settings)
    for mart in MARTS:
        count = query(settings, f"select count(*) from {mart}")[0][0]
        assert count > 0, mart
    # the default cutoff is the latest event, and the feature version says so
    ((version, cutoff),) = query(settings, "select feature_version, cutoff_at from feature_builds")
    latest = query(settings, "select max(event_at) from events")[0][0]
    assert cutoff == latest
    assert version.startswith("fv")
    # every feature mart is exported to the lake under its version (`events` is not: it is
    # the raw events again, and stays in the warehouse)
    exported = sorted(p.stem for p in (Path(lake.root) / "features" / version).glob("*.parquet"))
    assert set(MARTS) - {"events"} <= set(exported)
    exported_path = lake.url(f"features/{version}/interactions.parquet")
    n = duckdb.sql(f"select count(*) from read_parquet('{exported_path}')").fetchall()[0][0]
    assert n == query(settings, "select count(*) from interactions")[0][0]
    # sessions add up to the events
    assert query(settings, "select sum(n_events) from sessions") == query(
        settings, "select count(*) from events"
    )


def test_an_event_after_the_cutoff_changes_no_feature(
    tiny_raw: Path, settings: Settings, tmp_path: Path
) -> None:
    cutoff = "2015-08-01 00:00:00"
    lake = Lake.from_settings(settings)
    ingest(tiny_raw, lake)
    build(settings, cutoff_at=cutoff)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        # fixed candidates (as ALS would write them) so that ranking_features is built too
        con.execute("create schema ml")
        con.execute(
            """
            create table ml.als_candidates as
            select visitor_id, item_id, weight as als_score,
                cast(row_number() over (partition by visitor_id order by weight desc, item_id)
                    as integer) as als_rank,
                true as is_seen,
                'revisit' as source,
                (select feature_version from feature_builds) as feature_version,
            from interactions
            """
        )
    build(settings, cutoff_at=cutoff, select="tag:ranking")
    with duckdb.connect(str(settings.warehouse_path)) as con:
        assert con.execute("select count(*) from ranking_features").fetchone() != (0,)
        con.execute("create schema before")
        for mart in (*MARTS, "ranking_features"):
            con.execute(f"create table before.{mart} as select * from main.{mart}")
        visitor, item = con.execute(
            "select visitor_id, item_id from interactions order by weight desc limit 1"
        ).fetchone()  # type: ignore[misc]
    # synthetic events after the cutoff: the busiest visitor buys its favourite item, and a
    # property snapshot moves the item to another category and out of stock
    raw = tmp_path / "raw_plus"
    shutil.copytree(tiny_raw, raw)
    after = 1438387200000 + 3_600_000  # 2015-08-01 01:00 UTC
    with open(raw / "events.csv", "a") as fh:
        fh.write(f"{after},{visitor},view,{item},\n")
        fh.write(f"{after + 1000},{visitor},addtocart,{item},\n")
        fh.write(f"{after + 2000},{visitor},transaction,{item},999999\n")
        fh.write(f"{after + 3000},987654321,view,{item},\n")
    with open(raw / "item_properties_part2.csv", "a") as fh:
        fh.write(f"{after},{item},categoryid,999999\n{after},{item},available,0\n")
    ingest(raw, lake)
    build(settings, cutoff_at=cutoff)  # ranking_features too: the ml source is still there
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert (
            con.execute("select count(*) from before.events").fetchone()
            == con.execute("select count(*) from main.events").fetchone()
        )
        for mart in (*MARTS, "ranking_features"):
            changed = con.execute(
                f"""
                select count(*) from (
                    (select * from main.{mart} except all select * from before.{mart})
                    union all
                    (select * from before.{mart} except all select * from main.{mart})
                )
                """
            ).fetchone()
            assert changed == (0,), mart
        # and the new events are in the lake: the build would see them with a later cutoff
        n_after = con.execute(
            f"select count(*) from read_parquet('{lake.url('raw/events/*.parquet')}') "
            f"where timestamp >= {after}"
        ).fetchone()
        assert n_after is not None and n_after[0] >= 4
    # built at another cutoff than the candidates', ranking_features is empty: dbt warns and
    # the summary says why and what to do
    from recsys.warehouse import summary

    output = build(settings, cutoff_at="2015-08-10 00:00:00", echo=False)
    assert "WARN 1 assert_ranking_candidates_match_the_cutoff" in output
    assert "the ALS candidates are of fv1_20150801T000000, not this cutoff" in summary(settings)
    build(settings, cutoff_at=cutoff, echo=False)
    assert "ALS candidates" not in summary(settings)
    # the ml tables are read through typed staging models: candidates written with another
    # type fail the build (dbt's contract) instead of being cast, and the last ranking_features
    # stays in place
    from recsys.warehouse import BuildError

    with duckdb.connect(str(settings.warehouse_path)) as con:
        n_ranked = con.execute("select count(*) from ranking_features").fetchone()
        con.execute(
            """
            create or replace table ml.als_candidates as
            select * replace (cast(als_rank as bigint) as als_rank) from ml.als_candidates
            """
        )
    with pytest.raises(BuildError, match="stg_ml__als_candidates"):
        build(settings, cutoff_at=cutoff, select="tag:ranking")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("select count(*) from ranking_features").fetchone() == n_ranked


def test_docs_generate_offline_and_the_analyses_run(tiny_raw: Path, settings: Settings) -> None:
    """(`dbt build` from the project folder, as a user runs it, is one of the README's commands:
    tests/integration/test_readme_dbt_commands.py.)"""
    ingest(tiny_raw, Lake.from_settings(settings))
    build(settings)
    # docs generate offline, and the analyses compile
    dbt_command(settings, ["docs", "generate"], echo=False)
    catalog = json.loads((dbt_target_dir() / "catalog.json").read_text())
    assert any(node.endswith(".item_features") for node in catalog["nodes"])
    # the loop in the docs' lineage: interactions -> ALS, ranking_features -> the snapshot
    manifest = json.loads((dbt_target_dir() / "manifest.json").read_text())
    exposures = {e["name"]: e["depends_on"]["nodes"] for e in manifest["exposures"].values()}
    assert "model.recsys.interactions" in exposures["als_candidates"]
    assert "model.recsys.ranking_features" in exposures["snapshot_api"]
    assert {"ranker", "offline_evaluation"} <= set(exposures)
    # shared columns have one description, from a docs block
    columns = manifest["nodes"]["model.recsys.interactions"]["columns"]
    assert columns["visitor_id"]["description"].startswith("The visitor (RetailRocket's")
    dbt_command(settings, ["compile", "--select", "path:analyses"], echo=False)
    compiled = dbt_target_dir() / "compiled" / "recsys" / "analyses"
    names = sorted(p.name for p in compiled.glob("*.sql"))
    assert names == [
        "funnel_by_category.sql",
        "session_length_distribution.sql",
        "top_items_by_conversion.sql",
    ]
    # a compiled analysis runs against the warehouse
    sql = (compiled / "funnel_by_category.sql").read_text()
    assert query(settings, sql)


def test_views_built_with_a_relative_data_dir_work_from_any_folder(
    tiny_raw: Path, settings: Settings, tmp_path: Path
) -> None:
    """A user in dbt_project/ with a relative RECSYS_DATA_DIR (the default is ../data): the
    staging and intermediate views store the lake's absolute path, so the warehouse opened from
    another folder still reads them (they stored ../data/lake and found no files)."""
    ingest(tiny_raw, Lake.from_settings(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "DBT_"))}
    env["RECSYS_DATA_DIR"] = os.path.relpath(settings.data_dir, DBT_PROJECT_DIR)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DBT_TARGET_PATH"] = str(tmp_path / "target")
    env["DBT_LOG_PATH"] = str(tmp_path / "logs")
    built = subprocess.run(
        ["bash", "-c", "dbt build"],
        cwd=DBT_PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    counted = subprocess.run(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
            "count = lambda t: con.execute(f'select count(*) from {t}').fetchone()[0]; "
            "print(count('staging.stg_retailrocket__events'), "
            "count('intermediate.int_events_sessionized'))",
            str(settings.warehouse_path),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert counted.returncode == 0, counted.stderr[-2000:]
    n_staged, n_sessionized = map(int, counted.stdout.split())
    assert n_staged > 0 and n_sessionized > 0


def test_one_parse_serves_every_cutoff_until_the_project_changes(
    tiny_raw: Path, settings: Settings
) -> None:
    """dbt runs in this process and reuses its manifest across vars: the vars must still
    reach the SQL (a stale cutoff would silently build features as of the wrong time). dbt's
    unit tests run in the first complete build only, until the project changes."""
    from recsys import warehouse

    def unit_tests_run() -> int:
        results = json.loads((dbt_target_dir() / "run_results.json").read_text())["results"]
        return sum(r["unique_id"].startswith("unit_test.") for r in results)

    ingest(tiny_raw, Lake.from_settings(settings))
    cutoffs = ("2015-08-01 00:00:00", "2015-08-15 00:00:00")
    manifests, unit_tests = [], []
    for cutoff in cutoffs:
        build(settings, cutoff_at=cutoff)
        unit_tests.append(unit_tests_run())
        ((version, built),) = query(
            settings, "select feature_version, cutoff_at from feature_builds"
        )
        assert str(built) == cutoff
        assert version.endswith(cutoff.replace("-", "").replace(" ", "T").replace(":", ""))
        manifests.append(next(iter(warehouse._MANIFESTS.values())).manifest)
        if cutoff == cutoffs[0]:
            # what a build of the single-schema layout left in main: the next build drops it
            with duckdb.connect(str(settings.warehouse_path)) as con:
                con.execute("create view main.stg_retailrocket__events as select 1 as stale")
                con.execute("create table main.int_events_sessionized as select 1 as stale")
    assert not query(
        settings,
        "select table_name from information_schema.tables where table_schema = 'main' "
        "and (starts_with(table_name, 'stg_') or starts_with(table_name, 'int_'))",
    )
    assert query(settings, "select count(*) from staging.stg_retailrocket__events")[0][0] > 0
    assert manifests[0] is manifests[1]
    assert unit_tests[0] >= 7 and unit_tests[1] == 0
    # a changed project file is parsed again, and its unit tests run again
    macro = DBT_PROJECT_DIR / "macros" / "cutoff.sql"
    os.utime(macro)
    build(settings, cutoff_at=cutoffs[0])
    assert next(iter(warehouse._MANIFESTS.values())).manifest is not manifests[0]
    assert unit_tests_run() == unit_tests[0]


def test_a_build_stopped_part_way_is_refused_until_rebuilt(
    tiny_raw: Path, settings: Settings
) -> None:
    """Marts from two builds side by side (what a build killed or failed part-way leaves) are
    recognised: readers refuse them, dbt's test fails, and a whole build makes them one again."""
    from models_ml.steps import build_info
    from recsys.warehouse import BuildError, IncompleteBuild, summary

    ingest(tiny_raw, Lake.from_settings(settings))
    build(settings, cutoff_at="2015-08-15 00:00:00")
    whole = build_info(settings)["feature_version"]
    assert sorted(r[0] for r in query(settings, "select model from model_builds")) == sorted(
        [
            *MARTS,
            "business_metrics_daily",
            "experiment_results",
            "interleaving_results",
            "recommendation_metrics_daily",
            "recommendation_outcomes",
            "feature_builds",
            "label_window_session_steps",
            "label_window_visitors",
            "ranking_features",
            "ranking_labels",
        ]
    )
    # two marts rebuilt as of another cutoff, feature_builds not: what a stopped build leaves
    # (dbt's own test of the one build runs with them and fails)
    with pytest.raises(BuildError, match="assert_marts_from_one_build"):
        build(settings, cutoff_at="2015-08-20 00:00:00", select="events sessions")
    with pytest.raises(IncompleteBuild) as refused:
        build_info(settings)
    assert "events (fv1_20150820T000000)" in str(refused.value)
    assert "sessions (fv1_20150820T000000)" in str(refused.value)
    assert "recsys build" in str(refused.value)
    with pytest.raises(IncompleteBuild):
        summary(settings)
    with pytest.raises(BuildError, match="assert_marts_from_one_build"):
        dbt_command(
            settings,
            ["test", "--select", "assert_marts_from_one_build"],
            cutoff_at="2015-08-15 00:00:00",
            echo=False,
        )
    # a whole build (of either cutoff) is one build again
    build(settings, cutoff_at="2015-08-15 00:00:00")
    assert build_info(settings)["feature_version"] == whole
    assert "incomplete" not in summary(settings)


def test_the_dbt_project_is_found_where_the_setting_says(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECSYS_DBT_PROJECT_DIR: an installed package or an image points at its copy of the
    project; a folder without one is a clear error before dbt starts."""
    from recsys.warehouse import BuildError

    copy = tmp_path / "project"
    shutil.copytree(
        DBT_PROJECT_DIR, copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages")
    )
    # a model only the copy has: listing it proves dbt read the copy
    (copy / "models" / "staging" / "zz_only_in_the_copy.sql").write_text("select 1 as probe\n")
    monkeypatch.setenv("RECSYS_DBT_PROJECT_DIR", str(copy))
    moved = Settings(_env_file=None)  # type: ignore[call-arg]
    assert moved.dbt_project_dir == copy.resolve()
    target = ["--target-path", str(tmp_path / "target")]
    listed = dbt_command(
        moved, ["ls", "--select", "zz_only_in_the_copy", "--output", "name", *target], echo=False
    )
    assert "zz_only_in_the_copy" in listed
    monkeypatch.setenv("RECSYS_DBT_PROJECT_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(BuildError, match="RECSYS_DBT_PROJECT_DIR"):
        dbt_command(Settings(_env_file=None), ["ls", *target], echo=False)  # type: ignore[call-arg]
