"""The sweep file format: a file → ``SweepConfig`` → ``list[TrainConfig]``, one per trial (pure;
Ray Tune runs them in ``sweep``).

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

Every trial is the ``train:`` base with its axes over it, checked as a TrainConfig when the file
is read, so a bad value is one line before any cluster is asked for anything.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import json
import os
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
    mlflow: str | None = None  # an MLflow tracking URI: each trial one run, the sweep a parent run (tracking.py)

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
        if self.mlflow is not None and (not isinstance(self.mlflow, str) or not self.mlflow.strip()):
            raise TinyrayError(f"mlflow must be a tracking URI (http://host:5000, file:///path...), got {self.mlflow!r}")
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


# Sweep fields a --resume may change: they decide how the trials are scheduled, never what a
# trial trains or how it is judged. Every other field is the sweep's identity.
RESUME_FREE = ("max_concurrent_trials", "mlflow")  # neither can change what a trial trains


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
