"""Training throughput: plain single-process tf_keras ``fit`` vs tinyray's Ray Train path.

Same model (``--model``, default the seed's model2), same decoded images held in memory, same
per-replica batch, same tf.data input function (``memory_train_dataset``), this machine's CPUs:

  plain            one process, ``model.fit`` (TensorFlow uses every core)
  ray_1x2          tinyray: 1 Ray Train worker × 2 CPUs (MultiWorkerMirroredStrategy)
  ray_2x1          tinyray: 2 Ray Train workers × 1 CPU each (gradients all-reduced every step)

Rates are images/s of training steps, the median over epochs 2..N (epoch 1 traces the graph);
the Ray paths' rates are what each epoch of result.json reports, counted from the images the
replicas' train steps received (2 × 1 CPU trains 2 × batch images a step);
data loading and validation are excluded from every rate. This machine is noisy (one path's
rate moved 23 % between two runs), so the three paths alternate, ``--reps`` times, and each
ratio is the median of the per-repetition ratios, with its min and max. Prints one JSON object.

    python benchmarks/train_throughput.py [--model model2] [--images 2048] [--epochs 4] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from _setup import staged_sample

from tinyray.config import TrainConfig
from tinyray.data import storage
from tinyray.data.pipeline import memory_train_dataset
from tinyray.data.sample import SampleSpec


def plain_fit(model_name, images, labels, num_classes, batch, epochs):
    from tinyray.models import create_model
    from tinyray.tfk import keras

    steps = len(labels) // batch
    model = create_model(model_name, num_classes=num_classes)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])

    class Timer(keras.callbacks.Callback):
        rates: list = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.rates.append(steps * batch / (time.perf_counter() - self.t))

    timer = Timer()
    model.fit(memory_train_dataset(images, labels, batch, seed=0), epochs=epochs, steps_per_epoch=steps,
              callbacks=[timer], verbose=0)
    return timer.rates


def ray_fit(model_name, uri, opts, batch, epochs, workers, cpus, runs, rep):
    from tinyray.train import train_command

    out = train_command(TrainConfig(model=model_name, data=uri, workers=workers, cpus_per_worker=cpus,
                                   batch_size=batch, epochs=epochs, storage=runs,
                                   name=f"bench-{workers}x{cpus:g}-{rep}"), opts)
    return [e["images_per_second"] for e in out.result["epochs"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="model2")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per replica (one replica per worker here)")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions of the three paths")
    args = parser.parse_args(argv)

    import numpy as np
    import ray

    from tinyray.data.pipeline import decode_jpegs

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    classes = 16
    with tempfile.TemporaryDirectory() as tmp, storage.EmbeddedS3() as s3:
        uri = "s3://tinyray/throughput"
        top, _, paths = staged_sample(
            tmp, s3.options, uri,
            SampleSpec(classes=classes, train_per_class=args.images // classes, val_per_class=2, test_images=0),
            rows_per_shard=256)

        # plain: the very same JPEGs, decoded into memory by the same function
        wnids = sorted(os.listdir(os.path.join(top, "train")))
        images = decode_jpegs([open(p, "rb").read() for p in paths])
        labels = np.array([wnids.index(p.split(os.sep)[-3]) for p in paths], np.int32)

        # 3 logical CPUs: a 2-CPU worker plus room for Ray Data's fractional read tasks.
        ray.init(address="local", num_cpus=3, runtime_env={"env_vars": {**s3.public_env, "TF_USE_LEGACY_KERAS": "1"}},
                 log_to_driver=False)
        paths_per_rep = []
        try:
            runs = os.path.join(tmp, "runs")
            for rep in range(args.reps):  # alternating: a slow spell of the machine hits every path alike
                paths_per_rep.append({
                    "plain_fit": plain_fit(args.model, images, labels, classes, args.batch_size, args.epochs),
                    "ray_1x2": ray_fit(args.model, uri, s3.options, args.batch_size, args.epochs, 1, 2, runs, rep),
                    "ray_2x1": ray_fit(args.model, uri, s3.options, args.batch_size, args.epochs, 2, 1, runs, rep)})
        finally:
            ray.shutdown()

    def steady(rates):
        return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]

    steady_rates = [{k: steady(v) for k, v in r.items()} for r in paths_per_rep]

    def ratio(a, b):
        ratios = sorted(r[a] / r[b] for r in steady_rates)
        return {"median": round(statistics.median(ratios), 3), "min": round(ratios[0], 3), "max": round(ratios[-1], 3)}

    print(json.dumps({
        "model": args.model, "images": len(labels), "per_replica_batch": args.batch_size,
        "epochs": args.epochs, "cpus": os.cpu_count(), "reps": args.reps,
        "images_per_second": {k: [round(r[k], 1) for r in steady_rates] for k in ("plain_fit", "ray_1x2", "ray_2x1")},
        "ratio_ray_1x2_over_plain": ratio("ray_1x2", "plain_fit"),
        "ratio_ray_2x1_over_ray_1x2": ratio("ray_2x1", "ray_1x2"),
        "target": {"ray_1x2_over_plain": ">= 0.95 (median)"},
    }, indent=1))


if __name__ == "__main__":
    main()
