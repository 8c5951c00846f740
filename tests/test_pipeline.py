"""The Ray Data pipeline: pure helpers as tables, then real reads from the embedded store."""
import numpy as np
import pytest

from tinyray.data.pipeline import (IngestConfig, decode_jpegs, epoch_order, eval_batches,
                                   load_into_memory, memory_train_dataset, rank_of, read_split,
                                   stream_train_dataset, steps_per_epoch)
from tinyray.errors import TinyrayError

from conftest import SAMPLE


@pytest.mark.parametrize("count,batch,workers,replicas,steps", [
    (100_000, 64, 1, 1, 1562), (100_000, 64, 4, 1, 390), (96, 8, 2, 1, 6), (97, 8, 2, 1, 6), (16, 8, 2, 1, 1),
    # a worker with 4 GPUs takes 4 batches a step: 100,000 / 2 workers / (4 × 64) = 195.3
    (100_000, 64, 2, 4, 195), (96, 8, 2, 3, 2),
])
def test_steps_per_epoch(count, batch, workers, replicas, steps):
    assert steps_per_epoch(count, batch, workers, replicas) == steps


def test_less_than_a_step_per_worker_is_a_clear_error():
    with pytest.raises(TinyrayError, match="less than one step of 64 images per worker"):
        steps_per_epoch(100, 64, 2)
    with pytest.raises(TinyrayError, match=r"less than one step of 32 images per worker \(4 replica"):
        steps_per_epoch(100, 8, 4, 4)


def test_epoch_order_is_a_seeded_permutation_of_full_batches():
    a = epoch_order(10, 3, seed=1, epoch=0)
    assert a.shape == (3, 3) and len(set(a.ravel())) == 9
    assert np.array_equal(a, epoch_order(10, 3, seed=1, epoch=0))  # a resumed run sees the same
    assert not np.array_equal(a, epoch_order(10, 3, seed=1, epoch=1))  # reshuffled every epoch


def test_rank_of_splits_files_exactly_once():
    from collections import Counter

    files = [f"val_{i}.JPEG" for i in range(1000)]
    # a file's rank is fixed (pinned: every process of a run must agree without talking) ...
    assert [rank_of(f"val_{i}.JPEG", 4) for i in range(8)] == [2, 3, 1, 0, 0, 1, 3, 2]
    assert {rank_of(f, 1) for f in files} == {0}
    # ... and the ranks share the files evenly: each within 15 % of its share
    for world in (2, 3, 8):
        counts = Counter(rank_of(f, world) for f in files)
        assert sorted(counts) == list(range(world)), counts
        assert all(abs(n - 1000 / world) <= 0.15 * 1000 / world for n in counts.values()), counts


def test_decode_makes_grayscale_three_channel(staged, s3):
    import io

    from PIL import Image

    from tinyray.data.stage import normalise_image

    gray = Image.new("L", (64, 64), 77)
    buf = io.BytesIO()
    gray.save(buf, format="JPEG")
    out = decode_jpegs([buf.getvalue()])
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.uint8
    assert (out[0, :, :, 0] == out[0, :, :, 1]).all() and (out[0, :, :, 1] == out[0, :, :, 2]).all()
    assert normalise_image(buf.getvalue())[2] is True


def test_memory_dataset_scales_flips_and_keeps_labels():
    images = np.zeros((32, 64, 64, 3), np.uint8)
    images[:, :, :32, :] = 255  # left half white: a flip moves it right
    labels = np.arange(32, dtype=np.int32)
    ds = memory_train_dataset(images, labels, batch_size=16, seed=0)
    batches = list(ds.take(4))
    assert len(batches) == 4
    seen_flipped = seen_plain = 0
    for x, y in batches:
        x = x.numpy()
        assert x.dtype == np.float32 and x.shape == (16, 64, 64, 3)
        assert x.min() == 0.0 and x.max() == 1.0
        left = x[:, :, :32, :].mean(axis=(1, 2, 3))
        seen_flipped += int((left == 0).sum())
        seen_plain += int((left == 1).sum())
    assert seen_flipped + seen_plain == 64 and seen_flipped > 10 and seen_plain > 10
    epoch0 = np.concatenate([y.numpy() for _, y in batches[:2]])
    assert sorted(epoch0) == list(range(32))  # each epoch shows every image once


def test_eval_batches_count_every_image_once_without_flips():
    images = np.full((10, 64, 64, 3), 255, np.uint8)
    out = list(eval_batches(images, np.arange(10), 4))
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert all(x.max() == 1.0 and x.min() == 1.0 for x, _ in out)


@pytest.mark.ray
def test_read_decode_from_s3_through_ray_data(ray_cluster, staged, s3):
    uri, manifest = staged
    ingest = IngestConfig()
    images, labels = load_into_memory(read_split(uri, "train", manifest, s3.options, ingest).iterator(), ingest)
    assert images.shape == (manifest["train"]["count"], 64, 64, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [SAMPLE.train_per_class] * SAMPLE.classes
    # decoded by a pool of threads (a worker holding 3 CPUs): the same images, each with its label
    # (Ray Data may deliver the shards in another order: compared as sets of (label, pixels))
    threaded = IngestConfig(decode_threads=3, decode_batch=16)
    again = load_into_memory(read_split(uri, "train", manifest, s3.options, threaded).iterator(), threaded)

    def pairs(arrays):
        return sorted((int(y), x.tobytes()) for x, y in zip(*arrays))

    assert pairs(again) == pairs((images, labels))


@pytest.mark.ray
def test_val_rank_filter_counts_every_val_image_exactly_once(ray_cluster, staged, s3):
    uri, manifest = staged
    ingest = IngestConfig()
    ds = read_split(uri, "val", manifest, s3.options, ingest, columns=("image", "label", "file"))
    world = 3
    parts = [load_into_memory(ds.iterator(), ingest, keep=lambda f, r=r: rank_of(f, world) == r)
             for r in range(world)]
    assert sum(len(l) for _, l in parts) == manifest["val"]["count"]
    all_labels = np.concatenate([l for _, l in parts])
    assert np.bincount(all_labels).tolist() == [SAMPLE.val_per_class] * SAMPLE.classes


@pytest.mark.ray
def test_stream_mode_decodes_in_ray_data_and_feeds_to_tf(ray_cluster, staged, s3):
    uri, manifest = staged
    ds = read_split(uri, "train", manifest, s3.options, IngestConfig(cache="stream"))
    tfds = stream_train_dataset(ds.iterator(), batch_size=8, seed=0)
    steps = manifest["train"]["count"] // 8
    labels = []
    for x, y in tfds.take(steps):
        assert x.shape == (8, 64, 64, 3) and x.dtype.name == "float32"
        labels.extend(y.numpy().tolist())
    assert np.bincount(labels).tolist() == [SAMPLE.train_per_class] * SAMPLE.classes


def test_unknown_cache_mode_is_refused():
    with pytest.raises(TinyrayError, match="cache must be one of memory, stream"):
        IngestConfig(cache="disk")


def test_a_run_resumed_mid_epoch_sees_the_rest_of_that_epochs_batches():
    """A checkpoint saved at step 3 of epoch 2 (a preemption notice) resumes on exactly the
    batches the lost worker had not trained yet, in the same order."""
    from tinyray.data.pipeline import Augment, memory_train_dataset

    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1) * np.ones((1, 64, 64, 3), np.uint8)
    labels = np.arange(40, dtype=np.int32)

    def first_labels(ds, n):
        return [y.numpy().tolist() for _, y in ds.take(n)]

    whole = first_labels(memory_train_dataset(images, labels, 4, seed=3, first_epoch=1, augment=Augment("none")), 10)
    resumed = first_labels(memory_train_dataset(images, labels, 4, seed=3, first_epoch=1, augment=Augment("none"), skip=3), 7)
    assert resumed == whole[3:]
    assert sorted(sum(whole, [])) == list(range(40))  # one epoch: every image once


def test_a_worker_with_several_replicas_gets_whole_batches_and_still_every_image_once():
    """3 replicas × batch 4 = 12 images a step: 40 // 12 = 3 steps of 3 batches; the 4 left over
    wait for the next epoch's shuffle. A resume skips whole steps (skip counts batches)."""
    from tinyray.data.pipeline import Augment, memory_train_dataset

    images = np.zeros((40, 64, 64, 3), np.uint8)
    labels = np.arange(40, dtype=np.int32)
    ds = memory_train_dataset(images, labels, 4, seed=3, augment=Augment("none"), replicas=3)
    batches = [y.numpy().tolist() for _, y in ds.take(18)]  # two epochs
    assert [len(b) for b in batches] == [4] * 18
    epoch0, epoch1 = sum(batches[:9], []), sum(batches[9:], [])
    assert len(set(epoch0)) == 36 and len(set(epoch1)) == 36 and epoch0 != epoch1
    resumed = memory_train_dataset(images, labels, 4, seed=3, augment=Augment("none"), replicas=3, skip=3)
    assert [y.numpy().tolist() for _, y in resumed.take(6)] == batches[3:9]
