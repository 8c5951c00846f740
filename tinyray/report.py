"""The comparison report: an experiment folder → report.md, report.html (plots embedded),
results.csv and results.json.

It reads what Tune leaves in the experiment folder — per trial ``params.json`` (its grid axes),
``result.json`` (one JSON line per reported epoch) and ``error.txt`` (a failed trial) — plus
tinyray's ``sweep.json`` (whose ``train:`` base, with a trial's axes over it, is that trial's
TrainConfig), so it works on finished and interrupted experiments alike, locally or
in s3://, with no Ray running. The tables are pure functions of the trial records.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from dataclasses import dataclass, field

from tinyray.cluster import DRIVER_RESOURCE
from tinyray.config import TrainConfig
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.models import REGISTRY, SEED_MODELS
from tinyray.sweep import SWEEP_META

RESULT_FIELDS = ("status", "epochs_run", "best_epoch", "train_accuracy", "val_accuracy", "val_top5_accuracy", "gap",
                 "params", "training_seconds", "images_per_second", "error")


@dataclass
class Trial:
    trial: str  # Tune's trial folder name
    axes: dict  # this trial's grid axes (Tune's params)
    config: dict  # its whole TrainConfig: the sweep's train: base with the axes over it
    history: list[dict] = field(default_factory=list)  # one dict per epoch, in order
    error: str | None = None
    status: str = "completed"  # completed | stopped early | failed | incomplete

    model = property(lambda self: self.config["model"])
    optimizer = property(lambda self: self.config["optimizer"])
    lr = property(lambda self: self.config["lr"])
    epochs_planned = property(lambda self: self.config["epochs"])

    @property
    def variant(self) -> str:
        """The axes other than the model, e.g. ``optimizer=adam lr=0.001`` (or the base's)."""
        rest = {k: v for k, v in self.axes.items() if k != "model"}
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in rest.items()) or \
            f"{self.optimizer} lr={self.lr:g}"

    @property
    def best(self) -> dict | None:
        """The epoch with the best val accuracy (ties: the earlier)."""
        return max(self.history, key=lambda e: (e["val_accuracy"], -e["epoch"])) if self.history else None

    @property
    def last(self) -> dict | None:
        return self.history[-1] if self.history else None


def trial_status(history: list[dict], planned: int, error: str | None, scheduler: str) -> str:
    if error:
        return "failed"
    if history and history[-1]["epoch"] >= planned:
        return "completed"
    return "stopped early" if scheduler == "asha" and history else "incomplete"


def failure_line(error_text: str | None) -> str | None:
    """The one line a failed trial ends in, from Tune's error.txt: the TinyrayError message that
    ``tinyray train`` would print, else the traceback's last line."""
    lines = [l.strip() for l in (error_text or "").splitlines() if l.strip()]
    if not lines:
        return None
    ours = [l.split("TinyrayError: ", 1)[1] for l in lines if "TinyrayError: " in l]
    return (ours[-1] if ours else lines[-1])[:500]


def parse_trial(name: str, axes: dict, base: dict, result_lines: str, error: str | None, scheduler: str) -> Trial:
    """One trial from Tune's files (pure). Epochs reported twice (a restarted trial) keep the
    last report, so every epoch appears once."""
    by_epoch = {}
    for line in result_lines.splitlines():
        if line.strip():
            row = json.loads(line)
            if "epoch" in row:
                by_epoch[int(row["epoch"])] = {k: v for k, v in row.items() if k != "config"}
    history = [by_epoch[k] for k in sorted(by_epoch)]
    config = TrainConfig.from_dict({**base, **axes}).to_dict()
    err = failure_line(error)
    return Trial(name, dict(axes), config, history, err, trial_status(history, config["epochs"], err, scheduler))


def load_experiment(uri: str, opts: StorageOptions | None = None) -> tuple[dict, list[Trial]]:
    """sweep.json and every trial of the experiment at ``uri``."""
    import pyarrow.fs as pafs

    opts = opts or StorageOptions.from_env()
    try:
        meta = json.loads(storage.read_bytes(storage.join(uri, SWEEP_META), opts))
    except FileNotFoundError:
        raise TinyrayError(f"{uri} is not a tinyray experiment (no {SWEEP_META})") from None
    scheduler = meta["sweep"]["scheduler"]["type"]
    base = {**meta["sweep"]["train"], "data": meta["data"]}
    fs, root = storage.filesystem(uri, opts)
    trials = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda i: i.path):
        if info.type != pafs.FileType.Directory:
            continue
        folder = info.base_name
        params = _read_optional(storage.join(uri, folder, "params.json"), opts)
        if params is None:
            continue  # not a trial folder (train-runs/, ...)
        result = _read_optional(storage.join(uri, folder, "result.json"), opts) or ""
        error = _read_optional(storage.join(uri, folder, "error.txt"), opts)
        trials.append(parse_trial(folder, json.loads(params), base, result, error, scheduler))
    order = {m: i for i, m in enumerate(REGISTRY)}
    trials.sort(key=lambda t: (order.get(t.model, 99), t.optimizer, t.lr, t.trial))
    return meta, trials


def _read_optional(uri, opts):
    try:
        return storage.read_bytes(uri, opts).decode()
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------- tables (pure)


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
    """Each model's best variant by best-epoch val accuracy (failed or empty trials excluded)."""
    out: dict[str, Trial] = {}
    for t in trials:
        if not t.history:
            continue
        cur = out.get(t.model)
        if cur is None or t.best["val_accuracy"] > cur.best["val_accuracy"]:
            out[t.model] = t
    return out


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
        rows.append([m, t.variant, _pct(r["train_accuracy"]), _pct(r["val_accuracy"]),
                     _pct(r["val_top5_accuracy"]), f"{r['params']:,}", _dur(r["training_seconds"]),
                     f"{r['images_per_second']:.0f}", *seed_cells])
    return header, rows


# ------------------------------------------------------------------------------ rendering


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def plot_accuracy(trials: list[Trial], key: str, title: str) -> bytes:
    """Accuracy vs epoch, one line per model (its best variant): the seed's two plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for model, t in best_per_model(trials).items():
        ax.plot([e["epoch"] for e in t.history], [100 * e[key] for e in t.history], marker="o", ms=3,
                label=f"{model} ({t.variant})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def build_report(meta: dict, trials: list[Trial]) -> dict[str, bytes]:
    """All report files, by name."""
    num_classes = meta["dataset"]["classes"]
    sweep = meta["sweep"]
    rows = [trial_row(t, num_classes) for t in trials]
    best = best_per_model(trials)
    overall = max(best.values(), key=lambda t: t.best["val_accuracy"]) if best else None
    plots = {"train_accuracy.png": plot_accuracy(trials, "train_accuracy", "Training accuracy vs epoch"),
             "val_accuracy.png": plot_accuracy(trials, "val_accuracy", "Validation accuracy vs epoch")}

    columns = axis_columns(trials)
    sched = sweep["scheduler"]["type"]
    setting = lambda key: shared_setting(trials, key) if trials else "–"  # noqa: E731
    sections = []
    sections.append(f"# tinyray comparison report: {sweep['name']}\n\n"
                    f"Dataset: {meta['data']} — {num_classes} classes, {meta['dataset']['train']:,} train / "
                    f"{meta['dataset']['val']:,} val images. {len(trials)} trials "
                    f"({sum(t.status == 'completed' for t in trials)} completed, "
                    f"{sum(t.status == 'stopped early' for t in trials)} stopped early, "
                    f"{sum(t.status == 'failed' for t in trials)} failed, "
                    f"{sum(t.status == 'incomplete' for t in trials)} incomplete) over "
                    + (", ".join(f"{axis} ({len(values)})" for axis, values in sweep["grid"].items()) or "no axis")
                    + f"; scheduler {sched}, {setting('epochs')} epochs, batch {setting('batch_size')} per worker × "
                    f"{setting('workers')} worker(s).")
    header, seed_rows = seed_table(trials, num_classes)
    sections.append("## The seed's table, reproduced\n\nEach model's best variant (by best-epoch val accuracy) "
                    "beside the numbers the seed study reported (TensorFlow, one machine, full Tiny ImageNet). "
                    "Training time is the sum of this run's epoch times.\n\n" + md_table(header, seed_rows))
    if overall:
        b = overall.best
        sections.append(f"## Best model\n\n**{overall.model}** ({overall.variant}): "
                        f"val top-1 {_pct(b['val_accuracy'])}, top-5 {_pct(b['val_top5_accuracy'])} "
                        f"(epoch {b['epoch']}). " + _run_folder_note(overall))
    sections.append("## Accuracy vs epoch\n\n![Training accuracy vs epoch](train_accuracy.png)\n\n"
                    "![Validation accuracy vs epoch](val_accuracy.png)")
    sections.append(variants_section(trials))
    gap_rows = [[m, _pct(t.best["train_accuracy"]), _pct(t.best["val_accuracy"]),
                 f"{100 * (t.best['train_accuracy'] - t.best['val_accuracy']):+.2f} pts"] for m, t in best.items()]
    sections.append("## Overfitting gap (train − val, best variant)\n\n" +
                    md_table(["model", "train acc", "val acc", "gap"], gap_rows))
    odd = [t for t in trials if t.status != "completed"]
    sections.append("## Stopped-early, failed and incomplete trials\n\n" + (md_table(
        ["trial", "model", "variant", "status", "epochs run", "error"],
        [[t.trial, t.model, t.variant, t.status, len(t.history), t.error or ""] for t in odd])
        if odd else "None: every trial ran all its epochs."))
    sections.append("## All trials\n\n" + md_table(
        columns + ["status", "epochs", "best val top-1", "top-5", "train acc", "time", "images/s"],
        [[_cell(r[c]) for c in columns] + [r["status"], r["epochs_run"], _pct(r["val_accuracy"]),
          _pct(r["val_top5_accuracy"]), _pct(r["train_accuracy"]), _dur(r["training_seconds"]),
          "–" if r["images_per_second"] is None else f"{r['images_per_second']:.0f}"] for r in rows]))
    sections.append(reproduce_section(meta))
    md = "\n\n".join(sections) + "\n"

    out_csv = io.StringIO()
    writer = csv.DictWriter(out_csv, fieldnames=["trial", *columns, *RESULT_FIELDS])
    writer.writeheader()
    writer.writerows(rows)
    results = {"sweep": sweep, "dataset": meta["dataset"], "cluster": meta["cluster"], "versions": meta["versions"],
               "best": {"model": overall.model, "axes": overall.axes, "config": overall.config,
                        "val_accuracy": overall.best["val_accuracy"]} if overall else None,
               "trials": [{**r, "config": t.config, "history": t.history} for r, t in zip(rows, trials)]}
    return {"report.md": md.encode(), "report.html": to_html(md, plots).encode(),
            "results.csv": out_csv.getvalue().encode(), "results.json": json.dumps(results, indent=1).encode(),
            **plots}


def _run_folder_note(t: Trial) -> str:
    folder = f"`train-runs/{TrainConfig.from_dict(t.config).run_name}`"
    if t.status == "completed":
        return f"Its run folder, with result.json and model/model.keras: {folder}."
    return f"It did not run all its epochs ({t.status}); its last checkpoint is in {folder}."


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def variants_section(trials: list[Trial]) -> str:
    """Each model's variants: an optimizer × lr grid when those are the only other axes, else
    one row per variant."""
    parts = []
    for model in dict.fromkeys(t.model for t in trials):
        mine = [t for t in trials if t.model == model]
        if all(set(t.axes) <= {"model", "optimizer", "lr"} for t in mine):
            opts, lrs, cells = lr_grid(trials, model)
            grid_rows = [[o] + [_grid_cell(cells.get((o, lr))) for lr in lrs] for o in opts]
            parts.append(f"### {model}\n\n" + md_table(["optimizer \\ lr"] + [f"{lr:g}" for lr in lrs], grid_rows))
        else:
            parts.append(f"### {model}\n\n" + md_table(["variant", "best val top-1"], [
                [t.variant, _grid_cell((t.best["val_accuracy"] if t.best else None, t.status))] for t in mine]))
    return "## Variants (best val top-1)\n\n" + "\n\n".join(parts)


def reproduce_section(meta: dict) -> str:
    """How the experiment ran, and the command that runs it again, as written."""
    sweep, cluster, source = meta["sweep"], meta["cluster"], meta.get("source") or {}
    rerun = f"{sweep['name']}-rerun"
    # sweep.yaml beside this report is the sweep below: the file the job ran, its flags applied
    sweep_file = storage.join(sweep["storage"], sweep["name"], "sweep.yaml")
    if source.get("embedded_default"):
        command = (f"This experiment is the embedded default: the sweep below on a generated sample dataset "
                   f"in an embedded object store, both made by the job and gone with it. Run it again with "
                   f"`python jobs/train_all.py --config {sweep_file} --name {rerun}`.")
    else:
        command = (f"Run it again (from a checkout of tinyray, at this experiment's versions) with "
                   f"`ray job submit --working-dir . -- python jobs/train_all.py --config {sweep_file} "
                   f"--data {meta['data']} --name {rerun}`.")
    nodes = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items()) if k in ("CPU", "GPU", DRIVER_RESOURCE))
                      for n in cluster["resources"])
    return ("## Reproduce\n\n"
            f"- Cluster: {cluster['nodes']} node(s): {nodes}; {cluster['max_concurrent_trials']} trials at a time.\n"
            f"- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "\n"
            f"- Started: {meta['started']}; object store: {meta['endpoint']}\n"
            f"- {command}\n\n```yaml\n" + _yaml(sweep) + "```")


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _grid_cell(cell):
    if cell is None:
        return "–"
    acc, status = cell
    mark = {"stopped early": " (stopped)", "failed": " (failed)", "incomplete": " (incomplete)"}.get(status, "")
    return (_pct(acc) if acc is not None else "–") + mark


def to_html(md: str, plots: dict[str, bytes]) -> str:
    """A self-contained HTML page from the report's markdown subset (headings, paragraphs,
    tables, images, code blocks); images are embedded as data URIs."""
    out, table, code = [], [], None
    for line in md.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append("<pre>" + html.escape("\n".join(code)) + "</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            code = []
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body) +
                       "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            data = base64.b64encode(plots[src.rstrip(")")]).decode()
            out.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>tinyray report</title><style>{style}</style></head><body>\n" \
           + "\n".join(out) + "\n</body></html>\n"


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


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
