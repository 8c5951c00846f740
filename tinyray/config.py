"""TrainConfig, the one unit of work, and the registries its fields are checked against.

Configs flow one way: flags / YAML → ``TrainConfig.from_dict`` (types coerced, unknown keys
refused) → ``to_dict`` at the Ray boundary → ``from_dict`` on the worker. Every field is written
once, here, with its default and its help text; from that one declaration come the
``tinyray train`` flag, the sweep axis, the report column and the line of result.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field, fields

from tinyray.data import storage
from tinyray.errors import TinyrayError
from tinyray.models import REGISTRY

# name → tf_keras.optimizers class. The seed compared these four and chose Adam.
OPTIMIZERS = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD", "nadam": "Nadam"}
PRECISIONS = ("float32", "mixed_float16")
CACHE_MODES = ("memory", "stream")
AUGMENTS = ("none", "flip", "crop_flip")  # tinyray/recipe.py
SCHEDULES = ("constant", "cosine", "step")
# A run folder's files: written by the workers (worker.py), read by the driver (train.py).
RESULT_FILE = "result.json"
STATE_FILE = "state.json"  # in each checkpoint: the history so far
# The key of a preemption's checkpoint report (worker.PreemptionCheck); sweep.TrialReports keeps it
# from Tune. Here, not in worker.py, so that the trial driver and Train's controller, which
# unpickle TrialReports, never import TensorFlow.
PREEMPTED = "preempted_at_step"


# Run and experiment folder names: one path segment, never "." or "..", nothing a shell or a
# URI treats specially.
NAME_RULE = re.compile(r"(?!\.+$)[A-Za-z0-9._=-]+")


def check_name(value, what: str) -> None:
    """Refuse, in one line, a folder name that is not one plain path segment."""
    if not (isinstance(value, str) and NAME_RULE.fullmatch(value)):
        raise TinyrayError(f"{what} {value!r} may hold only letters, digits and . _ = - (and not only dots)")


def _field(default=dataclasses.MISSING, help: str = "", choices=None, identity: bool = True):
    """A TrainConfig field. ``identity=False`` marks where/how a run happens (resources, storage,
    retries), not what it trains: such fields never change the run's folder name, so the same
    training resumes wherever it is scheduled."""
    return field(default=default, metadata={"help": help, "choices": choices, "identity": identity})


@dataclass(frozen=True)
class TrainConfig:
    """One model trained by one Ray Train run (MultiWorkerMirroredStrategy). Defaults are the seed study's recipe."""

    model: str = _field(help="a registry name (tinyray models)", choices=tuple(REGISTRY))
    data: str = _field(help="a staged dataset: s3://bucket/prefix or a local folder with manifest.json",
                       identity=False)
    workers: int = _field(1, "Train workers (MultiWorkerMirroredStrategy replicas)")
    cpus_per_worker: float = _field(1.0, "CPUs each worker holds; TensorFlow's threads follow it", identity=False)
    gpus_per_worker: float = _field(0.0, "GPUs each worker holds (1 on a GPU cluster; a whole number above 1: "
                                         "one replica per GPU)", identity=False)
    epochs: int = _field(10, "epochs to train")
    batch_size: int = _field(64, "images each replica trains on per step (a worker, or each GPU of a multi-GPU "
                                 "worker); the global batch is this × workers × GPUs per worker")
    optimizer: str = _field("adam", "the seed chose Adam after trying RMSprop, SGD and Nadam",
                            choices=tuple(OPTIMIZERS))
    lr: float = _field(1e-4, "learning rate (the seed's 1e-4)")
    momentum: float = _field(0.9, "SGD's momentum (plain SGD at 1e-4 barely moves)")
    # The recipe (tinyray/recipe.py). The defaults are the seed's: Adam at a constant 1e-4, flips, hard labels.
    augment: str = _field("flip", "train-time augmentation: flip (the seed's horizontal flips), crop_flip (pad 4 "
                                  "by reflection, random 64x64 crop, flip) or none", choices=AUGMENTS)
    mixup: float = _field(0.0, "mixup alpha, 0 = off: each batch blended with itself reversed, λ ~ Beta(α, α)")
    cutmix: float = _field(0.0, "cutmix alpha, 0 = off: a box of the batch reversed pasted in; with mixup "
                                "also on, each batch uses one of the two")
    label_smoothing: float = _field(0.0, "label smoothing of the train loss (0.1 is usual); val loss is plain")
    weight_decay: float = _field(0.0, "decoupled weight decay, w -= lr*wd*w (AdamW with adam); not on "
                                      "biases or normalisation")
    nesterov: bool = _field(False, "Nesterov momentum (optimizer sgd)")
    schedule: str = _field("constant", "lr over the run, by optimizer step: constant (the seed), cosine to 0, or "
                                       "step (x0.1 at 1/2 and 3/4 of the run)", choices=SCHEDULES)
    warmup_epochs: int = _field(0, "epochs of linear warmup to lr before the schedule")
    precision: str = _field("float32", "mixed_float16 on GPUs; the output layer stays float32",
                            choices=PRECISIONS)
    xla: bool = _field(False, "jit-compile the train step (GPU clusters; works, slowly, on CPU); one worker only",
                       identity=False)
    seed: int = _field(0, "seeds weights, shuffling and augmentation")
    weights: str = _field("none", "model5/model6 base: none, imagenet, a path or an s3:// URI of a weights file")
    freeze_base: bool = _field(False, "model5/model6: train the head only")
    cache: str = _field("memory", "decode once and keep in worker memory, or stream through Ray Data every "
                                  "epoch (data larger than memory)", choices=CACHE_MODES, identity=False)
    storage: str = _field("./runs", "where run folders live: a local folder or s3://…", identity=False)
    name: str | None = _field(None, "run folder name (default: derived from the config, so rerunning resumes)",
                              identity=False)
    max_failures: int = _field(3, "worker-group restarts from the last checkpoint before the run gives up",
                               identity=False)
    data_timeout: float = _field(600.0, "seconds a worker waits for a batch of data before the run stops and says "
                                        "what the cluster is missing", identity=False)
    endpoint_url: str | None = _field(None, "S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS); "
                                            "credentials stay in each process's environment", identity=False)

    def __post_init__(self):
        for f in fields(self):  # types first: YAML and flags hand over strings and ints
            object.__setattr__(self, f.name, coerce(f.name, getattr(self, f.name)))
        for f in fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise TinyrayError(f"unknown {f.name} {getattr(self, f.name)!r}; valid: {', '.join(choices)}")
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.workers >= 1, f"workers must be at least 1, got {self.workers}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"),
            (self.gpus_per_worker >= 0, f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}"),
            # MirroredStrategy makes one replica per visible GPU: 1.5 GPUs is no number of replicas
            (self.gpus_per_worker <= 1 or self.gpus_per_worker.is_integer(),
             f"gpus_per_worker above 1 must be a whole number (one replica per GPU), got {self.gpus_per_worker:g}"),
            # jit_compile puts the train step's cross-worker all-reduce inside XLA, which is broken
            # upstream for MultiWorkerMirroredStrategy (tensorflow/tensorflow#58961)
            (not (self.xla and self.workers > 1),
             f"xla with {self.workers} workers would compile the cross-worker all-reduce into XLA, which "
             "TensorFlow does not support (tensorflow/tensorflow#58961): use xla with workers: 1"),
            (self.max_failures >= -1, "max_failures must be -1 (forever) or more"),
            (self.mixup >= 0, f"mixup must be >= 0 (an alpha; 0 = off), got {self.mixup}"),
            (self.cutmix >= 0, f"cutmix must be >= 0 (an alpha; 0 = off), got {self.cutmix}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (not self.nesterov or self.optimizer == "sgd",
             f"nesterov is a momentum option of optimizer sgd, not {self.optimizer}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.warmup_epochs < self.epochs or not self.warmup_epochs,
             f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})"),
            (self.data_timeout > 0, f"data_timeout must be > 0 seconds, got {self.data_timeout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TinyrayError(message)
        if self.name is not None:
            check_name(self.name, "name")

    @property
    def replicas_per_worker(self) -> int:
        """MultiWorkerMirroredStrategy's replicas in one worker: one per GPU it holds, else one
        (a fraction of a GPU, or CPUs)."""
        return max(1, int(self.gpus_per_worker))

    @property
    def global_batch(self) -> int:
        """Images one optimizer step trains on, over every replica: what the lr is tuned for.
        The figures each epoch reports are counted in the train step (worker.ImageCount)."""
        return self.batch_size * self.workers * self.replicas_per_worker

    @property
    def run_name(self) -> str:
        """The run folder's name: stable for a given training, so rerunning resumes it.

        The common fields are spelled out; any other identity field that differs from its
        default adds a digest, so two trials of a sweep that differ only there never share a
        folder."""
        if self.name:
            return self.name
        name = (f"{self.model}-{self.optimizer}-lr{self.lr:g}-b{self.batch_size}x{self.workers}"
                f"-e{self.epochs}-s{self.seed}")
        spelled = {"model", "optimizer", "lr", "batch_size", "workers", "epochs", "seed"}
        extra = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.metadata["identity"] and f.name not in spelled and getattr(self, f.name) != f.default}
        if extra:
            name += "-" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
        return name

    @property
    def run_dir(self) -> str:
        """The run folder's URI: ``<storage>/<run name>``."""
        return storage.join(self.storage, self.run_name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "train") -> "TrainConfig":
        """From YAML, JSON or flags: values coerced to each field's type, unknown keys refused."""
        check_fields(data, where)
        missing = [f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise TinyrayError(f"{where} config needs {', '.join(missing)}")
        return cls(**data)


FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def check_fields(names, where: str = "train") -> None:
    """Refuse, in one line, any name that is not a TrainConfig field."""
    unknown = sorted(set(names) - set(FIELDS))
    if "flip" in unknown:  # a bool before the recipe fields
        raise TinyrayError(f"{where} field flip is now augment: flip (the default), crop_flip or none")
    if unknown:
        raise TinyrayError(f"unknown {where} field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")


def field_type(name: str) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a TrainConfig field."""
    hint = _TYPES[name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def coerce(name: str, value):
    """``value`` as TrainConfig field ``name``'s type, or one line saying what was expected.

    YAML reads ``1e-3`` (no dot) as a string and ``3`` as an int: both are fine for a float.
    """
    kind, optional = field_type(name)
    if value is None and optional:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    elif kind in (int, float) and not isinstance(value, bool):
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    raise TinyrayError(f"{name} must be {_KIND_NAMES[kind]}, got {value!r}")


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


# ---------------------------------------------------------------------------------- flags


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_flags(parser: argparse.ArgumentParser, overrides: bool = False, skip=()) -> None:
    """One flag per TrainConfig field, from the field's own type, default, choices and help.

    ``overrides=True`` (the sweep): no defaults and nothing required — a flag given replaces that
    field in the sweep file, a flag not given leaves the file alone."""
    for name, f in FIELDS.items():
        if name in skip:
            continue
        kind, _ = field_type(name)
        required = f.default is dataclasses.MISSING
        kwargs: dict = {"dest": name, "help": f.metadata["help"]}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _flag_type(name)
            kwargs["metavar"] = name.upper()
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
            kwargs["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
        if overrides:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] += " (overrides the sweep file)"
        elif required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(flag(name), **kwargs)


def _flag_type(name: str):
    def parse(text: str):
        try:
            return coerce(name, text)
        except TinyrayError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict({name: getattr(args, name) for name in FIELDS if hasattr(args, name)})
