"""Typed configs. They flow one way: CLI flags / YAML → dataclass (validated here) → ``asdict``
at the Ray boundary → ``from_dict`` on the worker. Unknown keys are errors, and every default
lives here, once, with its reason.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields

from tinyray.errors import TinyrayError

OPTIMIZERS = ("adam", "rmsprop", "sgd", "nadam")
PRECISIONS = ("float32", "mixed_float16")


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a dict; an unknown key is an error naming the valid ones."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TinyrayError(f"unknown {where} field(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """One model trained by one TensorflowTrainer. Defaults are the seed study's."""

    model: str
    data: str  # a staged dataset: s3://bucket/prefix or a local folder with manifest.json
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    epochs: int = 10
    batch_size: int = 64  # PER WORKER; the global batch is batch_size × workers
    optimizer: str = "adam"  # the seed chose Adam after trying RMSprop, SGD and Nadam
    lr: float = 1e-4  # the seed's learning rate
    momentum: float = 0.9  # SGD only (plain SGD at 1e-4 barely moves)
    precision: str = "float32"  # mixed_float16 on GPUs; the output layer stays float32
    xla: bool = False  # jit_compile the train step (GPU clusters; works, slowly, on CPU)
    seed: int = 0
    weights: str = "none"  # model5/model6 base: none | imagenet | path | s3:// URI
    freeze_base: bool = False
    cache: str = "memory"  # decode once per trial and keep in memory | stream every epoch
    flip: bool = True  # the seed's random horizontal flips (train only)
    storage: str = "./runs"  # run folders (checkpoints, result.json): local or s3://
    name: str | None = None  # run folder name; default derived from the config (stable → resumable)
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up
    endpoint_url: str | None = None  # S3-compatible endpoint (credentials stay in the env)

    def __post_init__(self):
        from tinyray.models import get_spec

        get_spec(self.model)
        checks = [
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"),
            (_is_number(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (isinstance(self.workers, int) and self.workers >= 1, f"workers must be at least 1, got {self.workers}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (_is_number(self.cpus_per_worker) and self.cpus_per_worker > 0,
             f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"),
            (_is_number(self.gpus_per_worker) and self.gpus_per_worker >= 0,
             f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}"),
            (isinstance(self.max_failures, int) and self.max_failures >= -1, "max_failures must be -1 (forever) or more"),
            (self.cache in ("memory", "stream"), f"cache must be memory or stream, got {self.cache!r}"),
            (self.name is None or re.fullmatch(r"[A-Za-z0-9._=-]+", self.name or ""),
             f"name {self.name!r} may hold only letters, digits and . _ = -"),
        ]
        for ok, message in checks:
            if not ok:
                raise TinyrayError(message)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.workers

    @property
    def run_name(self) -> str:
        """The run folder's name: stable for a given config, so rerunning resumes it."""
        if self.name:
            return self.name
        return (f"{self.model}-{self.optimizer}-lr{self.lr:g}-b{self.batch_size}x{self.workers}"
                f"-e{self.epochs}-s{self.seed}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return from_dict(cls, data, "train")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
