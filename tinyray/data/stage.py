"""Stage a Tiny ImageNet release once as Parquet shards in object storage.

120,000 small JPEGs read one object at a time from S3 is the slow path (ray-project/ray#26383,
#38023, #40686), so tinyray packs them: ``DEST/{train,val}/part-NNNNN.parquet`` with columns
``image`` (the JPEG bytes as stored), ``label``, ``wnid``, ``file``, and ``DEST/manifest.json``.

The manifest is deleted first and written last, so an interrupted run never leaves a manifest
that points at missing or partial shards. Examples are shuffled with a fixed seed before
sharding (each shard holds every class, so any split of shards across workers is balanced), and
nothing time-dependent is written: staging twice gives byte-identical output.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from tinyray.data import storage
from tinyray.data.layout import Example, ReleaseFiles, scan_release
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError

MANIFEST = "manifest.json"
FORMAT = "tinyray.staged/v1"
IMAGE_SIZE = 64
SPLITS = ("train", "val")


@dataclass(frozen=True)
class StageConfig:
    src: str  # release folder, release zip, or http(s) URL of the zip
    dest: str  # s3://bucket/prefix or a local folder
    rows_per_shard: int = 2500  # ~6 MB of JPEG bytes: few objects, yet enough shards to spread
    skip_bad_labels: bool = False
    shuffle_seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.rows_per_shard < 1:
            raise TinyrayError("--rows-per-shard must be at least 1")


def normalise_image(data: bytes) -> tuple[bytes | None, str | None, bool]:
    """Check one image file: ``(bytes to store or None to skip, reason/note, is_grayscale)``.

    A good 64x64 RGB or grayscale JPEG is stored as it is (grayscale becomes RGB when decoded).
    A PNG or CMYK file named .JPEG, or an image of another size, is re-encoded as a 64x64 RGB
    JPEG with a note. An empty, truncated or undecodable file is skipped with its reason.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return None, "empty file", False
    try:
        img = Image.open(io.BytesIO(data))
        fmt, mode = img.format, img.mode
        img.load()  # decodes fully: a truncated JPEG raises here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return None, f"truncated or corrupt image ({str(e).splitlines()[0][:80]})", False
    notes = []
    if fmt != "JPEG":
        notes.append(f"{fmt or 'unknown'} file named .JPEG")
    if mode not in ("RGB", "L"):
        notes.append(f"{mode} colour mode")
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        notes.append(f"size {img.size[0]}x{img.size[1]}")
    if not notes:
        return data, None, mode == "L"
    rgb = img.convert("RGB")
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), "; ".join(notes) + ": re-encoded as 64x64 RGB JPEG", False


def shard_ranges(count: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of near-equal shards of at most ``rows_per_shard`` rows."""
    if count == 0:
        return []
    n = -(-count // rows_per_shard)
    bounds = [round(i * count / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def shuffled(examples: list[Example], seed: int) -> list[Example]:
    ordered = sorted(examples, key=lambda e: e.file)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


class _Progress:
    """A one-line progress bar on a terminal; a line per 10 % otherwise (logs stay readable)."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.last_decile = -1

    def update(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        frac = done / self.total
        if self.tty:
            bar = "#" * int(frac * 30)
            print(f"\r{self.label:5} [{bar:30}] {done}/{self.total} {time.monotonic() - self.start:5.1f}s",
                  end="", file=sys.stderr, flush=True)
            if done == self.total:
                print(file=sys.stderr)
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            print(f"{self.label}: {done}/{self.total} images", file=sys.stderr, flush=True)


def _fetch_release(src: str) -> str:
    """A local path for SRC: itself, or the zip downloaded once into ~/.cache/tinyray."""
    if not src.startswith(("http://", "https://")):
        return src
    cache = os.path.join(os.path.expanduser("~/.cache/tinyray"), "downloads")
    os.makedirs(cache, exist_ok=True)
    local = os.path.join(cache, os.path.basename(src.split("?")[0]) or "release.zip")
    if not os.path.exists(local):
        print(f"downloading {src} ...", file=sys.stderr)
        try:
            urllib.request.urlretrieve(src, local + ".part")
        except OSError as e:
            raise TinyrayError(f"could not download {src}: {e}") from None
        os.replace(local + ".part", local)
    return local


def stage_dataset(cfg: StageConfig, opts: StorageOptions | None = None) -> dict:
    """Stage the release at ``cfg.src`` into ``cfg.dest`` and return the manifest."""
    opts = opts or StorageOptions.from_env()
    started = time.monotonic()
    files = ReleaseFiles(_fetch_release(cfg.src))
    try:
        release = scan_release(files, skip_bad_labels=cfg.skip_bad_labels)
        storage.check_writable(cfg.dest, opts)
        fs, root = storage.filesystem(cfg.dest, opts)
        _delete(fs, f"{root}/{MANIFEST}", cfg.dest, opts)

        skipped = list(release.skipped)
        converted: list[dict] = []
        splits = {}
        for split, examples in (("train", release.train), ("val", release.val)):
            splits[split] = _write_split(files, fs, root, split, shuffled(examples, cfg.shuffle_seed),
                                         cfg, skipped, converted, opts)
    finally:
        files.close()

    manifest = {
        "format": FORMAT,
        "image_shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
        "columns": {"image": "JPEG bytes as stored", "label": "int32 index into classes",
                    "wnid": "class id", "file": "path in the release"},
        "classes": [{"label": i, "wnid": w, "name": release.names[w]} for i, w in enumerate(release.classes)],
        **splits,
        "skipped": sorted(skipped, key=lambda s: s["file"]),
        "converted": sorted(converted, key=lambda s: s["file"]),
    }
    storage.write_bytes(storage.join(cfg.dest, MANIFEST),
                        json.dumps(manifest, indent=1, sort_keys=True).encode(), opts)
    seconds = time.monotonic() - started
    total_bytes = sum(s["bytes"] for s in splits.values())
    print(
        f"staged {splits['train']['count']} train + {splits['val']['count']} val images "
        f"({len(release.classes)} classes) into {cfg.dest}: {len(skipped)} skipped, "
        f"{len(converted)} converted, {total_bytes / 1e6:.1f} MB in "
        f"{sum(len(s['shards']) for s in splits.values())} shards, {seconds:.1f} s",
        file=sys.stderr,
    )
    return manifest


def _write_split(files, fs, root, split, examples, cfg, skipped, converted, opts) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("image", pa.binary()), ("label", pa.int32()),
                        ("wnid", pa.string()), ("file", pa.string())])
    progress = _Progress(split, len(examples), cfg.progress)
    shards, count, gray, nbytes, done = [], 0, 0, 0, 0
    if not storage.is_s3(cfg.dest):
        fs.create_dir(f"{root}/{split}", recursive=True)
    for start, end in shard_ranges(len(examples), cfg.rows_per_shard):
        cols = {"image": [], "label": [], "wnid": [], "file": []}
        for ex in examples[start:end]:
            stored, note, is_gray = normalise_image(files.read_bytes(ex.file))
            done += 1
            progress.update(done)
            if stored is None:
                skipped.append({"file": ex.file, "reason": note})
                continue
            if note:
                converted.append({"file": ex.file, "reason": note})
            gray += is_gray
            cols["image"].append(stored)
            cols["label"].append(ex.label)
            cols["wnid"].append(ex.wnid)
            cols["file"].append(ex.file)
        name = f"{split}/part-{len(shards):05d}.parquet"
        table = pa.table(cols, schema=schema)
        try:
            # JPEG bytes do not compress; skipping compression saves CPU on read.
            pq.write_table(table, f"{root}/{name}", filesystem=fs, compression="none")
        except OSError as e:
            raise storage.explain_s3_error(e, cfg.dest, opts) from None
        size = sum(len(b) for b in cols["image"])
        shards.append({"path": name, "rows": table.num_rows, "bytes": size})
        count += table.num_rows
        nbytes += size
    progress.update(len(examples))
    _remove_stale_shards(fs, root, split, {s["path"] for s in shards}, cfg.dest, opts)
    return {"count": count, "grayscale": gray, "bytes": nbytes, "shards": shards}


def _remove_stale_shards(fs, root, split, keep, dest, opts) -> None:
    """Shards left from an earlier, larger staging into the same DEST are deleted."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{split}", allow_not_found=True))
    except OSError as e:
        raise storage.explain_s3_error(e, dest, opts) from None
    for info in infos:
        rel = info.path[len(root) + 1:]
        if info.type == pafs.FileType.File and rel.endswith(".parquet") and rel not in keep:
            fs.delete_file(info.path)


def _delete(fs, path, dest, opts) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if "does not exist" in str(e) or "NoSuchKey" in str(e) or "Path does not exist" in str(e):
            return
        raise storage.explain_s3_error(e, dest, opts) from None


def load_manifest(data_uri: str, opts: StorageOptions | None = None) -> dict:
    """The manifest of a staged dataset; a clear error when ``data_uri`` holds none."""
    opts = opts or StorageOptions.from_env()
    try:
        manifest = json.loads(storage.read_bytes(storage.join(data_uri, MANIFEST), opts))
    except FileNotFoundError:
        raise TinyrayError(
            f"{data_uri} has no {MANIFEST}: stage a dataset there first with 'tinyray data stage SRC {data_uri}'"
        ) from None
    except json.JSONDecodeError:
        raise TinyrayError(f"{storage.join(data_uri, MANIFEST)} is not valid JSON") from None
    if manifest.get("format") != FORMAT:
        raise TinyrayError(f"{data_uri}/{MANIFEST} is not a tinyray manifest (format {manifest.get('format')!r})")
    return manifest
