"""The example production profiles (dbt_project/profiles/examples/), as far as offline allows.

No cluster and no AWS account here, so nothing connects; what can be checked is checked with
the real adapters (dbt-spark with its PyHive client, dbt-athena: the dev group):

- each file says when and how to use it, its limits and which models go incremental first, and
  takes every secret, host and region from the environment;
- dbt renders each target through its own profile loading and the adapter's credentials class
  accepts it (SparkCredentials, AthenaCredentials: their checks run when they are built), with
  the values the comments promise (the lake prefix, port 10000, the session time zone, ...); a
  target whose secret is not in the environment is refused;
- `dbt parse` of the project succeeds with each target, as the files' comments say to run it
  (the file as the profiles.yml of a folder of its own): parse renders the profile, loads the
  adapter and resolves every macro's dispatch for it, but opens no connection. (Parse does not
  run SQL: whether Athena accepts the models' SQL is not checked here; dbt_project/README.md,
  "Engines", lists what an Athena build still needs.)

dbt runs in subprocesses: each adapter registers itself in dbt's process-wide state, and the
suite's other tests run dbt-duckdb in-process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys.settings import DBT_PROJECT_DIR, REPO_ROOT, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = DBT_PROJECT_DIR / "profiles" / "examples"
# target -> (the example file, the adapter, the credentials class dbt builds for it)
TARGETS = {
    "spark_thrift": ("spark_thrift.yml", "spark", "SparkCredentials"),
    "spark_http": ("spark_thrift.yml", "spark", "SparkCredentials"),
    "athena": ("athena.yml", "athena", "AthenaCredentials"),
}
DBT = str(Path(sys.executable).parent / "dbt")
LAKE = "s3://example-bucket/recsys/"  # with the trailing slash a user may well write
# what a deployment sets (made-up values: nothing connects)
EXAMPLE_ENV = {
    "RECSYS_LAKE_URI": LAKE,
    "AWS_REGION": "eu-west-1",
    "RECSYS_SPARK_HOST": "spark-primary.example.invalid",
    "RECSYS_DATABRICKS_HOST": "dbc-0000.cloud.databricks.example.invalid",
    "RECSYS_DATABRICKS_CLUSTER": "0123-456789-abcdefgh",
    "DBT_ENV_SECRET_DATABRICKS_TOKEN": "dapi-not-a-real-token",
}
# keys whose value is a secret: only ever an env_var() without a default
SECRET_KEYS = {
    "token",
    "password",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
}
ENV_VAR_ONLY = re.compile(r"^\{\{ env_var\('[A-Z][A-Z0-9_]*'\) \}\}$")
# The project's macro that dbt-athena finds no version of (macros/lake.sql has duckdb__ and
# spark__ only): dbt's parse resolves every adapter.dispatch() statically, so it stops there.


def example_env(**changes: str | None) -> dict[str, str]:
    """This process's environment without the project's, dbt's and AWS's variables (a test must
    not read the developer's), plus EXAMPLE_ENV; `changes` set (or, None, remove) more."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "DBT_", "AWS_"))}
    env.update(EXAMPLE_ENV)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def profiles_dir(example: str, root: Path) -> Path:
    """A folder whose profiles.yml is `example`, as the files' comments say to use them (dbt
    reads profiles.yml in --profiles-dir, no other file)."""
    folder = root / Path(example).stem
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLES / example, folder / "profiles.yml")
    return folder


def dbt_parse(project: Path, target: str, root: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`dbt parse` of `project` with an example target; its artifacts and logs under `root`,
    none in the project folder."""
    example = TARGETS[target][0]
    out = root / f"target-{target}"
    proc = subprocess.run(
        [
            DBT,
            "parse",
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(profiles_dir(example, root)),
            "--target",
            target,
            "--target-path",
            str(out),
            "--log-path",
            str(root / "logs"),
            "--no-use-colors",
        ],
        cwd=project,
        env=example_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out / "manifest.json"


# --- the files themselves ---------------------------------------------------------------


def header(example: str) -> str:
    """The comment block a file starts with."""
    lines = (EXAMPLES / example).read_text().splitlines()
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line.lstrip("# "))
    return "\n".join(block)


@pytest.mark.parametrize("example", sorted({t[0] for t in TARGETS.values()}))
def test_each_example_says_when_how_its_limits_and_what_goes_incremental(example: str) -> None:
    text = header(example)
    for section in ("When:", "How:", "Limits:", "Incremental first"):
        assert section in text, f"{example}: no {section!r} in its opening comment"
    for target, (file, _, _) in TARGETS.items():
        if file == example:
            assert f"--target {target}" in text or f"target `{target}`" in text, target
    # the models it names as the first to go incremental exist, and are the event-grained ones
    incremental = text[text.index("Incremental first") :]
    named = set(re.findall(r"`([a-z_]+)`", incremental))
    models = {p.stem for p in (DBT_PROJECT_DIR / "models").rglob("*.sql")}
    assert {"events", "sessions", "interactions"} <= named
    assert named <= models, f"not models of the project: {named - models}"
    assert "event_date" in incremental
    if example == "athena.yml":
        assert "100" in text and "TOO_MANY_OPEN_PARTITIONS" in text
        assert "+table_type: iceberg" in text
        assert "MERGE and DELETE need Iceberg" in text
    else:
        assert "+file_format: parquet" in text and "NOT NULL" in text
        assert all(f in text for f in ("Hive", "Delta", "Iceberg"))


@pytest.mark.parametrize("example", sorted({t[0] for t in TARGETS.values()}))
def test_secrets_hosts_and_regions_come_from_the_environment(example: str) -> None:
    profile = yaml.safe_load((EXAMPLES / example).read_text())
    outputs: dict[str, dict[str, Any]] = profile["recsys"]["outputs"]
    assert set(outputs) == {t for t, (file, _, _) in TARGETS.items() if file == example}
    pattern = next(m.pattern for m in Settings.model_fields["recsys_dbt_target"].metadata)
    for target, output in outputs.items():
        # a name RECSYS_DBT_TARGET, `recsys build --target` and the DAGs' param accept
        assert re.fullmatch(pattern, target), target
        for key in SECRET_KEYS & set(output):
            assert ENV_VAR_ONLY.match(str(output[key])), f"{target}.{key}: {output[key]!r}"
        for key in ("host", "region_name"):
            if key in output:
                assert "env_var(" in str(output[key]), f"{target}.{key} is written in the file"
    if example == "athena.yml":
        athena = outputs["athena"]
        assert athena["database"] == "awsdatacatalog"
        for key in ("s3_staging_dir", "s3_data_dir"):
            assert "env_var('RECSYS_LAKE_URI')" in athena[key], key


# --- dbt's own profile loading and the adapters' credentials ---------------------------------


def _render(out: str) -> None:
    """In the subprocess: each target through dbt's profile loading (env_var() rendered, the
    adapter's credentials class built, its checks run); then without a variable each needs."""
    from argparse import Namespace

    from dbt.config.profile import Profile, read_profile
    from dbt.config.renderer import ProfileRenderer
    from dbt.flags import set_from_args
    from dbt_common.context import set_invocation_context

    set_from_args(Namespace(), None)
    root = Path(out).parent

    def render(target: str) -> Any:
        set_invocation_context(dict(os.environ))  # env_var() reads the invocation's environment
        folder = profiles_dir(TARGETS[target][0], root)
        raw = read_profile(str(folder))
        return Profile.from_raw_profiles(raw, "recsys", ProfileRenderer({}), target_override=target)

    result: dict[str, Any] = {"rendered": {}, "refused": {}}
    for target in TARGETS:
        profile = render(target)
        result["rendered"][target] = {
            "class": type(profile.credentials).__name__,
            "type": profile.credentials.type,
            "threads": profile.threads,
            "credentials": profile.credentials.to_dict(),
        }
    for target, variable in (
        ("spark_thrift", "RECSYS_SPARK_HOST"),
        ("spark_http", "DBT_ENV_SECRET_DATABRICKS_TOKEN"),
        ("athena", "AWS_REGION"),
        ("athena", "RECSYS_LAKE_URI"),
    ):
        saved = os.environ.pop(variable)
        try:
            render(target)
            result["refused"][f"{target} without {variable}"] = None
        except Exception as exc:
            result["refused"][f"{target} without {variable}"] = str(exc)
        finally:
            os.environ[variable] = saved
    Path(out).write_text(json.dumps(result, default=str))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rendered")
    out = root / "rendered.json"
    code = f"from tests.integration.test_example_profiles import _render; _render({str(out)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=example_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_dbt_builds_each_adapters_credentials_from_its_target(rendered: dict[str, Any]) -> None:
    targets = rendered["rendered"]
    for target, (_, adapter, credentials_class) in TARGETS.items():
        assert targets[target]["class"] == credentials_class, target
        assert targets[target]["type"] == adapter, target
        assert targets[target]["threads"] >= 1, target

    thrift = targets["spark_thrift"]["credentials"]
    assert thrift["method"] == "thrift"
    assert thrift["host"] == EXAMPLE_ENV["RECSYS_SPARK_HOST"]
    assert (thrift["port"], thrift["user"], thrift["schema"]) == (10000, "hadoop", "main")
    http = targets["spark_http"]["credentials"]
    assert http["method"] == "http"
    assert http["host"] == EXAMPLE_ENV["RECSYS_DATABRICKS_HOST"]
    assert http["cluster"] == EXAMPLE_ENV["RECSYS_DATABRICKS_CLUSTER"]
    assert http["token"] == EXAMPLE_ENV["DBT_ENV_SECRET_DATABRICKS_TOKEN"]
    assert (http["organization"], http["schema"]) == ("0", "main")
    assert http["connect_retries"] > 0
    for spark in (thrift, http):
        parameters = spark["server_side_parameters"]
        assert parameters["spark.sql.session.timeZone"] == "UTC"  # as the local target's
        assert parameters["spark.sql.sources.partitionOverwriteMode"] == "dynamic"

    athena = targets["athena"]["credentials"]
    lake = LAKE.rstrip("/")
    assert athena["s3_staging_dir"] == f"{lake}/athena/results/"
    assert athena["s3_data_dir"] == f"{lake}/athena/tables/"
    assert athena["region_name"] == EXAMPLE_ENV["AWS_REGION"]
    assert (athena["database"], athena["schema"]) == ("awsdatacatalog", "main")
    assert athena["work_group"] == "primary"
    # no key in the file: boto3's own chain (environment, profile, role) gives the credentials
    assert athena["aws_access_key_id"] is None and athena["aws_secret_access_key"] is None


def test_a_target_is_refused_without_the_variables_it_reads(rendered: dict[str, Any]) -> None:
    for case, error in rendered["refused"].items():
        variable = case.rsplit(" ", 1)[-1]
        assert error is not None, f"{case}: rendered anyway"
        assert variable in error, f"{case}: {error}"


# --- dbt parse of the project -------------------------------------------------------------


@pytest.mark.parametrize("target", ["spark_thrift", "spark_http", "athena"])
def test_dbt_parses_the_project_with_each_example_target(target: str, tmp_path: Path) -> None:
    """Every model, macro and test of the project parses with the adapter of each example
    target (dbt resolves every adapter.dispatch at parse: a macro without a version for the
    adapter, nor a default one, fails here)."""
    proc, manifest = dbt_parse(DBT_PROJECT_DIR, target, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    parsed = json.loads(manifest.read_text())
    assert parsed["metadata"]["adapter_type"] == TARGETS[target][1]
    models = {n["name"] for n in parsed["nodes"].values() if n["resource_type"] == "model"}
    assert {"events", "sessions", "interactions", "drift_status"} <= models
