"""Ingest benchmark: decoded 64x64x3 images per second delivered as training batches.

Three pipelines over the same JPEGs, measured side by side in one run on one embedded S3
endpoint (loopback) and this machine's CPUs:

  (a) tinyray: staged Parquet shards → Ray Data → decode once → batches from memory per epoch
      (and, for reference, the ``stream`` mode that decodes in Ray Data every epoch);
  (b) ``ray.data.read_images`` on the same JPEGs stored one object per file in the same bucket;
  (c) tf.data reading and decoding the same JPEGs from local disk (the one-machine baseline).

Each runs ``--epochs`` passes from a cold start, as a training trial would, and the rate is
images delivered / wall seconds. Prints one JSON object with the rates and the ratios.

    python benchmarks/ingest.py [--images 20000] [--epochs 20] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from _setup import staged_sample

from tinyray.data import storage
from tinyray.data.pipeline import (IngestConfig, load_into_memory, memory_train_dataset, read_split,
                                   stream_train_dataset)
from tinyray.data.sample import SampleSpec


def bench_tinyray(uri, manifest, opts, epochs, batch, cache):
    ingest = IngestConfig(cache=cache)
    n = manifest["train"]["count"]
    steps = n // batch
    t0 = time.perf_counter()
    it = read_split(uri, "train", manifest, opts, ingest).iterator()
    if cache == "memory":
        images, labels = load_into_memory(it, ingest)
        ds = memory_train_dataset(images, labels, batch, seed=0)
    else:
        ds = stream_train_dataset(it, batch, seed=0)
    first = None
    for i, _ in enumerate(ds.take(epochs * steps)):
        if i + 1 == steps:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"images_per_second": epochs * steps * batch / total,
            "first_epoch_images_per_second": steps * batch / first,
            "later_epochs_images_per_second": (epochs - 1) * steps * batch / (total - first) if epochs > 1 else None}


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="train images (20 classes)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs of a trial (each pipeline delivers this many passes)")
    parser.add_argument("--batch-size", type=int, default=64)
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
            a = bench_tinyray("s3://tinyray/bench", manifest, opts, args.epochs, args.batch_size, "memory")
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
        "targets": {"a_over_b": ">= 5", "a_over_c": ">= 1"},
    }, indent=1))


if __name__ == "__main__":
    main()
