"""The lake: a local folder by default, `s3://bucket/prefix` when configured.

Every stage reads and writes the lake through this class, so that the same code serves both.
Writes are atomic per file: a local file is written beside its target and renamed over it; an S3
object is replaced by a single PUT, which S3 makes visible all at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from recsys.settings import Settings

# the prefix of every scratch folder the project makes under the system's temporary directory,
# so that `recsys gc` can tell the ones a killed run left behind from anyone else's
TEMP_PREFIX = "recsys-"


class LakeError(RuntimeError):
    """The lake cannot be read or written (bad credentials, no bucket, no permission)."""


CREDENTIALS_HINT = (
    "the S3 server refused the credentials: check AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a non-AWS server)"
)
_REFUSALS = (
    "signaturedoesnotmatch",
    "signature we calculated does not match",
    "invalidaccesskeyid",
    "does not exist in our records",
    "accessdenied",
    "forbidden",
    "permissionerror",
)


def is_credentials_error(text: str) -> bool:
    """Whether an error text (from s3fs, DuckDB or dbt) says S3 refused the credentials."""
    lowered = text.lower()
    return any(word in lowered for word in _REFUSALS)


def _explain(exc: BaseException, uri: str) -> LakeError:
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if isinstance(exc, PermissionError) or is_credentials_error(text):
        hint = CREDENTIALS_HINT
    elif "nosuchbucket" in lowered or ("bucket" in lowered and "not" in lowered):
        hint = "the bucket does not exist: create it or fix RECSYS_LAKE_URI"
    elif any(word in lowered for word in ("connect", "endpoint", "timed out", "name resolution")):
        hint = "the S3 endpoint cannot be reached: check AWS_ENDPOINT_URL"
    else:
        hint = "the lake could not be accessed"
    return LakeError(f"{hint} ({uri}): {text}")


class Lake:
    """Paths relative to the lake root, resolved on a local or S3 filesystem."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.is_s3 = self.uri.startswith("s3://")
        options = dict(storage_options or {}) if self.is_s3 else {}
        self.storage_options = options
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **options)
        if not self.is_s3:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        return cls(settings.lake_uri, settings.s3_options)

    def url(self, rel: str) -> str:
        """The full URI of `rel` (what DuckDB or dbt reads)."""
        return f"{self.uri}/{rel.lstrip('/')}"

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel.lstrip('/')}"

    def exists(self, rel: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(rel)))
        except Exception as exc:  # botocore and aiohttp raise many kinds
            raise _explain(exc, self.url(rel)) from exc

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching `pattern`, sorted."""
        try:
            found = self.fs.glob(self._path(pattern))
        except Exception as exc:
            raise _explain(exc, self.url(pattern)) from exc
        prefix = self.root.rstrip("/") + "/"
        return sorted(str(p)[len(prefix) :] if str(p).startswith(prefix) else str(p) for p in found)

    def read_text(self, rel: str) -> str:
        try:
            with self.fs.open(self._path(rel), "r", encoding="utf-8") as fh:
                return str(fh.read())
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _explain(exc, self.url(rel)) from exc

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of `rel`; FileNotFoundError when it is not there."""
        try:
            with self.fs.open(self._path(rel), "rb") as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _explain(exc, self.url(rel)) from exc

    def open(self, rel: str) -> Any:
        """`rel` opened for binary reading (a file object; seekable, so a Parquet footer can be
        read without the rest); FileNotFoundError when it is not there."""
        try:
            return self.fs.open(self._path(rel), "rb")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _explain(exc, self.url(rel)) from exc

    def write_text(self, rel: str, text: str) -> None:
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
            local = Path(tmp) / "file"
            local.write_text(text, encoding="utf-8")
            self.put(local, rel)

    def put(self, local: Path, rel: str) -> None:
        """Copy a local file to `rel`, atomically replacing what was there."""
        if self.is_s3:
            try:
                self.fs.put_file(str(local), self._path(rel))
            except Exception as exc:
                raise _explain(exc, self.url(rel)) from exc
            return
        target = Path(self._path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(local, tmp_name)
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the lake is shared
            with open(tmp_name, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get(self, rel: str, local: Path) -> None:
        """Copy `rel` from the lake to a local file."""
        try:
            self.fs.get_file(self._path(rel), str(local))
        except Exception as exc:
            raise _explain(exc, self.url(rel)) from exc

    def link_or_get(self, rel: str, local: Path) -> bool:
        """Give `local` the contents of `rel`: on a local lake a hard link where the file system
        allows one (no bytes copied; True), else a copy as `get` makes (False).

        Only for files that are never rewritten in place once written (a published snapshot:
        each version is a new path): the link shares the lake file's bytes.
        """
        if not self.is_s3:
            try:
                os.link(self._path(rel), local)
                return True
            except FileNotFoundError:
                raise
            except OSError:  # another file system (EXDEV), or one without hard links
                pass
        self.get(rel, local)
        return False

    def move(self, src_rel: str, dst_rel: str) -> None:
        """Move `src_rel` to `dst_rel`, replacing what was there; FileNotFoundError when
        `src_rel` is not there (someone else moved it first).

        Local: one rename, atomic: a writer replacing `src_rel` at the same moment either lands
        before it (and is moved) or after it (and stays). S3 has no rename: a server-side copy
        then a delete, so for a moment both exist, and a PUT to `src_rel` that lands after the
        copy and before the delete is deleted unread (a window of one request, not atomic).
        """
        try:
            if self.is_s3:
                self.fs.copy(self._path(src_rel), self._path(dst_rel))
                self.fs.rm(self._path(src_rel))
                return
            target = Path(self._path(dst_rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._path(src_rel), target)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _explain(exc, self.url(src_rel)) from exc

    def remove(self, rel: str) -> None:
        try:
            if self.fs.exists(self._path(rel)):
                self.fs.rm(self._path(rel), recursive=True)
        except Exception as exc:
            raise _explain(exc, self.url(rel)) from exc

    def duckdb(self, database: str | Path = ":memory:", read_only: bool = False) -> Any:
        """A DuckDB connection that reads this lake's URIs (see `connect_duckdb`)."""
        return connect_duckdb(database, lake=self, read_only=read_only)

    def check_access(self) -> None:
        """Fail early with a clear message when the lake cannot be listed."""
        try:
            if self.is_s3:
                bucket = self.root.split("/", 1)[0]
                self.fs.ls(bucket, refresh=True)
        except Exception as exc:
            raise _explain(exc, self.uri) from exc


# DuckDB downloads an extension it lacks when a query needs one (httpfs for s3:// paths): on a
# machine without the network that is an error at best, a hang at worst, and either way a path
# that tests on this machine would not have taken. Off on every connection the project opens.
NO_EXTENSION_DOWNLOADS: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def connect_duckdb(
    database: str | Path = ":memory:",
    *,
    lake: Lake | None = None,
    read_only: bool = False,
    config: dict[str, Any] | None = None,
) -> Any:
    """Every DuckDB connection the project opens (the warehouse, a snapshot, scratch work).

    Extensions are never installed or loaded on demand (`NO_EXTENSION_DOWNLOADS`). With `lake`
    on S3, the lake's fsspec filesystem is registered, as dbt's profile registers it
    (`filesystems:`), so that the warehouse's views over `s3://` Parquet read the same way in
    dbt and here; without it such a read fails at once, naming the extension.
    """
    import duckdb

    con = duckdb.connect(
        str(database), read_only=read_only, config={**NO_EXTENSION_DOWNLOADS, **(config or {})}
    )
    if lake is not None and lake.is_s3:
        con.register_filesystem(lake.fs)
    return con
