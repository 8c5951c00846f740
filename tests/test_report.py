"""The comparison report, from trial records (pure; no Ray)."""
import csv
import io
import json

import pytest

from tinyray.config import TrainConfig
from tinyray.folders import Trial
from tinyray.report import axis_columns, best_per_model, build_report, lr_grid, seed_table, trial_row

BASE = {"data": "s3://b/d", "epochs": 3, "batch_size": 16}


def epochs(*vals, train_offset=0.1, seconds=2.0, ips=100.0):
    return [{"epoch": i + 1, "train_loss": 1.0, "train_accuracy": v + train_offset, "val_loss": 1.0,
             "val_accuracy": v, "val_top5_accuracy": min(1.0, v + 0.3), "epoch_seconds": seconds,
             "images_per_second": ips} for i, v in enumerate(vals)]


def trial(name, model, optimizer, lr, history, **kw):
    axes = {"model": model, "optimizer": optimizer, "lr": lr}
    return Trial(name, axes, TrainConfig.from_dict({**BASE, **axes}).to_dict(), history, **kw)


def make_trials():
    return [
        trial("a", "model1", "adam", 1e-4, epochs(0.2, 0.3, 0.35)),
        trial("b", "model1", "sgd", 1e-3, epochs(0.1, 0.15, 0.2)),
        trial("c", "model2", "adam", 1e-4, epochs(0.3, 0.5, 0.45)),
        trial("d", "model2", "sgd", 1e-3, epochs(0.1), status="stopped early"),
        trial("e", "model5", "adam", 1e-4, [], error="RuntimeError: boom", status="failed"),
    ]


def test_best_per_model_and_row():
    best = best_per_model(make_trials())
    assert {m: t.trial for m, t in best.items()} == {"model1": "a", "model2": "c"}
    row = trial_row(best["model2"], 200)
    assert row["best_epoch"] == 2 and row["val_accuracy"] == 0.5 and row["params"] == 13_070_472
    assert row["gap"] == pytest.approx(0.1) and row["training_seconds"] == 6.0
    assert trial_row(best["model2"], 10)["params"] == 13_070_472 - 190 * 1025


def test_seed_table_puts_the_seeds_numbers_beside_ours():
    header, rows = seed_table(make_trials(), 200)
    by_model = {r[0]: dict(zip(header, r)) for r in rows}
    assert list(by_model) == ["model1", "model2", "model5"]
    assert by_model["model2"]["val top-1"] == "50.00 %" and by_model["model2"]["seed val acc"] == "25.40 %"
    assert by_model["model1"]["seed parameters"] == "31,696,968" and by_model["model1"]["seed time"] == "9m12s"
    assert by_model["model5"]["best variant"] == "no finished epoch"


def test_a_models_best_variant_is_one_that_trained_every_epoch():
    """ASHA stopped variant d after one epoch at 0.6: above c's 0.5, but no match for 3 epochs.
    model4 has no variant that finished: its best unfinished one stands, marked so."""
    trials = make_trials() + [trial("f", "model2", "nadam", 1e-3, epochs(0.6), status="stopped early"),
                              trial("g", "model4", "adam", 1e-3, epochs(0.3), status="stopped early")]
    best = best_per_model(trials)
    assert (best["model2"].trial, best["model4"].trial) == ("c", "g")
    header, rows = seed_table(trials, 200)
    by_model = {r[0]: dict(zip(header, r)) for r in rows}
    assert by_model["model2"]["val top-1"] == "50.00 %"
    assert by_model["model4"]["best variant"] == ("optimizer=adam lr=0.001; stopped early after 1 of 3 epochs: "
                                                  "no variant ran them all")


def test_a_base_trained_from_scratch_is_labelled_beside_the_seeds_pretrained_number():
    scratch = trial("s", "model5", "adam", 1e-4, epochs(0.2, 0.3, 0.25))
    axes = {"model": "model6", "optimizer": "adam", "lr": 1e-4}
    config = TrainConfig.from_dict({**BASE, **axes, "weights": "s3://b/w/resnet101_notop.h5"}).to_dict()
    pretrained = Trial("p", axes, config, epochs(0.4, 0.5, 0.55))
    header, rows = seed_table([scratch, pretrained], 200)
    by_model = {r[0]: dict(zip(header, r)) for r in rows}
    assert by_model["model5"]["best variant"] == "optimizer=adam lr=0.0001; from scratch"
    assert by_model["model6"]["best variant"] == "optimizer=adam lr=0.0001; pretrained (resnet101_notop.h5)"
    assert by_model["model5"]["seed val acc"] == "55.13 %"


def test_lr_grid_marks_stopped_trials():
    opts, lrs, cells = lr_grid(make_trials(), "model2")
    assert opts == ["adam", "sgd"] and lrs == [1e-4, 1e-3]
    assert cells[("sgd", 1e-3)] == (0.1, "stopped early")


def test_build_report_writes_every_file_self_contained():
    meta = {"sweep": {"name": "t", "storage": "s3://b/exp", "train": BASE,
                      "grid": {"model": ["model1", "model2", "model5"], "optimizer": ["adam", "sgd"]},
                      "scheduler": {"type": "asha"}},
            "data": "s3://b/d", "source": {"config": "sweeps/grid.yaml", "embedded_default": False}, "dataset": {"classes": 200, "train": 100000, "val": 10000, "skipped": 0},
            "cluster": {"nodes": 1, "resources": [{"CPU": 2.0, "memory": 1e9}], "max_concurrent_trials": 2},
            "versions": {"ray": "2.60.0"}, "started": "now", "endpoint": "http://127.0.0.1:9"}
    files = build_report(meta, make_trials())
    assert {"report.md", "report.html", "results.csv", "results.json", "train_accuracy.png",
            "val_accuracy.png"} <= set(files)
    md = files["report.md"].decode()
    assert "**model2** (optimizer=adam lr=0.0001)" in md  # the best model overall
    assert "`train-runs/model2-adam-lr0.0001-b16x1-e3-s0`" in md  # where its model.keras is
    assert "3 epochs, batch 16 per replica × 1 worker(s)" in md
    # the Reproduce line runs as written: the effective sweep file beside the report, and --data
    assert ("`ray job submit --working-dir . -- python jobs/train_all.py --config s3://b/exp/t/sweep.yaml "
            "--data s3://b/d --name t-rerun`") in md
    assert "RuntimeError: boom" in md and "stopped early" in md
    html = files["report.html"].decode()
    pngs = {name for name, data in files.items() if data[:4] == b"\x89PNG"}
    assert pngs == {"train_accuracy.png", "val_accuracy.png", "versus_seed.png", "accuracy_vs_cost.png"}
    assert html.count("data:image/png;base64,") == md.count("](") == len(pngs) and 'src="http' not in html
    # one structure, two renderings: every table row of the markdown is a row of the HTML
    assert html.count("<tr>") == sum(1 for line in md.splitlines() if line.startswith("| ")) 
    rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode())))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"completed", "stopped early", "failed"}
    results = json.loads(files["results.json"])
    assert results["best"]["model"] == "model2" and len(results["trials"][0]["history"]) == 3
    assert files["train_accuracy.png"][:4] == b"\x89PNG"


def test_every_grid_axis_is_a_report_column():
    base = {**BASE, "model": "tinycnn"}
    trials = [Trial(n, axes, TrainConfig.from_dict({**base, **axes}).to_dict(), epochs(0.2))
              for n, axes in (("a", {"batch_size": 8, "augment": "none"}), ("b", {"batch_size": 32, "augment": "flip"}))]
    assert axis_columns(trials) == ["model", "optimizer", "lr", "batch_size", "augment"]
    assert trials[0].variant == "batch_size=8 augment=none"
    meta = {"sweep": {"name": "v", "storage": "/exp", "train": base,
                      "grid": {"batch_size": [8, 32], "augment": ["none", "flip"]}, "scheduler": {"type": "fifo"}},
            "data": "s3://tinyray/sample", "source": {"config": None, "embedded_default": True},
            "dataset": {"classes": 4, "train": 96, "val": 24, "skipped": 0},
            "cluster": {"nodes": 1, "resources": [{"CPU": 2.0}], "max_concurrent_trials": 2},
            "versions": {"ray": "2.60.0"}, "started": "now", "endpoint": "http://127.0.0.1:9"}
    files = build_report(meta, trials)
    rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode())))
    assert [(r["batch_size"], r["augment"]) for r in rows] == [("8", "none"), ("32", "flip")]
    md = files["report.md"].decode()
    assert "| model | optimizer | lr | batch_size | augment | status |" in md
    assert "batch varies per replica" in md
    assert "embedded default" in md and "`python jobs/train_all.py --config /exp/v/sweep.yaml --name v-rerun`" in md


CLASSES = [{"label": i, "wnid": w, "name": n} for i, (w, n) in enumerate(
    [("n01", "tabby, tabby cat"), ("n02", "tiger cat"), ("n03", "goldfish"), ("n04", "lemon")])]


def evaluation(per_class_top1, confused):
    """An eval.json of 10 images a class (only what the report reads)."""
    return {"top1": sum(per_class_top1) / 4, "top5": 1.0, "count": 40,
            "per_class": [{**{k: c[k] for k in ("wnid", "name")}, "count": 10, "top1": a, "top5": 1.0}
                          for c, a in zip(CLASSES, per_class_top1)],
            "confused": [{"true": t, "predicted": p, "count": n} for t, p, n in confused]}


def test_the_report_compares_the_models_class_by_class():
    trials = make_trials()
    trials[0].evaluation = evaluation([0.0, 0.5, 1.0, 0.9], [("n01", "n02", 6), ("n02", "n01", 3)])
    trials[2].evaluation = evaluation([0.0, 0.1, 0.8, 0.9], [("n02", "n01", 5), ("n02", "n03", 4)])
    meta = {"sweep": {"name": "t", "storage": "/exp", "train": BASE, "grid": {"model": ["model1", "model2"]},
                      "scheduler": {"type": "fifo"}},
            "data": "s3://b/d", "source": {}, "dataset": {"classes": 4, "train": 400, "val": 40, "skipped": 0},
            "cluster": {"nodes": 1, "resources": [{"CPU": 2.0}], "max_concurrent_trials": 2},
            "started": "now", "endpoint": "http://127.0.0.1:9"}
    files = build_report(meta, trials)
    md = files["report.md"].decode()
    section = md.split("## Class by class")[1].split("\n## ")[0]
    assert "![Per-class val top-1 across the models](per_class.png)" in section
    assert files["per_class.png"][:4] == b"\x89PNG"
    assert "**Classes every model gets wrong (1):** n01 tabby" in section
    # n02: 50 % for model1, 10 % for model2 — the widest spread, listed first
    assert "| n02 tiger cat | 50.00 % | 10.00 % | 40 pts |" in section
    # tabby ↔ tiger cat: 6 + 3 + 5 across the two models, either way round
    assert "| n01 tabby ↔ n02 tiger cat | 14 |" in section and "| n02 tiger cat ↔ n03 goldfish | 4 |" in section
    assert section.index("n01 tabby ↔") < section.index("n02 tiger cat ↔ n03")


def test_training_cost_is_device_hours():
    from tinyray.report import trial_cost

    t = trial("a", "model2", "adam", 1e-4, epochs(0.1, 0.2, seconds=1800))
    assert trial_cost(t) == (1.0, "CPU-hours")  # 2 × 1800 s × 1 worker × 1 CPU
    t.config = {**t.config, "workers": 4, "gpus_per_worker": 1.0}
    assert trial_cost(t) == (4.0, "GPU-hours")


