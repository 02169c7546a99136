"""The DAGs as Airflow loads them: no import errors, fast parsing, the dbt tasks of the manifest,
one writer at a time on the warehouse, the lease, the quality gate's branch, landed events.

Airflow configures logging and warnings for the whole process when imported, so it is never
imported here: `_probe` runs in a subprocess with a temporary Airflow home (real Airflow, real
Cosmos, the real dbt manifest) and writes what it saw as JSON, which the tests check.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from recsys.settings import REPO_ROOT

DAGS_DIR = REPO_ROOT / "dags"
DAG_IDS = ("recsys_features", "recsys_training", "recsys_monitoring")
POOL = "recsys_warehouse"
TEST_TASK = "dbt_project_test"  # Cosmos's name for a group's test task (after the project folder)
MAX_PARSE_SECONDS = 5.0
# dbt groups: (dag, group) -> the models' tag it selects, and `<tag>_input` (None: the feature
# graph, every model but the ranking and monitoring ones)
GROUPS = {
    ("recsys_training", "features"): None,
    ("recsys_training", "ranking"): "ranking",
    ("recsys_features", "features"): None,
    ("recsys_monitoring", "monitoring"): "monitoring",
}
SELECTED_TAGS = ("ranking", "monitoring")
LANDED_CSV = (
    "timestamp,visitorid,event,itemid,transactionid\n"
    "1442004589439,1,view,10,\n"
    "1442004759591,1,addtocart,10,\n"
    "1442004917175,2,buy,11,\n"  # unknown event type: rejected
)


def airflow_env(root: Path, manifest: Path) -> dict[str, str]:
    """Environment of an isolated Airflow (home, data, manifest under `root`), no telemetry."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "RECSYS_", "AWS_")) and k != "PYTHONPATH"
    }
    env.update(
        AIRFLOW_HOME=str(root / "home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_DIR),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__COSMOS__ENABLE_TELEMETRY="False",
        AIRFLOW__COSMOS__CACHE_DIR=str(root / "cosmos"),
        RECSYS_DATA_DIR=str(root / "data"),
        RECSYS_DBT_MANIFEST=str(manifest),
        OPENBLAS_NUM_THREADS="1",
    )
    return env


def write_manifest(target: Path, env: dict[str, str]) -> Path:
    """The manifest the DAGs render from, made as `make airflow` makes it (once a session)."""
    manifest = target / "manifest.json"
    if not manifest.exists():
        subprocess.run(
            [sys.executable, "-m", "recsys_airflow.dbt_graph", str(target)],
            env={**env, "PYTHONPATH": str(DAGS_DIR)},
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return manifest


def _probe(out: str) -> None:
    """In the subprocess: load the DAGs and exercise what needs Airflow; JSON to `out`."""
    sys.path.insert(0, str(DAGS_DIR))
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(
        str(DAGS_DIR),
        bundle_path=DAGS_DIR,
        bundle_name="dags-folder",
        known_pools={"default_pool", POOL},
    )
    result: dict[str, Any] = {
        "import_errors": bag.import_errors,
        "parse_seconds": {Path(s.file).name: s.duration.total_seconds() for s in bag.dagbag_stats},
        "dags": {},
    }
    for dag in bag.dags.values():
        result["dags"][dag.dag_id] = {
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params.keys()),
            "tasks": {
                t.task_id: {
                    "pool": t.pool,
                    "pool_slots": t.pool_slots,
                    "upstream": sorted(t.upstream_task_ids),
                    "inlets": sorted(a.name for a in t.inlets),
                    "outlets": sorted(a.name for a in t.outlets),
                    "is_setup": t.is_setup,
                    "is_teardown": t.is_teardown,
                    "select": getattr(t, "select", None),
                    "vars": getattr(t, "vars", None),
                    "env": getattr(t, "env", None),
                }
                for t in dag.tasks
            },
        }
    result["dbt_target"] = _probe_dbt_target(bag)
    result["gate"] = _probe_gate()
    result["landing"] = _probe_landing()
    result["lease"] = _probe_lease(Path(out).parent / "lease")
    result["stale_lease"] = _probe_stale_lease(Path(out).parent / "stale")
    result["manifest"] = _probe_manifest(Path(out).parent / "project")
    Path(out).write_text(json.dumps(result, default=str))


class _DbtInvoked(Exception):
    """Raised in place of running dbt: Cosmos got as far as invoking it."""


class _FakeTI:
    """What the groups' `vars` templates pull: the dbt vars of `training_windows` / `prepare`."""

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> dict[str, Any]:
        return {
            "dbt_vars": {
                "cutoff_at": "2015-07-01 00:00:00",
                "label_end_at": "2015-07-15 00:00:00",
                "monitoring_reference_version": "fv1_20150701T000000",
            }
        }


def _probe_dbt_target(bag: Any) -> dict[str, Any]:
    """Runs with and without `dbt_target` in their conf, as Airflow makes and runs them, up to
    dbt: the conf validated by the serialized DAG's params (as a trigger's is), each dbt task's
    templates rendered with the run's params, its pre_execute hook, then Cosmos's own execute
    up to the dbt invocation, which is captured instead of run. And the Python tasks' settings
    in such a run, and the values refused."""
    import cosmos.dbt.runner as runner
    from airflow.sdk.execution_time.context import set_current_context
    from airflow.serialization.serialized_objects import DagSerialization
    from recsys_airflow import common
    from recsys_airflow.dbt_graph import DBT_TARGET_VARIABLE, use_the_runs_target

    invoked: list[dict[str, Any]] = []

    def capture(command: list[str], env: dict[str, str], cwd: str, **_: Any) -> None:
        keep = (DBT_TARGET_VARIABLE, "JAVA_HOME")
        invoked.append({"command": list(command), "env": {k: env.get(k) for k in keep}})
        raise _DbtInvoked

    saved = runner.run_command
    runner.run_command = capture  # type: ignore[assignment]
    result: dict[str, Any] = {}
    try:
        for dag_id, dag in bag.dags.items():
            serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
            out: dict[str, Any] = {"default": serialized.params.validate()["dbt_target"]}
            for case, conf in (("spark", {"dbt_target": "spark"}), ("no_conf", None)):
                params = serialized.params.deep_merge(conf).validate()
                tasks: dict[str, Any] = {}
                for task in dag.tasks:
                    if not hasattr(task, "profile_config"):
                        continue
                    copy = task.prepare_for_execution()
                    context = {
                        "params": params,
                        "run_id": "manual__probe",
                        "dag": dag,
                        "task": copy,
                        "ti": _FakeTI(),
                    }
                    copy.render_template_fields(context)
                    rendered_env = copy.env.get(DBT_TARGET_VARIABLE)
                    copy._pre_execute_hook(context)
                    invoked.clear()
                    # Cosmos's execute (~60 ms a task) for every task of a run with the param,
                    # for the first model and the tests of a run without
                    if case == "spark" or not tasks or task.task_id.endswith(TEST_TASK):
                        with contextlib.suppress(_DbtInvoked):
                            copy.execute(context)
                    tasks[task.task_id] = {
                        "rendered_env": rendered_env,
                        "profile_target": copy.profile_config.target_name,
                        "invoked": invoked[0] if invoked else None,
                        "parse_time_target": task.profile_config.target_name,
                    }
                with set_current_context(context):  # type: ignore[arg-type]
                    settings = common.run_settings()
                out[case] = {
                    "tasks": tasks,
                    "run_settings": settings.recsys_dbt_target,
                    "dbt_env": settings.dbt_env().get("RECSYS_DBT_TARGET"),
                }
            refused: dict[str, str | None] = {}
            for bad in ("1local", "local; rm -rf /", "spark-cluster", "", "x" * 65, "lo cal"):
                try:
                    serialized.params.deep_merge({"dbt_target": bad}).validate()
                    refused[bad] = None
                except Exception as exc:
                    refused[bad] = f"{type(exc).__name__}: {exc}"
            out["refused"] = refused
            result[dag_id] = out
    finally:
        runner.run_command = saved  # type: ignore[assignment]

    # a dbt task whose env did not render a target name (a DAG without the param), and a run
    # whose params hold one that escaped validation, stop before dbt
    hook_refusal: str | None = None
    try:
        use_the_runs_target({"task": SimpleNamespace(env={DBT_TARGET_VARIABLE: ""})})
    except ValueError as exc:
        hook_refusal = str(exc)
    settings_refusal: str | None = None
    with set_current_context({"params": {"dbt_target": "x; y"}}):  # type: ignore[arg-type]
        try:
            common.run_settings()
        except ValueError as exc:
            settings_refusal = str(exc)
    result["_refused_at_run_time"] = {"hook": hook_refusal, "run_settings": settings_refusal}
    return result


def _probe_gate() -> dict[str, Any]:
    """The branch's decision and the stop task's reasons on real metrics files, against an
    empty lake (no published snapshot)."""
    from recsys_airflow import gate
    from recsys_airflow.common import SETTINGS

    metrics_path = SETTINGS.data_dir / "reports" / "metrics.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, Any] = {}
    for name, ranker_ndcg in (("worse", 0.05), ("better", 0.2)):
        models = {"popularity": {"ndcg@10": 0.1}, "als_catboost": {"ndcg@10": ranker_ndcg}}
        metrics_path.write_text(json.dumps({"models": models}))
        outcome[name] = gate.branch(force=False)
        outcome[f"{name}_forced"] = gate.branch(force=True)
        outcome[f"{name}_reasons"] = gate.refused()
    return outcome


def _probe_landing() -> dict[str, Any]:
    """Ingest without a raw_dir: only the events the API landed, exactly once."""
    from recsys_airflow.common import SETTINGS, ingest_lake

    lake = Path(SETTINGS.lake_uri)
    landing = lake / "landing" / "events"
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "batch-1.csv").write_text(LANDED_CSV)
    first = ingest_lake(None, SETTINGS)
    return {
        "first": first,
        "again": ingest_lake(None, SETTINGS),
        "raw_parts": sorted(p.name for p in (lake / "raw" / "events").glob("*.parquet")),
        "left_in_landing": sorted(p.name for p in landing.glob("*.csv")),
    }


def _probe_lease(path: Path) -> list[bool | str | None]:
    from recsys_airflow.common import claim_warehouse, lease_holder, release_warehouse

    return [
        claim_warehouse("a/run1", path),
        claim_warehouse("b/run1", path),  # held by a: wait
        claim_warehouse("a/run1", path),  # a's own (a cleared task): fine
        release_warehouse("b/run1", path),  # not b's to release
        lease_holder(path),
        release_warehouse("a/run1", path),
        claim_warehouse("b/run1", path),
        lease_holder(path),
    ]


def _probe_stale_lease(folder: Path) -> dict[str, Any]:
    """Takeover of a lease whose holder's run is no longer running, and never otherwise."""
    import threading

    from recsys_airflow.common import claim_warehouse, lease_holder, read_lease

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "warehouse.lease"
    running = {"a/run1"}

    def is_running(holder: str) -> bool:
        return holder in running

    result: dict[str, Any] = {
        "a_claims": claim_warehouse("a/run1", path, is_running),
        "b_waits_while_a_runs": claim_warehouse("b/run1", path, is_running),
        "holder_while_a_runs": lease_holder(path),
    }
    # a's run died with Airflow (its teardown never released the lease); four others wait
    running.clear()
    running.update(f"c/run{i}" for i in range(4))
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def contender(name: str) -> None:
        barrier.wait()
        wins.append(claim_warehouse(name, path, is_running))

    threads = [threading.Thread(target=contender, args=(f"c/run{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result["takeovers"] = sum(wins)
    result["new_holder"] = lease_holder(path)
    result["lease"] = read_lease(path)
    path.write_text("old/run-from-before\n")  # a lease in the older, name-only form
    result["old_form"] = lease_holder(path)
    return result


def _probe_manifest(project: Path) -> dict[str, Any]:
    from recsys_airflow.dbt_graph import (
        ManifestMissing,
        checked_manifest,
        manifest_is_stale,
    )

    try:
        checked_manifest(project / "missing.json")
        missing = "no error"
    except ManifestMissing as exc:
        missing = str(exc)
    (project / "models").mkdir(parents=True)
    model = project / "models" / "m.sql"
    model.write_text("select 1")
    manifest = project / "manifest.json"
    manifest.write_text("{}")
    os.utime(model, (1_000_000_000, 1_000_000_000))
    fresh = manifest_is_stale(manifest, project)
    os.utime(model, None)
    os.utime(manifest, (1_000_000_000, 1_000_000_000))
    stale = manifest_is_stale(manifest, project)
    return {"missing": missing, "fresh": [str(p) for p in fresh], "stale": [str(p) for p in stale]}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.getbasetemp() / "dbt_manifest"
    return write_manifest(target, airflow_env(target.parent / "manifest_env", target))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, manifest: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("airflow_probe")
    out = root / "probe.json"
    code = f"from tests.unit.test_dags import _probe; _probe({str(out)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=airflow_env(root, manifest),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield json.loads(out.read_text())


def test_dag_bag_loads_both_dags_without_import_errors(probe: dict[str, Any]) -> None:
    assert probe["import_errors"] == {}
    assert set(probe["dags"]) == set(DAG_IDS)
    # the training DAG can be triggered with parameters (by hand, or by a monitoring DAG)
    training = probe["dags"]["recsys_training"]
    assert {"force", "raw_dir", "search_budget_s", "test_days", "label_days"} <= set(
        training["params"]
    )


def test_each_dag_file_parses_fast(probe: dict[str, Any]) -> None:
    seconds = probe["parse_seconds"]
    assert set(seconds) == {f"{dag_id}.py" for dag_id in DAG_IDS}
    slow = {name: s for name, s in seconds.items() if s >= MAX_PARSE_SECONDS}
    assert not slow, f"DAG files parsing in {MAX_PARSE_SECONDS}s or more: {slow}"


def _manifest_models(manifest: Path, tag: str | None) -> dict[str, dict[str, Any]]:
    nodes = json.loads(manifest.read_text())["nodes"]
    return {
        uid: node
        for uid, node in nodes.items()
        if node["resource_type"] == "model"
        and (
            bool({tag, f"{tag}_input"} & set(node["tags"]))
            if tag is not None
            else not set(SELECTED_TAGS) & set(node["tags"])
        )
    }


def _ancestors(tasks: dict[str, Any], task_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [task_id]
    while stack:
        for up in tasks[stack.pop()]["upstream"]:
            if up not in seen:
                seen.add(up)
                stack.append(up)
    return seen


@pytest.mark.parametrize(("dag_id", "group"), list(GROUPS))
def test_dbt_tasks_match_the_manifest(
    probe: dict[str, Any], manifest: Path, dag_id: str, group: str
) -> None:
    """One task per model of the group, the manifest's dependencies as its edges; then one task
    for the group's tests, which everything after the group waits for."""
    tasks = probe["dags"][dag_id]["tasks"]
    models = _manifest_models(manifest, GROUPS[(dag_id, group)])
    task_of = {uid: f"{group}.{node['name']}_run" for uid, node in models.items()}

    rendered = {tid for tid in tasks if tid.startswith(f"{group}.") and tid.endswith("_run")}
    assert rendered == set(task_of.values())
    for uid, node in models.items():
        task = tasks[task_of[uid]]
        assert task["select"] == f"fqn:{'.'.join(node['fqn'])}"
        parents = {task_of[p] for p in node["depends_on"]["nodes"] if p in task_of}
        model_upstream = {u for u in task["upstream"] if u in task_of.values()}
        assert model_upstream == parents, node["name"]
        if not parents:  # a root of the group starts after what precedes the group
            assert task["upstream"], node["name"]

    test_task = f"{group}.{TEST_TASK}"
    assert set(task_of.values()) <= _ancestors(tasks, test_task)
    assert set(tasks) - rendered == {test_task} | {
        tid for tid in tasks if not tid.startswith(f"{group}.")
    }
    # what follows the group waits for its tests, never for a model task alone
    outside = {tid: t for tid, t in tasks.items() if not tid.startswith(f"{group}.")}
    assert not {tid for tid, t in outside.items() if set(t["upstream"]) & rendered}
    assert any(test_task in t["upstream"] for t in outside.values())


def test_groups_run_in_pipeline_order(probe: dict[str, Any]) -> None:
    tasks = probe["dags"]["recsys_training"]["tasks"]

    def ancestors(task_id: str) -> set[str]:
        return _ancestors(tasks, task_id)

    features = {t for t in tasks if t.startswith("features.")}
    ranking = {t for t in tasks if t.startswith("ranking.")}
    assert features <= ancestors("als_candidates")
    assert {"als_candidates", *features} <= ancestors("ranking.ranking_features_run")
    assert {"ingest", "training_windows", *ranking} <= ancestors("train_ranker")
    chain = ["train_ranker", "evaluate", "quality_gate"]
    for before, after in itertools.pairwise(chain):
        assert before in tasks[after]["upstream"]
    assert tasks["publish"]["upstream"] == ["quality_gate"]
    assert tasks["gate_refused"]["upstream"] == ["quality_gate"]


def test_training_builds_get_the_windows_and_absolute_paths(probe: dict[str, Any]) -> None:
    """The dbt vars come from the training_windows XCom, and dbt gets the data dir's absolute
    path (Cosmos runs it in a temporary copy of the project)."""
    for group in ("features", "ranking"):
        tasks = probe["dags"]["recsys_training"]["tasks"]
        task = next(t for tid, t in tasks.items() if tid.startswith(f"{group}."))
        assert set(task["vars"]) == {"cutoff_at", "label_end_at"}
        for name, template in task["vars"].items():
            assert "xcom_pull(task_ids='training_windows')" in template
            assert f"['{name}']" in template
        assert Path(task["env"]["RECSYS_DATA_DIR"]).is_absolute()
    daily = probe["dags"]["recsys_features"]["tasks"]["features.events_run"]
    assert daily["vars"] is None  # as of the latest event


def _target_flags(command: list[str]) -> list[str]:
    return [command[i + 1] for i, flag in enumerate(command) if flag == "--target"]


def test_every_dag_takes_the_dbt_target_as_a_param(probe: dict[str, Any]) -> None:
    """Default: RECSYS_DBT_TARGET, else the profile's (a local lake here, no variable: local)."""
    for dag_id in DAG_IDS:
        assert "dbt_target" in probe["dags"][dag_id]["params"], dag_id
        assert probe["dbt_target"][dag_id]["default"] == "local", dag_id


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_a_runs_dbt_target_reaches_every_dbt_command(probe: dict[str, Any], dag_id: str) -> None:
    """A run triggered with {"dbt_target": "spark"}: every dbt task (each model's and the
    tests') renders it into its env and invokes dbt with `--target spark`, the one `--target`
    of the command, though its ProfileConfig was parsed with the default; the in-process Spark
    gets a Java runtime. A run without it builds on the default. The Python tasks' settings,
    which the `recsys` commands' functions get, name the run's target too."""
    found = probe["dbt_target"][dag_id]
    for case, target in (("spark", "spark"), ("no_conf", "local")):
        tasks = found[case]["tasks"]
        assert len(tasks) > 1, dag_id
        executed = [t for t in tasks.values() if t["invoked"] is not None]
        test_tasks = [tid for tid in tasks if tid.endswith(f".{TEST_TASK}")]
        assert test_tasks, dag_id
        assert len(executed) == (len(tasks) if case == "spark" else 1 + len(test_tasks)), case
        for task_id, task in tasks.items():
            assert task["parse_time_target"] == "local", task_id
            assert task["rendered_env"] == target, (case, task_id)
            assert task["profile_target"] == target, (case, task_id)
            invoked = task["invoked"]
            if invoked is None:
                continue
            assert _target_flags(invoked["command"]) == [target], (case, invoked["command"])
            assert invoked["env"]["RECSYS_DBT_TARGET"] == target, (case, task_id)
            if target == "spark":
                assert invoked["env"]["JAVA_HOME"], task_id
        assert found[case]["run_settings"] == found[case]["dbt_env"] == target, case


def test_the_dags_tasks_never_pass_the_parse_time_settings() -> None:
    """Every task gives the `recsys` commands' functions `common.run_settings()` (the run's
    dbt target), never the module's SETTINGS (the environment's)."""
    for dag_id in DAG_IDS:
        text = (DAGS_DIR / f"{dag_id}.py").read_text()
        assert not re.search(r"\bSETTINGS\b", text), dag_id
        assert "common.run_settings()" in text, dag_id


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_an_invalid_dbt_target_is_refused(probe: dict[str, Any], dag_id: str) -> None:
    refused = probe["dbt_target"][dag_id]["refused"]
    for value, error in refused.items():
        assert error is not None, f"{value!r} accepted as a dbt target"
        assert error.startswith("ParamValidationError") and "dbt_target" in error, error
    at_run_time = probe["dbt_target"]["_refused_at_run_time"]
    assert "not a dbt target name" in at_run_time["hook"]
    assert "dbt_target_param" in at_run_time["hook"]  # says what the DAG lacks
    assert "not a dbt target name" in at_run_time["run_settings"]


def test_every_task_is_in_the_one_slot_warehouse_pool(probe: dict[str, Any]) -> None:
    """DuckDB: one writer per file. No two tasks of these DAGs ever run at once."""
    for dag_id, dag in probe["dags"].items():
        assert dag["max_active_runs"] == 1, dag_id
        outside = {
            tid: (t["pool"], t["pool_slots"])
            for tid, t in dag["tasks"].items()
            if (t["pool"], t["pool_slots"]) != (POOL, 1)
        }
        assert not outside, f"{dag_id}: tasks outside the {POOL} pool: {outside}"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"airflow pools set {POOL} 1 " in makefile  # the pool `make airflow` creates


def test_every_task_runs_inside_the_warehouse_lease(probe: dict[str, Any]) -> None:
    for dag_id, dag in probe["dags"].items():
        tasks = dag["tasks"]
        setups = [tid for tid, t in tasks.items() if t["is_setup"]]
        teardowns = [tid for tid, t in tasks.items() if t["is_teardown"]]
        assert setups == ["claim_warehouse"], dag_id
        assert teardowns == ["release_warehouse"], dag_id
        roots = {tid for tid, t in tasks.items() if not t["upstream"]}
        assert roots == {"claim_warehouse"}, dag_id
        leaves = {tid for tid in tasks if not any(tid in t["upstream"] for t in tasks.values())}
        assert leaves == {"release_warehouse"}, dag_id


def test_lease_admits_one_run_at_a_time(probe: dict[str, Any]) -> None:
    assert probe["lease"] == [True, False, True, False, "a/run1", True, True, "b/run1"]


def test_a_lease_whose_run_died_is_taken_over_once(probe: dict[str, Any]) -> None:
    stale = probe["stale_lease"]
    assert stale["a_claims"] is True
    assert stale["b_waits_while_a_runs"] is False and stale["holder_while_a_runs"] == "a/run1"
    assert stale["takeovers"] == 1  # four runs waiting: exactly one takes it
    assert stale["new_holder"].startswith("c/run") and stale["lease"]["since"]
    assert stale["old_form"] == "old/run-from-before"


def test_lineage_from_raw_events_to_the_snapshot(probe: dict[str, Any], manifest: Path) -> None:
    tasks = probe["dags"]["recsys_training"]["tasks"]
    assert tasks["ingest"]["inlets"] == ["recsys.landing.events"]
    assert set(tasks["ingest"]["outlets"]) == {
        "recsys.raw.events",
        "recsys.raw.item_properties",
        "recsys.raw.category_tree",
    }
    marts = [
        node["name"]
        for node in _manifest_models(manifest, None).values()
        if node["fqn"][1] == "marts"
    ]
    assert marts
    for mart in marts:
        task = tasks[f"features.{mart}_run"]
        assert task["outlets"] == [f"recsys.features.{mart}"]
        assert "recsys.raw.events" in task["inlets"]
        assert f"recsys.features.{mart}" in tasks["publish"]["inlets"]
    assert tasks["train_ranker"]["outlets"] == ["recsys.models.ranker"]
    assert tasks["evaluate"]["outlets"] == ["recsys.reports.metrics"]
    assert tasks["publish"]["outlets"] == ["recsys.snapshots"]
    daily = probe["dags"]["recsys_features"]["tasks"]
    assert daily["features.interactions_run"]["outlets"] == ["recsys.features.interactions"]


def test_monitoring_triggers_training_only_through_the_policy(probe: dict[str, Any]) -> None:
    """Hourly: ingest, the monitoring models with the vars `prepare` found, the decision; the
    trigger of recsys_training waits for the short-circuit on the decision, inside the lease."""
    tasks = probe["dags"]["recsys_monitoring"]["tasks"]
    model_tasks = [t for tid, t in tasks.items() if tid.startswith("monitoring.")]
    assert model_tasks
    for task in model_tasks:
        if task["vars"] is None:  # the group's test task
            continue
        assert set(task["vars"]) == {"cutoff_at", "monitoring_reference_version"}
        assert all("xcom_pull(task_ids='prepare')" in v for v in task["vars"].values())
    assert {"ingest", "prepare", f"monitoring.{TEST_TASK}"} <= _ancestors(tasks, "decide")
    assert tasks["should_retrain"]["upstream"] == ["decide"]
    assert tasks["trigger_training"]["upstream"] == ["should_retrain"]
    assert "trigger_training" in tasks["release_warehouse"]["upstream"]


def test_quality_gate_branches_on_the_gate(probe: dict[str, Any]) -> None:
    gate = probe["gate"]
    assert gate["worse"] == "gate_refused"
    assert gate["worse_forced"] == "publish"
    assert gate["better"] == gate["better_forced"] == "publish"
    assert gate["better_reasons"] == []
    assert len(gate["worse_reasons"]) == 1
    assert "below popularity's" in gate["worse_reasons"][0]


def test_ingest_without_raw_dir_takes_only_landed_events_once(probe: dict[str, Any]) -> None:
    landing = probe["landing"]
    assert landing["first"] == {"landed_events": {"accepted": 2, "rejected": 1, "unchanged": False}}
    assert landing["again"] == {}
    (part,) = landing["raw_parts"]  # one part per chunk of landed files
    assert part.startswith("landed-chunk-")
    assert landing["left_in_landing"] == []


def test_missing_or_stale_manifest_is_said_clearly(probe: dict[str, Any]) -> None:
    manifest = probe["manifest"]
    assert "not found" in manifest["missing"]
    assert "make airflow" in manifest["missing"]
    assert manifest["fresh"] == []
    assert [Path(p).name for p in manifest["stale"]] == ["m.sql"]


def test_cosmos_telemetry_is_off_unless_asked_for(tmp_path: Path, manifest: Path) -> None:
    """No usage metrics leave the machine from a process that loads the DAGs."""
    env = airflow_env(tmp_path, manifest)
    env.pop("AIRFLOW__COSMOS__ENABLE_TELEMETRY")
    env["PYTHONPATH"] = str(DAGS_DIR)
    check = "import recsys_airflow.dbt_graph, cosmos.telemetry as t; print(t.should_emit())"
    for asked, expected in ((None, "False"), ("True", "True")):
        if asked:
            env["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] = asked
        out = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().splitlines()[-1] == expected
