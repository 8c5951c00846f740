"""The training recipe (tinyray/recipe.py), tested without Ray: schedules by optimizer step,
each batch's random draws from its key, the vectorised augmentations against plain numpy,
the smoothed loss and decoupled weight decay, and the configs that are refused."""
import math

import numpy as np
import pytest

from tinyray.config import TrainConfig
from tinyray.errors import TinyrayError
from conftest import SAMPLE
from tinyray.recipe import augmenter, cutmix_box, draws, learning_rate, lr_at, make_loss, make_optimizer


# ------------------------------------------------------------------------------ schedules

# lr 0.1 over 100 steps, 10 of them warmup (where given)
@pytest.mark.parametrize("schedule,warmup,step,lr", [
    ("constant", 0, 0, 0.1),
    ("constant", 0, 99, 0.1),
    ("constant", 10, 0, 0.01),  # warmup: lr·(s+1)/10
    ("constant", 10, 4, 0.05),
    ("constant", 10, 9, 0.1),
    ("constant", 10, 50, 0.1),
    ("cosine", 10, 10, 0.1),  # the first step after warmup: the top of the curve
    ("cosine", 10, 40, 0.075),  # 30 of 90 steps: ½(1 + cos π/3)
    ("cosine", 10, 55, 0.05),  # half way: ½(1 + cos π/2)
    ("cosine", 10, 100, 0.0),  # the end: ½(1 + cos π)
    ("cosine", 0, 0, 0.1),
    ("cosine", 0, 25, 0.1 * 0.5 * (1 + math.cos(math.pi / 4))),
    ("step", 0, 49, 0.1),
    ("step", 0, 50, 0.01),  # ×0.1 at 1/2
    ("step", 0, 74, 0.01),
    ("step", 0, 75, 0.001),  # and at 3/4
    ("step", 10, 5, 0.06),
])
def test_the_lr_at_a_step_of_each_schedule(schedule, warmup, step, lr):
    assert lr_at(step, 0.1, schedule, 100, warmup) == pytest.approx(lr, abs=1e-12)
    # what the optimizer is given computes the same in-graph
    given = learning_rate(0.1, schedule, 100, warmup)
    got = given if isinstance(given, float) else float(given(step))
    assert got == pytest.approx(lr, rel=1e-6, abs=1e-9)


def test_the_seeds_constant_lr_stays_a_plain_float():
    assert learning_rate(1e-4, "constant", 1000, 0) == 1e-4


# ------------------------------------------------------------------------------ augmentation


def test_a_batchs_draws_are_fixed_by_its_key():
    d = draws(0, 0, 4, mixup_alpha=0.2)
    assert d.lam_mix == pytest.approx(0.062279381048264436, abs=1e-15)
    assert d.offsets.tolist() == [[1, 7], [5, 8], [4, 5], [8, 6]]
    assert d.flips.tolist() == [False, True, True, True]
    # worker seed 1000 (seed 1, rank 0), batch 7, both mixes on: this batch is cutmix's
    d = draws(1000, 7, 4, mixup_alpha=0.2, cutmix_alpha=1.0)
    assert d.use_cutmix and d.lam_cut == pytest.approx(0.19293379079078402, abs=1e-15)
    assert d.offsets.tolist() == [[4, 8], [7, 1], [0, 5], [3, 7]]
    assert cutmix_box(d.lam_cut, d.centre, 64) == (5, 14, 62, 64, 0.30419921875)
    # the same key draws the same; another batch or another rank draws otherwise
    again = draws(1000, 7, 4, 0.2, 1.0)
    assert again.lam_cut == d.lam_cut and np.array_equal(again.offsets, d.offsets)
    assert draws(1000, 8, 4, 0.2, 1.0).lam_cut != d.lam_cut and draws(1001, 7, 4, 0.2, 1.0).lam_cut != d.lam_cut
    many = draws(3, 1, 10_000)
    assert many.offsets.min() == 0 and many.offsets.max() == 8 and 0.45 < many.flips.mean() < 0.55


def pixels(x):
    """A batch's pixels back in 0–255 (XLA rescales by ×(1/255), within an ulp of ÷255)."""
    np.testing.assert_allclose(x.numpy() * 255, np.round(x.numpy() * 255), atol=1e-4)
    return np.round(x.numpy() * 255).astype(np.uint8)


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), np.arange(n, dtype=np.int32) % 4


@pytest.mark.parametrize("jit", [True, False])
def test_crop_flip_is_a_reflection_pad_then_crop_then_flip(jit):
    images, labels = batch()
    d = draws(5, 3, len(labels))
    x, y = augmenter("crop_flip", 0, 0, 4, soft=False, jit=jit)(images, labels, *d.as_tensors())
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")  # = tf.pad REFLECT
    for i, ((r, c), flip) in enumerate(zip(d.offsets, d.flips)):
        want = padded[i, r:r + 64, c:c + 64]
        want = want[:, ::-1] if flip else want
        np.testing.assert_array_equal(pixels(x)[i], want)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_flip_only_is_the_seeds_rescale_and_mirror():
    images, labels = batch()
    d = draws(5, 3, len(labels))
    x, _ = augmenter("flip", 0, 0, 4, soft=False)(images, labels, *d.as_tensors())
    np.testing.assert_array_equal(pixels(x), np.where(d.flips[:, None, None, None], images[:, :, ::-1], images))
    np.testing.assert_allclose(x.numpy(), pixels(x) / np.float32(255), rtol=1e-6)
    x, _ = augmenter("none", 0, 0, 4, soft=False)(images, labels, *d.as_tensors())
    np.testing.assert_array_equal(pixels(x), images)


def test_mixup_blends_each_image_and_label_with_the_batch_reversed():
    images, labels = batch()
    d = draws(0, 0, len(labels), mixup_alpha=0.2)
    x, y = augmenter("none", 0.2, 0, 4, soft=True)(images, labels, *d.as_tensors())
    lam = np.float32(d.lam_mix)
    a = images.astype(np.float32)
    np.testing.assert_allclose(x.numpy(), (lam * a + (1 - lam) * a[::-1]) / 255.0, rtol=1e-5, atol=1e-6)
    onehot = np.eye(4, dtype=np.float32)[labels]
    np.testing.assert_allclose(y.numpy(), lam * onehot + (1 - lam) * onehot[::-1], rtol=1e-6)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_pastes_the_box_and_weighs_labels_by_its_area():
    images, labels = batch()
    d = draws(1000, 5, len(labels), mixup_alpha=0.2, cutmix_alpha=1.0)
    assert d.use_cutmix  # this batch's coin chose cutmix (batch 4's chose mixup)
    assert not draws(1000, 4, len(labels), mixup_alpha=0.2, cutmix_alpha=1.0).use_cutmix
    x, y = augmenter("none", 0.2, 1.0, 4, soft=True)(images, labels, *d.as_tensors())
    top, left, bottom, right, lam = cutmix_box(d.lam_cut, d.centre, 64)
    want = images.copy()
    want[:, top:bottom, left:right] = images[::-1, top:bottom, left:right]
    np.testing.assert_array_equal(pixels(x), want)
    onehot = np.eye(4, dtype=np.float32)[labels]
    np.testing.assert_allclose(y.numpy(), lam * onehot + (1 - lam) * onehot[::-1], rtol=1e-6)


def test_the_memory_dataset_augments_each_batch_the_same_on_every_attempt():
    """Batch b of a run is augmented from key (seed, b): a run resumed mid-epoch (skip) sees
    the very batches the lost attempt would have seen; another rank sees others."""
    from tinyray.data.pipeline import Augment, memory_train_dataset

    images, labels = batch(48, seed=1)
    full = Augment("crop_flip", 0.2, 1.0, 4, True)

    def take(seed, skip=0, first_epoch=0, n=4):
        ds = memory_train_dataset(images, labels, 8, seed=seed, first_epoch=first_epoch, augment=full, skip=skip)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]

    run = take(0, first_epoch=1, n=6)
    resumed = take(0, first_epoch=1, skip=2)
    for (x1, y1), (x2, y2) in zip(run[2:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert run[0][0].shape == (8, 64, 64, 3) and run[0][1].shape == (8, 4)
    other_rank = take(1, first_epoch=1, n=1)
    assert not np.array_equal(other_rank[0][0], run[0][0])


# ------------------------------------------------------------------------------ loss, optimizer


def test_the_smoothed_loss_of_a_known_batch():
    from tinyray.tfk import tf

    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]], np.float32)
    y = np.eye(4, dtype=np.float32)[[0, 3]]
    # smoothing 0.1 over 4 classes: the true class 0.9 + 0.025, the others 0.025
    want = np.mean([-(0.925 * math.log(0.7) + 0.075 * math.log(0.1)), -math.log(0.25)])
    assert float(make_loss(0.1, soft=True)(tf.constant(y), tf.constant(probs))) == pytest.approx(want, rel=1e-6)
    plain = -math.log(0.7) / 2 - math.log(0.25) / 2
    assert float(make_loss(0.0, soft=False)(tf.constant([0, 3]), tf.constant(probs))) == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_weight_decay_is_decoupled_and_spares_biases(name):
    """With a zero gradient an update moves nothing, so what changes is the decay alone:
    w ← w − lr·wd·w on a kernel, and nothing on a bias."""
    from tinyray.tfk import tf

    opt = make_optimizer(name, 0.1, weight_decay=0.01, nesterov=name == "sgd")
    kernel, bias = tf.Variable(np.ones(3, np.float32), name="kernel"), tf.Variable(np.ones(3, np.float32), name="bias")
    opt.apply_gradients([(tf.zeros(3), kernel), (tf.zeros(3), bias)])
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.01, rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), 1.0)
    assert (getattr(opt, "nesterov", False)) is (name == "sgd")


@pytest.mark.parametrize("kw,message", [
    ({"augment": "cutout"}, "unknown augment 'cutout'; valid: none, flip, crop_flip"),
    ({"schedule": "linear"}, "unknown schedule 'linear'; valid: constant, cosine, step"),
    ({"mixup": -0.2}, "mixup must be >= 0"),
    ({"cutmix": "big"}, "cutmix must be a number"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"nesterov": True}, "nesterov is a momentum option of optimizer sgd, not adam"),
    ({"warmup_epochs": 10}, r"warmup_epochs \(10\) must be fewer than epochs \(10\)"),
    ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
])
def test_a_bad_recipe_is_one_line(kw, message):
    with pytest.raises(TinyrayError, match=message):
        TrainConfig(model="tinycnn", data="d", **kw)


def test_the_old_flip_field_points_to_augment():
    with pytest.raises(TinyrayError, match="train field flip is now augment: flip .the default., crop_flip or none"):
        TrainConfig.from_dict({"model": "tinycnn", "data": "d", "flip": False})


# ------------------------------------------------------------------- real runs on Ray (slow)


def train_worker_pids():
    """PIDs of the live Ray Train workers of this test session's own cluster (descendants of
    this process), from Ray's state API."""
    import os

    import psutil
    import ray
    from ray.util.state import list_actors

    mine = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid in mine]


RECIPE = {"augment": "crop_flip", "mixup": 0.2, "label_smoothing": 0.1, "weight_decay": 1e-4,
          "schedule": "cosine", "warmup_epochs": 1}


@pytest.mark.ray
@pytest.mark.slow
def test_the_recipe_learns_as_well_as_the_seeds_and_a_killed_worker_resumes_on_its_curve(
        ray_cluster, staged, s3, tmp_path):
    """model2 on the sample with the issue's recipe flags, against the seed's recipe (same lr,
    epochs, batch). Its one worker is SIGKILLed once epoch 2 is checkpointed: Train restarts it
    from that checkpoint, and every epoch's lr is still the schedule's value at its optimizer
    step: the resumed run continued on the same curve."""
    import json
    import os
    import threading
    import time

    from tinyray.train import train_command

    uri, manifest = staged
    common = {"model": "model2", "data": uri, "lr": 1e-3, "epochs": 6, "batch_size": 16, "seed": 0,
              "storage": str(tmp_path / "runs")}
    seed = train_command(TrainConfig(**common, name="seed"), s3.options).result["epochs"]

    box = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "out", train_command(TrainConfig(**common, **RECIPE, name="recipe"), s3.options)))
    thread.start()
    snapshot, killed, deadline = tmp_path / "runs" / "recipe" / "checkpoint_manager_snapshot.json", None, time.time() + 300
    while killed is None and thread.is_alive() and time.time() < deadline:
        done = json.loads(snapshot.read_text() or "{}").get("latest_checkpoint_result") if snapshot.exists() else None
        if done and done["metrics"]["epoch"] >= 2:  # registered by Train: the restart resumes from it
            pids = train_worker_pids()
            if pids:
                killed = pids[0]
                os.kill(killed, 9)
        time.sleep(0.2)
    thread.join(timeout=600)
    assert killed, "no checkpoint of epoch 2 appeared, or no worker to kill"
    recipe = box["out"].result["epochs"]

    steps = recipe[0]["optimizer_step"]
    assert steps == (SAMPLE.classes * SAMPLE.train_per_class) // 16
    assert [e["epoch"] for e in recipe] == list(range(1, 7))
    assert max(e["resumed_from_epoch"] for e in recipe) >= 2  # the kill really restarted the run
    assert [e["optimizer_step"] for e in recipe] == [e["epoch"] * steps for e in recipe]
    for e in recipe:  # the lr of the next step: on the cosine curve, before and after the restart
        assert e["lr"] == pytest.approx(lr_at(e["optimizer_step"], 1e-3, "cosine", 6 * steps, steps), rel=1e-5)
    assert recipe[0]["lr"] == pytest.approx(1e-3) and recipe[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert all(e["lr"] == 1e-3 for e in seed)
    # learns as well: on the 24 val images, both far above chance (1/4), the recipe no worse
    best_seed, best_recipe = max(e["val_accuracy"] for e in seed), max(e["val_accuracy"] for e in recipe)
    print(f"best val top-1: seed recipe {best_seed:.3f}, recipe {best_recipe:.3f}")
    assert best_seed >= 0.75 and best_recipe >= best_seed - 1 / 24, (seed, recipe)
    assert box["out"].result["config"]["schedule"] == "cosine"  # a line of result.json, as every field
