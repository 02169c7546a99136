"""Loading parts of a snapshot in another process (`python -m api.load_worker`).

A full-scale load is seconds of NumPy and Arrow work that holds the GIL in between DuckDB's
batches. Run in a thread of the server, it stalled the requests being served: during a swap every
5 s, GET p99 went from 3.5 ms to 146 ms (`make bench-api`). In a process of its own, at a lower
CPU priority, it no longer holds the server's GIL (the server's threads kept waking on time
through full-scale swaps). It still competes for the cores: with the fetch of the file (its
checksum, and its copy unless a local lake's file is linked), which stays in the server,
bench-api's GET p99 during swaps still ranged 6-280 ms over six runs on 2 busy cores. At
start-up, with nothing served yet, the parts are split between this process and one worker, to
use both cores.

The worker reads the parts (`api.loader.PARTS`) it is asked for, writes every array of them to
a `.npy` file in the folder it is given, and the pieces (`api.loader.load_part`) to
`pieces.pickle` in that folder, each array in it a reference to its file, or, when small, its
bytes. The server maps the files back read-only (`read_pieces`), as `api.loader.Keep` does in
process, and unlinks them. The pickle is read with an unpickler that builds only the
snapshot's own types and plain NumPy arrays, nothing else. It is only ever read from a private
folder this process made for the load (`tempfile.mkdtemp`: mode 0700), written by the worker
it started.

An invalid snapshot is reported as `error.json` ({"invalid": message}): the server refuses it
as it would one loaded in process. Anything else ends the worker with its traceback on stderr
(`stderr.txt` in the folder), and the load fails with its last lines.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from api import loader
from api.loader import PARTS, Keep, arrays_folder, assemble, check, read_parts
from api.snapshot import Snapshot, SnapshotInvalid

PIECES = "pieces.pickle"
ERROR = "error.json"
STDERR = "stderr.txt"
# a worker that has not finished in this long is stopped (a full-scale load takes seconds)
TIMEOUT_S = 600.0
_FILE_NAME = re.compile(r"[0-9]{4}\.npy")  # api.loader.Keep's names
# the types a worker's pickle may build (besides numbers, strings, bytes, lists, dicts, tuples)
_ALLOWED = {("api.snapshot", "Groups"), ("api.snapshot", "Items")}


class KeepFiles(Keep):
    """`Keep` that leaves each file in place and remembers which array is in which file."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.files: dict[int, tuple[str, np.ndarray]] = {}

    def _mapped(self, path: Path) -> np.ndarray:
        mapped = np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        self.files[id(mapped)] = (path.name, mapped)  # the array is kept: its id stays its own
        return mapped


def _simple(dtype: np.dtype[Any]) -> bool:
    """Numbers and flags only: no objects, no structured or pickled types."""
    return dtype.kind in "biuf" and not dtype.hasobject and dtype.fields is None


class _Pickler(pickle.Pickler):
    def __init__(self, file: BinaryIO, keep: KeepFiles) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.keep = keep

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, np.ndarray):
            return None
        if not _simple(obj.dtype) or obj.ndim != 1:
            raise TypeError(f"an array of {obj.dtype} in {obj.ndim} dimensions is not a column")
        saved = self.keep.files.get(id(obj))
        if saved is not None and saved[1] is obj:
            return ("file", saved[0], obj.dtype.str, len(obj))
        return ("data", obj.dtype.str, np.ascontiguousarray(obj).tobytes())


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, folder: Path) -> None:
        super().__init__(file)
        self.folder = folder

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a part of a snapshot")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind == "data" and len(pid) == 3:
            dtype = np.dtype(str(pid[1]))
            if not _simple(dtype):
                raise pickle.UnpicklingError(f"an array of {dtype} is not a column")
            return np.frombuffer(pid[2], dtype=dtype).copy()
        if kind == "file" and len(pid) == 4 and _FILE_NAME.fullmatch(str(pid[1])):
            path = self.folder / str(pid[1])
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.dtype != np.dtype(str(pid[2])) or mapped.shape != (int(pid[3]),):
                raise pickle.UnpicklingError(f"{path.name} is not the array the worker wrote")
            path.unlink(missing_ok=True)  # the mapping holds the pages (see api.loader.Keep)
            return np.asarray(mapped)
        raise pickle.UnpicklingError(f"unknown array reference {str(pid)[:80]}")


def load(
    path: Path,
    manifest: dict[str, Any],
    files_dir: Path,
    away: Sequence[str],
    cache_bytes: int = 0,
    nice: int = 0,
) -> Snapshot:
    """`api.loader.load` with the parts named in `away` loaded by a worker process at `nice`
    more than this one's, while this process loads the others."""
    check(path, manifest)
    with arrays_folder(files_dir) as folder:
        # the worker's files in a folder of their own: they are named as this process's are
        (folder / "worker").mkdir()
        worker = Worker(path, [part for part in PARTS if part in away], folder / "worker", nice)
        try:
            here = [part for part in PARTS if part not in away]
            pieces = read_parts(path, here, Keep(folder))[1] if here else {}
            metadata, away_pieces = worker.result()  # the same metadata as here
        finally:
            worker.stop()
        return assemble(manifest, metadata, {**pieces, **away_pieces}, cache_bytes)


class Worker:
    """A worker process loading `parts` of the snapshot at `path` into `folder`."""

    def __init__(self, path: Path, parts: Sequence[str], folder: Path, nice: int = 0) -> None:
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ValueError(f"no such parts: {unknown}")
        self.folder = folder
        request = {
            "path": str(path),
            "parts": list(parts),
            "folder": str(folder),
            "nice": nice,
            # this process's settings (tests lower them to put every array in a file)
            "keep_bytes": loader.KEEP_IN_MEMORY_BYTES,
            "batch_rows": loader.READ_BATCH_ROWS,
        }
        with open(folder / STDERR, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.load_worker"],
                stdin=subprocess.PIPE,
                stdout=stderr,
                stderr=stderr,
            )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request).encode())
        self.process.stdin.close()

    def result(self, timeout: float = TIMEOUT_S) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metadata, pieces) the worker read; SnapshotInvalid for an invalid snapshot,
        RuntimeError when the worker failed otherwise."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(
                f"the snapshot's loading process took over {timeout:.0f} s"
            ) from None
        error = self.folder / ERROR
        if code != 0 and error.exists():
            raise SnapshotInvalid(str(json.loads(error.read_text())["invalid"]))
        if code != 0:
            tail = (self.folder / STDERR).read_bytes()[-2000:].decode(errors="replace")
            raise RuntimeError(f"the snapshot's loading process failed (exit {code}): {tail}")
        return read_pieces(self.folder)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def read_pieces(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, pieces) from a worker's folder, its arrays mapped (see the module doc)."""
    with open(folder / PIECES, "rb") as file:
        metadata, pieces = _Unpickler(file, folder).load()
    if not isinstance(metadata, dict) or not isinstance(pieces, dict):
        raise pickle.UnpicklingError("a worker's pieces are not (metadata, pieces)")
    return metadata, pieces


def main() -> int:
    request = json.loads(sys.stdin.read())
    if int(request.get("nice") or 0) > 0:
        os.nice(int(request["nice"]))
    folder = Path(request["folder"])
    loader.KEEP_IN_MEMORY_BYTES = int(request["keep_bytes"])
    loader.READ_BATCH_ROWS = int(request["batch_rows"])
    keep = KeepFiles(folder)
    try:
        metadata, pieces = read_parts(Path(request["path"]), list(request["parts"]), keep)
    except SnapshotInvalid as exc:
        (folder / ERROR).write_text(json.dumps({"invalid": str(exc)}))
        return 3
    partial = folder / f".{PIECES}.part"
    with open(partial, "wb") as file:
        _Pickler(file, keep).dump((metadata, pieces))
    partial.replace(folder / PIECES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
