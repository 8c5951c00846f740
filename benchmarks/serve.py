"""tinyray serve's latency over HTTP, against predicting the same image in this process.

  inprocess  decode one image and ``predict_on_batch`` it, in this process (the floor: no HTTP,
             no Ray, no batching)
  serial     one client, one request at a time, to ``POST /predict`` on loopback
  burst      ``--requests`` requests from ``--threads`` threads at once (Serve batches them)

One CPU replica of an exported model (random weights), deployed with tinyray.serve's own
build_app and deploy on a local Ray. The three run in turn, ``--reps`` times, each going first in one repetition of three; per arm the p50
and p99 of every repetition, and the ratio serial p50 / inprocess p50 as the median of the
per-repetition ratios with its spread. The client shares this machine's cores with the replica
and Serve's proxy. Prints one JSON object.

    python benchmarks/serve.py [--model model2] [--requests 200] [--threads 8] [--reps 3]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import statistics
import tempfile
import time
import urllib.request

import numpy as np

import _setup  # noqa: F401  (puts the repo on sys.path)

from tinyray.data.pipeline import decode_image
from tinyray.data.sample import SampleSpec, write_sample
from tinyray.data.storage import StorageOptions
from tinyray.export import with_uint8_input, write_export
from tinyray.predict import Export, load_model


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def post(url: str, data: bytes) -> float:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200 and json.loads(r.read())["top"]
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="model2")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    import ray

    from tinyray.cluster import repoint_stale_cluster_file
    from tinyray.models import create_model
    from tinyray.serve import build_app, deploy, serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    classes = 200
    with tempfile.TemporaryDirectory() as tmp:
        top = write_sample(tmp, SampleSpec(classes=2, train_per_class=1, val_per_class=4, test_images=1))
        images = [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(top, "val", "images", "*.JPEG")))]
        names = [{"label": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(classes)]
        opts = StorageOptions()
        export = Export(write_export(os.path.join(tmp, "export"),
                                     with_uint8_input(create_model(args.model, num_classes=classes)),
                                     names, None, "# benchmark model\n", {"model": args.model}, opts), opts)
        model = load_model(export.model_bytes)
        ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False)
        repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)
        runs = {"inprocess": [], "serial": [], "burst": []}
        try:
            url = deploy(build_app(export, top=5), "127.0.0.1", 8123, {"CPU": 1, "GPU": 0})
            for data in images:  # warm: the replica's first calls trace the model
                post(url, data)
                model.predict_on_batch(decode_image(data)[None])

            def inprocess(n):
                timings = []
                for i in range(n):
                    start = time.perf_counter()
                    model.predict_on_batch(decode_image(images[i % len(images)])[None])
                    timings.append(time.perf_counter() - start)
                return timings

            def burst(n):
                with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
                    start = time.perf_counter()
                    timings = list(pool.map(lambda i: post(url, images[i % len(images)]), range(n)))
                runs["burst_requests_per_second"].append(round(n / (time.perf_counter() - start), 1))
                return timings

            arms = {"inprocess": lambda: inprocess(args.requests // 2),
                    "serial": lambda: [post(url, images[i % len(images)]) for i in range(args.requests // 2)],
                    "burst": lambda: burst(args.requests)}
            runs["burst_requests_per_second"] = []
            order = list(arms)
            for rep in range(args.reps):
                for arm in order[rep % 3:] + order[:rep % 3]:  # each arm goes first once in three
                    runs[arm].append(arms[arm]())
        finally:
            serve.shutdown()
            ray.shutdown()
    ratios = [statistics.median(s) / statistics.median(p) for s, p in zip(runs["serial"], runs["inprocess"])]
    print(json.dumps({
        "model": args.model, "classes": classes, "requests": args.requests, "threads": args.threads,
        "reps": args.reps, "cpus": os.cpu_count(),
        **{arm: [percentiles(r) for r in runs[arm]] for arm in ("inprocess", "serial", "burst")},
        "burst_requests_per_second": runs["burst_requests_per_second"],
        "serial_p50_over_inprocess_p50": {"median": round(statistics.median(ratios), 2),
                                          "min": round(min(ratios), 2), "max": round(max(ratios), 2)},
    }, indent=1))


if __name__ == "__main__":
    main()
