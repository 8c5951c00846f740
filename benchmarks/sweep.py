"""Sweep benchmark, in one run on one cluster: the same grid under fifo and under ASHA
(trial-epochs, wall time, whether both pick the same best variant), then an optuna search with
ASHA over the same optimizers and lr range (loguniform) with half the grid's trials: does it
reach the grid's best with at most half its trial-epochs?

The grid is sweeps/grid.yaml's optimizers × learning rates × epochs and ASHA settings, on the
generated sample data; on this 2-CPU machine the model axis defaults to ``tinycnn`` (the six seed
models × 12 variants × 2 schedulers would take hours on CPU). Prints one JSON object.

    python benchmarks/sweep.py [--models tinycnn] [--epochs 20] [--optuna-samples 6]
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
from tinyray.folders import load_experiment
from tinyray.report import best_per_model
from tinyray.sweep import run_sweep
from tinyray.sweepfile import SweepConfig, load_sweep
from tinyray.cluster import repoint_stale_cluster_file

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tinycnn")
    parser.add_argument("--epochs", type=int, help="default: grid.yaml's")
    parser.add_argument("--optuna-samples", type=int, help="default: half the grid's trials")
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
            for arm in ("fifo", "asha", "optuna"):
                cfg = load_sweep("grid", {
                    "models": args.models.split(","), "scheduler": "fifo" if arm == "fifo" else "asha",
                    "epochs": args.epochs, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 16,
                    "workers": 1, "storage": os.path.join(tmp, "exp"), "name": f"bench-{arm}"})
                if arm == "optuna":  # the same optimizers, lr drawn over the grid's range
                    grid = cfg.grid
                    d = {**cfg.to_dict(), "grid": {k: v for k, v in grid.items() if k not in ("optimizer", "lr")},
                         "search": "optuna", "num_samples": args.optuna_samples or len(cfg.combinations()) // 2,
                         "space": {"optimizer": {"choice": grid["optimizer"]},
                                   "lr": {"loguniform": [min(grid["lr"]), max(grid["lr"])]}}}
                    if d["grid"]:  # a model axis of one or more models: one model per search here
                        d["train"] = {**d["train"], "model": d["grid"].pop("model")[0]}
                    cfg = SweepConfig.from_dict(d)
                t0 = time.perf_counter()
                exp = run_sweep(cfg, uri, s3.options)
                wall = time.perf_counter() - t0
                _, trials = load_experiment(exp, s3.options)
                winner = max(best_per_model(trials).values(), key=lambda t: t.best["val_accuracy"])
                out[arm] = {
                    "trials": len(trials), "trial_epochs": sum(len(t.history) for t in trials),
                    "wall_seconds": round(wall, 1),
                    "best": {"model": winner.model, "optimizer": winner.optimizer, "lr": winner.lr,
                             "val_accuracy": round(winner.best["val_accuracy"], 4)},
                    "epochs": cfg.train["epochs"], "grace_period": cfg.scheduler.grace_period,
                    "reduction_factor": cfg.scheduler.reduction_factor,
                }
        finally:
            ray.shutdown()
    fifo, asha, opt = out["fifo"], out["asha"], out["optuna"]
    same = {k: fifo["best"][k] for k in ("model", "optimizer", "lr")} == \
           {k: asha["best"][k] for k in ("model", "optimizer", "lr")}
    print(json.dumps({**out, "trial_epochs_fifo_over_asha": round(fifo["trial_epochs"] / asha["trial_epochs"], 2),
                      "wall_fifo_over_asha": round(fifo["wall_seconds"] / asha["wall_seconds"], 2),
                      "same_best_variant": same,
                      "optuna_trial_epochs_over_grid_asha": round(opt["trial_epochs"] / asha["trial_epochs"], 2),
                      "optuna_best_minus_grid_best": round(opt["best"]["val_accuracy"] - asha["best"]["val_accuracy"], 4),
                      "cpus": os.cpu_count(),
                      "target": {"trial_epochs_fifo_over_asha": ">= 3", "wall_fifo_over_asha": ">= 2.5",
                                 "same_best_variant": True, "optuna_trial_epochs_over_grid_asha": "<= 0.5",
                                 "optuna_best_minus_grid_best": ">= 0"}}, indent=1))


if __name__ == "__main__":
    main()
