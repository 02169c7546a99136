"""Every dbt command the READMEs show runs as written, so that the READMEs cannot rot.

The commands are read out of README.md and dbt_project/README.md: inline code that starts with
`dbt ` (or `cd dbt_project && dbt `) and the code block's `uv run dbt ...` lines. Each runs in a
shell from dbt_project/ (where the READMEs say to run them) on a copy of tiny data, ingested and
built once (the READMEs' first command), with only RECSYS_DATA_DIR set, as a user would; `uv
run` is the project's virtualenv, first on PATH. A
command must succeed and select something: dbt only warns when a selection matches nothing
(the README's `--select analyses` compiled nothing for months).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.ingest import ingest
from recsys.lake import Lake
from recsys.settings import DBT_PROJECT_DIR, Settings
from recsys.warehouse import build
from tests.conftest import REPO_ROOT

READMES = (REPO_ROOT / "README.md", DBT_PROJECT_DIR / "README.md")
INLINE = re.compile(r"`((?:cd dbt_project && )?dbt [^`]+)`")
BLOCK = re.compile(r"^ {4}(uv run dbt .+?)(?:\s+#.*)?$", re.MULTILINE)
SELECTS_NOTHING = ("does not match any enabled nodes", "Nothing to do")


def readme_commands() -> list[str]:
    """The dbt commands of both READMEs, in order, each once (`uv run dbt x` is `dbt x`)."""
    found: dict[str, str] = {}
    for readme in READMES:
        text = readme.read_text()
        for match in sorted(
            [*INLINE.finditer(text), *BLOCK.finditer(text)], key=lambda m: m.start()
        ):
            command = match.group(1).strip()
            found.setdefault(command.removeprefix("uv run "), command)
    return list(found.values())


def test_the_readmes_show_the_commands_a_user_runs() -> None:
    commands = readme_commands()
    # what a user of the warehouse needs: a build, a build as of a cutoff, the analyses, docs
    assert any(c.endswith("dbt build") for c in commands), commands
    assert any("--vars" in c and "cutoff_at" in c for c in commands), commands
    assert any(c.endswith("dbt compile --select path:analyses") for c in commands), commands
    assert any("dbt docs generate" in c for c in commands), commands


@pytest.fixture(scope="module")
def built(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with tiny data ingested and built: where a user is after `dbt build`."""
    data_dir = tmp_path_factory.mktemp("readme") / "data"
    settings = Settings(recsys_data_dir=data_dir, recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    ingest(tiny_raw, Lake.from_settings(settings))
    build(settings, echo=False)
    return data_dir


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_dbt_command_runs_as_written(command: str, built: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(built, data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "DBT_"))}
    env["RECSYS_DATA_DIR"] = str(data_dir)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # a target folder of its own: what a command writes is its own doing, not an earlier one's
    env["DBT_TARGET_PATH"] = str(tmp_path / "target")
    env["DBT_LOG_PATH"] = str(tmp_path / "logs")
    # `cd dbt_project && ...` runs from the repository's root, the rest from dbt_project/
    shell = command.replace("uv run dbt ", "dbt ")
    result = subprocess.run(
        ["bash", "-c", shell],
        cwd=REPO_ROOT if shell.startswith("cd dbt_project") else DBT_PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert not [s for s in SELECTS_NOTHING if s in out], out[-3000:]
    target = tmp_path / "target"
    if " compile " in f"{shell} " and "analyses" in shell:
        compiled = sorted(p.name for p in (target / "compiled" / "recsys" / "analyses").glob("*"))
        assert compiled == sorted(p.name for p in (DBT_PROJECT_DIR / "analyses").glob("*.sql"))
    if "docs generate --static" in shell:
        assert (target / "static_index.html").stat().st_size > 0
    if "dbt build" in shell:
        assert "ERROR=0" in out
