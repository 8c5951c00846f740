"""The sweep: a sweep file → ``list[TrainConfig]`` → Ray Tune, one trial per TrainConfig.

A sweep file (sweeps/*.yaml) has four parts::

    name: grid                          # the experiment: its folder's name,
    storage: s3://BUCKET/experiments    # where experiment folders live,
    max_concurrent_trials: auto         # and how many trials at once (auto: what the cluster holds)
    train:                              # any TrainConfig fields: the base of every trial
      epochs: 20
      gpus_per_worker: 1
    grid:                               # axes over any TrainConfig field: every combination is a trial
      model: [model1, model2]
      optimizer: [adam, sgd]
      lr: [1.0e-3, 1.0e-4]
    scheduler: {type: asha, grace_period: 2, reduction_factor: 3}   # or fifo; ASHA ranks a trial
                                                                    # within its model (per_model: false: all)

``grid:`` may instead list its trials (``[{model: resnet18, lr: 0.1}, {model: model5}]``), and a
search draws its trials instead of combining axes::

    search: optuna                      # or random (grid, the default, needs no key)
    num_samples: 6
    space: {lr: {loguniform: [1.0e-5, 1.0e-3]}, optimizer: {choice: [adam, sgd]}}

A trial *is* a ``tinyray train`` run: it calls ``train.run`` on base + its axes, so its run folder
(``<experiment>/train-runs/<run name>/``) holds result.json and model/ like any other, and a
failure is the same one line. Tune sees only the axes as parameters (the base travels through
``tune.with_parameters``), so its table, "current best trial" and TensorBoard's HParams tab show
exactly what varies. Trial drivers take no CPU (cluster.trial_resources).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import json
import os
import time
from dataclasses import dataclass, field, fields

from tinyray.config import FIELDS, TrainConfig, check_fields, check_name, coerce
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError

SCHEDULERS = ("fifo", "asha")
SEARCHES = ("grid", "random", "optuna")
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
METRIC = "val_accuracy"
# TrainConfig fields that belong to the experiment (set at the top of the file), or that name
# where a trial runs rather than what it trains: none of them can be a grid axis.
EXPERIMENT_FIELDS = ("storage", "name")
NOT_AXES = EXPERIMENT_FIELDS + ("data", "endpoint_url")
UNSET_DATA = "<--data>"  # stands in for the dataset while a sweep file is checked without one


@dataclass(frozen=True)
class SchedulerConfig:
    type: str = "fifo"  # fifo: every trial runs every epoch | asha: stops weak trials on val_accuracy
    grace_period: int = 2  # asha: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # asha: keep the top 1/reduction_factor at each rung
    # asha: a trial is ranked only against trials of its own model (one ASHA per model), so a weak
    # architecture's variants are compared with each other, not cut by a strong one's; false: one
    # ASHA over every trial
    per_model: bool = True

    def __post_init__(self):
        if self.type not in SCHEDULERS:
            raise TinyrayError(f"scheduler type must be one of {', '.join(SCHEDULERS)}, got {self.type!r}")
        if not isinstance(self.per_model, bool):
            raise TinyrayError(f"scheduler per_model must be true or false, got {self.per_model!r}")
        for name, least in (("grace_period", 1), ("reduction_factor", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TinyrayError(f"scheduler {name} must be an integer of at least {least}, got {value!r}")


@dataclass(frozen=True)
class SweepConfig:
    """An experiment: trials = ``train`` (base) × every combination of ``grid``'s axes (or its
    listed trials, or ``num_samples`` draws of ``space`` for a random / optuna search)."""

    name: str = "tinyray-sweep"  # the experiment folder's name
    storage: str = "~/tinyray/experiments"  # where experiment folders live: local or s3://
    max_concurrent_trials: int | str = "auto"  # auto: as many as the cluster's resources hold
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by every trial
    grid: dict | list = field(default_factory=dict)  # TrainConfig field → list of values, or a list of trials
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: str = "grid"  # grid: every combination of grid: | random, optuna (TPE): num_samples draws of space:
    num_samples: int | None = None  # random / optuna: how many trials
    space: dict = field(default_factory=dict)  # random / optuna: TrainConfig field → {distribution: [...]}
    search_seed: int = 0  # random / optuna: seeds the draws, so a rerun draws the same trials

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        check_name(self.name, "sweep name")  # the experiment folder's name
        if isinstance(self.scheduler, str):
            set_("scheduler", SchedulerConfig(type=self.scheduler))
        elif isinstance(self.scheduler, dict):
            set_("scheduler", _from_dict(SchedulerConfig, self.scheduler, "scheduler"))
        if isinstance(self.grid, list):  # the trials themselves: check each, then the union of their keys
            set_("grid", [self._listed_trial(i, entry) for i, entry in enumerate(self.grid)])
        for part in ("train", "grid", "space"):
            if part == "grid" and isinstance(self.grid, list):
                continue
            if not isinstance(getattr(self, part), dict):
                raise TinyrayError(f"sweep {part}: must be a mapping of TrainConfig fields, got "
                                   f"{getattr(self, part)!r}")
        check_fields(self.train, "train")
        if isinstance(self.grid, dict):
            check_fields(self.grid, "grid")
        for name in EXPERIMENT_FIELDS:
            if name in self.train:
                raise TinyrayError(f"train: {name} is the experiment's: set {name}: at the top of the sweep file")
        grid = {} if isinstance(self.grid, dict) else self.grid
        for axis, values in (self.grid.items() if isinstance(self.grid, dict) else ()):
            if axis in NOT_AXES:
                raise TinyrayError(f"grid: {axis} cannot be a sweep axis (it says where trials run, not what they train)")
            if axis in self.train:
                raise TinyrayError(f"{axis} is in both train: and grid:; keep it in one")
            if not isinstance(values, list) or not values:
                raise TinyrayError(f"grid: {axis} must be a non-empty list of values, got {values!r}")
            grid[axis] = [coerce(axis, v) for v in values]
        set_("grid", grid)
        set_("train", {k: coerce(k, v) for k, v in self.train.items()})
        for axis in (self.axes if self.listed else ()):
            if axis in self.train:
                raise TinyrayError(f"{axis} is in both train: and grid:; keep it in one")
        set_("space", self._check_search())
        if "model" not in self.train and "model" not in self.axes:
            raise TinyrayError("the sweep names no model: give train: {model: …} or grid: {model: […]}")
        mct = self.max_concurrent_trials
        if mct != "auto" and not (isinstance(mct, int) and not isinstance(mct, bool) and mct >= 1):
            raise TinyrayError(f"max_concurrent_trials must be 'auto' or an integer >= 1, got {mct!r}")
        trials = self.expand()  # every trial's TrainConfig is checked now, before Tune starts
        least = min(t.epochs for t in trials)
        if self.scheduler.type == "asha" and self.scheduler.grace_period > least:
            raise TinyrayError(f"scheduler grace_period ({self.scheduler.grace_period}) must be at most the "
                               f"epochs of every trial ({least})")

    def _check_search(self) -> dict:
        """``search:``, ``num_samples:`` and ``space:`` checked; the space with its values coerced
        to each field's type. Each mistake is refused in one line."""
        if self.search not in SEARCHES:
            raise TinyrayError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if isinstance(self.search_seed, bool) or not isinstance(self.search_seed, int):
            raise TinyrayError(f"search_seed must be an integer, got {self.search_seed!r}")
        if self.search == "grid":
            if self.space:
                raise TinyrayError("space: is drawn from by search: random or optuna; a grid sweep lists its "
                                   "values under grid:")
            if self.num_samples is not None:
                raise TinyrayError("num_samples is for search: random or optuna (a grid runs each combination once)")
            return {}
        if self.listed:
            raise TinyrayError(f"search: {self.search} draws from space:; a list of trials is grid:'s")
        if self.grid:
            raise TinyrayError(f"search: {self.search} draws from space:, not grid: (write grid: {{{next(iter(self.grid))}:"
                               f" [...]}} as space: {{{next(iter(self.grid))}: {{choice: [...]}}}})")
        n = self.num_samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TinyrayError(f"search: {self.search} needs num_samples: N (an integer >= 1), got {n!r}")
        if not self.space:
            raise TinyrayError(f"search: {self.search} needs a space: of TrainConfig fields to draw, e.g. "
                               "space: {lr: {loguniform: [1.0e-5, 1.0e-3]}}")
        check_fields(self.space, "space")
        space = {}
        for axis, spec in self.space.items():
            if axis in NOT_AXES:
                raise TinyrayError(f"space: {axis} cannot be a sweep axis (it says where trials run, not what they train)")
            if axis in self.train:
                raise TinyrayError(f"{axis} is in both train: and space:; keep it in one")
            space[axis] = parse_distribution(axis, spec)
        return space

    @staticmethod
    def _listed_trial(i: int, entry) -> dict:
        if not isinstance(entry, dict) or not entry:
            raise TinyrayError(f"grid: trial {i + 1} must be a mapping of TrainConfig fields, got {entry!r}")
        check_fields(entry, f"grid: trial {i + 1}")
        for axis in entry:
            if axis in NOT_AXES:
                raise TinyrayError(f"grid: {axis} cannot be a sweep axis (it says where trials run, not what they train)")
        return {k: coerce(k, v) for k, v in entry.items()}

    @property
    def listed(self) -> bool:
        """``grid:`` is a list of trials (each a mapping of its fields), not axes to combine."""
        return isinstance(self.grid, list)

    def combinations(self) -> list[dict]:
        """Every combination of the grid's axes, in the file's order (the last axis varies fastest).
        A listed grid: its trials, each with every axis (one it does not set has TrainConfig's
        default). For search: random / optuna, the corners of the space instead (each bound, each
        choice): what every trial is checked against before Tune starts."""
        if self.listed:
            return [{axis: entry.get(axis, FIELDS[axis].default) for axis in self.axes} for entry in self.grid]
        axes = self.space if self.search != "grid" else self.grid
        values = [next(iter(d.values())) for d in axes.values()] if self.search != "grid" else list(axes.values())
        return [dict(zip(axes, combo)) for combo in itertools.product(*values)]

    @property
    def axes(self) -> list[str]:
        """The fields that vary between trials: Tune's parameters, the report's columns."""
        if self.listed:
            return list(dict.fromkeys(axis for entry in self.grid for axis in entry))
        return list(self.space if self.search != "grid" else self.grid)

    @property
    def planned_trials(self) -> int:
        return len(self.combinations()) if self.search == "grid" else self.num_samples

    def expand(self, data: str | None = None, train_runs: str | None = None) -> list[TrainConfig]:
        """The trials: one TrainConfig per combination, base first, axes over it. Two trials that
        would train the same run (same run folder) are refused. (For a search, the corners of its
        space: see ``combinations``.)"""
        base = {"data": UNSET_DATA, **self.train}
        if data:
            base["data"] = data
        if train_runs:
            base["storage"] = train_runs
        trials, seen = [], {}
        for axes in self.combinations():
            cfg = TrainConfig.from_dict({**base, **axes}, "train")
            if self.search != "grid":
                trials.append(cfg)
                continue
            if cfg.run_name in seen:
                raise TinyrayError(f"grid: {seen[cfg.run_name]} and {axes} are the same training (run "
                                   f"{cfg.run_name}): remove the duplicate")
            seen[cfg.run_name] = axes
            trials.append(cfg)
        return trials

    @property
    def experiment_uri(self) -> str:
        return storage.join(self.storage, self.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepConfig":
        known = [f.name for f in fields(cls)]
        for key in data:
            if key in known:
                continue
            hint = _MOVED.get(key) or ("put it under train: (every trial) or grid: (an axis)" if key in FIELDS
                                       else f"valid: {', '.join(known)}")
            raise TinyrayError(f"unknown sweep field {key}: {hint}")
        return cls(**data)


def parse_distribution(axis: str, spec) -> dict:
    """One ``space:`` entry, ``{loguniform: [lo, hi]}``, ``{uniform: [lo, hi]}`` or
    ``{choice: [v, ...]}``, checked and coerced to the field's type; anything else is one line."""
    from tinyray.config import field_type

    if not isinstance(spec, dict) or len(spec) != 1:
        raise TinyrayError(f"space: {axis} must be one of {{loguniform: [lo, hi]}}, {{uniform: [lo, hi]}} or "
                           f"{{choice: [...]}}, got {spec!r}")
    (dist, values), = spec.items()
    if dist not in DISTRIBUTIONS:
        raise TinyrayError(f"space: {axis}: unknown distribution {dist!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        raise TinyrayError(f"space: {axis}: {dist} takes a list, got {values!r}")
    if dist == "choice":
        return {dist: [coerce(axis, v) for v in values]}
    kind, _ = field_type(axis)
    if kind not in (int, float):
        raise TinyrayError(f"space: {axis} is not a number: draw it with choice: [...]")
    if len(values) != 2:
        raise TinyrayError(f"space: {axis}: {dist} takes [low, high], got {values!r}")
    lo, hi = (coerce(axis, v) for v in values)
    if not lo < hi:
        raise TinyrayError(f"space: {axis}: {dist} bounds must be [low, high] with low < high, got [{lo:g}, {hi:g}]")
    if dist == "loguniform" and lo <= 0:
        raise TinyrayError(f"space: {axis}: loguniform needs low > 0, got {lo:g}")
    return {dist: [lo, hi]}


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


# The sweep format before TrainConfig was the one unit of work, so an old file gets a pointer.
_MOVED = {"models": "write grid: {model: [...]}", "optimizers": "write grid: {optimizer: [...]}",
          "learning_rates": "write grid: {lr: [...]}", "grace_period": "write scheduler: {grace_period: N}",
          "reduction_factor": "write scheduler: {reduction_factor: N}"}


def _from_dict(cls, data: dict, where: str):
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TinyrayError(f"unknown {where} field(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    return cls(**data)


# ------------------------------------------------------------------------ sweep files (pure-ish)


def packaged_sweeps() -> list[str]:
    """Names of the sweep files shipped inside the package (sweeps/*.yaml)."""
    return sorted(p.name[:-5] for p in importlib.resources.files("tinyray.sweeps").iterdir()
                  if p.name.endswith(".yaml"))


def read_sweep_text(source: str, opts: StorageOptions | None = None) -> str:
    """A sweep file's text from a path, an s3:// URI, or the name of a shipped one (``grid``)."""
    if storage.is_s3(source):
        try:
            return storage.read_bytes(source, opts or StorageOptions.from_env()).decode()
        except FileNotFoundError:
            raise TinyrayError(f"sweep config {source} does not exist") from None
    if os.path.isfile(source):  # a folder named like a shipped sweep (./smoke) is not a sweep file
        with open(source) as f:
            return f.read()
    folder, name = os.path.split(source)
    name = name.removesuffix(".yaml")
    if folder in ("", "sweeps") and name in packaged_sweeps():  # also `sweeps/grid.yaml` outside a checkout
        return (importlib.resources.files("tinyray.sweeps") / f"{name}.yaml").read_text()
    raise TinyrayError(f"sweep config {source} does not exist (shipped: {', '.join(packaged_sweeps())})")


def parse_sweep(text: str, source: str = "sweep config", overrides: dict | None = None) -> SweepConfig:
    """A SweepConfig from a sweep file's text, with flag ``overrides`` on top (None = not given).

    Overrides: ``name``, ``storage``, ``max_concurrent_trials`` (the experiment's); ``scheduler``
    (its type); ``models`` (the model axis); any TrainConfig field, which replaces that field in
    ``train:`` and removes it from ``grid:`` — a flag wins over the file."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise TinyrayError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TinyrayError(f"{source} must be a mapping of fields")
    grid = data.get("grid") or {}
    data = {**data, "train": dict(data.get("train") or {}), "grid": list(grid) if isinstance(grid, list) else dict(grid)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "scheduler":
            sched = data.get("scheduler") or {}
            data["scheduler"] = {**({"type": sched} if isinstance(sched, str) else sched), "type": value}
        elif key == "models":
            if isinstance(data["grid"], list):
                raise TinyrayError(f"{source}: --models cannot change a grid: that lists its trials; edit the file")
            data["train"].pop("model", None)
            data["grid"]["model"] = list(value)
        elif key in FIELDS and key not in EXPERIMENT_FIELDS:
            if isinstance(data["grid"], list):
                data["grid"] = [{k: v for k, v in e.items() if k != key} if isinstance(e, dict) else e
                                for e in data["grid"]]
            else:
                data["grid"].pop(key, None)
            if isinstance(data.get("space"), dict):
                data["space"] = {k: v for k, v in data["space"].items() if k != key}
            data["train"][key] = value
        else:
            data[key] = value
    try:
        return SweepConfig.from_dict(data)
    except TinyrayError as e:
        raise TinyrayError(f"{source}: {e}") from None


def load_sweep(source: str | None, overrides: dict | None = None, opts: StorageOptions | None = None) -> SweepConfig:
    """The sweep file at ``source`` (path, s3:// or shipped name; None = no file) with overrides."""
    text = read_sweep_text(source, opts) if source else ""
    return parse_sweep(text, f"sweep config {source}" if source else "sweep", overrides)


def to_yaml(cfg: SweepConfig) -> str:
    """The sweep file that reproduces ``cfg`` (flags applied), for the experiment folder."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------ Tune (driver)


def run_trial(axes: dict, base: dict) -> None:
    """Tune's function trainable: base + this trial's axes, run exactly as ``tinyray train`` runs it."""
    from tinyray.train import run

    cfg = TrainConfig.from_dict({**base, **axes})
    run(cfg, StorageOptions.from_env(cfg.endpoint_url), callbacks=[__getattr__("TrialReports")()])


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
    from tinyray.cluster import (auto_concurrency, check_fits, check_shared_storage, cluster_capacity,
                                 cluster_nodes, head_trial_cap, keep_credentials_out_of_tune,
                                 running_autoscaler_config, trial_resources)
    from tinyray.console import epoch_lines_callback, status_table
    from tinyray.data.pipeline import steps_per_epoch
    from tinyray.data.stage import load_manifest

    opts = opts or StorageOptions.from_env(cfg.train.get("endpoint_url"))
    resumed = check_resume(cfg, data, opts) if resume else None  # before anything is written
    manifest = load_manifest(data, opts)
    exp_uri = cfg.experiment_uri
    train_runs = storage.join(exp_uri, "train-runs")
    trials = cfg.expand(data, train_runs)
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
    base = {**cfg.train, "data": data, "storage": train_runs}
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base),
                                    trial_resources(ray.cluster_resources()))
    experiment_dir = f"{exp_path}/{cfg.name}"

    keep_credentials_out_of_tune()
    write_sweep_meta(cfg, data, manifest, live, concurrency, opts, source or {}, resumed)
    if resume and tune.Tuner.can_restore(experiment_dir, storage_filesystem=fs):
        print(f"resuming sweep {exp_uri}: finished trials are kept, unfinished ones continue", flush=True)
        tuner = tune.Tuner.restore(experiment_dir, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        param_space, search_alg, num_samples = search_plan(cfg)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, search_alg=search_alg,
                                        num_samples=num_samples, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name=cfg.name, storage_path=exp_path, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      stop=__getattr__("ResourceStopper")(),
                                      callbacks=[epoch_lines_callback(base, cfg.axes)],
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


def search_plan(cfg: SweepConfig):
    """(param_space, search_alg, num_samples) of Tune for the sweep's ``search:``.

    grid: every combination, once (a listed grid: each listed trial, once). random: ``num_samples`` independent draws of the space,
    seeded. optuna: Optuna's TPE sampler proposes each trial from the results so far; its first
    third (at most 10) are random draws, so that TPE has something to model on a small budget
    (Optuna's own default, 10 random trials, would be the whole of a 6-trial search)."""
    from ray import tune

    if cfg.listed:  # exactly the listed trials, as points to evaluate, each axis a flat parameter
        from ray.tune.search import BasicVariantGenerator

        points = cfg.combinations()
        space = {axis: tune.choice(list({json.dumps(p[axis]): p[axis] for p in points}.values())) for axis in cfg.axes}
        return space, BasicVariantGenerator(points_to_evaluate=points), len(points)
    if cfg.search == "grid":
        return {axis: tune.grid_search(values) for axis, values in cfg.grid.items()}, None, 1
    space = {axis: tune_domain(axis, spec) for axis, spec in cfg.space.items()}
    if cfg.search == "random":
        from ray.tune.search import BasicVariantGenerator

        return space, BasicVariantGenerator(random_state=cfg.search_seed), cfg.num_samples
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # quiet: its per-trial INFO lines
    sampler = optuna.samplers.TPESampler(seed=cfg.search_seed, n_startup_trials=min(10, max(2, cfg.num_samples // 3)))
    return space, OptunaSearch(sampler=sampler), cfg.num_samples


SWEEP_META = "sweep.json"
# Sweep fields a --resume may change: they decide how the trials are scheduled, never what a
# trial trains or how it is judged. Every other field is the sweep's identity.
RESUME_FREE = ("max_concurrent_trials",)


def resume_conflict(saved: dict, now: dict, path: str = "") -> str | None:
    """The first field (dotted) at which the sweep ``now`` differs from the ``saved`` one, as
    ``'field: was X, now Y'``; None when they are the same sweep. Pure."""
    for key in sorted(set(saved) | set(now)):
        where = f"{path}.{key}" if path else key
        if not path and key in RESUME_FREE:
            continue
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = resume_conflict(a, b, where)
            if found:
                return found
        elif a != b:
            return f"{where}: was {json.dumps(a, default=str)}, now {json.dumps(b, default=str)}"
    return None


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
    storage.write_bytes(storage.join(exp, "sweep.yaml"), to_yaml(cfg).encode(), opts)
