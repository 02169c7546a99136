"""The import layers (pyproject's [tool.importlinter] contracts): they hold, and they can fail.

`api` uses only the core, `models_ml` the core, the DAGs' `recsys_airflow` the core and
`models_ml`; the core (`recsys`) reaches a deployable only through `recsys.cli`; no package has
an import cycle between its modules. The check runs `lint-imports` as `make lint` does; the
second test runs it on a copy of the code with one forbidden import added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"recsys": "recsys", "models_ml": "models_ml", "api": "api"}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `root` (and `root/dags`), with cwd's pyproject."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "dags")])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layers_hold() -> None:
    result = lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the API reaching into training
        ("api/responses.py", "import models_ml.publish", "The API uses only the core"),
        # the core reaching a deployable outside recsys.cli
        ("recsys/lake.py", "import api.schemas", "The core uses no deployable"),
        # a cycle: snapshot and features importing each other again
        ("api/snapshot.py", "import api.features", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_the_check(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    for name in PACKAGES.values():
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "dags" / "recsys_airflow",
        tmp_path / "dags" / "recsys_airflow",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path, tmp_path).returncode == 0  # the copy holds, as the original
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout
