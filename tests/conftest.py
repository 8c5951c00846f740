"""Shared, real components for the suite: generated sample releases, one embedded S3 endpoint
and one local Ray cluster per test session (started here, stopped here)."""
import os
import shutil

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"  # a stray ~/.ray/auth_token must not turn auth on
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from tinyray.data.sample import SampleSpec, write_sample  # noqa: E402
from tinyray.data.storage import EmbeddedS3  # noqa: E402

SAMPLE = SampleSpec(classes=4, train_per_class=24, val_per_class=6, test_images=3, seed=1)


@pytest.fixture(scope="session")
def sample_release(tmp_path_factory):
    """A small sample release folder (do not modify: copy it with ``release_copy``)."""
    return write_sample(str(tmp_path_factory.mktemp("release")), SAMPLE)


@pytest.fixture
def release_copy(sample_release, tmp_path):
    """A private copy of the sample release that a test may damage."""
    dst = tmp_path / "tiny-imagenet-200"
    shutil.copytree(sample_release, dst)
    return str(dst)


@pytest.fixture(scope="session")
def s3():
    with EmbeddedS3(bucket="tinyray") as server:
        yield server


@pytest.fixture(scope="session")
def staged(sample_release, s3):
    """The sample release staged into the embedded store: (uri, manifest)."""
    from tinyray.data.stage import StageConfig, stage_dataset

    uri = "s3://tinyray/staged-sample"
    manifest = stage_dataset(StageConfig(sample_release, uri, rows_per_shard=20, progress=False), s3.options)
    return uri, manifest


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """One local Ray cluster for the session. Four logical CPUs on this 2-core machine: two
    1-CPU Train workers plus room for Ray Data's read tasks. Workers reach the embedded store
    through the runtime environment, as on a real cluster."""
    import ray

    ray.init(address="local", num_cpus=4, resources={"tinyray_driver": 4},
             runtime_env={"env_vars": {**s3.env, "TF_USE_LEGACY_KERAS": "1", "RAY_AUTH_MODE": "disabled"}},
             log_to_driver=False)
    yield ray
    ray.shutdown()
