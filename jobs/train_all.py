"""The main job: train and compare the models of a sweep config on a Ray cluster, then write the
comparison report.

On a cluster:
    ray job submit --working-dir . -- python jobs/train_all.py \
        --config sweeps/grid.yaml --data s3://BUCKET/tiny-imagenet --storage s3://BUCKET/experiments

On a laptop (starts a local Ray, the embedded object store and the sample dataset):
    python jobs/train_all.py

Interrupted? Rerun the same command with --resume: finished trials are not rerun.
"""
import os
import sys

try:  # an installed tinyray (pip install . or -e .): its shipped sweeps live in tinyray.sweeps
    import tinyray  # noqa: F401
except ImportError:  # a bare checkout: the package beside this folder
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tinyray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
