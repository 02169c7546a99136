"""Warehouse benchmark: `full` scale generate, ingest and dbt build, timed, with peak memory.

Each stage runs as its own process (the `recsys` command, as a user runs it); its peak
resident memory is the largest sum of RSS over the process and its children, sampled every
0.1 s. Targets on 2 cores / 24 GB: generate <= 120 s, ingest + build <= 120 s, peak <= 6 GB.

    make bench-warehouse            # or: python benchmarks/bench_warehouse.py --scale small
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measure import run_measured

TARGETS = {"generate": 120.0, "ingest + build": 120.0}
PEAK_TARGET_GB = 6.0


def run_stage(name: str, args: list[str], env: dict[str, str], work: Path) -> tuple[float, float]:
    """Run `recsys <args>`; return (seconds, peak RSS in GB)."""
    log = work / f"{name}.log"
    seconds, peak_gb, code = run_measured([sys.executable, "-m", "recsys.cli", *args], env, log)
    output = log.read_text()
    if code != 0:
        print(output[-5000:])
        raise SystemExit(f"{name} failed with exit code {code}")
    tail = [line for line in output.splitlines() if line.strip()][-4:]
    for line in tail:
        print(f"    {line.strip()[:150]}")
    return seconds, peak_gb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", help="where to put the data (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-warehouse-"))
    work.mkdir(parents=True, exist_ok=True)
    raw, data = work / "raw", work / "data"
    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "RECSYS_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    env.pop("RECSYS_LAKE_URI", None)
    print(f"benchmark at scale {args.scale} in {work} ({os.cpu_count()} cores)")
    results: dict[str, tuple[float, float]] = {}
    stages = [
        (
            "generate",
            ["generate", "--scale", args.scale, "--seed", str(args.seed), "--out", str(raw)],
        ),
        ("ingest", ["ingest", "--raw-dir", str(raw)]),
        ("build", ["build"]),
    ]
    for name, stage_args in stages:
        print(f"== {name}")
        results[name] = run_stage(name, stage_args, env, work)
        print(f"   {results[name][0]:.1f} s, peak RSS {results[name][1]:.2f} GB")

    ingest_build = results["ingest"][0] + results["build"][0]
    peak = max(r[1] for r in results.values())
    print("\nstage               seconds   peak GB")
    for name, (seconds, gb) in results.items():
        print(f"{name:<18} {seconds:>8.1f} {gb:>9.2f}")
    print(f"{'ingest + build':<18} {ingest_build:>8.1f}")
    if args.scale == "full":
        checks = [
            ("generate", results["generate"][0], TARGETS["generate"], "s"),
            ("ingest + build", ingest_build, TARGETS["ingest + build"], "s"),
            ("peak memory", peak, PEAK_TARGET_GB, "GB"),
        ]
        print()
        for label, value, target, unit in checks:
            verdict = "ok" if value <= target else "OVER TARGET"
            print(f"{label:<18} {value:>8.1f} {unit} (target <= {target:g} {unit}): {verdict}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
