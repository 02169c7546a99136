"""Landing accepted events on the lake, durably, for the next `recsys ingest`.

Each accepted request becomes one file `landing/events/<UTC time>-<random>.csv` in the
RetailRocket `events.csv` layout (header included), so that ingest checks it with exactly the
rules it applies to `events.csv`. The name sorts by arrival and is unique across workers.

Retries: a request with an `Idempotency-Key` header lands as `landing/events/key-<hash>.csv`
instead, the same name for every retry with that key. A retry before the next ingest replaces
the file; a retry after it lands the file again, and ingest writes the same `raw/` part again
(its name comes from the landing file's), so the events reach `raw/` once either way. The last
body sent with a key is the one kept.

Durability: on a local lake the bytes go to a temporary name in the same folder (not matching
`*.csv`, so ingest never sees a partial file), are flushed and fsynced, renamed into place, and
the folder is fsynced so that the rename itself survives a crash. On S3 the file is one PUT,
which S3 stores durably and makes visible all at once. Only then does the API answer 202.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from recsys.ingest import EVENTS, LANDING_DIR
from recsys.lake import Lake

HEADER = ",".join(EVENTS.names)


def to_csv(rows: Sequence[tuple[int, int, str, int, int | None]]) -> str:
    """Validated events as `events.csv` text (ids and timestamps are plain integers)."""
    lines = [HEADER]
    for timestamp, visitor, event, item, transaction in rows:
        lines.append(
            f"{timestamp},{visitor},{event},{item},{'' if transaction is None else transaction}"
        )
    return "\n".join(lines) + "\n"


def new_batch_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:16]}"


# what an Idempotency-Key may hold (it never reaches a path: only its hash does)
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


def keyed_batch_id(idempotency_key: str) -> str:
    """The batch id of every request sent with this Idempotency-Key."""
    return f"key-{hashlib.sha256(idempotency_key.encode('utf-8')).hexdigest()[:32]}"


def land(lake: Lake, batch_id: str, text: str) -> str:
    """Write one landing file durably; return its lake-relative path."""
    rel = f"{LANDING_DIR}/{batch_id}.csv"
    if lake.is_s3:
        lake.write_text(rel, text)  # one PUT: durable and atomic once it returns
        return rel
    target = Path(lake.root) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    # unique per writer: two retries of one key may land at the same moment
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return rel
