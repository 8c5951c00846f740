"""The sweep under Ray Tune: a ``SweepConfig`` (sweepfile) → one Tune trial per TrainConfig.

A trial *is* a ``tinyray train`` run: it calls ``train.train_on_ray`` on base + its axes, so its run folder
(``<experiment>/train-runs/<run name>/``) holds result.json and model/ like any other, and a
failure is the same one line. Tune sees only the axes as parameters (the base travels through
``tune.with_parameters``), so its table, "current best trial" and TensorBoard's HParams tab show
exactly what varies. Trial drivers take no CPU (resources.trial_resources). The classes Tune
pickles with an experiment (``TrialReports``, ``PerModelASHA``, ``ResourceStopper``) live here
under these names, so that ``--resume`` finds them again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from tinyray.config import TrainConfig
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.folders import SWEEP_FILE, SWEEP_META, train_runs, trial_base
from tinyray.sweepfile import METRIC, RESUME_FREE, SchedulerConfig, SweepConfig, resume_conflict, to_yaml


# ------------------------------------------------------------------------------ Tune (driver)


def run_trial(axes: dict, base: dict) -> None:
    """Tune's function trainable: base + this trial's axes, run exactly as ``tinyray train`` runs it."""
    from tinyray.train import train_on_ray

    cfg = TrainConfig.from_dict({**base, **axes})
    train_on_ray(cfg, StorageOptions.from_env(cfg.endpoint_url), callbacks=[__getattr__("TrialReports")()])


def _trial_reports_class():
    from ray.tune.integration.ray_train import TuneReportCallback

    from tinyray.config import PREEMPTED

    class TrialReports(TuneReportCallback):
        """Ray Train's reports, passed on to Tune: the epochs only. A checkpoint saved on a
        preemption notice (worker.PreemptionCheck) is Train's to resume from; it carries no
        val metrics, which Tune's scheduler would refuse."""

        def after_report(self, run_context, metrics, checkpoint):
            if PREEMPTED not in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    TrialReports.__module__, TrialReports.__qualname__ = __name__, "TrialReports"
    return TrialReports


def _per_model_asha_class():
    import pickle

    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    class PerModelASHA(FIFOScheduler):
        """ASHA kept apart per value of one trial parameter (``key``, the model): a trial's rung
        is cut against the trials of its own model only. One ASHA over a grid of six models ranks
        model1's variants (the seed's 22 % val) against the ResNets' and stops them all after two
        epochs; the report's best variant per model would then come from truncated runs."""

        def __init__(self, key: str = "model", **asha):
            super().__init__()
            self._key, self._asha, self._groups = key, asha, {}
            self._metric = self._mode = None

        def set_search_properties(self, metric, mode, **spec) -> bool:
            self._metric, self._mode = metric or self._metric, mode or self._mode
            return all(g.set_search_properties(metric, mode, **spec) for g in self._groups.values())

        def group(self, trial):
            """The ASHA of ``trial``'s model (made at its first trial)."""
            value = json.dumps(trial.config.get(self._key), sort_keys=True, default=str)
            if value not in self._groups:
                self._groups[value] = ASHAScheduler(metric=self._metric, mode=self._mode, **self._asha)
            return self._groups[value]

        def on_trial_add(self, tune_controller, trial):
            self.group(trial).on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            return self.group(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            self.group(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            self.group(trial).on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return f"ASHA per {self._key}: " + "; ".join(
                f"{k} {g.debug_string().splitlines()[0]}" for k, g in self._groups.items())

        def save(self, checkpoint_path: str):
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__dict__, f)

        def restore(self, checkpoint_path: str):
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))

    PerModelASHA.__module__, PerModelASHA.__qualname__ = __name__, "PerModelASHA"
    return PerModelASHA


def make_scheduler(sched: SchedulerConfig, max_t: int):
    """Tune's scheduler for the sweep's ``scheduler:``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sched.type == "fifo":
        return FIFOScheduler()
    asha = {"time_attr": "training_iteration", "max_t": max_t, "grace_period": sched.grace_period,
            "reduction_factor": sched.reduction_factor}
    return __getattr__("PerModelASHA")(key="model", **asha) if sched.per_model else ASHAScheduler(**asha)


def _resource_stopper_class():
    from ray.tune.stopper import Stopper

    from tinyray import cluster

    class ResourceStopper(Stopper):
        """Stops the sweep when this driver's ``cluster.ResourceWatch`` says a trial's workers
        can never be placed. It holds no state, so a restored sweep's copy asks the new watch."""

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return bool(cluster.ACTIVE_WATCH and cluster.ACTIVE_WATCH.poll())

    ResourceStopper.__module__, ResourceStopper.__qualname__ = __name__, "ResourceStopper"
    return ResourceStopper


_LAZY = {"TrialReports": _trial_reports_class, "PerModelASHA": _per_model_asha_class,
         "ResourceStopper": _resource_stopper_class}


def __getattr__(name: str):
    """``TrialReports`` and ``PerModelASHA`` are built on first use (in a trial, or by the sweep),
    so that importing this module (the report does) never imports Ray Tune; as module attributes
    they pickle, as Ray Train's controller and Tune's experiment state need."""
    if name in _LAZY:
        globals()[name] = _LAZY[name]()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_sweep(cfg: SweepConfig, data: str, opts: StorageOptions | None = None, resume: bool = False,
              cluster_config: dict | None = None, source: dict | None = None, verbose: bool = False) -> str:
    """Run (or resume) the sweep; return the experiment URI. Ray must be initialised.
    ``source`` says how the job was started (sweep file, embedded default), for the report."""
    import ray
    from ray import tune

    from tinyray import cluster
    from tinyray.cluster import cluster_nodes, keep_credentials_out_of_tune, running_autoscaler_config
    from tinyray.resources import (auto_concurrency, check_fits, check_shared_storage, cluster_capacity,
                                   head_trial_cap, trial_resources)
    from tinyray.console import status_table
    from tinyray.progress import epoch_lines_callback
    from tinyray.data.pipeline import steps_per_epoch
    from tinyray.data.stage import load_manifest

    opts = opts or StorageOptions.from_env(cfg.train.get("endpoint_url"))
    if cfg.mlflow:
        from tinyray.tracking import check_tracking

        check_tracking(cfg.mlflow)  # an unreachable server is one line, before anything starts
    resumed = check_resume(cfg, data, opts) if resume else None  # before anything is written
    manifest = load_manifest(data, opts)
    exp_uri = cfg.experiment_uri
    trials = cfg.expand(data, train_runs(exp_uri))
    live = cluster_nodes()
    # what the cluster can grow to: --cluster-config, else the running autoscaler's own node types
    autoscaler = running_autoscaler_config() if cluster_config is None else None
    nodes, max_nodes = cluster_capacity(live, cluster_config or autoscaler)
    check_shared_storage(cfg.storage, len(live) > 1 or bool(cluster_config or autoscaler))
    if autoscaler:
        print("cluster: " + capacity_line(live, autoscaler), flush=True)
    for trial in trials:  # every shape fits and has a batch, or one clear line before Tune starts
        check_fits(trial, nodes, max_nodes)
        steps_per_epoch(manifest["train"]["count"], trial.batch_size, trial.workers, trial.replicas_per_worker)

    from tinyray.doctor import preflight

    autoscaling = bool(cluster_config or autoscaler or max_nodes)
    preflight(trials, data, opts.endpoint_url, autoscaling)  # a broken node image stops here, in seconds
    concurrency = (auto_concurrency(trials, nodes, max_nodes, head_trial_cap(live))
                   if cfg.max_concurrent_trials == "auto" else cfg.max_concurrent_trials)
    fs, exp_path = storage.filesystem(cfg.storage, opts, ship=True)
    sched = cfg.scheduler
    scheduler = make_scheduler(sched, max(t.epochs for t in trials))
    base = trial_base(cfg.train, data, exp_uri)
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base),
                                    trial_resources(ray.cluster_resources()))
    experiment_dir = f"{exp_path}/{cfg.name}"

    keep_credentials_out_of_tune()
    restoring = resume and tune.Tuner.can_restore(experiment_dir, storage_filesystem=fs)
    if restoring and resumed:
        # Tune restores its searcher whole, and the limit is the searcher's (search_plan): a
        # resumed sweep runs at the concurrency it started with, so that is what it says and records
        started_at = resumed.get("cluster", {}).get("max_concurrent_trials")
        if isinstance(started_at, int) and started_at != concurrency:
            print(f"resuming at {started_at} trials at a time, as the sweep started (Tune restores its "
                  f"searcher as it was; {concurrency} needs a new --name)", flush=True)
            concurrency = started_at
            # sweep.json keeps the sweep as it runs; its resumes list what was asked
            cfg = dataclasses.replace(cfg, max_concurrent_trials=resumed["sweep"].get("max_concurrent_trials",
                                                                                      started_at))
    write_sweep_meta(cfg, data, manifest, live, concurrency, opts, source or {}, resumed)
    if restoring:
        print(f"resuming sweep {exp_uri}: finished trials are kept, unfinished ones continue", flush=True)
        tuner = tune.Tuner.restore(experiment_dir, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        param_space, search_alg, num_samples = search_plan(cfg, concurrency)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, search_alg=search_alg,
                                        num_samples=num_samples),  # the limit is the searcher's
            run_config=tune.RunConfig(name=cfg.name, storage_path=exp_path, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      stop=__getattr__("ResourceStopper")(),
                                      callbacks=[epoch_lines_callback(base, cfg.axes),
                                                 *tracking_callbacks(cfg, base, manifest)],
                                      # quiet: the callback's lines and tables only (console.py)
                                      verbose=2 if verbose else 0),
        )
    search = f"search {cfg.search}, " if cfg.search != "grid" else ""
    print(f"sweep {cfg.name}: {cfg.planned_trials} trials, {concurrency} at a time, {search}scheduler {sched.type}",
          flush=True)
    if cfg.search == "grid":
        axes = cfg.axes
        done = {t.run_name for t in trials if resume and run_finished(t, opts)}
        print(status_table(axes, [(f"{i + 1}", "done" if t.run_name in done else "planned",
                                   {a: getattr(t, a) for a in axes}, t.epochs if t.run_name in done else 0, t.epochs,
                                   None) for i, t in enumerate(trials)]), flush=True)
    else:
        print("  drawn from: " + ", ".join(f"{axis} {dist} {values}" for axis, spec in cfg.space.items()
                                           for dist, values in spec.items()), flush=True)
    if not verbose:  # Tune's newer console prints its experiment header even when silent
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    watch = cluster.ACTIVE_WATCH = cluster.ResourceWatch(autoscaling=autoscaling)
    try:
        tuner.fit()
    finally:
        cluster.ACTIVE_WATCH = None
    if watch.reason:
        raise TinyrayError(watch.reason)
    return exp_uri


def capacity_line(live: list[dict], autoscaler: dict) -> str:
    """What the autoscaler can add, for the sweep's first lines."""
    types = autoscaler.get("available_node_types", {})
    grow = [f"{spec.get('max_workers', 0)} × {name} ({', '.join(f'{v:g} {k}' for k, v in sorted((spec.get('resources') or {}).items()))})"
            for name, spec in types.items() if name != autoscaler.get("head_node_type") and spec.get("max_workers")]
    return f"{len(live)} live node(s); the autoscaler can add up to " + ("; ".join(grow) or "nothing")


def tracking_callbacks(cfg: SweepConfig, base: dict, manifest: dict) -> list:
    """The MLflow callback for a sweep with ``mlflow:`` (or --mlflow): driver-side, so the
    tracking server's credentials never reach a trial's process."""
    if not cfg.mlflow:
        return []
    from tinyray import tracking
    from tinyray.train import provenance

    return [tracking.TrackingCallback(cfg.mlflow, cfg.name, base, provenance(manifest))]


def search_plan(cfg: SweepConfig, concurrency: int):
    """(param_space, search_alg, num_samples) of Tune for the sweep's ``search:``, the searcher
    holding the concurrency limit itself: Tune applies ``max_concurrent_trials`` only to a searcher
    it builds or wraps, and ignores it (with a warning) for a BasicVariantGenerator passed in, so a
    listed grid or a random search would otherwise start every trial at once.

    grid: every combination, once (a listed grid: each listed trial, once). random: ``num_samples`` independent draws of the space,
    seeded. optuna: Optuna's TPE sampler proposes each trial from the results so far; its first
    third (at most 10) are random draws, so that TPE has something to model on a small budget
    (Optuna's own default, 10 random trials, would be the whole of a 6-trial search)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if cfg.listed:  # exactly the listed trials, as points to evaluate, each axis a flat parameter
        points = cfg.combinations()
        space = {axis: tune.choice(list({json.dumps(p[axis]): p[axis] for p in points}.values())) for axis in cfg.axes}
        return space, BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency), len(points)
    if cfg.search == "grid":
        return ({axis: tune.grid_search(values) for axis, values in cfg.grid.items()},
                BasicVariantGenerator(max_concurrent=concurrency), 1)
    space = {axis: tune_domain(axis, spec) for axis, spec in cfg.space.items()}
    if cfg.search == "random":
        return space, BasicVariantGenerator(random_state=cfg.search_seed, max_concurrent=concurrency), cfg.num_samples
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # quiet: its per-trial INFO lines
    sampler = optuna.samplers.TPESampler(seed=cfg.search_seed, n_startup_trials=min(10, max(2, cfg.num_samples // 3)))
    return space, ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=concurrency), cfg.num_samples


def check_resume(cfg: "SweepConfig", data: str, opts: StorageOptions) -> dict | None:
    """Before a --resume: the sweep and data must be the ones the experiment ran, or one line
    that names the field. Returns the saved sweep.json with the allowed changes it records;
    None when there is none yet (a sweep that died before it wrote one starts afresh)."""
    uri = storage.join(cfg.experiment_uri, SWEEP_META)
    try:
        meta = json.loads(storage.read_bytes(uri, opts))
    except FileNotFoundError:
        return None
    except ValueError:
        raise TinyrayError(f"--resume: {uri} is not valid JSON: the experiment cannot be checked") from None
    conflict = resume_conflict({"data": meta.get("data"), **meta.get("sweep", {})},
                               {"data": data, **json.loads(json.dumps(cfg.to_dict()))})
    if conflict:
        raise TinyrayError(f"--resume would change the sweep in {cfg.experiment_uri} ({conflict}): resume it as "
                           f"it was, or give the new sweep its own --name")
    changed = {k: [meta["sweep"].get(k), getattr(cfg, k)] for k in RESUME_FREE
               if meta.get("sweep", {}).get(k) != getattr(cfg, k)}
    return {**meta, "resumes": [*meta.get("resumes", []), {"at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                                           "changed": changed}]}


def run_finished(trial: TrainConfig, opts: StorageOptions) -> bool:
    """Whether ``trial``'s run folder already holds its whole result (every epoch)."""
    from tinyray.config import RESULT_FILE

    try:
        result = json.loads(storage.read_bytes(storage.join(trial.run_dir, RESULT_FILE), opts))
    except (FileNotFoundError, ValueError):
        return False
    return len(result.get("epochs") or []) >= trial.epochs




def write_sweep_meta(cfg: SweepConfig, data: str, manifest: dict, nodes: list[dict], concurrency: int,
                     opts: StorageOptions, source: dict, resumed: dict | None = None) -> None:
    """sweep.json and sweep.yaml in the experiment folder: what the report needs, and the
    effective sweep file (flags applied) that reruns it. On a resume (``resumed``, from
    ``check_resume``), the first start and every resume with its allowed changes are kept."""
    from tinyray.train import provenance

    meta = {
        "sweep": cfg.to_dict(),
        "data": data,
        "source": source,
        "dataset": {"classes": len(manifest["classes"]), "train": manifest["train"]["count"],
                    "val": manifest["val"]["count"], "skipped": len(manifest["skipped"])},
        "cluster": {"nodes": len(nodes), "resources": [{k: v for k, v in n.items() if not k.startswith("node:")}
                                                         for n in nodes],
                    "max_concurrent_trials": concurrency},
        "provenance": provenance(manifest),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "endpoint": opts.describe(),
    }
    if resumed:
        meta.update(started=resumed.get("started", meta["started"]), resumes=resumed["resumes"],
                    source=resumed.get("source", source))
    exp = cfg.experiment_uri
    storage.write_bytes(storage.join(exp, SWEEP_META), json.dumps(meta, indent=1).encode(), opts)
    storage.write_bytes(storage.join(exp, SWEEP_FILE), to_yaml(cfg).encode(), opts)


def tune_domain(axis: str, spec: dict):
    """A checked ``space:`` entry as a Ray Tune search domain (ints are drawn as ints, bounds included)."""
    from ray import tune

    from tinyray.config import field_type

    (dist, values), = spec.items()
    if dist == "choice":
        return tune.choice(values)
    lo, hi = values
    if field_type(axis)[0] is int:
        return tune.lograndint(lo, hi + 1) if dist == "loguniform" else tune.randint(lo, hi + 1)
    return tune.loguniform(lo, hi) if dist == "loguniform" else tune.uniform(lo, hi)


def sweep_plan(cfg: SweepConfig, data: str, manifest: dict | None, live: list[dict],
               cluster_config: dict | None, against: str, exists: bool = False, resume: bool = False
               ) -> tuple[list[str], list[str]]:
    """What a sweep would run, before Ray starts or anything trains (``--plan``): (lines to print,
    problems). Pure: the caller reads the manifest (None: the embedded default's sample, staged
    when the job runs) and the cluster (``live`` nodes, ``cluster_config``: --cluster-config or the
    running autoscaler's; ``against`` says which, for the reader). Each problem is one line."""
    from tinyray.console import format_table
    from tinyray.data.pipeline import steps_per_epoch
    from tinyray.resources import auto_concurrency, check_fits, cluster_capacity, head_trial_cap

    problems = []
    if exists and not resume:
        problems.append(f"experiment {cfg.experiment_uri} exists: pass --resume to continue it, or --name for a new one")
    trials = cfg.expand(data, train_runs(cfg.experiment_uri))
    nodes, max_nodes = cluster_capacity(live, cluster_config)
    rows = []
    for i, t in enumerate(trials, 1):
        fits = "yes"
        try:
            if nodes or max_nodes:
                check_fits(t, nodes, max_nodes)
            else:
                fits = "unchecked"
            if manifest is not None:
                steps_per_epoch(manifest["train"]["count"], t.batch_size, t.workers, t.replicas_per_worker)
        except TinyrayError as e:
            fits = "NO"
            problems.append(f"trial {i} ({t.run_name}): {e}")
        rows.append([str(i), t.run_name, *(f"{getattr(t, a):g}" if isinstance(getattr(t, a), float)
                                           else str(getattr(t, a)) for a in cfg.axes), str(t.epochs), fits])
    if cfg.max_concurrent_trials != "auto":
        concurrency = f"{cfg.max_concurrent_trials} at a time"
    elif nodes or max_nodes:
        concurrency = f"{auto_concurrency(trials, nodes, max_nodes, head_trial_cap(live))} at a time (auto)"
    else:
        concurrency = "'auto' at a time (sized when the cluster is known)"
    drawn = cfg.search != "grid"
    epochs = (cfg.num_samples * max(t.epochs for t in trials)) if drawn else sum(t.epochs for t in trials)
    what = (f"{cfg.num_samples} draws ({cfg.search} search); the rows are the corners of its space, each checked"
            if drawn else f"{len(trials)} trials")
    data_line = (f"data: {data} ({manifest['train']['count']:,} train / {manifest['val']['count']:,} val images, "
                 f"{len(manifest['classes'])} classes)" if manifest is not None
                 else f"data: {data} (the embedded default's sample, staged when the job runs)")
    lines = [f"plan: sweep {cfg.name} → {cfg.experiment_uri}", f"{what}, {concurrency}, scheduler {cfg.scheduler.type}",
             data_line, f"fit checked against {against}",
             format_table(["trial", "run name", *cfg.axes, "epochs", "fits"], rows),
             f"total: {epochs:,} trial-epochs" + (" at most (ASHA may stop trials early)"
                                                  if cfg.scheduler.type == "asha" else "")]
    return lines, problems
