"""The sweep: Ray Tune runs every (model, optimizer, learning rate) of a sweep config as a trial.

Each trial is a function trainable that builds the TensorflowTrainer of ``tinyray.train`` and
passes its per-epoch metrics and checkpoints up to Tune with ``TuneReportCallback`` (the Train
V2 pattern; ``Tuner(trainer)`` is deprecated). Trial drivers take no CPU: they reserve a custom
``tinyray_driver`` resource where the cluster offers one (the head / CPU nodes in cluster/),
otherwise a token of memory, so that drivers can never starve their own Train workers (Tune's
default of 1 CPU per trial deadlocks a small cluster).

Sweep configs are YAML (sweeps/*.yaml); see ``SweepConfig`` for the fields.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from dataclasses import dataclass, field

from tinyray.config import OPTIMIZERS, TrainConfig, from_dict
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError

DRIVER_RESOURCE = "tinyray_driver"
SCHEDULERS = ("fifo", "asha")
METRIC = "val_accuracy"


@dataclass(frozen=True)
class SweepConfig:
    """A grid of trials. Every field can come from YAML; flags override the file."""

    models: list = field(default_factory=lambda: ["model1", "model2", "model3", "model4", "model5", "model6"])
    optimizers: list = field(default_factory=lambda: ["adam"])
    learning_rates: list = field(default_factory=lambda: [1e-4])
    epochs: int = 10
    batch_size: int = 64  # per worker
    workers: int = 1  # Train workers per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    scheduler: str = "fifo"  # fifo | asha (early-stops weak trials on val_accuracy)
    grace_period: int = 2  # asha: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # asha: keep the top 1/reduction_factor at each rung
    max_concurrent_trials: object = "auto"  # "auto": as many as the cluster's resources hold
    data: str | None = None  # staged dataset URI (the job's --data wins)
    storage: str = "~/tinyray/experiments"  # where experiment folders live: local or s3://
    name: str = "tinyray-sweep"  # experiment folder name
    seed: int = 0
    precision: str = "float32"
    xla: bool = False
    cache: str = "memory"
    weights: str = "none"  # model5/model6 base weights
    freeze_base: bool = False
    max_failures: int = 1  # worker-group restarts inside a trial
    endpoint_url: str | None = None

    def __post_init__(self):
        from tinyray.models import check_model_names

        for name in ("models", "optimizers", "learning_rates"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value:
                raise TinyrayError(f"sweep field {name} must be a non-empty list, got {value!r}")
        check_model_names(self.models)
        bad = [o for o in self.optimizers if o not in OPTIMIZERS]
        if bad:
            raise TinyrayError(f"unknown optimizer(s) {', '.join(map(str, bad))}; valid: {', '.join(OPTIMIZERS)}")
        for lr in self.learning_rates:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
                raise TinyrayError(f"learning rates must be numbers > 0, got {lr!r}")
        if self.scheduler not in SCHEDULERS:
            raise TinyrayError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.scheduler == "asha" and not (1 <= self.grace_period <= self.epochs):
            raise TinyrayError(f"grace_period must be between 1 and epochs ({self.epochs}), got {self.grace_period}")
        if not (isinstance(self.reduction_factor, int) and self.reduction_factor >= 2):
            raise TinyrayError(f"reduction_factor must be an integer of at least 2, got {self.reduction_factor!r}")
        mct = self.max_concurrent_trials
        if mct != "auto" and not (isinstance(mct, int) and not isinstance(mct, bool) and mct >= 1):
            raise TinyrayError(f"max_concurrent_trials must be 'auto' or an integer >= 1, got {mct!r}")
        # Every trial's TrainConfig is validated up front too (epochs, batch, workers, ...).
        for trial in self.trials()[:1]:
            self.train_config(trial, data=self.data or "unset")

    def trials(self) -> list[dict]:
        """The grid, in a stable order: model × optimizer × learning rate."""
        return [{"model": m, "optimizer": o, "lr": float(lr)}
                for m, o, lr in itertools.product(self.models, self.optimizers, self.learning_rates)]

    def train_config(self, trial: dict, data: str, storage_uri: str | None = None) -> TrainConfig:
        """The TrainConfig of one trial (its run folder lives in the experiment's train-runs/)."""
        return TrainConfig(
            model=trial["model"], optimizer=trial["optimizer"], lr=trial["lr"], data=data,
            workers=self.workers, cpus_per_worker=self.cpus_per_worker, gpus_per_worker=self.gpus_per_worker,
            epochs=self.epochs, batch_size=self.batch_size, precision=self.precision, xla=self.xla,
            seed=self.seed, weights=self.weights, freeze_base=self.freeze_base, cache=self.cache,
            storage=storage_uri or self.storage, max_failures=self.max_failures, endpoint_url=self.endpoint_url,
        )

    @property
    def experiment_uri(self) -> str:
        return storage.join(self.storage, self.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_sweep(path: str | None, overrides: dict | None = None) -> SweepConfig:
    """A sweep config from YAML (or the defaults), with non-None ``overrides`` applied on top."""
    import yaml

    data = {}
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise TinyrayError(f"sweep config {path} does not exist") from None
        except yaml.YAMLError as e:
            raise TinyrayError(f"sweep config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise TinyrayError(f"sweep config {path} must be a mapping of fields")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return from_dict(SweepConfig, data, "sweep")
    except TypeError as e:
        raise TinyrayError(f"sweep config {path}: {e}") from None


# ------------------------------------------------------------------------ resources (pure)


def trial_resources(cluster: dict) -> dict:
    """What one trial driver reserves: no CPU, and a slot that only drivers ask for."""
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": 0, "memory": 1}


def cluster_capacity(live_nodes: list[dict], cluster_config: dict | None) -> tuple[list[dict], list[dict]]:
    """(nodes, nodes an autoscaler may add) for sizing a sweep.

    With a cluster launcher config (cluster/aws-gpu.yaml), capacity is what its node types can
    reach at ``max_workers``: the live worker nodes are part of that maximum, not in addition to
    it. Without one, only the live nodes count.
    """
    if not cluster_config:
        return list(live_nodes), []
    types = cluster_config.get("available_node_types", {})
    head_type = cluster_config.get("head_node_type")
    head = [dict(types[head_type].get("resources", {}))] if head_type in types else []
    extra = []
    for name, spec in types.items():
        if name != head_type:
            extra += [dict(spec.get("resources", {}))] * int(spec.get("max_workers", 0))
    return head, extra


def load_cluster_config(path: str | None) -> dict | None:
    import yaml

    if not path:
        return None
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise TinyrayError(f"cluster config {path} does not exist") from None
    if not isinstance(cfg, dict) or "available_node_types" not in cfg:
        raise TinyrayError(f"{path} is not a Ray cluster launcher config (no available_node_types)")
    return cfg


def auto_concurrency(cfg: SweepConfig, nodes: list[dict], max_nodes: list[dict] | None = None) -> int:
    """How many trials the cluster can run at once (with what an autoscaler may still add):
    whole trials' worth of worker bundles that fit, node by node, with ``DATA_CPUS`` per trial
    left free for Ray Data's reads."""
    from tinyray.train import DATA_CPUS

    def bundles(node):
        counts = []
        for key, per in (("CPU", cfg.cpus_per_worker), ("GPU", cfg.gpus_per_worker)):
            if per:
                counts.append(math.floor(node.get(key, 0) / per + 1e-9))
        return min(counts) if counts else 0

    everything = list(nodes) + list(max_nodes or [])
    trials = sum(bundles(n) for n in everything) // cfg.workers
    total_cpu = sum(n.get("CPU", 0) for n in everything)
    trials = min(trials, math.floor(total_cpu / (cfg.workers * cfg.cpus_per_worker + DATA_CPUS) + 1e-9))
    drivers = sum(n.get(DRIVER_RESOURCE, 0) for n in nodes)
    if drivers >= 1:
        trials = min(trials, int(drivers))
    return max(1, min(trials, len(cfg.trials())))


# ------------------------------------------------------------------------------ Tune (driver)


def run_trial(config: dict) -> None:
    """Tune's function trainable: one TensorflowTrainer run, metrics passed up every epoch."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from tinyray.data.stage import load_manifest
    from tinyray.train import build_trainer

    sweep = from_dict(SweepConfig, config["sweep"], "sweep")
    cfg = sweep.train_config(config["trial"], data=config["data"], storage_uri=config["train_runs"])
    opts = StorageOptions.from_env(cfg.endpoint_url)
    manifest = load_manifest(cfg.data, opts)
    trainer = build_trainer(cfg, manifest, opts, callbacks=[TuneReportCallback()])
    trainer.fit()


def run_sweep(cfg: SweepConfig, data: str, opts: StorageOptions | None = None, resume: bool = False,
              cluster_config: dict | None = None):
    """Run (or resume) the sweep; return the experiment URI. Ray must be initialised."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tinyray.data.pipeline import steps_per_epoch
    from tinyray.data.stage import load_manifest
    from tinyray.train import check_fits, cluster_nodes

    opts = opts or StorageOptions.from_env(cfg.endpoint_url)
    manifest = load_manifest(data, opts)
    live = cluster_nodes()
    nodes, max_nodes = cluster_capacity(live, cluster_config)
    first = cfg.train_config(cfg.trials()[0], data)
    check_fits(first, nodes, max_nodes)
    steps_per_epoch(manifest["train"]["count"], cfg.batch_size, cfg.workers)  # ≥ 1 batch, or one clear line

    concurrency = (auto_concurrency(cfg, nodes, max_nodes) if cfg.max_concurrent_trials == "auto"
                   else cfg.max_concurrent_trials)
    fs, exp_path = storage.filesystem(cfg.storage, opts)
    exp_uri = cfg.experiment_uri
    train_runs = storage.join(exp_uri, "train-runs")
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs, grace_period=cfg.grace_period,
                               reduction_factor=cfg.reduction_factor)
                 if cfg.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_resources(run_trial, trial_resources(ray.cluster_resources()))
    experiment_dir = f"{exp_path}/{cfg.name}"

    _write_sweep_meta(cfg, data, manifest, live, concurrency, opts)
    if resume and tune.Tuner.can_restore(experiment_dir, storage_filesystem=fs):
        print(f"resuming sweep {exp_uri}: finished trials are kept, unfinished ones continue", flush=True)
        tuner = tune.Tuner.restore(experiment_dir, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"sweep": cfg.to_dict(), "data": data, "train_runs": train_runs,
                         "trial": tune.grid_search(cfg.trials())},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                        max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name=cfg.name, storage_path=exp_path, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    print(f"sweep {cfg.name}: {len(cfg.trials())} trials, {concurrency} at a time, scheduler {cfg.scheduler}",
          flush=True)
    tuner.fit()
    return exp_uri


def _write_sweep_meta(cfg, data, manifest, nodes, concurrency, opts) -> None:
    """sweep.json in the experiment folder: what the report needs to say how to reproduce it."""
    import platform

    import ray

    from tinyray.tfk import tf

    meta = {
        "sweep": cfg.to_dict(),
        "data": data,
        "dataset": {"classes": len(manifest["classes"]), "train": manifest["train"]["count"],
                    "val": manifest["val"]["count"], "skipped": len(manifest["skipped"])},
        "cluster": {"nodes": len(nodes), "resources": [{k: v for k, v in n.items() if not k.startswith("node:")}
                                                         for n in nodes],
                    "max_concurrent_trials": concurrency},
        "versions": {"ray": ray.__version__, "tensorflow": tf.__version__, "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "endpoint": opts.describe(),
    }
    storage.write_bytes(storage.join(cfg.experiment_uri, "sweep.json"), json.dumps(meta, indent=1).encode(), opts)


# ------------------------------------------------------------------------------ the main job

SAMPLE_FOR_SMOKE = {"classes": 10, "train_per_class": 24, "val_per_class": 6}


def experiment_exists(uri: str, opts: StorageOptions) -> bool:
    try:
        storage.read_bytes(storage.join(uri, "sweep.json"), opts)
        return True
    except FileNotFoundError:
        return False


def train_all(config_path: str | None, overrides: dict, data: str | None = None, resume: bool = False,
              address: str | None = None, endpoint_url: str | None = None,
              cluster_config_path: str | None = None) -> str:
    """The main job: run (or resume) a sweep and write its report; return the report's URI.

    With no ``data`` this is the embedded default: it starts the embedded object store, writes
    and stages the sample dataset, and runs the sweep on it — the real code path, small numbers.
    """
    import tempfile

    from tinyray.data.sample import SampleSpec, write_sample
    from tinyray.data.stage import StageConfig, stage_dataset
    from tinyray.data.storage import EmbeddedS3
    from tinyray.report import load_experiment, write_report
    from tinyray.train import ensure_ray

    cfg = load_sweep(config_path, overrides)
    cluster_config = load_cluster_config(cluster_config_path)
    embedded = None
    try:
        if data is None and cfg.data is None:
            embedded = EmbeddedS3(bucket="tinyray").start()
            opts = embedded.options
            print(f"no --data: embedded default. Object store at {embedded.endpoint_url}; "
                  f"staging the sample dataset ({SAMPLE_FOR_SMOKE['classes']} classes)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                top = write_sample(tmp, SampleSpec(**SAMPLE_FOR_SMOKE))
                data = "s3://tinyray/sample"
                stage_dataset(StageConfig(top, data, rows_per_shard=64, progress=False), opts)
        else:
            data = data or cfg.data
            opts = StorageOptions.from_env(endpoint_url or cfg.endpoint_url)
        exp = cfg.experiment_uri
        if experiment_exists(exp, opts) and not resume:
            raise TinyrayError(f"experiment {exp} exists: pass --resume to continue it, or --name for a new one")
        ensure_ray(opts, address, driver_slots=True)
        run_sweep(cfg, data, opts, resume=resume, cluster_config=cluster_config)
        experiment = load_experiment(exp, opts)
        report = write_report(exp, opts, experiment)
        print(f"report: {report} (and report.html, results.csv, results.json beside it)", flush=True)
        print(f"dashboards: tensorboard --logdir {exp}", flush=True)
        trials = experiment[1]
        if trials and all(t.status == "failed" for t in trials):
            raise TinyrayError(f"every trial failed (see {report}); the first: {trials[0].error}")
        return report
    finally:
        if embedded is not None:
            embedded.stop()
