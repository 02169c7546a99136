"""The dbt warehouse: runs `dbt` in `dbt_project/` with the project's profile and settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recsys.lake import CREDENTIALS_HINT, is_credentials_error
from recsys.settings import DBT_PROJECT_DIR, Settings


class BuildError(RuntimeError):
    """dbt failed; the message carries the lines of its output that say why."""


def dbt_executable() -> str:
    """The `dbt` of this environment (beside the running Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if not found:
        raise BuildError("dbt is not installed in this environment: run `make install`")
    return found


def dbt_command(
    settings: Settings,
    args: list[str],
    *,
    cutoff_at: str | None = None,
    extra_vars: dict[str, object] | None = None,
    echo: bool = True,
) -> str:
    """Run `dbt <args>` in the project with the settings' environment; return its output."""
    dbt_vars: dict[str, object] = dict(extra_vars or {})
    if cutoff_at:
        dbt_vars["cutoff_at"] = cutoff_at
    cmd = [dbt_executable(), *args, "--project-dir", str(DBT_PROJECT_DIR)]
    cmd += ["--profiles-dir", str(DBT_PROJECT_DIR)]
    if dbt_vars:
        cmd += ["--vars", json.dumps(dbt_vars)]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.dbt_env(), "DBT_USE_COLORS": "false"}
    lines: list[str] = []
    with subprocess.Popen(
        cmd,
        cwd=DBT_PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                print(f"  {line.rstrip()}", flush=True)
        code = proc.wait()
    if code != 0:
        tail = [line.rstrip() for line in lines[-60:]]
        reasons = [t for t in tail if "error" in t.lower() or "fail" in t.lower()]
        detail = "\n".join(reasons[-15:] or tail[-15:])
        hint = f"\n{CREDENTIALS_HINT}" if is_credentials_error("".join(lines)) else ""
        raise BuildError(f"dbt {args[0]} failed (exit {code}):{hint}\n{detail}")
    return "".join(lines)


def build(
    settings: Settings,
    cutoff_at: str | None = None,
    select: str | None = None,
    extra_vars: dict[str, object] | None = None,
    echo: bool = True,
) -> str:
    """`dbt build`: every model and test, as of `cutoff_at` (default: the latest event)."""
    args = ["build"]
    if select:
        args += ["--select", select]
    return dbt_command(settings, args, cutoff_at=cutoff_at, extra_vars=extra_vars, echo=echo)


SUMMARY_TABLES = (
    "events",
    "sessions",
    "categories",
    "item_features",
    "visitor_features",
    "visitor_category_affinities",
    "interactions",
)


def summary(settings: Settings) -> str:
    """What the last build made: feature version, cutoff and the rows of each mart."""
    import duckdb

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        row = con.execute(
            "select feature_version, cutoff_at, invocation_id from feature_builds"
        ).fetchone()
        counts = {t: con.execute(f"select count(*) from {t}").fetchone() for t in SUMMARY_TABLES}
    assert row is not None
    lines = [
        f"warehouse {settings.warehouse_path}",
        f"  feature version {row[0]} (cutoff {row[1]}, dbt invocation {row[2]})",
        f"  features exported to {settings.lake_uri}/features/{row[0]}/",
    ]
    lines += [f"  {name:<28} {c[0] if c else 0:>12,} rows" for name, c in counts.items()]
    return "\n".join(lines)
