"""The Tiny ImageNet release layout, read exactly. Pure functions: no Ray, no TensorFlow.

    tiny-imagenet-200/
      wnids.txt                     the 200 class ids; line order = label index 0..199
      words.txt                     wnid<TAB>names for ALL of ImageNet (keep the 200)
      train/<wnid>/images/*.JPEG    500 per class (+ train/<wnid>/<wnid>_boxes.txt)
      val/images/*.JPEG             10,000, labelled only by val/val_annotations.txt
      val/val_annotations.txt       file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1
      test/images/*.JPEG            no labels (not staged)

A release is read from a folder or straight from the zip (``ReleaseFiles``), without unpacking.
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field

from tinyray.errors import TinyrayError

RELEASE_DIR = "tiny-imagenet-200"
# The release's images, 64 × 64 RGB: the one declaration of the shape that staging stores, the
# sample writes, the pipeline decodes to and the models take.
IMAGE_SIZE = 64
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
IMAGE_SUFFIXES = (".jpeg", ".jpg")
# The largest single file read from a release (a zip member or a file of the folder), checked
# before it is read: a release image is ~2 KB and words.txt 2.6 MB. ``--max-bytes`` raises it.
MAX_MEMBER_BYTES = 64 * 2**20


class MemberError(ValueError):
    """A file of the release that cannot be read: over the size cap, or a corrupt zip member."""


@dataclass(frozen=True)
class Example:
    file: str  # path relative to the release root, e.g. train/n01443537/images/n01443537_0.JPEG
    label: int
    wnid: str


@dataclass
class Release:
    classes: list[str]  # wnids in label order
    names: dict[str, str]  # wnid → human-readable names
    train: list[Example]
    val: list[Example]
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"} for what was left out


# ------------------------------------------------------------------------------ text parsers


def parse_wnids(text: str) -> list[str]:
    """Class ids in file order (blank lines ignored); a duplicate is an error."""
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    seen = set()
    for i, w in enumerate(wnids):
        # a class id names a folder (train/<wnid>/) and labels the report's plots and tables
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", w):
            raise TinyrayError(f"wnids.txt line {i + 1}: {w!r} is not a class id (letters, digits and _ . - only)")
        if w in seen:
            raise TinyrayError(f"wnids.txt lists {w!r} twice (line {i + 1})")
        seen.add(w)
    if not wnids:
        raise TinyrayError("wnids.txt lists no classes")
    return wnids


def parse_words(text: str, keep: list[str]) -> dict[str, str]:
    """Names for the classes in ``keep`` only (words.txt covers all of ImageNet). A class that
    words.txt does not name gets its wnid as its name."""
    wanted = set(keep)
    names = {}
    for line in text.splitlines():
        wnid, _, name = line.partition("\t")
        wnid = wnid.strip()
        if wnid in wanted:
            names[wnid] = name.strip()
    return {w: names.get(w) or w for w in keep}


def parse_val_annotations(
    text: str, class_index: dict[str, int], skip_bad_labels: bool = False
) -> tuple[dict[str, str], list[dict]]:
    """``file → wnid`` from val_annotations.txt, and the lines that were skipped.

    A line naming a wnid that is not in wnids.txt is an error naming the wnid and the line,
    unless ``skip_bad_labels``, when it is skipped and listed. A malformed line is the same.
    """
    labels: dict[str, str] = {}
    skipped: list[dict] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            problem = f"val_annotations.txt line {n} is not 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1': {line!r}"
            if not skip_bad_labels:
                raise TinyrayError(problem + " (use --skip-bad-labels to skip such lines)")
            skipped.append({"file": f"val/val_annotations.txt:{n}", "reason": "malformed annotation line"})
            continue
        file, wnid = cols[0].strip(), cols[1].strip()
        if wnid not in class_index:
            if not skip_bad_labels:
                raise TinyrayError(
                    f"val_annotations.txt line {n}: wnid {wnid!r} (for {file}) is not in wnids.txt "
                    f"(use --skip-bad-labels to skip such lines)"
                )
            skipped.append({"file": f"val/images/{file}",
                            "reason": f"label {wnid} not in wnids.txt (val_annotations.txt line {n})"})
            continue
        if file in labels and labels[file] != wnid:
            raise TinyrayError(f"val_annotations.txt line {n}: {file} is labelled twice ({labels[file]}, {wnid})")
        labels[file] = wnid
    return labels, skipped


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


# ------------------------------------------------------------------ reading a folder or a zip


class ReleaseFiles:
    """Read-only access to a release, from its folder or from the zip, by root-relative path."""

    def __init__(self, src: str, max_bytes: int = MAX_MEMBER_BYTES):
        self.src = src
        self.max_bytes = max_bytes
        self._zip = None
        if os.path.isdir(src):
            root = src
            if not os.path.exists(os.path.join(root, "wnids.txt")) and os.path.isdir(os.path.join(src, RELEASE_DIR)):
                root = os.path.join(src, RELEASE_DIR)  # the folder the zip was unpacked into
            self._root = root
            self._names = None
        elif os.path.isfile(src) and zipfile.is_zipfile(src):
            try:
                self._zip = zipfile.ZipFile(src)
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise TinyrayError(f"{src} is not a readable zip file ({e})") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
            prefix = ""
            if not any(n == "wnids.txt" for n in names):
                hits = [n[: -len("wnids.txt")] for n in names if n.endswith("/wnids.txt")]
                prefix = min(hits, key=len) if hits else ""
            self._prefix = prefix
            self._names = sorted(n[len(prefix):] for n in names if n.startswith(prefix))
            self._name_set = set(self._names)
        elif os.path.exists(src):
            raise TinyrayError(f"{src} is neither a folder nor a zip file")
        else:
            raise TinyrayError(f"{src} does not exist")

    def exists(self, rel: str) -> bool:
        if self._zip is None:
            return os.path.exists(os.path.join(self._root, rel))
        return rel in self._name_set

    def read_text(self, rel: str, what: str) -> str:
        try:
            return self.read_bytes(rel).decode("utf-8", errors="replace")
        except (FileNotFoundError, KeyError):
            raise TinyrayError(f"{rel} is missing from {self.src}: it is not a Tiny ImageNet release ({what})") from None
        except MemberError as e:
            raise TinyrayError(f"{rel} in {self.src}: {e}") from None

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; MemberError if it is over ``max_bytes`` (checked before reading:
        a zip member is read no further than its declared size) or a corrupt zip member."""
        if self._zip is None:
            path = os.path.join(self._root, rel)
            self._check_size(os.path.getsize(path))
            with open(path, "rb") as f:
                return f.read(self.max_bytes + 1)
        info = self._zip.getinfo(self._prefix + rel)
        self._check_size(info.file_size)
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
            # a bad CRC, a broken deflate stream, an encrypted or unsupported member
            raise MemberError(f"corrupt zip member ({str(e).splitlines()[0][:100] or type(e).__name__})") from None

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise MemberError(f"{size:,} bytes is over the {self.max_bytes:,}-byte cap per file "
                              f"(--max-bytes raises it)")

    def list_images(self, folder: str) -> list[str]:
        """Image files directly inside ``folder`` (root-relative), sorted."""
        folder = folder.rstrip("/") + "/"
        if self._zip is None:
            full = os.path.join(self._root, folder)
            if not os.path.isdir(full):
                return []
            return sorted(folder + n for n in os.listdir(full) if is_image_name(n))
        return [n for n in self._names
                if n.startswith(folder) and "/" not in n[len(folder):] and is_image_name(n)]

    def list_dirs(self, folder: str) -> list[str]:
        folder = folder.rstrip("/") + "/"
        if self._zip is None:
            full = os.path.join(self._root, folder)
            return sorted(n for n in os.listdir(full) if os.path.isdir(os.path.join(full, n))) if os.path.isdir(full) else []
        return sorted({n[len(folder):].split("/")[0] for n in self._names
                       if n.startswith(folder) and "/" in n[len(folder):]})

    def close(self):
        if self._zip is not None:
            self._zip.close()


def scan_release(files: ReleaseFiles, skip_bad_labels: bool = False) -> Release:
    """Every labelled example of the train and val splits, with what was left out and why.

    Train images of a folder not in wnids.txt, val images with no annotation and annotations
    whose image is missing are listed in ``skipped`` (never dropped silently).
    """
    classes = parse_wnids(files.read_text("wnids.txt", "the class list"))
    index = {w: i for i, w in enumerate(classes)}
    names = parse_words(files.read_text("words.txt", "the class names"), classes) \
        if files.exists("words.txt") else {w: w for w in classes}

    skipped: list[dict] = []
    train: list[Example] = []
    for wnid in files.list_dirs("train"):
        images = files.list_images(f"train/{wnid}/images")
        if wnid not in index:
            skipped.extend({"file": f, "reason": f"train folder {wnid} not in wnids.txt"} for f in images)
            continue
        train.extend(Example(f, index[wnid], wnid) for f in images)
    missing = [w for w in classes if not files.list_images(f"train/{w}/images")]
    if len(missing) == len(classes):
        raise TinyrayError(f"{files.src} has no train/<wnid>/images/*.JPEG files: not a Tiny ImageNet release")

    labels, bad_lines = parse_val_annotations(
        files.read_text("val/val_annotations.txt", "the val labels"), index, skip_bad_labels)
    skipped.extend(bad_lines)
    val: list[Example] = []
    present = files.list_images("val/images")
    present_names = {p.rsplit("/", 1)[1] for p in present}
    bad_files = {s["file"] for s in bad_lines}
    for path in present:
        name = path.rsplit("/", 1)[1]
        if name in labels:
            val.append(Example(path, index[labels[name]], labels[name]))
        elif path not in bad_files:
            skipped.append({"file": path, "reason": "no line in val_annotations.txt"})
    for name in sorted(set(labels) - present_names):
        skipped.append({"file": f"val/images/{name}", "reason": "listed in val_annotations.txt but missing"})
    return Release(classes, names, train, val, skipped)
