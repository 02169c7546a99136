"""The dbt side of the DAGs: Cosmos task groups rendered from the dbt manifest.

Parsing stays fast because Cosmos reads the graph from `manifest.json` (`LoadMode.DBT_MANIFEST`)
instead of running `dbt ls` (15-20 s here) each time a DAG file is parsed. The manifest is made
by `dbt parse` (`python -m recsys_airflow.dbt_graph`, which `make airflow` runs) into
`$RECSYS_DATA_DIR/airflow/dbt/`, or read from `RECSYS_DBT_MANIFEST`. It only shapes the graph:
the tasks run dbt on the project itself, with the settings' environment, as `recsys build` does.

Each model is one task, `dbt run --select <model>`, with the manifest's dependencies as edges;
one last task of the group runs every test of the group's models (`TestBehavior.AFTER_ALL`: data
tests and unit tests, `dbt test` with the group's selection), so a failed test stops the
pipeline before anything reads the group's tables. Tests run after all the models because many
span several of them (`relationships`, the no-leak test over every mart): run with one model,
they would check the others as an earlier build left them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

# Cosmos sends usage metrics unless told not to, and nothing here may reach the network at run
# time: off by default for every process that loads these DAGs (a task's process imports this
# module before Cosmos reads its settings). AIRFLOW__COSMOS__ENABLE_TELEMETRY=True turns it on.
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")

from cosmos import (
    DbtTaskGroup,
    ExecutionConfig,
    LoadMode,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
)
from cosmos.constants import InvocationMode, TestBehavior

from recsys.settings import Settings
from recsys.warehouse import dbt_command, dbt_executable, engine_env, release_duckdb
from recsys_airflow.common import (
    DBT_TARGET_PATTERN,
    DEFAULT_DBT_TARGET,
    RAW_ASSETS,
    SETTINGS,
    feature_asset,
    settings_for_target,
)

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = SETTINGS.dbt_project_dir  # RECSYS_DBT_PROJECT_DIR, or the repository's

MANIFEST_PATH = Path(
    os.environ.get("RECSYS_DBT_MANIFEST") or SETTINGS.data_dir / "airflow" / "dbt" / "manifest.json"
)
# The ranking models (built after ALS has written the ml source) carry the tag `ranking`, as
# `steps.build_ranking` selects them; their tests carry no tag, so the folder selects those.
RANKING_MODELS = ["tag:ranking", "path:models/ranking"]
# `recsys monitor`'s models (the monitoring DAG), never in a features build; the monitoring
# group also rebuilds the views they read (recsys.warehouse.MONITORING_SELECT)
MONITORING_MODELS = ["tag:monitoring", "path:models/monitoring"]
MONITORING_GROUP = [*MONITORING_MODELS, "tag:monitoring_input"]
FEATURE_GRAPH_EXCLUDES = [*RANKING_MODELS, *MONITORING_MODELS]
MARTS_FOLDER = "marts"  # models exported to the lake as feature marts (dbt_project.yml)
# what the manifest depends on: a change to any of these makes it stale
PROJECT_INPUTS = ("dbt_project.yml", "models", "macros", "tests")


class ManifestMissing(FileNotFoundError):
    """The DAGs cannot render their dbt tasks: no manifest yet."""


def write_manifest(settings: Settings, target_dir: Path) -> Path:
    """`dbt parse` into `target_dir` (not the project's shared `target/`); the manifest path."""
    target_dir.mkdir(parents=True, exist_ok=True)
    args = ["parse", "--target-path", str(target_dir), "--log-path", str(target_dir / "logs")]
    dbt_command(settings, args, echo=False)
    return target_dir / "manifest.json"


def manifest_is_stale(manifest: Path, project_dir: Path = DBT_PROJECT_DIR) -> list[Path]:
    """Project files changed after the manifest was written (newest first, at most 5)."""
    written = manifest.stat().st_mtime
    newer = []
    for name in PROJECT_INPUTS:
        root = project_dir / name
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        newer += [p for p in files if p.stat().st_mtime > written]
    return sorted(newer, key=lambda p: p.stat().st_mtime, reverse=True)[:5]


def checked_manifest(path: Path = MANIFEST_PATH) -> Path:
    """The manifest to render from; a clear error when it is missing, a warning when stale."""
    if not path.is_file():
        raise ManifestMissing(
            f"dbt manifest {path} not found: the recsys DAGs render their dbt tasks from it. "
            "Write it with `make airflow`, or `PYTHONPATH=dags .venv/bin/python -m "
            "recsys_airflow.dbt_graph` (or point RECSYS_DBT_MANIFEST at one)."
        )
    _warn_if_stale(path, path.stat().st_mtime_ns)
    return path


@cache  # once per manifest version, however many groups a DAG file renders from it
def _warn_if_stale(path: Path, mtime_ns: int) -> None:
    newer = manifest_is_stale(path)
    if newer:
        log.warning(
            "dbt manifest %s is older than %s: the DAGs may miss a model. Write it again "
            "(python -m recsys_airflow.dbt_graph, or make airflow).",
            path,
            ", ".join(str(p.relative_to(DBT_PROJECT_DIR)) for p in newer),
        )


def manifest_nodes(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's nodes (read once per parse: both groups and the assets use them)."""
    return _nodes(path, path.stat().st_mtime_ns)


@cache
def _nodes(path: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = json.loads(path.read_text())["nodes"]
    return nodes


def upstream_sources(nodes: dict[str, dict[str, Any]], unique_id: str) -> set[str]:
    """Names of the sources (`source.<project>.<source>.<table>`) a node reads, transitively."""
    seen: set[str] = set()
    sources: set[str] = set()
    stack = [unique_id]
    while stack:
        for parent in nodes[stack.pop()]["depends_on"]["nodes"]:
            if parent.startswith("source."):
                sources.add(parent)
            elif parent in nodes and parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return sources


def project_config(manifest: Path) -> ProjectConfig:
    return ProjectConfig(
        dbt_project_path=DBT_PROJECT_DIR,
        manifest_path=manifest,
        project_name="recsys",
        install_dbt_deps=False,  # no packages, and no network at run time
    )


# The dbt target of a task is its DAG run's `dbt_target` param (recsys_airflow.common). Cosmos
# (1.15, local execution) always passes `--target <ProfileConfig.target_name>`, after every other
# flag (so a `--target` of dbt_cmd_flags would lose), and neither the ProfileConfig nor its target
# is a template field: as built here, it is fixed when the DAG file is parsed. The operators'
# `env` is a template field, rendered before the task executes; so the run's param travels as
# RECSYS_DBT_TARGET in `env` (the profile's own `target:` reads that variable, and the task's
# Rendered Template shows it), and `use_the_runs_target`, every dbt task's pre_execute hook (after
# rendering, before execute), hands the task a ProfileConfig whose target_name is that rendered
# value. The name the ProfileConfig gets here (the param's default) only serves parsing.
DBT_TARGET_VARIABLE = "RECSYS_DBT_TARGET"
DBT_TARGET_TEMPLATE = "{{ params.dbt_target }}"
PROFILE_CONFIG = ProfileConfig(
    profile_name="recsys",
    target_name=DEFAULT_DBT_TARGET,
    profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml",
)
EXECUTION_CONFIG = ExecutionConfig(
    dbt_executable_path=os.environ.get("RECSYS_DBT_EXECUTABLE") or dbt_executable(),
    # dbt in the task's own process: no second interpreter start-up (seconds) per model
    invocation_mode=InvocationMode.DBT_RUNNER,
)


def dbt_group(
    group_id: str,
    *,
    select: Iterable[str] = (),
    exclude: Iterable[str] = (),
    dbt_vars: dict[str, str] | None = None,
    manifest: Path | None = None,
) -> DbtTaskGroup:
    """A Cosmos group of the project's models (`select` / `exclude` as in dbt): one task per
    model, then one for their tests, run with `dbt_vars` (templated: XComs may fill them).

    A mart's task produces its feature asset and consumes the raw tables it reads, so that the
    Assets view traces raw events to the published snapshot.
    """
    manifest = checked_manifest(manifest or MANIFEST_PATH)
    group = DbtTaskGroup(
        group_id=group_id,
        project_config=project_config(manifest),
        profile_config=PROFILE_CONFIG,
        execution_config=EXECUTION_CONFIG,
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            select=list(select),
            exclude=list(exclude),
            test_behavior=TestBehavior.AFTER_ALL,
            # assets are declared by the DAGs (lake tables and the snapshot), not derived
            # by Cosmos from OpenLineage events at run time
            emit_datasets=False,
        ),
        operator_args={
            # absolute paths: Cosmos runs dbt in a temporary copy of the project; the run's
            # dbt target (see PROFILE_CONFIG)
            "env": {**SETTINGS.dbt_env(), DBT_TARGET_VARIABLE: DBT_TARGET_TEMPLATE},
            "pre_execute": use_the_runs_target,
            "vars": dbt_vars,
            "install_deps": False,
            # called after the dbt command, whether it passed or not
            "callback": f"{__name__}.close_dbt_duckdb",
        },
    )
    attach_assets(group, manifest_nodes(manifest))
    return group


def use_the_runs_target(context: Any) -> None:
    """pre_execute hook of every dbt task: dbt's `--target` is the run's `dbt_target` param, as
    rendered into the task's env (see PROFILE_CONFIG); what the target's engine needs in the
    environment is added (for the in-process Spark, a Java runtime: `recsys build --target`
    adds the same)."""
    task = context["task"]
    target = str(task.env.get(DBT_TARGET_VARIABLE, "")).strip()
    if not re.fullmatch(DBT_TARGET_PATTERN, target):
        raise ValueError(
            f"{DBT_TARGET_VARIABLE} rendered as {target[:70]!r}, not a dbt target name: the "
            "DAG needs the `dbt_target` param (recsys_airflow.common.dbt_target_param)"
        )
    task.profile_config = dataclasses.replace(task.profile_config, target_name=target)
    task.env = {**task.env, **engine_env(settings_for_target(target))}
    log.info("dbt target of this run: %s", target)


def close_dbt_duckdb(project_dir: str, **_: Any) -> None:
    """Release the warehouse file when a task's dbt command is done.

    Each task normally has a process of its own, but tasks that share one (`airflow dags test`)
    would find the file held by an earlier task's dbt: see `recsys.warehouse.release_duckdb`.
    """
    release_duckdb()


def mart_names(manifest: Path | None = None) -> list[str]:
    """The models exported to the lake as feature marts (those under models/marts/)."""
    return sorted(
        node["name"]
        for node in manifest_nodes(checked_manifest(manifest or MANIFEST_PATH)).values()
        if node["resource_type"] == "model" and node["fqn"][1:2] == [MARTS_FOLDER]
    )


def attach_assets(group: DbtTaskGroup, nodes: dict[str, dict[str, Any]]) -> None:
    for unique_id, task in group.tasks_map.items():
        node = nodes.get(unique_id)
        if node is None or node["resource_type"] != "model" or not hasattr(task, "outlets"):
            continue
        raw = sorted(s.rsplit(".", 1)[-1] for s in upstream_sources(nodes, unique_id))
        task.inlets = [RAW_ASSETS[t] for t in raw if t in RAW_ASSETS]
        if node["fqn"][1:2] == [MARTS_FOLDER]:
            task.outlets = [feature_asset(node["name"])]


def main() -> int:
    """Write the manifest the DAGs render from (`make airflow` runs this)."""
    from recsys.settings import get_settings

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MANIFEST_PATH.parent
    path = write_manifest(get_settings(), target)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
