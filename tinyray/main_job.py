"""The main job: run a sweep on a Ray cluster, then write its comparison report.

    ray job submit --working-dir . -- python jobs/train_all.py \\
        --config sweeps/grid.yaml --data s3://BUCKET/tiny-imagenet --storage s3://BUCKET/experiments
    python jobs/train_all.py        # the embedded default, on a laptop

The embedded default (no ``--data``) starts the embedded object store, writes and stages the
sample dataset, and runs the shipped smoke sweep on it: the real code path with small numbers.
``--config`` takes a path, an s3:// URI or the name of a shipped sweep (``grid``, ``seed``,
``smoke``); without it and with ``--data``, the seed's six models at TrainConfig's defaults.
"""
from __future__ import annotations

import tempfile

from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.models import SEED_MODELS
from tinyray.folders import SWEEP_META
from tinyray.sweepfile import SweepConfig, load_sweep

EMBEDDED_SWEEP = "smoke"  # the shipped sweep file the embedded default runs
EMBEDDED_BUCKET, EMBEDDED_DATA = "tinyray", "s3://tinyray/sample"
SAMPLE_FOR_SMOKE = {"classes": 10, "train_per_class": 24, "val_per_class": 6}


def resolve_sweep(config: str | None, overrides: dict) -> tuple[SweepConfig, bool]:
    """(the sweep to run, whether it is the embedded default) from the job's flags."""
    embedded = overrides.get("data") is None
    if config is None and embedded:
        config = EMBEDDED_SWEEP
    if config is None:
        overrides = {"models": list(SEED_MODELS), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = load_sweep(config, overrides)
    return cfg, embedded and "data" not in cfg.train


def experiment_exists(uri: str, opts: StorageOptions) -> bool:
    try:
        storage.read_bytes(storage.join(uri, SWEEP_META), opts)
        return True
    except FileNotFoundError:
        return False


def track_sweep(cfg: SweepConfig, opts: StorageOptions) -> None:
    """The sweep's parent run in MLflow: the report's files, and every trial's eval.json."""
    from tinyray.folders import TRAIN_RUNS
    from tinyray.tracking import log_sweep_parent

    exp = cfg.experiment_uri
    files = {}
    for name in ("report.md", "report.html", "results.csv", "results.json"):
        try:
            files[name] = storage.read_bytes(storage.join(exp, name), opts)
        except FileNotFoundError:
            pass
    runs = storage.join(exp, TRAIN_RUNS)
    for path in storage.list_files(runs, opts):
        if path.endswith("/eval.json") and path.count("/") == 1:  # <run name>/eval.json
            files[f"eval/{path.split('/')[0]}.json"] = storage.read_bytes(storage.join(runs, path), opts)
    page = log_sweep_parent(cfg.mlflow, cfg.name, cfg.to_dict(), files)
    print(f"mlflow: experiment {cfg.name!r} at {page} (one run per trial, the report in the sweep's run)",
          flush=True)


def plan_main_job(config: str | None, overrides: dict, resume: bool = False, address: str | None = None,
                  cluster_config_path: str | None = None) -> int:
    """``--plan``: print what the sweep would run and whether each trial fits, without starting
    Ray or training. The fit is checked against ``--cluster-config``, else against a running
    cluster that ``--address`` (or $RAY_ADDRESS) names, which is only connected to. Returns the
    exit code: 1 when anything would stop the sweep, each problem one line."""
    import os
    import sys

    from tinyray.cluster import load_cluster_config
    from tinyray.data.stage import load_manifest
    from tinyray.sweep import sweep_plan

    cfg, embedded_default = resolve_sweep(config, overrides)
    cluster_config = load_cluster_config(cluster_config_path)
    live: list[dict] = []
    against = "nothing: give --cluster-config, or --address of a running cluster"
    if cluster_config:
        against = cluster_config_path
    elif address or os.environ.get("RAY_ADDRESS"):
        from tinyray.cluster import cluster_nodes, running_autoscaler_config
        import ray

        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
        live, cluster_config = cluster_nodes(), running_autoscaler_config()
        against = f"the running cluster ({len(live)} live node(s)" + (
            ", and what its autoscaler can add)" if cluster_config else ")")
    if embedded_default:
        data, manifest, opts = EMBEDDED_DATA, None, None
    else:
        data = cfg.train["data"]
        opts = StorageOptions.from_env(cfg.train.get("endpoint_url")).for_bucket(data)
        manifest = load_manifest(data, opts)
    exists = opts is not None and experiment_exists(cfg.experiment_uri, opts)
    lines, problems = sweep_plan(cfg, data, manifest, live, cluster_config, against, exists, resume)
    print("\n".join(lines), flush=True)
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): the sweep would not run as planned", file=sys.stderr)
    return 1 if problems else 0


def run_main_job(config: str | None, overrides: dict, resume: bool = False, address: str | None = None,
              cluster_config_path: str | None = None, verbose: bool = False) -> str:
    """Run (or resume) the sweep and write its report; return the report's URI."""
    from tinyray.cluster import ensure_ray, load_cluster_config
    from tinyray.data.sample import SampleSpec, write_sample
    from tinyray.data.stage import StageConfig, stage_dataset
    from tinyray.data.storage import EmbeddedS3
    from tinyray.folders import load_experiment
    from tinyray.report import write_report
    from tinyray.sweep import run_sweep

    cfg, embedded_default = resolve_sweep(config, overrides)
    cluster_config = load_cluster_config(cluster_config_path)
    if cfg.mlflow:
        from tinyray.tracking import check_tracking

        check_tracking(cfg.mlflow)  # before a store, a dataset or a cluster is started
    embedded = None
    try:
        if embedded_default:
            embedded = EmbeddedS3(bucket=EMBEDDED_BUCKET).start()
            opts, data = embedded.options, EMBEDDED_DATA
            print(f"no --data: embedded default. Object store at {embedded.endpoint_url}; "
                  f"staging the sample dataset ({SAMPLE_FOR_SMOKE['classes']} classes)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                top = write_sample(tmp, SampleSpec(**SAMPLE_FOR_SMOKE))
                stage_dataset(StageConfig(top, data, rows_per_shard=64, progress=False), opts)
        else:
            data = cfg.train["data"]
            # the data bucket's region travels to the workers when none is set (storage.bucket_region)
            opts = StorageOptions.from_env(cfg.train.get("endpoint_url")).for_bucket(data)
        exp = cfg.experiment_uri
        if experiment_exists(exp, opts) and not resume:
            raise TinyrayError(f"experiment {exp} exists: pass --resume to continue it, or --name for a new one")
        ensure_ray(opts, address, driver_slots=True, verbose=verbose)
        source = {"config": config, "embedded_default": embedded_default}
        run_sweep(cfg, data, opts, resume=resume, cluster_config=cluster_config, source=source, verbose=verbose)
        experiment = load_experiment(exp, opts)
        report = write_report(exp, opts, experiment)
        print(f"report: {report} (and report.html, results.csv, results.json beside it)", flush=True)
        if cfg.mlflow:
            track_sweep(cfg, opts)
        print(f"dashboards: tensorboard --logdir {exp}", flush=True)
        trials = experiment[1]
        if trials and all(t.status == "failed" for t in trials):
            raise TinyrayError(f"every trial failed (see {report}); the first: {trials[0].error}")
        return report
    finally:
        if embedded is not None:
            embedded.stop()
