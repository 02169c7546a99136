"""The ranking features have one list of names (`recsys.ranking_features`), and it is dbt's.

The ranker is trained on dbt's `ranking_features` mart, a snapshot's ranker is checked against
FEATURE_COLUMNS, and the API computes them at request time: a column added to the mart's
contract and not to the list, or the reverse, fails here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from recsys.ranking_features import FEATURE_COLUMNS, KEY_COLUMNS
from recsys.settings import DBT_PROJECT_DIR

CONTRACT = DBT_PROJECT_DIR / "models" / "ranking" / "ranking_features.yml"


def contract_columns(path: Path = CONTRACT) -> list[str]:
    spec = yaml.safe_load(path.read_text())
    (model,) = [m for m in spec["models"] if m["name"] == "ranking_features"]
    return [column["name"] for column in model["columns"]]


def test_feature_columns_are_the_marts_contract_in_order() -> None:
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    # dbt builds the mart to its contract: these names, in this order, or the build fails
    assert project["models"]["recsys"]["ranking"]["+contract"]["enforced"] is True
    assert contract_columns() == [*KEY_COLUMNS, *FEATURE_COLUMNS]
