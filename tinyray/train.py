"""Train one model across workers: Ray Train's TensorflowTrainer with MultiWorkerMirroredStrategy.

``train_loop_per_worker`` runs on every worker: strategy → this worker's data shard → model and
optimizer built in the strategy's scope → one ``fit`` epoch at a time → validation counted over
all workers → a checkpoint and a metrics report per epoch. ``run_training`` builds the trainer,
runs it and writes the run folder::

    <storage>/<run name>/
        checkpoint_*/            per epoch: weights + optimizer state + state.json (history)
        result.json              model, config (no secrets), per-epoch metrics, params, wall time
        model/model.keras        the final model, for tf_keras.models.load_model
        model/classes.json       label index → wnid and name, and the training config

    from tinyray.config import TrainConfig
    from tinyray.train import run_training
    run_training(TrainConfig(model="model2", data="s3://bucket/tiny-imagenet", workers=2))
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from tinyray.config import TrainConfig
from tinyray.data import storage
from tinyray.data.pipeline import IngestConfig
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError

STATE_FILE = "state.json"
CKPT_PREFIX = "ckpt"
EPOCH_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
              "epoch_seconds", "images_per_second")


# ------------------------------------------------------------------------------ pure helpers


def make_optimizer(keras, name: str, lr: float, momentum: float = 0.9):
    """The four optimizers the seed compared (it chose Adam at 1e-4)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "nadam":
        return keras.optimizers.Nadam(learning_rate=lr)
    raise TinyrayError(f"unknown optimizer {name!r}")


# CPU kept free beside a run's Train workers for Ray Data's Parquet reads: workers holding every
# CPU would leave the reads unschedulable and the run would hang.
DATA_CPUS = IngestConfig.read_cpus


def check_fits(cfg: TrainConfig, nodes: list[dict], max_nodes: list[dict] | None = None) -> None:
    """Refuse, before any worker starts, a run the cluster could never hold.

    ``nodes`` are the resource dicts of the cluster's nodes; ``max_nodes`` adds the nodes an
    autoscaler could still start. A worker's bundle must fit on one node, and all workers plus
    ``DATA_CPUS`` for Ray Data's reads in the cluster's total.
    """
    candidates = list(nodes) + list(max_nodes or [])
    need = {"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}

    def fits(node):
        return all(node.get(k, 0) >= v for k, v in need.items() if v)

    if not any(fits(n) for n in candidates):
        biggest = max(candidates, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise TinyrayError(
            f"one worker needs {cfg.cpus_per_worker:g} CPU and {cfg.gpus_per_worker:g} GPU, but the "
            f"largest node has {biggest.get('CPU', 0):g} CPU and {biggest.get('GPU', 0):g} GPU"
        )
    for key, per in need.items():
        total = sum(n.get(key, 0) for n in candidates)
        if per and per * cfg.workers > total:
            raise TinyrayError(
                f"{cfg.workers} workers × {per:g} {key} = {per * cfg.workers:g} {key}, more than the "
                f"cluster could ever hold ({total:g} {key})"
            )
    total_cpu = sum(n.get("CPU", 0) for n in candidates)
    if cfg.cpus_per_worker * cfg.workers + DATA_CPUS > total_cpu + 1e-9:
        raise TinyrayError(
            f"{cfg.workers} workers × {cfg.cpus_per_worker:g} CPU take all {total_cpu:g} CPUs, leaving none "
            f"for Ray Data's reads ({DATA_CPUS:g} CPU): lower --cpus-per-worker or --workers"
        )


def thread_counts(cpus_per_worker: float) -> tuple[int, int]:
    """TF (intra-op, inter-op) threads for a worker's CPU allotment. TF's default is one
    thread per core of the machine, which oversubscribes a node shared by several workers."""
    n = max(1, int(cpus_per_worker))
    return n, max(1, min(n, 2))


# ------------------------------------------------------------------------- on every worker


def _setup_tensorflow(cfg: TrainConfig):
    """Threads, GPUs and precision: must run before TensorFlow's runtime starts in this process."""
    from tinyray.tfk import keras, tf

    intra, inter = thread_counts(cfg.cpus_per_worker)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    gpus = tf.config.list_physical_devices("GPU")
    # Ray's fake multi-node provider (cluster/fake-gpu.yaml) advertises GPUs no device backs;
    # anywhere else a GPU worker without a visible GPU is a broken image, and training on its
    # CPU would silently be ~50x slower.
    if cfg.gpus_per_worker > 0 and not gpus and os.environ.get("TINYRAY_ALLOW_MISSING_GPU") != "1":
        raise TinyrayError("this worker was given a GPU but TensorFlow sees none (CUDA libraries missing?)")
    for gpu in gpus:
        # Ray gives each worker its own GPU via CUDA_VISIBLE_DEVICES; growth keeps TF from
        # reserving all memory when fractional GPUs share one device.
        tf.config.experimental.set_memory_growth(gpu, True)
    keras.mixed_precision.set_global_policy(cfg.precision)
    keras.utils.set_random_seed(cfg.seed)
    return tf, keras


def _make_eval_step(tf, keras, strategy, model):
    """Sums (loss, top-1 hits, top-5 hits, count) over one local val batch.

    It runs inside ``strategy.run`` (replica context): reading BatchNorm's ON_READ statistics
    from cross-replica context would start a collective, and workers evaluate different numbers
    of batches, so such a collective would hang.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction="none")

    def step(x, y):
        probs = tf.cast(model(x, training=False), tf.float32)
        y = tf.cast(y, tf.int32)
        k5 = min(5, probs.shape[-1])
        return tf.stack([
            tf.reduce_sum(loss_fn(y, probs)),
            tf.reduce_sum(tf.cast(tf.math.in_top_k(y, probs, 1), tf.float32)),
            tf.reduce_sum(tf.cast(tf.math.in_top_k(y, probs, k5), tf.float32)),
            tf.cast(tf.shape(y)[0], tf.float32),
        ])

    @tf.function
    def run(x, y):
        return strategy.run(step, args=(x, y))

    return run


def weights_digest(model) -> int:
    """CRC32 of a model's trainable weights, as this worker holds them."""
    import zlib

    crc = 0
    for w in model.trainable_weights:
        crc = zlib.crc32(w.numpy().tobytes(), crc)
    return crc


def write_checkpoint(ckpt, directory: str, state: dict) -> None:
    """Weights + optimizer state (``ckpt``, a tf.train.Checkpoint) and the run's state.json."""
    ckpt.write(os.path.join(directory, CKPT_PREFIX))
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f)


def read_checkpoint(strategy, model, ckpt, directory: str) -> dict:
    """Restore what ``write_checkpoint`` wrote, now, and return its state.json.

    The optimizer's slot variables are created first: tf.train.Checkpoint restores variables
    that do not exist yet lazily, when the first training step creates them, and by then a
    checkpoint that Ray downloaded from S3 has left its temporary folder. Every variable that
    exists must match one in the checkpoint, so a checkpoint of another model fails here.
    """
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    ckpt.read(os.path.join(directory, CKPT_PREFIX)).assert_existing_objects_matched().expect_partial()
    with open(os.path.join(directory, STATE_FILE)) as f:
        return json.load(f)


def train_loop_per_worker(config: dict) -> None:
    import numpy as np
    import ray.train

    from tinyray.data.pipeline import (eval_batches, load_into_memory, memory_train_dataset, rank_of,
                                       stream_train_dataset)
    from tinyray.models import create_model

    cfg = TrainConfig.from_dict(config["train"])
    tf, keras = _setup_tensorflow(cfg)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ingest = IngestConfig(cache=cfg.cache)

    t0 = time.perf_counter()
    val_images, val_labels = load_into_memory(
        ray.train.get_dataset_shard("val"), ingest, keep=lambda f: rank_of(f, world) == rank)
    steps = config["steps_per_epoch"]

    with strategy.scope():
        model = create_model(cfg.model, num_classes=config["num_classes"], weights=cfg.weights,
                             freeze_base=cfg.freeze_base)
        optimizer = make_optimizer(keras, cfg.optimizer, cfg.lr, cfg.momentum)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=cfg.xla)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)

    history: list[dict] = []
    start_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            state = read_checkpoint(strategy, model, ckpt, d)
        history, start_epoch = state["history"], state["epochs_done"]
        print(f"rank {rank}: resuming {cfg.run_name} after epoch {start_epoch}", flush=True)

    train_shard = ray.train.get_dataset_shard("train")
    if cfg.cache == "memory":
        images, labels = load_into_memory(train_shard, ingest)
        train_ds = memory_train_dataset(images, labels, cfg.batch_size, seed=cfg.seed * 1000 + rank,
                                        first_epoch=start_epoch, flip=cfg.flip)
    else:
        train_ds = stream_train_dataset(train_shard, cfg.batch_size, seed=cfg.seed * 1000 + rank, flip=cfg.flip)
    load_seconds = time.perf_counter() - t0

    eval_step = _make_eval_step(tf, keras, strategy, model)
    all_reduce = tf.function(lambda v: strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(v,)), axis=None))

    class EpochEnd(keras.callbacks.Callback):
        """Validate over all workers, checkpoint and report, once per epoch (inside one ``fit``
        so the train iterator and its shuffling carry on from epoch to epoch)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            train_seconds = time.perf_counter() - self.t_epoch
            sums = np.zeros(4, np.float32)
            for x, y in eval_batches(val_images, val_labels, cfg.batch_size):
                sums += strategy.experimental_local_results(eval_step(x, y))[0].numpy()
            loss_sum, top1, top5, count = all_reduce(tf.constant(sums)).numpy()
            # MWMS keeps replicas identical; check it cheaply every epoch: a digest of this
            # worker's trainable weights, summed with its square over all workers, has zero
            # variance exactly when every worker holds the same weights.
            digest = float(weights_digest(model) % 65521)
            n, s1, s2 = all_reduce(tf.constant([1.0, digest, digest * digest], tf.float64)).numpy()
            metrics = {
                "epoch": epoch + 1,
                "train_loss": float(logs["loss"]),
                "train_accuracy": float(logs["accuracy"]),
                "val_loss": float(loss_sum / max(count, 1)),
                "val_accuracy": float(top1 / max(count, 1)),
                "val_top5_accuracy": float(top5 / max(count, 1)),
                "val_count": int(round(count)),
                "epoch_seconds": time.perf_counter() - self.t_epoch,
                "images_per_second": steps * cfg.global_batch / train_seconds,
                "data_load_seconds": load_seconds if epoch == start_epoch else 0.0,
                "resumed_from_epoch": start_epoch,
                # Restored with the weights, so a resumed run continues the count: the test
                # that optimizer state survived a restart.
                "optimizer_step": int(model.optimizer.iterations.numpy()),
                "world_size": int(round(n)),
                "replicas_in_sync": bool(abs(s2 / n - (s1 / n) ** 2) < 0.5),
            }
            history.append(metrics)
            # Every worker writes (MWMS reads ON_READ variables with a collective while
            # saving); only rank 0's copy is reported, the others' folders are dropped.
            with tempfile.TemporaryDirectory() as d:
                write_checkpoint(ckpt, d, {"model": cfg.model, "num_classes": config["num_classes"],
                                           "epochs_done": epoch + 1, "history": history})
                checkpoint = ray.train.Checkpoint.from_directory(d) if rank == 0 else None
                ray.train.report(metrics, checkpoint=checkpoint)

    if start_epoch < cfg.epochs:
        model.fit(train_ds, epochs=cfg.epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
                  callbacks=[EpochEnd()], verbose=0)


# ------------------------------------------------------------------------------ the driver


@dataclass
class TrainResult:
    run_dir: str  # URI of the run folder
    result: dict  # what result.json holds


def ensure_ray(opts: StorageOptions, address: str | None = None, driver_slots: bool = False) -> None:
    """Connect to (or start) Ray with the storage settings in every worker's environment.

    Credentials travel in the runtime environment, never in a config or a log line. A local
    Ray started here for a sweep gets ``tinyray_driver`` slots (one per CPU) for Tune's trial
    drivers, as the head node of the cluster configs in cluster/ does.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    env = {**opts.to_env(), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Inside `ray job submit`, Ray refuses a driver runtime_env that sets a variable the job's
    # own runtime_env (--runtime-env-json) already sets: the job's value stands.
    job_env = job_runtime_env_vars()
    env = {k: v for k, v in env.items() if k not in job_env}
    kwargs = {}
    if address == "local" and driver_slots:
        kwargs["resources"] = {"tinyray_driver": os.cpu_count() or 1}
    ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
    if address == "local":
        repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)


CURRENT_CLUSTER_FILE = "/tmp/ray/ray_current_cluster"


def repoint_stale_cluster_file(gcs_address: str, path: str = CURRENT_CLUSTER_FILE) -> bool:
    """Point Ray's "current cluster" file at this local cluster when it names a dead one.

    Ray Train's placement-group cleaner finds its cluster through this file (its processes have
    no RAY_ADDRESS). A file left by an earlier, stopped `ray start` names a GCS that no longer
    answers; the cleaner then dies, and a Tune trial stopped early (ASHA) keeps its workers'
    CPUs/GPUs forever, starving the rest of the sweep. A file naming a live cluster is left alone.
    Returns whether the file was rewritten.
    """
    import socket

    try:
        with open(path) as f:
            named = f.read().strip()
    except OSError:
        return False
    if not named or named == gcs_address:
        return False
    host, _, port = named.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False  # someone's live cluster
    except (OSError, ValueError):
        pass
    with open(path, "w") as f:
        f.write(gcs_address)
    return True


def job_runtime_env_vars() -> dict:
    """env_vars of the runtime environment `ray job submit` gave this driver, if any."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    return dict((job.get("runtime_env") or {}).get("env_vars") or {})


def cluster_nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def build_trainer(cfg: TrainConfig, manifest: dict, opts: StorageOptions, callbacks=None):
    """The TensorflowTrainer for one run (used directly and by each Tune trial)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from tinyray.data.pipeline import data_config, steps_per_epoch, train_datasets

    steps = steps_per_epoch(manifest["train"]["count"], cfg.batch_size, cfg.workers)
    fs, path = storage.filesystem(cfg.storage, opts)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.gpus_per_worker:
        resources["GPU"] = cfg.gpus_per_worker
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "num_classes": len(manifest["classes"]),
                           "steps_per_epoch": steps},
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
            callbacks=callbacks or [],
        ),
    )


def run_dir_uri(cfg: TrainConfig) -> str:
    return storage.join(cfg.storage, cfg.run_name)


# Ray Train's record of a run's registered checkpoints, in the run folder.
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def last_checkpoint_state(cfg: TrainConfig, opts: StorageOptions) -> dict | None:
    """state.json of the last checkpoint Ray Train registered in this run's folder, or None
    for a new run (or a snapshot this Ray version writes differently: then Ray decides)."""
    run_dir = run_dir_uri(cfg)
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
            f"{run_dir_uri(cfg)} holds a checkpoint of {state['model']} with {state['num_classes']} classes, "
            f"not {cfg.model} with {num_classes}: give another --name or --storage")


def run_training(cfg: TrainConfig, opts: StorageOptions | None = None, address: str | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; write result.json and the final model; return both."""
    from tinyray.data.stage import load_manifest

    opts = opts or StorageOptions.from_env(cfg.endpoint_url)
    manifest = load_manifest(cfg.data, opts)  # no manifest → one clear line, before Ray starts
    check_resumable(cfg, len(manifest["classes"]), last_checkpoint_state(cfg, opts))
    ensure_ray(opts, address)
    check_fits(cfg, cluster_nodes())
    started = time.perf_counter()
    trainer = build_trainer(cfg, manifest, opts)
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - explained in one line below, cause kept for --debug
        raise explain_training_error(e, cfg, opts) from e
    out = finish_run(cfg, manifest, result.checkpoint, time.perf_counter() - started, opts)
    print(f"run folder: {out.run_dir}")
    return out


def explain_training_error(e: BaseException, cfg: TrainConfig, opts: StorageOptions) -> TinyrayError:
    text = f"{type(e).__name__}: {e}"
    if any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "EndpointConnectionError",
                               "Connection refused", "curlCode: 7")):
        return TinyrayError(
            f"training stopped: the object store at {opts.describe()} became unreachable; "
            f"rerun with the same --storage to resume from the last checkpoint"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TinyrayError(f"training {cfg.run_name} failed after {cfg.max_failures} retries: {first[:300]}")


def finish_run(cfg: TrainConfig, manifest: dict, checkpoint, wall_seconds: float,
               opts: StorageOptions) -> TrainResult:
    """From the last checkpoint: result.json and the final model in the run folder."""
    from tinyray.models import create_model
    from tinyray.tfk import tf

    if checkpoint is None:
        raise TinyrayError(f"run {cfg.run_name} reported no checkpoint")
    run_dir = run_dir_uri(cfg)
    with checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as out:
        state = json.load(open(os.path.join(d, STATE_FILE)))
        model = create_model(cfg.model, num_classes=len(manifest["classes"]))
        tf.train.Checkpoint(model=model).read(os.path.join(d, CKPT_PREFIX)).expect_partial()
        os.makedirs(os.path.join(out, "model"))
        model.save(os.path.join(out, "model", "model.keras"))
        public = public_config(cfg)
        with open(os.path.join(out, "model", "classes.json"), "w") as f:
            json.dump({"classes": manifest["classes"], "config": public}, f, indent=1)
        result = {
            "model": cfg.model,
            "run": cfg.run_name,
            "config": public,
            "epochs": [{k: m[k] for k in EPOCH_KEYS + ("val_count", "resumed_from_epoch", "optimizer_step")} for m in state["history"]],
            "params": int(model.count_params()),
            "wall_seconds": wall_seconds,
            "global_batch": cfg.global_batch,
            "train_count": manifest["train"]["count"],
            "val_count": manifest["val"]["count"],
        }
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        upload_dir(out, run_dir, opts)
    return TrainResult(run_dir, result)


def public_config(cfg: TrainConfig) -> dict:
    """The config as it may be shown anywhere: it never holds credentials (they live only in
    the environment), and the endpoint is kept since it is needed to reproduce the run."""
    return cfg.to_dict()


def upload_dir(local: str, uri: str, opts: StorageOptions) -> None:
    """Copy a local folder's files into a run folder (local path or s3://)."""
    for dirpath, _, files in os.walk(local):
        for name in files:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local)
            if storage.is_s3(uri):
                with open(src, "rb") as f:
                    storage.write_bytes(storage.join(uri, rel), f.read(), opts)
            else:
                dst = os.path.join(uri, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)


def print_epoch_table(result: dict, out=sys.stdout) -> None:
    for e in result["epochs"]:
        print(f"epoch {e['epoch']:3d}  loss {e['train_loss']:.4f}  acc {e['train_accuracy']:.3f}  "
              f"val_loss {e['val_loss']:.4f}  val_acc {e['val_accuracy']:.3f}  top5 {e['val_top5_accuracy']:.3f}  "
              f"{e['epoch_seconds']:.1f}s  {e['images_per_second']:.0f} img/s", file=out)
