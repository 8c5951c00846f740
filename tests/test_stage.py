"""Staging a release to Parquet shards: exact outcomes for good and bad files, idempotence,
interruption, the embedded S3 endpoint and clear one-line errors from the CLI."""
import io
import json
import os
import subprocess

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tinyray.data import stage as stage_mod
from tinyray.data.stage import StageConfig, load_manifest, normalise_image, shard_ranges, stage_dataset
from tinyray.data.storage import StorageOptions, filesystem
from tinyray.errors import TinyrayError

from conftest import SAMPLE


def encode(mode="RGB", fmt="JPEG", size=(64, 64)):
    img = Image.new(mode, size, color=(10, 200, 30, 0)[: len(mode)] if mode != "L" else 99)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_good_rgb_jpeg_is_stored_as_it_is():
    data = encode()
    assert normalise_image(data) == (data, None, False)


def test_grayscale_jpeg_is_kept_and_counted():
    data = encode("L")
    assert normalise_image(data) == (data, None, True)


@pytest.mark.parametrize("data,note", [
    (encode("RGB", "PNG"), "PNG file named .JPEG"),
    (encode("CMYK", "JPEG"), "CMYK colour mode"),
    (encode("RGB", "JPEG", (80, 60)), "size 80x60"),
])
def test_convertible_files_become_64x64_rgb_jpegs(data, note):
    stored, reason, gray = normalise_image(data)
    assert reason.startswith(note) and reason.endswith("re-encoded as 64x64 RGB JPEG")
    img = Image.open(io.BytesIO(stored))
    assert (img.format, img.mode, img.size, gray) == ("JPEG", "RGB", (64, 64), False)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (encode()[:300], "truncated or corrupt image"),
    (b"this is not an image at all", "not a JPEG or PNG file"),
])
def test_bad_files_are_skipped_with_their_reason(data, reason):
    stored, why, _ = normalise_image(data)
    assert stored is None and why.startswith(reason)


@pytest.mark.parametrize("count,rows,expected", [
    (0, 10, []),
    (10, 10, [(0, 10)]),
    (11, 10, [(0, 6), (6, 11)]),
    (100_000, 2500, [(i * 2500, (i + 1) * 2500) for i in range(40)]),
])
def test_shard_ranges(count, rows, expected):
    assert shard_ranges(count, rows) == expected


def read_split(dest, manifest, split):
    tables = [pq.read_table(os.path.join(dest, s["path"])) for s in manifest[split]["shards"]]
    return [row for t in tables for row in t.to_pylist()]


def test_stage_local_folder_writes_shards_and_manifest(sample_release, tmp_path):
    dest = str(tmp_path / "staged")
    manifest = stage_dataset(StageConfig(sample_release, dest, rows_per_shard=25, progress=False))
    n_train, n_val = SAMPLE.classes * SAMPLE.train_per_class, SAMPLE.classes * SAMPLE.val_per_class
    assert manifest["train"]["count"] == n_train and manifest["val"]["count"] == n_val
    assert len(manifest["train"]["shards"]) == 4 and manifest["skipped"] == []
    assert manifest["train"]["grayscale"] + manifest["val"]["grayscale"] > 0
    assert [c["label"] for c in manifest["classes"]] == list(range(SAMPLE.classes))
    assert json.load(open(os.path.join(dest, "manifest.json"))) == manifest
    rows = read_split(dest, manifest, "train")
    assert len(rows) == n_train and len({r["file"] for r in rows}) == n_train
    # bytes are stored as they were in the release, labels follow wnids.txt
    r = rows[0]
    assert open(os.path.join(sample_release, r["file"]), "rb").read() == r["image"]
    assert manifest["classes"][r["label"]]["wnid"] == r["wnid"]
    # every shard mixes classes (shuffled before sharding), so any split of shards is balanced
    first = pq.read_table(os.path.join(dest, manifest["train"]["shards"][0]["path"])).column("label").to_pylist()
    assert len(set(first)) == SAMPLE.classes


def test_staging_twice_gives_byte_identical_output(sample_release, tmp_path):
    snapshot = []
    for n in range(2):
        dest = str(tmp_path / f"staged{n}")
        stage_dataset(StageConfig(sample_release, dest, rows_per_shard=30, progress=False))
        files = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
        snapshot.append({f: open(os.path.join(dest, f), "rb").read() for f in files})
    assert snapshot[0] == snapshot[1]


def test_restaging_with_fewer_shards_removes_the_stale_ones(sample_release, tmp_path):
    dest = str(tmp_path / "staged")
    stage_dataset(StageConfig(sample_release, dest, rows_per_shard=10, progress=False))
    manifest = stage_dataset(StageConfig(sample_release, dest, rows_per_shard=1000, progress=False))
    assert sorted(os.listdir(dest)) == ["manifest.json", "v2"]  # version 1's 10 train shards are gone
    assert sorted(os.listdir(os.path.join(dest, "v2", "train"))) == ["part-00000.parquet"]
    assert len(manifest["train"]["shards"]) == 1


def interrupt_staging(monkeypatch, at: int = 50):
    """Make staging stop at its ``at``-th image, as Ctrl-C or a lost machine would; returns the
    real ``normalise_image`` (to put back)."""
    calls, real = {"n": 0}, stage_mod.normalise_image

    def dies_midway(data):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(data)

    monkeypatch.setattr(stage_mod, "normalise_image", dies_midway)
    return real


def test_an_interrupted_first_staging_leaves_no_manifest(sample_release, tmp_path, monkeypatch):
    dest = str(tmp_path / "staged")
    interrupt_staging(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        stage_dataset(StageConfig(sample_release, dest, rows_per_shard=10, progress=False))
    assert not os.path.exists(os.path.join(dest, "manifest.json"))
    with pytest.raises(TinyrayError, match="has no manifest.json"):
        load_manifest(dest)


def test_bad_files_are_skipped_or_converted_and_listed(release_copy, tmp_path):
    wnid = open(os.path.join(release_copy, "wnids.txt")).read().split()[0]
    images = os.path.join(release_copy, "train", wnid, "images")
    names = sorted(os.listdir(images))
    open(os.path.join(images, names[0]), "wb").close()  # empty
    data = open(os.path.join(images, names[1]), "rb").read()
    open(os.path.join(images, names[1]), "wb").write(data[: len(data) // 3])  # truncated
    open(os.path.join(images, names[2]), "wb").write(encode("RGB", "PNG"))  # PNG named .JPEG
    open(os.path.join(images, names[3]), "wb").write(encode("CMYK", "JPEG"))  # CMYK
    dest = str(tmp_path / "staged")
    manifest = stage_dataset(StageConfig(release_copy, dest, progress=False))
    prefix = f"train/{wnid}/images/"
    assert {s["file"]: s["reason"].split(" (")[0] for s in manifest["skipped"]} == {
        prefix + names[0]: "empty file",
        prefix + names[1]: "truncated or corrupt image",
    }
    assert {c["file"] for c in manifest["converted"]} == {prefix + names[2], prefix + names[3]}
    assert manifest["train"]["count"] == SAMPLE.classes * SAMPLE.train_per_class - 2
    stored = {r["file"]: r["image"] for r in read_split(dest, manifest, "train")}
    assert Image.open(io.BytesIO(stored[prefix + names[2]])).format == "JPEG"


def test_stage_into_the_embedded_s3_endpoint(sample_release, s3, tmp_path):
    local = stage_dataset(StageConfig(sample_release, str(tmp_path / "local"), rows_per_shard=40, progress=False))
    remote = stage_dataset(StageConfig(sample_release, "s3://tinyray/stage-test", rows_per_shard=40,
                                       progress=False), s3.options)
    assert remote == local
    assert load_manifest("s3://tinyray/stage-test", s3.options) == remote
    fs, root = filesystem("s3://tinyray/stage-test", s3.options)
    table = pq.read_table(f"{root}/{remote['val']['shards'][0]['path']}", filesystem=fs)
    assert table.num_rows == remote["val"]["shards"][0]["rows"]
    assert table.column_names == ["image", "label", "wnid", "file"]


def test_storage_paths_are_absolute_locally_and_untouched_in_s3(monkeypatch, tmp_path):
    from tinyray.data.storage import filesystem, join

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert join("~/runs", "r1") == f"{tmp_path}/home/runs/r1"
    assert join("./runs/", "r1") == f"{tmp_path}/runs/r1"
    assert join("file:///data/runs", "r1") == "/data/runs/r1"
    assert join("s3://bucket/runs/", "r1", "ckpt") == "s3://bucket/runs/r1/ckpt"
    # the folder a run is written to is the one its path names
    assert filesystem("~/runs/r1", None)[1] == join("~/runs", "r1")
    with pytest.raises(TinyrayError, match="storage must be s3://bucket/prefix or a local folder"):
        join("gs://bucket/runs", "r1")


def test_storage_options_come_from_the_aws_variables_and_hide_secrets():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKID",
           "AWS_SECRET_ACCESS_KEY": "SECRET", "AWS_REGION": "eu-west-1"}
    opts = StorageOptions.from_env(env=env)
    assert opts.to_env() == env
    assert "SECRET" not in repr(opts) and "AKID" not in repr(opts)
    assert StorageOptions.from_env("http://other:1", env=env).endpoint_url == "http://other:1"
    with pytest.raises(TinyrayError, match="must look like http://host:port"):
        StorageOptions.from_env("localhost:9000", env={})


def test_only_where_the_store_is_may_travel_never_a_key():
    import pickle

    from tinyray.data.storage import EMBEDDED_KEYS, EMBEDDED_MARKER

    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKID",
           "AWS_SECRET_ACCESS_KEY": "SECRET-VALUE", "AWS_REGION": "eu-west-1"}
    opts = StorageOptions.from_env(env=env)
    assert opts.public_env() == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1"}
    # a filesystem handed to Ray is pickled (task arguments, Tune's tuner.pkl): no key inside
    assert b"SECRET-VALUE" not in pickle.dumps(filesystem("s3://bkt/x", opts, ship=True)[0])
    assert b"SECRET-VALUE" in pickle.dumps(filesystem("s3://bkt/x", opts)[0])  # the driver's own, signed
    # the embedded store's keys are public, local-only: a marker names them for the workers
    embedded = StorageOptions("http://127.0.0.1:9", *EMBEDDED_KEYS, "us-east-1")
    assert embedded.public_env() == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "us-east-1",
                                     EMBEDDED_MARKER: "1"}
    assert StorageOptions.from_env(env=embedded.public_env()) == embedded
    # the marker wins over a node's own keys: those are for real AWS, and the embedded store
    # takes only requests signed with its own (private_s3); a node's keys never go to it
    assert StorageOptions.from_env(env={**env, **embedded.public_env()}) == embedded


# ------------------------------------------------------------------ the CLI, as a user runs it


def tinyray(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["tinyray", *args], capture_output=True, text=True, timeout=300, env=full_env)


def assert_one_line_error(out, *fragments):
    assert out.returncode == 1, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.startswith("tinyray: error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_sample_then_stage_prints_a_summary(tmp_path):
    out = tinyray("data", "sample", str(tmp_path), "--classes", "3", "--train-per-class", "5", "--val-per-class", "2")
    assert out.returncode == 0, out.stderr
    out = tinyray("data", "stage", str(tmp_path), str(tmp_path / "staged"))
    assert out.returncode == 0, out.stderr
    assert "staged 15 train + 6 val images (3 classes)" in out.stderr and "0 skipped" in out.stderr


def test_cli_unknown_val_wnid_fails_then_skip_bad_labels_lists_it(release_copy, tmp_path):
    ann = os.path.join(release_copy, "val", "val_annotations.txt")
    with open(ann, "a") as f:
        f.write("val_0.JPEG\tn12345678\t0\t0\t1\t1\n")
    lines = len(open(ann).read().splitlines())
    out = tinyray("data", "stage", release_copy, str(tmp_path / "a"))
    assert_one_line_error(out, "'n12345678'", f"line {lines}", "--skip-bad-labels")
    out = tinyray("data", "stage", release_copy, str(tmp_path / "b"), "--skip-bad-labels")
    assert out.returncode == 0, out.stderr
    manifest = json.load(open(tmp_path / "b" / "manifest.json"))
    assert any("n12345678" in s["reason"] for s in manifest["skipped"])
    assert "1 skipped" in out.stderr


def test_cli_missing_wnids_is_one_line(release_copy, tmp_path):
    os.remove(os.path.join(release_copy, "wnids.txt"))
    assert_one_line_error(tinyray("data", "stage", release_copy, str(tmp_path / "x")), "wnids.txt is missing")


def test_cli_unreachable_endpoint_is_one_line(sample_release):
    out = tinyray("data", "stage", sample_release, "s3://tinyray/x", "--endpoint-url", "http://127.0.0.1:9",
                  env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert_one_line_error(out, "cannot reach the object store at http://127.0.0.1:9")


def test_cli_missing_bucket_is_one_line(sample_release, s3):
    out = tinyray("data", "stage", sample_release, "s3://no-such-bucket/x", env=s3.env)
    assert_one_line_error(out, "bucket 'no-such-bucket' does not exist")


def test_cli_refused_credentials_is_one_line_without_the_secret(sample_release, tmp_path):
    # A second endpoint with authentication on (moto checks keys against its IAM, which knows none).
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for line in proc.stdout:
            if "Running on http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].split()[0].strip("/"))
                break
        assert port
        out = tinyray("data", "stage", sample_release, "s3://tinyray/x",
                      env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "AKIAWRONG",
                           "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"})
        assert_one_line_error(out, "refused the credentials")
        assert "wrong-secret-value" not in out.stderr + out.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=10)
