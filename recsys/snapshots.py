"""The snapshot's format, one definition for the publisher (`models_ml.publish`) and the API.

A snapshot is one DuckDB file with the tables SNAPSHOT_TABLES, published to the lake as
`snapshots/<version>/snapshot.duckdb` beside its `manifest.json`, with `snapshots/LATEST` naming
the current version (DESIGN.md). What is read from the lake is not trusted: versions are checked
against the publisher's format before they name anything, and snapshot files are opened so that
they can touch nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import duckdb

from recsys.lake import Lake, connect_duckdb

SNAPSHOT_TABLES = (
    "metadata",
    "items",
    "visitors",
    "interactions",
    "visitor_category_affinities",
    "recommendations",
    "candidates",
    "similar_items",
    "popular_items",
    "ranker",
)

# The publisher's names, `<UTC time>-<sha256 prefix>` (a benchmark adds milliseconds). A
# version names a folder, a cache path and a response header, and `LATEST` is read from the
# lake, which is not trusted: anything else is refused where it is read (`check_version`).
VERSION_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}(?:[0-9]{3})?Z-[0-9a-f]{8,64}")


class InvalidVersion(ValueError):
    """A snapshot version that is not of the publisher's format (never used as a name)."""


def shown(value: object, limit: int = 80) -> str:
    """A value read from the lake, as it may appear in a message: quoted, one line, printable
    ASCII, at most `limit` characters of it."""
    text = str(value)
    cut = text[:limit].encode("unicode_escape").decode("ascii")
    return repr(cut) + ("..." if len(text) > limit else "")


def check_version(text: str) -> str:
    """`text` if it is a version the publisher could have written, else InvalidVersion."""
    if not VERSION_PATTERN.fullmatch(text):
        raise InvalidVersion(
            f"{shown(text)} is not a snapshot version (expected YYYYMMDDTHHMMSSZ-<hex digest>)"
        )
    return text


def open_snapshot(path: Path, **config: Any) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a snapshot file that can touch nothing else.

    A snapshot comes from the lake, which is not trusted: its connection reads no other file,
    writes none, installs and loads no extension, and its settings are locked (settings are
    given as connection config, never as SQL built from strings).
    """
    options = {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
    con: duckdb.DuckDBPyConnection = connect_duckdb(path, read_only=True, config=options)
    try:
        # after the config: DuckDB refuses a temp_directory once external access is off
        con.execute("set enable_external_access = false")
        con.execute("set lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def latest_version(lake: Lake) -> str | None:
    """The version `LATEST` names (None when nothing is published); InvalidVersion when it
    names something the publisher would not have written."""
    if not lake.exists("snapshots/LATEST"):
        return None
    text = lake.read_text("snapshots/LATEST").strip()
    return check_version(text) if text else None


def latest_manifest(lake: Lake) -> dict[str, Any] | None:
    """The manifest of the version `LATEST` names; None when there is none, or when `LATEST`
    is not a valid version (a publish then replaces it)."""
    try:
        version = latest_version(lake)
    except InvalidVersion:
        return None
    if version is None or not lake.exists(f"snapshots/{version}/manifest.json"):
        return None
    return dict(json.loads(lake.read_text(f"snapshots/{version}/manifest.json")))


def verify_snapshot(path: Path) -> dict[str, int]:
    """Open the file read-only, check every table is there and nothing else that could run a
    query when read (views, macros, tables outside `main`); return the row counts."""
    with open_snapshot(path, threads=1, memory_limit="256MB") as con:
        present = {
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where schema_name = 'main'"
            ).fetchall()
        }
        missing = [t for t in SNAPSHOT_TABLES if t not in present]
        if missing:
            raise ValueError(f"snapshot {path} lacks tables: {', '.join(missing)}")
        extra = con.execute(
            """
            select 'view ' || view_name from duckdb_views() where not internal
            union all
            select 'macro ' || function_name from duckdb_functions()
            where not internal and function_type like '%macro%'
            union all
            select 'table ' || schema_name || '.' || table_name from duckdb_tables()
            where schema_name != 'main'
            limit 3
            """
        ).fetchall()
        if extra:  # a publisher writes plain tables: anything else is not a snapshot of ours
            names = ", ".join(shown(str(r[0]), 40) for r in extra)
            raise ValueError(f"snapshot {path} holds more than tables: {names}")
        counts = {}
        for table in SNAPSHOT_TABLES:  # names of ours, not the file's
            row = con.execute(f'select count(*) from main."{table}"').fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts
