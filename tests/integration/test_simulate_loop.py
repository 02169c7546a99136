"""`recsys simulate` against the real service (`recsys serve` on 127.0.0.1): the shoppers' events
land in `landing/events/`, and those of recommended items carry the impression id of the list
they came from, which the service logged in `landing/impressions/`."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from recsys.generate import LATENT_FILE
from recsys.lake import Lake
from recsys.settings import REPO_ROOT
from tests import service
from tests.api_snapshots import publish_world
from tests.service import clean_env
from tests.unit.api.conftest import KEY, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_simulated_shoppers_land_events_with_impression_ids(tiny_raw: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    lake_root = data / "lake"
    publish_world(Lake.from_settings(make_settings(data)))
    env = clean_env(
        RECSYS_DATA_DIR=str(data),
        RECSYS_API_KEYS=KEY,
        RECSYS_IMPRESSIONS_FLUSH_SECONDS="0.2",
    )
    with service.serving(env, tmp_path / "serve.log") as url:
        first = httpx.get(
            f"{url}/v1/recommendations/1001?k=3", headers={"X-API-Key": KEY}, timeout=10
        )
        assert first.status_code == 200, first.text
        simulated = subprocess.run(
            [
                sys.executable,
                "-m",
                "recsys.cli",
                "simulate",
                "--api-url",
                url,
                "--latent",
                str(tiny_raw / LATENT_FILE),
                "--duration",
                "4",
                "--seed",
                "3",
                "--boost",
                "30",
                "--no-progress",
            ],
            cwd=REPO_ROOT,
            env=env,  # the key: the first of RECSYS_API_KEYS
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = simulated.stdout
    assert simulated.returncode == 0, simulated.stderr + output
    posted = int(re.search(r"events posted: ([\d,]+)", output)[1].replace(",", ""))  # type: ignore[index]
    assert re.search(r"recommendation calls: [\d,]+ \(0 failed\)", output), output
    assert "refused: 0" in output, output

    rows = []
    for path in sorted((lake_root / "landing" / "events").glob("*.csv")):
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    assert len(rows) == posted > 100
    with np.load(tiny_raw / LATENT_FILE, allow_pickle=False) as latent:
        known_visitors = set(latent["visitor_id"].tolist())
        newest_known = int(latent["visitor_id"].max())
        items = set(latent["item_id"].tolist())
    visitors = {int(r["visitorid"]) for r in rows}
    assert visitors & known_visitors and {v for v in visitors if v > newest_known}
    # the shoppers act on the shop's items (the snapshot's lists name some of them)
    assert {int(r["itemid"]) for r in rows} <= items
    assert {r["event"] for r in rows} >= {"view", "addtocart"}

    if "impression_id" not in first.json():
        pytest.skip(
            "the API's answers carry no impression_id yet: events landed without one; the "
            "impression-id assertions wait for the API change"
        )
    marked = [r["impression_id"] for r in rows if r.get("impression_id")]
    assert marked and all(HEX32.match(i) for i in marked)
    logged = set()
    for path in (lake_root / "landing" / "impressions").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            logged.add(json.loads(line)["impression_id"])
    assert set(marked) <= logged  # every event's impression was one the service showed
