"""TrainConfig, the one unit of work: its checks, its coercions, its run name and the flags,
sweep axes and defaults that come from its fields (pure, no Ray)."""
import pytest

from tinyray.config import TrainConfig
from tinyray.errors import TinyrayError


def cfg(**kw):
    return TrainConfig(**{"model": "tinycnn", "data": "s3://tinyray/staged-sample", **kw})


@pytest.mark.parametrize("kw,message", [
    ({"model": "vgg99"}, "unknown model 'vgg99'"),
    ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'; valid: adam, rmsprop, sgd, nadam"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
    ({"nesterov": "maybe"}, "nesterov must be true or false"),
    ({"lr": 0}, "lr must be > 0"),
    ({"lr": -1e-3}, "lr must be > 0"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"workers": 0}, "workers must be at least 1"),
    ({"precision": "bfloat8"}, "unknown precision"),
    ({"cache": "disk"}, "unknown cache 'disk'; valid: memory, stream"),
    ({"name": "a/b"}, "may hold only"),
    ({"gpus_per_worker": 1.5}, "gpus_per_worker above 1 must be a whole number"),
    ({"xla": True, "workers": 2}, "xla with 2 workers would compile the cross-worker all-reduce .*58961"),
])
def test_bad_train_config_is_a_clear_error(kw, message):
    with pytest.raises(TinyrayError, match=message):
        cfg(**kw)


def test_unknown_config_key_is_refused():
    with pytest.raises(TinyrayError, match="unknown train field.*learning_rate"):
        TrainConfig.from_dict({"model": "model2", "data": "x", "learning_rate": 1e-3})
    with pytest.raises(TinyrayError, match="^train config needs data$"):
        TrainConfig.from_dict({"model": "model2"})


@pytest.mark.parametrize("data,expected", [
    ({"lr": "1e-3"}, {"lr": 0.001}),  # YAML reads 1e-3 (no dot) as a string
    ({"lr": 1, "cpus_per_worker": 2}, {"lr": 1.0, "cpus_per_worker": 2.0}),
    ({"epochs": "7", "nesterov": "false", "xla": True}, {"epochs": 7, "nesterov": False, "xla": True}),
])
def test_values_are_coerced_to_the_fields_types(data, expected):
    c = TrainConfig.from_dict({"model": "tinycnn", "data": "x", **data})
    got = {k: getattr(c, k) for k in expected}
    assert got == expected and [type(v) for v in got.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize("kw,name", [
    ({}, "tinycnn-adam-lr0.0001-b64x1-e10-s0"),
    # where and how a run happens does not change what it trains: the same folder, so it resumes
    ({"cpus_per_worker": 2, "gpus_per_worker": 1, "cache": "stream", "max_failures": 0, "storage": "s3://b/r",
      "xla": True}, "tinycnn-adam-lr0.0001-b64x1-e10-s0"),
    # any other field that differs from its default adds a digest of those fields
    ({"augment": "none"}, "tinycnn-adam-lr0.0001-b64x1-e10-s0-eb5a37f0"),  # pinned: old folders must resume
    ({"name": "mine", "augment": "none"}, "mine"),
])
def test_run_name(kw, name):
    assert cfg(**kw).run_name == name


def test_every_train_flag_is_a_field_with_its_default():
    """`tinyray train`'s flags come from TrainConfig: one flag per field, defaults from the field."""
    import argparse

    from tinyray.config import FIELDS, add_train_flags, train_config_from_args

    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == set(FIELDS)
    args = parser.parse_args(["--model", "tinycnn", "--data", "s3://b/d", "--batch-size", "8", "--lr", "3e-3",
                              "--augment", "none", "--cpus-per-worker", "0.5"])
    assert train_config_from_args(args) == TrainConfig(model="tinycnn", data="s3://b/d", batch_size=8, lr=3e-3,
                                                       augment="none", cpus_per_worker=0.5)
    assert train_config_from_args(parser.parse_args(["--model", "model2", "--data", "d"])) == \
        TrainConfig(model="model2", data="d")


def test_defaults_are_the_seeds():
    c = cfg()
    assert (c.optimizer, c.lr, c.augment, c.schedule) == ("adam", 1e-4, "flip", "constant")
    assert c.global_batch == 64 and cfg(workers=4).global_batch == 256
    # one replica per whole GPU: 2 workers × 4 GPUs × 64; a shared GPU is one replica
    assert cfg(workers=2, gpus_per_worker=4).global_batch == 512 and cfg(gpus_per_worker=0.5).global_batch == 64
    assert cfg().run_name == "tinycnn-adam-lr0.0001-b64x1-e10-s0"
