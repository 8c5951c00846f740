"""Stage a Tiny ImageNet release once as Parquet shards in object storage.

120,000 small JPEGs read one object at a time from S3 is the slow path (ray-project/ray#26383,
#38023, #40686), so tinyray packs them: ``DEST/v<N>/{train,val}/part-NNNNN.parquet`` with
columns ``image`` (the JPEG bytes as stored), ``label``, ``wnid``, ``file``, and
``DEST/manifest.json``, which names the shards.

A re-staging writes version N+1 beside version N and replaces the manifest last, so a good
dataset is never lost to an interrupted one; version N's shards go once the new manifest is in
place (``--keep-previous`` keeps them). Everything read from the release is bounded first: each
file's size (``layout.MAX_MEMBER_BYTES``), each image's format and pixels (``images``), a
download's size, time and digest. Examples are shuffled with a fixed seed before sharding (each
shard holds every class, so any split of shards across workers is balanced), and nothing
time-dependent is written: staging the same release twice into a new DEST gives byte-identical
output.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from tinyray.data import storage
from tinyray.data.layout import IMAGE_SIZE, MAX_MEMBER_BYTES, Example, MemberError, ReleaseFiles, scan_release
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError

MANIFEST = "manifest.json"
FORMAT = "tinyray.staged/v1"
# The release zip is 248 MB; a download is refused past this unless --max-bytes raises it.
MAX_DOWNLOAD_BYTES = 2**30
# A download that sends nothing for this long is given up (seconds; TINYRAY_DOWNLOAD_TIMEOUT).
DOWNLOAD_TIMEOUT = 60
# A staged shard, under a dataset version's prefix (or at DEST's top, as before versions).
SHARD_PATH = re.compile(r"(v\d+/)?(train|val)/part-\d{5}\.parquet")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class StageConfig:
    src: str  # release folder, release zip, or http(s) URL of the zip
    dest: str  # s3://bucket/prefix or a local folder
    rows_per_shard: int = 2500  # ~6 MB of JPEG bytes: few objects, yet enough shards to spread
    skip_bad_labels: bool = False
    shuffle_seed: int = 0
    progress: bool = True
    keep_previous: bool = False  # keep the shards of the dataset this staging replaces
    max_bytes: int | None = None  # raises both caps below: one release file, one download
    allow_http: bool = False  # a plain-http SRC (its bytes can be changed on the way)
    sha256: str | None = None  # the download's expected digest, checked before it is used

    def __post_init__(self):
        if self.rows_per_shard < 1:
            raise TinyrayError("--rows-per-shard must be at least 1")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise TinyrayError("--max-bytes must be at least 1")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise TinyrayError(f"--sha256 must be 64 hex digits, got {self.sha256!r}")

    @property
    def member_cap(self) -> int:
        return self.max_bytes or MAX_MEMBER_BYTES

    @property
    def download_cap(self) -> int:
        return self.max_bytes or MAX_DOWNLOAD_BYTES


def normalise_image(data: bytes) -> tuple[bytes | None, str | None, bool]:
    """Check one image file: ``(bytes to store or None to skip, reason/note, is_grayscale)``.

    A good 64x64 RGB or grayscale JPEG is stored as it is (grayscale becomes RGB when decoded).
    A PNG or CMYK file named .JPEG, or an image of another size, is re-encoded as a 64x64 RGB
    JPEG with a note. An empty, truncated or undecodable file, any other format and an image
    over the pixel budget (``images.open_image``) are skipped with the reason.
    """
    from PIL import Image

    from tinyray.data.images import open_image

    try:
        img = open_image(data)
    except ValueError as e:
        return None, str(e), False
    fmt, mode = img.format, img.mode
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


def _fetch_release(cfg: StageConfig) -> str:
    """A local path for ``cfg.src``: itself, or the zip downloaded once into ~/.cache/tinyray.

    A download is https unless ``allow_http``, bounded in size (``download_cap``, from the
    server's Content-Length and again while reading) and in silence (``DOWNLOAD_TIMEOUT``), and
    checked against ``sha256`` when given. The cache is keyed by the URL and the size the server
    announces, so a changed file at the same URL or another URL with the same name is fetched anew.
    """
    src = cfg.src
    if not src.startswith(("http://", "https://")):
        return src
    if src.startswith("http://") and not cfg.allow_http:
        raise TinyrayError(f"{src}: plain http can be changed on the way; use https, or --allow-http "
                           f"(with --sha256 to check what arrives)")
    timeout = float(os.environ.get("TINYRAY_DOWNLOAD_TIMEOUT") or DOWNLOAD_TIMEOUT)
    cache = os.path.join(os.path.expanduser("~/.cache/tinyray"), "downloads")
    os.makedirs(cache, exist_ok=True)
    try:
        response = urllib.request.urlopen(src, timeout=timeout)  # noqa: S310 - scheme checked above
    except (OSError, ValueError) as e:
        raise TinyrayError(f"could not download {src}: {getattr(e, 'reason', None) or e}") from None
    with response:
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        if size is not None and size > cfg.download_cap:
            raise TinyrayError(f"{src} is {size:,} bytes, over the {cfg.download_cap:,}-byte download cap "
                               f"(--max-bytes raises it)")
        name = os.path.basename(src.split("?")[0]) or "release.zip"
        key = hashlib.sha256(src.encode()).hexdigest()[:16]
        local = os.path.join(cache, f"{key}-{size if size is not None else 'unsized'}-{name}")
        if size is not None and os.path.exists(local) and os.path.getsize(local) == size:
            _check_digest(local, cfg.sha256, src)
            return local
        part = f"{local}.part-{os.getpid()}"  # per process: two stagings never share one
        print(f"downloading {src} ...", file=sys.stderr)
        digest, got = hashlib.sha256(), 0
        try:
            with open(part, "wb") as out:
                while chunk := response.read(1 << 20):
                    got += len(chunk)
                    if got > cfg.download_cap:
                        raise TinyrayError(f"{src} sent more than the {cfg.download_cap:,}-byte download cap "
                                           f"(--max-bytes raises it)")
                    digest.update(chunk)
                    out.write(chunk)
            if size is not None and got != size:
                raise TinyrayError(f"{src} sent {got:,} of its {size:,} bytes: the download was cut; try again")
            if cfg.sha256 and digest.hexdigest() != cfg.sha256.lower():
                raise TinyrayError(f"{src} has sha256 {digest.hexdigest()}, not the {cfg.sha256.lower()} "
                                   f"given with --sha256: not used")
        except OSError as e:  # a stalled or dropped connection (socket timeout included)
            _remove(part)
            raise TinyrayError(f"could not download {src}: {e or type(e).__name__} "
                               f"(nothing arrived for {timeout:g} s, or the connection dropped)") from None
        except BaseException:
            _remove(part)
            raise
    os.replace(part, local)
    return local


def _check_digest(path: str, sha256: str | None, src: str) -> None:
    if not sha256:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        raise TinyrayError(f"{src} (cached at {path}) has sha256 {digest.hexdigest()}, not the {sha256.lower()} "
                           f"given with --sha256: not used")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def stage_dataset(cfg: StageConfig, opts: StorageOptions | None = None) -> dict:
    """Stage the release at ``cfg.src`` into ``cfg.dest`` and return the manifest.

    The shards go under a new version prefix (``DEST/v<N>/``, N one more than the dataset being
    replaced) and the manifest that points at them is written last, so the previous dataset stays
    whole and readable until the new one is; only then are the previous shards removed (unless
    ``keep_previous``), along with any left by an interrupted staging."""
    opts = opts or StorageOptions.from_env()
    started = time.monotonic()
    files = ReleaseFiles(_fetch_release(cfg), max_bytes=cfg.member_cap)
    try:
        release = scan_release(files, skip_bad_labels=cfg.skip_bad_labels)
        storage.check_writable(cfg.dest, opts)
        fs, root = storage.filesystem(cfg.dest, opts)
        previous = _previous(cfg.dest, opts)
        version = int((previous or {}).get("version", 0)) + 1

        skipped = list(release.skipped)
        converted: list[dict] = []
        splits = {}
        for split, examples in (("train", release.train), ("val", release.val)):
            splits[split] = _write_split(files, fs, root, f"v{version}/{split}", shuffled(examples, cfg.shuffle_seed),
                                         cfg, skipped, converted, opts)
    finally:
        files.close()

    manifest = {
        "format": FORMAT,
        "version": version,
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
    keep = _shard_paths(manifest) | (_shard_paths(previous) if previous and cfg.keep_previous else set())
    removed = _remove_unlisted_shards(fs, root, keep, cfg.dest, opts)
    seconds = time.monotonic() - started
    total_bytes = sum(s["bytes"] for s in splits.values())
    print(
        f"staged {splits['train']['count']} train + {splits['val']['count']} val images "
        f"({len(release.classes)} classes) into {cfg.dest}: {len(skipped)} skipped, "
        f"{len(converted)} converted, {total_bytes / 1e6:.1f} MB in "
        f"{sum(len(s['shards']) for s in splits.values())} shards, {seconds:.1f} s",
        file=sys.stderr,
    )
    if previous:
        kept = f"kept version {previous.get('version', 0)} (--keep-previous); " if cfg.keep_previous else ""
        print(f"dataset version {version} replaces version {previous.get('version', 0)}: {kept}"
              f"{removed} old shard(s) removed", file=sys.stderr)
    return manifest


def _previous(dest: str, opts: StorageOptions) -> dict | None:
    """The manifest this staging replaces, or None (none there, or not one tinyray can read)."""
    try:
        return load_manifest(dest, opts)
    except TinyrayError:
        return None


def _shard_paths(manifest: dict) -> set[str]:
    return {s["path"] for split in SPLITS for s in manifest.get(split, {}).get("shards", [])}


def _write_split(files, fs, root, folder, examples, cfg, skipped, converted, opts) -> dict:
    """Write ``examples`` as shards under ``root/folder`` (``v<N>/train``); their manifest entry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("image", pa.binary()), ("label", pa.int32()),
                        ("wnid", pa.string()), ("file", pa.string())])
    progress = _Progress(folder.rsplit("/", 1)[-1], len(examples), cfg.progress)
    shards, count, gray, nbytes, done = [], 0, 0, 0, 0
    if not storage.is_s3(cfg.dest):
        fs.create_dir(f"{root}/{folder}", recursive=True)
    for start, end in shard_ranges(len(examples), cfg.rows_per_shard):
        cols = {"image": [], "label": [], "wnid": [], "file": []}
        for ex in examples[start:end]:
            try:
                stored, note, is_gray = normalise_image(files.read_bytes(ex.file))
            except MemberError as e:  # too large to read, or a corrupt zip member: listed like a bad image
                stored, note, is_gray = None, str(e), False
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
        name = f"{folder}/part-{len(shards):05d}.parquet"
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
    return {"count": count, "grayscale": gray, "bytes": nbytes, "shards": shards}


def _remove_unlisted_shards(fs, root, keep: set[str], dest, opts) -> int:
    """Delete every shard under DEST that ``keep`` does not list: the replaced dataset's, and
    what an interrupted staging left. Only files named as tinyray names shards are touched."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        removed, emptied = 0, set()
        for info in infos:
            rel = info.path[len(root) + 1:]
            if info.type == pafs.FileType.File and SHARD_PATH.fullmatch(rel) and rel not in keep:
                fs.delete_file(info.path)
                removed += 1
                emptied.add(os.path.dirname(rel))
    except OSError as e:
        raise storage.explain_s3_error(e, dest, opts) from None
    if not storage.is_s3(dest):  # a local DEST keeps no empty v<N>/train folders (S3 has no folders)
        for folder in sorted(emptied, key=len, reverse=True):
            for path in (os.path.join(root, folder), os.path.dirname(os.path.join(root, folder))):
                if path != root:
                    try:
                        os.rmdir(path)
                    except OSError:  # not empty: the other split, or a kept version
                        pass
    return removed


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


def describe_dataset(uri: str, manifest: dict) -> dict:
    """What a staged dataset holds, from its manifest (pure): ``tinyray data inspect``'s figures."""
    from collections import Counter

    def split(name):
        s = manifest.get(name, {})
        return {"images": s.get("count", 0), "grayscale": s.get("grayscale", 0), "shards": len(s.get("shards", [])),
                "bytes": s.get("bytes", 0)}

    def by_reason(items):  # "truncated JPEG: 2 files" reads better than 2 lines of the same reason
        return dict(Counter(i["reason"] for i in items).most_common())

    classes = manifest.get("classes", [])
    return {"uri": uri, "format": manifest.get("format"), "version": manifest.get("version", 0),
            "image_shape": manifest.get("image_shape"), "classes": len(classes),
            "first_classes": [f"{c['wnid']} {c['name']}" for c in classes[:3]],
            "train": split("train"), "val": split("val"),
            "skipped": len(manifest.get("skipped", [])), "skipped_by_reason": by_reason(manifest.get("skipped", [])),
            "converted": len(manifest.get("converted", [])),
            "converted_by_reason": by_reason(manifest.get("converted", []))}


def dataset_lines(d: dict) -> list[str]:
    """``describe_dataset``'s figures as the lines ``tinyray data inspect`` prints."""
    shape = "x".join(map(str, d["image_shape"] or [])) or "?"
    lines = [f"{d['uri']}: {d['format']}, dataset version {d['version']}, images {shape}",
             f"classes: {d['classes']}" + (f" ({', '.join(d['first_classes'])}, …)" if d["classes"] > 3 else
                                            f" ({', '.join(d['first_classes'])})" if d["first_classes"] else "")]
    for name in SPLITS:
        s = d[name]
        gray = f", {s['grayscale']:,} grayscale" if s["grayscale"] else ""
        lines.append(f"{name}: {s['images']:,} images{gray} in {s['shards']} shard(s), {s['bytes'] / 1e6:.1f} MB")
    for what in ("skipped", "converted"):
        reasons = "; ".join(f"{n} × {r}" for r, n in d[f"{what}_by_reason"].items())
        lines.append(f"{what}: {d[what]}" + (f" ({reasons})" if reasons else ""))
    return lines
