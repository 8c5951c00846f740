"""What every benchmark starts from: a generated sample release, staged into an object store.

Imported by the benchmark scripts (run as ``python benchmarks/NAME.py``); it also puts the repo
on ``sys.path`` so they run from a checkout without an install.
"""
from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tinyray.data.sample import SampleSpec, write_sample  # noqa: E402
from tinyray.data.stage import StageConfig, stage_dataset  # noqa: E402


def staged_sample(tmp: str, opts, uri: str, spec: SampleSpec, rows_per_shard: int):
    """Write ``spec`` under ``tmp`` and stage it into ``uri``: (release folder, manifest, the
    release's train JPEG paths, sorted)."""
    top = write_sample(tmp, spec)
    manifest = stage_dataset(StageConfig(top, uri, rows_per_shard=rows_per_shard, progress=False), opts)
    paths = sorted(glob.glob(os.path.join(top, "train", "*", "images", "*.JPEG")))
    return top, manifest, paths
