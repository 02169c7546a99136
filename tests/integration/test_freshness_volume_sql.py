"""Freshness of the raw sources (`dbt source freshness`) and the hourly event volume (dbt model
event_volume_hourly), on a lake written by hand.

The lake's events (ingest's own schema) end three hours before now, so that freshness judges
them against the thresholds the environment sets (RECSYS_FRESHNESS_WARN_HOURS / _ERROR_HOURS,
read by the sources' `env_var()`); they follow the same hourly pattern every week for four
weeks and a day, except three hours of the checked window: one cut to a tenth (fail), one
tripled (warn), and a quiet hour (5 events a week) emptied, too small a baseline to judge.
The volume model is compared, hour by hour, with a reference computed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.ingest import EVENTS, IMPRESSIONS_SCHEMA, raw_schema
from recsys.settings import DBT_PROJECT_DIR, Settings
from recsys.warehouse import BuildError, dbt_command, release_duckdb

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
WEEK = timedelta(weeks=1)
LAG = timedelta(hours=3)  # the latest event, before now
N_HOURS, N_WEEKS, MIN_BASELINE = 48, 4, 20  # the vars' defaults
# hours before the latest event's own hour
CUT_HOURS_BACK, TRIPLED_HOURS_BACK, QUIET_HOURS_BACK = 10, 30, 20


def ms(at: datetime) -> int:
    return int(at.replace(tzinfo=UTC).timestamp() * 1000)


def per_hour(back: int) -> int:
    """The weekly pattern, by the hour's distance `back` from the latest event's hour: 20, 30
    or 40 events, and 5 in the quiet hour of the week."""
    if back % 168 == QUIET_HOURS_BACK:
        return 5
    return 20 + 10 * (back % 3)


@dataclass
class Shop:
    data_dir: Path
    latest: datetime  # the latest event (naive UTC)
    hours: Counter[datetime]  # events per clock hour, as written

    @property
    def latest_hour(self) -> datetime:
        return self.latest.replace(minute=0, second=0, microsecond=0)

    def settings(self) -> Settings:
        return Settings(recsys_data_dir=self.data_dir, recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]


def write_shop(data_dir: Path, latest: datetime) -> Shop:
    """Events from 4 weeks and a day before the latest event's hour up to the latest event
    (the latest hour partial), evenly spread in each hour, the first exactly on its hour."""
    latest_hour = latest.replace(minute=0, second=0, microsecond=0)
    start = latest_hour - N_WEEKS * WEEK - 24 * HOUR
    hours: Counter[datetime] = Counter()
    rows = []
    hour = start
    while hour <= latest_hour:
        back = (latest_hour - hour) // HOUR
        n = {
            CUT_HOURS_BACK: per_hour(back) // 10,
            TRIPLED_HOURS_BACK: per_hour(back) * 3,
            QUIET_HOURS_BACK: 0,
        }.get(back, per_hour(back))
        for i in range(n):
            at = hour + i * HOUR / n
            if at > latest:
                break
            hours[hour] += 1
            rows.append({"timestamp": ms(at), "visitorid": i, "event": "view", "itemid": i})
        hour += HOUR
    rows.append({"timestamp": ms(latest), "visitorid": 999_999, "event": "view", "itemid": 1})
    hours[latest_hour] += 1
    for row in rows:
        row |= {"transactionid": None, "impression_id": None}
    (data_dir / "lake" / "raw" / "events").mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=raw_schema(EVENTS))
    pq.write_table(table, data_dir / "lake" / "raw" / "events" / "events.parquet")
    return Shop(data_dir, latest, hours)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    now = datetime.now(UTC).replace(tzinfo=None)
    latest = (now - LAG).replace(microsecond=0)
    return write_shop(tmp_path_factory.mktemp("freshness_volume") / "data", latest)


# -- freshness --------------------------------------------------------------------------------


@dataclass
class Judged:
    status: str  # pass | warn | error | runtime error
    age_seconds: float | None
    message: str


def freshness(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, warn_hours: str, error_hours: str, *select: str
) -> tuple[bool, dict[str, Judged]]:
    """`dbt source freshness` through dbtRunner, as a Python caller reads it: the result is a
    FreshnessResult whose results are one SourceFreshnessResult per judged source (status,
    age), a PartialSourceFreshnessResult per source dbt could not query (status `runtime
    error`, no age), and a RunResult per project hook that ran first (skipped here)."""
    from dbt.artifacts.schemas.freshness import (
        FreshnessResult,
        PartialSourceFreshnessResult,
        SourceFreshnessResult,
    )
    from dbt.cli.main import dbtRunner

    monkeypatch.setenv("RECSYS_FRESHNESS_WARN_HOURS", warn_hours)
    monkeypatch.setenv("RECSYS_FRESHNESS_ERROR_HOURS", error_hours)
    for name, value in shop.settings().dbt_env().items():
        monkeypatch.setenv(name, value)
    args = ["source", "freshness", "--project-dir", str(DBT_PROJECT_DIR)]
    args += ["--profiles-dir", str(DBT_PROJECT_DIR), "--log-level", "none"]
    if select:
        args += ["--select", *select]
    try:
        result = dbtRunner().invoke(args)
    finally:
        release_duckdb()
    assert isinstance(result.result, FreshnessResult), result.exception
    judged = {}
    for item in result.result.results:
        if isinstance(item, SourceFreshnessResult | PartialSourceFreshnessResult):
            age = item.age if isinstance(item, SourceFreshnessResult) else None
            judged[f"{item.node.source_name}.{item.node.name}"] = Judged(
                str(item.status), age, item.message or ""
            )
    return result.success, judged


@pytest.mark.parametrize(
    ("warn_hours", "error_hours", "status", "success"),
    [
        ("4", "8", "pass", True),  # 3 hours old
        ("2", "8", "warn", True),
        ("0.5", "2.5", "error", False),  # fractional hours count to the minute
    ],
)
def test_freshness_follows_the_environment(
    shop: Shop,
    monkeypatch: pytest.MonkeyPatch,
    warn_hours: str,
    error_hours: str,
    status: str,
    success: bool,
) -> None:
    ok, judged = freshness(shop, monkeypatch, warn_hours, error_hours, "source:retailrocket.events")
    # impressions were never ingested: selecting the events alone works
    assert list(judged) == ["retailrocket.events"]
    events = judged["retailrocket.events"]
    assert events.status == status
    assert ok is success
    # the age is now - the latest event (dbt's clock read a moment after the lake was written)
    expected = (datetime.now(UTC).replace(tzinfo=None) - shop.latest).total_seconds()
    assert events.age_seconds == pytest.approx(expected, abs=120)


def test_freshness_of_impressions_missing_and_present(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # every source with a freshness config: the events are judged, the impressions that were
    # never ingested are a runtime error naming the empty folder (dbt: exit 1)
    ok, judged = freshness(shop, monkeypatch, "4", "8")
    assert not ok
    assert judged["retailrocket.events"].status == "pass"
    missing = judged["api.impressions"]
    assert missing.status == "runtime error" and missing.age_seconds is None
    assert "raw/impressions/*.parquet" in missing.message
    # once an impression is in the lake (served 30 minutes ago), it is judged like the events
    served = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=30)
    folder = shop.data_dir / "lake" / "raw" / "impressions"
    folder.mkdir()
    row = {name: None for name in IMPRESSIONS_SCHEMA.names} | {
        "impression_id": "0" * 32,
        "served_at": ms(served),
        "items": [],
    }
    pq.write_table(pa.Table.from_pylist([row], schema=IMPRESSIONS_SCHEMA), folder / "a.parquet")
    try:
        ok, judged = freshness(shop, monkeypatch, "1", "8")
    finally:
        (folder / "a.parquet").unlink()
        folder.rmdir()
    assert judged["api.impressions"].status == "pass"
    assert judged["retailrocket.events"].status == "warn"
    assert ok


def test_dbt_command_prints_the_verdict_and_fails_on_error(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_FRESHNESS_WARN_HOURS", "2")
    monkeypatch.setenv("RECSYS_FRESHNESS_ERROR_HOURS", "8")
    args = ["source", "freshness", "--select", "source:retailrocket.events"]
    output = dbt_command(shop.settings(), args, echo=False)
    assert "WARN freshness of retailrocket.events" in output
    monkeypatch.setenv("RECSYS_FRESHNESS_ERROR_HOURS", "2.5")
    with pytest.raises(BuildError, match="dbt source failed"):
        dbt_command(shop.settings(), args, echo=False)


# -- volume -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume(shop: Shop) -> Iterator[tuple[list[dict], str]]:
    build = ["build", "--select", "+event_volume_hourly", "--indirect-selection", "cautious"]
    output = dbt_command(shop.settings(), build, echo=False)
    with duckdb.connect(str(shop.settings().warehouse_path), read_only=True) as con:
        cursor = con.execute("select * from event_volume_hourly order by hour_start_at")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    yield rows, output


def expected_volume(shop: Shop) -> list[dict]:
    """The rule, written again: the N_HOURS clock hours before the latest event's hour, each
    against the same hour 1..N_WEEKS weeks earlier where the lake covers it."""
    first_event = min(shop.hours)  # the first event is exactly on its hour
    out = []
    for back in range(N_HOURS, 0, -1):
        hour = shop.latest_hour - back * HOUR
        earlier = [hour - k * WEEK for k in range(1, N_WEEKS + 1)]
        counts = [shop.hours.get(h, 0) for h in earlier if h >= first_event]
        mean = sum(counts) / len(counts) if counts else None
        ratio = shop.hours[hour] / mean if mean else None
        if ratio is None or mean < MIN_BASELINE:  # type: ignore[operator]
            status = "ok"
        elif ratio < 0.2 or ratio > 5.0:
            status = "fail"
        elif ratio < 0.5 or ratio > 2.0:
            status = "warn"
        else:
            status = "ok"
        out.append(
            {
                "hour_start_at": hour,
                "n_events": shop.hours[hour],
                "baseline_mean": mean,
                "baseline_weeks": len(counts),
                "ratio": ratio,
                "status": status,
            }
        )
    return out


def test_volume_matches_the_rule_hour_by_hour(shop: Shop, volume: tuple[list[dict], str]) -> None:
    rows, _ = volume
    expected = expected_volume(shop)
    assert [list(r) for r in rows[:1]] == [list(expected[0])]  # the columns, in order
    assert len(rows) == N_HOURS
    for got, want in zip(rows, expected, strict=True):
        for name in ("hour_start_at", "n_events", "baseline_weeks", "status"):
            assert got[name] == want[name], (got, want)
        for name in ("baseline_mean", "ratio"):
            assert got[name] == pytest.approx(want[name], rel=1e-12), (got, want)
    # the lake starts 4 weeks and a day back: the older day of the window has 3 weeks
    assert {r["baseline_weeks"] for r in rows} == {3, 4}


def test_only_the_hour_cut_to_a_tenth_fails(shop: Shop, volume: tuple[list[dict], str]) -> None:
    rows, output = volume
    by_status: dict[str, list[datetime]] = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row["hour_start_at"])
    assert by_status["fail"] == [shop.latest_hour - CUT_HOURS_BACK * HOUR]
    assert by_status["warn"] == [shop.latest_hour - TRIPLED_HOURS_BACK * HOUR]
    cut = next(r for r in rows if r["status"] == "fail")
    assert cut["ratio"] == pytest.approx(0.1)
    # the quiet hour lost all its events, but 5 a week is too few to judge
    quiet = next(
        r for r in rows if r["hour_start_at"] == shop.latest_hour - QUIET_HOURS_BACK * HOUR
    )
    assert (quiet["n_events"], quiet["baseline_mean"], quiet["ratio"]) == (0, 5.0, 0.0)
    assert quiet["status"] == "ok"
    # the latest event's own hour, still filling up, is not judged
    assert rows[-1]["hour_start_at"] == shop.latest_hour - HOUR
    # dbt build says so, as a warning that does not stop it
    assert "WARN 1 volume_not_failing_event_volume_hourly_status" in output
