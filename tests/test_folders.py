"""An experiment folder read back (tinyray/folders.py): Tune's trial files → Trial records, and
the folder contract itself. Pure, no Ray."""
import json

import pytest

from tinyray.config import TrainConfig
from tinyray.errors import failure_line
from tinyray.folders import parse_trial, run_folder, train_runs, trial_base, trial_status

BASE = {"data": "s3://b/d", "epochs": 3, "batch_size": 16}


def epochs(*vals, train_offset=0.1, seconds=2.0, ips=100.0):
    return [{"epoch": i + 1, "train_loss": 1.0, "train_accuracy": v + train_offset, "val_loss": 1.0,
             "val_accuracy": v, "val_top5_accuracy": min(1.0, v + 0.3), "epoch_seconds": seconds,
             "images_per_second": ips} for i, v in enumerate(vals)]


def test_the_folder_contract_as_written_in_old_experiments():
    """Pinned from an experiment folder written before folders.py: a rename here would orphan
    every existing experiment's run folders."""
    assert train_runs("s3://b/exp/grid") == "s3://b/exp/grid/train-runs"
    base = trial_base({"model": "model2", "epochs": 3}, "s3://b/d", "/exp/grid")
    assert base == {"model": "model2", "epochs": 3, "data": "s3://b/d", "storage": "/exp/grid/train-runs"}
    assert run_folder("/exp/grid", {**base, "lr": 1e-3}) == "/exp/grid/train-runs/model2-adam-lr0.001-b64x1-e3-s0"


@pytest.mark.parametrize("history,planned,error,scheduler,status", [
    (epochs(0.1, 0.2), 2, None, "fifo", "completed"),
    (epochs(0.1), 2, None, "asha", "stopped early"),
    (epochs(0.1), 2, None, "fifo", "incomplete"),
    ([], 2, None, "asha", "incomplete"),
    (epochs(0.1), 2, "OOM", "fifo", "failed"),
])
def test_trial_status(history, planned, error, scheduler, status):
    assert trial_status(history, planned, error, scheduler) == status


def test_parse_trial_keeps_each_epoch_once_from_tunes_result_lines():
    params = {"model": "model2", "optimizer": "adam", "lr": 1e-4}
    lines = [json.dumps({**e, "training_iteration": e["epoch"], "config": params}) for e in epochs(0.1, 0.2)]
    # a restarted trial re-reports epoch 2: the last report wins, no duplicate
    lines.append(json.dumps({**epochs(0.1, 0.25)[1], "config": params}))
    lines.append(json.dumps({**epochs(0.1, 0.25, 0.3)[2], "config": params}))
    t = parse_trial("trial_00001", params, BASE, "\n".join(lines) + "\n", None, "fifo")
    assert [e["epoch"] for e in t.history] == [1, 2, 3]
    # the trial's config is the sweep's base with its axes over it
    assert t.config == TrainConfig(model="model2", data="s3://b/d", epochs=3, batch_size=16, lr=1e-4).to_dict()
    assert t.history[1]["val_accuracy"] == 0.25 and t.status == "completed"
    assert "config" not in t.history[0]


def test_restarts_are_read_from_where_each_attempt_resumed():
    from tinyray.folders import Trial

    def at(epoch, start, step=0):
        return {"epoch": epoch, "val_accuracy": 0.1, "resumed_from_epoch": start, "resumed_at_step": step}

    assert Trial("t", {}, {}, [at(1, 0), at(2, 0)]).restarts == []
    # a node lost in epoch 3 (resumed from epoch 2's checkpoint), then a preemption notice at step 7 of epoch 5
    history = [at(1, 0), at(2, 0), at(3, 2), at(4, 2), at(5, 4, 7), at(6, 4, 7)]
    assert Trial("t", {}, {}, history).restarts == ["after epoch 2", "at step 7 of epoch 5"]
    assert Trial("t", {}, {}, [{"epoch": 1, "val_accuracy": 0.1}]).restarts == []  # older results: no fields
    # preempted inside the first epoch: no epoch of the first attempt was reported
    assert Trial("t", {}, {}, [at(1, 0, 3), at(2, 0, 3)]).restarts == ["at step 3 of epoch 1"]


@pytest.mark.parametrize("text,line", [
    # what Tune's error.txt holds when a trial's run raised tinyray's one-line error
    ("Failure # 1 (occurred at 2026-11-29)\nray::ImplicitFunc.train() (pid=1)\n  File \"x.py\", line 3\n"
     "tinyray.errors.TinyrayError: training r failed after 3 retries: boom\n",
     "training r failed after 3 retries: boom"),
    ("Traceback...\n  File x\nRuntimeError: out of memory\n\n", "RuntimeError: out of memory"),
    ("", None),
    (None, None),
])
def test_a_failed_trial_shows_the_line_tinyray_train_prints(text, line):
    assert failure_line(text) == line


def test_parse_trial_of_a_failed_trial():
    t = parse_trial("t", {"model": "model5", "optimizer": "sgd", "lr": 1e-2}, BASE, "",
                    "Traceback...\ntinyray.errors.TinyrayError: out of memory\n", "fifo")
    assert t.status == "failed" and t.error == "out of memory"


def test_an_experiment_of_the_older_sweep_format_is_one_line(tmp_path):
    from tinyray.errors import TinyrayError
    from tinyray.folders import load_experiment

    (tmp_path / "sweep.json").write_text(json.dumps({"sweep": {"models": ["model1"], "scheduler": "fifo"}}))
    with pytest.raises(TinyrayError, match="was written by an older tinyray"):
        load_experiment(str(tmp_path))
