"""Ingest: RetailRocket-layout CSVs -> typed Parquet under the lake's `raw/`.

Every data line of every input file ends up in exactly one place: the accepted table
(`raw/<table>/<table>.parquet`) or the rejected rows (`raw/rejected/<table>.parquet`, with
`source_file`, `line_number`, `reason`, `raw_line`). So `raw rows = accepted + rejected`, always.

How it stays fast on 20M property rows: a clean file is parsed by Arrow's multi-threaded CSV
reader straight from the file (its bytes never held whole) and checked with vectorised kernels,
chunk by chunk; a file with carriage returns (CRLF) or a last line without its newline is read
into memory first and parsed from its bytes the same way. Only when Arrow finds a structural
problem (a wrong number of fields, bytes that are not UTF-8, a stray carriage return, a quote
left open) is the file split into lines with NumPy, the bad lines set aside with their reason,
and the rest parsed as before. Exact duplicates are found by grouping on a 64-bit row hash in
DuckDB and confirmed on the values. A rejected row keeps its line as it was in the file
(`raw_line`), read back from the file's bytes by line number, so that what was refused can be
fixed and sent again.

CSV is read as CSV (RFC 4180): a field may be double-quoted, with `""` for a quote inside, as
spreadsheets and pandas write it, and the header may be quoted too. One record per line, as in
RetailRocket: a newline inside a quoted value is not supported, so a line that leaves a quote open
is rejected ("unterminated quote") and the next line is judged on its own, never merged into it.

Before anything is written, every file and header is checked: a missing file or column gives one
error naming it and leaves the lake as it was. Ingest is idempotent: the sha256 of the inputs is
recorded per table, and the same input again changes nothing (so a row rejected as "timestamp in
the future" stays rejected until its file changes).

Events the API accepted wait in the lake's `landing/events/` as small files in the `events.csv`
layout (`api/events.py`), one per request. Every ingest also picks them up, exactly once
(`ingest_landing`), in chunks of up to `CHUNK_FILES` files or `CHUNK_BYTES` (`_pick_up`): one
Parquet part per chunk, `raw/events/landed-<chunk id>.parquet` (rejected rows:
`raw/rejected/landed-<chunk id>.parquet`), not one per file, which left an hour of traffic as
hundreds of thousands of tiny parts for every build to list. Each file is first claimed: moved to
`landing/events/_claimed/<file>` (one atomic rename on a local lake; a copy then a delete on S3),
under its own name, where the API's Idempotency-Key look-up finds it. Only the claimed copy is
read, so an API retry that lands a file of the same name meanwhile is a new file in
`landing/events/`, left for the next ingest, instead of being removed unread. The chunk's
identity is fixed once its files are claimed: a manifest `landing/events/_chunks/<chunk id>.json`
names them. Then the files are checked, each with the same rules as `events.csv` and as if on its
own (its header, its line numbers in rejected rows, an exact duplicate only within the file: two
requests with the same events both land), their parts written, the manifest marked written, and
only then are the files moved to `landing/events/_ingested/<file>` and the manifest removed. A
stopped run is finished by the next ingest, first: a chunk not yet written is written again under
its own id (the same parts, replaced, never a second copy), a written one only moved; claims no
manifest names (stopped before the manifest, or left by an ingest from before chunks, whose
`landed-<file>.parquet` parts are then removed) go into a new chunk. An Idempotency-Key's file
that lands again with the same bytes as the one already ingested (two retries racing on S3, which
has no lock) is moved without being read again. A reload of `events.csv` replaces
`raw/events/events.parquet` only: landed parts stay. (Exactly once from landing to raw; a client
that posts the same events twice without an Idempotency-Key sends two batches. One ingest at a
time: a second one running at once would take the first one's claims for left-overs.)

Fast: a chunk's files with one header are parsed in one pass, their bodies joined (each ends
with a newline) and the line numbers mapped back to files; the file's index is part of the
duplicate key. Rows are in the order of the files' names, then of their lines, so the same files
give the same bytes.

A landed events file has the header `LANDED_EVENTS` (the `events.csv` columns and
`impression_id`, empty or 32 hex characters: the answer the event came from) or, from an older
API, the `events.csv` one; any other header is refused. Every raw events file, landed or from
`events.csv`, has the `impression_id` column (null where there is none), so that `raw/events/`
has one schema; an `events.parquet` written before the column is written again from the same
input by the next ingest.

Impressions (what the API showed) wait in `landing/impressions/` as JSON-lines files, one
impression per line (`ingest_landing_impressions`, the same chunks, `_claimed/`, `_chunks/` then
`_ingested/`). A line is untrusted: it must be UTF-8 JSON, one object with exactly the contract's
keys and types (`impression_problem`), at most `MAX_LINE_BYTES` long. Good lines become
`raw/impressions/landed-<chunk id>.parquet` (`IMPRESSIONS_SCHEMA`, one row per impression, its
items nested), the others `raw/rejected/impressions-landed-<chunk id>.parquet` with their reason
and the line as written. An impression id seen before, in the file, in an earlier file of the
run or in `raw/impressions/` (a batch sent twice), is rejected as a duplicate: the ids already
ingested are read once per run, one column, with DuckDB.

Events later than `max_timestamp_ms` (by default now plus five minutes of clock skew) are rejected
as "timestamp in the future": one event stamped 2099 would otherwise move every later training
window to 2099. Item property snapshots follow the same rule, and impressions (`served_at`);
the category tree has no time.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recsys.experiments import PLAIN_POLICIES
from recsys.lake import TEMP_PREFIX, Lake, LakeError, connect_duckdb
from recsys.settings import Settings
from recsys.snapshots import VERSION_PATTERN, shown

BLOCK = 65_536  # lines per UTF-8 check on the slow path
CSV_BLOCK_BYTES = 1 << 24  # Arrow's CSV blocks: a table's columns come in chunks of this
# The longest line the split into lines keeps: at most half a block, so that every block Arrow
# reads holds a line's end (a longer line fails the whole parse, "straddling object")
MAX_CSV_LINE_BYTES = 1 << 23

PARSE_THREADS = 2  # files of one table parsed at once
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01: anything later is not a real event
EVENT_TYPES = ("view", "addtocart", "transaction")
LANDING_DIR = "landing/events"
INGESTED_DIR = f"{LANDING_DIR}/_ingested"
CLAIMED_DIR = f"{LANDING_DIR}/_claimed"
LANDED_PREFIX = "landed-"
# default allowance for a client clock ahead of ours, when the caller gives no limit: the
# setting's default (RECSYS_MAX_CLOCK_SKEW_SECONDS), which the CLI and the DAGs pass
CLOCK_SKEW_MS = int(Settings.model_fields["recsys_max_clock_skew_seconds"].default) * 1000


RAW_EVENTS = "raw/events/*.parquet"  # what every build reads first
NO_EVENTS_HINT = (
    "ingest some first: `recsys ingest --raw-dir DIR` (or `recsys run --raw-dir DIR`; plain "
    "`recsys run` generates demo data), set RECSYS_RAW_DIR or pass `raw_dir` to the DAG, or "
    "POST events to the API and ingest them"
)


class NoEvents(RuntimeError):
    """The lake holds no raw events yet: nothing to build, train or evaluate on."""


def require_events(lake: Lake) -> None:
    """NoEvents, saying what to do, when the lake has no raw events yet."""
    if not lake.glob(RAW_EVENTS):
        raise NoEvents(f"no events in {lake.url('raw/events/')} yet: {NO_EVENTS_HINT}")


class IngestError(ValueError):
    """The input cannot be ingested at all (missing file or column). Nothing was written."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    patterns: tuple[str, ...]
    # (column, kind): `timestamp` epoch ms, `id` a non-negative integer, `id?` the same or empty,
    # `event` one of EVENT_TYPES, `name` a non-empty string, `text` any string
    columns: tuple[tuple[str, str], ...]
    required: bool

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


EVENTS = TableSpec(
    "events",
    ("events.csv",),
    (
        ("timestamp", "timestamp"),
        ("visitorid", "id"),
        ("event", "event"),
        ("itemid", "id"),
        ("transactionid", "id?"),
    ),
    required=True,
)
# The events the API lands (`landing/events/*.csv`): the columns of `events.csv` plus the
# impression the event answers, if any (empty, or an impression id). The API writes this header,
# `",".join(LANDED_EVENTS.names)`; files an older API left with the `EVENTS` header still ingest.
# Every raw events file has the column (`raw_schema`), null where the input had none.
LANDED_EVENTS = TableSpec(
    "events",
    ("landing/events/*.csv",),
    (*EVENTS.columns, ("impression_id", "impression_id?")),
    False,
)
ITEM_PROPERTIES = TableSpec(
    "item_properties",
    ("item_properties_part1.csv", "item_properties_part2.csv", "item_properties.csv"),
    (("timestamp", "timestamp"), ("itemid", "id"), ("property", "name"), ("value", "text")),
    required=False,
)
CATEGORY_TREE = TableSpec(
    "category_tree",
    ("category_tree.csv",),
    (("categoryid", "id"), ("parentid", "id?")),
    required=False,
)
SPECS: tuple[TableSpec, ...] = (EVENTS, ITEM_PROPERTIES, CATEGORY_TREE)
REJECTED_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("line_number", pa.int64()),
        ("reason", pa.string()),
        ("raw_line", pa.string()),
    ]
)
ARROW_TYPES = {"timestamp": pa.int64(), "id": pa.int64(), "id?": pa.int64()}
Identity = tuple[int, int, int]  # a file's inode, size and modification time (`_identity`)
IMPRESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # the API's impression ids (fullmatch)


def accepted_schema(spec: TableSpec) -> pa.Schema:
    return pa.schema([(name, ARROW_TYPES.get(kind, pa.string())) for name, kind in spec.columns])


def raw_schema(spec: TableSpec) -> pa.Schema:
    """The schema of a table's raw Parquet files. Events, from `events.csv` or landed, share
    the landed events' one, so that every file in `raw/events/` reads the same way."""
    return accepted_schema(LANDED_EVENTS if spec.name == EVENTS.name else spec)


@dataclass
class TableReport:
    table: str
    files: list[str]
    raw_rows: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unchanged: bool = False
    ingest_id: str | None = None  # written into the raw files' footers and the marker

    def to_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "files": self.files,
            "raw_rows": self.raw_rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": self.reasons,
        }


def _sha256(paths: list[Path], seen: dict[Path, Identity]) -> str:
    """The digest of the files, each of which must still be the file whose `_identity` was
    `seen` once it is read: the digest names what the parse read (IngestError otherwise)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
        _check_unchanged(path, seen[path])
    return digest.hexdigest()


def _digest(pending: Future[str] | None, length: int | None = None) -> str:
    """The digest `_sha256` computes in the background (its first `length` characters), or
    "none" for a table without files."""
    digest = pending.result() if pending is not None else "none"
    return digest[:length] if length is not None else digest


def _read_header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.readline()


def _check_inputs(raw_dir: Path) -> tuple[dict[str, list[Path]], dict[Path, Identity]]:
    """Find each table's files and check their headers; raise before anything is written.
    Returns the files and their `_identity` before their first read (the header's), which
    every later read checks: the digest, the parse, the quoting of rejected lines."""
    if not raw_dir.is_dir():
        raise IngestError(f"raw directory {raw_dir} does not exist")
    found: dict[str, list[Path]] = {}
    seen: dict[Path, Identity] = {}
    for spec in SPECS:
        paths = [raw_dir / p for p in spec.patterns if (raw_dir / p).is_file()]
        if not paths and spec.required:
            raise IngestError(
                f"{raw_dir / spec.patterns[0]}: required file is missing "
                f"(expected columns: {','.join(spec.names)})"
            )
        for path in paths:
            seen[path] = _identity(path)
            header_bytes = _read_header(path)
            try:
                header = header_bytes.decode("utf-8-sig").strip("\r\n")
            except UnicodeDecodeError as exc:
                raise IngestError(f"{path}: the header line is not UTF-8") from exc
            # read as CSV: spreadsheets quote the header too ("timestamp","visitorid",...)
            try:
                names = [h.strip() for h in next(csv.reader([header]))] if header else []
            except csv.Error as exc:  # e.g. a "header" far longer than any real one
                raise IngestError(f"{path}: the header line is not CSV ({exc})") from exc
            missing = [c for c in spec.names if c not in names]
            if missing:
                raise IngestError(
                    f"{path}: missing column {missing[0]!r} in the header "
                    f"(expected {','.join(spec.names)}, found {header or 'an empty file'})"
                )
            if names != list(spec.names):
                raise IngestError(
                    f"{path}: unexpected header {header!r}; expected "
                    f"{','.join(spec.names)} in this order"
                )
        found[spec.name] = paths
    return found, seen


class _Rejects:
    """Rejected lines of one file, gathered as they are found."""

    def __init__(self) -> None:
        self.line_numbers: list[np.ndarray] = []
        self.reasons: list[pa.Array] = []
        self.raw_lines: list[pa.Array] = []

    def add(self, line_numbers: np.ndarray, reasons: pa.Array, raw_lines: object) -> None:
        if len(line_numbers):
            if isinstance(raw_lines, pa.ChunkedArray):
                raw_lines = raw_lines.combine_chunks()
            assert isinstance(raw_lines, pa.Array)
            self.line_numbers.append(np.asarray(line_numbers, dtype=np.int64))
            self.reasons.append(reasons.cast(pa.string()))
            self.raw_lines.append(pc.fill_null(raw_lines.cast(pa.string()), ""))

    def table(self, source_file: str) -> pa.Table:
        if not self.line_numbers:
            return REJECTED_SCHEMA.empty_table()
        numbers = np.concatenate(self.line_numbers)
        return pa.table(
            {
                "source_file": pa.array(np.full(len(numbers), source_file, dtype=object)),
                "line_number": pa.array(numbers),
                "reason": pa.concat_arrays(self.reasons),
                "raw_line": pa.concat_arrays(self.raw_lines),
            },
            schema=REJECTED_SCHEMA,
        )


def _read_body(path: Path) -> bytes:
    """The data lines of a CSV file (`_body_of`), read past the header rather than sliced off
    the whole file's bytes: one copy of a 420 MB file in memory, not two."""
    with open(path, "rb") as fh:
        fh.readline()
        body = fh.read()
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return body


def _identity(path: Path) -> Identity:
    """What tells a file changed: its inode, size and modification time."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _read_again(path: Path, seen: Identity) -> Callable[[], bytes]:
    """How to read `path`'s data lines again to quote rejected ones, refusing a file that
    changed since `seen` (`_identity` before the first read): the quoted line must be the line
    that was parsed, and the input's digest must cover what was ingested."""

    def read() -> bytes:
        _check_unchanged(path, seen)
        body = _read_body(path)
        _check_unchanged(path, seen)  # and not changed while it was read
        return body

    return read


def _check_unchanged(path: Path, seen: Identity) -> None:
    """IngestError when `path` is no longer the file whose `_identity` was `seen`."""
    if _identity(path) != seen:
        raise IngestError(
            f"{path}: the file changed while it was being ingested; nothing was written, "
            "ingest it again once it is complete"
        )


def _body_of(data: bytes) -> bytes:
    """The data lines of a CSV (all after the header line), the last one ended by a newline.

    The added newline makes a quote left open on the last line show as a value holding a
    newline (see `_read_csv`), as on every other line; line numbers and texts are unchanged.
    It also lets the bodies of many files be joined and still split into the same lines.
    """
    header_end = data.find(b"\n")
    body = data[header_end + 1 :] if header_end >= 0 else b""
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return body


class _Lines:
    """A file's data lines as they were written, looked up by line number for rejected rows.

    The line offsets cost one pass over the bytes, so they are found only once something is
    rejected; the lines themselves are views of the bytes, not copies.
    """

    def __init__(self, body: bytes | Callable[[], bytes]) -> None:
        # as `_read_body` returns it (ends with a newline), or how to read it again when a
        # line is wanted, so that a clean file's bytes need not stay in memory
        self._body = body
        self._lines: pa.Array | None = None

    @property
    def body(self) -> bytes:
        if callable(self._body):
            self._body = self._body()
        return self._body

    def text(self, line_numbers: np.ndarray) -> pa.Array:
        """The lines (header = line 1), without their terminator; non-UTF-8 bytes escaped."""
        if self._lines is None:
            newlines = np.flatnonzero(np.frombuffer(self.body, dtype=np.uint8) == 10)
            bounds = np.concatenate([[0], newlines + 1]).astype(np.int64)
            self._lines = pa.Array.from_buffers(
                pa.large_binary(),
                len(bounds) - 1,
                [None, pa.py_buffer(bounds), pa.py_buffer(self.body)],
            )
        taken = self._lines.take(pa.array(np.asarray(line_numbers, dtype=np.int64) - 2))
        try:
            text = pc.cast(taken, pa.large_string())
        except pa.ArrowInvalid:  # as `_structural_split` writes them
            text = pa.array(
                [v.decode("utf-8", errors="backslashreplace") for v in taken.to_pylist()],
                pa.large_string(),
            )
        return pc.replace_substring_regex(text, r"\r?\n$", "").cast(pa.string())


def _read_csv(body: bytes | pa.Buffer | pa.NativeFile, n_fields: int) -> pa.Table:
    """Arrow's CSV reader on header-less bytes (or a file positioned past its header): every
    field a string, no skipping.

    Quoting is RFC 4180 (`"a,b"`, `""` inside), one record per line: Arrow is told values hold
    no newlines, so it splits its blocks at any newline, but within a block it still carries a
    quote left open over the newline. A value holding a newline is therefore always a broken
    line (the caller checks), never a record to accept.
    """
    invalid: list[int] = []

    def on_invalid(_row: object) -> str:
        invalid.append(1)
        return "skip"

    table = pcsv.read_csv(
        body if isinstance(body, pa.NativeFile) else pa.BufferReader(body),
        read_options=pcsv.ReadOptions(
            column_names=[f"f{i}" for i in range(n_fields)], block_size=CSV_BLOCK_BYTES
        ),
        parse_options=pcsv.ParseOptions(
            quote_char='"',
            double_quote=True,
            escape_char=False,
            newlines_in_values=False,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types={f"f{i}": pa.string() for i in range(n_fields)},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if invalid:
        raise pa.ArrowInvalid(f"{len(invalid)} rows with a wrong number of fields")
    return table


def _one_record_a_line(table: pa.Table, n_lines: int, has_quote: bool) -> bool:
    """Whether Arrow's rows are the data lines: as many rows as lines, and no value holding a
    newline, which only a quote (`has_quote`: the bytes hold one) can have carried over one."""
    return table.num_rows == n_lines and not (has_quote and _spans_lines(table))


def _spans_lines(table: pa.Table) -> bool:
    """Whether a value holds a newline: a quote left open (see `_read_csv`)."""
    return any(pc.any(pc.match_substring(column, "\n")).as_py() is True for column in table.columns)


def _scan_quoted(line: bytes) -> tuple[int, bool]:
    """(fields, quote left open) of one line, by Arrow's rules; for oddly quoted lines only.

    A quote opens a quoted value only at the start of a field; inside one, `""` is a quote and
    a single `"` closes it, after which the field goes on unquoted (`"a"b` is `ab`); elsewhere a
    quote is an ordinary character (`5"` is `5"`).
    """
    n, i = 1, 0
    while i < len(line):
        if line[i] == 34:  # at the start of a field
            i += 1
            while True:
                j = line.find(b'"', i)
                if j < 0:
                    return n, True
                if line[j + 1 : j + 2] != b'"':
                    i = j + 1
                    break
                i = j + 2  # `""`: a quote inside the value
        j = line.find(b",", i)
        if j < 0:
            break
        n, i = n + 1, j + 1
    return n, False


def _count_fields(
    data: np.ndarray, starts: np.ndarray, content_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fields per line, a comma inside quotes not counting, and which lines leave a quote open.

    Vectorised for lines quoted the RFC 4180 way, where every quote opens a field, closes one,
    or is half of a `""`: there the quotes pair up in order, and a comma between the two quotes
    of a pair is inside a value. The rare line quoted any other way goes to `_scan_quoted`.
    Done `BLOCK * 16` lines at a time, so that a file quoted throughout (8 quotes a line) needs
    a bounded amount of memory for its quote positions.
    """
    n_fields = np.zeros(len(starts), dtype=np.int64)
    open_quote = np.zeros(len(starts), dtype=bool)
    for lo in range(0, len(starts), BLOCK * 16):
        hi = min(lo + BLOCK * 16, len(starts))
        base = starts[lo]
        n_fields[lo:hi], open_quote[lo:hi] = _count_fields_block(
            data[base : content_end[hi - 1]], starts[lo:hi] - base, content_end[lo:hi] - base
        )
    return n_fields, open_quote


def _count_fields_block(
    data: np.ndarray, starts: np.ndarray, content_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_count_fields` for one block of lines; `starts` and `content_end` index into `data`."""
    commas = np.flatnonzero(data == 44)
    n_fields = np.searchsorted(commas, content_end) - np.searchsorted(commas, starts) + 1
    quotes = np.flatnonzero(data == 34)
    if not len(quotes):
        return n_fields, np.zeros(len(starts), dtype=bool)
    first = np.searchsorted(quotes, starts)
    per_line = np.searchsorted(quotes, content_end) - first
    # every quote is inside a line's content (a terminator is only \n or \r\n), so each line's
    # values repeated once per quote of it line up with `quotes`
    line = np.repeat(np.arange(len(starts)), per_line)
    k = np.arange(len(quotes)) - np.repeat(first, per_line)  # the quote's rank within its line
    at_start = quotes == np.repeat(starts, per_line)
    at_end = quotes + 1 == np.repeat(content_end, per_line)
    before = data[np.maximum(quotes - 1, 0)]
    after = data[np.minimum(quotes + 1, len(data) - 1)]
    even = k % 2 == 0
    ok = np.where(
        even,
        at_start | (before == 44) | ((k > 0) & (before == 34)),  # opens, or ends a `""`
        at_end | (after == 44) | (after == 34),  # closes, or starts a `""`
    )
    odd_line = np.zeros(len(starts), dtype=bool)
    odd_line[line[~ok]] = True
    opening = np.flatnonzero(even & (k + 1 < np.repeat(per_line, per_line)))
    inside = np.searchsorted(commas, quotes[opening + 1]) - np.searchsorted(commas, quotes[opening])
    n_inside = np.bincount(line[opening], weights=inside, minlength=len(starts))
    n_fields = n_fields - n_inside.astype(np.int64)
    open_quote = per_line % 2 == 1
    for i in np.flatnonzero(odd_line):
        n_fields[i], open_quote[i] = _scan_quoted(data[starts[i] : content_end[i]].tobytes())
    return n_fields, open_quote


def _structural_split(body: bytes, n_fields: int, rejects: _Rejects) -> tuple[bytes, np.ndarray]:
    """Set aside the lines Arrow cannot parse; return the clean bytes and their line numbers."""
    data = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
    ends = np.concatenate([newlines, [len(data)]]).astype(np.int64)  # exclusive, before \n
    if starts[-1] >= len(data):  # the body ends with a newline: no line after it
        starts, ends = starts[:-1], ends[:-1]
    line_numbers = np.arange(2, len(starts) + 2, dtype=np.int64)  # the header is line 1
    # a carriage return is fine only right before the newline
    content_end = ends.copy()
    has_crlf = (ends > starts) & (data[np.maximum(ends - 1, 0)] == 13)
    content_end[has_crlf] -= 1
    cr = np.flatnonzero(data == 13)
    stray_cr = np.zeros(len(starts), dtype=bool)
    if len(cr):
        line_of_cr = np.searchsorted(starts, cr, side="right") - 1
        stray_cr[line_of_cr[cr < content_end[line_of_cr]]] = True
    n_found, open_quote = _count_fields(data, starts, content_end)
    empty = content_end == starts
    # UTF-8, checked a block of lines at a time; a failing block is checked line by line
    # each element spans a whole line with its terminator: ASCII, so harmless to the check
    raw = pa.Array.from_buffers(
        pa.large_binary(),
        len(starts),
        [None, pa.py_buffer(np.append(starts, len(data)).astype(np.int64)), pa.py_buffer(body)],
    )
    bad_utf8 = np.zeros(len(starts), dtype=bool)
    for lo in range(0, len(starts), BLOCK):
        block = raw.slice(lo, min(BLOCK, len(starts) - lo))
        try:
            pc.cast(block, pa.large_string())
        except pa.ArrowInvalid:
            for i, value in enumerate(block.to_pylist()):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    bad_utf8[lo + i] = True
    reason = np.full(len(starts), "", dtype=object)
    wrong = n_found != n_fields
    reason[wrong] = [
        f"wrong number of fields: expected {n_fields}, got {k}" for k in n_found[wrong]
    ]
    reason[open_quote] = "unterminated quote (newlines inside a quoted value are not supported)"
    reason[stray_cr] = "carriage return inside a line"
    reason[empty] = "empty line"
    reason[bad_utf8] = "bytes are not UTF-8"
    # Arrow cannot parse a line that does not fit its block ("straddling object"), so one such
    # line stopped the whole ingest: it is set aside instead, whole (its `raw_line`)
    too_long = content_end - starts > MAX_CSV_LINE_BYTES
    reason[too_long] = f"line too long (over {MAX_CSV_LINE_BYTES:,} bytes)"
    bad = np.flatnonzero(reason != "")
    if len(bad):
        texts = [
            body[starts[i] : content_end[i]].decode("utf-8", errors="backslashreplace") for i in bad
        ]
        rejects.add(line_numbers[bad], pa.array(reason[bad].tolist()), pa.array(texts))
    good = reason == ""
    keep = np.repeat(good, ends - starts + 1)[: len(data)]
    return data[keep].tobytes(), line_numbers[good]


def _int_column(values: pa.ChunkedArray, nullable: bool) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Strict non-negative integers: (typed values, mask of bad rows).

    Chunk by chunk, as the CSV reader gave them: no combined copy of the strings first
    (full scale: ~175 MB of fresh memory a property file's timestamps, 0.3-0.5 s)."""
    is_empty = pc.equal(values, "")
    source = pc.if_else(is_empty, pa.scalar(None, pa.string()), values) if nullable else values
    try:
        typed = pc.cast(source, pa.int64())
        bad = pc.or_(pc.less(typed, 0), pc.match_substring(values, "x"))
        bad = pc.fill_null(bad, False)
    except pa.ArrowInvalid:
        # some value is not an integer: find which, one vectorised test per row
        digits = pc.and_(pc.utf8_is_digit(values), pc.less_equal(pc.utf8_length(values), 18))
        ok = pc.or_(digits, is_empty) if nullable else digits
        bad = pc.invert(ok)
        typed = pc.cast(pc.if_else(ok, source, pa.scalar(None, pa.string())), pa.int64())
    if not nullable:
        bad = pc.or_(bad, is_empty)
    return typed, bad.to_numpy(zero_copy_only=False)


def _check_fields(
    spec: TableSpec,
    table: pa.Table,
    line_numbers: np.ndarray,
    rejects: _Rejects,
    lines: _Lines,
    max_timestamp_ms: int,
) -> pa.Table:
    """Type every column; rows failing a check go to `rejects` with the first reason.

    Their `raw_line` comes from `lines`, the file as written: the parsed fields have lost the
    quotes and cannot say whether an empty value was there at all.
    """
    reasons: list[str] = [""]  # code 0: no problem
    code = np.zeros(table.num_rows, dtype=np.int16)

    def flag(mask: np.ndarray, text: str) -> None:
        if text not in reasons:
            reasons.append(text)
        code[mask & (code == 0)] = reasons.index(text)

    def as_numpy(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)

    typed: dict[str, pa.Array | pa.ChunkedArray] = {}
    for i, (name, kind) in enumerate(spec.columns):
        values = table.column(f"f{i}")
        if kind in ("timestamp", "id", "id?"):
            arr, bad = _int_column(values, nullable=kind == "id?")
            flag(bad, f"bad {name}")
            if kind == "timestamp":
                flag(
                    as_numpy(pc.fill_null(pc.greater_equal(arr, MAX_TIMESTAMP_MS), False)),
                    "timestamp out of range",
                )
                flag(
                    as_numpy(pc.fill_null(pc.greater(arr, max_timestamp_ms), False)),
                    "timestamp in the future",
                )
            typed[name] = arr
        else:
            arr = values  # checked chunk by chunk, like the integers
            if kind == "event":
                flag(
                    as_numpy(pc.invert(pc.is_in(arr, pa.array(EVENT_TYPES)))), "unknown event type"
                )
            elif kind == "name":
                flag(as_numpy(pc.equal(arr, "")), f"empty {name}")
            elif kind == "impression_id?":
                ok = pc.match_substring_regex(arr, f"^(?:{IMPRESSION_ID_PATTERN.pattern})?$")
                flag(as_numpy(pc.invert(ok)), f"bad {name}")
                arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
            typed[name] = arr
    if spec.name == EVENTS.name:
        is_tx = as_numpy(pc.equal(typed["event"], "transaction"))
        has_tx = ~as_numpy(pc.is_null(typed["transactionid"]))
        if "bad transactionid" in reasons:
            has_tx |= code == reasons.index("bad transactionid")
        flag(has_tx & ~is_tx, "transactionid on a non-transaction event")
        flag(~has_tx & is_tx, "transaction without transactionid")
    bad_rows = np.flatnonzero(code)
    if len(bad_rows):
        texts = pa.array(reasons).take(pa.array(code[bad_rows]))
        raw_lines = lines.text(line_numbers[bad_rows])
        # Arrow reads an empty line as a row of empty values, which the first check would
        # name ("bad timestamp"): it is called what it is, as when the file is split in lines
        texts = pc.if_else(pc.equal(raw_lines, ""), "empty line", texts)
        rejects.add(line_numbers[bad_rows], texts, raw_lines)
        good = code == 0
        typed = {name: pc.filter(arr, pa.array(good)) for name, arr in typed.items()}
        line_numbers = line_numbers[good]
    return pa.table({**typed, "_line_number": pa.array(line_numbers)})


SCAN_BYTES = 1 << 24  # the buffer `_read_plain_file` scans a file through


def _read_plain_file(path: Path, n_fields: int) -> pa.Table | None:
    """A file's data lines parsed by Arrow straight from the file, when it is plain: every
    line ended by a newline, no carriage return, and each line one record (Arrow's rows and
    the newlines agree, no value holds a newline). Else None, and the caller parses the bytes
    (`_parse_body`), which sets aside the lines that are not.

    The file's bytes are never held whole: a scan through one buffer counts the lines, then
    Arrow reads the file itself (full scale, a 420 MB property file: 0.8-0.9 s and ~450 MB
    less memory, against 1.3-2.4 s reading the bytes first). The caller checks that the file
    did not change meanwhile.
    """
    n_lines, has_quote, last = 0, False, b"\n"
    with open(path, "rb") as fh:
        header_bytes = len(fh.readline())
        buffer = bytearray(SCAN_BYTES)
        while size := fh.readinto(buffer):
            if buffer.find(b"\r", 0, size) >= 0:
                return None  # CRLF or a stray CR: `_parse_body` tells which
            n_lines += buffer.count(b"\n", 0, size)
            has_quote = has_quote or buffer.find(b'"', 0, size) >= 0
            last = bytes(buffer[size - 1 : size])
    if not n_lines or last != b"\n":
        return None  # no data lines, or a last line without its newline
    try:
        with pa.OSFile(str(path)) as source:
            source.seek(header_bytes)
            table = _read_csv(source, n_fields)
    except pa.ArrowInvalid:  # a line with the wrong number of fields, bytes not UTF-8
        return None
    return table if _one_record_a_line(table, n_lines, has_quote) else None


def _parse_file(
    spec: TableSpec, path: Path, max_timestamp_ms: int, seen: Identity
) -> tuple[pa.Table, pa.Table]:
    """(accepted rows with `_line_number`, rejected rows) of one CSV, whose `_identity` was
    `seen` before it was read: straight from the file when it is plain (`_read_plain_file`),
    else from its bytes (`_parse_body`)."""
    reread = _read_again(path, seen)
    table = _read_plain_file(path, len(spec.columns))
    if table is None:
        accepted, rejects = _parse_body(spec, reread(), max_timestamp_ms, reread=reread)
    else:
        rejects = _Rejects()
        line_numbers = np.arange(2, table.num_rows + 2, dtype=np.int64)
        accepted = _check_fields(
            spec, table, line_numbers, rejects, _Lines(reread), max_timestamp_ms
        )
    # what was parsed is the file that was seen, whose digest names the ingest: a line
    # appended meanwhile would otherwise be left out for good (the same digest next time)
    _check_unchanged(path, seen)
    return accepted, rejects.table(path.name)


def _parse_body(
    spec: TableSpec,
    body: bytes,
    max_timestamp_ms: int,
    reread: Callable[[], bytes] | None = None,
) -> tuple[pa.Table, _Rejects]:
    """(accepted rows with `_line_number`, rejected lines) of data lines as `_body_of` gives
    them; the first line is numbered 2 (the header is line 1). With `reread` (how to read
    `body` again), the bytes are let go once parsed, and read again only if a row is
    rejected on its values."""
    n_fields = len(spec.columns)
    rejects = _Rejects()
    n_lines = body.count(b"\n")
    try:
        # a search for any CR first: counting is two more passes over the bytes (0.5 s a
        # full-scale property file), needed only where there is one
        if b"\r" in body and body.count(b"\r") != body.count(b"\r\n"):
            raise pa.ArrowInvalid("stray carriage return")
        table = _read_csv(body, n_fields) if body else None
        if table is not None and not _one_record_a_line(table, n_lines, b'"' in body):
            raise pa.ArrowInvalid("rows are not the lines")
        line_numbers = np.arange(2, n_lines + 2, dtype=np.int64)
    except pa.ArrowInvalid:
        clean, line_numbers = _structural_split(body, n_fields, rejects)
        table = _read_csv(clean, n_fields) if clean else None
    if table is None:
        table = pa.table({f"f{i}": pa.array([], pa.string()) for i in range(n_fields)})
    lines = _Lines(body if reread is None else reread)
    del body
    accepted = _check_fields(spec, table, line_numbers, rejects, lines, max_timestamp_ms)
    return accepted, rejects


def _find_duplicates(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    accepted: pa.Table,
    files: list[str],
    per_file: bool = False,
) -> tuple[np.ndarray, pa.Array]:
    """Rows that repeat an earlier row exactly: (their indices, the reason for each). With
    `per_file`, only an earlier row of the same file (`_file_index`) counts."""
    cols = ", ".join(spec.names) + (", _file_index" if per_file else "")
    con.register("accepted_rows", accepted)
    hashes = con.execute(f"select hash({cols}) as h from accepted_rows").fetchnumpy()["h"]
    con.unregister("accepted_rows")
    hashes = np.asarray(hashes)
    # the hashes that occur more than once, then the rows that carry one: a sort of the values
    # and a search of each row among the (few) repeated ones, ~10x faster than an argsort of
    # 20M property rows
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if len(repeated):
        at = np.minimum(np.searchsorted(repeated, hashes), len(repeated) - 1)
        candidates = np.flatnonzero(repeated[at] == hashes)
    else:
        candidates = np.zeros(0, dtype=np.int64)
    if not len(candidates):
        return np.zeros(0, dtype=np.int64), pa.array([], pa.string())
    # confirm on the values themselves, so that a hash collision never rejects a row
    subset = accepted.take(pa.array(candidates)).append_column("_row_index", pa.array(candidates))
    con.register("candidate_rows", subset)
    found = con.execute(
        f"""
        select _row_index, first_file, first_line
        from (
            select
                _row_index,
                first_value(_file_index) over same_values as first_file,
                first_value(_line_number) over same_values as first_line,
                row_number() over same_values as occurrence,
            from candidate_rows
            window same_values as (partition by {cols} order by _file_index, _line_number)
        )
        where occurrence > 1
        order by _row_index
        """
    ).fetchall()
    con.unregister("candidate_rows")
    index = np.array([r[0] for r in found], dtype=np.int64)
    reasons = pa.array(
        [f"exact duplicate of line {r[2]} of {files[r[1]]}" for r in found], pa.string()
    )
    return index, reasons


def _ingest_table(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    paths: list[Path],
    out_dir: Path,
    say: Callable[[str], None],
    max_timestamp_ms: int,
    seen: dict[Path, Identity],
    ingest_id: str | Callable[[], str] | None = None,
) -> TableReport:
    """Parse, check and write one table's files, each of which must still be the file whose
    `_identity` was `seen` before its first read; `ingest_id` (or what it returns: the input's
    digest, computed meanwhile) names the written files."""
    report = TableReport(table=spec.name, files=[p.name for p in paths])
    accepted_parts, rejected_parts = [], []

    def parse(path: Path) -> tuple[pa.Table, pa.Table, float]:
        t0 = time.perf_counter()
        return (*_parse_file(spec, path, max_timestamp_ms, seen[path]), time.perf_counter() - t0)

    # a table's files are parsed two at a time: Arrow's CSV reader is threaded, but the checks
    # after it run one kernel at a time (full scale: 2 x 10M property lines, 9.6 -> ~6 s)
    with ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        for file_index, (path, (accepted, rejected, seconds)) in enumerate(
            zip(paths, pool.map(parse, paths), strict=True)
        ):
            accepted = accepted.append_column(
                "_file_index", pa.array(np.full(accepted.num_rows, file_index, dtype=np.int32))
            )
            accepted_parts.append(accepted)
            rejected_parts.append(rejected)
            say(
                f"  parsed {path.name}: {accepted.num_rows + rejected.num_rows:,} lines "
                f"({seconds:.1f}s)"
            )
    schema = raw_schema(spec)
    if accepted_parts:
        accepted = pa.concat_tables(accepted_parts)
        files = [p.name for p in paths]
        dup_index, dup_reasons = _find_duplicates(con, spec, accepted, files)
        if len(dup_index):
            dups = accepted.take(pa.array(dup_index))
            dup_files = dups.column("_file_index").to_numpy()
            dup_lines = dups.column("_line_number").to_numpy()
            # each duplicate's line as written, read again from its own file
            for file_index in np.unique(dup_files):
                rows = np.flatnonzero(dup_files == file_index)
                numbers = dup_lines[rows]
                rejected_parts.append(
                    pa.table(
                        {
                            "source_file": pa.array([files[file_index]] * len(rows)),
                            "line_number": pa.array(numbers),
                            "reason": dup_reasons.take(pa.array(rows)),
                            "raw_line": _Lines(
                                _read_again(paths[file_index], seen[paths[file_index]])
                            ).text(numbers),
                        },
                        schema=REJECTED_SCHEMA,
                    )
                )
            keep = np.ones(accepted.num_rows, dtype=bool)
            keep[dup_index] = False
            accepted = accepted.filter(pa.array(keep))
        accepted = accepted.select(list(spec.names)).cast(accepted_schema(spec))
        for name in schema.names[accepted.num_columns :]:  # `events.csv` has no impression_id
            accepted = accepted.append_column(
                schema.field(name), pa.nulls(accepted.num_rows, schema.field(name).type)
            )
    else:
        accepted = schema.empty_table()
    rejected = (
        pa.concat_tables(rejected_parts).sort_by(
            [("source_file", "ascending"), ("line_number", "ascending")]
        )
        if rejected_parts
        else REJECTED_SCHEMA.empty_table()
    )
    if callable(ingest_id):
        ingest_id = ingest_id()
    if ingest_id is not None:
        # the files name the ingest that wrote them (see `_data_is`): the input's digest and
        # what came of it, so the same input gives the same id, and so the same bytes, on every
        # run (a re-run after a crash ends where an uninterrupted run would have)
        ingest_id = report.ingest_id = f"{ingest_id}-{accepted.num_rows}-{rejected.num_rows}"
        tag = {INGEST_ID_KEY: ingest_id.encode()}
        accepted = accepted.replace_schema_metadata(tag)
        rejected = rejected.replace_schema_metadata(tag)
    pq.write_table(
        accepted,
        out_dir / f"{spec.name}.parquet",
        compression="zstd",
        compression_level=1,
        row_group_size=1_000_000,
    )
    pq.write_table(rejected, out_dir / f"rejected_{spec.name}.parquet", compression="zstd")
    report.accepted, report.rejected = accepted.num_rows, rejected.num_rows
    report.raw_rows = report.accepted + report.rejected
    counts: dict[str, int] = {}
    for text in rejected.column("reason").to_pylist():
        key = text.split(" of line ")[0].split(" got ")[0]
        counts[key] = counts.get(key, 0) + 1
    report.reasons = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return report


def default_max_timestamp_ms() -> int:
    """The latest event time accepted when the caller gives none: now plus `CLOCK_SKEW_MS`."""
    return int(time.time() * 1000) + CLOCK_SKEW_MS


INGEST_ID_KEY = b"recsys.ingest_id"  # Parquet key-value metadata of a table's raw files


def _data_is(lake: Lake, spec: TableSpec, ingest_id: object) -> bool:
    """Whether the table's raw files (accepted and rejected) were both written by `ingest_id`:
    read from their Parquet footers only, so cheap on S3 too."""
    if not isinstance(ingest_id, str):
        return False  # a marker from before ingest ids: check by ingesting again, once
    for rel in (f"raw/{spec.name}/{spec.name}.parquet", f"raw/rejected/{spec.name}.parquet"):
        try:
            with lake.open(rel) as fh:
                metadata = pq.read_schema(fh).metadata or {}
        except (FileNotFoundError, OSError, LakeError, pa.ArrowInvalid):
            return False
        if metadata.get(INGEST_ID_KEY) != ingest_id.encode():
            return False
    return True


def _has_raw_schema(lake: Lake, spec: TableSpec) -> bool:
    """Whether the table's accepted file has today's columns (`raw_schema`): an events file
    written before `impression_id` existed does not, and is written again from the same input.
    (Readers take either: they read `raw/events/` by name, `union_by_name`.) Footer only."""
    try:
        with lake.open(f"raw/{spec.name}/{spec.name}.parquet") as fh:
            schema = pq.read_schema(fh)
    except (FileNotFoundError, OSError, LakeError, pa.ArrowInvalid):
        return False
    return bool(schema.remove_metadata().equals(raw_schema(spec)))


class IncompleteIngest(RuntimeError):
    """raw/ does not hold what its markers describe: an ingest stopped between the two."""


def check_raw(lake: Lake) -> None:
    """IncompleteIngest when a raw table's files were written by another ingest than the one
    its marker (`raw/_ingest/<table>.json`) records: an ingest was stopped after putting some
    files and before its markers, and its data must not be built on. Tables without a marker
    (raw Parquet put there by other means) are taken as they are. Reads footers only."""
    stale = []
    for spec in SPECS:
        marker = f"raw/_ingest/{spec.name}.json"
        if not lake.exists(marker):
            continue
        try:
            ingest_id = json.loads(lake.read_text(marker)).get("ingest_id")
        except (ValueError, AttributeError):
            ingest_id = None
        if not _data_is(lake, spec, ingest_id):
            stale.append(spec.name)
    if stale:
        raise IncompleteIngest(
            f"raw/ does not hold what raw/_ingest/ describes for {', '.join(stale)} (an ingest "
            "was stopped half-way): run `recsys ingest` with the same input again to repair it"
        )


def ingest(
    raw_dir: Path,
    lake: Lake,
    progress: Callable[[str], None] | None = None,
    work_dir: Path | None = None,
    max_timestamp_ms: int | None = None,
) -> list[TableReport]:
    """Validate the CSVs in `raw_dir` and write the lake's `raw/` tables. See the module doc.

    Rows stamped later than `max_timestamp_ms` (epoch ms; default `default_max_timestamp_ms()`)
    are rejected as "timestamp in the future", here and in the landed events.
    """
    say = progress or (lambda _msg: None)
    if max_timestamp_ms is None:
        max_timestamp_ms = default_max_timestamp_ms()
    found, seen = _check_inputs(raw_dir)
    lake.check_access()
    reports: list[TableReport] = []
    with (
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=work_dir) as tmp,
        ThreadPoolExecutor(max_workers=1) as hasher,
    ):
        # the inputs' digests are read in the background: a table without a marker is parsed
        # meanwhile, and needs its digest only to name what it writes (full scale: 3 s of
        # sha256 over 950 MB, most of it hidden)
        digests = {
            spec.name: hasher.submit(_sha256, found[spec.name], seen)
            for spec in SPECS
            if found[spec.name]
        }
        out_dir = Path(tmp)
        con = connect_duckdb(config={"temp_directory": str(out_dir / "spill")})
        staged: list[tuple[TableSpec, TableReport, str, str]] = []
        for spec in SPECS:
            paths = found[spec.name]
            pending = digests.get(spec.name)
            marker = f"raw/_ingest/{spec.name}.json"
            if lake.exists(marker):
                digest = _digest(pending)
                previous = json.loads(lake.read_text(marker))
                same_input = previous.get("sha256") == digest
                if same_input and not _data_is(lake, spec, previous.get("ingest_id")):
                    say(
                        f"{spec.name}: raw/ does not hold what its marker describes (an ingest "
                        "stopped half-way?): ingesting it again"
                    )
                elif same_input and not _has_raw_schema(lake, spec):
                    say(f"{spec.name}: written with older columns: ingesting it again")
                elif same_input:
                    report = TableReport(table=spec.name, files=[p.name for p in paths])
                    for key in ("raw_rows", "accepted", "rejected", "reasons"):
                        setattr(report, key, previous["report"][key])
                    report.unchanged = True
                    reports.append(report)
                    say(f"{spec.name}: unchanged since the last ingest ({digest[:12]})")
                    continue
            t0 = time.perf_counter()
            say(f"{spec.name}: {', '.join(report_name.name for report_name in paths) or 'none'}")
            report = _ingest_table(
                con,
                spec,
                paths,
                out_dir,
                say,
                max_timestamp_ms,
                seen,
                partial(_digest, pending, 16),
            )
            digest = _digest(pending)
            say(
                f"  {report.raw_rows:,} rows = {report.accepted:,} accepted + "
                f"{report.rejected:,} rejected ({time.perf_counter() - t0:.1f}s)"
            )
            reports.append(report)
            staged.append((spec, report, digest, str(report.ingest_id)))
        con.close()
        # everything is validated and staged locally: now replace the lake's files, the marker
        # last. A stop in between leaves files that name another ingest than the marker does,
        # which the next ingest sees (`_data_is`) and repairs
        for spec, report, digest, ingest_id in staged:
            lake.put(out_dir / f"{spec.name}.parquet", f"raw/{spec.name}/{spec.name}.parquet")
            lake.put(out_dir / f"rejected_{spec.name}.parquet", f"raw/rejected/{spec.name}.parquet")
            lake.write_text(
                f"raw/_ingest/{spec.name}.json",
                json.dumps(
                    {"sha256": digest, "ingest_id": ingest_id, "report": report.to_dict()},
                    indent=2,
                ),
            )
        reports += ingest_all_landing(lake, out_dir / "landing", say, max_timestamp_ms)
    return reports


# what a landing file's name may be before its suffix: the API writes `<UTC time>-<hex>` or
# `key-<hex>`. It names the file in rejected rows and in `_ingested/`, so anything else is
# refused, not used as a path; so is a name starting with CHUNK_PREFIX, which parts are named by
LANDING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# landed files are picked up in chunks, one Parquet part per chunk (not per file: an hour of
# requests would leave raw/ hundreds of thousands of tiny parts for every build to list)
CHUNK_FILES = 5_000  # files per chunk at most
CHUNK_BYTES = 64 << 20  # bytes per chunk at most (the file that crosses it is the chunk's last)
CHUNK_PREFIX = "chunk-"  # chunk ids: `chunk-<UTC time>-<random>`, in the order they were made
REPEATABLE_PREFIX = "key-"  # the names the API may land twice (an Idempotency-Key's batch)


def _landing_stem(lake: Lake, rel: str, suffix: str) -> str:
    """The name of a landing file without `suffix`; IngestError (the file left where it is)
    when it is not a name the API writes."""
    folder, _, name = rel.rpartition("/")
    stem = name.removesuffix(suffix)
    if not LANDING_NAME.fullmatch(stem) or stem.startswith(CHUNK_PREFIX):
        raise IngestError(
            f"{lake.url(folder)}: a landing file named {shown(name)}, which the API never "
            "writes (letters, digits, '.', '_', '-'): nothing was written from it, and it stays "
            "where it is; move it away to go on"
        )
    return stem


def _claim(lake: Lake, rel: str, claimed_dir: str = CLAIMED_DIR) -> str | None:
    """Move a waiting landing file to `claimed_dir`; None when it is gone (another ingest took
    it).

    From here on the API's next file of the same name is a new file in the landing folder,
    which this ingest neither reads nor removes.
    """
    claimed = f"{claimed_dir}/{rel.rsplit('/', 1)[-1]}"
    try:
        lake.move(rel, claimed)
    except FileNotFoundError:
        return None
    return claimed


def new_chunk_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{CHUNK_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class _Landing:
    """Where one kind of landed file waits, is claimed, ends, and where its rows go."""

    kind: str  # "events" or "impressions"
    folder: str
    suffix: str
    raw_dir: str
    rejected_prefix: str  # raw/rejected/<prefix><part id>.parquet
    # the reason of a rejected row without its details (which line), for the counts
    reason_key: Callable[[str], str]
    repeatable: bool  # whether the API may land a name twice (an Idempotency-Key's batch)

    @property
    def claimed_dir(self) -> str:
        return f"{self.folder}/_claimed"

    @property
    def ingested_dir(self) -> str:
        return f"{self.folder}/_ingested"

    @property
    def chunks_dir(self) -> str:
        return f"{self.folder}/_chunks"

    def parts(self, part_id: str) -> tuple[str, str]:
        """(accepted, rejected) part of a chunk id, or of a file's stem in the per-file layout
        that ingest wrote before chunks."""
        return (
            f"{self.raw_dir}/{LANDED_PREFIX}{part_id}.parquet",
            f"raw/rejected/{self.rejected_prefix}{part_id}.parquet",
        )


@dataclass
class _Chunk:
    """Landing files claimed together (`names`, sorted): their rows are written as one part
    named after `id`. Its manifest, `<chunks_dir>/<id>.json`, is written once they are claimed
    and removed once they are all in `_ingested/`."""

    id: str
    names: list[str]
    state: str = "claimed"  # "written": its parts are in raw/, only the moves are left
    repeats: list[str] = field(default_factory=list)  # landed again, byte for byte: not read
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


CHUNK_ID = re.compile(rf"{CHUNK_PREFIX}[0-9]{{8}}T[0-9]{{12}}Z-[0-9a-f]{{8}}")


def _read_manifest(lake: Lake, rel: str) -> _Chunk:
    """A chunk's manifest; IngestError when it is not one ingest writes (its names become
    paths)."""
    try:
        chunk = _Chunk(**json.loads(lake.read_text(rel)))
        if not CHUNK_ID.fullmatch(chunk.id) or rel.rsplit("/", 1)[-1] != f"{chunk.id}.json":
            raise ValueError("a bad chunk id")
        if chunk.state not in ("claimed", "written"):
            raise ValueError("a bad state")
        for name in chunk.names + chunk.repeats:
            if not isinstance(name, str) or not LANDING_NAME.fullmatch(name):
                raise ValueError("a bad file name")
    except (ValueError, TypeError) as exc:
        raise IngestError(
            f"{lake.url(rel)}: not a chunk manifest ingest writes ({exc}); nothing was written"
        ) from exc
    return chunk


# (chunk, [(file name, bytes)] sorted by name, repeats left out) -> (accepted, rejected rows)
ChunkParser = Callable[[_Chunk, list[tuple[str, bytes]]], tuple[pa.Table, pa.Table]]


def _pick_up(
    lake: Lake,
    landing: _Landing,
    work_dir: Path,
    say: Callable[[str], None],
    parse: ChunkParser,
    start: Callable[[set[str]], None] | None = None,
) -> TableReport | None:
    """Move the landed files of one kind into raw/, exactly once, a chunk at a time.

    1. Claim up to CHUNK_FILES files (or CHUNK_BYTES) and read them; 2. write the chunk's
    manifest under a new chunk id; 3. parse them and write the chunk's parts (or remove them
    when empty); 4. mark the manifest written; 5. move the files to `_ingested/`; 6. remove the
    manifest. A run stopped anywhere is finished by the next one, first: a manifest still
    `claimed` is parsed and written again under its own id (the same parts, replaced), a
    `written` one only moved; claimed files no manifest names (stopped before 2, or claimed
    by an ingest from before chunks) go into the next new chunk. A file's part from the
    per-file layout (`landed-<stem>.parquet`) is removed when the file is written again.

    `start` gets the accepted parts this run will write again or remove, before any parse.
    """
    chunks = [_read_manifest(lake, rel) for rel in lake.glob(f"{landing.chunks_dir}/*.json")]
    in_chunks = {name for chunk in chunks for name in chunk.names}
    left_over = [
        rel
        for rel in lake.glob(f"{landing.claimed_dir}/*{landing.suffix}")
        if rel.rsplit("/", 1)[-1] not in in_chunks
    ]
    waiting = lake.glob(f"{landing.folder}/*{landing.suffix}")
    if not chunks and not left_over and not waiting:
        return None
    t0 = time.perf_counter()
    # names first: a name the API never writes stops the ingest before anything is claimed
    for rel in left_over + waiting:
        _landing_stem(lake, rel, landing.suffix)
    # the per-file layout's parts (listed once: removed when their file is written again)
    accepted_part, rejected_part = landing.parts("*")
    per_file_parts = set(lake.glob(accepted_part)) | set(lake.glob(rejected_part))

    def per_file(names: list[str]) -> list[str]:
        return [
            rel
            for name in names
            for rel in landing.parts(name.removesuffix(landing.suffix))
            if rel in per_file_parts
        ]

    if start is not None:
        to_read = [c.names for c in chunks if c.state == "claimed"] + [
            [rel.rsplit("/", 1)[-1] for rel in left_over + waiting]
        ]
        start(
            {landing.parts(c.id)[0] for c in chunks if c.state == "claimed"}
            | {rel for names in to_read for rel in per_file(names)}
        )
    report = TableReport(table=f"landed_{landing.kind}", files=[])
    counts: dict[str, int] = {}
    work_dir.mkdir(parents=True, exist_ok=True)

    def finish(chunk: _Chunk) -> None:
        """Steps 5 and 6: the rows are in raw/; only now do the files leave `_claimed/`."""
        for name in chunk.names:
            with contextlib.suppress(FileNotFoundError):  # moved before a stop
                lake.move(f"{landing.claimed_dir}/{name}", f"{landing.ingested_dir}/{name}")
        lake.remove(f"{landing.chunks_dir}/{chunk.id}.json")
        report.files += chunk.names
        report.accepted += chunk.accepted
        report.rejected += chunk.rejected
        for reason, count in chunk.reasons.items():
            counts[reason] = counts.get(reason, 0) + count
        repeated = (
            f", {len(chunk.repeats):,} landed again (already in raw/)" if chunk.repeats else ""
        )
        say(
            f"  {chunk.id}: {len(chunk.names):,} files{repeated}, "
            f"{chunk.accepted:,} accepted + {chunk.rejected:,} rejected"
        )

    def write(chunk: _Chunk, files: list[tuple[str, bytes]]) -> None:
        """Steps 3 and 4, then `finish`."""
        files.sort()
        chunk.names = [name for name, _ in files]
        if landing.repeatable:
            # an Idempotency-Key's file can land again when two retries race on S3 (no lock
            # there): the same bytes as the file already ingested are a retry, not new events
            chunk.repeats = []
            for name, data in files:
                if name.startswith(REPEATABLE_PREFIX):
                    try:
                        if lake.read_bytes(f"{landing.ingested_dir}/{name}") == data:
                            chunk.repeats.append(name)
                    except FileNotFoundError:
                        pass
        fresh = [(name, data) for name, data in files if name not in chunk.repeats]
        accepted, rejected = parse(chunk, fresh)
        for rel in per_file([name for name, _ in fresh]):
            lake.remove(rel)
        folder = work_dir / chunk.id
        folder.mkdir(parents=True, exist_ok=True)
        # written, or removed when empty, so that a chunk written again ends as the first time
        for table, target in zip((accepted, rejected), landing.parts(chunk.id), strict=True):
            if table.num_rows:
                local = folder / "part.parquet"
                pq.write_table(
                    table, local, compression="zstd", compression_level=1, row_group_size=1_000_000
                )
                lake.put(local, target)
            else:
                lake.remove(target)
        shutil.rmtree(folder, ignore_errors=True)
        chunk.state = "written"
        chunk.accepted, chunk.rejected = accepted.num_rows, rejected.num_rows
        reasons: dict[str, int] = {}
        for text in rejected.column("reason").to_pylist():
            key = landing.reason_key(text)
            reasons[key] = reasons.get(key, 0) + 1
        chunk.reasons = reasons
        lake.write_text(f"{landing.chunks_dir}/{chunk.id}.json", json.dumps(asdict(chunk)))
        finish(chunk)

    for chunk in chunks:  # a stopped run's, in the order they were made
        if chunk.state == "written":
            finish(chunk)
            continue
        files = []
        for name in chunk.names:
            try:
                files.append((name, lake.read_bytes(f"{landing.claimed_dir}/{name}")))
            except FileNotFoundError:
                say(f"  {name}: taken by another ingest, skipped")
        write(chunk, files)
    queue = left_over + waiting
    i = 0
    while i < len(queue):
        files, size = [], 0
        while i < len(queue) and len(files) < CHUNK_FILES and size < CHUNK_BYTES:
            rel, i = queue[i], i + 1
            name = rel.rsplit("/", 1)[-1]
            if rel.startswith(f"{landing.claimed_dir}/"):
                claimed: str | None = rel
            else:
                claimed = _claim(lake, rel, landing.claimed_dir)
            if claimed is None:
                say(f"  {name}: taken by another ingest, skipped")
                continue
            try:
                data = lake.read_bytes(claimed)
            except FileNotFoundError:  # a claim another ingest finished meanwhile
                say(f"  {name}: taken by another ingest, skipped")
                continue
            files.append((name, data))
            size += len(data)
        if files:
            chunk = _Chunk(new_chunk_id(), sorted(name for name, _ in files))
            lake.write_text(f"{landing.chunks_dir}/{chunk.id}.json", json.dumps(asdict(chunk)))
            write(chunk, files)
    if not report.files:
        return None
    report.raw_rows = report.accepted + report.rejected
    report.reasons = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    say(
        f"landed {landing.kind}: {len(report.files):,} files, {report.raw_rows:,} rows = "
        f"{report.accepted:,} accepted + {report.rejected:,} rejected "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return report


def _events_reason_key(reason: str) -> str:
    return reason.split(" of line ")[0].split(" got ")[0]


EVENTS_LANDING = _Landing(
    "events", LANDING_DIR, ".csv", "raw/events", LANDED_PREFIX, _events_reason_key, True
)


def _parse_events_chunk(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    files: list[tuple[str, bytes]],
    max_timestamp_ms: int,
) -> tuple[pa.Table, pa.Table]:
    """(accepted, rejected rows) of landed events files, each checked as on its own: its header,
    its lines numbered from 2, an exact duplicate only of a line of its own file.

    Fast for many small files: the bodies of the files with one header are joined (each ends
    with a newline) and parsed in one pass, the line numbers mapped back to files after.
    Accepted rows are in the order of the files, then of their lines.
    """
    # the header names the layout: the API's (with impression_id) or an older API's
    specs = {",".join(spec.names): spec for spec in (LANDED_EVENTS, EVENTS)}
    names = [name for name, _ in files]
    groups: dict[str, list[int]] = {}
    for index, (name, data) in enumerate(files):
        first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip("\r\n")
        if first not in specs:
            raise IngestError(
                f"{lake.url(f'{CLAIMED_DIR}/{name}')}: unexpected header {shown(first)}; "
                f"expected {' or '.join(specs)} (landing files are written by the API; nothing "
                "was written, and the file stays where it is)"
            )
        groups.setdefault(first, []).append(index)
    schema = raw_schema(EVENTS)
    accepted_parts: list[pa.Table] = []
    rejected_parts: list[pa.Table] = []
    for header, indices in groups.items():
        spec = specs[header]
        bodies = [_body_of(files[i][1]) for i in indices]
        first_line = np.cumsum([0] + [body.count(b"\n") for body in bodies[:-1]])
        body = b"".join(bodies)
        del bodies
        file_of = np.asarray(indices, dtype=np.int32)

        def locate(
            numbers: np.ndarray, first_line: np.ndarray = first_line, file_of: np.ndarray = file_of
        ) -> tuple[np.ndarray, np.ndarray]:
            """(file index, line number in the file) of line numbers in the joined bodies."""
            at = numbers - 2
            k = np.searchsorted(first_line, at, side="right") - 1
            return file_of[k], at - first_line[k] + 2

        table, rejects = _parse_body(spec, body, max_timestamp_ms)
        joined_lines = table.column("_line_number").to_numpy()
        file_index, line_number = locate(joined_lines)
        table = table.set_column(
            table.schema.get_field_index("_line_number"), "_line_number", pa.array(line_number)
        ).append_column("_file_index", pa.array(file_index))
        dup_index, dup_reasons = _find_duplicates(con, spec, table, names, per_file=True)
        if len(dup_index):
            numbers = joined_lines[dup_index]
            rejects.add(numbers, dup_reasons, _Lines(body).text(numbers))
            keep = np.ones(table.num_rows, dtype=bool)
            keep[dup_index] = False
            table = table.filter(pa.array(keep))
        accepted = table.select(list(spec.names)).cast(accepted_schema(spec))
        for name in schema.names[accepted.num_columns :]:  # an older API's: no impression_id
            accepted = accepted.append_column(
                schema.field(name), pa.nulls(accepted.num_rows, schema.field(name).type)
            )
        accepted_parts.append(
            accepted.append_column("_file_index", table.column("_file_index")).append_column(
                "_line_number", table.column("_line_number")
            )
        )
        if rejects.line_numbers:
            at_file, at_line = locate(np.concatenate(rejects.line_numbers))
            rejected_parts.append(
                pa.table(
                    {
                        "source_file": pa.array(names, pa.string()).take(pa.array(at_file)),
                        "line_number": pa.array(at_line, pa.int64()),
                        "reason": pa.concat_arrays(rejects.reasons),
                        "raw_line": pa.concat_arrays(rejects.raw_lines),
                    },
                    schema=REJECTED_SCHEMA,
                )
            )
    if accepted_parts:
        accepted = (
            pa.concat_tables(accepted_parts)
            .sort_by([("_file_index", "ascending"), ("_line_number", "ascending")])
            .select(schema.names)
        )
    else:
        accepted = schema.empty_table()
    rejected = (
        pa.concat_tables(rejected_parts).sort_by(
            [("source_file", "ascending"), ("line_number", "ascending")]
        )
        if rejected_parts
        else REJECTED_SCHEMA.empty_table()
    )
    return accepted, rejected


def ingest_landing(
    lake: Lake,
    work_dir: Path,
    say: Callable[[str], None] | None = None,
    max_timestamp_ms: int | None = None,
) -> TableReport | None:
    """Move the API's landed event files into `raw/events/`, exactly once (see the module doc).

    A stopped run's chunks and claims come first, then the files waiting in `LANDING_DIR`, each
    claimed before it is read, in chunks (`_pick_up`). Returns one report over all the files
    picked up, or None when there were none.
    """
    say = say or (lambda _msg: None)
    limit = default_max_timestamp_ms() if max_timestamp_ms is None else max_timestamp_ms
    con = connect_duckdb()
    try:
        return _pick_up(
            lake,
            EVENTS_LANDING,
            work_dir,
            say,
            lambda _chunk, files: _parse_events_chunk(con, lake, files, limit),
        )
    finally:
        con.close()


# --- impressions the API logged (landing/impressions/*.jsonl) ----------------------------------

IMPRESSIONS_LANDING_DIR = "landing/impressions"
IMPRESSIONS_CLAIMED_DIR = f"{IMPRESSIONS_LANDING_DIR}/_claimed"
IMPRESSIONS_INGESTED_DIR = f"{IMPRESSIONS_LANDING_DIR}/_ingested"
RAW_IMPRESSIONS_DIR = "raw/impressions"
REJECTED_IMPRESSIONS_PREFIX = f"impressions-{LANDED_PREFIX}"  # raw/rejected/impressions-landed-*
MAX_LINE_BYTES = 65_536  # a full impression (100 items) is under 10 kB
MAX_ITEMS = 100
MAX_ID = 2**63 - 1
MIN_SERVED_AT_MS = 946_684_800_000  # 2000-01-01: anything earlier is seconds taken for ms
ROUTES = frozenset({"visitor", "session", "similar"})
STRATEGIES = frozenset({"personalized", "session", "popular", "similar"})
SOURCES = frozenset({"ranker", "als", "similar", "popular"})
POLICIES = frozenset(PLAIN_POLICIES)  # the experiments file's plain policies; `team` names one
INTERLEAVE_PREFIX = "interleave:"  # `interleave:<a>,<b>`, a and b plain policies
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # experiment, variant, model
IMPRESSION_FIELDS = (
    "impression_id",
    "served_at",
    "visitor_id",
    "route",
    "strategy",
    "policy",
    "experiment",
    "variant",
    "snapshot_version",
    "model_version",
    "anchor_item_id",
    "items",
)
ITEM_FIELDS = ("item_id", "rank", "source", "team")
_IMPRESSION_KEYS = frozenset(IMPRESSION_FIELDS)
_ITEM_KEYS = frozenset(ITEM_FIELDS)
IMPRESSION_ITEM_TYPE = pa.struct(
    [
        ("item_id", pa.int64()),
        ("rank", pa.int32()),
        ("source", pa.string()),
        ("team", pa.string()),
    ]
)
IMPRESSIONS_SCHEMA = pa.schema(
    [
        ("impression_id", pa.string()),
        ("served_at", pa.int64()),
        ("visitor_id", pa.int64()),
        ("route", pa.string()),
        ("strategy", pa.string()),
        ("policy", pa.string()),
        ("experiment", pa.string()),
        ("variant", pa.string()),
        ("snapshot_version", pa.string()),
        ("model_version", pa.string()),
        ("anchor_item_id", pa.int64()),
        ("items", pa.list_(IMPRESSION_ITEM_TYPE)),
    ]
)


class _NotJson(ValueError):
    """A line that `json` would take but the contract does not (NaN, a repeated key)."""


def _no_constants(name: str) -> object:
    raise _NotJson(f"not JSON ({name} is not a JSON number)")


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # `json` keeps the last of a repeated key silently: which one did the writer mean?
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys: set[str] = set()
        for key, _ in pairs:
            if key in keys:
                raise _NotJson(f"duplicate key ({shown(key, 40)})")
            keys.add(key)
    return obj


_STRICT_JSON = json.JSONDecoder(parse_constant=_no_constants, object_pairs_hook=_no_repeated_keys)


def _is_id(value: object) -> bool:
    """A JSON integer (not a bool, a float or a string) that fits a non-negative BIGINT."""
    return type(value) is int and 0 <= value <= MAX_ID


def _is_one_of(value: object, allowed: frozenset[str]) -> bool:
    return type(value) is str and value in allowed


def _is_name(value: object, pattern: re.Pattern[str]) -> bool:
    return type(value) is str and pattern.fullmatch(value) is not None


def is_policy(value: object) -> bool:
    """`ranker`, `als`, `popularity`, or `interleave:<a>,<b>` of two of them."""
    if type(value) is not str:
        return False
    if value.startswith(INTERLEAVE_PREFIX):
        a, comma, b = value[len(INTERLEAVE_PREFIX) :].partition(",")
        return bool(comma) and a in POLICIES and b in POLICIES
    return value in POLICIES


def impression_problem(obj: object, max_timestamp_ms: int) -> str | None:
    """Why a parsed impression line breaks the contract (the first reason found), or None.

    Untrusted: every value is checked for its JSON type as well as its range (`true` is not 1,
    `1.0` is not an id), and every string that reaches the table matches a pattern or a set, so
    none can carry what Parquet or a later reader would choke on (a lone surrogate, a newline).
    """
    if type(obj) is not dict:
        return "not a JSON object"
    if obj.keys() != _IMPRESSION_KEYS:
        missing = [k for k in IMPRESSION_FIELDS if k not in obj]
        if missing:
            return f"missing key ({missing[0]})"
        return f"unexpected key ({shown(next(k for k in obj if k not in _IMPRESSION_KEYS), 40)})"
    if not _is_name(obj["impression_id"], IMPRESSION_ID_PATTERN):
        return "bad impression_id"
    served_at = obj["served_at"]
    if type(served_at) is not int:
        return "bad served_at"
    if not MIN_SERVED_AT_MS <= served_at < MAX_TIMESTAMP_MS:
        return "served_at out of range"
    if served_at > max_timestamp_ms:
        return "served_at in the future"
    if obj["visitor_id"] is not None and not _is_id(obj["visitor_id"]):
        return "bad visitor_id"
    if not _is_one_of(obj["route"], ROUTES):
        return "bad route"
    if not _is_one_of(obj["strategy"], STRATEGIES):
        return "bad strategy"
    if not is_policy(obj["policy"]):
        return "bad policy"
    for key in ("experiment", "variant"):
        if obj[key] is not None and not _is_name(obj[key], NAME_PATTERN):
            return f"bad {key}"
    if (obj["experiment"] is None) != (obj["variant"] is None):
        return "experiment and variant not both given"
    if not _is_name(obj["snapshot_version"], VERSION_PATTERN):
        return "bad snapshot_version"
    if not _is_name(obj["model_version"], NAME_PATTERN):
        return "bad model_version"
    if obj["anchor_item_id"] is not None and not _is_id(obj["anchor_item_id"]):
        return "bad anchor_item_id"
    items = obj["items"]
    if type(items) is not list:
        return "bad items"
    if len(items) > MAX_ITEMS:
        return f"too many items (over {MAX_ITEMS})"
    # the check of every item, written out: it runs up to 100 times a line
    item_ids = set()
    for rank, item in enumerate(items, 1):
        if type(item) is not dict or item.keys() != _ITEM_KEYS:
            return f"bad item (an object with {', '.join(ITEM_FIELDS)} expected)"
        item_id, source, team = item["item_id"], item["source"], item["team"]
        if type(item_id) is not int or item_id < 0 or item_id > MAX_ID:
            return "bad item_id"
        if type(item["rank"]) is not int or item["rank"] != rank:
            return "bad rank (1..n in order expected)"
        if type(source) is not str or source not in SOURCES:
            return "bad source"
        if team is not None and (type(team) is not str or team not in POLICIES):
            return "bad team"
        item_ids.add(item_id)
    if len(item_ids) != len(items):
        return "duplicate item_id"
    return None


def _has_repeated_key(text: str, obj: dict[str, Any]) -> str | None:
    """The reason when the object's line repeats a key (which `json` takes silently, keeping
    the last value: which one did the writer mean?), else None. For a line whose impression
    passed `impression_problem`.

    Cheap for the lines the API writes: without a backslash, every `:` of the line separates a
    key from its value or sits in a string value, and the only valid value holding one is an
    `interleave:` policy; so a line with more colons than its object has keys (plus the
    policy's) has a key twice. Only then, or with a backslash (an escape may spell a colon),
    is the line parsed again, pair by pair.
    """
    colons = len(IMPRESSION_FIELDS) + len(ITEM_FIELDS) * len(obj["items"])
    if "\\" not in text and text.count(":") == colons + obj["policy"].count(":"):
        return None
    try:
        _STRICT_JSON.decode(text)
    except _NotJson as exc:
        return str(exc)
    return None


@dataclass
class _ImpressionFile:
    """One landing file read: its valid impressions (with their line numbers) and the lines
    rejected so far."""

    impressions: list[dict[str, object]] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # as written, in case they are rejected yet
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, text)

    def reject_duplicates(self, found: dict[int, str]) -> None:
        """Reject the lines whose impression id was seen before: {line number: where}."""
        kept = _ImpressionFile(rejected=self.rejected)
        for obj, number, text in zip(self.impressions, self.line_numbers, self.texts, strict=True):
            if number in found:
                reason = f"duplicate impression_id ({found[number]})"
                self.rejected.append((number, reason, text))
            else:
                kept.impressions.append(obj)
                kept.line_numbers.append(number)
                kept.texts.append(text)
        self.impressions, self.line_numbers, self.texts = (
            kept.impressions,
            kept.line_numbers,
            kept.texts,
        )


def _read_impressions(data: bytes, max_timestamp_ms: int) -> _ImpressionFile:
    """Every line of a JSONL file checked (`impression_problem`), a repeated impression id
    rejected after its first valid line. Line numbers start at 1 (no header)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":  # what follows the last newline is not a line
        lines.pop()
    out = _ImpressionFile()
    first_line: dict[str, int] = {}
    decoder = json.JSONDecoder(parse_constant=_no_constants)
    for number, raw in enumerate(lines, 1):
        raw = raw.removesuffix(b"\r")  # a line's terminator, as in the CSVs
        reason = None
        if len(raw) > MAX_LINE_BYTES:
            reason = f"line too long (over {MAX_LINE_BYTES} bytes)"
        elif not raw:
            reason = "empty line"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="backslashreplace")
            reason = reason or "bytes are not UTF-8"
        if reason is None:
            try:
                obj = decoder.decode(text)
            except _NotJson as exc:
                reason = str(exc)
            except json.JSONDecodeError as exc:  # its message names a place, never the text
                reason = f"not JSON ({exc.msg} at column {exc.colno})"
            except (ValueError, RecursionError):  # an integer of 4300+ digits, deep nesting
                reason = "not JSON (a number too long or nesting too deep)"
            else:
                reason = impression_problem(obj, max_timestamp_ms) or _has_repeated_key(text, obj)
        if reason is None:
            impression_id = obj["impression_id"]
            if impression_id in first_line:
                reason = f"duplicate impression_id (line {first_line[impression_id]})"
            else:
                first_line[impression_id] = number
                out.impressions.append(obj)
                out.line_numbers.append(number)
                out.texts.append(text)
                continue
        out.rejected.append((number, reason, text))
    return out


def _impressions_table(impressions: list[dict[str, object]]) -> pa.Table:
    """The accepted impressions of a file as one Arrow table, converted in one call (Arrow's
    own conversion of the parsed objects, nested items included: 5x faster than building the
    columns in Python)."""
    return pa.Table.from_pylist(impressions, schema=IMPRESSIONS_SCHEMA)


def _rejected_table(source_file: str, rejected: list[tuple[int, str, str]]) -> pa.Table:
    rejected = sorted(rejected)
    return pa.table(
        {
            "source_file": pa.array([source_file] * len(rejected), pa.string()),
            "line_number": pa.array([r[0] for r in rejected], pa.int64()),
            "reason": pa.array([r[1] for r in rejected], pa.string()),
            "raw_line": pa.array([r[2] for r in rejected], pa.string()),
        },
        schema=REJECTED_SCHEMA,
    )


def _reason_key(reason: str) -> str:
    """A reason without its details (which line, which key), for the counts."""
    return reason.split(" (", 1)[0]


IMPRESSIONS_LANDING = _Landing(
    "impressions",
    IMPRESSIONS_LANDING_DIR,
    ".jsonl",
    RAW_IMPRESSIONS_DIR,
    REJECTED_IMPRESSIONS_PREFIX,
    _reason_key,
    False,
)


def landing_part_name(landing: _Landing, part_id: str) -> str:
    """The file name of a chunk's accepted part (as `parse_filename` gives it)."""
    return landing.parts(part_id)[0].rsplit("/", 1)[-1]


def ingest_landing_impressions(
    lake: Lake,
    work_dir: Path,
    say: Callable[[str], None] | None = None,
    max_timestamp_ms: int | None = None,
) -> TableReport | None:
    """Move the API's impression files (`landing/impressions/*.jsonl`) into `raw/impressions/`,
    exactly once, in chunks, as `ingest_landing` moves events (`_pick_up`, the module doc).

    Each chunk gives `raw/impressions/landed-<chunk id>.parquet` (IMPRESSIONS_SCHEMA, one row
    per impression) and `raw/rejected/impressions-landed-<chunk id>.parquet` (REJECTED_SCHEMA).
    An impression id already in `raw/impressions/` (a retried batch) or earlier in the run is
    rejected as a duplicate, except in the parts this run writes again (a stopped run's).
    Returns one report over the files picked up, or None when there were none.
    `max_timestamp_ms` is the events' limit: `served_at` later is refused.
    """
    say = say or (lambda _msg: None)
    limit = default_max_timestamp_ms() if max_timestamp_ms is None else max_timestamp_ms
    work_dir.mkdir(parents=True, exist_ok=True)
    con = connect_duckdb(lake=lake, config={"temp_directory": str(work_dir / "spill")})

    def start(rewritten: set[str]) -> None:
        # the impression ids in raw/ already, one column read once per run, except the parts
        # about to be written again from the same lines (a stopped run's)
        parts = [
            lake.url(rel)
            for rel in lake.glob(f"{RAW_IMPRESSIONS_DIR}/*.parquet")
            if rel not in rewritten
        ]
        if parts:
            con.execute(
                "create temp table seen as select impression_id, parse_filename(filename) as "
                "part from read_parquet($parts, filename = true)",
                {"parts": parts},
            )
        else:
            con.execute("create temp table seen (impression_id varchar, part varchar)")

    def parse(chunk: _Chunk, files: list[tuple[str, bytes]]) -> tuple[pa.Table, pa.Table]:
        reads = [(name, _read_impressions(data, limit)) for name, data in files]
        ids = pa.table(
            {
                "impression_id": [
                    obj["impression_id"] for _, read in reads for obj in read.impressions
                ],
                "file_index": [k for k, (_, read) in enumerate(reads) for _ in read.impressions],
                "line_number": [n for _, read in reads for n in read.line_numbers],
            },
            schema=pa.schema(
                [
                    ("impression_id", pa.string()),
                    ("file_index", pa.int64()),
                    ("line_number", pa.int64()),
                ]
            ),
        )
        con.register("chunk_ids", ids)
        in_raw = {
            (k, n): part
            for k, n, part in con.execute(
                "select c.file_index, c.line_number, min(s.part) from chunk_ids as c inner join "
                "seen as s using (impression_id) group by c.file_index, c.line_number"
            ).fetchall()
        }
        con.unregister("chunk_ids")
        first_seen: dict[object, str] = {}  # in the chunk: id -> `line N of <file>`
        for k, (name, read) in enumerate(reads):
            found = {}
            for obj, number in zip(read.impressions, read.line_numbers, strict=True):
                if (k, number) in in_raw:
                    found[number] = f"already in {shown(in_raw[k, number])}"
                elif obj["impression_id"] in first_seen:
                    found[number] = first_seen[obj["impression_id"]]
            if found:
                read.reject_duplicates(found)
            for obj, number in zip(read.impressions, read.line_numbers, strict=True):
                first_seen[obj["impression_id"]] = f"line {number} of {name}"
        accepted = _impressions_table([obj for _, read in reads for obj in read.impressions])
        rejected = pa.concat_tables(
            [REJECTED_SCHEMA.empty_table()]
            + [_rejected_table(name, read.rejected) for name, read in reads]
        )
        if accepted.num_rows:
            part = landing_part_name(IMPRESSIONS_LANDING, chunk.id)
            con.register("chunk_ids", accepted.select(["impression_id"]))
            con.execute("insert into seen select impression_id, ? from chunk_ids", [part])
            con.unregister("chunk_ids")
        return accepted, rejected

    try:
        return _pick_up(lake, IMPRESSIONS_LANDING, work_dir, say, parse, start)
    finally:
        con.close()


def ingest_all_landing(
    lake: Lake,
    work_dir: Path,
    say: Callable[[str], None] | None = None,
    max_timestamp_ms: int | None = None,
) -> list[TableReport]:
    """Everything the API landed: events (`ingest_landing`), then impressions
    (`ingest_landing_impressions`). One report for each kind that had files waiting."""
    if max_timestamp_ms is None:
        max_timestamp_ms = default_max_timestamp_ms()
    reports = [
        ingest_landing(lake, work_dir / "events", say, max_timestamp_ms),
        ingest_landing_impressions(lake, work_dir / "impressions", say, max_timestamp_ms),
    ]
    return [r for r in reports if r is not None]


def report_lines(reports: list[TableReport]) -> list[str]:
    """What an ingest did, a line per table (raw = accepted + rejected) and per reason."""
    lines = []
    for r in reports:
        state = " (unchanged)" if r.unchanged else ""
        lines.append(
            f"  {r.table:<18} {r.raw_rows:>12,} raw = {r.accepted:>12,} accepted "
            f"+ {r.rejected:>8,} rejected{state}"
        )
        lines += [f"      {count:>10,}  {reason}" for reason, count in r.reasons.items()]
    return lines


def ingest_folder(
    raw_dir: Path, settings: Settings, say: Callable[[str], None] = print
) -> list[TableReport]:
    """`recsys ingest --raw-dir raw_dir` (the command line and the DAGs): the CSVs into the
    settings' lake, with progress and the accounting of each table said as it goes."""
    lake = Lake.from_settings(settings)
    say(f"ingesting {raw_dir} into {lake.uri}/raw/")
    t0 = time.perf_counter()
    reports = ingest(
        raw_dir,
        lake,
        progress=lambda m: say(f"  {m}"),
        max_timestamp_ms=settings.max_event_timestamp_ms(),
    )
    say(f"[ingest] done in {time.perf_counter() - t0:.1f}s")
    for line in report_lines(reports):
        say(line)
    return reports
