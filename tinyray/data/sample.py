"""A small, learnable sample dataset in exactly the Tiny ImageNet release layout.

Each class has its own hue, shape (disc, box, triangle, stripes) and texture; every image adds
position/size jitter and pixel noise, so a small CNN beats chance by far within a few epochs
but not in one step. Like the release, some JPEGs are grayscale (every ``GRAY_EVERY``-th), and
words.txt names more classes than wnids.txt keeps. Deterministic for a given seed.
"""
from __future__ import annotations

import colorsys
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from tinyray.data.layout import IMAGE_SIZE as SIZE, RELEASE_DIR
from tinyray.errors import TinyrayError

GRAY_EVERY = 13  # about 7.7 % grayscale; the real release has ~1.8 % in train


@dataclass(frozen=True)
class SampleSpec:
    classes: int = 10
    train_per_class: int = 40
    val_per_class: int = 10
    test_images: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("classes", "train_per_class", "val_per_class"):
            if getattr(self, name) < 1:
                raise TinyrayError(f"--{name.replace('_', '-')} must be at least 1")
        if self.classes > 1000:
            raise TinyrayError("--classes must be at most 1000")


def sample_wnid(c: int) -> str:
    # Real wnids look like n01443537; 'n9' marks these as synthetic.
    return f"n9{c:07d}"


def render_image(cls: int, num_classes: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``cls``: hue + shape + texture define the class; the rest is noise."""
    hue = cls / num_classes
    bg = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.85)) * 255
    fg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.95)) * 255
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    freq = 2 + (cls // 4) % 5  # texture frequency, a second cue beside hue
    texture = 18 * np.sin(2 * np.pi * freq * (xx + yy) / SIZE)[..., None]
    img = bg[None, None, :] + texture + rng.normal(0, 12, (SIZE, SIZE, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    cx, cy = rng.integers(20, 44, size=2)
    r = int(rng.integers(10, 18))
    colour = tuple(int(v) for v in np.clip(fg + rng.normal(0, 20, 3), 0, 255))
    kind = cls % 4
    if kind == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == 2:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        for x0 in range(int(cx) - r, int(cx) + r, 6):
            draw.rectangle([x0, cy - r, x0 + 2, cy + r], fill=colour)
    return pil


def _jpeg(img: Image.Image, gray: bool) -> bytes:
    buf = io.BytesIO()
    (img.convert("L") if gray else img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_sample(root: str, spec: SampleSpec = SampleSpec()) -> str:
    """Write the sample release under ``root/tiny-imagenet-200`` and return that folder."""
    rng = np.random.default_rng(spec.seed)
    top = os.path.join(root, RELEASE_DIR)
    os.makedirs(top, exist_ok=True)
    wnids = [sample_wnid(c) for c in range(spec.classes)]
    with open(os.path.join(top, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(top, "words.txt"), "w") as f:
        # Like the real words.txt, it names classes that are not in wnids.txt.
        for c in range(spec.classes + 5):
            f.write(f"{sample_wnid(c)}\tsynthetic class {c}, shape {('disc', 'box', 'triangle', 'stripes')[c % 4]}\n")

    count = 0
    for c, wnid in enumerate(wnids):
        img_dir = os.path.join(top, "train", wnid, "images")
        os.makedirs(img_dir, exist_ok=True)
        boxes = []
        for i in range(spec.train_per_class):
            name = f"{wnid}_{i}.JPEG"
            with open(os.path.join(img_dir, name), "wb") as f:
                f.write(_jpeg(render_image(c, spec.classes, rng), gray=count % GRAY_EVERY == 0))
            boxes.append(f"{name}\t0\t0\t63\t63")
            count += 1
        with open(os.path.join(top, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("\n".join(boxes) + "\n")

    val_dir = os.path.join(top, "val", "images")
    os.makedirs(val_dir, exist_ok=True)
    lines = []
    order = [(c, k) for k in range(spec.val_per_class) for c in range(spec.classes)]
    for i, (c, _) in enumerate(order):
        name = f"val_{i}.JPEG"
        with open(os.path.join(val_dir, name), "wb") as f:
            f.write(_jpeg(render_image(c, spec.classes, rng), gray=count % GRAY_EVERY == 0))
        lines.append(f"{name}\t{wnids[c]}\t0\t0\t63\t63")
        count += 1
    with open(os.path.join(top, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

    test_dir = os.path.join(top, "test", "images")
    os.makedirs(test_dir, exist_ok=True)
    for i in range(spec.test_images):
        with open(os.path.join(test_dir, f"test_{i}.JPEG"), "wb") as f:
            f.write(_jpeg(render_image(int(rng.integers(spec.classes)), spec.classes, rng), gray=False))
    return top
