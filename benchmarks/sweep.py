"""Sweep benchmark: the same grid under fifo and under ASHA — trial-epochs run, wall time, and
whether both pick the same best variant.

The grid is sweeps/grid.yaml's optimizers × learning rates × epochs and ASHA settings, on the
generated sample data; on this 2-CPU machine the model axis defaults to ``tinycnn`` (the six seed
models × 12 variants × 2 schedulers would take hours on CPU). Prints one JSON object.

    python benchmarks/sweep.py [--models tinycnn] [--epochs 20]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from _setup import staged_sample

from tinyray.data import storage
from tinyray.data.sample import SampleSpec
from tinyray.report import best_per_model, load_experiment
from tinyray.sweep import load_sweep, run_sweep
from tinyray.cluster import repoint_stale_cluster_file

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tinycnn")
    parser.add_argument("--epochs", type=int, help="default: grid.yaml's")
    args = parser.parse_args(argv)

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = {}
    with tempfile.TemporaryDirectory() as tmp, storage.EmbeddedS3() as s3:
        uri = "s3://tinyray/sweep-bench"
        staged_sample(tmp, s3.options, uri, SampleSpec(classes=10, train_per_class=40, val_per_class=10),
                      rows_per_shard=100)
        ray.init(address="local", num_cpus=os.cpu_count(), resources={"tinyray_driver": os.cpu_count()},
                 runtime_env={"env_vars": {**s3.public_env, "TF_USE_LEGACY_KERAS": "1"}}, log_to_driver=False)
        repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)
        try:
            for scheduler in ("fifo", "asha"):
                cfg = load_sweep("grid", {
                    "models": args.models.split(","), "scheduler": scheduler, "epochs": args.epochs,
                    "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 16, "workers": 1,
                    "storage": os.path.join(tmp, "exp"), "name": f"bench-{scheduler}"})
                t0 = time.perf_counter()
                exp = run_sweep(cfg, uri, s3.options)
                wall = time.perf_counter() - t0
                _, trials = load_experiment(exp, s3.options)
                winner = max(best_per_model(trials).values(), key=lambda t: t.best["val_accuracy"])
                out[scheduler] = {
                    "trials": len(trials), "trial_epochs": sum(len(t.history) for t in trials),
                    "wall_seconds": round(wall, 1),
                    "best": {"model": winner.model, "optimizer": winner.optimizer, "lr": winner.lr,
                             "val_accuracy": round(winner.best["val_accuracy"], 4)},
                    "epochs": cfg.train["epochs"], "grace_period": cfg.scheduler.grace_period,
                    "reduction_factor": cfg.scheduler.reduction_factor,
                }
        finally:
            ray.shutdown()
    fifo, asha = out["fifo"], out["asha"]
    same = {k: fifo["best"][k] for k in ("model", "optimizer", "lr")} == \
           {k: asha["best"][k] for k in ("model", "optimizer", "lr")}
    print(json.dumps({**out, "trial_epochs_fifo_over_asha": round(fifo["trial_epochs"] / asha["trial_epochs"], 2),
                      "wall_fifo_over_asha": round(fifo["wall_seconds"] / asha["wall_seconds"], 2),
                      "same_best_variant": same, "cpus": os.cpu_count(),
                      "target": {"trial_epochs_fifo_over_asha": ">= 3", "same_best_variant": True}}, indent=1))


if __name__ == "__main__":
    main()
