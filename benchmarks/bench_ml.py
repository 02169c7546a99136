"""ML benchmark: `recsys run` end to end on `full` scale, with ALS and ranker timings.

Runs the pipeline as a user does (one `recsys run` process), samples the resident memory of the
process tree every 0.1 s, and reads the ALS fit and ranker training seconds from
`models/training.json`. Targets on 2 cores / 24 GB: ALS fit <= 60 s, ranker training (search
included) <= 180 s, `recsys run` <= 8 minutes, peak memory <= 8 GB.

    make bench-ml            # or: python benchmarks/bench_ml.py --scale small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import run_measured

TARGETS = {"als fit": 60.0, "ranker training": 180.0, "recsys run": 480.0}
PEAK_TARGET_GB = 8.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--search-budget", type=float, help="seconds of ranker search (default: recsys run's)"
    )
    parser.add_argument("--work-dir", help="where to put the data (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-ml-"))
    raw, data = work / "raw", work / "data"
    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "RECSYS_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    env.pop("RECSYS_LAKE_URI", None)
    if not (raw / "events.csv").exists():
        print(f"generating {args.scale} data in {raw} (not timed)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "recsys.cli",
                "generate",
                "--scale",
                args.scale,
                "--seed",
                str(args.seed),
                "--out",
                str(raw),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "run",
        "--raw-dir",
        str(raw),
        "--force",
    ]
    if args.search_budget is not None:
        cmd += ["--search-budget", str(args.search_budget)]
    print("running", " ".join(cmd[2:]))
    total, peak_gb, code = run_measured(cmd, env, work / "run.log")
    output = (work / "run.log").read_text()
    if code != 0:
        print(output[-5000:])
        raise SystemExit(f"recsys run failed with exit code {code}")
    for line in output.splitlines():
        if line.startswith("[") and "] done in" in line:
            print("  " + line)
    training = json.loads((data / "models" / "training.json").read_text())
    metrics = json.loads((data / "reports" / "metrics.json").read_text())
    figures = {
        "als fit": training["als"]["fit_seconds"],
        "ranker training": training["ranker"]["seconds"],
        "recsys run": total,
    }
    print()
    for label, value in figures.items():
        verdict = "ok" if value <= TARGETS[label] else "OVER TARGET"
        print(f"{label:<18} {value:>8.1f} s (target <= {TARGETS[label]:g} s): {verdict}")
    verdict = "ok" if peak_gb <= PEAK_TARGET_GB else "OVER TARGET"
    print(f"{'peak memory':<18} {peak_gb:>8.2f} GB (target <= {PEAK_TARGET_GB:g} GB): {verdict}")
    models = metrics["models"]
    ratio = models["als_catboost"]["ndcg@10"] / max(models["popularity"]["ndcg@10"], 1e-12)
    print(
        f"\nNDCG@10: popularity {models['popularity']['ndcg@10']:.4f}, als "
        f"{models['als']['ndcg@10']:.4f}, als_catboost {models['als_catboost']['ndcg@10']:.4f} "
        f"({ratio:.2f} x popularity) on {metrics['protocol']['n_eval_visitors']:,} visitors"
    )
    print(
        f"conformal: nominal {metrics['conformal']['nominal']:.3f}, empirical "
        f"{metrics['conformal']['empirical_coverage']:.3f}"
    )
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
