"""Batch inference: tinyray's Ray Data path (`tinyray predict MODEL FOLDER`) against a plain
single-process ``model.predict`` loop, on the same image files and the same exported model.

  plain   one process: read each file, decode it, ``predict_on_batch`` per batch of 256
          (TensorFlow uses every core)
  ray     ``predict_batch``: Ray Data reads the files, an actor pool decodes and predicts,
          the predictions are written to Parquet — start-up of the actors included

The two run alternately, ``--reps`` times each; the ratio ray/plain is taken per pair and
reported as the median with its spread (this machine is noisy). One unreadable file is in the
folder, and both paths must skip it. Prints one JSON object.

    python benchmarks/predict.py [--model model2] [--images 2000] [--reps 3]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import tempfile
import time

import _setup  # noqa: F401  (puts the repo on sys.path)

from tinyray.data.sample import SampleSpec, write_sample
from tinyray.data.storage import StorageOptions
from tinyray.export import with_uint8_input, write_export
from tinyray.predict import Export, predict_batch, predict_files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="model2")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    import ray

    from tinyray.cluster import repoint_stale_cluster_file
    from tinyray.models import create_model

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    classes = 10
    with tempfile.TemporaryDirectory() as tmp:
        top = write_sample(tmp, SampleSpec(classes=classes, train_per_class=-(-args.images // classes),
                                           val_per_class=1, test_images=1))
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        for path in sorted(glob.glob(os.path.join(top, "train", "*", "images", "*.JPEG")))[:args.images]:
            shutil.copy(path, folder)
        with open(os.path.join(folder, "broken.JPEG"), "wb") as f:
            f.write(b"not a jpeg")
        files = sorted(glob.glob(os.path.join(folder, "*.JPEG")))
        names = [{"label": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(classes)]
        opts = StorageOptions()
        export = Export(write_export(os.path.join(tmp, "export"),
                                     with_uint8_input(create_model(args.model, num_classes=classes)),
                                     names, None, "# benchmark model\n", {"model": args.model}, opts), opts)
        ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False)
        repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)
        plain, batch = [], []
        try:
            for rep in range(args.reps):
                t0 = time.perf_counter()
                done, skipped = predict_files(export, files, k=5)
                plain.append(len(done) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                out = predict_batch(export, [folder], os.path.join(tmp, f"preds{rep}.parquet"), k=5, opts=opts)
                batch.append(out["predicted"] / (time.perf_counter() - t0))
                assert (len(done), len(skipped)) == (out["predicted"], len(out["skipped"])) == (args.images, 1)
        finally:
            ray.shutdown()
    ratios = [b / p for b, p in zip(batch, plain)]
    print(json.dumps({
        "model": args.model, "images": args.images, "reps": args.reps, "cpus": os.cpu_count(),
        "plain_images_per_second": [round(v) for v in plain],
        "ray_images_per_second": [round(v) for v in batch],
        "ray_over_plain": {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                           "max": round(max(ratios), 3)},
    }, indent=1))


if __name__ == "__main__":
    main()
