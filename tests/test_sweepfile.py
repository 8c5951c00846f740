"""The sweep file format (tinyray.sweepfile, pure): file -> SweepConfig -> the trials'
TrainConfigs, and each bad file as one line."""
import glob
import os

import pytest

from tinyray.config import TrainConfig
from tinyray.errors import TinyrayError
from tinyray.sweepfile import SchedulerConfig, SweepConfig, load_sweep, parse_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEARCH = """
name: s
search: optuna
num_samples: 6
train: {model: tinycnn, epochs: 3}
space:
  optimizer: {choice: [adam, sgd]}
  lr: {loguniform: [1.0e-5, 1.0e-3]}
"""


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "sweeps", "*.yaml"))))
def test_every_shipped_sweep_file_loads_by_path_and_by_name(path):
    cfg = load_sweep(path)
    assert cfg.expand("s3://b/d")
    name = os.path.basename(path)[:-5]
    assert load_sweep(name) == cfg  # shipped inside the package: `--config grid` works anywhere


def test_grid_yaml_is_six_models_by_four_optimizers_by_three_lrs():
    cfg = load_sweep(os.path.join(ROOT, "sweeps", "grid.yaml"))
    trials = cfg.expand("s3://b/d")
    assert len(trials) == 6 * 4 * 3 and cfg.scheduler == SchedulerConfig("asha", 2, 3)
    assert {t.optimizer for t in trials} == {"adam", "rmsprop", "sgd", "nadam"}
    assert {t.lr for t in trials} == {1e-3, 1e-4, 1e-5} and {t.gpus_per_worker for t in trials} == {1}


def test_seed_yaml_is_the_seeds_experiment():
    trials = load_sweep(os.path.join(ROOT, "sweeps", "seed.yaml")).expand("s3://b/d")
    assert [(t.model, t.optimizer, t.lr, t.augment, t.schedule, t.mixup, t.cutmix, t.label_smoothing,
             t.weight_decay) for t in trials] == [(f"model{i}", "adam", 1e-4, "flip", "constant", 0, 0, 0, 0)
                                                  for i in range(1, 7)]


def test_a_sweep_expands_to_base_plus_every_combination_of_its_axes():
    cfg = parse_sweep("train: {model: tinycnn, epochs: 2, lr: 1e-3}\n"
                      "grid: {optimizer: [adam, sgd], batch_size: [8, 16]}\n")
    base = dict(model="tinycnn", data="s3://b/d", epochs=2, lr=1e-3, storage="/exp/train-runs")
    assert cfg.combinations() == [{"optimizer": "adam", "batch_size": 8}, {"optimizer": "adam", "batch_size": 16},
                                  {"optimizer": "sgd", "batch_size": 8}, {"optimizer": "sgd", "batch_size": 16}]
    assert cfg.expand("s3://b/d", "/exp/train-runs") == [
        TrainConfig(**base, optimizer="adam", batch_size=8), TrainConfig(**base, optimizer="adam", batch_size=16),
        TrainConfig(**base, optimizer="sgd", batch_size=8), TrainConfig(**base, optimizer="sgd", batch_size=16)]
    # no grid: one trial, the base
    assert parse_sweep("train: {model: tinycnn}").expand("d") == [TrainConfig(model="tinycnn", data="d")]


def test_any_trainconfig_field_is_an_axis():
    import dataclasses

    from tinyray.config import FIELDS

    for name, f in FIELDS.items():
        if name in ("model", "data", "storage", "name", "endpoint_url"):
            continue
        value = f.default
        cfg = SweepConfig(train={"model": "tinycnn"}, grid={name: [value]})
        assert [getattr(t, name) for t in cfg.expand("d")] == [value]
        assert dataclasses.replace(cfg.expand("d")[0]) == TrainConfig(model="tinycnn", data="d")


def test_flags_override_the_file():
    text = ("name: f\ntrain: {epochs: 5, batch_size: 8}\ngrid: {model: [model1, model2], lr: [1e-3, 1e-4]}\n"
            "scheduler: {type: fifo, grace_period: 1}\n")
    cfg = parse_sweep(text, overrides={"epochs": 2, "lr": 3e-3, "scheduler": "asha", "models": ["tinycnn"],
                                       "name": None, "data": "s3://b/d"})
    assert cfg.name == "f" and cfg.scheduler == SchedulerConfig("asha", 1, 3)
    assert cfg.train == {"epochs": 2, "batch_size": 8, "lr": 3e-3, "data": "s3://b/d"}
    assert cfg.grid == {"model": ["tinycnn"]}  # a flag for an axis replaces the axis


@pytest.mark.parametrize("text,message", [
    ("models: [model1]\n", "unknown sweep field models: write grid: {model: \\[...\\]}"),
    ("lr: 0.1\ntrain: {model: tinycnn}\n", "unknown sweep field lr: put it under train: .* or grid: "),
    ("colour: red\n", "unknown sweep field colour: valid: name, storage, max_concurrent_trials, train, grid"),
    ("train: {modle: tinycnn}\n", "unknown train field.*modle"),
    ("train: {model: tinycnn}\ngrid: {learning_rate: [1]}\n", "unknown grid field.*learning_rate"),
    ("grid: {model: [model9]}\n", "unknown model 'model9'"),
    ("grid: {model: [tinycnn], optimizer: [adagrad]}\n", "unknown optimizer 'adagrad'"),
    ("grid: {model: [tinycnn], lr: [0]}\n", "lr must be > 0"),
    ("grid: {model: [tinycnn], lr: 0.001}\n", "grid: lr must be a non-empty list"),
    ("grid: {model: [tinycnn], lr: [fast]}\n", "lr must be a number, got 'fast'"),
    ("grid: {model: [tinycnn], storage: [a, b]}\n", "grid: storage cannot be a sweep axis"),
    ("train: {model: tinycnn, name: x}\n", "train: name is the experiment's"),
    ("train: {model: tinycnn, lr: 0.1}\ngrid: {lr: [0.1]}\n", "lr is in both train: and grid:"),
    ("train: {epochs: 0}\ngrid: {model: [tinycnn]}\n", "epochs must be at least 1"),
    ("grid: {optimizer: [adam]}\n", "the sweep names no model"),
    ("grid: {model: [tinycnn, model2, tinycnn]}\n", "grid: {'model': 'tinycnn'} and {'model': 'tinycnn'} are the "
                                                     "same training"),
    # cpus_per_worker says where a run happens, not what it trains: both trials would share one run
    ("grid: {model: [tinycnn], cpus_per_worker: [1, 2]}\n", "are the same training"),
    ("train: {model: tinycnn}\nscheduler: hyperband\n", "scheduler type must be one of fifo, asha"),
    ("train: {model: tinycnn, epochs: 3}\nscheduler: {type: asha, grace_period: 5}\n",
     "grace_period \\(5\\) must be at most the epochs of every trial \\(3\\)"),
    ("train: {model: tinycnn}\nscheduler: {type: asha, patience: 5}\n", "unknown scheduler field.*patience"),
    ("train: {model: tinycnn}\nmax_concurrent_trials: 0\n", "max_concurrent_trials must be 'auto' or an integer"),
    ("- just\n- a list\n", "must be a mapping"),
    ("grid: {model: [model1\n", "not valid YAML"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TinyrayError, match=message) as e:
        load_sweep(str(path))
    assert str(e.value).startswith(f"sweep config {path}") and "\n" not in str(e.value)


@pytest.mark.parametrize("grid,message", [
    ("[{model: tinycnn}, 3]", "grid: trial 2 must be a mapping of TrainConfig fields, got 3"),
    ("[{model: tinycnn, learning_rate: 0.1}]", "unknown grid: trial 1 field.s. learning_rate"),
    ("[{model: tinycnn, storage: /x}]", "grid: storage cannot be a sweep axis"),
    ("[{model: tinycnn, lr: 0.1}, {model: tinycnn, lr: 0.1}]", "are the same training"),
    ("[{model: tinycnn, epochs: 2}]", "epochs is in both train: and grid:"),
])
def test_a_bad_listed_grid_is_one_line(grid, message):
    with pytest.raises(TinyrayError, match=message):
        parse_sweep(f"train: {{epochs: 3}}\ngrid: {grid}\n")


@pytest.mark.parametrize("change,message", [
    (("  lr: {loguniform: [1.0e-5, 1.0e-3]}", "  lr: {normal: [1.0e-5, 1.0e-3]}"),
     "space: lr: unknown distribution 'normal'; valid: loguniform, uniform, choice"),
    (("[1.0e-5, 1.0e-3]", "[1.0e-3, 1.0e-5]"),
     r"space: lr: loguniform bounds must be \[low, high\] with low < high, got \[0.001, 1e-05\]"),
    (("[1.0e-5, 1.0e-3]", "[0, 1.0e-3]"), "space: lr: loguniform needs low > 0, got 0"),
    (("  lr:", "  learning_rate:"), "unknown space field.s. learning_rate; valid: model, data,"),
    (("  optimizer: {choice: [adam, sgd]}", "  optimizer: {uniform: [0, 1]}"),
     r"space: optimizer is not a number: draw it with choice: \[...\]"),
    (("  optimizer: {choice: [adam, sgd]}", "  optimizer: {choice: [adam, adagrad]}"), "unknown optimizer 'adagrad'"),
    (("  optimizer: {choice: [adam, sgd]}", "  storage: {choice: [a, b]}"), "space: storage cannot be a sweep axis"),
    (("num_samples: 6", "num_samples: 0"), "search: optuna needs num_samples: N .an integer >= 1., got 0"),
    (("num_samples: 6\n", ""), "search: optuna needs num_samples: N"),
    (("search: optuna", "search: bayes"), "search must be one of grid, random, optuna, got 'bayes'"),
    (("search: optuna", "search: grid"), "space: is drawn from by search: random or optuna"),
    (("space:", "grid: {seed: [1, 2]}\nspace:"), "search: optuna draws from space:, not grid:"),
    (("epochs: 3}", "epochs: 3, lr: 0.1}"), "lr is in both train: and space:; keep it in one"),
    (("  lr: {loguniform: [1.0e-5, 1.0e-3]}", "  lr: {loguniform: [1.0e-5]}"),
     r"space: lr: loguniform takes \[low, high\], got \[1e-05\]"),
])
def test_a_bad_search_is_one_line(change, message):
    text = SEARCH.replace(*change)
    assert text != SEARCH
    with pytest.raises(TinyrayError, match=message):
        parse_sweep(text)


def test_a_folder_named_like_a_shipped_sweep_does_not_hide_it(tmp_path, monkeypatch):
    (tmp_path / "smoke").mkdir()  # found running the embedded default from a folder holding ./smoke/
    monkeypatch.chdir(tmp_path)
    assert load_sweep("smoke") == load_sweep(os.path.join(ROOT, "sweeps", "smoke.yaml"))


def test_a_missing_sweep_file_names_the_shipped_ones():
    with pytest.raises(TinyrayError, match="sweep config nope.yaml does not exist \\(shipped: beyond, grid, seed, smoke\\)"):
        load_sweep("nope.yaml")


def test_the_effective_sweep_file_round_trips():
    from tinyray.sweepfile import to_yaml

    cfg = load_sweep("grid", {"epochs": 3, "models": ["tinycnn"], "data": "s3://b/d"})
    assert parse_sweep(to_yaml(cfg)) == cfg


def test_a_resume_may_change_only_what_cannot_change_a_trial():
    from tinyray.sweepfile import resume_conflict

    saved = {"name": "g", "max_concurrent_trials": 1, "train": {"lr": 0.001, "epochs": 3},
             "grid": {"optimizer": ["adam"]}, "scheduler": {"type": "asha"}}
    assert resume_conflict(saved, {**saved, "max_concurrent_trials": 4}) is None
    assert resume_conflict(saved, {**saved, "grid": {"optimizer": ["adam", "sgd"]}}) == \
        'grid.optimizer: was ["adam"], now ["adam", "sgd"]'
    assert resume_conflict(saved, {**saved, "train": {**saved["train"], "seed": 1}}) == "train.seed: was null, now 1"
    assert resume_conflict(saved, {**saved, "scheduler": {"type": "fifo"}}) == 'scheduler.type: was "asha", now "fifo"'


def test_asha_is_per_model_unless_the_sweep_says_otherwise():
    assert parse_sweep("train: {model: tinycnn, epochs: 3}\nscheduler: asha\n").scheduler.per_model is True
    off = parse_sweep("train: {model: tinycnn, epochs: 3}\nscheduler: {type: asha, per_model: false}\n")
    assert off.scheduler == SchedulerConfig("asha", 2, 3, per_model=False)
    with pytest.raises(TinyrayError, match="scheduler per_model must be true or false, got 'maybe'"):
        parse_sweep("train: {model: tinycnn}\nscheduler: {type: asha, per_model: maybe}\n")
