"""The training recipe: how a model is optimised, beyond which model it is. The seed's recipe
(Adam, a constant lr, horizontal flips, hard labels) is TrainConfig's default; the fields
``augment``, ``mixup``, ``cutmix``, ``label_smoothing``, ``weight_decay``, ``nesterov``,
``schedule`` and ``warmup_epochs`` turn on what modern Tiny ImageNet recipes use.

Two rules hold everything here:

* **A schedule is a function of the optimizer's step count** (``lr_at``), the one number a
  checkpoint restores, so a resumed run continues on the very same curve.
* **A batch's augmentation is a function of its key**, ``(seed·1000 + rank, batch index since
  the run's start)``: its random draws (``draws``) come from a generator seeded by that key,
  so the same batch of the same run augments the same way on every attempt (deterministic per
  seed, epoch and rank), and no random state needs checkpointing. The transformation itself
  is vectorised over the batch (``augmenter``).

``lr_at`` and the argument checks are pure Python; the TensorFlow parts import TensorFlow on use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinyray.config import OPTIMIZERS, TrainConfig

# The step schedule's drops: ×0.1 at these fractions of the run (the ResNet papers' 1/2 and 3/4).
STEP_DROPS = (0.5, 0.75)
STEP_FACTOR = 0.1
PAD = 4  # crop_flip: reflection padding on each side before the random 64×64 crop


# ------------------------------------------------------------------------------ schedules


def lr_at(step: int, lr: float, schedule: str, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate of optimizer step ``step`` (0 = the first update).

    Warmup rises linearly to ``lr`` over ``warmup_steps`` (step s uses lr·(s+1)/warmup); after
    it, ``constant`` stays at lr, ``cosine`` falls as lr·½(1 + cos(π·t/T)) over the T steps left,
    ``step`` multiplies by 0.1 at 1/2 and 3/4 of ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    if schedule == "step":
        return lr * STEP_FACTOR ** sum(step >= int(f * total_steps) for f in STEP_DROPS)
    raise ValueError(f"unknown schedule {schedule!r}")


def learning_rate(lr: float, schedule: str, total_steps: int, warmup_steps: int = 0):
    """What the optimizer is given: the plain float for the seed's constant lr (so the seed's
    runs are exactly what they were), else a Keras schedule that evaluates ``lr_at`` in-graph
    at ``optimizer.iterations``."""
    from tinyray.tfk import keras, tf

    if schedule == "constant" and not warmup_steps:
        return lr

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            s = tf.cast(step, tf.float32)
            base = tf.constant(lr, tf.float32)
            if schedule == "cosine":
                span = float(max(total_steps - warmup_steps, 1))
                t = tf.minimum(s - warmup_steps, span)
                after = base * 0.5 * (1.0 + tf.cos(math.pi * t / span))
            elif schedule == "step":
                drops = sum(tf.cast(s >= int(f * total_steps), tf.float32) for f in STEP_DROPS)
                after = base * tf.pow(STEP_FACTOR, drops)
            else:
                after = base
            if not warmup_steps:
                return after
            return tf.where(s < warmup_steps, base * (s + 1.0) / warmup_steps, after)

        def get_config(self):
            return {"lr": lr, "schedule": schedule, "total_steps": total_steps, "warmup_steps": warmup_steps}

    return Schedule()


def make_optimizer(name: str, lr, momentum: float = TrainConfig.momentum, weight_decay: float = TrainConfig.weight_decay,
                   nesterov: bool = TrainConfig.nesterov):
    """One of the seed's four optimizers (config.OPTIMIZERS), with ``lr`` a float or a schedule;
    the defaults are TrainConfig's own.

    ``weight_decay`` is Keras' decoupled decay (w ← w − lr·wd·w after the update: AdamW for adam),
    kept off biases and normalisation scales/offsets, as the recipes that use it do."""
    from tinyray.tfk import keras

    cls = getattr(keras.optimizers, OPTIMIZERS[name])
    kwargs = {"learning_rate": lr}
    if name == "sgd":
        kwargs.update(momentum=momentum, nesterov=nesterov)
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    optimizer = cls(**kwargs)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def soft_labels(mixup: float, cutmix: float, label_smoothing: float) -> bool:
    """Whether training needs one-hot (soft) labels: mixing and smoothing do; the seed's recipe
    keeps integer labels and the sparse loss, exactly as before."""
    return bool(mixup or cutmix or label_smoothing)


def make_loss(label_smoothing: float, soft: bool):
    from tinyray.tfk import keras

    if soft:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


# ------------------------------------------------------------------------------ augmentation
# A batch's random draws are made in numpy from its key (pure, exact, the same on any machine and
# TensorFlow version); the batch is then transformed by TensorFlow ops, compiled by XLA. (XLA has
# no gamma sampler, and TF's stateless one took 0.4 s per Beta draw at α = 0.2 on this machine.)


@dataclass(frozen=True)
class Draws:
    """Everything random about one batch of ``n`` images."""
    flips: np.ndarray  # (n,) bool: mirror this image
    offsets: np.ndarray  # (n, 2) int32: (row, column) of its 64×64 crop in the 72×72 padded image
    use_cutmix: bool  # when both mixup and cutmix are on: this batch's choice
    lam_mix: float  # mixup's λ ~ Beta(α, α) (1 when off)
    lam_cut: float  # cutmix's drawn λ₀ ~ Beta(α, α) (1 when off)
    centre: np.ndarray  # (2,) float32 in [0, 1): the cutmix box's centre, as a share of the side

    def as_tensors(self):
        return (self.flips, self.offsets, np.bool_(self.use_cutmix), np.float32(self.lam_mix),
                np.float32(self.lam_cut), self.centre)


def draws(seed: int, batch: int, n: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> Draws:
    """Batch ``batch`` (counted from the run's start: epoch·steps + step) of the worker seeded
    ``seed`` (TrainConfig.seed·1000 + rank)."""
    rng = np.random.default_rng([seed, batch])
    flips = rng.random(n) < 0.5
    offsets = rng.integers(0, 2 * PAD + 1, size=(n, 2), dtype=np.int32)
    use_cutmix = bool(cutmix_alpha) and (not mixup_alpha or rng.random() < 0.5)
    lam_mix = float(rng.beta(mixup_alpha, mixup_alpha)) if mixup_alpha else 1.0
    lam_cut = float(rng.beta(cutmix_alpha, cutmix_alpha)) if cutmix_alpha else 1.0
    centre = rng.random(2).astype(np.float32)
    return Draws(flips, offsets, use_cutmix, lam_mix, lam_cut, centre)


def cutmix_box(lam0: float, centre, size: int) -> tuple[int, int, int, int, float]:
    """(top, left, bottom, right) of the pasted box and λ, the share of each image kept: a box of
    area (1 − λ₀)·size² around ``centre``·size, clipped to the image, λ from the clipped area."""
    side = math.sqrt(1.0 - lam0) * size
    cy, cx = (float(c) * size for c in centre)
    top, bottom = (int(np.clip(round(v), 0, size)) for v in (cy - side / 2, cy + side / 2))
    left, right = (int(np.clip(round(v), 0, size)) for v in (cx - side / 2, cx + side / 2))
    return top, left, bottom, right, 1.0 - (bottom - top) * (right - left) / (size * size)


def augmenter(augment: str, mixup_alpha: float, cutmix_alpha: float, num_classes: int, soft: bool,
              jit: bool = True):
    """``fn(images uint8, labels int32, *Draws.as_tensors()) -> (x float32 in [0, 1], y)``: the
    train-time preprocessing of one batch. The per-image augmentation (crop, flip), then mixup or
    cutmix over the whole batch, mixing each image with the batch's reverse; then ÷255 (the
    seed's rescale). Labels are one-hot when ``soft``.

    Crops, flips and cutmix's paste move uint8 pixels, and XLA fuses the gather, the blend and
    the rescale: on this 2-CPU machine that took flip-only batches from 23k to 58k images/s, and
    the full recipe from 4.8k to the rate `python benchmarks/ingest.py` prints (recipe)."""
    from tinyray.tfk import tf

    def core(images, labels, flips, offsets, use_cutmix, lam_mix, lam_cut, centre):
        x = images
        size = x.shape[1]
        if augment == "crop_flip":
            # Pad, crop and flip as one gather from the unpadded image: output pixel (i, j) reads
            # row reflect(oy − 4 + i) and column reflect(ox − 4 + j), j mirrored on a flip. (Two
            # gathers after tf.pad: 50k images/s; this: 92k; flips alone: 125k.)
            def reflect(v):  # tf.pad's REFLECT: −1 → 1, size → size − 2
                return (size - 1) - tf.abs((size - 1) - tf.abs(v))

            r = tf.range(size)
            rows = reflect(offsets[:, :1] - PAD + r[None, :])
            cols = reflect(offsets[:, 1:] - PAD + tf.where(flips[:, None], size - 1 - r[None, :], r[None, :]))
            index = tf.reshape(rows[:, :, None] * size + cols[:, None, :], [-1, size * size])
            x = tf.gather(tf.reshape(x, [-1, size * size, 3]), index, batch_dims=1)
            x = tf.reshape(x, [-1, size, size, 3])
        elif augment == "flip":
            x = tf.where(flips[:, None, None, None], tf.reverse(x, axis=[2]), x)
        y = tf.one_hot(labels, num_classes) if soft else tf.convert_to_tensor(labels)
        if not (mixup_alpha or cutmix_alpha):
            return tf.cast(x, tf.float32) / 255.0, y

        def blend():
            xf = tf.cast(x, tf.float32)
            return lam_mix * xf + (1.0 - lam_mix) * xf[::-1], lam_mix * y + (1.0 - lam_mix) * y[::-1]

        def paste():  # the box as in cutmix_box, in-graph
            side = tf.sqrt(1.0 - lam_cut) * size
            lo = tf.cast(tf.clip_by_value(tf.round(centre * size - side / 2), 0, size), tf.int32)
            hi = tf.cast(tf.clip_by_value(tf.round(centre * size + side / 2), 0, size), tf.int32)
            r = tf.range(size)
            inside = (((r >= lo[0]) & (r < hi[0]))[:, None] & ((r >= lo[1]) & (r < hi[1]))[None, :])
            lam = 1.0 - tf.cast((hi[0] - lo[0]) * (hi[1] - lo[1]), tf.float32) / (size * size)
            return (tf.cast(tf.where(inside[None, :, :, None], x[::-1], x), tf.float32),
                    lam * y + (1.0 - lam) * y[::-1])

        if mixup_alpha and cutmix_alpha:
            x, y = tf.cond(use_cutmix, paste, blend)
        else:
            x, y = paste() if cutmix_alpha else blend()
        return x / 255.0, y

    return tf.function(core, jit_compile=True) if jit else core
