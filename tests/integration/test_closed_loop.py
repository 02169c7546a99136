"""The closed loop end to end, as `recsys loop` runs it: the real service with an experiments
file, simulated shoppers over HTTP, ingest, `recsys build`, and the warehouse's answer.

What the service showed reaches `raw/impressions/` once per answer, the shoppers' events come
back attributed to it (by the impression id they carry), and the experiment is analysed with
the controls and weights of the file the service split traffic by.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.lake import connect_duckdb
from recsys.loop import Phase, run_loop
from tests.conftest import TinyRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENTS = """
version: 1
experiments:
  - name: tiny_ab
    variants:
      - {name: ranked, weight: 3, policy: ranker}
      - {name: popular, weight: 1, policy: popularity}
"""


def test_the_loop_closes(tiny_run: TinyRun, tiny_raw: Path, tmp_path: Path) -> None:
    assert tiny_run.exit_code == 0, tiny_run.output[-3000:]
    data_dir = tiny_run.copy(tmp_path / "data")
    said: list[str] = []
    warehouse = run_loop(
        data_dir,
        [Phase(EXPERIMENTS, seed=7, shoppers=300, duration=60)],
        raw_dir=tiny_raw,
        say=said.append,
        quiet_simulator=True,
    )
    lake = data_dir / "lake"
    logged = [
        json.loads(line)
        for path in (lake / "landing" / "impressions" / "_ingested").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert logged, said
    with connect_duckdb(warehouse, read_only=True) as con:

        def one(sql: str) -> tuple:
            row = con.execute(sql).fetchone()
            assert row is not None
            return tuple(row)

        # every logged answer reached the lake once
        (raw, distinct) = one(
            f"select count(*), count(distinct impression_id) from read_parquet("
            f"'{lake}/raw/impressions/*.parquet')"
        )
        assert raw == distinct == len(logged)
        # answers split 3:1 by the file, the control taken from it (its first variant), and
        # the sample-ratio check expecting 3:1 (a 50/50 expectation would flag it)
        variants = dict(
            con.execute(
                "select variant, n_visitors from experiment_results "
                "where experiment = 'tiny_ab' and metric = 'ctr'"
            ).fetchall()
        )
        assert set(variants) == {"ranked", "popular"}
        assert variants["ranked"] > variants["popular"]
        (control,) = one(
            "select distinct control_variant from experiment_results where experiment = 'tiny_ab'"
        )
        assert control == "ranked"
        (mismatch,) = one(
            "select bool_or(has_sample_ratio_mismatch) from experiment_results "
            "where experiment = 'tiny_ab'"
        )
        assert mismatch is False
        # shoppers clicked recommended items and said which answer they came from
        (by_id, viewed) = one(
            "select count(*) filter (where is_attributed_by_impression_id), "
            "count(*) filter (where is_viewed) from recommendation_outcomes"
        )
        assert by_id > 0 and viewed >= by_id
        (impressions,) = one(
            "select sum(n_impressions) from business_metrics_daily where n_impressions > 0"
        )
        assert impressions == len(logged)
