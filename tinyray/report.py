"""The comparison report: an experiment's trials (read back by ``folders.load_experiment``) →
report.md, report.html (plots embedded), results.csv and results.json. It works on finished and
interrupted experiments alike, locally or in s3://, with no Ray running. The tables are pure
functions of the trial records.
"""
from __future__ import annotations

import csv
import io
import json
import statistics

from tinyray import plots
from tinyray.config import TrainConfig
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.folders import SWEEP_FILE, TRAIN_RUNS, Trial, load_experiment
from tinyray.models import REGISTRY, SEED_MODELS
from tinyray.resources import DRIVER_RESOURCE
from tinyray.render import Bullets, Code, Image, Section, Table, bold, code, csv_cell, para, to_html, to_markdown

RESULT_FIELDS = ("status", "epochs_run", "best_epoch", "train_accuracy", "val_accuracy", "val_top5_accuracy", "gap",
                 "params", "training_seconds", "images_per_second", "error")


def axis_columns(trials: list[Trial]) -> list[str]:
    """The report's config columns: model, optimizer and lr always, then every other grid axis."""
    columns = ["model", "optimizer", "lr"]
    for t in trials:
        columns += [k for k in t.axes if k not in columns]
    return columns


def shared_setting(trials: list[Trial], key: str):
    """A TrainConfig field's value if every trial has the same one, else ``"varies"``."""
    values = {json.dumps(t.config[key]) for t in trials}
    return trials[0].config[key] if len(values) == 1 else "varies"


def trial_row(t: Trial, num_classes: int) -> dict:
    best = t.best
    spec = REGISTRY.get(t.model)
    return {
        "trial": t.trial, **{k: t.config[k] for k in axis_columns([t])}, "status": t.status,
        "epochs_run": len(t.history),
        "best_epoch": best["epoch"] if best else None,
        "train_accuracy": best["train_accuracy"] if best else None,
        "val_accuracy": best["val_accuracy"] if best else None,
        "val_top5_accuracy": best["val_top5_accuracy"] if best else None,
        "gap": (best["train_accuracy"] - best["val_accuracy"]) if best else None,
        "params": spec.params_for(num_classes) if spec else None,
        "training_seconds": sum(e["epoch_seconds"] for e in t.history),
        "images_per_second": statistics.median(e["images_per_second"] for e in t.history) if t.history else None,
        "error": t.error or "",
    }


def best_per_model(trials: list[Trial]) -> dict[str, Trial]:
    """Each model's best variant by best-epoch val accuracy, among its variants that trained the
    full schedule: a variant ASHA stopped after 2 epochs is no match for one that ran 20, and is
    listed apart. Only a model none of whose variants finished is represented by its best
    unfinished one (``full_schedule`` says which). Failed or empty trials never are."""
    out: dict[str, Trial] = {}
    for t in trials:
        if not t.history:
            continue
        cur = out.get(t.model)
        if cur is None or (full_schedule(t), t.best["val_accuracy"]) > (full_schedule(cur), cur.best["val_accuracy"]):
            out[t.model] = t
    return out


def full_schedule(t: Trial) -> bool:
    return t.status == "completed"


def training_label(t: Trial) -> str:
    """How a model with a pretrained base (model5, model6) started: the seed's were pretrained."""
    if not REGISTRY.get(t.model) or not REGISTRY[t.model].has_base:
        return ""
    weights = t.config.get("weights", "none")
    return "from scratch" if weights in ("none", None, "") else f"pretrained ({weights.rsplit('/', 1)[-1]})"


def lr_grid(trials: list[Trial], model: str) -> tuple[list[str], list[float], dict]:
    """Optimizer × learning-rate grid of best val accuracy for one model (for sweeps whose only
    other axes are optimizer and lr)."""
    mine = [t for t in trials if t.model == model]
    opts = sorted({t.optimizer for t in mine})
    lrs = sorted({t.lr for t in mine})
    cells = {(t.optimizer, t.lr): (t.best["val_accuracy"] if t.best else None, t.status) for t in mine}
    return opts, lrs, cells


def _pct(x):
    return "–" if x is None else f"{100 * x:.2f} %"


def _dur(seconds):
    if seconds is None:
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def seed_table(trials: list[Trial], num_classes: int) -> tuple[list[str], list[list[str]]]:
    """The seed's results table reproduced: one row per model with its best variant, beside the
    seed's own reported numbers."""
    best = best_per_model(trials)
    header = ["model", "best variant", "train acc", "val top-1", "val top-5", "parameters", "training time",
              "images/s", "seed train acc", "seed val acc", "seed parameters", "seed time"]
    rows = []
    models = list(SEED_MODELS) + sorted({t.model for t in trials} - set(SEED_MODELS))
    for m in models:
        if m not in {t.model for t in trials}:
            continue
        seed = REGISTRY[m].seed if m in REGISTRY else None
        seed_cells = ([f"{seed.train_accuracy:.2f} %", f"{seed.val_accuracy:.2f} %", f"{seed.params:,}",
                       _dur(seed.training_seconds)] if seed else ["–"] * 4)
        t = best.get(m)
        if t is None:
            rows.append([m, "no finished epoch", "–", "–", "–", f"{REGISTRY[m].params_for(num_classes):,}",
                         "–", "–", *seed_cells])
            continue
        r = trial_row(t, num_classes)
        notes = [n for n in (training_label(t), "" if full_schedule(t) else
                             f"{t.status} after {len(t.history)} of {t.epochs_planned} epochs: no variant ran them all")
                 if n]
        rows.append([m, "; ".join([t.variant, *notes]), _pct(r["train_accuracy"]), _pct(r["val_accuracy"]),
                     _pct(r["val_top5_accuracy"]), f"{r['params']:,}", _dur(r["training_seconds"]),
                     f"{r['images_per_second']:.0f}", *seed_cells])
    return header, rows


def trial_cost(t: Trial) -> tuple[float, str]:
    """(device-hours, unit) a trial's epochs took: GPU-hours when its workers held GPUs, else
    CPU-hours — epoch seconds × workers × devices per worker."""
    c = t.config
    per = c["gpus_per_worker"] or c["cpus_per_worker"]
    return sum(e["epoch_seconds"] for e in t.history) * c["workers"] * per / 3600, \
        ("GPU-hours" if c["gpus_per_worker"] else "CPU-hours")


def class_names(classes: list[dict]) -> dict[str, str]:
    """wnid → its first name (words.txt lists synonyms after the first comma)."""
    return {c["wnid"]: c["name"].split(",")[0].strip() for c in classes}


# ------------------------------------------------------------------------------ the report


def _best_lines(trials, key):
    return {f"{m} ({t.variant})": [(e["epoch"], e[key]) for e in t.history] for m, t in best_per_model(trials).items()}


def build_report(meta: dict, trials: list[Trial]) -> dict[str, bytes]:
    """All report files, by name: every section is built once, as a structure, and rendered to
    markdown and to HTML from it."""
    num_classes = meta["dataset"]["classes"]
    sweep = meta["sweep"]
    rows = [trial_row(t, num_classes) for t in trials]
    best = best_per_model(trials)
    overall = max(best.values(), key=lambda t: t.best["val_accuracy"]) if best else None
    images = {"train_accuracy.png": plots.accuracy_vs_epoch(_best_lines(trials, "train_accuracy"),
                                                            "Training accuracy vs epoch"),
              "val_accuracy.png": plots.accuracy_vs_epoch(_best_lines(trials, "val_accuracy"),
                                                          "Validation accuracy vs epoch")}
    columns = axis_columns(trials)
    setting = lambda key: shared_setting(trials, key) if trials else "–"  # noqa: E731
    counts = {s: sum(t.status == s for t in trials) for s in ("completed", "stopped early", "failed", "incomplete")}
    intro = [para(f"Dataset: {meta['data']} — {num_classes} classes, {meta['dataset']['train']:,} train / "
                  f"{meta['dataset']['val']:,} val images. {len(trials)} trials ("
                  + ", ".join(f"{n} {s}" for s, n in counts.items()) + ") over "
                  + search_summary(sweep)
                  + f"; scheduler {sweep['scheduler']['type']}, {setting('epochs')} epochs, batch "
                  f"{setting('batch_size')} per replica × {setting('workers')} worker(s).")]
    header, seed_rows = seed_table(trials, num_classes)
    sections = [Section("The seed's table, reproduced", [
        para("Each model's best variant (by best-epoch val accuracy, among the variants that trained every epoch; "
             "those stopped early are listed apart below) beside the numbers the seed study reported (TensorFlow, "
             "one machine, full Tiny ImageNet; its model5 and model6 started from ImageNet weights, so a row "
             "marked from scratch is not its like). Training time is the sum of this run's epoch times."),
        Table(header, seed_rows)])]
    if overall:
        b = overall.best
        sections.append(Section("Best model", [para(
            bold(overall.model), f" ({overall.variant}): val top-1 {_pct(b['val_accuracy'])}, top-5 "
            f"{_pct(b['val_top5_accuracy'])} (epoch {b['epoch']}). ", *_run_folder_note(overall))]))
    sections.append(Section("Accuracy vs epoch", [Image("train_accuracy.png", "Training accuracy vs epoch"),
                                                  Image("val_accuracy.png", "Validation accuracy vs epoch")]))
    sections += cross_model_sections(meta, best, images)
    sections.append(variants_section(trials, continuous_lr(sweep), images))
    sections.append(Section("Overfitting gap (train − val, best variant)", [Table(
        ["model", "train acc", "val acc", "gap"],
        [[m, _pct(t.best["train_accuracy"]), _pct(t.best["val_accuracy"]),
          f"{100 * (t.best['train_accuracy'] - t.best['val_accuracy']):+.2f} pts"] for m, t in best.items()])]))
    odd = [t for t in trials if t.status != "completed"]
    sections.append(Section("Stopped-early, failed and incomplete trials", [Table(
        ["trial", "model", "variant", "status", "epochs run", "error"],
        [[t.trial, t.model, t.variant, t.status, len(t.history), t.error or ""] for t in odd])] if odd else
        [para("None: every trial ran all its epochs.")]))
    restarted = [t for t in trials if t.restarts]
    sections.append(Section("Restarts (a lost worker or node, a preemption, a resumed sweep)", [Table(
        ["trial", "model", "variant", "resumed"],
        [[t.trial, t.model, t.variant, "; ".join(t.restarts)] for t in restarted])] if restarted else
        [para("None: every trial ran in one go.")]))
    sections.append(Section("All trials", [Table(
        columns + ["status", "epochs", "best val top-1", "top-5", "train acc", "time", "images/s"],
        [[_cell(r[c]) for c in columns] + [r["status"], r["epochs_run"], _pct(r["val_accuracy"]),
          _pct(r["val_top5_accuracy"]), _pct(r["train_accuracy"]), _dur(r["training_seconds"]),
          "–" if r["images_per_second"] is None else f"{r['images_per_second']:.0f}"] for r in rows])]))
    sections.append(reproduce_section(meta))
    title = f"tinyray comparison report: {sweep['name']}"

    out_csv = io.StringIO()
    writer = csv.DictWriter(out_csv, fieldnames=["trial", *columns, *RESULT_FIELDS])
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    results = {"sweep": sweep, "dataset": meta["dataset"], "cluster": meta["cluster"],
               "provenance": meta.get("provenance"),
               "best": {"model": overall.model, "axes": overall.axes, "config": overall.config,
                        "val_accuracy": overall.best["val_accuracy"]} if overall else None,
               "trials": [{**r, "config": t.config, "history": t.history} for r, t in zip(rows, trials)]}
    return {"report.md": to_markdown(title, intro, sections).encode(),
            "report.html": to_html(title, intro, sections, images).encode(),
            "results.csv": out_csv.getvalue().encode(), "results.json": json.dumps(results, indent=1).encode(),
            **images}


def cross_model_sections(meta: dict, best: dict[str, Trial], images: dict[str, bytes]) -> list[Section]:
    """The models side by side: against the seed and the cost, then class by class from each best
    variant's eval.json. Adds its figures to ``images``."""
    from tinyray.evaluate import compare

    out = []
    if best:
        models = list(best)
        seed = [REGISTRY[m].seed if m in REGISTRY else None for m in models]
        images["versus_seed.png"] = plots.versus_seed(
            models, [t.best["val_accuracy"] for t in best.values()], [s.val_accuracy if s else None for s in seed])
        costs = {m: trial_cost(t) for m, t in best.items()}
        unit = "GPU-hours" if any(u == "GPU-hours" for _, u in costs.values()) else "CPU-hours"
        images["accuracy_vs_cost.png"] = plots.accuracy_vs_cost(
            [(m, costs[m][0], t.best["val_accuracy"]) for m, t in best.items()],
            [(m, s.training_seconds / 3600, s.val_accuracy) for m, s in zip(models, seed) if s], unit)
        out.append(Section("Against the seed, and against the cost", [
            para("Each model's best variant beside the seed's reported val top-1, and val top-1 against what the "
                 f"trial's epochs cost ({unit}: epoch seconds × workers × devices per worker; the seed's points "
                 "are its one-GPU training times)."),
            Image("versus_seed.png", "Val top-1 per model beside the seed's"),
            Image("accuracy_vs_cost.png", "Val top-1 against training cost")]))
    evals = {m: t.evaluation for m, t in best.items() if t.evaluation}
    if not evals:
        return out
    cmp = compare(evals)
    names = class_names(cmp["classes"])
    label = lambda wnid: f"{wnid} {names[wnid]}"  # noqa: E731
    wnids = [c["wnid"] for c in cmp["classes"]]
    images["per_class.png"] = plots.class_heatmap(cmp["models"], cmp["matrix"], [wnids[i] for i in cmp["order"]])
    blocks = [para(f"From each model's best variant's eval.json (its final model on all {meta['dataset']['val']:,} "
                   "val images; " + ", ".join(cmp["models"]) + "). Classes run from hardest (left) to easiest."),
              Image("per_class.png", "Per-class val top-1 across the models")]
    wrong = cmp["all_wrong"]
    blocks.append(para(bold(f"Classes every model gets wrong ({len(wrong)}):"), " ",
                       (", ".join(label(wnids[i]) for i in wrong[:20]) + (f", and {len(wrong) - 20} more"
                                                                           if len(wrong) > 20 else ""))
                       if wrong else "none."))
    if cmp["disagree"]:
        blocks += [para(bold("Where the models disagree most"), " (val top-1 per class, widest spread first):"),
                   Table(["class", *cmp["models"], "spread"],
                         [[label(wnids[i]), *[_pct(v) for v in accs], f"{100 * (max(accs) - min(accs)):.0f} pts"]
                          for i, accs in cmp["disagree"]])]
    if cmp["confused"]:
        blocks += [para(bold("The most confused pairs across the models"), " (images of either class taken for the "
                        "other, summed over the models):"),
                   Table(["pair", "images"], [[f"{label(a)} ↔ {label(b)}", n] for a, b, n in cmp["confused"]])]
    out.append(Section("Class by class", blocks))
    return out


def _run_folder_note(t: Trial) -> list:
    folder = code(f"{TRAIN_RUNS}/{TrainConfig.from_dict(t.config).run_name}")
    if t.status == "completed":
        return ["Its run folder, with result.json, eval.json and model/model.keras: ", folder,
                " (", code("tinyray export"), " makes it a self-contained model)."]
    return [f"It did not run all its epochs ({t.status}); its last checkpoint is in ", folder, "."]


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def search_summary(sweep: dict) -> str:
    """How the trials were chosen: the grid's axes and their sizes, or a search's draws."""
    search = sweep.get("search", "grid")
    if search == "grid" and isinstance(sweep["grid"], list):
        return f"{len(sweep['grid'])} listed trials"
    if search == "grid":
        return ", ".join(f"{axis} ({len(values)})" for axis, values in sweep["grid"].items()) or "no axis"
    dims = ", ".join(f"{axis} ({dist} {', '.join(_cell(v) for v in values)})"
                     for axis, spec in sweep["space"].items() for dist, values in spec.items())
    return f"{search} search of {sweep['num_samples']} draws: {dims}"


def continuous_lr(sweep: dict) -> bool:
    """Whether lr was drawn from a range (a random or optuna search), not picked from a list."""
    return any(dist != "choice" for dist in (sweep.get("space") or {}).get("lr", {}))


def variants_section(trials: list[Trial], scatter: bool = False, images: dict | None = None) -> Section:
    """Each model's variants: an optimizer × lr grid when those are the only other axes, else
    one row per variant. With a continuous lr (``scatter``) the grid would have a column per
    trial: a scatter of best val top-1 against lr instead, one colour per optimizer, per model
    (its figure is added to ``images``)."""
    blocks = []
    if scatter and images is not None:
        for model in dict.fromkeys(t.model for t in trials):
            points: dict[str, list] = {}
            for t in trials:
                if t.model == model and t.best:
                    points.setdefault(t.optimizer, []).append((t.lr, t.best["val_accuracy"]))
            name = f"lr_scatter_{model}.png"
            images[name] = plots.lr_scatter(points, f"{model}: best val top-1 against lr")
            blocks += [para(bold(model)), Image(name, f"{model}: best val top-1 against lr")]
        return Section("Variants: best val top-1 against lr", blocks)
    for model in dict.fromkeys(t.model for t in trials):
        mine = [t for t in trials if t.model == model]
        blocks.append(para(bold(model)))
        if all(set(t.axes) <= {"model", "optimizer", "lr"} for t in mine):
            opts, lrs, cells = lr_grid(trials, model)
            blocks.append(Table(["optimizer \\ lr"] + [f"{lr:g}" for lr in lrs],
                                [[o] + [_grid_cell(cells.get((o, lr))) for lr in lrs] for o in opts]))
        else:
            blocks.append(Table(["variant", "best val top-1"], [
                [t.variant, _grid_cell((t.best["val_accuracy"] if t.best else None, t.status))] for t in mine]))
    return Section("Variants (best val top-1)", blocks)


def reproduce_section(meta: dict) -> Section:
    """How the experiment ran, and the command that runs it again, as written."""
    sweep, cluster, source = meta["sweep"], meta["cluster"], meta.get("source") or {}
    rerun = f"{sweep['name']}-rerun"
    # sweep.yaml beside this report is the sweep below: the file the job ran, its flags applied
    sweep_file = storage.join(sweep["storage"], sweep["name"], SWEEP_FILE)
    if source.get("embedded_default"):
        command = ["This experiment is the embedded default: the sweep below on a generated sample dataset in an "
                   "embedded object store, both made by the job and gone with it. Run it again with ",
                   code(f"python jobs/train_all.py --config {sweep_file} --name {rerun}"), "."]
    else:
        command = ["Run it again (from a checkout of tinyray at the commit above) with ",
                   code(f"ray job submit --working-dir . -- python jobs/train_all.py --config {sweep_file} "
                        f"--data {meta['data']} --name {rerun}"), "."]
    nodes = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items()) if k in ("CPU", "GPU", DRIVER_RESOURCE))
                      for n in cluster["resources"])
    prov = meta.get("provenance") or {}
    commit = prov.get("git_commit")
    items = [f"Cluster: {cluster['nodes']} node(s): {nodes}; {cluster['max_concurrent_trials']} trials at a time.",
             "Code: " + (f"git commit {commit}" + (" with uncommitted changes" if prov.get("git_dirty") else "")
                         if commit else "not from a git checkout") + "; versions: "
             + ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items()),
             f"Data: {meta['data']}, manifest sha256 {prov.get('manifest_sha256', '–')}",
             f"Started: {meta['started']}; object store: {meta['endpoint']}",
             command]
    return Section("Reproduce", [Bullets(items), Code(_yaml(sweep), "yaml")])


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _grid_cell(cell):
    if cell is None:
        return "–"
    acc, status = cell
    mark = {"stopped early": " (stopped)", "failed": " (failed)", "incomplete": " (incomplete)"}.get(status, "")
    return (_pct(acc) if acc is not None else "–") + mark


def write_report(uri: str, opts: StorageOptions | None = None, experiment: tuple | None = None) -> str:
    """Build the report for the experiment at ``uri`` and write it there; return report.md's URI.
    ``experiment`` is what ``load_experiment(uri)`` returned, for a caller that already has it."""
    opts = opts or StorageOptions.from_env()
    meta, trials = experiment or load_experiment(uri, opts)
    if not trials:
        raise TinyrayError(f"{uri} has no trials yet")
    for name, data in build_report(meta, trials).items():
        storage.write_bytes(storage.join(uri, name), data, opts)
    return storage.join(uri, "report.md")
