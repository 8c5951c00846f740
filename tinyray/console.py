"""What a person watching a run or a sweep sees.

Quiet by default: Tune's table (its columns are the grid axes, since a trial's params are the
axes only), one line per finished epoch per trial, a progress bar within each epoch when
``tinyray train`` runs on a terminal, and errors as one line each. ``--verbose`` brings Ray's and
TensorFlow's own logs back.

How: the workers' output is not forwarded to the driver (``ray.init(log_to_driver=...)``, in
``cluster.ensure_ray``); TensorFlow's C++ logs and Ray Data's progress bars are switched off in
every worker (``quiet_env``); Ray's loggers in the driver keep warnings and errors only, and
Tune's per-trial traceback gives way to the trial's one line (``EpochLines``). The epoch lines
of a sweep come from Tune's results; those of ``tinyray train`` from rank 0, through a small
board actor that the driver reads (``Watch``): Ray Train's own callbacks run in its controller
actor, whose output is not the driver's.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import warnings

# In every worker's environment when quiet (cluster.ensure_ray): TensorFlow's C++ start-up
# messages (CUDA probes, oneDNN notes) and Ray Data's per-operator progress bars.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TINYRAY_QUIET": "1"}


def quiet_env(verbose: bool) -> dict:
    return {} if verbose else dict(QUIET_ENV)


def quiet_driver(verbose: bool) -> None:
    """Ray's driver-side loggers keep warnings (errors for Tune, whose trial failures are
    printed as one line each by ``EpochLines``); deprecation notices go, and so do TensorFlow's
    C++ start-up notes in this process (the driver imports TF to hand the loop to Ray)."""
    if verbose:
        return
    import os

    os.environ["TINYRAY_QUIET"] = "1"  # tinyray/tfk.py: TensorFlow's pre-logging notes too
    logging.getLogger("ray").setLevel(logging.WARNING)
    for name in ("ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"ray(\.|$)")


# ------------------------------------------------------------------------ lines (pure)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table (first column left-aligned, numbers right-aligned)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            c = str(c)
            numeric = c.replace(",", "").replace(".", "").replace("%", "").replace("/", "").isdigit()
            out.append(c.rjust(w) if numeric and i else c.ljust(w))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# Tune's trial states, as the table says them.
STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "failed"}


def status_table(axes: list[str], trials: list[tuple]) -> str:
    """The sweep's table: one row per trial, its axes as columns, then how far it got.
    ``trials``: (name, status, axes dict, epochs done, planned epochs, last val top-1 or None)."""
    def cell(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    rows = [[name, status, *(cell(params.get(a, "")) for a in axes), f"{done}/{planned}",
             "-" if top1 is None else f"{top1:.3f}"] for name, status, params, done, planned, top1 in trials]
    return format_table(["trial", "status", *axes, "epochs", "val top-1"], rows)


def epoch_line(metrics: dict, epochs: int, who: str = "") -> str:
    """One finished epoch: who, epoch, train loss and accuracy, val top-1, images/s."""
    line = (f"epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.4f}  "
            f"acc {metrics['train_accuracy']:.3f}  val top-1 {metrics['val_accuracy']:.3f}  "
            f"{metrics['images_per_second']:.0f} img/s")
    return f"{who}  {line}" if who else line


def progress_bar(epoch: int, epochs: int, step: int, steps: int, images_per_second: float, width: int = 30) -> str:
    """Where the current epoch is, as one terminal line (redrawn in place)."""
    done = min(width, int(width * step / max(steps, 1)))
    return (f"epoch {epoch}/{epochs} [{'=' * done}{' ' * (width - done)}] {step}/{steps} steps  "
            f"{images_per_second:.0f} img/s")


def trial_label(axes: dict) -> str:
    """A trial, as its axes: ``model=model2 lr=0.001``."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in axes.items()) or "trial"


# ------------------------------------------------------------- `tinyray train`: rank 0 → driver


class Board:
    """A Ray actor (no CPU) that rank 0 posts epoch lines and its place in the epoch to."""

    def __init__(self):
        self.lines, self.progress = [], None

    def post(self, line: str) -> None:
        self.lines.append(line)

    def step(self, progress: tuple) -> None:
        self.progress = progress

    def read(self, since: int) -> tuple[list[str], tuple | None]:
        return self.lines[since:], self.progress


class Watch:
    """The driver's side of a ``tinyray train`` run: prints each epoch line as rank 0 posts it,
    and, on a terminal, redraws a progress bar within the epoch. ``handle`` goes to the workers."""

    def __init__(self, bar: bool | None = None, out=None, every: float = 0.5):
        self.out = out or sys.stdout
        self.bar = self.out.isatty() if bar is None else bar
        self.every, self.seen, self.drawn = every, 0, False
        self.stop = threading.Event()

    def __enter__(self) -> "Watch":
        import ray

        self.handle = ray.remote(num_cpus=0)(Board).remote()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="tinyray-watch")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self.stop.set()
        self.thread.join(timeout=30)
        self._poll(final=True)
        ray.kill(self.handle)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            self._poll()

    def _poll(self, final: bool = False) -> None:
        import ray

        try:
            lines, progress = ray.get(self.handle.read.remote(self.seen), timeout=10)
        except Exception:  # noqa: BLE001 - a missed redraw is not worth failing a run for
            return
        if lines or final:
            self._clear()
        for line in lines:
            print(line, file=self.out, flush=True)
        self.seen += len(lines)
        if self.bar and progress and not final:
            self.out.write("\r" + progress_bar(*progress) + "\x1b[K")
            self.out.flush()
            self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.out.write("\r\x1b[K")
            self.drawn = False


def progress_callback(board, epochs: int, steps: int, global_batch: int, every: float = 0.5):
    """A Keras callback for rank 0: its place in the epoch, posted at most every ``every`` s
    (without waiting for the board)."""
    from tinyray.tfk import keras

    class Progress(keras.callbacks.Callback):
        _supports_tf_logs = True  # reads no logs: no step waits for them as numpy

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.t0, self.last = epoch, time.perf_counter(), 0.0

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self.last >= every:
                self.last = now
                board.step.remote((self.epoch + 1, epochs, batch + 1, steps,
                                   (batch + 1) * global_batch / max(now - self.t0, 1e-9)))

    return Progress()


# ------------------------------------------------------------------- a sweep: Tune → driver


def _epoch_lines_class():
    from ray import tune

    from tinyray.config import TrainConfig

    class EpochLines(tune.Callback):
        """A Tune callback: one line per epoch per trial, a failed trial's one line, and the
        sweep's table every ``every`` seconds and at the end."""

        def __init__(self, base: dict, axes: list[str], every: float = 600.0):
            self.base, self.axes, self.every, self.last = base, axes, every, time.time()
            self.failed = []  # trials whose error Tune has not written down yet

        def table(self, trials) -> str:
            rows = []
            for t in trials:
                result = t.last_result or {}
                planned = TrainConfig.from_dict({**self.base, **t.config}).epochs
                rows.append((t.trial_id, STATUS.get(t.status, t.status.lower()), t.config, result.get("epoch", 0), planned,
                             result.get("val_accuracy")))
            return status_table(self.axes, rows)

        def on_step_end(self, iteration, trials, **info):
            self.print_failures()
            if time.time() - self.last >= self.every:
                self.last = time.time()
                print(self.table(trials), flush=True)

        def on_experiment_end(self, trials, **info):
            self.print_failures(final=True)
            print(self.table(trials), flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed.append(trial)
            self.print_failures()

        def print_failures(self, final: bool = False):
            """Each failed trial's one line, once Tune has written its error down (it may do that
            after telling its callbacks)."""
            from tinyray.report import failure_line

            for trial in list(self.failed):
                error = trial.get_error()
                if error is None and not final:
                    continue
                self.failed.remove(trial)
                line = failure_line(str(error)) if error else "see its error.txt"
                print(f"{trial_label(trial.config)}  failed: {line}", file=sys.stderr, flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result and "train_loss" in result:
                epochs = TrainConfig.from_dict({**self.base, **trial.config}).epochs
                print(epoch_line(result, epochs, trial_label(trial.config)), flush=True)

    EpochLines.__module__, EpochLines.__qualname__ = __name__, "EpochLines"
    return EpochLines


def __getattr__(name: str):
    """``EpochLines`` is built on first use, so that the workers, which import this module, never
    import Ray Tune; it is still a module attribute, so Tune can pickle it with the experiment
    (its run config) and find it again on ``--resume``."""
    if name == "EpochLines":
        globals()[name] = _epoch_lines_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def epoch_lines_callback(base: dict, axes: list[str]):
    return __getattr__("EpochLines")(base, axes)
