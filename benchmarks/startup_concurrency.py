"""Should a local Ray that tinyray starts raise the raylet's worker start-up concurrency?

Runs the main job's embedded default (``python jobs/train_all.py --storage FRESH_FOLDER``) with
Ray's default and with ``RAY_worker_maximum_startup_concurrency`` raised to
resources.STARTUP_CONCURRENCY, alternating which goes first in each repetition. Per arm: the
median wall time and its spread, the console's line count and its raylet lines. Prints one JSON
object; the ratio is raised / default, median of the per-repetition ratios.

    python benchmarks/startup_concurrency.py [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _setup  # noqa: F401  (the repo on sys.path)

from tinyray.resources import STARTUP_CONCURRENCY

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jobs", "train_all.py")
ARMS = {"default": {}, "raised": {"RAY_worker_maximum_startup_concurrency": str(STARTUP_CONCURRENCY)}}


def run(arm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_maximum_startup_concurrency"}
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        # --storage: each run its own experiment folder (the default, ~/tinyray/experiments, is one)
        out = subprocess.run([sys.executable, os.path.abspath(JOB), "--storage", cwd], cwd=cwd, env={**env, **ARMS[arm]},
                             capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - start
    lines = (out.stdout + out.stderr).splitlines()
    return {"arm": arm, "rc": out.returncode, "seconds": round(seconds, 1), "lines": len(lines),
            "raylet_lines": sum("(raylet)" in line for line in lines),
            "startup_warnings": sum("maximum expected startup concurrency" in line for line in lines)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    for rep in range(args.reps):
        order = ("default", "raised") if rep % 2 == 0 else ("raised", "default")
        for arm in order:
            runs.append({"rep": rep, **run(arm)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        times = [r["seconds"] for r in mine]
        summary[arm] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                        "lines": [r["lines"] for r in mine], "raylet_lines": [r["raylet_lines"] for r in mine],
                        "startup_warnings": [r["startup_warnings"] for r in mine], "rc": [r["rc"] for r in mine]}
    ratios = [next(r["seconds"] for r in runs if r["rep"] == rep and r["arm"] == "raised")
              / next(r["seconds"] for r in runs if r["rep"] == rep and r["arm"] == "default") for rep in range(args.reps)]
    print(json.dumps({"startup_concurrency": STARTUP_CONCURRENCY, "cpus": os.cpu_count(), **summary,
                      "ratio_raised_over_default": {"median": round(statistics.median(ratios), 3),
                                                    "min": round(min(ratios), 3), "max": round(max(ratios), 3)},
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
