"""No DuckDB connection of the project installs or loads an extension at run time.

Every connection comes from one helper (`recsys.lake.connect_duckdb`), which turns DuckDB's
on-demand install and load off, and registers the lake's filesystem where the lake is on S3;
dbt's profile says the same. A read that would need an extension fails at once, naming it,
instead of reaching for the network (as training once did on an S3 lake).
"""

from __future__ import annotations

import ast
from pathlib import Path

import duckdb
import pytest
import yaml

from recsys.lake import NO_EXTENSION_DOWNLOADS, Lake, connect_duckdb
from recsys.settings import DBT_PROJECT_DIR, REPO_ROOT
from recsys.snapshots import open_snapshot

PACKAGES = ("recsys", "models_ml", "api", "dags", "benchmarks")


def duckdb_connect_calls() -> list[str]:
    """`duckdb.connect(...)` calls in the project's code, as `file:line`."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "connect"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "duckdb"
                ):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_every_connection_comes_from_the_one_helper() -> None:
    calls = duckdb_connect_calls()
    assert calls and all(c.startswith("recsys/lake.py:") for c in calls), calls
    assert len(calls) == 1, calls


def test_no_sql_of_the_project_installs_or_loads_an_extension() -> None:
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            for line in path.read_text().lower().splitlines():
                code = line.split("#", 1)[0]
                assert "install " not in code or "pip install" in code or "uv " in code, path
                assert "load httpfs" not in code and "load_extension" not in code, path


def connections(tmp_path: Path) -> list[duckdb.DuckDBPyConnection]:
    # distinct files: DuckDB shares one instance, and its settings, per file in a process
    for name in ("warehouse", "snapshot"):
        connect_duckdb(tmp_path / f"{name}.duckdb").close()
    return [
        connect_duckdb(),
        connect_duckdb(tmp_path / "warehouse.duckdb", read_only=True),
        Lake(str(tmp_path / "lake")).duckdb(),
        open_snapshot(tmp_path / "snapshot.duckdb"),  # stricter still: no other file at all
    ]


@pytest.mark.parametrize("which", range(4))
def test_a_read_that_needs_an_extension_fails_at_once(tmp_path: Path, which: int) -> None:
    con = connections(tmp_path)[which]
    try:
        for name in NO_EXTENSION_DOWNLOADS:
            (value,) = con.execute(f"select current_setting('{name}')").fetchone() or (None,)
            assert value is False, name
        for url in ("s3://shop/lake/raw/events/x.parquet", "https://127.0.0.1:9/x.parquet"):
            refusal = "requires the extension httpfs|file system operations are disabled"
            with pytest.raises(duckdb.Error, match=refusal):
                con.execute(f"select * from read_parquet('{url}')")
        try:
            rows = con.execute(
                "select extension_name from duckdb_extensions() where loaded"
            ).fetchall()
        except duckdb.PermissionException:  # a snapshot's connection cannot even look
            rows = []
        assert "httpfs" not in {r[0] for r in rows}
    finally:
        con.close()


def test_dbt_never_downloads_an_extension_either() -> None:
    profile = yaml.safe_load((DBT_PROJECT_DIR / "profiles.yml").read_text())
    outputs = profile["recsys"]["outputs"]
    duckdb_outputs = {name: o for name, o in outputs.items() if o["type"] == "duckdb"}
    assert {"local", "s3"} <= set(duckdb_outputs)
    for name, output in duckdb_outputs.items():
        for setting, value in NO_EXTENSION_DOWNLOADS.items():
            assert output["settings"][setting] is value, (name, setting)
