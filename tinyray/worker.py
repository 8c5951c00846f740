"""What runs on every Ray Train worker, read as Ray's examples read: set up TensorFlow → build
the model in MultiWorkerMirroredStrategy's scope (resuming from a checkpoint) → load this
worker's data → ``fit`` with ``EpochEnd``, which validates over all workers, checkpoints and
reports once per epoch → write result.json and model/ (rank 0).

``tinyray.train`` builds the Ray Train trainer whose workers run ``train_worker``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from tinyray.config import PREEMPTED, RESULT_FILE, STATE_FILE, TrainConfig
from tinyray.console import epoch_line
from tinyray.progress import progress_callback
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.evaluate import EVAL_FILE, class_report
from tinyray.tfk import keras, tf

CKPT_PREFIX = "ckpt"
EPOCH_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
              "val_count", "epoch_seconds", "train_images", "global_batch", "replica_batch_min", "replica_batch_max",
              "images_per_second", "data_load_seconds", "resumed_from_epoch", "resumed_at_step", "optimizer_step", "lr")


# ------------------------------------------------------------------------------ pure helpers


def epoch_metrics(epoch: int, logs: dict, val_sums, sync_sums, train_seconds: float, epoch_seconds: float,
                  counts, load_seconds: float, start_epoch: int, optimizer_step: int,
                  start_step: int = 0, lr: float | None = None, carried=(0, 0)) -> dict:
    """One epoch's report from what the workers summed.

    ``val_sums`` = (loss sum, top-1 hits, top-5 hits, count) over every worker's val images;
    ``sync_sums`` = (workers, Σ digest, Σ digest²) of the workers' weight digests — zero variance
    exactly when every worker holds the same weights; ``counts`` = (images, steps, smallest and
    largest batch) that the replicas' train steps received this attempt (``ImageCount``, images
    summed over every replica, steps those of one replica, which all take the same);
    ``carried`` = (images, steps) of this epoch counted before a preemption checkpoint that this
    attempt resumed from. ``epoch`` counts from 0, as Keras does.
    """
    loss_sum, top1, top5, count = (float(v) for v in val_sums)
    n, s1, s2 = (float(v) for v in sync_sums)
    images, steps, smallest, largest = (int(round(float(v))) for v in counts)
    total, total_steps = images + int(carried[0]), steps + int(carried[1])
    per = max(count, 1.0)
    return {
        "epoch": epoch + 1,
        "train_loss": float(logs["loss"]),
        "train_accuracy": float(logs["accuracy"]),
        "val_loss": loss_sum / per,
        "val_accuracy": top1 / per,
        "val_top5_accuracy": top5 / per,
        "val_count": int(round(count)),
        "epoch_seconds": epoch_seconds,
        # counted in the train step, not derived from the config: what the replicas received
        "train_images": total,
        "global_batch": total // total_steps if total_steps else 0,
        "replica_batch_min": smallest,
        "replica_batch_max": largest,
        "images_per_second": images / train_seconds,  # this attempt's images in this attempt's time
        "data_load_seconds": load_seconds if epoch == start_epoch else 0.0,
        "resumed_from_epoch": start_epoch,
        # > 0 when this attempt began inside that epoch: a checkpoint saved on a preemption notice
        "resumed_at_step": start_step,
        # Restored with the weights, so a resumed run continues the count: the test that
        # optimizer state survived a restart.
        "optimizer_step": optimizer_step,
        # The lr of the next step, from the schedule at optimizer_step: a resumed run's curve
        # continues where it was (recipe.lr_at).
        "lr": lr,
        "world_size": int(round(n)),
        "replicas_in_sync": bool(abs(s2 / n - (s1 / n) ** 2) < 0.5),
    }


def weights_digest(model) -> int:
    """CRC32 of a model's trainable weights, as this worker holds them (mod 65521, so that its
    square sums exactly in float64)."""
    import zlib

    crc = 0
    for w in model.trainable_weights:
        crc = zlib.crc32(w.numpy().tobytes(), crc)
    return crc % 65521


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


# ------------------------------------------------------------------------- on every worker


def setup_tensorflow(cfg: TrainConfig) -> None:
    """Threads, GPUs and precision: must run before TensorFlow's runtime starts in this process."""
    from tinyray.resources import thread_counts

    intra, inter = thread_counts(cfg.cpus_per_worker)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    gpus = tf.config.list_physical_devices("GPU")
    # Ray's fake multi-node provider (cluster/fake-gpu.yaml) advertises GPUs no device backs;
    # anywhere else a GPU worker without a visible GPU is a broken image, and training on its
    # CPU would silently be ~50x slower.
    if cfg.gpus_per_worker > 0 and not gpus and os.environ.get("TINYRAY_ALLOW_MISSING_GPU") != "1":
        from tinyray.doctor import tf_loader_notes

        raise TinyrayError(f"this worker was given a GPU but TensorFlow sees none: {tf_loader_notes()}")
    for gpu in gpus:
        # Ray gives each worker its own GPU via CUDA_VISIBLE_DEVICES; growth keeps TF from
        # reserving all memory when fractional GPUs share one device.
        tf.config.experimental.set_memory_growth(gpu, True)
    keras.mixed_precision.set_global_policy(cfg.precision)
    keras.utils.set_random_seed(cfg.seed)


def all_reduce(cfg: TrainConfig, gpus_visible: int) -> str:
    """How MultiWorkerMirroredStrategy all-reduces the gradients: NCCL between workers that each
    hold whole GPUs (its AUTO means RING — host memory and gRPC — unless NCCL is asked for), RING
    otherwise: on CPUs, for workers sharing a GPU, where NCCL refuses two ranks on one device, and
    where no GPU is visible after all (Ray's fake GPUs, TINYRAY_ALLOW_MISSING_GPU)."""
    return "NCCL" if cfg.workers > 1 and cfg.gpus_per_worker >= 1 and gpus_visible else "RING"


def make_strategy(cfg: TrainConfig):
    """MultiWorkerMirroredStrategy with ``all_reduce``, checked to run one replica per GPU."""
    gpus = len(tf.config.list_physical_devices("GPU"))
    implementation = getattr(tf.distribute.experimental.CommunicationImplementation, all_reduce(cfg, gpus))
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    replicas = strategy.num_replicas_in_sync // cfg.workers
    if replicas != cfg.replicas_per_worker:
        raise TinyrayError(f"this worker runs {replicas} replica(s), but gpus_per_worker {cfg.gpus_per_worker:g} "
                           f"means {cfg.replicas_per_worker}: TensorFlow sees {gpus} GPU(s) here")
    return strategy


def per_replica_input(strategy, dataset):
    """``dataset`` (this worker's, already sharded by Ray, in per-replica batches) as the input of
    ``fit``. Handed to ``fit`` as it is, Keras would call ``experimental_distribute_dataset``,
    which reads each element as the *global* batch and gives every replica 1/replicas of it:
    each replica trained on batch/W images and an epoch covered 1/W of the data. From a function,
    each of this worker's replicas takes whole elements."""
    return strategy.distribute_datasets_from_function(lambda context: dataset)


class ImageCount:
    """What each replica's train step received, counted inside the step: images, steps, and the
    smallest and largest batch since ``reset``. Wraps the model's ``train_step``; a variable of its
    own (not Keras' metrics, whose logs ``fit`` all-reduces value by value on every step), read
    per replica only when asked (``CrossWorkerSums.counts``), so no step waits for the host."""

    FRESH = (0.0, 0.0, 2.0 ** 52, 0.0)  # images, steps, smallest batch, largest batch

    def __init__(self, strategy, model):
        self.strategy = strategy
        with strategy.scope():
            self.var = tf.Variable(self.FRESH, dtype=tf.float64, trainable=False,
                                   synchronization=tf.VariableSynchronization.ON_READ,
                                   aggregation=tf.VariableAggregation.SUM)
        inner, var = model.train_step, self.var

        def train_step(data):
            b = tf.cast(tf.shape(tf.nest.flatten(data)[0])[0], tf.float64)
            c = tf.identity(var)  # this replica's copy (replica context)
            var.assign(tf.stack([c[0] + b, c[1] + 1.0, tf.minimum(c[2], b), tf.maximum(c[3], b)]))
            return inner(data)

        model.train_step = train_step

    def reset(self) -> None:
        # Each replica's copy by itself: assigning a SUM variable from cross-replica context would
        # divide the value among the replicas.
        for v in self.strategy.experimental_local_results(self.var):
            v.assign(self.FRESH)


class CrossWorkerSums:
    """The cross-worker sums an epoch needs: val metrics and the replicas' weight digests.

    Validation runs inside ``strategy.run`` (replica context): reading BatchNorm's ON_READ
    statistics from cross-replica context would start a collective, and workers evaluate
    different numbers of batches, so such a collective would hang. Only the final sums cross
    workers, in one all-reduce that every worker joins.
    """

    def __init__(self, strategy, model, val_images: np.ndarray, val_labels: np.ndarray, batch_size: int):
        self.strategy, self.model = strategy, model
        self.val_images, self.val_labels, self.batch_size = val_images, val_labels, batch_size
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

        self._eval_step = tf.function(lambda x, y: strategy.run(step, args=(x, y)))
        k = min(5, model.output_shape[-1])
        self._top_k = tf.function(lambda x: strategy.run(
            lambda v: tf.math.top_k(tf.cast(model(v, training=False), tf.float32), k).indices, args=(x,)))
        self._sum = tf.function(lambda v: strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(v,)), axis=None))
        self._gather = tf.function(lambda var: strategy.gather(
            strategy.run(lambda: tf.reshape(tf.identity(var), [1, -1])), axis=0))

    def counts(self, count: ImageCount) -> tuple[int, int, int, int]:
        """(images, steps, smallest batch, largest batch) over every replica of every worker,
        from what ``count`` counted in their train steps (a collective: every worker calls it)."""
        rows = self._gather(count.var).numpy()  # one row per replica
        steps = rows[:, 1]
        if steps.min() != steps.max():
            raise TinyrayError(f"replicas took different numbers of steps this epoch ({steps.min():.0f} to "
                               f"{steps.max():.0f}): MultiWorkerMirroredStrategy is out of step")
        return int(rows[:, 0].sum()), int(steps[0]), int(rows[:, 2].min()), int(rows[:, 3].max())

    def val_sums(self) -> np.ndarray:
        from tinyray.data.pipeline import eval_batches

        sums = np.zeros(4, np.float32)
        for x, y in eval_batches(self.val_images, self.val_labels, self.batch_size):
            sums += self.strategy.experimental_local_results(self._eval_step(x, y))[0].numpy()
        return self._sum(tf.constant(sums)).numpy()

    def class_tally(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(confusion, top-5 hits per class) of the final model over every worker's val images."""
        from tinyray.data.pipeline import eval_batches
        from tinyray.evaluate import tally

        confusion, hits = np.zeros((num_classes, num_classes)), np.zeros(num_classes)
        for x, y in eval_batches(self.val_images, self.val_labels, self.batch_size):
            c, h = tally(y, self.strategy.experimental_local_results(self._top_k(x))[0].numpy(), num_classes)
            confusion += c
            hits += h
        total = self._sum(tf.constant(np.concatenate([confusion.ravel(), hits]), tf.float64)).numpy()
        return total[:num_classes ** 2].reshape(num_classes, num_classes).round().astype(np.int64), \
            total[num_classes ** 2:].round().astype(np.int64)

    def sync_sums(self) -> np.ndarray:
        digest = float(weights_digest(self.model))
        return self._sum(tf.constant([1.0, digest, digest * digest], tf.float64)).numpy()


class EpochEnd(keras.callbacks.Callback):
    """Validate over all workers, checkpoint and report, once per epoch (inside one ``fit``, so
    the train iterator and its shuffling carry on from epoch to epoch).

    The last epoch is validated here but checkpointed and reported by the train loop after
    ``fit`` returns and the run's results are written: a Tune scheduler may end the trial as
    soon as it sees the last report (ASHA stops a trial at ``max_t``), and rank 0 builds the
    saved model outside ``fit``'s strategy scope, where creating variables would start a
    collective that the other workers never join."""

    _supports_tf_logs = True  # its work is per epoch: no step waits for numpy logs

    def __init__(self, collective: CrossWorkerSums, count: ImageCount, ckpt, state: dict, load_seconds: float,
                 rank: int, epochs: int, board=None, lr=None):
        super().__init__()
        self.lr = lr if callable(lr) else (lambda step, lr=lr: lr)  # a schedule, or the constant
        self.collective, self.count, self.ckpt, self.state = collective, count, ckpt, state
        self.load_seconds, self.rank = load_seconds, rank
        self.start_epoch, self.epochs, self.board = state["epochs_done"], epochs, board
        self.start_step = state.get("step_in_epoch", 0)

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch = time.perf_counter()
        self.count.reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}  # tensors: this callback takes tf logs
        train_seconds = time.perf_counter() - self.t_epoch
        counts = self.collective.counts(self.count)
        val, sync = self.collective.val_sums(), self.collective.sync_sums()
        metrics = epoch_metrics(epoch, logs, val, sync, train_seconds, time.perf_counter() - self.t_epoch,
                                counts, self.load_seconds, self.start_epoch,
                                int(self.model.optimizer.iterations.numpy()), self.start_step,
                                float(self.lr(self.model.optimizer.iterations)), self.state.get("carried", (0, 0)))
        self.state["history"].append(metrics)
        self.state["epochs_done"], self.state["step_in_epoch"], self.state["carried"] = epoch + 1, 0, (0, 0)
        if self.board is not None and self.rank == 0:
            self.board.post.remote(epoch_line(metrics, self.epochs))
        if epoch + 1 < self.epochs:
            checkpoint_and_report(self.ckpt, self.state, self.rank)


class PreemptionCheck(keras.callbacks.Callback):
    """Every ``every`` steps, every worker asks Ray Train whether a node of the run is being
    preempted (a barrier: they all ask at the same step, as MultiWorkerMirroredStrategy keeps them
    in step). On the first notice (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``, or a
    spot interruption turned into one: cluster/spot-drain.sh), a checkpoint of this very step, so
    the run resumes here on another node instead of at the epoch's start. ``offset``: the steps of
    this epoch done before this ``fit`` (a run resumed mid-epoch)."""

    _supports_tf_logs = True  # it reads only the step number: no step waits for numpy logs

    def __init__(self, ckpt, state: dict, rank: int, every: int, steps: int, counted=None):
        super().__init__()
        self.ckpt, self.state, self.rank, self.every, self.steps = ckpt, state, rank, max(1, every), steps
        # () -> (images, steps) this epoch so far, over every replica: kept in the checkpoint so the
        # resumed epoch reports all it trained on
        self.counted = counted or (lambda: (0, 0))
        self.offset, self.saved = 0, False

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1
        # Not at an epoch's last step: its own checkpoint follows at once, with the epoch's metrics
        # (a mid-epoch one there would leave nothing of that epoch to resume).
        if self.saved or step % self.every or step >= self.steps:
            return
        import ray.train

        if ray.train.get_preemption_info() is None:
            return
        self.saved = True
        before = self.state.get("carried", (0, 0)) if self.offset else (0, 0)
        images, steps = self.counted()
        state = {**self.state, "step_in_epoch": step, "carried": (before[0] + images, before[1] + steps)}
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint(self.ckpt, d, state)
            checkpoint = ray.train.Checkpoint.from_directory(d) if self.rank == 0 else None
            # Not an epoch: no metrics, and Tune does not hear it (sweep.TrialReports)
            ray.train.report({PREEMPTED: step, "epoch_in_progress": state["epochs_done"] + 1}, checkpoint=checkpoint)
        hold = float(os.environ.get("TINYRAY_PREEMPTION_HOLD") or PREEMPTION_HOLD)
        if self.rank == 0:
            print(f"preemption notice: checkpoint saved at step {step} of epoch {state['epochs_done'] + 1}; "
                  f"holding up to {hold:g} s for the reclaim", flush=True)
        # Steps trained after this checkpoint are lost when the node goes before the epoch's end
        # (and Ray Train's controller may register that epoch's checkpoint in the same poll as
        # this one, which then is never resumed from): every worker waits, bounded, for the
        # reclaim, then trains on if the node is still there (a drain that was called off).
        time.sleep(hold)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0


# How often (in steps) the workers ask about preemption: each ask is a barrier of all workers.
PREEMPTION_CHECK_STEPS = 20
# How long the workers wait for the reclaim after the notice's checkpoint (seconds; EC2 gives a
# spot node 120 s of notice; TINYRAY_PREEMPTION_HOLD).
PREEMPTION_HOLD = 30


def checkpoint_and_report(ckpt, state: dict, rank: int) -> None:
    """The last epoch of ``state``: a checkpoint, and its metrics reported to Ray Train. Every
    worker writes (MWMS reads ON_READ variables with a collective while saving); only rank 0's
    copy is reported, the others' folders are dropped."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(ckpt, d, state)
        checkpoint = ray.train.Checkpoint.from_directory(d) if rank == 0 else None
        ray.train.report(state["history"][-1], checkpoint=checkpoint)


def train_worker(config: dict, loads=None) -> None:
    """One worker's run. ``loads`` (data.pipeline.WorkerData) was started before TensorFlow was
    imported (train.worker_entry), so that reading and decoding overlap the import and the model's
    construction."""
    import ray.train

    from tinyray.data.pipeline import Augment, WorkerData
    from tinyray.models import create_model
    from tinyray.recipe import learning_rate, make_loss, make_optimizer

    cfg, num_classes, steps = TrainConfig.from_dict(config["train"]), config["num_classes"], config["steps"]
    started = time.perf_counter()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    loads = loads or WorkerData(cfg, rank, world)
    setup_tensorflow(cfg)
    strategy = make_strategy(cfg)
    replicas = cfg.replicas_per_worker

    # The schedule follows the optimizer's step count, which the checkpoint restores: a resumed
    # run continues on the same curve.
    lr = learning_rate(cfg.lr, cfg.schedule, cfg.epochs * steps, cfg.warmup_epochs * steps)
    augment = Augment.of(cfg, num_classes)
    with strategy.scope():
        model = create_model(cfg.model, num_classes=num_classes, weights=cfg.weights, freeze_base=cfg.freeze_base)
        model.compile(optimizer=make_optimizer(cfg.optimizer, lr, cfg.momentum, cfg.weight_decay, cfg.nesterov),
                      loss=make_loss(cfg.label_smoothing, augment.soft), metrics=["accuracy"], jit_compile=cfg.xla)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    count = ImageCount(strategy, model)
    state = {"model": cfg.model, "num_classes": num_classes, "epochs_done": 0, "history": []}
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            state = read_checkpoint(strategy, model, ckpt, d)
        print(f"rank {rank}: resuming {cfg.run_name} after epoch {state['epochs_done']}", flush=True)

    val_images, val_labels = loads.val()
    collective = CrossWorkerSums(strategy, model, val_images, val_labels, cfg.batch_size)

    def finish():  # every worker: the class-by-class evaluation and the weights are collectives
        evaluation = class_report(*collective.class_tally(num_classes), config["manifest_summary"]["classes"])
        write_results(cfg, model, state, evaluation, config, time.perf_counter() - started, rank)

    if state["epochs_done"] < cfg.epochs:
        build = loads.train_dataset(cfg.batch_size, seed=cfg.seed * 1000 + rank, augment=augment, steps=steps,
                                    replicas=replicas)
        board = config.get("board")  # `tinyray train`'s console (progress.ProgressPrinter); None in a Tune trial
        preemption = PreemptionCheck(ckpt, state, rank, min(PREEMPTION_CHECK_STEPS, max(1, steps // 4)), steps,
                                     counted=lambda: collective.counts(count)[:2])
        callbacks = [EpochEnd(collective, count, ckpt, state, loads.seconds, rank, cfg.epochs, board, lr), preemption]
        if board is not None and rank == 0:
            callbacks.append(progress_callback(board, cfg.epochs, steps, cfg.global_batch))
        start, done = state["epochs_done"], state.get("step_in_epoch", 0)
        # Each dataset covers exactly the epochs its fit trains (pipeline.stream_train_dataset:
        # two on one Ray Data shard must never overlap).
        if done:  # saved on a preemption notice: the rest of that epoch first, in the same data order
            preemption.offset = done
            model.fit(per_replica_input(strategy, build(start, skip=done, epochs=1)), epochs=start + 1,
                      initial_epoch=start, steps_per_epoch=steps - done, callbacks=callbacks, verbose=0)
            start += 1
        if start < cfg.epochs:
            model.fit(per_replica_input(strategy, build(start, epochs=cfg.epochs - start)), epochs=cfg.epochs,
                      initial_epoch=start, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
        finish()
        checkpoint_and_report(ckpt, state, rank)
    else:
        loads.train()  # read like every worker's (a split shard), though not trained on
        # Every epoch was done before (a rerun, or a driver that died after the run finished):
        # the last epoch is reported again so that a Tune trial records it. The run's files are
        # written only if they are not all there yet (the run ended between its last checkpoint
        # and them): a finished run's result.json, eval.json and model are never rewritten by a
        # rerun that trained nothing. Every worker reads the same files, so all agree (finish()
        # is a collective).
        if not results_written(cfg, state["epochs_done"]):
            finish()
        ray.train.report({**state["history"][-1], "resumed_from_epoch": state["epochs_done"]})


def results_written(cfg: TrainConfig, epochs: int) -> bool:
    """Whether the run folder holds result.json (with ``epochs`` epochs), eval.json and the model."""
    opts = StorageOptions.from_env(cfg.endpoint_url)
    try:
        result = json.loads(storage.read_bytes(storage.join(cfg.run_dir, RESULT_FILE), opts))
    except (FileNotFoundError, ValueError):
        return False
    return (len(result.get("epochs") or []) >= epochs and storage.exists(storage.join(cfg.run_dir, EVAL_FILE), opts)
            and storage.exists(storage.join(cfg.run_dir, "model", "model.keras"), opts))


def write_results(cfg: TrainConfig, model, state: dict, evaluation: dict, config: dict, wall_seconds: float,
                  rank: int) -> None:
    """result.json, eval.json and model/ in the run folder, from rank 0.

    Every worker reads the weights (a collective for MWMS's ON_READ variables); rank 0 copies
    them into a plain model built outside the strategy — saved without the optimizer's slots,
    which the checkpoints keep — and writes the files."""
    from tinyray.models import create_model

    weights = model.get_weights()
    if rank != 0:
        return
    summary = config["manifest_summary"]
    plain = create_model(cfg.model, num_classes=summary["num_classes"], freeze_base=cfg.freeze_base)
    plain.set_weights(weights)
    public = cfg.to_dict()  # never holds credentials: those live only in each process's environment
    result = {
        "model": cfg.model,
        "run": cfg.run_name,
        "config": public,
        "epochs": [{k: e[k] for k in EPOCH_KEYS} for e in state["history"]],
        "params": int(plain.count_params()),
        "wall_seconds": wall_seconds,
        # as the last epoch's train steps counted it (every epoch has its own)
        "global_batch": state["history"][-1]["global_batch"] if state["history"] else None,
        "train_count": summary["train_count"],
        "val_count": summary["val_count"],
        "provenance": config["provenance"],
    }
    with tempfile.TemporaryDirectory() as out:
        os.makedirs(os.path.join(out, "model"))
        plain.save(os.path.join(out, "model", "model.keras"))
        files = {os.path.join("model", "classes.json"): {"classes": summary["classes"], "config": public},
                 RESULT_FILE: result, EVAL_FILE: evaluation}
        for name, doc in files.items():
            with open(os.path.join(out, name), "w") as f:
                json.dump(doc, f, indent=1)
        write_events(out, public, result["epochs"])
        storage.upload_dir(out, cfg.run_dir, StorageOptions.from_env(cfg.endpoint_url))


def write_events(folder: str, config: dict, epochs: list[dict]) -> None:
    """TensorBoard's files for a run, so `tensorboard --logdir <run folder>` charts it: each
    epoch's figures as scalars at step = epoch, and the config as HParams (the fields that
    are plain values). Written by rank 0 with the run's results, eagerly, outside any strategy."""
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        hp.hparams({k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}, trial_id=config.get(
            "name") or "run")
        for e in epochs:
            for k, v in e.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    tf.summary.scalar(k, v, step=int(e["epoch"]))
    writer.flush()
    writer.close()
