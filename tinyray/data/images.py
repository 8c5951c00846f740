"""Opening an image file from outside, bounded before it is decoded. Pure: no Ray, no TensorFlow.

Every image tinyray reads (a release being staged, a staged shard, a file to predict) comes from
someone else. Pillow, left to itself, tries ~40 formats (EPS among them, which calls Ghostscript)
and decodes a 40000 x 40000 PNG of a few hundred KB into 4.8 GB before its own bomb check fires
at 2 x 89 M pixels. So only JPEG and PNG are tried (the release holds JPEGs, a few of them PNGs
or CMYK files named .JPEG), and the header's size is checked against a pixel budget before a
single pixel is decoded.
"""
from __future__ import annotations

import io
import re

# The formats Pillow may try. Tiny ImageNet holds JPEG; a PNG named .JPEG is converted.
FORMATS = ("JPEG", "PNG")
# 4096 x 4096 = 16.8 M pixels (50 MB as RGB): 4096 times a 64 x 64 image, far above any real
# photo this project sees, far below what would stop a worker.
MAX_PIXELS = 4096 * 4096


def open_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """``data`` decoded as a PIL image, or ValueError with the reason: not JPEG/PNG, over the
    pixel budget (read from the header, before decoding), truncated or corrupt."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("empty file")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ValueError(f"not a JPEG or PNG file (starts {data[:8]!r})") from None
    except Image.DecompressionBombError as e:  # Pillow's own check, past 2 x 89 M pixels, at open
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ValueError(_over(int(found.group(1)) if found else None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"truncated or corrupt image ({_first_line(e)})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ValueError(_over(width * height, max_pixels))
    try:
        img.load()  # decodes fully: a truncated JPEG raises here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"truncated or corrupt image ({_first_line(e)})") from None
    return img


def _over(pixels: int | None, budget: int) -> str:
    size = f"{pixels:,} pixels" if pixels else "an image"
    return f"{size} is over the {budget:,}-pixel budget (not decoded)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:100]
