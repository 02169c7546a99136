"""The closed loop on one machine (`recsys loop`, `make demo-loop`): serve, simulate, ingest,
build, and read the business metrics and experiment results back.

1. If the loop's lake has no snapshot yet, `recsys run` makes one from demo data (the
   generator writes the shoppers' latent state beside the CSVs).
2. `recsys serve` starts on 127.0.0.1 with the experiments file and a short impression flush.
3. Each phase writes its experiments (the service reloads the file) and runs `recsys simulate`
   with its own seed: shoppers ask for recommendations and post what they did.
4. The service stops (writing its last impressions); `recsys ingest` picks up the landed events
   and impressions; `recsys build` attributes outcomes and analyses the experiments in dbt.

Every stage is the `recsys` command a user would run, in a child process: the loop shows the
parts working together, as they run in production, rather than calling into them. It runs in
its own data folder (`data/loop` by default): the simulated events are stamped with today's
clock, long after the demo data's last day, and a training run on that lake would put today
into its windows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys import experiments
from recsys.atomic import write_atomic
from recsys.generate import LATENT_FILE
from recsys.lake import connect_duckdb
from recsys.settings import REPO_ROOT

Say = Callable[[str], None]
DEMO_EXPERIMENTS = Path(__file__).with_name("loop_experiments.yaml")

# what `recsys loop` prints at the end: the days with recommendations, then the experiments
REPORTS = (
    (
        "business metrics, days with recommendations (business_metrics_daily)",
        """
        select metric_date, n_visitors, n_sessions, conversion_rate, add_to_cart_rate,
               n_transactions, revenue, n_impressions, recommendation_ctr,
               n_attributed_purchases, attributed_revenue
        from business_metrics_daily where n_impressions > 0 order by metric_date
        """,
    ),
    (
        "recommendations by variant (recommendation_metrics_daily)",
        """
        select served_date, route, experiment, variant, strategy, n_impressions, ctr,
               add_to_cart_rate, purchase_rate, attributed_revenue
        from recommendation_metrics_daily order by served_date, experiment, variant, route, strategy
        """,
    ),
    (
        "A/B results, visitor as the unit (experiment_results)",
        """
        select experiment, variant, metric, n_visitors, estimate, absolute_lift,
               absolute_lift_ci_low, absolute_lift_ci_high, relative_lift, p_value,
               sample_ratio_p_value, has_sample_ratio_mismatch
        from experiment_results order by experiment, metric, is_control desc, variant
        """,
    ),
    (
        "interleaving (interleaving_results)",
        """
        select experiment, variant, team_a, team_b, n_visitors_with_views, share_prefer_a,
               share_prefer_b, share_ties, sign_test_p_value
        from interleaving_results order by experiment, variant
        """,
    ),
)


@dataclass(frozen=True)
class Phase:
    """One stretch of simulated traffic: the experiments file's content while it runs and the
    simulator's seed and bounds."""

    experiments: str
    seed: int
    shoppers: int | None = None
    duration: float = 60.0
    extra_args: tuple[str, ...] = ()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recsys(args: Sequence[str], env: dict[str, str], say: Say, quiet: bool = False) -> None:
    """Run `recsys <args>` to the end; its output goes to ours (or nowhere when `quiet`)."""
    say(f"$ recsys {' '.join(args)}")
    out = subprocess.DEVNULL if quiet else None
    status = subprocess.run(
        [sys.executable, "-m", "recsys.cli", *args], env=env, cwd=REPO_ROOT, stdout=out
    ).returncode
    if status != 0:
        raise RuntimeError(f"`recsys {' '.join(args)}` failed with exit code {status}")


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


class Service:
    """`recsys serve` in a child process on 127.0.0.1."""

    def __init__(self, env: dict[str, str], log: Path, say: Say) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.say = say
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recsys.cli", "serve", "--port", str(self.port)],
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while True:
            try:
                if _get(f"{self.url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start; its log:\n{self.tail()}")
            time.sleep(0.1)
        say(f"service ready on {self.url} (log: {log})")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM (the service writes its buffered impressions on the way out), then SIGKILL
        if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_experiment(
    url: str, visitor_id: int, expected: str | None, seconds: float = 10.0
) -> None:
    """Until the service answers with `expected` as its experiment (the file is reloaded when
    it changes, looked at once a second)."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = _get(f"{url}/v1/recommendations/{visitor_id}?k=1")
        if status == 200 and json.loads(body).get("experiment") == expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not take up experiment {expected!r}")
        time.sleep(0.2)


def first_experiment(text: str) -> str | None:
    """The experiment the service answers the visitor route with, under this file (the file's
    own parser and rule: the first running experiment covering the route)."""
    experiment = experiments.loads(text).by_route.get("visitor")
    return experiment.name if experiment is not None else None


def run_loop(
    data_dir: Path,
    phases: Sequence[Phase],
    *,
    scale: str = "small",
    seed: int = 42,
    say: Say = print,
    quiet_simulator: bool = False,
    dbt_vars: dict[str, Any] | None = None,
    raw_dir: Path | None = None,
) -> Path:
    """Every step of the loop (see the module doc) in `data_dir`; returns the warehouse's path.
    `raw_dir`: the shop's CSVs and latent state (default: the demo data `recsys run` makes)."""
    data_dir = data_dir.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AWS_"))} | {
        "RECSYS_DATA_DIR": str(data_dir),
        "OPENBLAS_NUM_THREADS": "1",
    }
    run = ["run", "--raw-dir", str(raw_dir)] if raw_dir else ["run", "--scale", scale]
    raw_dir = (raw_dir or data_dir / "demo" / scale).resolve()
    t0 = time.perf_counter()
    if not (data_dir / "lake" / "snapshots" / "LATEST").exists():
        say(f"[loop] no snapshot in {data_dir} yet: the whole pipeline first")
        recsys([*run, "--seed", str(seed)], env, say)
    experiments_file = data_dir / "experiments.yaml"
    write_atomic(
        experiments_file, phases[0].experiments if phases else "version: 1\nexperiments: []\n"
    )
    serve_env = env | {
        "RECSYS_EXPERIMENTS_FILE": str(experiments_file),
        "RECSYS_IMPRESSIONS_FLUSH_SECONDS": "1",
        "RECSYS_API_RATE_LIMIT": "0",
    }
    service = Service(serve_env, data_dir / "logs" / "serve.log", say)
    try:
        for phase in phases:
            write_atomic(experiments_file, phase.experiments)
            wait_for_experiment(service.url, 1, first_experiment(phase.experiments))
            args = ["simulate", "--api-url", service.url, "--latent", str(raw_dir / LATENT_FILE)]
            args += ["--seed", str(phase.seed)]
            args += ["--duration", f"{phase.duration:g}"]
            if phase.shoppers is not None:
                args += ["--shoppers", str(phase.shoppers)]
            if quiet_simulator:
                args.append("--no-progress")
            recsys([*args, *phase.extra_args], env, say, quiet=quiet_simulator)
    finally:
        service.stop()
    say("[loop] service stopped; its buffered impressions are on the lake")
    # the build reads the experiments' controls and declared weights from the same file
    env = env | {"RECSYS_EXPERIMENTS_FILE": str(experiments_file)}
    recsys(["ingest", "--raw-dir", str(raw_dir)], env, say, quiet=quiet_simulator)
    build = ["build"]
    if dbt_vars:
        build += ["--vars", json.dumps(dbt_vars)]
    recsys(build, env, say, quiet=quiet_simulator)
    say(f"[loop] done in {time.perf_counter() - t0:.1f}s")
    return data_dir / "warehouse.duckdb"


def query(warehouse: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with connect_duckdb(warehouse, read_only=True) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return names, cursor.fetchall()


def table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as a plain text table (numbers to 4 significant places)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
