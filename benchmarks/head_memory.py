"""Head memory per concurrent trial: what a trial keeps on the head node, where its Tune trial
actor, Ray Train's controller and Ray Data's split coordinator run (the trial workers run on GPU
nodes). Samples the resident memory (USS: pages only that process holds) of every Ray process on
a local cluster every second during a sweep of C concurrent trials, by process title, and reports
each kind's peak per process. ``resources.HEAD_MB_PER_TRIAL`` comes from these figures.

    python benchmarks/head_memory.py [--trials 2] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

from _setup import staged_sample

from tinyray.cluster import repoint_stale_cluster_file
from tinyray.data import storage
from tinyray.data.sample import SampleSpec
from tinyray.sweep import run_sweep
from tinyray.sweepfile import SweepConfig

# Per-trial processes on the head, by the title Ray gives them (setproctitle "ray::Class.method").
PER_TRIAL = {"trial actor": ("ImplicitFunc",), "train controller": ("TrainController",),
             "data coordinator": ("SplitCoordinator",)}
WORKER = ("RayTrainWorker",)


def kind_of(title: str) -> str | None:
    for kind, names in {**PER_TRIAL, "train worker": WORKER}.items():
        if any(n in title for n in names):
            return kind
    return None


def sample(stop: threading.Event, peaks: dict, seen: dict) -> None:
    import psutil

    while not stop.is_set():
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                title = " ".join(p.info["cmdline"] or [])
                kind = kind_of(title)
                if kind:
                    uss = p.memory_full_info().uss / 2**20
                    peaks[p.info["pid"]] = max(peaks.get(p.info["pid"], 0.0), uss)
                    seen[p.info["pid"]] = kind
            except (psutil.Error, OSError):
                continue
        stop.wait(1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp, storage.EmbeddedS3() as s3:
        uri = "s3://tinyray/head-bench"
        staged_sample(tmp, s3.options, uri, SampleSpec(classes=10, train_per_class=24, val_per_class=6),
                      rows_per_shard=60)
        ray.init(address="local", num_cpus=os.cpu_count(), resources={"tinyray_driver": args.trials},
                 runtime_env={"env_vars": {**s3.public_env, "TF_USE_LEGACY_KERAS": "1"}}, log_to_driver=False)
        repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)
        peaks, seen, stop = {}, {}, threading.Event()
        watcher = threading.Thread(target=sample, args=(stop, peaks, seen), daemon=True)
        watcher.start()
        try:
            cfg = SweepConfig(name="head-mem", storage="s3://tinyray/head-exp", max_concurrent_trials=args.trials,
                              train={"model": "tinycnn", "epochs": args.epochs, "batch_size": 16,
                                     "cpus_per_worker": 0.5},
                              grid={"lr": [1e-3 * (i + 1) for i in range(args.trials)]})
            t0 = time.perf_counter()
            run_sweep(cfg, uri, s3.options)
            wall = time.perf_counter() - t0
        finally:
            stop.set()
            watcher.join()
            ray.shutdown()
    by_kind: dict[str, list[float]] = {}
    for pid, kind in seen.items():
        by_kind.setdefault(kind, []).append(round(peaks[pid], 1))
    per_trial = {k: max(v) for k, v in by_kind.items() if k in PER_TRIAL}
    print(json.dumps({"trials": args.trials, "wall_seconds": round(wall, 1),
                      "peak_uss_mb_per_process": by_kind,
                      "head_mb_per_trial": round(sum(per_trial.values()), 1),
                      "note": "USS peaks; the train workers run on GPU nodes on a real cluster"}, indent=1))


if __name__ == "__main__":
    main()
