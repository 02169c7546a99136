"""What the benchmark scripts share: run a command, time it, sample its peak memory."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil


def run_measured(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[float, float, int]:
    """Run `cmd` with its output in `log_path`; return (seconds, peak RSS in GB, exit code).

    The peak is the largest sum of resident memory over the process and its children, sampled
    every 0.1 s (dbt and the ALS threads run in children and threads of the command).
    """
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        parent, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                procs = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    return time.perf_counter() - t0, peak / 1e9, int(proc.returncode)
