"""File-creation events (Linux inotify, through ctypes) to stop a process at a chosen write.

`Watch(root)` watches `root` and every folder below it, including folders created later, and
`Watch.kill_at(process, matches)` sends SIGKILL to `process` the moment a file whose path
(relative to `root`) satisfies `matches` is created or renamed into place. No sleeps: the kill
follows the write that the test names, as closely as the kernel reports it.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Watch:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders: dict[int, Path] = {}
        self.pending: list[str] = []
        self._add_tree(root, report=False)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _add(self, folder: Path) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_CREATE | IN_MOVED_TO)
        if wd >= 0:
            self.folders[wd] = folder

    def _add_tree(self, folder: Path, report: bool) -> None:
        """Watch `folder` and the folders below it; with `report`, what is already in them
        counts as created (it was, between the folder's creation and its watch)."""
        self._add(folder)
        for entry in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if entry.is_dir():
                self._add(entry)
            elif report:
                self.pending.append(str(entry.relative_to(self.root)))

    def _read(self, timeout: float) -> list[str]:
        created, self.pending = self.pending, []
        if created:
            return created
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        data = os.read(self.fd, 1 << 16)
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            folder = self.folders.get(wd)
            if folder is None or not name:
                continue
            path = folder / os.fsdecode(name)
            if mask & IN_ISDIR:
                self._add_tree(path, report=True)
            else:
                created.append(str(path.relative_to(self.root)))
        # what was already in folders made meanwhile counts as created now, once
        found, self.pending = created + self.pending, []
        return found

    def kill_at(
        self,
        process: subprocess.Popen[bytes],
        matches: Callable[[str], bool],
        log: Path,
        timeout: float = 300.0,
    ) -> str:
        """SIGKILL `process` when a file matching `matches` appears; the file's path.

        `log` is where the process writes its output (a file, never a pipe that could fill and
        stop it before the write point). AssertionError when the process ends (or `timeout`
        passes) before such a file: the write point was never reached, so the test would
        check nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in self._read(0.05):
                if matches(path):
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return path
            if process.poll() is not None:
                break
        process.kill()
        process.wait()
        said = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise AssertionError(f"the write point was never reached; the process said:\n{said}")
