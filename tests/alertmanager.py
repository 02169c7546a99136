"""The project's Prometheus and Alertmanager configurations, made runnable in a test.

Alertmanager 0.25 (Debian's binaries, unpacked by `make tools`, like Prometheus: see
tests/prometheus.py) with monitoring/alertmanager/alertmanager.yml, except for what only a
deployment has: the webhook goes to a URL of the test's, the waits are short, the bearer token
is a file of the test's (or none), and clustering is off.

    with WebhookRecorder() as hook, AlertmanagerServer(tmp_path, hook.url, token_file=token) as am:
        am.post_alerts([{"labels": {"alertname": "RecsysDriftFailing", "severity": "ticket"}}])
        hook.wait_for(lambda n: n["status"] == "firing")

and Prometheus with the project's rules and scrape jobs, its targets local:

    rules = copy_rules(tmp_path / "rules", for_="0s")     # alerts fire at their first evaluation
    config = render_prometheus_config(rules, {"recsys-monitoring": [target]}, am.url)
    with PrometheusServer(tmp_path, [], config_text=config) as prom: ...
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from recsys.settings import REPO_ROOT
from tests.prometheus import ALERTMANAGER, require, start_until_ready
from tests.service import free_port, stop

# Debian's Alertmanager reads its default notification template (and UI) from this folder, a
# path compiled into the binary; `make tools` unpacks the folder beside the binary instead
DEBIAN_ASSETS = b"/usr/share/prometheus/alertmanager"
ASSETS = ALERTMANAGER.parent.parent / "share" / "prometheus" / "alertmanager"
# the same number of bytes (a Go string's length is compiled in too), relative to the server's
# working directory, where a symlink names ASSETS
RELATIVE_ASSETS = b"./" * 8 + b"alertmanager-share"
assert len(RELATIVE_ASSETS) == len(DEBIAN_ASSETS)

MONITORING = REPO_ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in _routes(child))]


def render_alertmanager_config(
    webhook_url: str,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
    token_file: Path | None = None,
) -> str:
    """The project's alertmanager.yml with every webhook sent to `webhook_url`, every route's
    waits set to these, and the bearer token read from `token_file` (none: no Authorization
    header). Routing, grouping, inhibitions and `send_resolved` stay the project's."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for route in _routes(config["route"]):
        for key in ("group_wait", "group_interval", "repeat_interval"):
            route.pop(key, None)
    config["route"].update(
        group_wait=group_wait, group_interval=group_interval, repeat_interval=repeat_interval
    )
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = webhook_url
            if token_file is None:
                webhook.pop("http_config", None)
            else:
                webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return str(yaml.safe_dump(config, sort_keys=False))


def copy_rules(out_dir: Path, for_: str | None = None) -> list[Path]:
    """The project's rule files copied into `out_dir`; with `for_` (e.g. "0s"), every alert's
    `for` replaced by it, so that a test need not wait minutes for an alert to fire."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in RULE_FILES:
        rules = yaml.safe_load(path.read_text())
        if for_ is not None:
            for group in rules["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        rule["for"] = for_
        copy = out_dir / path.name
        copy.write_text(yaml.safe_dump(rules, sort_keys=False))
        copies.append(copy)
    return copies


def render_prometheus_config(
    rule_files: Sequence[Path],
    targets: Mapping[str, Sequence[str]],
    alertmanager_url: str | None = None,
    interval: str = "1s",
) -> str:
    """The project's prometheus.yml with its scrape jobs' targets replaced by `targets` (job name
    -> host:port; jobs not named are left out, Prometheus' own too), these `rule_files`, scrapes
    and evaluations every `interval`, and alerts sent to `alertmanager_url` (none: no
    alerting)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(path) for path in rule_files]
    known = {job["job_name"] for job in config["scrape_configs"]}
    unknown = set(targets) - known
    if unknown:
        raise ValueError(f"no such scrape job in {PROMETHEUS_CONFIG}: {sorted(unknown)}")
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    if alertmanager_url is None:
        config.pop("alerting", None)
    else:
        scheme, _, host = alertmanager_url.partition("://")
        config["alerting"] = {
            "alertmanagers": [{"scheme": scheme, "static_configs": [{"targets": [host]}]}]
        }
    return str(yaml.safe_dump(config, sort_keys=False))


def runnable_alertmanager(workdir: Path) -> Path:
    """A copy of `make tools`' Alertmanager in `workdir` that finds its templates without a
    system install: the compiled-in /usr/share/prometheus/alertmanager becomes a relative path
    of the same length, a symlink in `workdir` to the unpacked folder. Run it with `workdir` as
    its working directory."""
    binary = require(ALERTMANAGER).read_bytes()
    if binary.count(DEBIAN_ASSETS) == 0:  # not Debian's build: nothing to redirect
        return ALERTMANAGER
    patched = workdir / "alertmanager"
    patched.write_bytes(binary.replace(DEBIAN_ASSETS, RELATIVE_ASSETS))
    patched.chmod(0o755)
    link = workdir / RELATIVE_ASSETS.decode().lstrip("./")
    if not link.exists():
        link.symlink_to(ASSETS, target_is_directory=True)
    return patched


class AlertmanagerServer:
    """Alertmanager on 127.0.0.1 (free port) with the project's configuration, rendered by
    `render_alertmanager_config`; no cluster, its state under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        token_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(
            render_alertmanager_config(
                webhook_url, group_wait, group_interval, repeat_interval, token_file
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "alertmanager.log"

    def __enter__(self) -> AlertmanagerServer:
        cmd = [
            str(runnable_alertmanager(self.workdir)),
            f"--config.file={self.config}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # empty: no gossip, no peers, no port of its own
        ]
        self._proc = start_until_ready(
            cmd, self._log, f"{self.url}/-/ready", "alertmanager", cwd=self.workdir
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            stop(self._proc)

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts as Prometheus sends them (API v2: labels, annotations, startsAt, endsAt);
        an `endsAt` in the past resolves an alert."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status != 200:
                raise RuntimeError(f"alertmanager refused the alerts: {response.status}")

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds, each with its `status` (state `active` or
        `suppressed`, `inhibitedBy`, `silencedBy`)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            return list(json.load(response))


class WebhookRecorder:
    """A webhook receiver on 127.0.0.1 (free port) that records every notification: its
    Authorization header and JSON body. Stands in for the monitoring service's /v1/alerts."""

    def __init__(self, path: str = "/v1/alerts") -> None:
        self.notifications: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with recorder._lock:
                    recorder.notifications.append(json.loads(body))
                    recorder.authorizations.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookRecorder:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first notification (Alertmanager's webhook payload) meeting `condition`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for notification in self.notifications:
                    if condition(notification):
                        return notification
            time.sleep(0.05)
        raise AssertionError(f"no such notification in {timeout:g} s: {self.notifications}")
