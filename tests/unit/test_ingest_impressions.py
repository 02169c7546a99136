"""Ingest of the impressions the API landed (`landing/impressions/*.jsonl` -> `raw/impressions/`):
every rejection reason, nested items read back, raw = accepted + rejected, exactly once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from recsys.ingest import (
    IMPRESSIONS_CLAIMED_DIR,
    IMPRESSIONS_INGESTED_DIR,
    IMPRESSIONS_LANDING_DIR,
    MAX_ITEMS,
    MAX_LINE_BYTES,
    IngestError,
    ingest,
    ingest_all_landing,
    ingest_landing_impressions,
)
from recsys.lake import Lake

NOW_MS = 1_767_225_600_000  # 2026-01-01, the tests' "now": the limit passed to ingest
STEM = "20260101T000000000000Z-0123456789abcdef"


def impression(n: int, **changes: Any) -> dict[str, Any]:
    """A valid impression (ids from `n`), with `changes` applied."""
    obj: dict[str, Any] = {
        "impression_id": f"{n:032x}",
        "served_at": NOW_MS - 60_000 + n,
        "visitor_id": 7,
        "route": "visitor",
        "strategy": "personalized",
        "policy": "interleave:ranker,als",
        "experiment": "ranker_vs_als",
        "variant": "mixed",
        "snapshot_version": "20260101T000000Z-0123abcd",
        "model_version": "fv1_20150918T025947-catboost-42",
        "anchor_item_id": None,
        "items": [
            {"item_id": 100 + n, "rank": 1, "source": "ranker", "team": "ranker"},
            {"item_id": 200 + n, "rank": 2, "source": "als", "team": "als"},
        ],
    }
    obj.update(changes)
    return obj


def line(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def land(lake: Lake, stem: str, lines: list[bytes]) -> str:
    rel = f"{IMPRESSIONS_LANDING_DIR}/{stem}.jsonl"
    target = Path(lake.root) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(raw + b"\n" for raw in lines))
    return rel


def run(lake: Lake, work: Path) -> Any:
    return ingest_landing_impressions(lake, work, max_timestamp_ms=NOW_MS)


def read(lake: Lake, rel: str) -> list[tuple[Any, ...]]:
    return duckdb.sql(f"select * from read_parquet('{lake.url(rel)}')").fetchall()


def chunk_parts(lake: Lake) -> tuple[str, str]:
    """The (accepted, rejected) parts of the one chunk ingested: landing files are written a
    chunk at a time, `landed-<chunk id>.parquet`."""
    (accepted,) = lake.glob("raw/impressions/landed-chunk-*.parquet")
    chunk_id = accepted.rsplit("/", 1)[-1].removeprefix("landed-")
    return accepted, f"raw/rejected/impressions-landed-{chunk_id}"


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def test_impressions_land_in_raw_with_their_items_nested(tmp_path: Path, lake: Lake) -> None:
    similar = impression(
        2,
        visitor_id=None,
        route="similar",
        strategy="similar",
        policy="als",
        experiment=None,
        variant=None,
        anchor_item_id=5,
        items=[{"item_id": 9, "rank": 1, "source": "similar", "team": None}],
    )
    empty = impression(3, policy="popularity", items=[], experiment=None, variant=None)
    # JSON as any writer may spell it: spaces, escapes, keys in another order
    spelt = json.dumps(dict(reversed(list(impression(1).items())))).encode()
    spelt = spelt.replace(b'"interleave:', b'"interleave\\u003a').replace(b'"als"', b'"\\u0061ls"')
    land(lake, STEM, [spelt, line(similar), line(empty)])
    report = run(lake, tmp_path / "work")
    assert (report.files, report.raw_rows, report.accepted, report.rejected) == (
        [f"{STEM}.jsonl"],
        3,
        3,
        0,
    )
    part = lake.url(chunk_parts(lake)[0])
    columns = duckdb.sql(f"describe select * from read_parquet('{part}')").fetchall()
    assert [(c[0], c[1]) for c in columns] == [
        ("impression_id", "VARCHAR"),
        ("served_at", "BIGINT"),
        ("visitor_id", "BIGINT"),
        ("route", "VARCHAR"),
        ("strategy", "VARCHAR"),
        ("policy", "VARCHAR"),
        ("experiment", "VARCHAR"),
        ("variant", "VARCHAR"),
        ("snapshot_version", "VARCHAR"),
        ("model_version", "VARCHAR"),
        ("anchor_item_id", "BIGINT"),
        ("items", 'STRUCT(item_id BIGINT, rank INTEGER, "source" VARCHAR, team VARCHAR)[]'),
    ]
    rows = duckdb.sql(
        f"select impression_id, visitor_id, anchor_item_id, experiment, variant, len(items) "
        f"from read_parquet('{part}') order by impression_id"
    ).fetchall()
    assert rows == [
        (f"{1:032x}", 7, None, "ranker_vs_als", "mixed", 2),
        (f"{2:032x}", None, 5, None, None, 1),
        (f"{3:032x}", 7, None, None, None, 0),
    ]
    items = duckdb.sql(
        "select impression_id, item.item_id, item.rank, item.source, item.team from "
        f"(select impression_id, unnest(items) as item from read_parquet('{part}')) "
        "order by impression_id, item.rank"
    ).fetchall()
    assert items == [
        (f"{1:032x}", 101, 1, "ranker", "ranker"),
        (f"{1:032x}", 201, 2, "als", "als"),
        (f"{2:032x}", 9, 1, "similar", None),
    ]
    root = Path(lake.root)
    assert not list((root / IMPRESSIONS_LANDING_DIR).glob("*.jsonl"))
    assert [p.name for p in (root / IMPRESSIONS_INGESTED_DIR).iterdir()] == [f"{STEM}.jsonl"]
    assert not lake.glob("raw/rejected/*.parquet")


def test_the_api_s_own_lines_are_accepted(tmp_path: Path, lake: Lake) -> None:
    """The writer (api.impressions.to_line) and the checker agree on the line format."""
    from api.impressions import items_json, to_line

    record = (
        NOW_MS,
        "0123456789abcdef0123456789abcdef",
        42,
        "session",
        "session",
        "interleave:ranker,popularity",
        "exp",
        "b",
        "20260101T000000Z-0123abcd",
        "fv1_20150918T025947-catboost-42",
        None,
        items_json([5, 6], ["ranker", "popular"], ["ranker", "popularity"]),
    )
    land(lake, STEM, [to_line(record).encode()])
    report = run(lake, tmp_path / "work")
    assert (report.accepted, report.rejected) == (1, 0), report.reasons


def long_line() -> bytes:
    obj = impression(90, model_version="m")
    obj["snapshot_version"] = "20260101T000000Z-" + "a" * (MAX_LINE_BYTES)
    return line(obj)


RANK = "bad rank (1..n in order expected)"
# (the line as written, the reason ingest must give, or how it starts); the ids are distinct
BAD: list[tuple[bytes, str]] = [
    (long_line(), f"line too long (over {MAX_LINE_BYTES} bytes)"),
    (b'{"impression_id": "caf\xe9"}', "bytes are not UTF-8"),
    (b"", "empty line"),
    (b"{not json", "not JSON (Expecting property name enclosed in double quotes at column 2)"),
    (line(impression(10))[:-1], "not JSON (Expecting ',' delimiter at column "),
    (line(impression(11)).replace(b'"visitor_id":7', b'"visitor_id":NaN'), "not JSON (NaN is"),
    (
        line(impression(12)).replace(b'{"impression_id"', b'{"route":"x","impression_id"'),
        "duplicate key ('route')",
    ),
    (  # a key twice, one colon spelt as an escape: still seen
        line(impression(48))
        .replace(b'"interleave:', b'"interleave\\u003a')
        .replace(b'{"impression_id"', b'{"route":"x","impression_id"'),
        "duplicate key ('route')",
    ),
    (b"[1, 2]", "not a JSON object"),
    (b'"just a string"', "not a JSON object"),
    (
        line({k: v for k, v in impression(13).items() if k != "served_at"}),
        "missing key (served_at)",
    ),
    (line(impression(14, extra=1)), "unexpected key ('extra')"),
    (line(impression(15, impression_id="ABCDEF" + "0" * 26)), "bad impression_id"),
    (line(impression(16, impression_id=f"{16:031x}")), "bad impression_id"),
    (line(impression(17, impression_id=17)), "bad impression_id"),
    (line(impression(18, served_at=float(NOW_MS))), "bad served_at"),
    (line(impression(19, served_at=True)), "bad served_at"),
    (line(impression(20, served_at=str(NOW_MS))), "bad served_at"),
    (line(impression(21, served_at=NOW_MS // 1000)), "served_at out of range"),  # seconds
    (line(impression(22, served_at=NOW_MS + 1)), "served_at in the future"),
    (line(impression(23, visitor_id=-1)), "bad visitor_id"),
    (line(impression(24, visitor_id=2**63)), "bad visitor_id"),
    (line(impression(25, visitor_id=True)), "bad visitor_id"),
    (line(impression(26, visitor_id=7.0)), "bad visitor_id"),
    (line(impression(27, route="home")), "bad route"),
    (line(impression(28, strategy=["personalized"])), "bad strategy"),
    (line(impression(29, policy="interleave:ranker")), "bad policy"),
    (line(impression(30, policy="interleave:ranker,random")), "bad policy"),
    (line(impression(31, policy="Ranker")), "bad policy"),
    (line(impression(32, experiment="has space")), "bad experiment"),
    (line(impression(33, variant="v" * 65)), "bad variant"),
    (line(impression(34, variant=None)), "experiment and variant not both given"),
    (line(impression(35, snapshot_version="../../etc")), "bad snapshot_version"),
    (line(impression(36, model_version="m\n")), "bad model_version"),
    (line(impression(37, anchor_item_id="5")), "bad anchor_item_id"),
    (line(impression(38, items={"item_id": 1})), "bad items"),
    (
        line(
            impression(
                39,
                items=[
                    {"item_id": i, "rank": i, "source": "ranker", "team": None}
                    for i in range(1, MAX_ITEMS + 2)
                ],
            )
        ),
        f"too many items (over {MAX_ITEMS})",
    ),
    (line(impression(40, items=[[1, 1, "ranker", None]])), "bad item (an object with"),
    (line(impression(41, items=[{"item_id": 1, "rank": 1, "source": "ranker"}])), "bad item"),
    (
        line(impression(42, items=[{"item_id": -1, "rank": 1, "source": "als", "team": None}])),
        "bad item_id",
    ),
    (line(impression(43, items=[{"item_id": 1, "rank": 2, "source": "als", "team": None}])), RANK),
    (
        line(impression(44, items=[{"item_id": 1, "rank": True, "source": "als", "team": None}])),
        RANK,
    ),
    (
        line(impression(45, items=[{"item_id": 1, "rank": 1, "source": "x", "team": None}])),
        "bad source",
    ),
    (
        line(impression(46, items=[{"item_id": 1, "rank": 1, "source": "als", "team": "b"}])),
        "bad team",
    ),
    (
        line(
            impression(
                47,
                items=[
                    {"item_id": 1, "rank": 1, "source": "als", "team": None},
                    {"item_id": 1, "rank": 2, "source": "als", "team": None},
                ],
            )
        ),
        "duplicate item_id",
    ),
    (line(impression(1)), "duplicate impression_id (line 1)"),
]


def test_every_bad_line_is_kept_with_its_reason(tmp_path: Path, lake: Lake) -> None:
    good = [line(impression(1)), line(impression(2))]
    land(lake, STEM, good + [raw for raw, _ in BAD])
    report = run(lake, tmp_path / "work")
    assert report.raw_rows == len(good) + len(BAD)
    assert (report.accepted, report.rejected) == (len(good), len(BAD))
    rejected = read(lake, chunk_parts(lake)[1])
    assert [r[0] for r in rejected] == [f"{STEM}.jsonl"] * len(BAD)
    assert [r[1] for r in rejected] == list(range(len(good) + 1, len(good) + len(BAD) + 1))
    for (number, reason, raw_line), (raw, expected) in zip(
        [r[1:] for r in rejected], BAD, strict=True
    ):
        assert reason.startswith(expected), (number, reason, expected)
        if raw != BAD[1][0]:  # the line as written (bytes that are not UTF-8: escaped)
            assert raw_line == raw.decode(), number
    assert rejected[1][3] == '{"impression_id": "caf\\xe9"}'
    # the counts group a reason's details (which line, which key)
    assert report.reasons["bad impression_id"] == 3
    assert report.reasons["not JSON"] == 3
    assert report.reasons["duplicate impression_id"] == 1
    assert sum(report.reasons.values()) == report.rejected
    assert [r[0] for r in read(lake, chunk_parts(lake)[0])] == [
        f"{1:032x}",
        f"{2:032x}",
    ]


def test_an_empty_file_is_zero_rows(tmp_path: Path, lake: Lake) -> None:
    land(lake, STEM, [])
    report = run(lake, tmp_path / "work")
    assert (report.files, report.raw_rows, report.accepted, report.rejected) == (
        [f"{STEM}.jsonl"],
        0,
        0,
        0,
    )
    assert not lake.glob("raw/impressions/*.parquet")
    assert lake.glob(f"{IMPRESSIONS_INGESTED_DIR}/*.jsonl") == [
        f"{IMPRESSIONS_INGESTED_DIR}/{STEM}.jsonl"
    ]
    assert run(lake, tmp_path / "again") is None  # nothing waiting


def test_a_batch_sent_twice_is_ingested_once(tmp_path: Path, lake: Lake) -> None:
    lines = [line(impression(n)) for n in range(1, 4)]
    land(lake, STEM, lines)
    assert run(lake, tmp_path / "one").accepted == 3
    first = chunk_parts(lake)[0].rsplit("/", 1)[-1]
    assert run(lake, tmp_path / "two") is None  # the same files again: nothing to pick up
    # the API sent the batch again under another name, with one new impression
    other = "20260101T000001000000Z-0123456789abcdef"
    land(lake, other, [lines[0], line(impression(9)), lines[2]])
    report = run(lake, tmp_path / "three")
    assert (report.accepted, report.rejected) == (1, 2)
    assert report.reasons == {"duplicate impression_id": 2}
    (rejected_part,) = lake.glob("raw/rejected/*.parquet")
    rejected = read(lake, rejected_part)
    assert [(r[0], r[1], r[2], r[3]) for r in rejected] == [
        (f"{other}.jsonl", 1, f"duplicate impression_id (already in '{first}')", lines[0].decode()),
        (f"{other}.jsonl", 3, f"duplicate impression_id (already in '{first}')", lines[2].decode()),
    ]
    ids = duckdb.sql(
        f"select impression_id from read_parquet('{lake.url('raw/impressions/*.parquet')}')"
    ).fetchall()
    assert sorted(i for (i,) in ids) == [f"{n:032x}" for n in (1, 2, 3, 9)]


def test_a_duplicate_across_files_of_one_run_is_kept_once(tmp_path: Path, lake: Lake) -> None:
    land(lake, "20260101T000000000000Z-a", [line(impression(1))])
    land(lake, "20260101T000001000000Z-b", [line(impression(1)), line(impression(2))])
    report = run(lake, tmp_path / "work")
    assert (report.raw_rows, report.accepted, report.rejected) == (3, 2, 1)
    # both files in one chunk: the reason names the file and line the id was first seen on
    assert read(lake, chunk_parts(lake)[1]) == [
        (
            "20260101T000001000000Z-b.jsonl",
            1,
            "duplicate impression_id (line 1 of 20260101T000000000000Z-a.jsonl)",
            line(impression(1)).decode(),
        )
    ]


@pytest.mark.parametrize("stop_at", ["part", "move"])
def test_a_claim_left_by_a_stopped_run_is_finished(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch, stop_at: str
) -> None:
    """Stopped before its part was written, or after it and before the move to `_ingested/`:
    the next run reads the claim again, and its ids are not taken for a batch sent twice."""
    lines = [line(impression(n)) for n in range(1, 4)]
    land(lake, STEM, lines)
    put, move = Lake.put, Lake.move

    def stopped_put(self: Lake, local: Path, rel: str) -> None:
        if stop_at == "part" and rel.startswith("raw/impressions/"):
            raise OSError("the machine went away")
        put(self, local, rel)

    def stopped_move(self: Lake, src_rel: str, dst_rel: str) -> None:
        if stop_at == "move" and dst_rel.startswith(IMPRESSIONS_INGESTED_DIR):
            raise OSError("the machine went away")
        move(self, src_rel, dst_rel)

    monkeypatch.setattr(Lake, "put", stopped_put)
    monkeypatch.setattr(Lake, "move", stopped_move)
    with pytest.raises(OSError, match="went away"):
        run(lake, tmp_path / "one")
    root = Path(lake.root)
    assert (root / IMPRESSIONS_CLAIMED_DIR / f"{STEM}.jsonl").exists()
    assert not (root / IMPRESSIONS_LANDING_DIR / f"{STEM}.jsonl").exists()
    assert len(lake.glob("raw/impressions/*.parquet")) == (stop_at == "move")
    # meanwhile the API lands another batch: read by the next run, never removed unread
    land(lake, "20260101T000001000000Z-b", [line(impression(7))])
    monkeypatch.setattr(Lake, "put", put)
    monkeypatch.setattr(Lake, "move", move)
    report = run(lake, tmp_path / "two")
    assert report.files == [f"{STEM}.jsonl", "20260101T000001000000Z-b.jsonl"]  # claim first
    assert (report.accepted, report.rejected) == (4, 0)
    ids = duckdb.sql(
        f"select impression_id from read_parquet('{lake.url('raw/impressions/*.parquet')}')"
    ).fetchall()
    assert sorted(i for (i,) in ids) == [f"{n:032x}" for n in (1, 2, 3, 7)]
    assert not list((root / IMPRESSIONS_CLAIMED_DIR).iterdir())
    assert sorted(p.name for p in (root / IMPRESSIONS_INGESTED_DIR).iterdir()) == [
        f"{STEM}.jsonl",
        "20260101T000001000000Z-b.jsonl",
    ]


def test_a_file_landed_while_ingest_runs_waits_for_the_next(
    tmp_path: Path, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    land(lake, STEM, [line(impression(1))])
    put = Lake.put

    def land_meanwhile(self: Lake, local: Path, rel: str) -> None:
        if rel.startswith("raw/impressions/"):
            land(lake, "20260101T000001000000Z-b", [line(impression(2))])
        put(self, local, rel)

    monkeypatch.setattr(Lake, "put", land_meanwhile)
    assert run(lake, tmp_path / "one").files == [f"{STEM}.jsonl"]
    monkeypatch.setattr(Lake, "put", put)
    assert run(lake, tmp_path / "two").files == ["20260101T000001000000Z-b.jsonl"]


def test_a_landing_file_with_a_name_the_api_never_writes_is_refused(
    tmp_path: Path, lake: Lake
) -> None:
    land(lake, STEM, [line(impression(1))])
    land(lake, "x'; drop table seen; --", [line(impression(2))])
    with pytest.raises(IngestError, match="a landing file named"):
        run(lake, tmp_path / "work")
    # nothing claimed, nothing written: both wait where they were
    assert len(lake.glob(f"{IMPRESSIONS_LANDING_DIR}/*.jsonl")) == 2
    assert not lake.glob("raw/impressions/*.parquet")


def test_the_same_lines_give_the_same_bytes(tmp_path: Path) -> None:
    images = []
    for name in ("one", "two"):
        lake = Lake(str(tmp_path / name))
        land(lake, STEM, [line(impression(1)), line(impression(2)), b"{}"])
        run(lake, tmp_path / f"work-{name}")
        root = Path(lake.root) / "raw"
        images.append(
            {  # the parts are named after their chunk, a new id each run
                re.sub(
                    r"chunk-[0-9TZ]+-[0-9a-f]+", "chunk", str(p.relative_to(root))
                ): p.read_bytes()
                for p in root.rglob("*")
                if p.is_file()
            }
        )
    assert images[0] == images[1]
    assert len(images[0]) == 2  # the part and the rejected lines


def test_ingest_picks_up_landed_impressions_and_says_so(tmp_path: Path, lake: Lake) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_bytes(
        b"timestamp,visitorid,event,itemid,transactionid\n1430622443000,1,view,10,\n"
    )
    land(lake, STEM, [line(impression(1)), b"{}"])
    messages: list[str] = []
    reports = {r.table: r for r in ingest(raw, lake, progress=messages.append)}
    landed = reports["landed_impressions"]
    assert (landed.raw_rows, landed.accepted, landed.rejected) == (2, 1, 1)
    assert landed.reasons == {"missing key": 1}
    assert any(
        m.startswith("landed impressions: 1 files, 2 rows = 1 accepted + 1 rejected (")
        for m in messages
    )
    # and beside the landed events, as the DAGs call it
    land(lake, "20260101T000001000000Z-b", [line(impression(2))])
    (Path(lake.root) / "landing/events").mkdir(parents=True)
    (Path(lake.root) / "landing/events/20260101T000001000000Z-c.csv").write_bytes(
        b"timestamp,visitorid,event,itemid,transactionid,impression_id\n"
        b"1430622443000,1,view,10,," + f"{2:032x}".encode() + b"\n"
    )
    both = ingest_all_landing(lake, tmp_path / "work", max_timestamp_ms=NOW_MS)
    assert [(r.table, r.accepted) for r in both] == [
        ("landed_events", 1),
        ("landed_impressions", 1),
    ]
