"""Export and predict: a hand-built experiment folder (a random tinycnn in a real run-folder
layout), so the whole hand-over path runs without Ray; batch inference on Ray is at the end."""
import glob
import io
import json
import os
import subprocess

import numpy as np
import pytest

from tinyray.config import TrainConfig
from tinyray.errors import TinyrayError
from tinyray.evaluate import class_report
from tinyray.export import choose_trial, export_model, train_command, with_uint8_input
from tinyray.predict import Export, decode_image, prediction_rows, predict_files, top_k

CLASSES = [{"label": i, "wnid": f"n0000000{i}", "name": f"class {i}, synonym"} for i in range(4)]
BASE = {"model": "tinycnn", "epochs": 2, "batch_size": 8}


def write_experiment(root, lrs_top1=((1e-3, 0.5), (3e-3, 0.75))):
    """An experiment folder as a sweep leaves it: sweep.json, Tune trial folders, run folders."""
    from tinyray.models import create_model
    from tinyray.tfk import keras

    exp = root / "exp"
    meta = {"sweep": {"name": "exp", "storage": str(root), "train": BASE, "grid": {"lr": [lr for lr, _ in lrs_top1]},
                      "scheduler": {"type": "fifo"}, "max_concurrent_trials": 1},
            "data": "s3://b/d", "source": {}, "dataset": {"classes": 4, "train": 96, "val": 24, "skipped": 0},
            "cluster": {"nodes": 1, "resources": [{"CPU": 2.0}], "max_concurrent_trials": 1},
            "provenance": {"git_commit": "abc123", "git_dirty": True, "versions": {"tinyray": "0.1.0"},
                           "manifest_sha256": "d1g35t"},
            "started": "now", "endpoint": "http://127.0.0.1:9"}
    exp.mkdir(parents=True)
    (exp / "sweep.json").write_text(json.dumps(meta))
    for i, (lr, top1) in enumerate(lrs_top1):
        cfg = TrainConfig.from_dict({**BASE, "lr": lr, "data": "s3://b/d", "storage": str(exp / "train-runs")})
        epochs = [{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": top1,
                   "val_top5_accuracy": 1.0, "val_count": 24, "epoch_seconds": 2.0, "images_per_second": 50.0,
                   "data_load_seconds": 0.0, "resumed_from_epoch": 0, "optimizer_step": 12 * e} for e in (1, 2)]
        trial = exp / f"run_trial_{i}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps({"lr": lr}))
        (trial / "result.json").write_text("".join(json.dumps(e) + "\n" for e in epochs))
        run = exp / "train-runs" / cfg.run_name
        (run / "model").mkdir(parents=True)
        right = int(round(top1 * 24))
        confusion = np.zeros((4, 4), int)
        for k in range(24):  # `right` images on the diagonal, the rest one class over
            confusion[k % 4, k % 4 if k < right else (k + 1) % 4] += 1
        (run / "eval.json").write_text(json.dumps(class_report(confusion, np.full(4, 6), CLASSES)))
        (run / "result.json").write_text(json.dumps({
            "model": "tinycnn", "run": cfg.run_name, "config": cfg.to_dict(), "epochs": epochs, "params": 36_584 - 196 * 65,
            "train_count": 96, "val_count": 24, "provenance": meta["provenance"]}))
        keras.utils.set_random_seed(i)
        create_model("tinycnn", num_classes=4).save(str(run / "model" / "model.keras"))
    return exp


def test_the_winner_is_exported_as_a_self_contained_uint8_model(tmp_path):
    from tinyray.tfk import keras

    exp = write_experiment(tmp_path)
    out = export_model(str(exp), str(tmp_path / "export"))
    assert sorted(os.listdir(out)) == ["README.md", "classes.json", "eval.json", "export.json", "model.keras"]
    marker = json.load(open(os.path.join(out, "export.json")))
    assert marker["run"] == "tinycnn-adam-lr0.003-b8x1-e2-s0" and marker["input"]["dtype"] == "uint8"
    assert json.load(open(os.path.join(out, "eval.json")))["top1"] == 0.75  # the winner
    model = keras.models.load_model(os.path.join(out, "model.keras"))  # plain tf_keras, no custom objects
    trained = keras.models.load_model(str(exp / "train-runs" / marker["run"] / "model" / "model.keras"))
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert model.input.dtype.name == "uint8"
    np.testing.assert_allclose(model.predict(x, verbose=0), trained.predict(x / 255.0, verbose=0), atol=1e-6)
    card = open(os.path.join(out, "README.md")).read()
    assert "git commit abc123 with uncommitted changes" in card and "d1g35t" in card
    assert "`tinyray train --model tinycnn --data s3://b/d --epochs 2 --batch-size 8 --lr 0.003 --storage " in card
    assert "| val | 24 | 75.00 % | 100.00 % |" in card


@pytest.mark.parametrize("name,message", [
    ("run_trial_0", None),
    ("tinycnn-adam-lr0.001-b8x1-e2-s0", None),
    ("nope", "no trial named nope"),
])
def test_a_trial_is_named_by_its_folder_or_run_name(tmp_path, name, message):
    from tinyray.folders import load_experiment

    _, trials = load_experiment(str(write_experiment(tmp_path)))
    if message:
        with pytest.raises(TinyrayError, match=message):
            choose_trial(trials, name)
    else:
        assert choose_trial(trials, name).lr == 1e-3
    assert choose_trial(trials).lr == 3e-3


def test_train_command_gives_every_non_default_field():
    cfg = TrainConfig(model="model2", data="s3://b/d", lr=3e-3, augment="none", workers=2, name="r").to_dict()
    assert train_command(cfg) == "tinyray train --model model2 --data s3://b/d --workers 2 --lr 0.003 --augment none --name r"


def test_decode_image_reads_what_training_reads_and_names_what_it_cannot():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (32, 32), 200).save(buf, "PNG")  # grayscale and small: RGB, resized
    img = decode_image(buf.getvalue())
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and int(img[0, 0, 0]) == 200
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"not a jpeg")


def test_top_k_and_prediction_rows():
    probs = np.array([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]])
    tops = top_k(probs, CLASSES, 2)
    assert [[t["wnid"][-1] for t in row] for row in tops] == [["1", "2"], ["0", "1"]]  # ties: lower label
    cols = prediction_rows(["a", "b", "c"], [1, None, 1], [None, "not a readable image", None], probs, CLASSES, 2)
    assert cols["file"] == ["a", "b", "c"] and cols["error"] == ["", "not a readable image", ""]
    assert cols["top1_wnid"] == ["n00000001", None, "n00000000"] and cols["top2_prob"][0] == pytest.approx(0.3)


def test_predict_prints_top_k_as_json_and_skips_what_it_cannot_read(tmp_path, sample_release):
    exp = write_experiment(tmp_path)
    export = export_model(str(exp), str(tmp_path / "export"))
    images = sorted(glob.glob(os.path.join(sample_release, "val", "images", "*.JPEG")))[:5]
    (tmp_path / "broken.JPEG").write_bytes(b"not a jpeg")
    out = subprocess.run(["tinyray", "predict", export, *images, str(tmp_path / "broken.JPEG"), "--json", "--top", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["file"] for r in rows] == images and all(len(r["top"]) == 3 for r in rows)
    for r in rows:  # a top-3 of a softmax: descending, positive, and no more than all of it
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and probs[-1] > 0 and sum(probs) <= 1 + 1e-6, probs
    assert rows[0]["top"][0]["name"].startswith("class ")
    assert out.stderr.strip().splitlines()[-1].startswith(f"skipped {tmp_path}/broken.JPEG: not a readable image")
    done, skipped = predict_files(Export(export), images, k=1)
    assert [d["top"][0]["wnid"] for d in done] == [r["top"][0]["wnid"] for r in rows]


def test_a_folder_that_is_not_an_export_is_one_line(tmp_path):
    out = subprocess.run(["tinyray", "predict", str(tmp_path), "x.JPEG"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"tinyray: error: {tmp_path} is not a tinyray export (no export.json of format tinyray-export/1): make one "
        "with 'tinyray export EXPERIMENT --to DIR'"]


def lambda_model(marker):
    """A uint8-input model whose Lambda layer writes ``marker`` when its code runs."""
    from tinyray.tfk import keras

    def plant(x, path=str(marker)):
        open(path, "w").write("code from a model file ran")
        return x

    inputs = keras.Input((64, 64, 3), dtype="uint8")
    x = keras.layers.Lambda(plant)(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("kind", ["hdf5", "zip"])
def test_a_model_file_that_holds_code_is_refused_and_its_code_never_runs(tmp_path, sample_release, kind):
    """An export rewritten in the bucket: its model.keras holds a Lambda, as HDF5 (which tf-keras
    loads with its legacy loader, outside safe mode) or as a zip .keras. predict and export alike
    refuse it in one line, and the marker its code would write stays absent."""
    exp = write_experiment(tmp_path)
    export = export_model(str(exp), str(tmp_path / "export"))
    marker = tmp_path / "marker"
    model = lambda_model(marker)
    marker.unlink(missing_ok=True)  # building the model ran the Lambda once
    crafted = tmp_path / ("crafted.h5" if kind == "hdf5" else "crafted.keras")
    model.save(str(crafted))
    assert not marker.exists()
    target = os.path.join(export, "model.keras")
    os.replace(crafted, target)
    image = sorted(glob.glob(os.path.join(sample_release, "val", "images", "*.JPEG")))[0]
    out = subprocess.run(["tinyray", "predict", export, image], capture_output=True, text=True, timeout=120)
    why = ("is not a zip .keras model file" if kind == "hdf5"
           else "holds what tinyray does not load from a file: module test_export, layer Lambda")
    ours = [line for line in out.stderr.splitlines() if line.startswith("tinyray")]  # TF's own start-up notes aside
    assert out.returncode == 1 and ours == [f"tinyray: error: {target} {why}" + (
        " (tinyray writes only those; another format, such as HDF5, would be loaded by a path that runs code the "
        "file holds)" if kind == "hdf5" else " (only Keras' built-in layers, and no Lambda: a model file is data, "
        "never code)")] and out.stderr.strip().splitlines()[-1] == ours[0], out.stderr
    assert not marker.exists()
    # the same file as every trained run's model: export refuses it too
    for path in glob.glob(str(exp / "train-runs" / "*" / "model" / "model.keras")):
        model.save(str(crafted))
        os.replace(crafted, path)
    assert not marker.exists()
    with pytest.raises(TinyrayError, match=why):
        export_model(str(exp), str(tmp_path / "export2"))
    assert not marker.exists()


def test_a_model_file_naming_a_foreign_module_is_refused(tmp_path):
    """Keras imports the module a .keras config names for each object: only its own may appear."""
    import zipfile

    from tinyray.models import create_model, load_model_file

    path = tmp_path / "m.keras"
    create_model("tinycnn", num_classes=4).save(str(path))
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["layers"][1]["module"] = "antigravity"
    files["config.json"] = json.dumps(config).encode()
    crafted = tmp_path / "crafted.keras"
    with zipfile.ZipFile(crafted, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(TinyrayError, match=r"crafted.keras holds what tinyray does not load from a file: module "
                                           r"antigravity \(only Keras"):
        load_model_file(crafted.read_bytes(), str(crafted))
    assert load_model_file(path.read_bytes(), str(path)).count_params() == 36_584 - 196 * 65  # the real one loads


@pytest.mark.ray
@pytest.mark.slow
def test_batch_inference_over_an_s3_prefix_predicts_every_image_and_lists_the_unreadable(ray_cluster, s3, tmp_path):
    import csv

    from tinyray.data.sample import SampleSpec, write_sample
    from tinyray.data.storage import s3_client
    from tinyray.export import write_export
    from tinyray.models import create_model
    from tinyray.predict import predict_batch
    from tinyray.tfk import keras

    top = write_sample(str(tmp_path / "images"), SampleSpec(classes=10, train_per_class=200, val_per_class=1,
                                                            test_images=1))
    files = sorted(glob.glob(os.path.join(top, "train", "*", "images", "*.JPEG")))
    assert len(files) == 2000
    client = s3_client(s3.options)
    for path in files:
        client.put_object(Bucket="tinyray", Key=f"predict-in/{os.path.basename(path)}", Body=open(path, "rb").read())
    client.put_object(Bucket="tinyray", Key="predict-in/broken.JPEG", Body=b"not a jpeg")
    keras.utils.set_random_seed(0)
    classes = [{"label": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(10)]
    export = write_export(str(tmp_path / "export"), with_uint8_input(create_model("tinycnn", num_classes=10)),
                          classes, None, "# a random tinycnn\n", {"model": "tinycnn"}, s3.options)
    out = predict_batch(Export(export, s3.options), ["s3://tinyray/predict-in/"], str(tmp_path / "preds.csv"), k=3,
                        opts=s3.options)
    assert (out["images"], out["predicted"]) == (2001, 2000)
    assert [s["file"] for s in out["skipped"]] == ["s3://tinyray/predict-in/broken.JPEG"]
    assert out["skipped"][0]["reason"].startswith("not a readable image")
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "preds.csv"))}
    assert len(rows) == 2001
    # the actors predict what a plain in-process predict does, image by image
    done, _ = predict_files(Export(export, s3.options), files[::100], k=3)
    for d in done:
        row = rows[f"s3://tinyray/predict-in/{os.path.basename(d['file'])}"]
        assert [row[f"top{i}_wnid"] for i in (1, 2, 3)] == [t["wnid"] for t in d["top"]]
        assert float(row["top1_prob"]) == pytest.approx(d["top"][0]["prob"], abs=1e-5)


@pytest.mark.ray
@pytest.mark.slow
def test_batch_inference_into_a_prefix_is_written_by_ray_data_with_the_rows_of_one_file(ray_cluster, s3, tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from tinyray.data import storage
    from tinyray.data.sample import SampleSpec, write_sample
    from tinyray.export import write_export
    from tinyray.models import create_model
    from tinyray.predict import predict_batch
    from tinyray.tfk import keras

    top = write_sample(str(tmp_path / "images"), SampleSpec(classes=4, train_per_class=50, val_per_class=1,
                                                            test_images=1))
    folder = os.path.join(top, "train")
    with open(os.path.join(folder, "broken.JPEG"), "wb") as f:
        f.write(b"not a jpeg")
    keras.utils.set_random_seed(0)
    export = write_export(str(tmp_path / "export"), with_uint8_input(create_model("tinycnn", num_classes=4)),
                          CLASSES, None, "# a random tinycnn\n", {"model": "tinycnn"}, s3.options)
    model = Export(export, s3.options)

    def rows(table):
        return sorted(table.to_pylist(), key=lambda r: r["file"])

    one = predict_batch(model, [folder], str(tmp_path / "one.parquet"), k=2, opts=s3.options, batch_size=64)
    expected = rows(pq.read_table(tmp_path / "one.parquet"))
    assert (one["images"], one["predicted"], len(expected)) == (201, 200, 201)

    # Parquet files under an s3:// prefix, written by Ray Data's tasks: the same rows
    prefix = "s3://tinyray/predictions/run1/"
    out = predict_batch(model, [folder], prefix, k=2, opts=s3.options, batch_size=64)
    assert {k: out[k] for k in ("images", "predicted", "skipped")} == {k: one[k] for k in ("images", "predicted",
                                                                                           "skipped")}
    files = storage.list_files(prefix, s3.options)
    assert files and all(f.endswith(".parquet") for f in files)
    fs, path = storage.filesystem(prefix, s3.options)
    assert rows(pq.read_table(path, filesystem=fs)) == expected

    # a prefix that holds files: refused before any inference; --force replaces them (never appends)
    with pytest.raises(TinyrayError, match=rf"--out {prefix} already holds {len(files)} file\(s\): pass --force"):
        predict_batch(model, [folder], prefix, k=2, opts=s3.options)
    predict_batch(model, [folder], prefix, k=2, opts=s3.options, batch_size=64, force=True)
    assert rows(pq.read_table(path, filesystem=fs)) == expected

    # CSV files in a local folder: the same rows as one CSV file
    predict_batch(model, [folder], str(tmp_path / "csv"), k=2, opts=s3.options, batch_size=64, fmt="csv")
    predict_batch(model, [folder], str(tmp_path / "one.csv"), k=2, opts=s3.options, batch_size=64)
    parts = sorted(glob.glob(str(tmp_path / "csv" / "*.csv")))
    import pyarrow as pa

    read = lambda f: pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(  # noqa: E731
        column_types={"top1_prob": pa.float64(), "top2_prob": pa.float64(), "error": pa.string()}))
    assert parts and rows(pa.concat_tables([read(f) for f in parts])) == rows(read(str(tmp_path / "one.csv")))
    assert [r["file"] for r in rows(read(str(tmp_path / "one.csv"))) if r["error"]] == [
        os.path.join(folder, "broken.JPEG")]


def test_a_prefix_to_write_predictions_into_is_checked_before_any_inference(tmp_path, s3):
    from tinyray.predict import check_prefix

    with pytest.raises(TinyrayError, match=r"--out preds.json: give a .parquet or .csv file, or a folder or s3://"):
        check_prefix("preds.json", s3.options, force=False, nodes=1)
    with pytest.raises(TinyrayError, match=r"is a local folder, and each of the cluster's 3 nodes would write"):
        check_prefix(str(tmp_path / "preds"), s3.options, force=False, nodes=3)
    check_prefix(str(tmp_path / "preds"), s3.options, force=False, nodes=1)  # not there yet: fine
    check_prefix("s3://tinyray/never-written/", s3.options, force=False, nodes=3)
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "old.parquet").write_bytes(b"x")
    with pytest.raises(TinyrayError, match=r"already holds 1 file\(s\): pass --force to replace them$"):
        check_prefix(str(tmp_path / "preds"), s3.options, force=False, nodes=1)
    check_prefix(str(tmp_path / "preds"), s3.options, force=True, nodes=1)


@pytest.mark.parametrize("cluster,pool", [
    ({"CPU": 2.0}, {"concurrency": 1, "num_cpus": 1, "threads": 2}),
    ({"CPU": 16.0}, {"concurrency": 15, "num_cpus": 1, "threads": 1}),
    ({"CPU": 1.0}, {"concurrency": 1, "num_cpus": 1, "threads": 1}),
    ({"CPU": 32.0, "GPU": 4.0}, {"concurrency": 4, "num_gpus": 1, "threads": 2}),
])
def test_the_actor_pool_follows_the_cluster(cluster, pool):
    from tinyray.predict import actor_pool

    assert actor_pool(cluster) == pool


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_export_is_written_whole_or_not_at_all_and_a_full_destination_needs_force(tmp_path, s3, monkeypatch,
                                                                                     where):
    from tinyray.data import storage

    exp = write_experiment(tmp_path)
    dest = str(tmp_path / "export") if where == "local" else "s3://tinyray/exports/whole"
    export_model(str(exp), dest, opts=s3.options)
    storage.write_bytes(storage.join(dest, "stale.txt"), b"from an older export", s3.options)
    with pytest.raises(TinyrayError, match=r"is not empty: pass --force to replace it whole$"):
        export_model(str(exp), dest, opts=s3.options)
    before = {f: storage.read_bytes(storage.join(dest, f), s3.options) for f in storage.list_files(dest, s3.options)}

    # a replacement that fails half-way (the third file of the upload, or of the local copy)
    calls = {"n": 0}

    def fails_on_the_third(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError("disk full")
            return real(*args, **kwargs)
        return wrapped

    if where == "s3":
        monkeypatch.setattr(storage, "_put_file", fails_on_the_third(storage._put_file))
    else:
        import shutil

        def copies_one_file_then_fails(src, dst, **_):
            os.makedirs(dst)
            shutil.copyfile(os.path.join(src, "README.md"), os.path.join(dst, "README.md"))
            raise OSError("disk full")

        monkeypatch.setattr(shutil, "copytree", copies_one_file_then_fails)
    with pytest.raises((TinyrayError, OSError)):
        export_model(str(exp), dest, opts=s3.options, force=True)
    monkeypatch.undo()
    after = {f: storage.read_bytes(storage.join(dest, f), s3.options) for f in storage.list_files(dest, s3.options)}
    assert after == before  # the old export, every byte, and nothing of the new one
    Export(dest, s3.options)

    out = export_model(str(exp), dest, opts=s3.options, force=True)
    assert storage.list_files(out, s3.options) == ["README.md", "classes.json", "eval.json", "export.json",
                                                   "model.keras"]  # replaced whole: no stale file
    assert Export(out, s3.options).classes[0]["wnid"] == CLASSES[0]["wnid"]
    if where == "s3":  # no temporary prefix left beside it
        assert storage.list_files("s3://tinyray/exports", s3.options) == [f"whole/{f}" for f in
                                                                          storage.list_files(out, s3.options)]
    else:
        assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_one_predictions_file_is_written_a_block_at_a_time_and_whole_or_not_at_all(tmp_path, s3, where, suffix):
    """`predict … --out preds.parquet|.csv`: the blocks stream into the file (this process never
    holds them all), the file has every row in order, and a run that fails half-way leaves no
    file and no temporary one."""
    import tempfile

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from tinyray.data import storage
    from tinyray.predict import prediction_schema, write_one_file

    schema, n, blocks = prediction_schema(1), 20_000, 10
    out = str(tmp_path / f"preds{suffix}") if where == "local" else f"s3://tinyray/one-file/{os.urandom(4).hex()}{suffix}"
    held = []  # Arrow's allocated bytes as each block is made, over what was allocated before the first

    def make(i, fail_at=None):
        if i == fail_at:
            raise RuntimeError("a predict actor died")
        held.append(pa.total_allocated_bytes() - base)
        return pa.table({"file": [f"s3://bucket/val/images/val_{i * n + j}.JPEG" for j in range(n)],
                         "top1_wnid": ["n01443537"] * n, "top1_prob": np.full(n, 0.5), "error": [""] * n}, schema)

    base = pa.total_allocated_bytes()
    block_bytes = make(0).nbytes
    held.clear()
    assert write_one_file((make(i) for i in range(blocks)), schema, out, s3.options) == n * blocks
    assert max(held) < 4 * block_bytes, (held, block_bytes)  # gathered, it would reach 10 blocks
    data = storage.read_bytes(out, s3.options)
    table = pq.read_table(io.BytesIO(data)) if suffix == ".parquet" else pacsv.read_csv(io.BytesIO(data))
    assert table.num_rows == n * blocks and table.column("file")[n * blocks - 1].as_py().endswith(
        f"val_{n * blocks - 1}.JPEG")

    # a failure half-way: nothing at the destination, nothing left behind
    again = out[: -len(suffix)] + "-again" + suffix
    temps = lambda: sorted(glob.glob(os.path.join(tmp_path, ".predictions-*")) +  # noqa: E731
                           glob.glob(os.path.join(tempfile.gettempdir(), ".predictions-*")))
    before = temps()
    with pytest.raises(RuntimeError, match="a predict actor died"):
        write_one_file((make(i, fail_at=3) for i in range(blocks)), schema, again, s3.options)
    assert not storage.exists(again, s3.options) and temps() == before
