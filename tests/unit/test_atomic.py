"""recsys.atomic.write_atomic: whole files or none, whatever the writers do."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from recsys.atomic import write_atomic
from recsys.gc import TEMP_FILE


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_atomic(target, "old")
    write_atomic(target, b"new", durable=True)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "lease"
    write_atomic(target, "old")

    def no_rename(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("recsys.atomic.os.replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["lease"]


def test_racing_writers_leave_one_of_their_files_whole(tmp_path: Path) -> None:
    target = tmp_path / "batch.csv"
    bodies = [str(i) * 100_000 for i in range(8)]
    threads = [threading.Thread(target=write_atomic, args=(target, b)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text() in bodies
    assert [p.name for p in tmp_path.iterdir()] == ["batch.csv"]


def test_the_temporary_name_is_one_that_recsys_gc_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = __import__("os").replace

    def spy(src: object, dst: object) -> None:
        seen.append(Path(str(src)).name)
        real(src, dst)

    monkeypatch.setattr("recsys.atomic.os.replace", spy)
    write_atomic(tmp_path / "x.csv", "a")
    assert seen and TEMP_FILE.match(seen[0])
