"""Ingest benchmark: decoded 64x64x3 images per second delivered as training batches.

Three pipelines over the same JPEGs, measured side by side in one run on one embedded S3
endpoint (loopback) and this machine's CPUs:

  (a) tinyray: staged Parquet shards → Ray Data → decode once → batches from memory per epoch
      (and, for reference, the ``stream`` mode that decodes in Ray Data every epoch);
  (b) ``ray.data.read_images`` on the same JPEGs stored one object per file in the same bucket;
  (c) tf.data reading and decoding the same JPEGs from local disk (the one-machine baseline).

Each runs ``--epochs`` passes from a cold start, as a training trial would, and the rate is
images delivered / wall seconds. Then, side by side in the same run:

  recipe: batches from memory with the full recipe (crop_flip, mixup 0.2, cutmix 1.0, soft
      labels) against flip-only (the seed's), alternating, ``--reps`` times each: the median
      ratio and its spread;
  full-size load: the data-ready time of a full-size train split (200 classes × 500 images,
      ``tinyray data sample``'s default size) read and decoded by one process with 2 decode
      threads (a worker holding 2 CPUs) against 1 (before the decode pool), alternating.

Prints one JSON object with the rates and the ratios.

    python benchmarks/ingest.py [--images 20000] [--epochs 20] [--batch-size 64] [--reps 3] [--no-full-size]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from _setup import staged_sample

from tinyray.data import storage
from tinyray.data.pipeline import (Augment, IngestConfig, load_into_memory, memory_train_dataset, read_split,
                                   stream_train_dataset)
from tinyray.data.sample import SampleSpec


def bench_tinyray(uri, manifest, opts, epochs, batch, cache):
    ingest = IngestConfig(cache=cache, decode_threads=os.cpu_count())  # as a worker holding every CPU
    n = manifest["train"]["count"]
    steps = n // batch
    t0 = time.perf_counter()
    it = read_split(uri, "train", manifest, opts, ingest).iterator()
    arrays = None
    if cache == "memory":
        arrays = load_into_memory(it, ingest)
        ds = memory_train_dataset(*arrays, batch, seed=0)
    else:
        ds = stream_train_dataset(it, batch, seed=0)
    first = None
    for i, _ in enumerate(ds.take(epochs * steps)):
        if i + 1 == steps:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    rates = {"images_per_second": epochs * steps * batch / total,
             "first_epoch_images_per_second": steps * batch / first,
             "later_epochs_images_per_second": (epochs - 1) * steps * batch / (total - first) if epochs > 1 else None}
    return (rates, arrays) if cache == "memory" else rates


def bench_read_images(files_uri, opts, batch):
    import ray.data

    fs, root = storage.filesystem(files_uri, opts)
    t0 = time.perf_counter()
    count = 0
    # read_images re-reads and re-decodes every epoch at a constant rate, so one epoch measures it
    # (at ~150 images/s, more would only make the benchmark long).
    ds = ray.data.read_images(root, filesystem=fs, mode="RGB")
    for b in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True):
        count += len(b["image"])
    return {"images_per_second": count / (time.perf_counter() - t0)}


def bench_tf_data(paths, epochs, batch):
    from tinyray.tfk import tf

    def load(path):
        x = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        x = tf.cast(x, tf.float32) / 255.0
        return tf.image.random_flip_left_right(x)

    ds = (tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths))
          .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))
    t0 = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for x in ds:
            count += int(x.shape[0])
    return {"images_per_second": count / (time.perf_counter() - t0)}


def ratio_summary(pairs):
    """[(candidate, baseline)] rates → the median ratio, with its min and max."""
    ratios = sorted(c / b for c, b in pairs)
    return {"median": round(statistics.median(ratios), 3), "min": round(ratios[0], 3), "max": round(ratios[-1], 3)}


def bench_recipe(images, labels, batch, reps, batches=600):
    """Images/s of the per-epoch input pipeline (memory mode, arrays already decoded), flip-only
    and the full recipe, alternating, ``reps`` times each, ``batches`` batches per measurement."""
    full = Augment("crop_flip", mixup=0.2, cutmix=1.0, num_classes=int(labels.max()) + 1, soft=True)

    def rate(augment):
        it = iter(memory_train_dataset(images, labels, batch, seed=0, augment=augment))
        for _ in range(20):  # tracing, XLA's compile and the prefetch buffer are not the rate
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - t0)

    flip, recipe = [], []
    for _ in range(reps):
        flip.append(rate(Augment()))
        recipe.append(rate(full))
    return {"flip_only_images_per_second": [round(r) for r in flip],
            "full_recipe_images_per_second": [round(r) for r in recipe],
            "recipe_over_flip": ratio_summary(zip(recipe, flip))}


def bench_full_size_load(tmp, opts, reps):
    """Data-ready time of a full-size train split: Ray Data's read and the decode, as a worker
    does it (load_into_memory), with 2 decode threads and with 1, alternating."""
    spec = SampleSpec(classes=200, train_per_class=500, val_per_class=50, test_images=0)
    t0 = time.perf_counter()
    _, manifest, _ = staged_sample(os.path.join(tmp, "full"), opts, "s3://tinyray/full", spec, rows_per_shard=5000)
    prepared = time.perf_counter() - t0
    runs = {1: [], 2: []}
    for _ in range(reps):
        for threads in (2, 1):
            ingest = IngestConfig(decode_threads=threads)
            t0 = time.perf_counter()
            images, _ = load_into_memory(read_split("s3://tinyray/full", "train", manifest, opts, ingest).iterator(),
                                         ingest)
            runs[threads].append(time.perf_counter() - t0)
    n = len(images)
    return {"train_images": n, "sample_and_stage_seconds": round(prepared, 1),
            "seconds_2_threads": [round(s, 1) for s in runs[2]], "seconds_1_thread": [round(s, 1) for s in runs[1]],
            "images_per_second_2_threads": round(n / statistics.median(runs[2])),
            "images_per_second_1_thread": round(n / statistics.median(runs[1])),
            "two_over_one": ratio_summary((n / a, n / b) for a, b in zip(runs[2], runs[1]))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="train images (20 classes)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs of a trial (each pipeline delivers this many passes)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions of each side-by-side pair")
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the load of a full-size train split (100k images; ~5 minutes to make)")
    args = parser.parse_args(argv)

    import ray

    import tinyray.tfk  # noqa: F401  (TensorFlow's import time is not any pipeline's)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    classes = 20
    with tempfile.TemporaryDirectory() as tmp, storage.EmbeddedS3() as s3:
        opts = s3.options
        top, manifest, paths = staged_sample(
            tmp, opts, "s3://tinyray/bench",
            SampleSpec(classes=classes, train_per_class=args.images // classes, val_per_class=2, test_images=0),
            rows_per_shard=500)
        client = storage.s3_client(opts)
        from concurrent.futures import ThreadPoolExecutor

        def put(p):  # the same JPEGs, one object per file
            with open(p, "rb") as f:
                client.put_object(Bucket="tinyray", Key="bench-files/" + os.path.relpath(p, top), Body=f.read())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, paths))

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": opts.public_env()})
        try:
            # Warm-up: a trial's Ray worker processes are already running when its data starts
            # to flow; start them here so no pipeline pays for process start-up.
            read_split("s3://tinyray/bench", "val", manifest, opts, IngestConfig()).take_all()
            a, arrays = bench_tinyray("s3://tinyray/bench", manifest, opts, args.epochs, args.batch_size, "memory")
            recipe = bench_recipe(*arrays, args.batch_size, args.reps)
            full = bench_full_size_load(tmp, opts, args.reps) if args.full_size else None
            a_stream = bench_tinyray("s3://tinyray/bench", manifest, opts, args.epochs, args.batch_size, "stream")
            b = bench_read_images("s3://tinyray/bench-files", opts, args.batch_size)
        finally:
            ray.shutdown()
        c = bench_tf_data(paths, args.epochs, args.batch_size)

    ra, rb, rc = a["images_per_second"], b["images_per_second"], c["images_per_second"]
    print(json.dumps({
        "images": len(paths), "epochs": args.epochs, "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "a_tinyray_parquet_memory": a, "a_tinyray_parquet_stream": a_stream,
        "b_ray_read_images_per_file": b, "c_tf_data_local_files": c,
        "ratio_a_over_b": round(ra / rb, 2), "ratio_a_over_c": round(ra / rc, 2),
        "ratio_stream_over_b": round(a_stream["images_per_second"] / rb, 2),
        "recipe": recipe, "full_size_load": full,
        "targets": {"a_over_b": ">= 5", "a_over_c": ">= 1", "recipe_over_flip": ">= 0.9",
                    "full_size_load_images_per_second_2_threads": ">= 7000"},
    }, indent=1))


if __name__ == "__main__":
    main()
