"""What each replica's train step receives with two MultiWorkerMirroredStrategy workers: the input
that ``fit`` gets (worker.per_replica_input over WorkerData.train_dataset), checked image by image.

Each image is known by the digest of its pixels, decoded from the release's own JPEG files with
Pillow (not by tinyray's pipeline). With ``augment: none`` a replica's batch is those pixels ÷ 255,
so ``rint(x·255)`` gives them back exactly."""
import glob
import hashlib
import json
import os

import numpy as np
import pytest

from tinyray.config import TrainConfig

from conftest import SAMPLE


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()[:16]


def release_train_digests(release: str) -> set[str]:
    from PIL import Image

    files = glob.glob(os.path.join(release, "train", "*", "images", "*.JPEG"))
    return {digest(np.asarray(Image.open(f).convert("RGB"))) for f in files}


def probe_loop(out_dir: str, resume_at: int):
    """A Train worker's loop that builds the production input and records, per train step of
    each replica, the images it received: epochs 0 and 1 in one ``fit``, then epoch 1 again from
    ``build(1, skip=resume_at)`` in a second, as a run resumed from a preemption checkpoint at
    step ``resume_at`` does. Also records what ImageCount counted each epoch."""

    def loop(config):
        import ray.train

        from tinyray.data.pipeline import Augment, WorkerData
        from tinyray.models import create_model
        from tinyray.tfk import keras, tf
        from tinyray.worker import CrossWorkerSums, ImageCount, make_strategy, per_replica_input, setup_tensorflow

        cfg, steps = TrainConfig.from_dict(config["train"]), config["steps"]
        ctx = ray.train.get_context()
        rank = ctx.get_world_rank()
        loads = WorkerData(cfg, rank, ctx.get_world_size())
        setup_tensorflow(cfg)
        strategy = make_strategy(cfg)
        with strategy.scope():
            model = create_model(cfg.model, num_classes=config["num_classes"])
            model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        count = ImageCount(strategy, model)  # wraps train_step: the probe below wraps it again
        seen: list = []  # (phase, [digest per image]) per replica step
        phase = ["epoch0"]
        counted = {}

        def record(x):
            seen.append((phase[0], [digest(img) for img in np.rint(x * 255.0).astype(np.uint8)]))
            return np.int64(len(x))

        inner = model.train_step

        def train_step(data):
            tf.numpy_function(record, [data[0]], tf.int64, stateful=True)
            return inner(data)

        model.train_step = train_step
        collective = CrossWorkerSums(strategy, model, *loads.val(), cfg.batch_size)
        build = loads.train_dataset(cfg.batch_size, seed=7, augment=Augment.of(cfg, config["num_classes"]),
                                    steps=steps)

        class Phases(keras.callbacks.Callback):
            def __init__(self, names):
                super().__init__()
                self.names = names

            def on_epoch_begin(self, epoch, logs=None):
                phase[0] = self.names[epoch]
                count.reset()

            def on_epoch_end(self, epoch, logs=None):
                counted[self.names[epoch]] = collective.counts(count)

        # as the worker does: each dataset covers exactly its fit's epochs (two on one shard)
        model.fit(per_replica_input(strategy, build(0, epochs=2)), epochs=2, steps_per_epoch=steps, verbose=0,
                  callbacks=[Phases({0: "epoch0", 1: "epoch1"})])
        model.fit(per_replica_input(strategy, build(1, skip=resume_at, epochs=1)), epochs=2, initial_epoch=1,
                  steps_per_epoch=steps - resume_at, verbose=0, callbacks=[Phases({1: "resumed"})])
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"seen": seen, "counted": counted}, f)

    return loop


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_each_replica_gets_the_batch_and_an_epoch_is_every_image_once(ray_cluster, staged, s3, sample_release,
                                                                      tmp_path, cache):
    import sys

    from ray import cloudpickle

    from tinyray.train import build_trainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the probe runs in Train's workers
    uri, manifest = staged
    batch, workers, resume_at = 8, 2, 2
    cfg = TrainConfig(model="tinycnn", data=uri, workers=workers, batch_size=batch, augment="none", cache=cache,
                      storage=str(tmp_path / "runs"))
    out = tmp_path / "seen"
    out.mkdir()
    build_trainer(cfg, manifest, s3.options, loop=probe_loop(str(out), resume_at)).fit()

    train = SAMPLE.classes * SAMPLE.train_per_class  # 96: 48 per worker, 6 steps of 8
    steps = train // workers // batch
    everything = release_train_digests(sample_release)
    assert len(everything) == train  # every sample image is its own
    ranks = [json.load(open(out / f"rank{r}.json")) for r in range(workers)]
    shards = []
    for rank in ranks:
        # one replica per worker here: every step it took is one recorded batch of exactly `batch`
        assert [len(ids) for _, ids in rank["seen"]] == [batch] * (3 * steps - resume_at)
        by_phase = {p: [i for q, ids in rank["seen"] if q == p for i in ids] for p in ("epoch0", "epoch1", "resumed")}
        epoch0, epoch1 = by_phase["epoch0"], by_phase["epoch1"]
        # each epoch, the worker's whole shard once, reshuffled
        assert len(set(epoch0)) == len(epoch0) == train // workers
        assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
        # resumed at step `resume_at`: the rest of that very epoch, in its order
        assert by_phase["resumed"] == epoch1[resume_at * batch:]
        shards.append(set(epoch0))
        # what the train step counted: images over both workers, steps, the batch each replica got
        assert rank["counted"] == {"epoch0": [train, steps, batch, batch], "epoch1": [train, steps, batch, batch],
                                   "resumed": [(steps - resume_at) * batch * workers, steps - resume_at, batch, batch]}
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == everything  # together: every image of the release, once
