"""The ranking features have one list of names (`recsys.ranking_features`), and it is dbt's.

The ranker is trained on dbt's `ranking_features` mart, a snapshot's ranker is checked against
FEATURE_COLUMNS, and the API computes them at request time: a column added to the mart's
contract and not to the list, or the reverse, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recsys.ranking_features import FEATURE_COLUMNS, ITEM_FEATURES, KEY_COLUMNS, VISITOR_FEATURES
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


MART_SQL = DBT_PROJECT_DIR / "models" / "ranking" / "ranking_features.sql"
# a select item that takes a feature straight from a mart: `<mart>.<column> [as <feature>],`
# or `coalesce(<mart>.<column>, <default>) as <feature>,`, alone on its line
_DIRECT = re.compile(
    r"^\s*(?:coalesce\((?P<mart>item_features|visitor_features)\.(?P<column>\w+),\s*"
    r"(?P<default>[^)]+)\)|(?P<mart2>item_features|visitor_features)\.(?P<column2>\w+))"
    r"(?:\s+as\s+(?P<feature>\w+))?\s*,?\s*$"
)
KEPT_APART = {"category_id", "root_category_id", "is_available"}  # the API's lookups


def direct_features(sql: str) -> dict[str, dict[str, tuple[str, float | None]]]:
    """{mart: {feature: (column, default)}} of the features ranking_features.sql takes
    straight from item_features and visitor_features."""
    found: dict[str, dict[str, tuple[str, float | None]]] = {}
    for line in sql.splitlines():
        match = _DIRECT.match(line)
        if not match:
            continue
        mart = match["mart"] or match["mart2"]
        column = match["column"] or match["column2"]
        feature = match["feature"] or column
        if feature in KEPT_APART:
            continue
        default = None if match["default"] is None else float(match["default"])
        found.setdefault(mart, {})[feature] = (column, default)
    return found


def test_item_and_visitor_features_are_those_of_the_marts_sql() -> None:
    """ITEM_FEATURES / VISITOR_FEATURES (what the snapshot carries and the API defaults) are
    the mart's own mapping: a feature added to or dropped from either side fails here."""
    found = direct_features(MART_SQL.read_text())
    assert found["item_features"] == ITEM_FEATURES
    assert found["visitor_features"] == VISITOR_FEATURES
    assert set(ITEM_FEATURES) | set(VISITOR_FEATURES) <= set(FEATURE_COLUMNS)


def test_a_feature_added_to_the_sql_only_is_noticed() -> None:
    sql = MART_SQL.read_text().replace(
        "        item_features.price,\n",
        "        item_features.price,\n"
        "        coalesce(item_features.n_views_1d, 0) as item_views_1d,\n",
    )
    assert "item_views_1d" in direct_features(sql)["item_features"]
    assert direct_features(sql)["item_features"] != ITEM_FEATURES
