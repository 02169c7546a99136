"""Settings, default arguments, the warehouse pool and lease, and the assets of both DAGs.

DuckDB allows one writer per file, and a reader cannot open the file while another process
writes it. Two rules keep `warehouse.duckdb` safe:

- every task of both DAGs runs in `WAREHOUSE_POOL`, a pool of one slot (`default_args`), so no
  two of them ever run at once, whichever DAG they belong to (dbt tasks of one Cosmos group
  included: the group would otherwise run independent models side by side);
- a DAG run holds the warehouse lease (`claim_warehouse` ... `release_warehouse`, a setup and
  teardown pair) from its first task to its last, so another DAG's tasks cannot slip in
  between two of its tasks and rebuild the features under it (the pool orders tasks, not runs).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, BaseOperator, Param, get_current_context, task

from recsys.atomic import write_atomic
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Read where the DAG is parsed, and again in each task's process (Airflow parses the DAG file
# there too): the scheduler and the workers must see the same RECSYS_* environment.
SETTINGS: Settings = get_settings()

WAREHOUSE_POOL = "recsys_warehouse"
WAREHOUSE_POOL_SLOTS = 1
LEASE_PATH = Path(
    os.environ.get("RECSYS_WAREHOUSE_LEASE") or SETTINGS.data_dir / "airflow" / "warehouse.lease"
)

# the CSV folder a scheduled run ingests (a DAG param overrides it); unset: only the events the
# API landed in the lake's landing/events/
DEFAULT_RAW_DIR = os.environ.get("RECSYS_RAW_DIR") or None

# The dbt target of a run: an output of the dbt profile (dbt_project/profiles.yml), named by the
# `dbt_target` param of every DAG (`dbt_target_param`). Its default is the environment's
# (RECSYS_DBT_TARGET), else the profile's own default (`s3` for an s3:// lake, else `local`).
# A name as Settings.recsys_dbt_target and `recsys build --target` accept it.
DBT_TARGET_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
DEFAULT_DBT_TARGET = SETTINGS.recsys_dbt_target or (
    "s3" if SETTINGS.lake_uri.startswith("s3://") else "local"
)
# the profile's DuckDB targets: the warehouse file the Python steps (summary, ALS, ...) read
DUCKDB_TARGETS = ("local", "s3")

START_DATE = datetime(2025, 1, 1)
DEFAULT_ARGS: dict[str, object] = {
    "owner": "recsys",
    "pool": WAREHOUSE_POOL,
    "pool_slots": 1,
    # a failed stage is a data or code problem (dbt tests, too little data, refused S3
    # credentials), which a retry would only repeat: fix it, then clear the task
    "retries": 0,
}


def say(message: str) -> None:
    """The pipeline's progress lines, into the task log."""
    log.info(message)


def ingest_lake(raw_dir: str | None, settings: Settings = SETTINGS) -> dict[str, Any]:
    """`recsys ingest --raw-dir raw_dir` when a folder is given (the API's landed events and
    impressions are ingested with it); without one, the landed files alone. Rows per table, for
    the XCom."""
    from recsys.ingest import ingest_all_landing, ingest_folder
    from recsys.lake import TEMP_PREFIX, Lake

    if raw_dir:
        reports = ingest_folder(Path(raw_dir), settings, say=say)
    else:
        say("no raw_dir: ingesting the events and impressions the API landed, if any")
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
            reports = ingest_all_landing(
                Lake.from_settings(settings), Path(tmp), say, settings.max_event_timestamp_ms()
            )
        if not reports:
            say("no landed events or impressions waiting")
    return {
        r.table: {"accepted": r.accepted, "rejected": r.rejected, "unchanged": r.unchanged}
        for r in reports
    }


# --- the warehouse lease ------------------------------------------------------------------


def lease_owner(dag_id: str, run_id: str) -> str:
    return f"{dag_id}/{run_id}"


def run_params() -> dict[str, Any]:
    """The running DAG run's params (defaults merged with the trigger's conf)."""
    return dict(get_current_context()["params"])


def settings_for_target(target: str, settings: Settings = SETTINGS) -> Settings:
    """`settings` with `target` as the dbt target (RECSYS_DBT_TARGET): what `recsys build
    --target` does. ValueError for a name the param's pattern refuses."""
    if not re.fullmatch(DBT_TARGET_PATTERN, target):
        raise ValueError(f"not a dbt target name: {target[:70]!r} (the dbt_target param)")
    return settings.model_copy(update={"recsys_dbt_target": target})


def run_settings() -> Settings:
    """The settings of the running DAG run: SETTINGS with its `dbt_target` param, so that each
    dbt command a task runs (through `recsys.warehouse`) builds on the run's target. Every task
    passes these, never SETTINGS, to the functions the `recsys` commands call."""
    return settings_for_target(str(run_params().get("dbt_target") or DEFAULT_DBT_TARGET))


def current_owner() -> str:
    """The running task's DAG run, as the lease names it."""
    context = get_current_context()
    return lease_owner(context["dag"].dag_id, context["run_id"])


def claim_warehouse(
    owner: str,
    path: Path = LEASE_PATH,
    holder_running: Callable[[str], bool] | None = None,
) -> bool:
    """Take the warehouse for `owner` (a DAG run); False while another run holds it.

    The lease is a file created exclusively (`O_EXCL`), so two claims never both succeed; it
    names its holder and since when. A run that already holds it (a cleared, re-run task)
    claims it again. A lease whose holder is no longer running (`holder_running`, which asks
    Airflow for the holder's run state; a run that died with Airflow, or was deleted) is taken
    over: under a lock beside the lease, so that of two runs waiting for it only one takes it,
    and only after reading again that it is still that holder's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        lease = read_lease(path)
        holder = lease.get("owner") if lease else None
        if holder == owner:
            return True
        if holder is not None and holder_running is not None and not holder_running(holder):
            return _take_over(owner, holder, path)
        since = lease.get("since", "?") if lease else "?"
        say(
            f"the warehouse is held by {holder} since {since} ({path}); waiting until that run "
            "ends (a lease whose run is no longer running is taken over)"
        )
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(_lease_text(owner))
    say(f"warehouse claimed by {owner}")
    return True


def _lease_text(owner: str) -> str:
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return json.dumps({"owner": owner, "since": since, "host": socket.gethostname()}) + "\n"


def _take_over(owner: str, stale: str, path: Path) -> bool:
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one taker at a time; released on close
        lease = read_lease(path)
        if lease is not None and lease.get("owner") != stale:
            return lease.get("owner") == owner  # someone else took it meanwhile
        write_atomic(path, _lease_text(owner))
    say(f"warehouse taken over by {owner} from {stale}, whose run is no longer running")
    return True


def read_lease(path: Path = LEASE_PATH) -> dict[str, str] | None:
    """The lease's holder and since when; None when nobody holds it. (A lease written before
    the holder's time was recorded is the holder's name alone.)"""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        lease = json.loads(text)
    except ValueError:
        return {"owner": text}
    return {str(k): str(v) for k, v in lease.items()} if isinstance(lease, dict) else None


def lease_holder(path: Path = LEASE_PATH) -> str | None:
    lease = read_lease(path)
    return lease.get("owner") if lease else None


def run_is_running(holder: str) -> bool:
    """Whether the DAG run a lease names is queued or running, as Airflow's metadata says
    (asked through the task SDK, from inside a task)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    dag_id, _, run_id = holder.partition("/")
    count = RuntimeTaskInstance.get_dr_count(
        dag_id=dag_id, run_ids=[run_id], states=["queued", "running"]
    )
    return count > 0


def claim_for_this_run() -> bool:
    return claim_warehouse(current_owner(), holder_running=run_is_running)


def release_for_this_run() -> None:
    release_warehouse(current_owner())


def warehouse_lease() -> tuple[BaseOperator, BaseOperator]:
    """The tasks that hold the warehouse for a DAG run: `claim_warehouse`, a setup that waits
    (rescheduling itself, without a worker slot) until no other run holds it, and
    `release_warehouse`, its teardown, which runs whatever happened in between. Put every
    other task between them."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.providers.standard.sensors.python import PythonSensor

    claim = PythonSensor(
        task_id="claim_warehouse",
        python_callable=claim_for_this_run,
        mode="reschedule",
        poke_interval=60,
        timeout=6 * 3600,
        doc_md="Wait until no other DAG run holds the warehouse, then hold it.",
    )
    release = PythonOperator(
        task_id="release_warehouse",
        python_callable=release_for_this_run,
        doc_md="Give the warehouse back, whatever happened before.",
    )
    return claim, release.as_teardown(setups=claim)


def release_warehouse(owner: str, path: Path = LEASE_PATH) -> bool:
    """Give the warehouse back; only its holder can (True when it did)."""
    holder = lease_holder(path)
    if holder != owner:
        say(f"warehouse lease not held by {owner} (holder: {holder}); nothing to release")
        return False
    path.unlink(missing_ok=True)
    say(f"warehouse released by {owner}")
    return True


# --- assets: lineage from raw events to the published snapshot -----------------------------

ASSET_GROUP = "recsys"
RAW_TABLES = ("events", "item_properties", "category_tree")


def _lake_uri(rel: str, settings: Settings = SETTINGS) -> str:
    # as Lake.url spells it, without opening the lake (parsing a DAG touches no storage)
    url = f"{settings.lake_uri.rstrip('/')}/{rel}"
    return url if "://" in url else Path(url).as_uri()


def lake_asset(name: str, rel: str, settings: Settings = SETTINGS) -> Asset:
    """An asset on a path of the lake (a local folder or S3, as RECSYS_LAKE_URI says)."""
    return Asset(name=f"recsys.{name}", uri=_lake_uri(rel, settings), group=ASSET_GROUP)


def local_asset(name: str, path: Path) -> Asset:
    """An asset on a file under RECSYS_DATA_DIR (models and reports stay local)."""
    return Asset(name=f"recsys.{name}", uri=path.resolve().as_uri(), group=ASSET_GROUP)


# the API's accepted events, waiting for the next ingest (written outside Airflow)
LANDED_EVENTS = lake_asset("landing.events", "landing/events")
RAW_ASSETS: dict[str, Asset] = {t: lake_asset(f"raw.{t}", f"raw/{t}") for t in RAW_TABLES}


def feature_asset(mart: str) -> Asset:
    """A feature mart as exported to the lake (`features/<feature_version>/<mart>.parquet`;
    the asset stands for the latest export, whatever its feature version)."""
    return lake_asset(f"features.{mart}", f"features/{mart}")


RANKER = local_asset("models.ranker", SETTINGS.ranker_dir)
METRICS = local_asset("reports.metrics", SETTINGS.metrics_path)
SNAPSHOT = lake_asset("snapshots", "snapshots")


def raw_dir_param() -> Param:
    """The `raw_dir` param of both DAGs."""
    return Param(
        DEFAULT_RAW_DIR,
        type=["null", "string"],
        description="CSV folder to ingest first (events.csv, ...); empty: only the events "
        "the API landed",
    )


def dbt_target_param() -> Param:
    """The `dbt_target` param of every DAG: the dbt profile's target its dbt commands build on,
    the Cosmos groups' and those the tasks run through `recsys.warehouse` alike."""
    return Param(
        DEFAULT_DBT_TARGET,
        type="string",
        pattern=DBT_TARGET_PATTERN,
        description="dbt target (an output of dbt_project/profiles.yml: local, s3, spark, ...) "
        "of every dbt command of the run; default: RECSYS_DBT_TARGET, else the profile's",
    )


@task(inlets=[LANDED_EVENTS], outlets=list(RAW_ASSETS.values()))
def ingest() -> dict[str, Any]:
    """The CSVs of `raw_dir` (if given) and the API's landed events -> the lake's raw/.

    Skipped, with the reason in its log, when the lake still has no raw events after it (a
    fresh set-up's first scheduled run): every task after it is skipped too, and the run ends
    without a failure to clear."""
    settings = run_settings()
    rows = ingest_lake(run_params().get("raw_dir"), settings)
    skip_without_events(settings)
    return rows


def skip_without_events(settings: Settings = SETTINGS) -> None:
    """AirflowSkipException saying what to do when the lake has no raw events yet."""
    from airflow.sdk.exceptions import AirflowSkipException

    from recsys.ingest import NoEvents, require_events
    from recsys.lake import Lake

    try:
        require_events(Lake.from_settings(settings))
    except NoEvents as exc:
        log.warning("%s", exc)
        raise AirflowSkipException(str(exc)) from None
