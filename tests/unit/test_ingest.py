"""Ingest: every rejection reason, the row accounting, idempotence, clear errors."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pytest

import recsys.ingest as ingest_module
from recsys.ingest import (
    CLAIMED_DIR,
    LANDING_DIR,
    IncompleteIngest,
    IngestError,
    check_raw,
    ingest,
    ingest_landing,
)
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
        (1430622443000, 1, "view", 10, None, None),
        (1430622456000, 1, "addtocart", 10, None, None),
        (1430622500000, 1, "transaction", 10, 7, None),
        (1430622600000, 2, "view", 11, None, None),
    ]
    summary = events.reasons
    assert summary["exact duplicate"] == 1
    assert summary["wrong number of fields: expected 5,"] == 2


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["plain file", "file read as bytes"])
def test_an_empty_line_in_a_well_formed_file_is_called_an_empty_line(
    tmp_path: Path, lake: Lake, newline: bytes
) -> None:
    """Arrow reads an empty line as a row of empty values; its reason is still "empty line",
    as when a broken line elsewhere has the file split into lines (the test above)."""
    folder = tmp_path / "raw"
    folder.mkdir()
    lines = [HEADER.rstrip(b"\n"), GOOD[0], b"", GOOD[1], b""]
    (folder / "events.csv").write_bytes(newline.join(lines))
    events = next(r for r in ingest(folder, lake) if r.table == "events")
    assert (events.accepted, events.rejected) == (2, 1)
    assert read(lake, "raw/rejected/events.parquet") == [("events.csv", 3, "empty line", "")]


def test_a_line_longer_than_a_csv_block_is_rejected_not_fatal(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrow fails a whole parse on a line that does not fit its block; such a line (here the
    blocks are made 64 bytes, as if a line were over 16 MiB) is rejected, whole, with its
    reason, and the other lines are ingested."""
    monkeypatch.setattr(ingest_module, "CSV_BLOCK_BYTES", 64)
    monkeypatch.setattr(ingest_module, "MAX_CSV_LINE_BYTES", 32)
    long_line = b"1430622443000,2,view,10," + b"9" * 100
    raw = write_events(tmp_path / "raw", [GOOD[0], long_line, GOOD[1]])
    events = next(r for r in ingest(raw, lake) if r.table == "events")
    assert (events.accepted, events.rejected) == (2, 1)
    rejected = read(lake, "raw/rejected/events.parquet")
    assert rejected == [("events.csv", 3, "line too long (over 32 bytes)", long_line.decode())]


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


@pytest.mark.parametrize(
    "bad", [BAD[0][0], BAD[8][0], None], ids=["bad value", "duplicate", "no reject"]
)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["plain file", "file read as bytes"])
def test_a_file_changed_before_its_rejects_are_quoted_is_refused(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch, bad: bytes | None, newline: bytes
) -> None:
    """A rejected line is quoted from the file read again: if the file changed since it was
    parsed (here: a line appended right after the first read, by Arrow straight from a plain
    file or as bytes), the line read back may not be the one parsed, so the ingest stops with
    a clear error and the last good state stays. So it does without a rejected line: the
    input's digest would name the longer file, and the next ingest would skip it as
    unchanged."""
    raw = write_events(tmp_path / "raw", GOOD[:2])  # the last good state
    ingest(raw, lake)
    good = (Path(lake.root) / "raw/events/events.parquet").read_bytes()
    path = raw / "events.csv"
    path.write_bytes(newline.join([HEADER.rstrip(b"\n"), *GOOD, *([bad] if bad else []), b""]))
    appended: list[Path] = []

    def then_append(real_read: Callable[..., object]) -> Callable[..., object]:
        # after the read that is parsed: Arrow's of a plain file, else the bytes' (the scan of
        # a CRLF file finds it is not plain and returns None)
        def read(read_path: Path, *args: object) -> object:
            found = real_read(read_path, *args)
            if read_path == path and not appended and found is not None:
                with open(path, "ab") as fh:
                    fh.write(GOOD[-1] + newline)
                appended.append(read_path)
            return found

        return read

    for name in ("_read_plain_file", "_read_body"):
        monkeypatch.setattr(ingest_module, name, then_append(getattr(ingest_module, name)))
    with pytest.raises(IngestError, match="changed while it was being ingested"):
        ingest(raw, lake)
    assert (Path(lake.root) / "raw/events/events.parquet").read_bytes() == good
    monkeypatch.undo()  # unchanged since: its rejected lines are quoted as written
    events = next(r for r in ingest(raw, lake) if r.table == "events")
    expected = [*([bad] if bad else []), GOOD[-1]]  # and the appended line: a duplicate
    assert events.rejected == len(expected)
    quoted = [r[3] for r in read(lake, "raw/rejected/events.parquet")]
    assert quoted == [line.decode() for line in expected]


def test_a_file_changed_after_its_parse_before_its_digest_is_refused(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest of the inputs is read in the background. Here it reads the file only after
    the parse has, and a line is appended in between: the digest would name a file longer
    than what was parsed, and the next ingest would skip it as unchanged, the new line never
    ingested. So the ingest stops with a clear error, and the lake stays as it was. (A table
    ingested before waits for its digest before its parse, to compare it with its marker.)"""
    path = write_events(tmp_path / "raw", GOOD[:3]) / "events.csv"
    raw = path.parent
    parsed = threading.Event()
    real_parse, real_sha256 = ingest_module._parse_file, ingest_module._sha256

    def parse_then_append(spec: object, parse_path: Path, *args: object) -> object:
        found = real_parse(spec, parse_path, *args)
        if parse_path == path and not parsed.is_set():
            with open(path, "ab") as fh:
                fh.write(GOOD[3] + b"\n")
            parsed.set()
        return found

    def sha256_after_the_parse(paths: list[Path], *args: object) -> str:
        if path in paths:
            assert parsed.wait(timeout=30)
        return real_sha256(paths, *args)

    monkeypatch.setattr(ingest_module, "_parse_file", parse_then_append)
    monkeypatch.setattr(ingest_module, "_sha256", sha256_after_the_parse)
    with pytest.raises(IngestError, match="changed while it was being ingested"):
        ingest(raw, lake, work_dir=tmp_path)
    assert not (Path(lake.root) / "raw").exists()
    monkeypatch.undo()
    events = next(r for r in ingest(raw, lake) if r.table == "events")
    assert (events.accepted, events.unchanged) == (4, False)  # the appended line too


def test_windows_line_endings_are_accepted(tmp_path: Path, lake: Lake) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_bytes(HEADER.replace(b"\n", b"\r\n") + b"\r\n".join(GOOD))
    reports = {r.table: r for r in ingest(folder, lake)}
    assert reports["events"].accepted == len(GOOD)
    assert reports["events"].rejected == 0


def test_quoted_fields_are_read_as_csv(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as spreadsheets and pandas write them; clean files, so Arrow's reader alone reads them
    monkeypatch.setattr(ingest_module, "_structural_split", _no_slow_path)
    raw = write_events(
        tmp_path / "raw",
        [*GOOD, b'"1433223532117","7","view","8",""', b'1433223532118,7,"transaction",8,"42"'],
    )
    (raw / "item_properties.csv").write_bytes(
        b"timestamp,itemid,property,value\n"
        b'"1431226800000","10","790","n552.000 639502"\n'
        b'1431226800000,11,note,"a ""quoted"" word, and a comma"\n'
    )
    (raw / "category_tree.csv").write_bytes(b'categoryid,parentid\n"5","1"\n"1",""\n')
    reports = {r.table: r for r in ingest(raw, lake)}
    assert {name: r.rejected for name, r in reports.items()} == {
        "events": 0,
        "item_properties": 0,
        "category_tree": 0,
    }
    assert read(lake, "raw/events/events.parquet")[-2:] == [
        (1433223532117, 7, "view", 8, None, None),
        (1433223532118, 7, "transaction", 8, 42, None),
    ]
    assert read(lake, "raw/item_properties/item_properties.parquet") == [
        (1431226800000, 10, "790", "n552.000 639502"),
        (1431226800000, 11, "note", 'a "quoted" word, and a comma'),
    ]
    assert read(lake, "raw/category_tree/category_tree.parquet") == [(5, 1), (1, None)]


def _no_slow_path(*_args: object) -> None:
    raise AssertionError("a clean file went down the slow path")


def test_quoted_fields_on_the_slow_path(tmp_path: Path, lake: Lake) -> None:
    # one broken line per file sends it down the slow path, which counts fields itself
    raw = write_events(
        tmp_path / "raw", [*GOOD, b'"1433223532117","7","view","8",""', b"1433223532117,7,view"]
    )
    (raw / "item_properties.csv").write_bytes(
        b"timestamp,itemid,property,value\n"
        b'1431226800000,10,790,"n552.000,639502"\n'
        b'1431226800000,11,note,"say ""hi"", twice"\n'
        b"1431226800000,12,790\n"
        b'1431226800000,13,"a,b",x\n'
    )
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["events"].reasons == {"wrong number of fields: expected 5,": 1}
    assert reports["item_properties"].reasons == {"wrong number of fields: expected 4,": 1}
    assert read(lake, "raw/events/events.parquet")[-1] == (1433223532117, 7, "view", 8, None, None)
    assert read(lake, "raw/item_properties/item_properties.parquet") == [
        (1431226800000, 10, "790", "n552.000,639502"),
        (1431226800000, 11, "note", 'say "hi", twice'),
        (1431226800000, 13, "a,b", "x"),
    ]
    assert [(r[1], r[2]) for r in read(lake, "raw/rejected/item_properties.parquet")] == [
        (4, "wrong number of fields: expected 4, got 3")
    ]


def test_quoted_headers_are_accepted(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(
        tmp_path / "raw", GOOD, header=b'"timestamp","visitorid","event","itemid","transactionid"\n'
    )
    (raw / "category_tree.csv").write_bytes(b'"categoryid","parentid"\n5,1\n')
    reports = {r.table: r for r in ingest(raw, lake)}
    assert (reports["events"].accepted, reports["category_tree"].accepted) == (len(GOOD), 1)
    # unquoted, a wrong header is still one clear error
    (raw / "category_tree.csv").write_bytes(b'"categoryid","parent"\n5,1\n')
    with pytest.raises(IngestError, match="missing column 'parentid'"):
        ingest(raw, lake)


UNTERMINATED = "unterminated quote (newlines inside a quoted value are not supported)"


def test_an_unterminated_quote_is_rejected_never_merged(tmp_path: Path, lake: Lake) -> None:
    folder = tmp_path / "raw"
    write_events(folder, [])
    (folder / "events.csv").write_bytes(
        HEADER
        + b"\n".join(
            [GOOD[0], b'1430622443000,3,view,"10,', GOOD[1], GOOD[3], b'1430622443000,4,view,10,"']
        )  # the last line without a newline
    )
    # a value over two lines is two broken lines; the next line is judged on its own
    (folder / "item_properties.csv").write_bytes(
        b"timestamp,itemid,property,value\n"
        b"1431226800000,10,790,x\n"
        b'1431226800000,10,note,"first line\n'
        b'second line"\n'
        b"1431226800000,11,790,y\n"
    )
    # the only fault: a quote left open on the last line, where Arrow alone would accept it
    (folder / "category_tree.csv").write_bytes(b'categoryid,parentid\n5,1\n1,"')
    reports = {r.table: r for r in ingest(folder, lake)}
    assert [(r[1], r[2], r[3]) for r in read(lake, "raw/rejected/events.parquet")] == [
        (3, UNTERMINATED, '1430622443000,3,view,"10,'),
        (6, UNTERMINATED, '1430622443000,4,view,10,"'),
    ]
    assert read(lake, "raw/events/events.parquet") == [
        (1430622443000, 1, "view", 10, None, None),
        (1430622456000, 1, "addtocart", 10, None, None),
        (1430622600000, 2, "view", 11, None, None),
    ]
    assert [(r[1], r[2]) for r in read(lake, "raw/rejected/item_properties.parquet")] == [
        (3, UNTERMINATED),
        (4, "wrong number of fields: expected 4, got 1"),
    ]
    assert reports["item_properties"].accepted == 2
    assert read(lake, "raw/category_tree/category_tree.parquet") == [(5, 1)]
    assert [(r[1], r[2]) for r in read(lake, "raw/rejected/category_tree.parquet")] == [
        (3, UNTERMINATED)
    ]


def test_every_rejected_row_keeps_its_line_as_written(tmp_path: Path, lake: Lake) -> None:
    lines = [
        *GOOD,
        *(line for line, _ in BAD),  # one of each reason, a duplicate with an empty field too
        b'"1430622443000","3","click","10",""',
        b'"1430622443000","1","view","10",""',  # line 2 again, quoted
    ]
    raw = write_events(tmp_path / "raw", lines)
    # two parts, the second with Windows line endings, repeating a row of the first
    (raw / "item_properties_part1.csv").write_bytes(
        b'timestamp,itemid,property,value\n1431226800000,10,790,"a,b"\n1431226800000,10,,x\n'
    )
    (raw / "item_properties_part2.csv").write_bytes(
        b"timestamp,itemid,property,value\r\n"
        b"1431226800000,11,790,c\r\n"
        b'"1431226800000",10,790,"a,b"\r\n'
    )
    reports = {r.table: r for r in ingest(raw, lake)}
    for table in ("events", "item_properties"):
        for source, number, reason, raw_line in read(lake, f"raw/rejected/{table}.parquet"):
            written = (raw / source).read_bytes().split(b"\n")[number - 1].removesuffix(b"\r")
            assert raw_line == written.decode("utf-8", errors="backslashreplace"), reason
    assert reports["events"].rejected == len(BAD) + 2
    assert reports["item_properties"].reasons == {"empty property": 1, "exact duplicate": 1}
    duplicates = [
        r[1:] for r in read(lake, "raw/rejected/events.parquet") if r[2].startswith("exact")
    ]
    assert duplicates == [
        (len(GOOD) + 10, "exact duplicate of line 2 of events.csv", "1430622443000,1,view,10,"),
        (
            len(lines) + 1,
            "exact duplicate of line 2 of events.csv",
            '"1430622443000","1","view","10",""',
        ),
    ]
    assert [r[:3] for r in read(lake, "raw/rejected/item_properties.parquet")] == [
        ("item_properties_part1.csv", 3, "empty property"),
        (
            "item_properties_part2.csv",
            3,
            "exact duplicate of line 2 of item_properties_part1.csv",
        ),
    ]


FUTURE = 4_070_908_800_000  # 2099-01-01


def test_events_in_the_future_are_rejected(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", [*GOOD, b"%d,3,view,10," % FUTURE])
    (raw / "item_properties.csv").write_bytes(
        b"timestamp,itemid,property,value\n1431226800000,10,790,x\n%d,10,790,y\n" % FUTURE
    )
    land(lake, "20260101T000000000000Z-a", to_csv([*LANDED, (FUTURE, 5, "view", 12, None, None)]))
    reports = {r.table: r for r in ingest(raw, lake)}
    for table in ("events", "item_properties", "landed_events"):
        report = reports[table]
        assert report.reasons == {"timestamp in the future": 1}, table
        assert report.raw_rows == report.accepted + report.rejected
    assert reports["events"].accepted == len(GOOD)
    assert read(lake, "raw/rejected/events.parquet") == [
        ("events.csv", len(GOOD) + 2, "timestamp in the future", f"{FUTURE},3,view,10,")
    ]
    assert count_events(lake) == len(GOOD) + len(LANDED)
    assert max(r[0] for r in read(lake, "raw/events/*.parquet")) < FUTURE
    # the caller's limit (its clock plus the allowed skew) replaces the default
    other = Lake(str(tmp_path / "other"))
    reports = {r.table: r for r in ingest(raw, other, max_timestamp_ms=1430622500000)}
    assert reports["events"].reasons == {"timestamp in the future": 2}  # GOOD[3] is later
    assert reports["events"].accepted == 3


# --- events the API landed (landing/events/): picked up by every ingest, exactly once

LANDED = [
    (1430622700000, 5, "view", 12, None, None),
    (1430622710000, 5, "addtocart", 12, None, "0123456789abcdef0123456789abcdef"),
    (1430622720000, 5, "transaction", 12, 99, None),
]


def land(lake: Lake, batch_id: str, text: str) -> str:
    from api.events import land as api_land

    return api_land(lake, batch_id, text)


def to_csv(rows: Sequence[tuple[int, int, str, int, int | None, str | None]]) -> str:
    from api.events import to_csv as api_to_csv

    return api_to_csv(rows)


def landed_rows() -> str:
    return to_csv(LANDED)


def count_events(lake: Lake) -> int:
    return len(read(lake, "raw/events/*.parquet"))


def chunk_part(lake: Lake, folder: str = "raw/events") -> str:
    """The one chunk part in `folder` (`landed-chunk-<id>.parquet`)."""
    (rel,) = lake.glob(f"{folder}/landed-chunk-*.parquet")
    return rel


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
    # both files in one part, named after their chunk; their rejected rows name each file
    part = chunk_part(lake).rsplit("/", 1)[-1]
    assert sorted(p.name for p in (root / "raw/events").glob("*.parquet")) == [
        "events.parquet",
        part,
    ]
    assert read(lake, f"raw/events/{part}")[: len(LANDED)] == LANDED  # in file, then line order
    rejected = read(lake, chunk_part(lake, "raw/rejected"))
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
    assert read(lake, f"raw/events/{part}")[: len(LANDED)] == LANDED


def test_a_crash_between_part_and_move_duplicates_nothing(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "20260101T000000000000Z-a", landed_rows())
    move = Lake.move

    def crash_on_move(self: Lake, src_rel: str, dst_rel: str) -> None:
        if dst_rel.startswith("landing/events/_ingested/"):
            raise OSError("the machine went away")
        move(self, src_rel, dst_rel)

    monkeypatch.setattr(Lake, "move", crash_on_move)
    with pytest.raises(OSError, match="went away"):
        ingest(raw, lake)
    # the part is written, the claimed file still waits: the state a crash leaves
    assert count_events(lake) == len(GOOD) + len(LANDED)
    assert (Path(lake.root) / "landing/events/_claimed/20260101T000000000000Z-a.csv").exists()
    monkeypatch.setattr(Lake, "move", move)
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["landed_events"].accepted == len(LANDED)  # picked up again ...
    assert count_events(lake) == len(GOOD) + len(LANDED)  # ... into the same part
    assert list((Path(lake.root) / "landing/events").rglob("*.csv")) == [
        Path(lake.root) / "landing/events/_ingested/20260101T000000000000Z-a.csv"
    ]


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
    # kept, claimed: the next ingest refuses it again until someone looks
    claimed = Path(lake.root) / "landing/events/_claimed/20260101T000000000000Z-a.csv"
    assert claimed.read_text() == "visitorid,itemid\n1,2\n"
    assert not list((Path(lake.root) / "raw/events").glob("landed-*"))


def test_a_claim_left_by_a_stopped_ingest_is_picked_up(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "20260101T000000000000Z-a", landed_rows())
    put = Lake.put

    def crash_on_part(self: Lake, local: Path, rel: str) -> None:
        if rel.startswith("raw/events/landed-"):
            raise OSError("the machine went away")
        put(self, local, rel)

    monkeypatch.setattr(Lake, "put", crash_on_part)
    with pytest.raises(OSError, match="went away"):
        ingest(raw, lake)
    root = Path(lake.root)
    # claimed before it was read: out of the landing folder, not yet in raw/
    assert not (root / "landing/events/20260101T000000000000Z-a.csv").exists()
    assert (root / "landing/events/_claimed/20260101T000000000000Z-a.csv").exists()
    assert count_events(lake) == len(GOOD)
    monkeypatch.setattr(Lake, "put", put)
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["landed_events"].files == ["20260101T000000000000Z-a.csv"]
    assert sorted(read(lake, chunk_part(lake))) == sorted(LANDED)
    assert list((root / "landing/events").rglob("*.csv")) == [
        root / "landing/events/_ingested/20260101T000000000000Z-a.csv"
    ]


@pytest.mark.parametrize("same_body", [True, False])
def test_a_file_landed_again_while_its_claim_is_read_is_kept(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch, same_body: bool
) -> None:
    """An Idempotency-Key's file lands again under the same name while ingest works on the
    first copy (two retries racing on S3, which has no lock): kept for the next ingest, which
    ingests it unless it is the same bytes as the file already ingested (a retry)."""
    raw = write_events(tmp_path / "raw", GOOD)
    land(lake, "key-abc", landed_rows())
    retry = LANDED if same_body else [(1430622730000, 5, "view", 13, None, None)]
    put = Lake.put
    retried: list[str] = []

    def retry_meanwhile(self: Lake, local: Path, rel: str) -> None:
        if rel.startswith("raw/events/landed-") and not retried:
            retried.append(land(lake, "key-abc", to_csv(retry)))
        put(self, local, rel)

    monkeypatch.setattr(Lake, "put", retry_meanwhile)
    reports = {r.table: r for r in ingest(raw, lake)}
    assert retried
    assert reports["landed_events"].accepted == len(LANDED)
    root = Path(lake.root)
    assert (root / "landing/events/key-abc.csv").read_text() == to_csv(retry)  # not lost
    assert (root / "landing/events/_ingested/key-abc.csv").read_text() == landed_rows()
    monkeypatch.setattr(Lake, "put", put)
    reports = {r.table: r for r in ingest(raw, lake)}
    assert reports["landed_events"].files == ["key-abc.csv"]
    assert reports["landed_events"].accepted == (0 if same_body else len(retry))
    # the same bytes again are the same events: once in raw/; another body under the key (two
    # racing retries on S3 both acknowledged) is ingested too
    assert sorted(read(lake, "raw/events/landed-*.parquet")) == sorted(
        LANDED if same_body else LANDED + retry
    )
    assert (root / "landing/events/_ingested/key-abc.csv").read_text() == to_csv(retry)
    assert list((root / "landing/events").rglob("*.csv")) == [
        root / "landing/events/_ingested/key-abc.csv"
    ]
    assert not list((root / "landing/events/_chunks").iterdir())


def test_a_landing_file_gone_before_its_claim_is_skipped(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    land(lake, "20260101T000000000000Z-a", landed_rows())
    glob = Lake.glob

    def listed_then_taken(self: Lake, pattern: str) -> list[str]:
        found = glob(self, pattern)
        if pattern == "landing/events/*.csv":  # another ingest claims b after this listing
            found.append("landing/events/20260101T000000000000Z-b.csv")
        return found

    monkeypatch.setattr(Lake, "glob", listed_then_taken)
    report = ingest_landing(lake, tmp_path / "work")
    assert report is not None
    assert report.files == ["20260101T000000000000Z-a.csv"]
    assert report.accepted == len(LANDED)


def test_lake_move_renames_and_landing_globs_stay_in_their_folder(lake: Lake) -> None:
    lake.write_text(f"{LANDING_DIR}/a.csv", "new")
    lake.write_text(f"{CLAIMED_DIR}/b.csv", "claimed")
    lake.write_text(f"{LANDING_DIR}/_ingested/a.csv", "old")
    assert lake.glob(f"{LANDING_DIR}/*.csv") == [f"{LANDING_DIR}/a.csv"]
    assert lake.glob(f"{CLAIMED_DIR}/*.csv") == [f"{CLAIMED_DIR}/b.csv"]
    root = Path(lake.root)
    inode = os.stat(root / LANDING_DIR / "a.csv").st_ino
    lake.move(f"{LANDING_DIR}/a.csv", f"{LANDING_DIR}/_ingested/a.csv")  # replaces the old one
    assert lake.read_bytes(f"{LANDING_DIR}/_ingested/a.csv") == b"new"
    assert os.stat(root / LANDING_DIR / "_ingested/a.csv").st_ino == inode  # renamed, not copied
    assert not (root / LANDING_DIR / "a.csv").exists()
    with pytest.raises(FileNotFoundError):
        lake.move(f"{LANDING_DIR}/a.csv", f"{CLAIMED_DIR}/a.csv")
    with pytest.raises(FileNotFoundError):
        lake.read_bytes(f"{LANDING_DIR}/a.csv")


def test_an_ingest_stopped_before_its_markers_is_repaired_not_trusted(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest A; ingest B, stopped after its Parquet files were put but before the markers;
    ingest A again: it once said 'unchanged' and kept B's rows under A's marker."""
    a = write_events(tmp_path / "a", GOOD)
    b = write_events(tmp_path / "b", GOOD[:1])
    ingest(a, lake)
    real_write_text = Lake.write_text

    def killed_at_the_marker(self: Lake, rel: str, text: str) -> None:
        if rel.startswith("raw/_ingest/"):
            raise KeyboardInterrupt("killed")  # what kill -9 leaves: the files, no marker
        real_write_text(self, rel, text)

    monkeypatch.setattr(Lake, "write_text", killed_at_the_marker)
    with pytest.raises(KeyboardInterrupt):
        ingest(b, lake)
    monkeypatch.setattr(Lake, "write_text", real_write_text)
    assert len(read(lake, "raw/events/events.parquet")) == 1  # B's data under A's marker
    with pytest.raises(IncompleteIngest, match=r"events .*recsys ingest"):
        check_raw(lake)  # what `recsys build` does first: it never builds on B's rows
    messages: list[str] = []
    reports = {r.table: r for r in ingest(a, lake, progress=messages.append)}
    assert not reports["events"].unchanged
    assert any("does not hold what its marker describes" in m for m in messages)
    assert len(read(lake, "raw/events/events.parquet")) == len(GOOD)
    # and once repaired, the same input is unchanged again
    check_raw(lake)
    assert all(r.unchanged for r in ingest(a, lake))


def test_the_same_input_gives_the_same_raw_bytes(tmp_path: Path) -> None:
    """A re-run after a crash must end where an uninterrupted run ends: the raw files (and the
    ingest id in their footers) depend on the input only, not on the run."""
    a = write_events(tmp_path / "a", GOOD)
    images = []
    for name in ("one", "two"):
        lake = Lake(str(tmp_path / name))
        ingest(a, lake)
        root = Path(lake.root) / "raw"
        images.append({p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()})
    assert images[0] == images[1]
    assert any(str(p).endswith("events.parquet") for p in images[0])


# --- the impression_id column of landed events

NEW_HEADER = "timestamp,visitorid,event,itemid,transactionid,impression_id\n"
IMPRESSION = "0123456789abcdef0123456789abcdef"


def test_landed_events_with_either_header_share_one_raw_schema(tmp_path: Path, lake: Lake) -> None:
    raw = write_events(tmp_path / "raw", GOOD)
    # an older API's file (no impression_id) and today's, with and without an impression
    land(
        lake,
        "20260101T000000000000Z-old",
        "timestamp,visitorid,event,itemid,transactionid\n1430622800000,6,view,13,\n",
    )
    land(
        lake,
        "20260101T000001000000Z-new",
        NEW_HEADER + f"1430622800000,7,view,13,,{IMPRESSION}\n1430622801000,7,view,14,,\n"
        "1430622802000,7,view,15,,ABCDEF\n"
        f"1430622803000,7,view,16,,{IMPRESSION[:-1]}\n"
        "1430622804000,7,view,17,\n",
    )
    reports = {r.table: r for r in ingest(raw, lake)}
    landed = reports["landed_events"]
    assert (landed.raw_rows, landed.accepted, landed.rejected) == (6, 3, 3)
    assert landed.reasons == {
        "bad impression_id": 2,
        "wrong number of fields: expected 6,": 1,
    }
    assert read(lake, chunk_part(lake)) == [  # one part, in file then line order
        (1430622800000, 6, "view", 13, None, None),
        (1430622800000, 7, "view", 13, None, IMPRESSION),
        (1430622801000, 7, "view", 14, None, None),  # empty: null, as for events.csv rows
    ]
    rejected = read(lake, chunk_part(lake, "raw/rejected"))
    assert {r[0] for r in rejected} == {"20260101T000001000000Z-new.csv"}
    assert [(r[1], r[2], r[3]) for r in rejected] == [
        (4, "bad impression_id", "1430622802000,7,view,15,,ABCDEF"),
        (5, "bad impression_id", f"1430622803000,7,view,16,,{IMPRESSION[:-1]}"),
        (6, "wrong number of fields: expected 6, got 5", "1430622804000,7,view,17,"),
    ]
    # every file of raw/events/ (events.csv's included) has the same columns and types
    schemas = {
        tuple(duckdb.sql(f"describe select * from read_parquet('{p}')").fetchall())
        for p in (Path(lake.root) / "raw/events").glob("*.parquet")
    }
    assert len(schemas) == 1
    assert [(c[0], c[1]) for c in schemas.pop()][-1] == ("impression_id", "VARCHAR")


def test_an_exact_duplicate_of_a_landed_event_includes_its_impression(
    tmp_path: Path, lake: Lake
) -> None:
    land(
        lake,
        "20260101T000000000000Z-a",
        NEW_HEADER + f"1430622800000,7,view,13,,{IMPRESSION}\n1430622800000,7,view,13,,\n"
        f"1430622800000,7,view,13,,{IMPRESSION}\n",
    )
    report = ingest_landing(lake, tmp_path / "work")
    assert report is not None
    assert (report.accepted, report.rejected) == (2, 1)
    rejected = read(lake, chunk_part(lake, "raw/rejected"))
    assert [(r[1], r[2]) for r in rejected] == [
        (4, "exact duplicate of line 2 of 20260101T000000000000Z-a.csv")
    ]


def test_events_written_before_the_impression_column_are_written_again(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake ingested by an older version: the same events.csv is ingested again, once, so that
    raw/events/ gets one schema; after that it is unchanged, as before."""
    raw = write_events(tmp_path / "raw", GOOD)
    monkeypatch.setattr(ingest_module, "raw_schema", ingest_module.accepted_schema)
    ingest(raw, lake)
    columns = duckdb.sql(
        f"describe select * from read_parquet('{lake.url('raw/events/events.parquet')}')"
    ).fetchall()
    assert [c[0] for c in columns][-1] == "transactionid"  # the old layout
    monkeypatch.undo()
    messages: list[str] = []
    reports = {r.table: r for r in ingest(raw, lake, progress=messages.append)}
    assert not reports["events"].unchanged
    assert reports["item_properties"].unchanged
    assert "events: written with older columns: ingesting it again" in messages
    assert read(lake, "raw/events/events.parquet")[0] == (1430622443000, 1, "view", 10, None, None)
    check_raw(lake)
    assert all(r.unchanged for r in ingest(raw, lake))


def test_a_landing_file_with_a_name_the_api_never_writes_is_refused(
    tmp_path: Path, lake: Lake
) -> None:
    write_events(tmp_path / "raw", GOOD)
    target = Path(lake.root) / LANDING_DIR / "a b'.csv"
    target.parent.mkdir(parents=True)
    target.write_text(landed_rows())
    with pytest.raises(IngestError, match=r"a landing file named \"a b'\.csv\""):
        ingest_landing(lake, tmp_path / "work")
    assert target.exists()  # not claimed: it waits until someone looks


# --- landing files are picked up in chunks: one part per chunk, each file judged on its own


def test_many_landing_files_make_few_parts_and_rejects_name_their_file(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "CHUNK_FILES", 4)
    for n in range(10):
        # each file: a good event, a bad one, and on the last file a quote left open on its
        # last line, which must not swallow the first line of the next file
        quote = '\n1430622900000,8,"view,14,,' if n == 3 else ""
        land(
            lake,
            f"20260101T0000{n:02d}000000Z-x",
            NEW_HEADER + f"14306228{n:02d}000,{n},view,13,,\n1430622800000,{n},buy,13,,{quote}",
        )
    report = ingest_landing(lake, tmp_path / "work")
    assert report is not None
    assert (report.raw_rows, report.accepted, report.rejected) == (21, 10, 11)
    parts = lake.glob("raw/events/*.parquet")
    assert len(parts) == 3 and all(p.startswith("raw/events/landed-chunk-") for p in parts)
    assert [r[1] for r in read(lake, "raw/events/*.parquet")] == list(range(10))  # file order
    rejected = sorted(read(lake, "raw/rejected/*.parquet"))
    assert [(r[0], r[1], r[2]) for r in rejected] == sorted(
        [(f"20260101T0000{n:02d}000000Z-x.csv", 3, "unknown event type") for n in range(10)]
        + [
            (
                "20260101T000003000000Z-x.csv",
                4,
                "unterminated quote (newlines inside a quoted value are not supported)",
            )
        ]
    )
    assert rejected[3][3] == "1430622800000,3,buy,13,,"  # the line as written
    assert not list((Path(lake.root) / "landing/events/_chunks").iterdir())


def test_a_duplicate_is_judged_within_its_own_file(tmp_path: Path, lake: Lake) -> None:
    """Two requests with the same event both land (without a key that is what was sent); the
    same line twice in one request is a duplicate."""
    event = "1430622800000,7,view,13,,"
    land(lake, "20260101T000000000000Z-a", NEW_HEADER + f"{event}\n")
    land(lake, "20260101T000001000000Z-b", NEW_HEADER + f"{event}\n{event}\n")
    report = ingest_landing(lake, tmp_path / "work")
    assert report is not None
    assert (report.accepted, report.rejected) == (2, 1)
    assert read(lake, chunk_part(lake, "raw/rejected")) == [
        (
            "20260101T000001000000Z-b.csv",
            3,
            "exact duplicate of line 2 of 20260101T000001000000Z-b.csv",
            event,
        )
    ]


def test_a_chunk_stopped_between_its_moves_is_finished_once(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its part was written and one file moved to `_ingested/`: the next run
    moves the rest under the same chunk, writes nothing again, and reports the chunk's rows."""
    for n in range(3):
        land(
            lake,
            f"20260101T00000{n}000000Z-x",
            to_csv([(1430622800000 + n, n, "view", 1, None, None)]),
        )
    move = Lake.move
    moved: list[str] = []

    def stopped_after_one_move(self: Lake, src_rel: str, dst_rel: str) -> None:
        if dst_rel.startswith("landing/events/_ingested/"):
            if moved:
                raise KeyboardInterrupt("killed")
            moved.append(dst_rel)
        move(self, src_rel, dst_rel)

    monkeypatch.setattr(Lake, "move", stopped_after_one_move)
    with pytest.raises(KeyboardInterrupt):
        ingest_landing(lake, tmp_path / "one")
    monkeypatch.undo()
    part = chunk_part(lake)
    written = (Path(lake.root) / part).read_bytes()
    assert len(lake.glob("landing/events/_claimed/*.csv")) == 2
    (manifest,) = lake.glob("landing/events/_chunks/*.json")
    assert json.loads(lake.read_text(manifest))["state"] == "written"
    land(lake, "20260101T000009000000Z-y", to_csv([(1430622809000, 9, "view", 1, None, None)]))
    report = ingest_landing(lake, tmp_path / "two")
    assert report is not None
    assert report.files[:3] == [f"20260101T00000{n}000000Z-x.csv" for n in range(3)]
    assert report.accepted == 4  # the stopped chunk's three and the new file
    assert (Path(lake.root) / part).read_bytes() == written  # finished, not written again
    assert sorted(r[1] for r in read(lake, "raw/events/*.parquet")) == [0, 1, 2, 9]
    assert len(lake.glob("landing/events/_ingested/*.csv")) == 4
    assert not lake.glob("landing/events/_claimed/*") and not lake.glob("landing/events/_chunks/*")


def test_a_claim_and_part_left_by_an_ingest_from_before_chunks_count_once(
    tmp_path: Path, lake: Lake
) -> None:
    """An ingest that wrote a part per file (`landed-<file>.parquet`) stopped before moving its
    claim: the claim goes into a chunk, and the old part is removed, so its rows count once."""
    land(lake, "20260101T000000000000Z-a", landed_rows())
    os.renames(
        Path(lake.root) / LANDING_DIR / "20260101T000000000000Z-a.csv",
        Path(lake.root) / CLAIMED_DIR / "20260101T000000000000Z-a.csv",
    )
    old_part = tmp_path / "old.parquet"
    duckdb.sql(
        f"copy (select * from (values (1430622700000, 5)) t(timestamp, visitorid)) to '{old_part}'"
    )
    lake.put(old_part, "raw/events/landed-20260101T000000000000Z-a.parquet")
    lake.put(old_part, "raw/rejected/landed-20260101T000000000000Z-a.parquet")
    report = ingest_landing(lake, tmp_path / "work")
    assert report is not None and report.accepted == len(LANDED)
    assert lake.glob("raw/events/*.parquet") == [chunk_part(lake)]
    assert not lake.glob("raw/rejected/*.parquet")
    assert count_events(lake) == len(LANDED)


def test_the_api_finds_a_keyed_file_wherever_ingest_holds_it(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry under an Idempotency-Key, at every step of an ingest (before and after each of
    its writes, moves and removals): the same body is found and not landed again, another body
    is a conflict; so the key's events reach raw/ once."""
    from api.events import IdempotencyConflict, land_once, landed_bytes

    body = landed_rows()
    assert land_once(lake, "key-abc", body)
    land(lake, "20260101T000000000000Z-a", landed_rows())  # company in the chunk
    seen: list[str] = []

    def retried(where: str) -> None:
        assert landed_bytes(lake, "key-abc") == body.encode(), where
        assert not land_once(lake, "key-abc", body), where
        with pytest.raises(IdempotencyConflict):
            land_once(lake, "key-abc", to_csv(LANDED[:1]))
        seen.append(where)

    for method in ("move", "put", "write_text", "remove"):
        real = getattr(Lake, method)

        def step(self: Lake, *args: object, _real: object = real, _name: str = method) -> None:
            retried(f"before {_name}{args}")
            _real(self, *args)  # type: ignore[operator]
            retried(f"after {_name}{args}")

        monkeypatch.setattr(Lake, method, step)
    report = ingest_landing(lake, tmp_path / "work")
    monkeypatch.undo()
    retried("after the ingest")
    assert report is not None and report.accepted == 2 * len(LANDED)
    moves = [w for w in seen if w.startswith("after move")]
    assert len(moves) == 4  # two claims, two moves to `_ingested/`
    assert any("_chunks" in w for w in seen)  # the manifest's writes and removal
    assert count_events(lake) == 2 * len(LANDED)
    assert ingest_landing(lake, tmp_path / "again") is None  # the retries landed nothing


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"h1,h2",
        b"h1,h2\n",
        b"h1,h2\n1,2",
        b"h1,h2\r\n1,2\r\n3,4\r\n",
        b"h\n\n\n",
        b'"a\nb"\n1',
    ],
)
def test_a_files_body_is_read_past_its_header_as_it_was_sliced(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    assert ingest_module._read_body(path) == ingest_module._body_of(data)


PROPERTIES_HEADER = b"timestamp,itemid,property,value\n"
PROPERTY_LINES = [b"1430622443000,1,790,n1200.000", b"1430622456000,2,categoryid,1016"]


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (b"\n".join(PROPERTY_LINES) + b"\n", True),
        (b'1430622443000,1,888,"150169 n24.000, 1"\n1430622456000,2,"790","n1.0"\n', True),
        (b"1430622443000,1,790,x\n" + b"not-a-time,2,790,y\n" + b"1430622443000,1,790,x\n", True),
        (b"\n".join(PROPERTY_LINES), False),  # the last line without its newline
        (b"\r\n".join(PROPERTY_LINES) + b"\r\n", False),
        (b"1430622443000,1,790,a\rb\n" + PROPERTY_LINES[1] + b"\n", False),
        (PROPERTY_LINES[0] + b",extra\n" + PROPERTY_LINES[1] + b"\n", False),
        (b'1430622443000,1,790,"open\n' + PROPERTY_LINES[1] + b"\n", False),
        (b"1430622443000,1,790,n\xff\n" + PROPERTY_LINES[1] + b"\n", False),
        # Arrow reads an empty line as a row of empty values: rejected as "empty line" all
        # the same (test_an_empty_line_in_a_well_formed_file_is_called_an_empty_line)
        (PROPERTY_LINES[0] + b"\n\n" + PROPERTY_LINES[1] + b"\n", True),
        (b"", False),
    ],
    ids=[
        "plain",
        "quoted",
        "bad values",
        "no last newline",
        "crlf",
        "stray cr",
        "extra field",
        "open quote",
        "not utf-8",
        "empty line",
        "header only",
    ],
)
@pytest.mark.parametrize("header", [PROPERTIES_HEADER, b"\xef\xbb\xbf" + PROPERTIES_HEADER])
@pytest.mark.parametrize("small_blocks", [False, True], ids=["one chunk", "many chunks"])
def test_a_plain_file_is_parsed_from_the_file_as_from_its_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    plain: bool,
    header: bytes,
    small_blocks: bool,
) -> None:
    """A plain file (newline-ended lines, no CR, one record a line) is parsed by Arrow
    straight from the file; any other goes through its bytes. Either way, the same rows are
    accepted and rejected, with the same line numbers and reasons, as from the bytes. With
    small blocks, Arrow's columns come in many chunks and the scan takes many passes, as a
    full-scale file's do."""
    if small_blocks:
        monkeypatch.setattr(ingest_module, "CSV_BLOCK_BYTES", 40)
        monkeypatch.setattr(ingest_module, "SCAN_BYTES", 7)
    spec = ingest_module.ITEM_PROPERTIES
    path = tmp_path / "item_properties.csv"
    path.write_bytes(header + body)
    table = ingest_module._read_plain_file(path, len(spec.columns))
    assert (table is not None) == plain
    if table is not None and small_blocks and table.num_rows > 2:
        assert table.column(0).num_chunks > 1
    limit = 4_000_000_000_000
    accepted, rejected = ingest_module._parse_file(spec, path, limit, ingest_module._identity(path))
    expected, rejects = ingest_module._parse_body(
        spec, ingest_module._body_of(header + body), limit
    )
    assert accepted.to_pydict() == expected.to_pydict()
    assert rejected.to_pydict() == rejects.table(path.name).to_pydict()
    lines = body.count(b"\n") + (bool(body) and not body.endswith(b"\n"))
    assert accepted.num_rows + rejected.num_rows == lines
