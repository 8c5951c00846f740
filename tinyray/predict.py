"""Use an exported model: top-k classes for images, in this process or as Ray Data batch inference.

    tinyray predict MODEL IMAGE…  [--top 5] [--json]          files: predicted here, printed
    tinyray predict MODEL FOLDER|s3://PREFIX … --out preds.parquet|preds.csv
    tinyray predict MODEL s3://PREFIX … --out s3://bucket/preds/ [--format csv]

MODEL is a folder (or s3:// prefix) that ``tinyray export`` wrote. A folder or an s3:// prefix
runs batch inference with Ray Data: the images are read as files, and a pool of actors (one GPU
each where the cluster has GPUs) decodes and predicts them; the predictions are written as
Parquet or CSV: one file, written here a block at a time, or, into a folder or prefix, by Ray
Data from the cluster, so a million images' predictions never pass through this process. An
image that cannot be read is listed as skipped, never dropped silently.
"""
from __future__ import annotations

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


def prediction_schema(k: int):
    """The predictions' Arrow schema, fixed: a batch whose images all failed has the same column
    types as any other (inferred, its probabilities would be nulls of no type)."""
    import pyarrow as pa

    return pa.schema([("file", pa.string()), *[(f"top{i + 1}_{f}", pa.string() if f == "wnid" else pa.float64())
                                               for i in range(k) for f in ("wnid", "prob")], ("error", pa.string())])


class Predictor:
    """A Ray Data actor: the model loaded once, then decode + predict per batch of files.
    ``scheme`` is put back before each path (Ray Data's paths are the filesystem's: bucket/key)."""

    def __init__(self, model_bytes: bytes, classes: list[dict], k: int, threads: int = 1, scheme: str = ""):
        from tinyray.tfk import tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        self.model, self.classes, self.k, self.scheme = load_model(model_bytes), classes, k, scheme

    def __call__(self, batch: dict):
        import pyarrow as pa

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
        files = [self.scheme + p for p in batch["path"]]
        return pa.table(prediction_rows(files, images, errors, probs, self.classes, self.k),
                        schema=prediction_schema(self.k))


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
                  batch_size: int = 256, fmt: str = "parquet", force: bool = False) -> dict:
    """Batch inference with Ray Data over ``sources`` into ``out``, local or s3://: a .parquet or
    .csv file (written here a block at a time: write_one_file), or a folder / prefix that Ray Data writes as
    ``fmt`` files straight from the cluster, so the predictions never pass through this process.
    Ray must be initialised. Returns counts and the skipped files."""
    import ray

    opts = opts or StorageOptions.from_env()
    one_file = out.endswith((".parquet", ".csv"))
    fmt = ("csv" if out.endswith(".csv") else "parquet") if one_file else fmt
    if fmt not in ("parquet", "csv"):
        raise TinyrayError(f"--format {fmt}: give parquet or csv")
    if not one_file:
        check_prefix(out, opts, force, nodes=sum(1 for n in ray.nodes() if n.get("Alive")))
    pool = actor_pool(ray.cluster_resources())
    resources = {k_: v for k_, v in pool.items() if k_ in ("num_gpus", "num_cpus")}
    ds = read_sources(sources, opts).map_batches(
        Predictor, fn_constructor_kwargs={"model_bytes": export.model_bytes, "classes": export.classes, "k": k,
                                          "threads": pool["threads"],
                                          "scheme": "s3://" if storage.is_s3(sources[0]) else ""},
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=pool["concurrency"]), **resources)
    from tinyray.data.pipeline import within

    wait = float(os.environ.get("TINYRAY_PREDICT_TIMEOUT") or PREDICT_TIMEOUT)
    stalled = lambda: TinyrayError(  # noqa: E731
        f"no predictions arrived within {wait:g} s (TINYRAY_PREDICT_TIMEOUT): the {pool['concurrency']} predict "
        f"actor(s) could not start or the images could not be read (see `ray status`)")
    # The blocks stay in the object store: this process holds references and row counts only.
    blocks = [entry for bundle in within(ds.iter_internal_ref_bundles(), wait, stalled) for entry in bundle.blocks]
    images = sum(entry.metadata.num_rows for entry in blocks)
    predictions = ray.data.from_arrow_refs([entry.ref for entry in blocks]) if blocks else None
    if one_file:
        write_one_file((ray.get(entry.ref) for entry in blocks), prediction_schema(k), out, opts)
    elif predictions is not None:
        write_prefix(predictions, out, fmt, opts, force)
    failed = (predictions.filter(expr="error != ''").select_columns(["file", "error"]).take_all()
              if predictions is not None else [])
    skipped = sorted(({"file": r["file"], "reason": r["error"]} for r in failed), key=lambda r: r["file"])
    return {"images": images, "predicted": images - len(skipped), "skipped": skipped, "out": out}


def csv_safe(table):
    """A predictions table with every text cell made safe for a spreadsheet (file and class names
    come from outside: no cell starting ``= + - @`` is left to run)."""
    import pyarrow as pa

    from tinyray.render import csv_cell

    columns = [pa.array([csv_cell(v) for v in col.to_pylist()], col.type) if pa.types.is_string(col.type) else col
               for col in table.columns]
    return pa.table(columns, names=table.column_names)


def write_one_file(tables, schema, out: str, opts: StorageOptions) -> int:
    """One file of predictions, .parquet or .csv, local or s3://, from ``tables`` (an iterable of
    Arrow tables of ``schema``) written one at a time: this process holds one block, never the
    whole set. The file is made under a temporary name beside its place (or in the temp folder,
    for s3://, then uploaded from disk) and appears whole or not at all. Returns its rows."""
    import tempfile

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    local = None if storage.is_s3(out) else storage.local_path(out)
    folder = os.path.dirname(os.path.abspath(local)) if local else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".predictions-", suffix=os.path.splitext(out)[1])
    os.close(fd)
    parquet, rows = out.endswith(".parquet"), 0
    try:
        with (pq.ParquetWriter(tmp, schema) if parquet else pacsv.CSVWriter(tmp, schema)) as writer:
            for table in tables:
                table = table.select(schema.names).cast(schema)
                writer.write_table(table if parquet else csv_safe(table))
                rows += table.num_rows
        if local:
            os.replace(tmp, local)
        else:
            storage.upload_file(tmp, out, opts)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return rows


def check_prefix(out: str, opts: StorageOptions, force: bool, nodes: int) -> None:
    """Before any inference: a folder or prefix to write into. One that holds files needs
    ``force`` (which replaces them: Ray Data's own default appends, and a second run would double
    every row). A local folder on a cluster of several nodes would be split across their disks."""
    if os.path.splitext(out.rstrip("/"))[1]:
        raise TinyrayError(f"--out {out}: give a .parquet or .csv file, or a folder or s3:// prefix for Ray Data "
                           "to write into")
    if not storage.is_s3(out) and nodes > 1:
        raise TinyrayError(f"--out {out} is a local folder, and each of the cluster's {nodes} nodes would write its "
                           "part to its own disk: give an s3:// prefix, or a .parquet or .csv file")
    held = storage.list_files(out, opts) if storage.is_s3(out) or os.path.isdir(storage.local_path(out)) else []
    if held and not force:
        raise TinyrayError(f"--out {out} already holds {len(held)} file(s): pass --force to replace them")


def write_prefix(predictions, out: str, fmt: str, opts: StorageOptions, force: bool = False) -> None:
    """Ray Data writes the predictions' blocks as files under ``out`` from the cluster's tasks,
    each signing in with what its node has (``storage.filesystem(ship=True)``)."""
    from ray.data import SaveMode

    fs, path = storage.filesystem(out, opts, ship=True)
    # check_prefix refused a full one without force; on S3, no empty "folder" object at the prefix
    args = {"filesystem": fs, "mode": SaveMode.OVERWRITE if force else SaveMode.APPEND,
            "try_create_dir": not storage.is_s3(out)}
    if fmt == "csv":
        predictions.map_batches(csv_safe, batch_format="pyarrow").write_csv(path, **args)
    else:
        predictions.write_parquet(path, **args)


def print_predictions(done: list, skipped: list, as_json: bool, out=sys.stdout) -> None:
    if as_json:
        print(json.dumps(done, indent=1), file=out)
    else:
        for d in done:
            print(d["file"] + "  " + "  ".join(f"{t['wnid']} {t['name'].split(',')[0]} {t['prob']:.3f}"
                                               for t in d["top"]), file=out)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
