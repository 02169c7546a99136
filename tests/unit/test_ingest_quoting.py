"""Ingest reads quoted CSV the way Python's `csv` module does, line by line, on both paths.

Random lines made of commas, quotes, letters and a two-byte character, checked against an
independent reader: every line ends up accepted with the values `csv` reads, or rejected with
the reason those values call for (a quote left open, a wrong number of fields).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import duckdb
import pytest

import recsys.ingest as ingest_module
from recsys.ingest import ingest
from recsys.lake import Lake

HEADER = b"timestamp,visitorid,event,itemid,transactionid\n1430622443000,1,view,10,\n"
PROPERTIES = b"timestamp,itemid,property,value\n"
TIMESTAMP = 1431226800000
UNTERMINATED = "unterminated quote (newlines inside a quoted value are not supported)"


def random_lines(seed: int, n: int) -> list[bytes]:
    """Property rows whose property and value are random text: `<timestamp>,<item>,<text>`."""
    rng = random.Random(seed)
    alphabet = ["a", "b", ",", '"', '"', "é"]
    return [
        f"{TIMESTAMP},{item},{''.join(rng.choices(alphabet, k=rng.randint(0, 10)))}".encode()
        for item in range(n)
    ]


def expected(line: bytes) -> tuple[str, object]:
    """("accepted", row) or ("rejected", reason), by Python's csv reader."""
    fields = next(csv.reader([line.decode("utf-8") + "\n"]))
    if any("\n" in value for value in fields):  # the quote ran over the end of the line
        return "rejected", UNTERMINATED
    if len(fields) != 4:
        return "rejected", f"wrong number of fields: expected 4, got {len(fields)}"
    if fields[2] == "":
        return "rejected", "empty property"
    return "accepted", (TIMESTAMP, int(fields[1]), fields[2], fields[3])


def run(tmp_path: Path, lines: list[bytes]) -> tuple[list[tuple], list[tuple]]:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_bytes(HEADER)
    (raw / "item_properties.csv").write_bytes(PROPERTIES + b"\n".join(lines) + b"\n")
    lake = Lake(str(tmp_path / "lake"))
    ingest(raw, lake)
    with duckdb.connect() as con:
        accepted = con.execute(
            "select * from read_parquet(?)",
            [lake.url("raw/item_properties/item_properties.parquet")],
        ).fetchall()
        rejected = con.execute(
            "select line_number, reason, raw_line from read_parquet(?)",
            [lake.url("raw/rejected/item_properties.parquet")],
        ).fetchall()
    return accepted, rejected


def test_random_quoting_matches_the_csv_module_on_the_slow_path(tmp_path: Path) -> None:
    lines = random_lines(seed=11, n=3000)
    outcomes = [expected(line) for line in lines]
    kinds = {kind for kind, _ in outcomes}
    reasons = {str(value) for kind, value in outcomes if kind == "rejected"}
    assert kinds == {"accepted", "rejected"} and UNTERMINATED in reasons  # a fair sample
    accepted, rejected = run(tmp_path, lines)
    assert accepted == [value for kind, value in outcomes if kind == "accepted"]
    assert rejected == [
        (number, value, line.decode("utf-8"))
        for number, (line, (kind, value)) in enumerate(zip(lines, outcomes, strict=True), start=2)
        if kind == "rejected"
    ]


def test_random_quoting_matches_the_csv_module_on_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_slow_path(*_args: object) -> None:
        raise AssertionError("a clean file went down the slow path")

    monkeypatch.setattr(ingest_module, "_structural_split", no_slow_path)
    lines = [line for line in random_lines(seed=12, n=3000) if expected(line)[0] == "accepted"]
    assert sum(b'"' in line for line in lines) > 100
    accepted, rejected = run(tmp_path, lines)
    assert accepted == [expected(line)[1] for line in lines]
    assert rejected == []
