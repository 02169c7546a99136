"""Atomic file writes: a reader sees the old file or the new one, never a part of either."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, durable: bool = False) -> None:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder,
    renamed over `path` once complete.

    The temporary name is `.<name>.<random>.tmp`, created exclusively: several writers (API
    workers, two retries of one request) may race for the same path, and the last rename
    wins whole. A writer killed before the rename leaves only the temporary file, which
    `recsys gc` removes. `durable`: the file and then its folder are flushed to disk before
    returning, so that an acknowledged write survives a power cut (events the API accepted).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
