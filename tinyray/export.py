"""Hand over a trained model: an experiment's winner (or a named trial) as a self-contained folder.

    tinyray export EXPERIMENT [--trial NAME] --to DIR|s3://…

writes::

    model.keras     takes uint8 64×64×3 images (the ÷255 is inside): tf_keras.models.load_model
    classes.json    output index → wnid and name
    eval.json       the run's per-class evaluation on the val split
    README.md       the model card: what it is, metrics, per-class summary, config, data digest,
                    versions, git commit, and the command that trains it again
    export.json     what marks the folder as a tinyray export (read by ``tinyray predict``)
"""
from __future__ import annotations

import json
import os
import tempfile

from tinyray.config import FIELDS, RESULT_FILE, TrainConfig, flag
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.evaluate import EVAL_FILE, summary
from tinyray.models import INPUT_SHAPE, load_model_file
from tinyray.render import Bullets, Code, Section, Table, code, para, to_markdown

EXPORT_MARKER = "export.json"
FORMAT = "tinyray-export/1"
INPUT = {"shape": list(INPUT_SHAPE), "dtype": "uint8", "range": "0..255, RGB"}


def choose_trial(trials: list, name: str | None = None):
    """The trial to export: the one named (Tune's trial folder or its run name), else the
    winner — the completed trial whose final model scores the best val top-1 (ties: the
    earlier trial)."""
    if name:
        for t in trials:
            if name in (t.trial, TrainConfig.from_dict(t.config).run_name):
                if t.status != "completed" or t.evaluation is None:
                    raise TinyrayError(f"trial {name} is {t.status}: only a trial that ran all its epochs has a "
                                       "final model to export")
                return t
        raise TinyrayError(f"no trial named {name} (give a trial folder or run name from the report)")
    done = [t for t in trials if t.status == "completed" and t.evaluation is not None]
    if not done:
        raise TinyrayError("no trial of this experiment ran all its epochs: nothing to export yet")
    return max(done, key=lambda t: t.evaluation["top1"])


def train_command(config: dict) -> str:
    """The ``tinyray train`` line that trains ``config`` again: every field that differs from
    its default, as its flag."""
    parts = ["tinyray train"]
    for name, f in FIELDS.items():
        value = config[name]
        if name in ("model", "data") or value != f.default:
            if isinstance(value, bool):
                parts.append(flag(name) if value else "--no-" + flag(name)[2:])
            elif value is not None:
                parts.append(f"{flag(name)} {value:g}" if isinstance(value, float) else f"{flag(name)} {value}")
    return " ".join(parts)


def model_card(trial, result: dict, evaluation: dict, experiment: str) -> str:
    """README.md of an export (markdown, from the render module's structure)."""
    from tinyray.models import REGISTRY

    cfg = result["config"]  # as the run ran it (its own storage, not the sweep's base)
    spec = REGISTRY.get(cfg["model"])
    prov = result.get("provenance") or {}
    s = summary(evaluation)
    names = {c["wnid"]: c["name"].split(",")[0] for c in evaluation["per_class"]}

    def rows(classes):
        return [[f"{c['wnid']} {names[c['wnid']]}", c["count"], f"{100 * c['top1']:.1f} %", f"{100 * c['top5']:.1f} %"]
                for c in classes]

    last = result["epochs"][-1]
    commit = prov.get("git_commit")
    sections = [
        Section("What it is", [para(
            f"{cfg['model']}: {spec.description if spec else 'a tinyray model'}, {result['params']:,} parameters, "
            f"{len(evaluation['per_class'])} classes. It takes a batch of 64×64 RGB images as uint8 (0–255); the "
            "÷255 it was trained with is its first layer. It outputs a softmax over the classes in "
            "classes.json's order."), Code("import numpy as np, tf_keras\n"
                                           "model = tf_keras.models.load_model('model.keras')\n"
                                           "probs = model.predict(np.zeros((1, 64, 64, 3), np.uint8))", "python")]),
        Section("Metrics", [Table(["split", "images", "top-1", "top-5"], [
            ["val", evaluation["count"], f"{100 * evaluation['top1']:.2f} %", f"{100 * evaluation['top5']:.2f} %"],
            ["train (last epoch, augmented)", result["train_count"], f"{100 * last['train_accuracy']:.2f} %", "–"]]),
            para(f"Trained {len(result['epochs'])} epochs; {sum(e['epoch_seconds'] for e in result['epochs']):.0f} s "
                 f"of epoch time on {cfg['workers']} worker(s).")]),
        Section("Per class", [para("Worst classes (val top-1):"), Table(["class", "images", "top-1", "top-5"],
                                                                       rows(s["worst"])),
                              para("Best classes:"), Table(["class", "images", "top-1", "top-5"], rows(s["best"])),
                              para("Most confused (true → predicted):"),
                              Table(["true", "predicted", "images"],
                                    [[f"{c['true']} {names[c['true']]}", f"{c['predicted']} {names[c['predicted']]}",
                                      c["count"]] for c in s["confused"]])]),
        Section("Provenance", [Bullets([
            ["Experiment: ", code(experiment), ", trial ", code(trial.trial), ", run ",
             code(result["run"])],
            ["Data: ", code(cfg["data"]), ", manifest sha256 ", code(prov.get("manifest_sha256", "unknown"))],
            "Code: " + (f"git commit {commit}" + (" with uncommitted changes" if prov.get("git_dirty") else "")
                        if commit else "not from a git checkout"),
            "Versions: " + ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items()),
            ["Train it again: ", code(train_command(cfg))]])]),
        Section("Config", [Code(json.dumps(cfg, indent=1), "json")]),
    ]
    return to_markdown(f"{cfg['model']} on Tiny ImageNet ({result['run']})", [], sections)


def export_model(experiment: str, dest: str, trial_name: str | None = None,
                 opts: StorageOptions | None = None, force: bool = False) -> str:
    """Write the chosen trial of ``experiment`` as a self-contained folder at ``dest``; return it.
    A ``dest`` that holds files is refused unless ``force`` (which replaces it whole)."""
    from tinyray.folders import load_experiment, run_folder

    opts = opts or StorageOptions.from_env()
    if not force and storage.list_files(dest, opts):  # before any model is loaded
        raise TinyrayError(f"{dest} is not empty: pass --force to replace it whole")
    _, trials = load_experiment(experiment, opts)
    trial = choose_trial(trials, trial_name)
    run_dir = run_folder(experiment, trial.config)
    result = json.loads(storage.read_bytes(storage.join(run_dir, RESULT_FILE), opts))
    trained = storage.join(run_dir, "model", "model.keras")
    model = load_model_file(storage.read_bytes(trained, opts), trained)
    classes = [{"label": i, "wnid": c["wnid"], "name": c["name"]} for i, c in enumerate(trial.evaluation["per_class"])]
    return write_export(dest, with_uint8_input(model), classes, trial.evaluation,
                        model_card(trial, result, trial.evaluation, experiment),
                        {"model": trial.model, "run": result["run"], "experiment": experiment, "trial": trial.trial},
                        opts, force)


def write_export(dest: str, model, classes: list[dict], evaluation: dict | None, card: str, about: dict,
                 opts: StorageOptions, force: bool = False) -> str:
    """An export folder from a uint8-input model (see the module docstring); returns ``dest``.
    Written whole or not at all, the marker last (``storage.publish_dir``)."""
    with tempfile.TemporaryDirectory() as out:
        model.save(os.path.join(out, "model.keras"))
        files = {"classes.json": {"classes": classes}, EVAL_FILE: evaluation,
                 EXPORT_MARKER: {"format": FORMAT, "input": INPUT, **about}}
        for name, doc in files.items():
            with open(os.path.join(out, name), "w") as f:
                json.dump(doc, f, indent=1)
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(card)
        storage.publish_dir(out, dest, opts, EXPORT_MARKER, force)
    return dest if storage.is_s3(dest) else storage.local_path(dest)


def with_uint8_input(model):
    """``model`` (trained on images ÷255) behind a uint8 input that does the ÷255 itself."""
    from tinyray.tfk import keras

    inputs = keras.Input(shape=tuple(INPUT["shape"]), dtype="uint8", name="image_uint8")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    return keras.Model(inputs, model(x), name=f"{model.name}_uint8")


def register_export(dest: str, name: str, uri: str, opts: StorageOptions) -> int:
    """An export folder as a new version of registered model ``name`` in MLflow's Model Registry
    (its files as one run's artifacts, the version tagged with the model and its val top-1);
    returns the version number."""
    from tinyray.tracking import register_export as register

    files = {rel: storage.read_bytes(storage.join(dest, rel), opts) for rel in storage.list_files(dest, opts)}
    about = json.loads(files[EXPORT_MARKER])
    evaluation = json.loads(files.get(EVAL_FILE, b"null")) or {}
    return register(uri, name, files, {**about, "val_top1": evaluation.get("top1", "")})
