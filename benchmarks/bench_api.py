"""API benchmark: `recsys serve` over a full-scale snapshot, measured with one client.

Targets (2 cores, server and load generator on this machine; the second round's, issue 17):
- `GET /v1/recommendations/{id}` throughput >= 90% of `GET /healthz`'s (same client, same
  connections, in alternating 0.5 s turns: the median of the pairs' ratios), and its p99 at
  200 req/s within 1.5x `/healthz`'s at that rate;
- `POST /v1/recommendations` ranking ~100 candidates: p99 <= 3 ms at 100 req/s;
- server resident memory <= 1.0 GB (sampled all along, swaps included, the process and its
  children); the snapshot loaded at start-up in <= 5 s (download, checksum, load and warm-up,
  as the server logs it; the time to ready, imports included, is printed beside it);
- a snapshot swap every few seconds during the same fixed-rate traffic: zero non-2xx answers,
  and GET and POST p99 within 2x of their steady values (a second round: loading a full
  snapshot competes with requests for the two cores);
- the impression log costs at most 5% of GET throughput: the server against a second one on
  the same snapshot with `RECSYS_IMPRESSIONS_LOG=false`, measured in turns.

The snapshot is the latest one published under `--data-dir` (a full-scale `recsys run`; `make
bench-api` makes one with `benchmarks/bench_ml.py` when there is none). The server gets a lake
of its own, where this script publishes the same file again under new versions while the load
runs (hard links: the bytes and their sha256 stay right, the version changes), so the server
downloads, verifies, loads and swaps a full snapshot each time.

Latency at a fixed rate is measured from each request's scheduled start (an open loop: a slow
answer delays the next ones and that delay counts), so queueing is not hidden.

    make bench-api      # or: python benchmarks/bench_api.py --data-dir data/bench/ml/data
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

from recsys.lake import connect_duckdb
from recsys.snapshots import sha256_file

REPO = Path(__file__).resolve().parent.parent
LOADED = re.compile(r"serving snapshot \S+ .* loaded in ([0-9.]+)s")  # api.store's log line
# the second round's (issue 17); GET's p99 is judged against /healthz's at the same rate, the
# swap round's p99s against the steady ones of the same run
TARGETS = {
    "ratio": 0.90,
    "get_p99_vs_healthz": 1.5,
    "post_p99_ms": 3.0,
    "rss_gb": 1.0,
    "load_s": 5.0,
    "swap_p99_vs_steady": 2.0,
    "log_cost_pct": 5.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Publisher:
    """Publishes the source snapshot into the server's lake under fresh versions.

    Each version is a distinct file (the source with one extra metadata row, so other bytes and
    another sha256): the server cannot reuse its cached copy, it downloads, verifies and loads
    every one, as it would a new week's snapshot. The variants are made before the load runs
    (a publisher is another machine in production), then published by hard link.
    """

    def __init__(self, source: Path, lake: Path, variants: int) -> None:
        self.manifest = json.loads((source / "manifest.json").read_text())
        self.snapshots = lake / "snapshots"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self.files: list[tuple[Path, str]] = [(source / "snapshot.duckdb", self.manifest["sha256"])]
        staging = lake.parent / "variants"
        staging.mkdir(parents=True, exist_ok=True)
        for n in range(1, variants):
            path = staging / f"snapshot-{n}.duckdb"
            shutil.copyfile(source / "snapshot.duckdb", path)
            with connect_duckdb(path) as con:
                con.execute("insert into metadata values ('bench_variant', ?)", [json.dumps(n)])
                con.execute("checkpoint")
            self.files.append((path, sha256_file(path)))
        self.count = 0

    def publish(self) -> str:
        path, digest = self.files[self.count % len(self.files)]
        self.count += 1
        now = datetime.now(UTC)
        version = f"{now:%Y%m%dT%H%M%S}{self.count:03d}Z-{digest[:8]}"
        target = self.snapshots / version
        target.mkdir()
        os.link(path, target / "snapshot.duckdb")
        manifest = {
            **self.manifest,
            "version": version,
            "created_at": now.isoformat(),
            "sha256": digest,
            "size_bytes": path.stat().st_size,
        }
        if digest != self.manifest["sha256"]:  # a variant: one metadata row more
            counts = dict(self.manifest["row_counts"])
            counts["metadata"] += 1
            manifest["row_counts"] = counts
        (target / "manifest.json").write_text(json.dumps(manifest, default=str))
        tmp = self.snapshots / "LATEST.tmp"
        tmp.write_text(version + "\n")
        tmp.replace(self.snapshots / "LATEST")
        return version


class Client:
    """Keep-alive HTTP/1.1 connections, one per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            return 599


def closed_loop(client: Client, make, seconds: float, threads: int) -> tuple[float, int]:
    """Requests back to back from `threads` threads: (requests per second, non-2xx count)."""
    stop, counts, bad = threading.Event(), [0] * threads, [0] * threads

    def worker(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            status = client.request(*make(rng))
            counts[i] += 1
            bad[i] += not 200 <= status < 300

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / seconds, sum(bad)


def open_loop(client: Client, make, rate: float, seconds: float, threads: int = 8) -> dict:
    """`rate` requests per second on a fixed schedule; latency from each scheduled start."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    statuses: list[list[int]] = [[] for _ in range(threads)]
    start = time.perf_counter() + 0.2
    interval = threads / rate  # each thread takes every threads-th slot

    def worker(i: int) -> None:
        rng = random.Random(1000 + i)
        n = 0
        while True:
            due = start + (i + n * threads) / rate
            if due - start >= seconds:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            statuses[i].append(client.request(*make(rng)))
            latencies[i].append(time.perf_counter() - due)
            n += 1

    assert interval > 0
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    codes = [s for per in statuses for s in per]
    return {
        "requests": len(codes),
        "non_2xx": sum(not 200 <= s < 300 for s in codes),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


def show(name: str, run: dict) -> None:
    print(
        f"  {name}: {run['requests']} requests, non-2xx {run['non_2xx']}, "
        f"p50 {run['p50_ms']:.2f} ms, p95 {run['p95_ms']:.2f} ms, "
        f"p99 {run['p99_ms']:.2f} ms, max {run['max_ms']:.1f} ms"
    )


def counter(port: int, name: str) -> float:
    """A counter's value from the server's own metrics (0 when absent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """`recsys serve` on 127.0.0.1:`port` with `env`, its output in `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_ready(client: Client, server: subprocess.Popen[bytes], log_path: Path) -> float:
    """Seconds until the server's /readyz answers 200; SystemExit when it stops or takes
    over 300 s."""
    t0 = time.perf_counter()
    while client.request("GET", "/readyz") != 200:
        if server.poll() is not None or time.perf_counter() - t0 > 300:
            raise SystemExit(f"server did not become ready: see {log_path}")
        time.sleep(0.2)
    return time.perf_counter() - t0


TURNS = 10  # alternating turns per server: the machine's speed drifts within seconds


def impression_cost(
    client: Client,
    env: dict[str, str],
    work: Path,
    make,
    seconds: float,
    port: int,
    logged_pid: int,
) -> tuple[list[float], list[float], float]:
    """GET throughput of the running server (impressions logged) and of a second one on the
    same snapshot with the log off, measured in turns (one server loaded at a time, so the
    machine's phases hit both alike): (logged req/s per turn, unlogged per turn, impressions
    the first server wrote meanwhile)."""
    other = free_port()
    off_env = {
        **env,
        "RECSYS_IMPRESSIONS_LOG": "false",
        "RECSYS_API_CACHE_DIR": str(work / "cache-unlogged"),
        "RECSYS_API_POLL_SECONDS": "3600",
    }
    server = start_server(off_env, other, work / "serve-unlogged.log")
    unlogged_client = Client(other)
    try:
        wait_ready(unlogged_client, server, work / "serve-unlogged.log")
        for c in (client, unlogged_client):
            closed_loop(c, make, 2.0, 4)
        written = counter(port, "recsys_impressions_written_total")
        logged_proc, unlogged_proc = psutil.Process(logged_pid), psutil.Process(server.pid)
        logged: list[float] = []
        unlogged: list[float] = []
        cpu = {"logged": [0.0, 0], "unlogged": [0.0, 0]}
        for _ in range(TURNS):
            for name, c, proc, out in (
                ("logged", client, logged_proc, logged),
                ("unlogged", unlogged_client, unlogged_proc, unlogged),
            ):
                before = sum(proc.cpu_times()[:2])
                rps = closed_loop(c, make, seconds / TURNS, 4)[0]
                cpu[name][0] += sum(proc.cpu_times()[:2]) - before
                cpu[name][1] += int(rps * seconds / TURNS)
                out.append(rps)
        time.sleep(6)  # one more flush of the log
        written = counter(port, "recsys_impressions_written_total") - written
        assert counter(other, "recsys_impressions_logged_total") == 0
        for name, (seconds_used, requests) in cpu.items():
            print(f"  server CPU per GET, {name}: {seconds_used / requests * 1e6:.1f} us")
        return logged, unlogged, written
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def swap_counts(port: int) -> tuple[float, float]:
    """(snapshots swapped in, snapshots refused) from the server's own metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()

    def total(prefix: str) -> float:
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))

    return total("recsys_snapshot_swaps_total"), total("recsys_snapshot_swap_failures_total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/bench/ml/data", help="has lake/snapshots")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--work-dir", help="the server's lake and cache (default: beside data)")
    parser.add_argument("--swap-every", type=float, default=5.0, help="seconds between swaps")
    args = parser.parse_args()

    source_lake = Path(args.data_dir).resolve() / "lake" / "snapshots"
    if not (source_lake / "LATEST").exists():
        raise SystemExit(
            f"no published snapshot under {source_lake}: run `make bench-ml` first "
            "(or `recsys run --scale full` with RECSYS_DATA_DIR pointing there)"
        )
    source = source_lake / (source_lake / "LATEST").read_text().strip()
    work = Path(args.work_dir or Path(args.data_dir).resolve().parent / "api").resolve()
    shutil.rmtree(work, ignore_errors=True)
    swaps = int(args.seconds * 3 / args.swap_every) + 2
    print(f"making {swaps} distinct copies of the snapshot to publish (not timed)")
    publisher = Publisher(source, work / "lake", swaps)
    publisher.publish()

    with connect_duckdb(source / "snapshot.duckdb", read_only=True) as con:
        rows = con.execute("select distinct visitor_id from recommendations").fetchall()
        known = [r[0] for r in rows]
        sessions = [
            r[0]
            for r in con.execute(
                "select item_id from similar_items group by item_id having count(*) >= 50"
            ).fetchall()
        ]
    print(
        f"snapshot {source.name}: {len(known):,} visitors with lists, "
        f"{len(sessions):,} items with 50 similar items"
    )

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AWS_"))},
        "RECSYS_DATA_DIR": str(work),
        "RECSYS_API_POLL_SECONDS": "0.5",
    }
    server = start_server(env, port, work / "serve.log")
    proc = psutil.Process(server.pid)
    peak = {"rss": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                peak["rss"] = max(peak["rss"], rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    client = Client(port)
    try:
        ready_s = wait_ready(client, server, work / "serve.log")
        print(f"server ready in {ready_s:.1f} s")

        def healthz(rng: random.Random) -> tuple[str, str]:
            return "GET", "/healthz"

        def get_recs(rng: random.Random) -> tuple[str, str]:
            return "GET", f"/v1/recommendations/{rng.choice(known)}?k=10"

        def post_session(rng: random.Random) -> tuple[str, str, bytes]:
            body = {"session_item_ids": rng.sample(sessions, 2), "k": 10}  # 2 x 50 candidates
            return "POST", "/v1/recommendations", json.dumps(body).encode()

        for make in (healthz, get_recs):  # warm-up: connections, caches, code paths
            closed_loop(client, make, 2.0, 4)
        # in alternating turns, each GET turn against the /healthz turn right before it: one
        # 5 s run of each, back to back, gave ratios of 0.56-1.05 on the same code, as the
        # machine's speed drifted between the two (see impression_cost)
        health_turns: list[float] = []
        recs_turns: list[float] = []
        bad_h = bad_r = 0
        for _ in range(TURNS):
            rps, bad = closed_loop(client, healthz, args.seconds / 2 / TURNS, 4)
            health_turns.append(rps)
            bad_h += bad
            rps, bad = closed_loop(client, get_recs, args.seconds / 2 / TURNS, 4)
            recs_turns.append(rps)
            bad_r += bad
        ratio = float(np.median(np.asarray(recs_turns) / np.asarray(health_turns)))
        print(
            f"\nthroughput, 4 keep-alive connections back to back, alternating {TURNS} x "
            f"{args.seconds / 2 / TURNS:g} s each:"
        )
        print(
            f"  GET /healthz                  {' '.join(f'{r:6.0f}' for r in health_turns)} "
            f"req/s (non-2xx {bad_h})"
        )
        print(
            f"  GET /v1/recommendations/{{id}} {' '.join(f'{r:6.0f}' for r in recs_turns)} "
            f"req/s (non-2xx {bad_r})"
        )
        print(
            f"  recs / healthz: median of the pairs' ratios {ratio:.3f}, of the totals "
            f"{sum(recs_turns) / sum(health_turns):.3f}"
        )

        health_run = open_loop(client, healthz, 200, args.seconds)
        get_run = open_loop(client, get_recs, 200, args.seconds)
        post_run = open_loop(client, post_session, 100, args.seconds)
        print(f"\nfixed rate, {args.seconds:g} s each, latency from the scheduled start:")
        show("GET  /healthz                 @200/s", health_run)
        show("GET  /v1/recommendations/{id} @200/s", get_run)
        show("POST /v1/recommendations    @100/s", post_run)

        # the same traffic while new snapshots keep arriving: nothing may fail
        published = 0
        stop_swaps = threading.Event()

        def swapper() -> None:
            nonlocal published
            while not stop_swaps.wait(args.swap_every):
                publisher.publish()
                published += 1

        before = swap_counts(port)
        swap_thread = threading.Thread(target=swapper)
        swap_thread.start()
        swap_get = open_loop(client, get_recs, 200, args.seconds * 2)
        swap_post = open_loop(client, post_session, 100, args.seconds)
        stop_swaps.set()
        swap_thread.join()
        after = swap_counts(port)
        swapped, refused = after[0] - before[0], after[1] - before[1]
        print(
            f"\nthe same, with a new snapshot published every {args.swap_every:g} s "
            f"({published} published, {swapped:.0f} swapped in, {refused:.0f} refused; each "
            "is downloaded, verified and loaded while serving):"
        )
        show("GET  /v1/recommendations/{id} @200/s", swap_get)
        show("POST /v1/recommendations    @100/s", swap_post)
        sampling.set()  # the second server below is not this one's memory

        logged_rps, unlogged_rps, written = impression_cost(
            client, env, work, get_recs, args.seconds, port, server.pid
        )
        # each turn against the other server's turn right after it: the machine's speed
        # drifts by tens of percent within a minute, a pair sees the same phase
        cost = 1 - float(np.median(np.asarray(logged_rps) / np.asarray(unlogged_rps)))
        print(
            f"\nimpression logging, GET /v1/recommendations/{{id}} back to back, the same server "
            f"with and without the log (RECSYS_IMPRESSIONS_LOG=false), alternating "
            f"{len(logged_rps)} x {args.seconds / TURNS:g} s:\n"
            f"  logged   {' '.join(f'{r:6.0f}' for r in logged_rps)} req/s "
            f"({written:,.0f} impressions written to the lake)\n"
            f"  unlogged {' '.join(f'{r:6.0f}' for r in unlogged_rps)} req/s\n"
            f"  cost of the log (median of the pairs' ratios): {cost * 100:.1f}%"
        )
    finally:
        sampling.set()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    rss_gb = peak["rss"] / 1e9
    # the loads as the server logged them (api.store): the first at start-up, then the swaps'
    loads = [float(m) for m in LOADED.findall((work / "serve.log").read_text())]
    if not loads:
        raise SystemExit(f"no snapshot load in {work / 'serve.log'}")
    print(
        f"\nsnapshot loads (download, verify, load, warm): at start-up {loads[0]:.2f} s"
        + (
            f"; {len(loads) - 1} swaps, median {float(np.median(loads[1:])):.2f} s, "
            f"max {max(loads[1:]):.2f} s (at a lower priority than requests)"
            if len(loads) > 1
            else ""
        )
        + f"; ready {ready_s:.2f} s after the process started (its imports included)"
    )
    get_vs_health = get_run["p99_ms"] / health_run["p99_ms"]
    swap_vs_steady = max(
        swap_get["p99_ms"] / get_run["p99_ms"], swap_post["p99_ms"] / post_run["p99_ms"]
    )
    checks = [
        ("GET recs / healthz throughput", ratio, TARGETS["ratio"], ratio >= TARGETS["ratio"]),
        (
            "GET p99 / healthz p99 @200/s",
            get_vs_health,
            TARGETS["get_p99_vs_healthz"],
            get_vs_health <= TARGETS["get_p99_vs_healthz"],
        ),
        (
            "POST recs p99 @100/s (ms)",
            post_run["p99_ms"],
            TARGETS["post_p99_ms"],
            post_run["p99_ms"] <= TARGETS["post_p99_ms"],
        ),
        ("server peak RSS (GB)", rss_gb, TARGETS["rss_gb"], rss_gb <= TARGETS["rss_gb"]),
        (
            "snapshot load at start-up (s)",
            loads[0],
            TARGETS["load_s"],
            loads[0] <= TARGETS["load_s"],
        ),
        (
            "swap p99 / steady p99 (worst)",
            swap_vs_steady,
            TARGETS["swap_p99_vs_steady"],
            swap_vs_steady <= TARGETS["swap_p99_vs_steady"],
        ),
        (
            "impression log cost of GET (%)",
            cost * 100,
            TARGETS["log_cost_pct"],
            cost * 100 <= TARGETS["log_cost_pct"],
        ),
        (
            "non-2xx during swaps",
            swap_get["non_2xx"] + swap_post["non_2xx"],
            0,
            swap_get["non_2xx"] + swap_post["non_2xx"] == 0 and swapped > 0,
        ),
    ]
    print()
    for label, value, target, ok in checks:
        print(f"{label:<32} {value:>9.3f}  (target {target:g}): {'ok' if ok else 'OVER TARGET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
