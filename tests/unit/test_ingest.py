"""Ingest: every rejection reason, the row accounting, idempotence, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from recsys.ingest import IngestError, ingest
from recsys.lake import Lake

HEADER = b"timestamp,visitorid,event,itemid,transactionid\n"

GOOD = [
    b"1430622443000,1,view,10,",
    b"1430622456000,1,addtocart,10,",
    b"1430622500000,1,transaction,10,7",
    b"1430622600000,2,view,11,",
]
# (line, the reason ingest must give)
BAD = [
    (b"not-a-time,3,view,10,", "bad timestamp"),
    (b"99999999999999,3,view,10,", "timestamp out of range"),
    (b"1430622443000,-3,view,10,", "bad visitorid"),
    (b"1430622443000,3,click,10,", "unknown event type"),
    (b"1430622443000,3,view,1.5,", "bad itemid"),
    (b"1430622443000,3,transaction,10,x9", "bad transactionid"),
    (b"1430622443000,3,view,10,5", "transactionid on a non-transaction event"),
    (b"1430622443000,3,transaction,10,", "transaction without transactionid"),
    (b"1430622443000,1,view,10,", "exact duplicate of line 2 of events.csv"),
    (b"1430622443000,3,view,10,,extra", "wrong number of fields: expected 5, got 6"),
    (b"1430622443000,3,view", "wrong number of fields: expected 5, got 3"),
    (b"1430622443000,3,vi\xffew,10,", "bytes are not UTF-8"),
    (b"", "empty line"),
]


def write_events(folder: Path, lines: list[bytes], header: bytes = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.csv").write_bytes(header + b"\n".join(lines) + b"\n")
    return folder


def read(lake: Lake, rel: str) -> list[tuple]:
    return duckdb.sql(f"select * from read_parquet('{lake.url(rel)}')").fetchall()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def test_every_bad_row_is_kept_with_its_reason(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD + [line for line, _ in BAD])
    reports = ingest(raw, lake)
    events = next(r for r in reports if r.table == "events")
    assert events.raw_rows == len(GOOD) + len(BAD)
    assert events.accepted == len(GOOD)
    assert events.rejected == len(BAD)
    assert events.raw_rows == events.accepted + events.rejected

    rejected = read(lake, "raw/rejected/events.parquet")
    assert [r[0] for r in rejected] == ["events.csv"] * len(BAD)
    # line numbers as an editor shows them: header is line 1, GOOD are lines 2..5
    assert [r[1] for r in rejected] == list(range(len(GOOD) + 2, len(GOOD) + 2 + len(BAD)))
    assert [r[2] for r in rejected] == [reason for _, reason in BAD]
    raw_lines = {r[2]: r[3] for r in rejected}
    assert raw_lines["bad timestamp"] == "not-a-time,3,view,10,"
    assert raw_lines["bytes are not UTF-8"] == "1430622443000,3,vi\\xffew,10,"

    accepted = read(lake, "raw/events/events.parquet")
    assert accepted == [
        (1430622443000, 1, "view", 10, None),
        (1430622456000, 1, "addtocart", 10, None),
        (1430622500000, 1, "transaction", 10, 7),
        (1430622600000, 2, "view", 11, None),
    ]
    summary = events.reasons
    assert summary["exact duplicate"] == 1
    assert summary["wrong number of fields: expected 5,"] == 2


def test_optional_tables_are_written_empty_when_absent(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["item_properties"].raw_rows == 0
    assert read(lake, "raw/item_properties/item_properties.parquet") == []
    columns = duckdb.sql(
        f"describe select * from read_parquet('{lake.url('raw/category_tree/*.parquet')}')"
    ).fetchall()
    assert [(c[0], c[1]) for c in columns] == [("categoryid", "BIGINT"), ("parentid", "BIGINT")]


def test_properties_and_categories_are_typed(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    (raw / "item_properties_part1.csv").write_bytes(
        b"timestamp,itemid,property,value\n"
        b"1431226800000,10,categoryid,5\n"
        b"1431226800000,10,790,n552.000 639502\n"
        b"1431226800000,10,,x\n"
    )
    (raw / "item_properties_part2.csv").write_bytes(
        b"timestamp,itemid,property,value\n1431831600000,10,available,1\n"
    )
    (raw / "category_tree.csv").write_bytes(b"categoryid,parentid\n5,1\n1,\nx,1\n")
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["item_properties"].accepted == 3
    assert reports["item_properties"].reasons == {"empty property": 1}
    assert reports["category_tree"].reasons == {"bad categoryid": 1}
    assert read(lake, "raw/category_tree/category_tree.parquet") == [(5, 1), (1, None)]
    props = read(lake, "raw/item_properties/item_properties.parquet")
    assert props[1] == (1431226800000, 10, "790", "n552.000 639502")
    assert props[2] == (1431831600000, 10, "available", "1")


def test_reingesting_the_same_input_changes_nothing(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", [*GOOD, BAD[0][0]])
    ingest(raw, lake)
    files = sorted(p for p in Path(lake.root).rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    reports = ingest(raw, lake)
    assert all(r.unchanged for r in reports)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert before == after
    assert sorted(p for p in Path(lake.root).rglob("*") if p.is_file()) == files
    # a changed input is ingested again, replacing (not appending to) the table
    write_events(raw, GOOD[:2])
    reports = {r.table: r for r in ingest(raw, lake)}
    assert not reports["events"].unchanged
    assert len(read(lake, "raw/events/*.parquet")) == 2
    assert read(lake, "raw/rejected/events.parquet") == []
    marker = json.loads((Path(lake.root) / "raw/_ingest/events.json").read_text())
    assert marker["report"]["accepted"] == 2


def test_missing_file_is_one_clear_error_and_writes_nothing(tmp_path: Path, lake: Lake) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(IngestError, match=r"events\.csv: required file is missing"):
        ingest(tmp_path / "raw", lake)
    assert not any(p.is_file() for p in Path(lake.root).rglob("*"))


def test_missing_column_names_file_and_column(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    (raw / "category_tree.csv").write_bytes(b"categoryid\n1\n")
    with pytest.raises(IngestError, match=r"category_tree\.csv: missing column 'parentid'"):
        ingest(raw, lake)
    assert not any(p.is_file() for p in Path(lake.root).rglob("*"))


def test_failed_ingest_keeps_the_last_good_state(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    ingest(raw, lake)
    good = (Path(lake.root) / "raw/events/events.parquet").read_bytes()
    write_events(raw, GOOD, header=b"timestamp,visitor,event,itemid,transactionid\n")
    with pytest.raises(IngestError, match="missing column 'visitorid'"):
        ingest(raw, lake)
    assert (Path(lake.root) / "raw/events/events.parquet").read_bytes() == good


def test_windows_line_endings_are_accepted(tmp_path: Path, lake: Lake) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_bytes(HEADER.replace(b"\n", b"\r\n") + b"\r\n".join(GOOD))
    reports = {r.table: r for r in ingest(folder, lake)}
    assert reports["events"].accepted == len(GOOD)
    assert reports["events"].rejected == 0


# --- events the API landed (landing/events/): picked up by every ingest, exactly once

LANDED = [
    (1430622700000, 5, "view", 12, None),
    (1430622710000, 5, "addtocart", 12, None),
    (1430622720000, 5, "transaction", 12, 99),
]


def land(lake: Lake, batch_id: str, text: str) -> str:
    from api.events import land as api_land

    return api_land(lake, batch_id, text)


def landed_rows() -> str:
    from api.events import to_csv

    return to_csv(LANDED)


def count_events(lake: Lake) -> int:
    return len(read(lake, "raw/events/*.parquet"))


def test_landed_events_are_ingested_exactly_once(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "20260101T000000000000Z-a", landed_rows())
    # a file the API would never write, to show the CSV rules apply: one bad, one duplicate
    land(
        lake,
        "20260101T000001000000Z-b",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1430622800000,6,view,13,\n"
        "1430622800000,6,transaction,13,\n"
        "1430622800000,6,view,13,\n",
    )
    reports = {r.table: r for r in ingest(raw, lake)}
    landed = reports["landed_events"]
    assert (landed.raw_rows, landed.accepted, landed.rejected) == (6, 4, 2)
    assert landed.reasons == {"exact duplicate": 1, "transaction without transactionid": 1}
    assert count_events(lake) == len(GOOD) + 4
    root = Path(lake.root)
    assert sorted(p.name for p in (root / "raw/events").glob("*.parquet")) == [
        "events.parquet",
        "landed-20260101T000000000000Z-a.parquet",
        "landed-20260101T000001000000Z-b.parquet",
    ]
    rejected = read(lake, "raw/rejected/landed-20260101T000001000000Z-b.parquet")
    assert [(r[0], r[1], r[2]) for r in rejected] == [
        ("20260101T000001000000Z-b.csv", 3, "transaction without transactionid"),
        (
            "20260101T000001000000Z-b.csv",
            4,
            "exact duplicate of line 2 of 20260101T000001000000Z-b.csv",
        ),
    ]
    assert not list((root / "landing/events").glob("*.csv"))
    assert len(list((root / "landing/events/_ingested").glob("*.csv"))) == 2
    # the same input again: nothing new to pick up, nothing counted twice
    reports = {r.table: r for r in ingest(raw, lake)}
    assert "landed_events" not in reports
    assert count_events(lake) == len(GOOD) + 4
    assert sorted(read(lake, "raw/events/landed-20260101T000000000000Z-a.parquet")) == sorted(
        LANDED
    )


def test_a_crash_between_part_and_move_duplicates_nothing(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "20260101T000000000000Z-a", landed_rows())
    put = Lake.put

    def crash_on_move(self: Lake, local: Path, rel: str) -> None:
        if rel.startswith("landing/events/_ingested/"):
            raise OSError("the machine went away")
        put(self, local, rel)

    monkeypatch.setattr(Lake, "put", crash_on_move)
    with pytest.raises(OSError, match="went away"):
        ingest(raw, lake)
    # the part is written, the file still waits: the state a crash leaves
    assert count_events(lake) == len(GOOD) + len(LANDED)
    assert (Path(lake.root) / "landing/events/20260101T000000000000Z-a.csv").exists()
    monkeypatch.setattr(Lake, "put", put)
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["landed_events"].accepted == len(LANDED)  # picked up again ...
    assert count_events(lake) == len(GOOD) + len(LANDED)  # ... into the same part
    assert not list((Path(lake.root) / "landing/events").glob("*.csv"))


def test_a_csv_reload_keeps_the_landed_parts(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "20260101T000000000000Z-a", landed_rows())
    ingest(raw, lake)
    write_events(raw, GOOD[:2])  # a changed events.csv replaces its table ...
    reports = {r.table: r for r in ingest(raw, lake)}
    assert not reports["events"].unchanged
    assert count_events(lake) == 2 + len(LANDED)  # ... and only its table


def test_a_landing_file_with_a_wrong_header_is_refused(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "20260101T000000000000Z-a", "visitorid,itemid\n1,2\n")
    with pytest.raises(IngestError, match="unexpected header 'visitorid,itemid'"):
        ingest(raw, lake)
    assert (Path(lake.root) / "landing/events/20260101T000000000000Z-a.csv").exists()
