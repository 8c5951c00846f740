"""Use an exported model: top-k classes for images, in this process or as Ray Data batch inference.

    tinyray predict MODEL IMAGE…  [--top 5] [--json]          files: predicted here, printed
    tinyray predict MODEL FOLDER|s3://PREFIX … --out preds.parquet|preds.csv

MODEL is a folder (or s3:// prefix) that ``tinyray export`` wrote. A folder or an s3:// prefix
runs batch inference with Ray Data: the images are read as files, and a pool of actors (one GPU
each where the cluster has GPUs) decodes and predicts them; the predictions are written as
Parquet or CSV. An image that cannot be read is listed as skipped, never dropped silently.
"""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np

from tinyray.data import storage
from tinyray.data.pipeline import decode_image  # exactly what training reads
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.export import EXPORT_MARKER, FORMAT

IMAGE_EXTENSIONS = ("jpeg", "jpg", "png")
# Batch inference's bound on the wait for each batch of predictions (the actors' start included).
PREDICT_TIMEOUT = 600


class Export:
    """An export folder's model bytes, classes and marker, read once (local path or s3://)."""

    def __init__(self, uri: str, opts: StorageOptions | None = None):
        opts = opts or StorageOptions.from_env()
        try:
            marker = json.loads(storage.read_bytes(storage.join(uri, EXPORT_MARKER), opts))
        except (FileNotFoundError, json.JSONDecodeError):
            marker = None
        if not marker or marker.get("format") != FORMAT:
            raise TinyrayError(f"{uri} is not a tinyray export (no {EXPORT_MARKER} of format {FORMAT}): make one "
                               f"with 'tinyray export EXPERIMENT --to DIR'")
        self.uri, self.marker = uri, marker
        self.model_bytes = storage.read_bytes(storage.join(uri, "model.keras"), opts)
        self.classes = json.loads(storage.read_bytes(storage.join(uri, "classes.json"), opts))["classes"]


def load_model(model_bytes: bytes, source: str = "model.keras"):
    """An export's model, loaded as data (models.load_model_file): here and in every batch
    inference actor alike."""
    from tinyray.models import load_model_file

    return load_model_file(model_bytes, source)


# ------------------------------------------------------------------------------ pure helpers


def top_k(probs: np.ndarray, classes: list[dict], k: int) -> list[list[dict]]:
    """Per row of ``probs``: the ``k`` most probable classes, most probable first (ties: the lower
    label)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"wnid": classes[i]["wnid"], "name": classes[i]["name"], "prob": float(p[i])} for i in row]
            for p, row in zip(probs, order)]


def prediction_rows(files: list[str], images: list, errors: list, probs: np.ndarray | None, classes: list[dict],
                    k: int) -> dict:
    """Columns of predictions for a batch (flat, so Parquet and CSV hold them alike): ``file``,
    ``top1_wnid``, ``top1_prob`` … ``topK_…``, ``error`` (empty where the image was read)."""
    tops = iter(top_k(probs, classes, k) if probs is not None else [])
    cols: dict = {"file": list(files), **{f"top{i + 1}_{f}": [] for i in range(k) for f in ("wnid", "prob")},
                  "error": []}
    for img, err in zip(images, errors):
        row = next(tops) if err is None else [None] * k
        for i in range(k):
            cols[f"top{i + 1}_wnid"].append(row[i]["wnid"] if row[i] else None)
            cols[f"top{i + 1}_prob"].append(row[i]["prob"] if row[i] else None)
        cols["error"].append(err or "")
    return cols


# -------------------------------------------------------------------------- in this process


def predict_files(export: Export, files: list[str], k: int = 5, batch_size: int = 256) -> tuple[list, list]:
    """(predictions as ``{"file", "top": [{"wnid", "name", "prob"}]}``, skipped as ``{"file",
    "reason"}``) for local image files."""
    model = load_model(export.model_bytes, storage.join(export.uri, "model.keras"))
    done, skipped = [], []
    for start in range(0, len(files), batch_size):
        names, images = [], []
        for path in files[start:start + batch_size]:
            try:
                with open(path, "rb") as f:
                    images.append(decode_image(f.read()))
                names.append(path)
            except (OSError, ValueError) as e:
                skipped.append({"file": path, "reason": str(e)})
        if images:
            probs = model.predict_on_batch(np.stack(images))
            done += [{"file": n, "top": t} for n, t in zip(names, top_k(np.asarray(probs), export.classes, k))]
    return done, skipped


# --------------------------------------------------------------------- batch inference (Ray)


class Predictor:
    """A Ray Data actor: the model loaded once, then decode + predict per batch of files."""

    def __init__(self, model_bytes: bytes, classes: list[dict], k: int, threads: int = 1):
        from tinyray.tfk import tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        self.model, self.classes, self.k = load_model(model_bytes), classes, k

    def __call__(self, batch: dict) -> dict:
        images, errors = [], []
        for data in batch["bytes"]:
            try:
                images.append(decode_image(data))
                errors.append(None)
            except ValueError as e:
                images.append(None)
                errors.append(str(e))
        good = [img for img in images if img is not None]
        probs = np.asarray(self.model.predict_on_batch(np.stack(good))) if good else None
        return prediction_rows(list(batch["path"]), images, errors, probs, self.classes, self.k)


def read_sources(sources: list[str], opts: StorageOptions):
    """One Ray Dataset of image files (bytes, path) from local folders/files or s3:// prefixes."""
    import ray.data

    kinds = {storage.is_s3(s) for s in sources}
    if len(kinds) > 1:
        raise TinyrayError("give either local folders and files or s3:// prefixes, not both")
    fs, _ = storage.filesystem(sources[0], opts, ship=True)
    paths = []
    for s in sources:
        path = storage.filesystem(s, opts)[1]
        if not storage.is_s3(s) and not os.path.exists(path):
            raise TinyrayError(f"{s} does not exist")
        paths.append(path)
    return ray.data.read_binary_files(paths, filesystem=fs, include_paths=True, file_extensions=list(
        IMAGE_EXTENSIONS) + [e.upper() for e in IMAGE_EXTENSIONS])


def actor_pool(cluster: dict) -> dict:
    """map_batches' actor settings: one actor per GPU where there are GPUs; else one per CPU but
    one (kept for the file reads), their TensorFlow threads sharing every CPU — the reads are
    light, and a CPU actor computes as fast as its threads."""
    gpus, cpus = int(cluster.get("GPU", 0)), max(1, int(cluster.get("CPU", 1)))
    if gpus:
        return {"concurrency": gpus, "num_gpus": 1, "threads": 2}
    actors = max(1, cpus - 1)
    return {"concurrency": actors, "num_cpus": 1, "threads": max(1, cpus // actors)}


def predict_batch(export: Export, sources: list[str], out: str, k: int = 5, opts: StorageOptions | None = None,
                  batch_size: int = 256) -> dict:
    """Batch inference with Ray Data over ``sources`` into ``out`` (.parquet or .csv, local or
    s3://). Ray must be initialised. Returns counts and the skipped files."""
    import pyarrow as pa
    import ray

    opts = opts or StorageOptions.from_env()
    if not out.endswith((".parquet", ".csv")):
        raise TinyrayError(f"--out {out}: give a .parquet or .csv file")
    pool = actor_pool(ray.cluster_resources())
    resources = {k_: v for k_, v in pool.items() if k_ in ("num_gpus", "num_cpus")}
    ds = read_sources(sources, opts).map_batches(
        Predictor, fn_constructor_kwargs={"model_bytes": export.model_bytes, "classes": export.classes, "k": k,
                                          "threads": pool["threads"]},
        batch_size=batch_size, concurrency=pool["concurrency"], **resources)
    from tinyray.data.pipeline import within

    wait = float(os.environ.get("TINYRAY_PREDICT_TIMEOUT") or PREDICT_TIMEOUT)
    stalled = lambda: TinyrayError(  # noqa: E731
        f"no predictions arrived within {wait:g} s (TINYRAY_PREDICT_TIMEOUT): the {pool['concurrency']} predict "
        f"actor(s) could not start or the images could not be read (see `ray status`)")
    batches = within(ds.iter_batches(batch_format="pyarrow", batch_size=None), wait, stalled)
    table = pa.concat_tables([pa.table(b) for b in batches]
                             or [pa.table(prediction_rows([], [], [], None, export.classes, k))])
    files = table.column("file").to_pylist()
    if storage.is_s3(sources[0]):  # Ray Data's paths are the filesystem's: bucket/key
        files = ["s3://" + f for f in files]
        table = table.set_column(table.schema.get_field_index("file"), "file", pa.array(files, pa.string()))
    write_table(table, out, opts)
    errors = table.column("error").to_pylist()
    skipped = [{"file": f, "reason": e} for f, e in zip(files, errors) if e]
    return {"images": len(files), "predicted": len(files) - len(skipped), "skipped": skipped, "out": out}


def write_table(table, out: str, opts: StorageOptions) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    import pyarrow as pa

    from tinyray.render import csv_cell

    buf = io.BytesIO()
    if out.endswith(".parquet"):
        pq.write_table(table, buf)
    else:  # file names and class names come from outside: no cell a spreadsheet would run
        columns = [pa.array([csv_cell(v) for v in col.to_pylist()], col.type) if pa.types.is_string(col.type) else col
                   for col in table.columns]
        pacsv.write_csv(pa.table(columns, names=table.column_names), buf)
    storage.write_bytes(out if storage.is_s3(out) else storage.local_path(out), buf.getvalue(), opts)


def print_predictions(done: list, skipped: list, as_json: bool, out=sys.stdout) -> None:
    if as_json:
        print(json.dumps(done, indent=1), file=out)
    else:
        for d in done:
            print(d["file"] + "  " + "  ".join(f"{t['wnid']} {t['name'].split(',')[0]} {t['prob']:.3f}"
                                               for t in d["top"]), file=out)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
