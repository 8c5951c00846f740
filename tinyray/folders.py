"""The on-disk contract of an experiment, each rule written once: what a sweep leaves in its
folder, where each trial's run folder is, and reading it all back (``load_experiment``, for the
report, export, the main job and the benchmarks).

    <storage>/<sweep name>/            the experiment (SweepConfig.experiment_uri)
        sweep.json  sweep.yaml         what ran (SWEEP_META) and the sweep file that reruns it
        <Tune trial folder>/           params.json, result.json (one line per epoch), error.txt
        train-runs/<run name>/         each trial's Ray Train run: result.json, eval.json, model/

A trial trains the sweep's ``train:`` base with its axes over it, on the sweep's data, with its
run folder in the experiment's train-runs/ (``trial_base``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from tinyray.config import TrainConfig
from tinyray.console import trial_label
from tinyray.data import storage
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError, failure_line
from tinyray.evaluate import EVAL_FILE
from tinyray.models import REGISTRY

SWEEP_META = "sweep.json"  # what the sweep ran, on what data and cluster (sweep.write_sweep_meta)
SWEEP_FILE = "sweep.yaml"  # the effective sweep file, flags applied: it reruns the sweep
TRAIN_RUNS = "train-runs"  # the experiment's Ray Train runs, one folder per trial
# Tune's files in each trial folder
TUNE_PARAMS, TUNE_RESULTS, TUNE_ERROR = "params.json", "result.json", "error.txt"


def train_runs(experiment: str) -> str:
    """The folder of the experiment's Ray Train runs: every trial's ``storage``."""
    return storage.join(experiment, TRAIN_RUNS)


def trial_base(train: dict, data: str, experiment: str) -> dict:
    """The TrainConfig fields every trial of the experiment shares: the sweep's ``train:`` base,
    its data, and its run folders in the experiment's train-runs/."""
    return {**train, "data": data, "storage": train_runs(experiment)}


def run_folder(experiment: str, config: dict) -> str:
    """The run folder of the trial whose whole TrainConfig is ``config``."""
    return storage.join(train_runs(experiment), TrainConfig.from_dict(config).run_name)


@dataclass
class Trial:
    trial: str  # Tune's trial folder name
    axes: dict  # this trial's grid axes (Tune's params)
    config: dict  # its whole TrainConfig: the sweep's train: base with the axes over it
    history: list[dict] = field(default_factory=list)  # one dict per epoch, in order
    error: str | None = None
    status: str = "completed"  # completed | stopped early | failed | incomplete
    evaluation: dict | None = None  # the run's eval.json (completed runs)

    model = property(lambda self: self.config["model"])
    optimizer = property(lambda self: self.config["optimizer"])
    lr = property(lambda self: self.config["lr"])
    epochs_planned = property(lambda self: self.config["epochs"])

    @property
    def variant(self) -> str:
        """The axes other than the model, e.g. ``optimizer=adam lr=0.001`` (or the base's)."""
        rest = {k: v for k, v in self.axes.items() if k != "model"}
        return trial_label(rest) if rest else f"{self.optimizer} lr={self.lr:g}"

    @property
    def best(self) -> dict | None:
        """The epoch with the best val accuracy (ties: the earlier)."""
        return max(self.history, key=lambda e: (e["val_accuracy"], -e["epoch"])) if self.history else None

    @property
    def last(self) -> dict | None:
        return self.history[-1] if self.history else None

    @property
    def restarts(self) -> list[str]:
        """Each time the run started again (a lost worker or node, a preemption, a resumed
        sweep), as where it resumed: the epochs report the checkpoint their attempt began at."""
        out, attempt = [], (0, 0)  # the first attempt starts at the beginning
        for e in self.history:
            at = (e.get("resumed_from_epoch", 0), e.get("resumed_at_step", 0))
            if at != attempt:
                out.append(f"at step {at[1]} of epoch {at[0] + 1}" if at[1] else f"after epoch {at[0]}")
            attempt = at
        return out


def trial_status(history: list[dict], planned: int, error: str | None, scheduler: str) -> str:
    if error:
        return "failed"
    if history and history[-1]["epoch"] >= planned:
        return "completed"
    return "stopped early" if scheduler == "asha" and history else "incomplete"


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
    if not isinstance(meta.get("sweep", {}).get("scheduler"), dict) or "train" not in meta["sweep"]:
        raise TinyrayError(f"{uri} was written by an older tinyray (its sweep has no train: and grid:); "
                           "run the sweep again to report it")
    scheduler = meta["sweep"]["scheduler"]["type"]
    base = trial_base(meta["sweep"]["train"], meta["data"], uri)
    fs, root = storage.filesystem(uri, opts)
    trials = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda i: i.path):
        if info.type != pafs.FileType.Directory:
            continue
        folder = info.base_name
        params = _read_optional(storage.join(uri, folder, TUNE_PARAMS), opts)
        if params is None:
            continue  # not a trial folder (train-runs/, ...)
        result = _read_optional(storage.join(uri, folder, TUNE_RESULTS), opts) or ""
        error = _read_optional(storage.join(uri, folder, TUNE_ERROR), opts)
        trial = parse_trial(folder, json.loads(params), base, result, error, scheduler)
        evaluation = _read_optional(storage.join(run_folder(uri, trial.config), EVAL_FILE), opts)
        trial.evaluation = json.loads(evaluation) if evaluation else None
        trials.append(trial)
    order = {m: i for i, m in enumerate(REGISTRY)}
    trials.sort(key=lambda t: (order.get(t.model, 99), t.optimizer, t.lr, t.trial))
    return meta, trials


def _read_optional(uri, opts):
    try:
        return storage.read_bytes(uri, opts).decode()
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------- tables (pure)
