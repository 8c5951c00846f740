"""Train one TrainConfig across workers: Ray Train (a DataParallelTrainer with a TF_CONFIG backend)
and MultiWorkerMirroredStrategy. ``train_on_ray`` is the one way a config is trained — by ``tinyray train``
and by every Tune trial of a sweep — and leaves the same run folder either way::

    <storage>/<run name>/
        checkpoint_*/            per epoch: weights + optimizer state + state.json (history)
        result.json              model, config (no secrets), per-epoch metrics, params, times
        model/model.keras        the final model, for tf_keras.models.load_model
        model/classes.json       label index → wnid and name, and the training config

    from tinyray.config import RESULT_FILE, STATE_FILE, TrainConfig
    from tinyray.train import train_command
    train_command(TrainConfig(model="model2", data="s3://bucket/tiny-imagenet", workers=2))

What runs on each worker is in tinyray/worker.py. This module is the driver's side, and imports
no TensorFlow, so that a user's mistake is reported before TensorFlow or Ray start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from tinyray.config import RESULT_FILE, STATE_FILE, TrainConfig
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError, tinyray_message

# ------------------------------------------------------------------------------ the driver


@dataclass
class TrainResult:
    run_dir: str  # URI of the run folder
    result: dict  # what result.json holds


# ------------------------------------------------------------- MWMS without TensorFlow here
# Ray's TensorflowTrainer is DataParallelTrainer + TensorflowConfig, whose module imports
# TensorFlow (ray/train/tensorflow/__init__.py) in every process that unpickles it: the trial
# driver and Train's controller as well as the workers. The backend below does the same one
# thing, writing each worker's TF_CONFIG, from a module that imports no TensorFlow, and the
# workers' loop is reached through ``worker_entry`` for the same reason; measured in the closing
# note of issue 13 (TensorFlow's import is ~3 s of CPU per process on this machine).


# How long the workers have to report their addresses and take TF_CONFIG (each is a plain
# method call on a started actor: seconds, unless its node is gone).
BACKEND_START_TIMEOUT = 120


def _set_tf_config(addresses: list[str], index: int) -> None:
    import os

    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


def _backend_classes():
    from ray.train.backend import Backend, BackendConfig

    class MWMSBackend(Backend):
        def on_start(self, worker_group, backend_config):
            import ray
            from ray._common.network_utils import build_address
            from ray.train._internal.utils import get_address_and_port

            # Bounded: a worker that never answers (its node lost mid-start) is an error Train
            # retries as a worker-group failure, not a controller that waits for ever.
            try:
                addresses = ray.get(worker_group.execute_async(lambda: build_address(*get_address_and_port())),
                                    timeout=BACKEND_START_TIMEOUT)
                ray.get([worker_group.execute_single_async(i, _set_tf_config, addresses=addresses, index=i)
                         for i in range(len(worker_group))], timeout=BACKEND_START_TIMEOUT)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(f"the {len(worker_group)} Train workers did not all answer within "
                                   f"{BACKEND_START_TIMEOUT} s while TF_CONFIG was set (a node lost or "
                                   f"overloaded)") from None

    class MWMSConfig(BackendConfig):
        """TF_CONFIG for MultiWorkerMirroredStrategy on each worker (as Ray's TensorflowConfig)."""

        @property
        def backend_cls(self):
            return MWMSBackend

        # No ``framework``: Ray would import tensorflow and keras (Keras 3, 0.6 s, unused here) on
        # worker 0 before the loop starts, only to record their versions (provenance has them).

    for cls in (MWMSBackend, MWMSConfig):  # pickled by reference, as module attributes
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return MWMSBackend, MWMSConfig


def __getattr__(name: str):
    """The backend classes are built on first use, so importing this module imports no Ray."""
    if name in ("MWMSBackend", "MWMSConfig"):
        globals().update(zip(("MWMSBackend", "MWMSConfig"), _backend_classes()))
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def worker_entry(config: dict) -> None:
    """Each worker's loop (tinyray/worker.py), imported where it runs: the worker's data starts
    loading first, and TensorFlow's import (~3 s) and the model's construction overlap it."""
    import ray.train

    from tinyray.data.pipeline import WorkerData

    ctx = ray.train.get_context()
    loads = WorkerData(TrainConfig.from_dict(config["train"]), ctx.get_world_rank(), ctx.get_world_size())
    from tinyray.worker import train_worker

    train_worker(config, loads)


def build_trainer(cfg: TrainConfig, manifest: dict, opts: StorageOptions, callbacks=(), board=None, loop=None):
    """The trainer of one run: Ray Train's DataParallelTrainer with MultiWorkerMirroredStrategy's
    TF_CONFIG on each worker (what TensorflowTrainer is, without importing TensorFlow here).
    ``loop``: another per-worker function in place of ``worker_entry`` (the input tests' probe)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from tinyray.data.pipeline import IngestConfig, data_config, steps_per_epoch, train_datasets

    fs, path = storage.filesystem(cfg.storage, opts, ship=True)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.gpus_per_worker:
        resources["GPU"] = cfg.gpus_per_worker
    summary = {"num_classes": len(manifest["classes"]), "classes": manifest["classes"],
               "train_count": manifest["train"]["count"], "val_count": manifest["val"]["count"]}
    return DataParallelTrainer(
        loop or worker_entry,
        backend_config=__getattr__("MWMSConfig")(),
        train_loop_config={"train": cfg.to_dict(), "num_classes": summary["num_classes"],
                           "steps": steps_per_epoch(manifest["train"]["count"], cfg.batch_size, cfg.workers,
                                                    cfg.replicas_per_worker),
                           "manifest_summary": summary, "provenance": provenance(manifest),
                           "board": board},  # where rank 0 posts its epoch lines (progress.ProgressPrinter)
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        datasets=train_datasets(cfg.data, manifest, opts, IngestConfig(cache=cfg.cache)),
        dataset_config=data_config(),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            # Two kept checkpoints: the latest for resuming, one before it in case the latest
            # upload was cut short.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )


def provenance(manifest: dict) -> dict:
    """Where a run came from: the git commit of the code that ran it (with whether it had
    uncommitted changes; None outside a checkout), the versions, and the dataset's digest (of
    the manifest's canonical JSON, which names every shard)."""
    import hashlib
    import importlib.metadata
    import os
    import platform
    import subprocess

    import tinyray

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(tinyray.__file__)))

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", checkout, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    # Only the checkout tinyray itself was imported from counts (not, say, a repo holding a venv).
    ours = git("rev-parse", "--show-toplevel") == checkout
    commit = git("rev-parse", "HEAD") if ours else None
    return {
        "git_commit": commit,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "versions": {"tinyray": tinyray.__version__, "ray": importlib.metadata.version("ray"),
                     "tensorflow": importlib.metadata.version("tensorflow"),
                     "tf-keras": importlib.metadata.version("tf-keras"), "python": platform.python_version()},
        "manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
    }


def prepare(cfg: TrainConfig, opts: StorageOptions) -> dict:
    """What is checked before any worker starts: the dataset's manifest (returned), and that the
    run folder holds no checkpoint of another training."""
    from tinyray.data.stage import load_manifest

    manifest = load_manifest(cfg.data, opts)
    check_resumable(cfg, len(manifest["classes"]), last_checkpoint_state(cfg, opts))
    return manifest


def fit_bounded(trainer, watch, every: float = 2.0) -> None:
    """``trainer.fit()``, ended when its workers wait for a placement longer than ``watch``'s bound
    (a ``cluster.ResourceWatch``): then ``TinyrayError(watch.reason)``.

    Train V2 retries a worker group it cannot place without end, and its own abort (the SIGINT
    handler ``fit`` installs) waits on a controller that is itself waiting for the placement. So
    a poll thread kills the controller that created the late placement group and removes the
    group, and ``fit`` returns with the controller's death, which is explained here."""
    import signal
    import sys
    import threading

    from tinyray.cluster import stop_late_group

    done = threading.Event()
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None

    def poll():
        errors = 0
        while not done.wait(every):
            try:
                if watch.poll():
                    stop_late_group(watch.late_group or {})
                    return
            except Exception as e:  # noqa: BLE001 - a GCS hiccup: the next poll asks again
                errors += 1
                if errors == 1:
                    print(f"tinyray: the wait for this run's workers is not watched for now: {e}",
                          file=sys.stderr, flush=True)

    threading.Thread(target=poll, daemon=True, name="tinyray-resource-watch").start()
    try:
        trainer.fit()
    except Exception:
        if watch.reason:
            raise TinyrayError(watch.reason) from None
        raise
    finally:
        done.set()
        if previous is not None:  # fit's handler would abort a controller that is gone
            signal.signal(signal.SIGINT, previous)


def train_on_ray(cfg: TrainConfig, opts: StorageOptions, callbacks=(), manifest: dict | None = None,
        board=None, resources=None) -> TrainResult:
    """Train ``cfg`` on the connected Ray cluster; return what its run folder's result.json holds.

    The one code path for ``tinyray train`` and for every Tune trial (which passes Tune's report
    callback; Tune's stopper watches its placements). ``resources``: a ``cluster.ResourceWatch``
    that bounds the wait for this run's workers (see ``fit_bounded``). A
    failure is one line, the same everywhere it is shown."""
    import os

    # Train's controller polls its workers every 2 s by default, so a finished run was noticed
    # ~3 s late (measured per trial); 0.5 s halves a trial's teardown. Read from this process's
    # environment and passed on to the controller by Ray Train.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    trainer = build_trainer(cfg, manifest or prepare(cfg, opts), opts, callbacks, board)
    try:
        if resources is not None:
            fit_bounded(trainer, resources)
        else:
            trainer.fit()
    except TinyrayError as e:
        raise TinyrayError(f"training {cfg.run_name} stopped: {e}") from None
    except Exception as e:  # noqa: BLE001 - explained in one line; the cause stays chained
        raise explain_training_error(e, cfg, opts) from e
    run_dir = cfg.run_dir
    return TrainResult(run_dir, json.loads(storage.read_bytes(storage.join(run_dir, RESULT_FILE), opts)))


def train_command(cfg: TrainConfig, opts: StorageOptions | None = None, address: str | None = None,
                 verbose: bool = False, mlflow: str | None = None) -> TrainResult:
    """``tinyray train``: check the config's data and run folder, connect to (or start) Ray, check
    the run fits, ``train_on_ray`` it, with a line per epoch (and a progress bar on a terminal).
    With ``mlflow`` (a tracking URI) the run, finished or failed, is logged there from here."""
    opts = (opts or StorageOptions.from_env(cfg.endpoint_url)).for_bucket(cfg.data)
    if mlflow:
        from tinyray.tracking import check_tracking

        check_tracking(mlflow)  # before Ray starts
    manifest = prepare(cfg, opts)
    if mlflow:
        try:
            out = _train_command(cfg, opts, manifest, address, verbose)
        except TinyrayError as e:
            track_train(mlflow, cfg, opts, {"config": cfg.to_dict(), "provenance": provenance(manifest)}, str(e))
            raise
        track_train(mlflow, cfg, opts, out.result)
        return out
    return _train_command(cfg, opts, manifest, address, verbose)


def track_train(uri: str, cfg: TrainConfig, opts: StorageOptions, result: dict, error: str = "") -> None:
    """``tinyray train --mlflow``: the run in MLflow, its config as params, each epoch's figures
    at step = epoch, result.json and eval.json as artifacts (experiment: the run's --name, else
    its model)."""
    from tinyray.tracking import log_train_run

    artifacts = {}
    for name in (RESULT_FILE, "eval.json"):
        try:
            artifacts[name] = storage.read_bytes(storage.join(cfg.run_dir, name), opts)
        except FileNotFoundError:
            pass
    page = log_train_run(uri, cfg.name or f"tinyray-train-{cfg.model}", result, cfg.run_dir,
                         "failed" if error else "completed", error, artifacts)
    print(f"mlflow: the run at {page}", flush=True)


def _train_command(cfg: TrainConfig, opts: StorageOptions, manifest: dict, address: str | None,
                   verbose: bool) -> TrainResult:
    from tinyray.cluster import ResourceWatch, cluster_nodes, ensure_ray, running_autoscaler_config
    from tinyray.resources import check_fits, check_shared_storage, cluster_capacity
    from tinyray.progress import ProgressPrinter

    ensure_ray(opts, address, verbose=verbose)
    live, autoscaler = cluster_nodes(), running_autoscaler_config()
    check_shared_storage(cfg.storage, len(live) > 1 or bool(autoscaler))
    check_fits(cfg, *cluster_capacity(live, autoscaler))
    print(f"training {cfg.run_name}: {cfg.workers} worker(s) × {cfg.cpus_per_worker:g} CPU"
          + (f" + {cfg.gpus_per_worker:g} GPU" if cfg.gpus_per_worker else ""), flush=True)
    resources = ResourceWatch(autoscaling=bool(autoscaler), who="its workers")
    with ProgressPrinter() as printer:
        out = train_on_ray(cfg, opts, manifest=manifest, board=printer.handle, resources=resources)
    print(f"run folder: {out.run_dir}")
    return out


# Ray Train's record of a run's registered checkpoints, in the run folder.
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def last_checkpoint_state(cfg: TrainConfig, opts: StorageOptions) -> dict | None:
    """state.json of the last checkpoint Ray Train registered in this run's folder, or None
    for a new run (or a snapshot this Ray version writes differently: then Ray decides)."""
    run_dir = cfg.run_dir
    try:
        snapshot = json.loads(storage.read_bytes(storage.join(run_dir, CHECKPOINT_SNAPSHOT), opts))
        name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        return json.loads(storage.read_bytes(storage.join(run_dir, name, STATE_FILE), opts))
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def check_resumable(cfg: TrainConfig, num_classes: int, state: dict | None) -> None:
    """A rerun resumes the run folder's checkpoint; one of another model or class count (the
    same --name reused) cannot be resumed: say so before any worker starts."""
    if not state or "model" not in state:
        return
    if (state["model"], state["num_classes"]) != (cfg.model, num_classes):
        raise TinyrayError(
            f"{cfg.run_dir} holds a checkpoint of {state['model']} with {state['num_classes']} classes, "
            f"not {cfg.model} with {num_classes}: give another --name or --storage")


def explain_training_error(e: BaseException, cfg: TrainConfig, opts: StorageOptions) -> TinyrayError:
    """The one line a failed run ends in, for the console and for the report alike."""
    text = f"{type(e).__name__}: {e}"
    if any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "EndpointConnectionError",
                               "Connection refused", "curlCode: 7")):
        return TinyrayError(
            f"training stopped: the object store at {opts.describe()} became unreachable; "
            f"rerun with the same --storage to resume from the last checkpoint"
        )
    ours = tinyray_message(text)
    if ours:  # a worker's own one-line verdict (a data stall, …) stands as it is
        return TinyrayError(f"training {cfg.run_name} stopped: {ours}")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TinyrayError(f"training {cfg.run_name} failed after {cfg.max_failures} retries: {first[:300]}")
