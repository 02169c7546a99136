"""Loading a published snapshot into `api.snapshot.Snapshot`: the file is opened read-only
once, verified (tables, columns, metadata, the ranker), and copied into NumPy arrays in
batches; the DuckDB connection is then closed (see `api.snapshot` for the layout in memory).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from api.cache import AnswerCache
from api.snapshot import (
    COLUMNS,
    NAME_PATTERN,
    NO_CATEGORY,
    REQUIRED_METADATA,
    Groups,
    Items,
    Ranker,
    Snapshot,
    SnapshotInvalid,
    _compact,
)
from api.trees import compile_ranker
from recsys.ranking_features import FEATURE_COLUMNS, ITEM_FEATURES, VISITOR_FEATURES
from recsys.snapshots import SNAPSHOT_TABLES, open_snapshot, shown, verify_snapshot

BATCH_ROWS = 1_000_000
# rows DuckDB hands over at a time (a result is made whole first, then read back in batches)
READ_BATCH_ROWS = 100_000
# DuckDB's memory while loading (sorts and results spill to disk beyond it); a load that needs
# more than that anyway is tried once more with the larger limit. At 64 MB a full-scale load
# spilled its larger results to disk and read them back: 7.3-8.0 s against 5.1-5.7 s at 256 MB,
# the same CPU time. 128 MB: as fast as 256 MB (start-up loads of 2.9-3.7 s at 256 MB and 3.3-3.6
# s at 128 MB, parts split between two processes), and 130-150 MB less resident memory. The
# arrays are files written as they are read (`Keep`), so this limit is the load's main cost.
LOADER_MEMORY = ("128MB", "1GB")


# The snapshot's tables in groups that load independently of each other (`load_part`): in
# this process, or in others (`api.load_worker`) whose arrays come back as mapped files.
PARTS = ("catalogue", "visitors", "lists")

# arrays smaller than this stay in memory when a load keeps its arrays in files (`Keep`)
KEEP_IN_MEMORY_BYTES = 1 << 20


class Keep:
    """Where a load keeps its arrays: in memory (`folder` None), or each array written to a
    `.npy` file in `folder`, mapped back read-only, and the file unlinked at once (the mapping
    holds its pages; nothing is left to clean up, whoever loads at the same time).

    Mapped, a snapshot's arrays are file pages: resident once a request touches them, and
    dropped under memory pressure rather than swapped. A swap then costs the new snapshot's
    touched pages rather than a second full copy beside the served one (full scale: 455 MB of
    arrays). Read-only: a request can never change a served snapshot.

    A table's columns are written to their files batch by batch as they are read (`column`),
    so a load never holds a whole column in memory besides its file.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if self.folder is None or array.nbytes < KEEP_IN_MEMORY_BYTES:
            return array
        column = self.column(len(array), array.dtype)
        column.put(0, array)
        return column.finish()

    def column(self, n: int, dtype: Any) -> Column:
        """A column of `n` values to be filled in order, kept as `__call__` keeps arrays."""
        if self.folder is None or n * np.dtype(dtype).itemsize < KEEP_IN_MEMORY_BYTES:
            return Column(np.empty(n, dtype=dtype))
        return FileColumn(self, self._next_path(), n, dtype)

    def _next_path(self) -> Path:
        assert self.folder is not None
        self.count += 1
        return self.folder / f"{self.count - 1:04d}.npy"

    def _mapped(self, path: Path) -> np.ndarray:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        with contextlib.suppress(OSError):  # a system that cannot unlink a mapped file
            path.unlink()
        # a plain ndarray over the mapping: np.memmap's Python-level indexing would cost every
        # request's lookups a few microseconds each
        return np.asarray(mapped)


class Column:
    """A column filled in order (`put`), then `finish`ed; in memory."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def put(self, pos: int, values: np.ndarray) -> None:
        self.values[pos : pos + len(values)] = values

    def finish(self) -> np.ndarray:
        return self.values

    def discard(self) -> None:
        pass


class FileColumn(Column):
    """A column written to its `.npy` file as it is filled, mapped by its `Keep` when done."""

    def __init__(self, keep: Keep, path: Path, n: int, dtype: Any) -> None:
        self.keep, self.path, self.n, self.dtype = keep, path, n, np.dtype(dtype)
        self.file = open(path, "wb")  # noqa: SIM115  (closed by finish or discard)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self.file, {**header, "shape": (n,)})
        self.written = 0

    def put(self, pos: int, values: np.ndarray) -> None:
        if pos != self.written or pos + len(values) > self.n:
            raise ValueError(f"{self.path.name}: rows {pos}+{len(values)} out of order")
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).data)
        self.written += len(values)

    def finish(self) -> np.ndarray:
        self.file.close()
        if self.written != self.n:
            raise ValueError(f"{self.path.name}: {self.written:,} of {self.n:,} rows written")
        return self.keep._mapped(self.path)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _defaulted(column: str, default: float | None) -> str:
    """A feature column as ranking_features gives it: the default for null, as double."""
    if default is None:
        return f"cast({column} as double)"
    return f"cast(coalesce({column}, {float(default)!r}) as double)"


def _id_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> tuple[str, Any]:
    """(cast expression, numpy dtype) of an id column, as int32 when every id fits (RetailRocket's
    do), else int64."""
    ((lo, hi),) = con.execute(f"select min({column}), max({column}) from {table}").fetchall()
    if lo is None or hi is None or (lo >= -(2**31) and hi < 2**31):
        return f"cast({column} as integer)", np.int32
    return f"cast({column} as bigint)", np.int64


def _stream(
    con: duckdb.DuckDBPyConnection,
    table: str,
    select: dict[str, tuple[str, Any]],
    order: Sequence[str],
    group_key: str | None,
    positional: str | None = None,
    keep: Keep | None = None,
) -> tuple[dict[str, np.ndarray], Groups | None]:
    """Read `table` into preallocated arrays, rows in `order`, grouped by `group_key`.

    `select` maps an output name to (SQL expression, NumPy dtype). The `order` columns must be
    output names of integer type. Tables written in that order (models_ml/snapshot.py sorts
    the big ones) are read as they are and checked on the way; only when the check fails is the
    query run again with ORDER BY. A group key is never kept per row: only its distinct values
    and where their rows start.

    `positional` names a rank column that is checked to be 1, 2, ... within each group; when
    it is, the column is dropped (the rank is the position), which saves its memory.

    Each finished array goes to `keep` (default: kept in memory; see `Keep`).
    """
    keep = keep or Keep(None)
    ((n,),) = con.execute(f"select count(*) from {table}").fetchall()
    exprs = ", ".join(f"{expr} as {name}" for name, (expr, _) in select.items())
    for sort in (False, True):
        sql = f"select {exprs} from {table}"
        if sort:
            sql += " order by " + ", ".join(order)
        out = {
            name: keep.column(n, dtype) for name, (_, dtype) in select.items() if name != group_key
        }
        keys: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        previous: tuple[int, ...] | None = None
        last_key: int | None = None
        last_rank = 0
        is_positional = positional is not None
        in_order = True
        pos = 0
        reader: Any = con.sql(sql).to_arrow_reader(READ_BATCH_ROWS)
        try:
            for batch in reader:
                m = batch.num_rows
                if m == 0:
                    continue
                cols = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in select}
                ordered = [np.asarray(cols[c], dtype=np.int64) for c in order]
                if not _lexsorted(ordered, previous):
                    if sort:  # pragma: no cover  (ORDER BY sorts the output columns)
                        raise SnapshotInvalid(f"{table}: rows out of order after sorting")
                    in_order = False
                    break
                previous = tuple(int(o[-1]) for o in ordered)
                for name, values in cols.items():
                    if name != group_key:
                        out[name].put(pos, values)
                if group_key is not None:
                    k = np.asarray(cols[group_key], dtype=np.int64)
                    change = np.flatnonzero(k[1:] != k[:-1]) + 1
                    first = change if last_key == int(k[0]) else np.r_[0, change]
                    if is_positional:
                        rank = np.asarray(cols[str(positional)], dtype=np.int64)
                        expected = np.r_[last_rank, rank[:-1]] + 1
                        expected[first] = 1
                        is_positional = bool(np.array_equal(rank, expected))
                        last_rank = int(rank[-1])
                    keys.append(k[first])
                    starts.append(first + pos)
                    last_key = int(k[-1])
                pos += m
            if in_order and pos != n:
                raise SnapshotInvalid(f"{table}: read {pos:,} rows, counted {n:,}")
        except BaseException:
            for column in out.values():
                column.discard()
            raise
        finally:
            reader.close()  # an unfinished result would block the next query
        if not in_order:  # read again, sorted
            for column in out.values():
                column.discard()
        else:
            groups = None
            if group_key is not None:
                key_arr = np.concatenate(keys) if keys else np.zeros(0, np.int64)
                start_arr = np.concatenate(starts) if starts else np.zeros(0, np.int64)
                if len(key_arr) and not np.all(key_arr[1:] > key_arr[:-1]):
                    raise SnapshotInvalid(f"{table}: {group_key} is not sorted")  # pragma: no cover
                raw = Groups.of(key_arr, np.r_[start_arr, n].astype(np.int64))
                groups = Groups(keep(raw.keys), keep(raw.offsets))
            if is_positional:
                out.pop(str(positional)).discard()
            return {name: column.finish() for name, column in out.items()}, groups
    raise AssertionError("unreachable: the sorted query is always in order")  # pragma: no cover


def _lexsorted(columns: list[np.ndarray], previous: tuple[int, ...] | None) -> bool:
    """Whether rows are in ascending lexicographic order (ties allowed), after `previous`."""
    if previous is not None:
        columns = [np.r_[p, c] for p, c in zip(previous, columns, strict=True)]
    if len(columns[0]) < 2:
        return True
    ahead = np.zeros(len(columns[0]) - 1, dtype=bool)  # decided: strictly greater
    for col in columns:
        diff = np.sign(col[1:] - col[:-1])
        if np.any((diff < 0) & ~ahead):
            return False
        ahead |= diff > 0
    return True


# _item_facts uses a table indexed by item id when the ids span at most this many values
# (RetailRocket's: about 470,000; the table takes 9 bytes a value, 18 MB at most, while it runs)
DENSE_ID_SPAN = 2_000_000


def _item_facts(items: Items, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(category, available) per row of `item_ids`, a million rows at a time.

    Unknown items are available and of category -1, as `Items.lookup` has them. When the
    catalogue's ids are dense enough, each row is one read in a table indexed by id: a binary
    search per row over the catalogue costs a cache miss per step, seconds for millions of rows.
    """
    category = np.empty(len(item_ids), dtype=np.int64)
    available = np.empty(len(item_ids), dtype=bool)
    ids = items.ids
    if len(ids) and int(ids[0]) >= 0 and int(ids[-1]) < DENSE_ID_SPAN:
        span = int(ids[-1]) + 1
        by_id_category = np.full(span, -1, dtype=np.int64)
        by_id_category[ids] = items.category
        by_id_available = np.ones(span, dtype=bool)
        by_id_available[ids] = items.available
        for lo in range(0, len(item_ids), BATCH_ROWS):
            chunk = item_ids[lo : lo + BATCH_ROWS].astype(np.int64)
            inside = (chunk >= 0) & (chunk < span)
            at = np.where(inside, chunk, 0)
            category[lo : lo + BATCH_ROWS] = np.where(inside, by_id_category[at], -1)
            available[lo : lo + BATCH_ROWS] = np.where(inside, by_id_available[at], True)
        return _compact(category), available
    for lo in range(0, len(item_ids), BATCH_ROWS):
        chunk = item_ids[lo : lo + BATCH_ROWS].astype(np.int64)
        available[lo : lo + BATCH_ROWS], category[lo : lo + BATCH_ROWS] = items.lookup(chunk)
    return _compact(category), available


def _check_columns(con: duckdb.DuckDBPyConnection) -> None:
    present: dict[str, set[str]] = {}
    for table, column in con.execute(
        "select table_name, column_name from duckdb_columns()"
    ).fetchall():
        present.setdefault(table, set()).add(column)
    for table, columns in COLUMNS.items():
        missing = [c for c in columns if c not in present.get(table, set())]
        if missing:
            raise SnapshotInvalid(f"table {table} lacks columns: {', '.join(missing)}")


def _metadata(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in con.execute("select key, value from metadata").fetchall():
        try:
            data[str(key)] = json.loads(value)
        except (TypeError, ValueError) as exc:
            raise SnapshotInvalid(f"metadata {shown(key)} is not JSON: {shown(value)}") from exc
    missing = [k for k in REQUIRED_METADATA if data.get(k) in (None, "")]
    if missing:
        raise SnapshotInvalid(f"metadata lacks {', '.join(missing)}")
    for key in ("model_version", "feature_version"):  # they go out in every answer's headers
        if not isinstance(data[key], str) or not NAME_PATTERN.fullmatch(data[key]):
            raise SnapshotInvalid(
                f"metadata {key} {shown(data[key])} is not a name "
                "(letters, digits and . _ : + -, at most 128)"
            )
    return data


def _parse_cutoff(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise SnapshotInvalid(f"metadata cutoff_at {shown(value)} is not a timestamp") from exc
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _ranker_row(con: duckdb.DuckDBPyConnection) -> tuple[bytes, Any]:
    """(model bytes, metadata) of the ranker `_make_ranker` makes: CatBoost's by name."""
    rows = con.execute(
        "select name, model, metadata from ranker order by name = 'catboost' desc, name"
    ).fetchall()
    if not rows:
        raise SnapshotInvalid("the ranker table is empty")
    _, blob, meta_text = rows[0]
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SnapshotInvalid(f"the ranker's model is not bytes: {shown(blob)}")
    return bytes(blob), meta_text


def _make_ranker(blob: bytes, meta_text: Any) -> Ranker:
    from catboost import CatBoostRanker

    try:
        metadata = json.loads(meta_text) if isinstance(meta_text, str) else dict(meta_text)
        model = CatBoostRanker()
        model.load_model(blob=blob)
    except Exception as exc:  # CatBoostError, JSON errors: a broken model is a broken snapshot
        raise SnapshotInvalid(f"the ranker cannot be loaded: {exc}") from exc
    columns = list(model.feature_names_)
    cats = [columns[i] for i in model.get_cat_feature_indices()]
    if metadata.get("features") is not None and list(metadata["features"]) != columns:
        raise SnapshotInvalid(
            f"the ranker's features {shown(columns, 300)} differ from its metadata's "
            f"{shown(metadata['features'], 300)}"
        )
    unknown = [c for c in columns if c not in FEATURE_COLUMNS]
    if unknown:
        raise SnapshotInvalid(
            "the ranker needs features this service cannot compute: "
            + shown(", ".join(unknown), 300).strip("'")
        )
    return Ranker(model=model, features=columns, cat_features=cats, metadata=metadata)


def load(
    path: Path, manifest: dict[str, Any], cache_bytes: int = 0, files_dir: Path | None = None
) -> Snapshot:
    """Verify and load the snapshot file at `path` (its sha256 is checked by the caller).

    Raises `SnapshotInvalid` for anything that would make answers wrong: a missing table or
    column, row counts that differ from the manifest, metadata without a cutoff or versions,
    a ranker that cannot be loaded or needs a feature the service does not compute.

    With `files_dir`, the snapshot's arrays are kept in files, mapped (see `Keep`), made in a
    new folder there that is removed when the load ends. (`api.load_worker.load` loads parts
    in another process.)
    """
    check(path, manifest)
    if files_dir is None:
        metadata, pieces = read_parts(path, PARTS, Keep(None))
        return assemble(manifest, metadata, pieces, cache_bytes)
    with arrays_folder(files_dir) as folder:
        metadata, pieces = read_parts(path, PARTS, Keep(folder))
        return assemble(manifest, metadata, pieces, cache_bytes)


def check(path: Path, manifest: dict[str, Any]) -> None:
    """SnapshotInvalid unless the file holds the snapshot's tables, with the manifest's counts."""
    try:
        counts = verify_snapshot(path)
    except (duckdb.Error, ValueError) as exc:
        raise SnapshotInvalid(str(exc)) from exc
    expected = manifest.get("row_counts") or {}
    if not isinstance(expected, dict) or not all(
        isinstance(expected[t], int) and not isinstance(expected[t], bool)
        for t in SNAPSHOT_TABLES
        if t in expected
    ):
        raise SnapshotInvalid("the manifest's row_counts are not whole numbers by table")
    differ = [t for t in SNAPSHOT_TABLES if t in expected and int(expected[t]) != counts[t]]
    if differ:
        raise SnapshotInvalid(
            "row counts differ from the manifest: "
            + ", ".join(f"{t} {counts[t]:,} != {int(expected[t]):,}" for t in differ)
        )


@contextlib.contextmanager
def arrays_folder(files_dir: Path) -> Iterator[Path]:
    """A new folder in `files_dir` for a load's array files, removed when the load ends."""
    files_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".arrays-", dir=files_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_parts(
    path: Path, parts: Sequence[str], keep: Keep
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, pieces of `parts`) of the snapshot at `path`, its columns checked."""
    for attempt, memory in enumerate(LOADER_MEMORY):
        try:
            # the arrays are the copy that counts: DuckDB's own cache of the file's blocks
            # would otherwise grow to the whole file while a snapshot is loaded beside the
            # served one; one thread: the load runs beside the requests being served, which
            # need a core of their own more than the load needs to finish a few seconds sooner
            with open_snapshot(
                path, threads=1, memory_limit=memory, temp_directory=path.parent / ".spill"
            ) as con:
                _check_columns(con)
                metadata = _metadata(con)
                pieces: dict[str, Any] = {}
                for part in parts:
                    pieces.update(load_part(con, part, metadata, keep))
                return metadata, pieces
        except duckdb.OutOfMemoryException:
            if attempt + 1 == len(LOADER_MEMORY):
                raise
        except duckdb.Error as exc:
            raise SnapshotInvalid(f"{type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def load_part(
    con: duckdb.DuckDBPyConnection, part: str, metadata: dict[str, Any], keep: Keep
) -> dict[str, Any]:
    """The pieces of one of PARTS, by the name `assemble` takes them."""
    if part == "catalogue":
        return _catalogue_part(con, keep)
    if part == "visitors":
        return _visitors_part(con, _parse_cutoff(metadata["cutoff_at"]), keep)
    if part == "lists":
        return _lists_part(con, keep)
    raise ValueError(f"no such part: {part!r}")


def _catalogue_part(con: duckdb.DuckDBPyConnection, keep: Keep) -> dict[str, Any]:
    """Items, the published lists (which carry their items' facts), popular items, the
    catalogue by popularity, and the ranker's row (made a model by `assemble`)."""
    f32 = np.float32
    # -- items: one row per id; coalesces as ranking_features applies them
    cols, _ = _stream(
        con,
        "items",
        {
            "item_id": ("cast(item_id as bigint)", np.int64),
            "category_id": ("cast(coalesce(category_id, -1) as bigint)", np.int64),
            "root_category_id": ("cast(coalesce(root_category_id, -1) as bigint)", np.int64),
            "is_available": ("coalesce(is_available, true)", np.bool_),
            **{
                name: (_defaulted(column, default), f32)
                for name, (column, default) in ITEM_FEATURES.items()
            },
        },
        order=("item_id",),
        group_key=None,
        keep=keep,
    )
    if len(cols["item_id"]) > 1 and not np.all(cols["item_id"][1:] > cols["item_id"][:-1]):
        raise SnapshotInvalid("items: item_id is not unique")
    items = Items(
        ids=cols.pop("item_id"),
        category=cols.pop("category_id"),
        root_category=cols.pop("root_category_id"),
        available=cols.pop("is_available"),
        features=cols,
    )

    # -- published lists, in rank order
    rec_cols, recs = _stream(
        con,
        "recommendations",
        {
            "visitor_id": ("cast(visitor_id as bigint)", np.int64),
            "rank": ("cast(rank as bigint)", np.int64),
            "item_id": _id_column(con, "recommendations", "item_id"),
            "score": ("cast(score as double)", f32),
            "confidence": ("cast(confidence as double)", f32),
        },
        order=("visitor_id", "rank"),
        group_key="visitor_id",
        keep=keep,
        positional="rank",
    )
    confidence_by_rank = None
    if "rank" not in rec_cols:  # positional: the confidence may be a function of the rank
        rows = con.execute(
            """
            select rank, min(confidence), max(confidence), count(confidence) = count(*)
            from recommendations group by rank order by rank
            """
        ).fetchall()
        if all(lo == hi and complete for _, lo, hi, complete in rows):
            confidence_by_rank = np.zeros(len(rows) + 1, dtype=f32)
            confidence_by_rank[1:] = [lo for _, lo, _, _ in rows]
            del rec_cols["confidence"]
    else:
        del rec_cols["rank"]
    # each published item's category and availability, so that a visitor's list is filtered
    # and rendered without searching the catalogue (random lookups: cache misses at scale)
    category, available = _item_facts(items, rec_cols["item_id"])
    rec_cols["category"], rec_cols["available"] = keep(category), keep(available)
    del category, available
    # -- popular items: overall, and per category as one Groups (a few thousand categories:
    # as one small array pair each, they cost a worker's hand-over 3,300 arrays to unpickle,
    # ~30 ms holding the server's GIL during a swap), then the catalogue by popularity
    overall_popular = con.execute(
        """
        select cast(item_id as bigint) as item_id,
            coalesce(cast(score as double), 0) as score
        from popular_items where category_id is null order by rank, item_id
        """
    ).fetchnumpy()
    by_category = con.execute(
        """
        select cast(category_id as bigint) as category_id, cast(item_id as bigint) as item_id,
            coalesce(cast(score as double), 0) as score
        from popular_items where category_id is not null order by category_id, rank, item_id
        """
    ).fetchnumpy()
    if np.ma.is_masked(overall_popular["item_id"]) or np.ma.is_masked(by_category["item_id"]):
        raise SnapshotInvalid("popular_items: an item_id is null")
    popular_all = (
        np.asarray(overall_popular["item_id"], np.int64),
        np.nan_to_num(np.asarray(overall_popular["score"], np.float64)),
    )
    # rows sorted by category: each category's first row (none without rows)
    popular_category = np.asarray(by_category["category_id"], np.int64)
    keys, starts = np.unique(popular_category, return_index=True)
    popular = Groups.of(keys, np.r_[starts, len(popular_category)].astype(np.int64))
    catalogue_cols, catalogue = _stream(
        con,
        """
        (select item_id, coalesce(category_id, -1) as category_id,
            coalesce(popularity_score, 0) as popularity_score,
            row_number() over (
                partition by coalesce(category_id, -1)
                order by coalesce(popularity_score, 0) desc, item_id
            ) as position,
        from items where coalesce(is_available, true))
        """,
        {
            "category_id": ("cast(category_id as bigint)", np.int64),
            "position": ("cast(position as bigint)", np.int64),
            "item_id": ("cast(item_id as bigint)", np.int64),
            "score": ("cast(popularity_score as double)", np.float64),
        },
        order=("category_id", "position"),
        group_key="category_id",
        keep=keep,
    )
    overall = con.execute(
        """
        select cast(item_id as bigint), cast(coalesce(popularity_score, 0) as double)
        from items where coalesce(is_available, true)
        order by coalesce(popularity_score, 0) desc, item_id
        """
    ).fetchnumpy()
    values = list(overall.values())
    catalogue_all = (
        keep(np.asarray(values[0], np.int64)),
        keep(np.nan_to_num(np.asarray(values[1], np.float64))),
    )
    assert catalogue is not None and recs is not None
    # NULL scores are 0 (the query's coalesce), NaN too, infinities the largest floats: a copy
    # only when there is one, else the column stays as `keep` wrote it (a mapped file)
    catalogue_scores = catalogue_cols["score"]
    if not np.isfinite(catalogue_scores).all():
        catalogue_scores = keep(np.nan_to_num(catalogue_scores))
    return {
        "items": items,
        "recs": recs,
        "rec_cols": rec_cols,
        "confidence_by_rank": confidence_by_rank,
        "popular": popular,
        "popular_items": keep(np.asarray(by_category["item_id"], np.int64)),
        "popular_scores": keep(np.nan_to_num(np.asarray(by_category["score"], np.float64))),
        "popular_all": popular_all,
        "catalogue": catalogue,
        "catalogue_items": catalogue_cols["item_id"],
        "catalogue_scores": catalogue_scores,
        "catalogue_all": catalogue_all,
        "ranker_row": _ranker_row(con),
    }


def _visitors_part(con: duckdb.DuckDBPyConnection, cutoff: datetime, keep: Keep) -> dict[str, Any]:
    """Visitors, and each visitor's interactions and category affinities."""
    cutoff_sql = f"cast('{cutoff.isoformat(sep=' ')}' as timestamp)"
    f32, i32 = np.float32, np.int32

    def days_since(column: str) -> str:  # ranking_features: seconds_between(x, cutoff) / 86400
        return f"(epoch({cutoff_sql}) - epoch({column})) / 86400.0"

    # -- visitors: one row per id
    visitors, _ = _stream(
        con,
        "visitors",
        {
            "ids": ("cast(visitor_id as bigint)", np.int64),
            **{
                name: (_defaulted(column, default), f32)
                for name, (column, default) in VISITOR_FEATURES.items()
            },
            # NO_CATEGORY (int64's least) as a SQL literal: a number, not a string
            "top_category_id": (
                f"cast(coalesce(top_category_id, {int(NO_CATEGORY)}) as bigint)",
                np.int64,
            ),
        },
        order=("ids",),
        group_key=None,
        keep=keep,
    )
    ids = visitors["ids"]
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        raise SnapshotInvalid("visitors: visitor_id is not unique")

    # -- interactions: per visitor, items in id order (binary search within the visitor)
    interaction_cols, interactions = _stream(
        con,
        "interactions",
        {
            "visitor_id": ("cast(visitor_id as bigint)", np.int64),
            "item_id": _id_column(con, "items", "item_id"),
            "n_events": ("cast(coalesce(n_events, 0) as integer)", i32),
            "n_views": ("cast(coalesce(n_views, 0) as integer)", i32),
            "n_carts": ("cast(coalesce(n_carts, 0) as integer)", i32),
            "n_purchases": ("cast(coalesce(n_purchases, 0) as integer)", i32),
            "weight": ("cast(coalesce(weight, 0) as double)", f32),
            "days_since": (f"cast({days_since('last_interaction_at')} as double)", f32),
        },
        order=("visitor_id", "item_id"),
        group_key="visitor_id",
        keep=keep,
    )
    # -- category affinities: per visitor, categories in id order
    affinity_cols, affinities = _stream(
        con,
        "visitor_category_affinities",
        {
            "visitor_id": ("cast(visitor_id as bigint)", np.int64),
            # a null category joins nothing in dbt; a value no item has does the same here
            "category_id": (f"cast(coalesce(category_id, {NO_CATEGORY + 1}) as bigint)", np.int64),
            "n_events": ("cast(coalesce(n_events, 0) as integer)", i32),
            "n_carts": ("cast(coalesce(n_carts, 0) as integer)", i32),
            "affinity_share": ("cast(coalesce(affinity_share, 0) as double)", f32),
            "affinity_score": ("cast(coalesce(affinity_score, 0) as double)", f32),
            "days_since": (f"cast({days_since('last_event_at')} as double)", f32),
        },
        order=("visitor_id", "category_id"),
        group_key="visitor_id",
        keep=keep,
    )
    assert interactions is not None and affinities is not None
    return {
        "visitors": visitors,
        "interactions": interactions,
        "interaction_cols": interaction_cols,
        "affinities": affinities,
        "affinity_cols": affinity_cols,
    }


def _lists_part(con: duckdb.DuckDBPyConnection, keep: Keep) -> dict[str, Any]:
    """Each visitor's ALS candidates and each item's similar items."""
    f32 = np.float32
    # -- ALS candidates, in ALS rank order; the rank is small, is_seen a flag
    candidate_cols, candidates = _stream(
        con,
        "candidates",
        {
            "visitor_id": ("cast(visitor_id as bigint)", np.int64),
            "als_rank": ("cast(coalesce(als_rank, 32767) as smallint)", np.int16),
            "item_id": _id_column(con, "candidates", "item_id"),
            "als_score": ("cast(als_score as double)", f32),
            "is_seen": ("coalesce(is_seen, false)", np.bool_),
        },
        order=("visitor_id", "als_rank"),
        group_key="visitor_id",
        keep=keep,
        positional="als_rank",
    )
    ((max_rank,),) = con.execute("select max(als_rank) from candidates").fetchall()
    max_als_rank = 100 if max_rank is None else int(max_rank)  # ALS's default list: 100
    # -- similar items, in similarity order
    similar_cols, similar = _stream(
        con,
        "similar_items",
        {
            "item_id": ("cast(item_id as bigint)", np.int64),
            "similarity_rank": ("cast(similarity_rank as bigint)", np.int64),
            "similar_item_id": _id_column(con, "similar_items", "similar_item_id"),
            "similarity": ("cast(similarity as double)", f32),
        },
        order=("item_id", "similarity_rank"),
        group_key="item_id",
        keep=keep,
    )
    del similar_cols["similarity_rank"]
    assert candidates is not None and similar is not None
    return {
        "candidates": candidates,
        "candidate_cols": candidate_cols,
        "max_als_rank": max_als_rank,
        "similar": similar,
        "similar_cols": similar_cols,
    }


def assemble(
    manifest: dict[str, Any], metadata: dict[str, Any], pieces: dict[str, Any], cache_bytes: int
) -> Snapshot:
    """The snapshot from the pieces of every part (see `load_part`)."""
    blob, meta_text = pieces.pop("ranker_row")
    ranker = _make_ranker(blob, meta_text)
    items: Items = pieces["items"]
    # the categories a request can ask the ranker about: the catalogue's (and -1, unknown)
    ranker.compiled = compile_ranker(
        ranker.model,
        ranker.features,
        ranker.cat_features,
        {"category_id": items.category, "root_category_id": items.root_category},
    )
    return Snapshot(
        version=str(manifest.get("version") or ""),
        manifest=manifest,
        metadata=metadata,
        cutoff_at=_parse_cutoff(metadata["cutoff_at"]),
        ranker=ranker,
        cache=AnswerCache(cache_bytes // 2),
        similar_cache=AnswerCache(cache_bytes // 2),
        **pieces,
    )
