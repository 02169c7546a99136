"""A real Prometheus server for tests, from Debian's package unpacked by `make tools`.

`make test` runs `make tools` first, which puts Prometheus 2.42 and promtool under
`.tools/prometheus/usr/bin/`. Nothing is downloaded at run time; when the binaries are missing
the tests that need them fail with the command that fetches them (they are part of the suite,
not optional).

    with PrometheusServer(tmp_path, targets=["127.0.0.1:8123"]) as prom:
        prom.wait_for("up", lambda result: result and result[0]["value"][1] == "1")
        result = prom.query('sum(recsys_http_requests_total)')
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from recsys.settings import REPO_ROOT
from tests.service import free_port, stop

TOOLS_BIN = REPO_ROOT / ".tools" / "prometheus" / "usr" / "bin"
PROMETHEUS = TOOLS_BIN / "prometheus"
PROMTOOL = TOOLS_BIN / "promtool"
# Alertmanager 0.25 and amtool, unpacked beside Prometheus by `make tools` (tests/alertmanager.py)
ALERTMANAGER_BIN = REPO_ROOT / ".tools" / "alertmanager" / "usr" / "bin"
ALERTMANAGER = ALERTMANAGER_BIN / "prometheus-alertmanager"
AMTOOL = ALERTMANAGER_BIN / "amtool"


def require(binary: Path) -> Path:
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make tools` (make test does it first)")
    return binary


def start_until_ready(
    cmd: list[str], log_path: Path, ready_url: str, name: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`cmd` started with its output in `log_path`, once `ready_url` answers 200 (in 30 s);
    RuntimeError with the end of its log when it exits or is not ready in time (stopped then)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=1) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{name} not ready in 30 s: {log_path.read_text()[-2000:]}")


class PrometheusServer:
    """Prometheus on 127.0.0.1 (free port), scraping `targets` every `scrape_interval`; or,
    given `config_text`, running that configuration instead (the other arguments unused), e.g.
    the project's own from `tests.alertmanager.render_prometheus_config`."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
        rule_files: list[Path] | None = None,
        *,
        config_text: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        if config_text is None:
            rules = "".join(f"  - {path}\n" for path in rule_files or [])
            config_text = (
                "global:\n"
                f"  scrape_interval: {scrape_interval}\n"
                f"  evaluation_interval: {scrape_interval}\n"
                + (f"rule_files:\n{rules}" if rules else "")
                + "scrape_configs:\n"
                "  - job_name: recsys\n"
                f"    metrics_path: {metrics_path}\n"
                "    static_configs:\n"
                f"      - targets: {json.dumps(targets)}\n"
            )
        self.config.write_text(config_text)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        cmd = [
            str(require(PROMETHEUS)),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]
        self._proc = start_until_ready(cmd, self._log, f"{self.url}/-/ready", "prometheus")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            stop(self._proc)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API; the `result` list."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            payload = json.load(response)
        if payload.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {payload}")
        return list(payload["data"]["result"])

    def wait_for(
        self,
        promql: str,
        condition: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Query until `condition(result)` holds; the last result, or an error at timeout."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if condition(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{promql!r} never met the condition in {timeout:g} s: {result}")
