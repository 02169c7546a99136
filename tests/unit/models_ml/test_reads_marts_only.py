"""Training and evaluation read what dbt built, never raw or staged events of their own.

The evaluation's session steps and window visitors, and the event weighting, are dbt models
(label_window_session_steps, label_window_visitors, int_events_weighted); the ML tables are read
back through their staging models. A query in `models_ml` that reads the raw events' staging
model or the `ml` schema's tables directly would fork one of those definitions again.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# The publisher copies the ML tables into the snapshot as they are (models_ml/snapshot.py):
# that is the one place that reads them directly, on purpose.
DIRECT_ML_READERS = {"snapshot.py"}
FORBIDDEN = {
    "the raw events' staging model": re.compile(r"\b(from|join)\s+(\w+\.)?stg_retailrocket__\w+"),
    "an ML table instead of its staging model": re.compile(r"\b(from|join)\s+(\w+\.)?ml\.als_\w+"),
}


def offending_lines(source: Path) -> list[str]:
    found = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        for what, pattern in FORBIDDEN.items():
            if what.startswith("an ML table") and source.name in DIRECT_ML_READERS:
                continue
            if pattern.search(line):
                found.append(f"{source.name}:{number}: {what}: {line.strip()}")
    return found


def test_models_ml_reads_dbt_models_only() -> None:
    found = [
        line
        for source in sorted((ROOT / "models_ml").glob("*.py"))
        for line in offending_lines(source)
    ]
    assert not found, "\n".join(found)


def test_the_check_notices_a_query_of_staged_events(tmp_path: Path) -> None:
    module = tmp_path / "evaluation.py"
    module.write_text('QUERY = "select visitor_id from stg_retailrocket__events"\n')
    assert offending_lines(module) == [
        "evaluation.py:1: the raw events' staging model: "
        'QUERY = "select visitor_id from stg_retailrocket__events"'
    ]
