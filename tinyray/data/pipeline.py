"""The Ray Data pipeline that training reads: staged Parquet in object storage → Ray Data →
per-worker shards → decoded 64x64x3 uint8 → the seed's preprocessing (÷255, random horizontal
flip on train only) → a tf.data dataset per worker.

Two ingest modes, chosen by ``IngestConfig.cache`` (``--cache``):

* ``memory`` (default): each worker streams its shard once (Ray Data reads the Parquet shards
  in parallel), decodes the JPEGs once into a uint8 array — Tiny ImageNet's whole train split
  is ~1.2 GB decoded, divided over the workers — and augments per epoch from memory. The
  per-batch overhead of re-running a Ray Data pipeline every epoch, which dominated earlier
  measurements (~0.1x of plain tf.data), is paid once per trial.
* ``stream``: Ray Data decodes in ``map_batches`` tasks every epoch and each worker reads its
  shard through ``DataIterator.iter_batches`` into tf.data (``iter_tf_batches`` has an open
  deadlock, #62352), reshuffled per epoch; for datasets larger than worker memory.

Validation is never split by Ray (``equal=True`` splitting may drop rows): every worker reads
the val Parquet and keeps the rows whose file name hashes to its rank, so the workers together
count every val image exactly once per evaluation.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

from tinyray.config import CACHE_MODES, TrainConfig
from tinyray.data import storage
from tinyray.data.layout import IMAGE_SIZE
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.resources import READ_CPUS, stall_message


@dataclass(frozen=True)
class IngestConfig:
    cache: str = "memory"
    # Ray Data tasks need CPUs that the Train workers do not hold; fractional CPUs let reads run
    # beside the workers on a small node. Sizing a run keeps this much free (resources.READ_CPUS).
    read_cpus: float = READ_CPUS
    decode_batch: int = 512
    # Threads decoding JPEGs as batches arrive (Pillow releases the GIL while it decodes): the
    # CPUs the worker holds, since the first epoch waits for the whole split.
    decode_threads: int = 1

    def __post_init__(self):
        if self.cache not in CACHE_MODES:
            raise TinyrayError(f"cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")


# ---------------------------------------------------------------------------- pure functions


def decode_image(data: bytes) -> np.ndarray:
    """One image file's bytes → uint8 (64, 64, 3): RGB (grayscale becomes 3 equal channels),
    resized if another size. Raises ValueError with the reason for bytes that are not an image."""
    from tinyray.data.images import open_image

    try:
        img = open_image(data)  # JPEG or PNG within the pixel budget
    except ValueError as e:
        raise ValueError(f"not a readable image: {e}") from None
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):  # staging re-encodes these; belt and braces
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE))
    return np.asarray(img, np.uint8)


def decode_jpegs(images) -> np.ndarray:
    """JPEG bytes → uint8 array (n, 64, 64, 3), each as ``decode_image`` reads it."""
    out = np.empty((len(images), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, data in enumerate(images):
        out[i] = decode_image(data)
    return out


def decode_batch(batch: dict) -> dict:
    """Ray Data ``map_batches`` function: {"image": bytes, "label"} → decoded uint8 + int32."""
    return {"image": decode_jpegs(batch["image"]), "label": np.asarray(batch["label"], np.int32)}


def rank_of(file: str, world_size: int) -> int:
    """The worker that evaluates one val file: stable across processes (unlike ``hash``)."""
    return zlib.crc32(file.encode()) % world_size


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffled indices for one epoch, as full batches: shape (n // batch_size, batch_size).

    Seeded by (seed, epoch) so a resumed run sees the same order it would have seen.
    """
    rng = np.random.default_rng([seed, epoch])
    steps = n // batch_size
    return rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size)


def steps_per_epoch(count: int, batch_size: int, workers: int, replicas_per_worker: int = 1) -> int:
    """Optimizer steps per epoch when ``count`` train images are split over ``workers``, each
    step giving every replica ``batch_size`` images (a worker with R replicas takes R batches).

    MultiWorkerMirroredStrategy needs every worker to take the same number of steps, and Ray's
    equal split gives each worker ``count // workers`` rows; what is left of a worker's shard
    after its last full step (less than one step's images) waits for the next epoch's shuffle.
    """
    per_step = batch_size * replicas_per_worker
    steps = (count // workers) // per_step
    if steps < 1:
        raise TinyrayError(
            f"{count} train images over {workers} workers is less than one step of {per_step} images per worker "
            f"({replicas_per_worker} replica(s) × batch {batch_size}): lower --batch-size or --workers"
        )
    return steps


# ------------------------------------------------------------------------ Ray Data (driver side)


def read_split(data_uri: str, split: str, manifest: dict, opts: StorageOptions, ingest: IngestConfig,
               columns=("image", "label")):
    """A Ray Dataset over one staged split (the Parquet shards named by the manifest)."""
    import ray.data

    fs, root = storage.filesystem(data_uri, opts, ship=True)
    paths = [f"{root}/{s['path']}" for s in manifest[split]["shards"]]
    if not paths:
        raise TinyrayError(f"{data_uri} has no {split} shards")
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=list(columns), num_cpus=ingest.read_cpus)
    if ingest.cache == "stream" and split == "train":
        ds = ds.map_batches(decode_batch, batch_format="numpy", batch_size=ingest.decode_batch,
                            num_cpus=ingest.read_cpus)
    return ds


def train_datasets(data_uri: str, manifest: dict, opts: StorageOptions, ingest: IngestConfig) -> dict:
    """The datasets dict for the run's trainer: train is split by Ray, val read whole."""
    return {
        "train": read_split(data_uri, "train", manifest, opts, ingest),
        "val": read_split(data_uri, "val", manifest, opts, ingest, columns=("image", "label", "file")),
    }


def data_config():
    """Split only train across workers; val stays whole (see the module docstring).

    Train is split in a fixed order (``preserve_order``, which also turns locality off in Ray's
    OutputSplitter: each block goes to the worker with the fewest rows so far, in read order),
    so a worker's shard is the same rows on every attempt: a run restarted on another node, or
    resumed mid-epoch, sees the rest of the very epoch it was in, and one epoch is every image
    once across workers."""
    from ray.train import DataConfig

    ordered = DataConfig.default_ingest_options()  # a fresh copy of the driver's options
    ordered.preserve_order = True
    return DataConfig(datasets_to_split=["train"], execution_options={"train": ordered}, enable_shard_locality=False)


# ------------------------------------------------------------------------ worker side (tf.data)


def within(batches, seconds: float, stalled):
    """Yield from ``batches``, each within ``seconds`` of the one before, or raise ``stalled()``.

    A read that Ray cannot schedule blocks forever and says nothing (resources.LIST_CPUS): the
    batches are pulled by a daemon thread, and the wait for each is bounded here. On a stall the
    thread stays blocked in Ray's iterator; the worker process ends with the run."""
    import queue
    import threading

    handoff, end = queue.Queue(maxsize=2), object()

    def pull():
        try:
            for batch in batches:
                handoff.put(batch)
            handoff.put(end)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            handoff.put(e)

    threading.Thread(target=pull, daemon=True, name="tinyray-data").start()
    while True:
        try:
            item = handoff.get(timeout=seconds)
        except queue.Empty:
            raise stalled() from None
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def load_into_memory(iterator, ingest: IngestConfig, keep=None, timeout: float | None = None,
                     stalled=None) -> tuple[np.ndarray, np.ndarray]:
    """Read a worker's shard once and decode it: (uint8 images, int32 labels).

    Each batch is decoded by a pool of ``ingest.decode_threads`` threads while the next is read.
    ``keep(file) -> bool`` selects rows (the val split's rank filter); it needs the file column.
    ``timeout``: at most this many seconds for each batch, then ``stalled()`` is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    images, labels = [], []
    batches = iterator.iter_batches(batch_size=ingest.decode_batch, batch_format="numpy")
    if timeout:
        batches = within(batches, timeout, stalled)
    threads = max(1, ingest.decode_threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="tinyray-decode") as pool:
        for batch in batches:
            if keep is not None:
                mask = np.fromiter((keep(f) for f in batch["file"]), bool, len(batch["file"]))
                batch = {"image": batch["image"][mask], "label": batch["label"][mask]}
            if len(batch["label"]):
                # a batch in ``threads`` slices, so that one batch keeps every thread busy
                for part in np.array_split(np.asarray(batch["image"], dtype=object), threads):
                    if len(part):
                        images.append(pool.submit(decode_jpegs, part))
                labels.append(np.asarray(batch["label"], np.int32))
        images = [f.result() for f in images]
    if not images:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.empty((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


class WorkerData:
    """A Train worker's data, read and decoded in the background from the moment its loop starts,
    while TensorFlow is imported and the model built: the val split (this rank's files), then, in
    ``memory`` mode, the train shard. ``val()`` / ``train()`` wait for them."""

    def __init__(self, cfg, rank: int, world: int):
        import time
        from concurrent.futures import ThreadPoolExecutor

        import ray.train

        self.started = time.perf_counter()
        self.ingest = IngestConfig(cache=cfg.cache, decode_threads=max(1, round(cfg.cpus_per_worker)))
        self.train_shard = ray.train.get_dataset_shard("train")
        # One thread, val then train: two Ray Data reads at once were slower than one after the other
        # (measured: val + train ready 10.0 s together against 8.1 s in turn, 2 CPUs).
        pool = ThreadPoolExecutor(1, thread_name_prefix="tinyray-load")

        def load(split, shard, keep=None):
            arrays = load_into_memory(shard, self.ingest, keep=keep, timeout=cfg.data_timeout,
                                      stalled=lambda: data_stalled(cfg, split))
            return arrays, time.perf_counter() - self.started

        self._val = pool.submit(load, "val", ray.train.get_dataset_shard("val"), lambda f: rank_of(f, world) == rank)
        self._train = pool.submit(load, "train", self.train_shard) if cfg.cache == "memory" else None
        pool.shutdown(wait=False)
        self.seconds = 0.0  # until both are in: what data_load_seconds reports

    def _wait(self, future):
        arrays, seconds = future.result()
        self.seconds = max(self.seconds, seconds)
        return arrays

    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self._wait(self._val)

    def train(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._wait(self._train) if self._train is not None else None

    def train_dataset(self, batch_size: int, seed: int, augment: "Augment", steps: int, replicas: int = 1):
        """``build(first_epoch, skip=0, epochs=None)``: the worker's train dataset (``epochs`` of
        them, or endless), in ``--cache`` mode,
        starting ``skip`` batches into ``first_epoch`` (a run resumed where a preemption notice
        saved it): from the decoded arrays (memory), or re-read through Ray Data every epoch
        (stream; there the val split, loaded first, is what the watchdog guards). ``skip`` counts
        steps; each step is ``replicas`` batches of ``batch_size``."""
        if self._train is not None:
            images, labels = self.train()
            return lambda first_epoch, skip=0, epochs=None: memory_train_dataset(
                images, labels, batch_size, seed=seed, first_epoch=first_epoch, augment=augment, skip=skip * replicas,
                replicas=replicas, epochs=epochs)
        return lambda first_epoch, skip=0, epochs=None: stream_train_dataset(
            self.train_shard, batch_size, seed=seed, augment=augment, skip=skip * replicas,
            first_batch=(first_epoch * steps + skip) * replicas, replicas=replicas, first_epoch=first_epoch,
            epochs=epochs)


def data_stalled(cfg, split: str) -> TinyrayError:
    """The one line for a worker that waited ``cfg.data_timeout`` for a batch: what the cluster
    has free now, while this run's workers hold theirs, and a request that would fit."""
    import ray


    return TinyrayError(stall_message(cfg, split, cfg.data_timeout, ray.available_resources().get("CPU", 0.0),
                                      ray.cluster_resources().get("CPU", 0.0)))


@dataclass(frozen=True)
class Augment:
    """The train-time preprocessing a worker applies (TrainConfig's recipe fields and defaults, recipe.py)."""
    augment: str = TrainConfig.augment
    mixup: float = TrainConfig.mixup
    cutmix: float = TrainConfig.cutmix
    num_classes: int = 0  # for one-hot labels, when ``soft``
    soft: bool = False

    @classmethod
    def of(cls, cfg, num_classes: int) -> "Augment":
        from tinyray.recipe import soft_labels

        return cls(cfg.augment, cfg.mixup, cfg.cutmix, num_classes,
                   soft_labels(cfg.mixup, cfg.cutmix, cfg.label_smoothing))

    def fn(self):
        from tinyray.recipe import augmenter

        return augmenter(self.augment, self.mixup, self.cutmix, self.num_classes, self.soft)

    def draws(self, seed: int, batch: int, n: int) -> tuple:
        from tinyray.recipe import draws

        return draws(seed, batch, n, self.mixup, self.cutmix).as_tensors()

    @staticmethod
    def draw_spec(n):
        """tf.data's signature of ``draws(…).as_tensors()`` for a batch of ``n``, read off one."""
        from tinyray.recipe import draws
        from tinyray.tfk import tf

        return tuple(tf.TensorSpec(np.shape(v), tf.as_dtype(np.asarray(v).dtype))
                     for v in draws(0, 0, n).as_tensors())


def _epochs(first: int, count: int | None):
    """The epoch numbers a dataset covers: ``count`` from ``first``, or endless."""
    return range(first, first + count) if count is not None else itertools.count(first)


def _options(ds):
    from tinyray.tfk import tf

    opts = tf.data.Options()
    # Ray already gave each worker its own shard: TF must not shard it again.
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(opts)


def memory_train_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                         first_epoch: int = 0, augment: Augment = Augment(), skip: int = 0, replicas: int = 1,
                         epochs: int | None = None):
    """A tf.data dataset of shuffled, augmented per-replica batches from decoded arrays: ``epochs``
    epochs from ``first_epoch`` (None: endless).

    An epoch is ``len(labels) // (batch_size·replicas)`` steps of ``replicas`` batches each (a
    worker's replicas take consecutive batches of one step); ``skip`` counts batches.

    Python produces only each batch's indices and random draws (one small yield per batch); the batch
    itself is gathered from the arrays, which stay outside the graph (a from_tensor_slices of
    ~1 GB would be embedded in it and hit protobuf's 2 GB limit under tf.distribute), and
    augmented by tf.data's parallel map: numpy's gather and TF's ops release the GIL, so batches
    are built on every CPU the worker holds. Batch ``b`` of the run (epoch·steps + step) is
    augmented with key (seed, b), the same on every attempt.
    """
    from tinyray.tfk import tf

    batches = len(labels) // (batch_size * replicas) * replicas  # per epoch

    def gen():
        for epoch in _epochs(first_epoch, epochs):
            order = epoch_order(len(labels), batch_size * replicas, seed, epoch).reshape(batches, batch_size)
            for b, idx in enumerate(order):
                yield (idx, *augment.draws(seed, epoch * batches + b, batch_size))

    def gather(idx):
        return np.take(images, idx, axis=0), np.take(labels, idx, axis=0)

    def load(idx, *draws):
        x, y = tf.numpy_function(gather, [idx], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))
        y.set_shape((batch_size,))
        return (x, y, *draws)

    spec = (tf.TensorSpec((batch_size,), tf.int64), *Augment.draw_spec(batch_size))
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec).skip(skip)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).map(augment.fn(), num_parallel_calls=tf.data.AUTOTUNE)
    return _options(ds.prefetch(tf.data.AUTOTUNE))


def stream_train_dataset(iterator, batch_size: int, seed: int, augment: Augment = Augment(), skip: int = 0,
                         first_batch: int = 0, replicas: int = 1, first_epoch: int = 0, epochs: int | None = None):
    """Each epoch re-reads the worker's shard through Ray Data (decoded by map_batches tasks),
    shuffled in a local buffer seeded by (seed, epoch): reshuffled every epoch, and the same on
    every attempt, since the shard arrives in a fixed order (``data_config``). ``skip`` batches
    of ``first_epoch`` are passed over (a run resumed mid-epoch); batches are keyed by their count
    since ``first_batch`` (the run's batch index at the start). Ray Data hands over one step's
    images at a time (``batch_size·replicas``; the rest of the shard, less than a step, is
    dropped as in memory mode), cut here into the replicas' batches.

    ``epochs`` bounds it (None: endless), and each epoch's read is run to its end: a worker
    that builds a second dataset on the same shard (the rest of a preempted epoch, then the
    others) must never have a first one still prefetching into a new epoch. Ray Data's split
    coordinator starts an epoch when every worker asks for one; two asks from one worker there
    deadlock the run (seen under load in test_worker.py before this bound)."""
    from tinyray.tfk import tf

    def gen():
        for epoch in _epochs(first_epoch, epochs):
            for batch in iterator.iter_batches(batch_size=batch_size * replicas, batch_format="numpy", drop_last=True,
                                               local_shuffle_buffer_size=max(4 * batch_size * replicas, 1024),
                                               local_shuffle_seed=int(np.random.default_rng([seed, epoch]).integers(2 ** 31))):
                images, labels = batch["image"], np.asarray(batch["label"], np.int32)
                for r in range(replicas):
                    yield images[r * batch_size:(r + 1) * batch_size], labels[r * batch_size:(r + 1) * batch_size]

    spec = Augment.draw_spec(batch_size)

    def with_draws(xy, b):
        out = tf.numpy_function(lambda b: augment.draws(seed, int(b), batch_size), [b], [t.dtype for t in spec])
        for t, s in zip(out, spec):
            t.set_shape(s.shape)
        return (xy[0], xy[1], *out)

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), tf.uint8), tf.TensorSpec((batch_size,), tf.int32)))
    ds = tf.data.Dataset.zip((ds.skip(skip), tf.data.Dataset.counter(first_batch))).map(with_draws)
    ds = ds.map(augment.fn(), num_parallel_calls=tf.data.AUTOTUNE)
    return _options(ds.prefetch(tf.data.AUTOTUNE))


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Val batches in order, ÷255, no flip; the last batch may be short (every image counts)."""
    for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size].astype(np.float32) / 255.0, labels[start:start + batch_size]
