"""How the lines reach the person watching: the pieces that run inside Ray, Keras and Tune.

The epoch lines of a sweep come from Tune's results (``EpochLines``, a Tune callback, which also
gives a failed trial's one line in place of Tune's traceback). Those of ``tinyray train`` come
from rank 0, through a small actor (``ProgressBoard``) that the driver reads
(``ProgressPrinter``): Ray Train's own callbacks run in its controller actor, whose output is
not the driver's. The text itself is ``console``'s.
"""
from __future__ import annotations

import sys
import threading
import time

from tinyray.console import STATUS, epoch_line, progress_bar, status_table, trial_label


# ------------------------------------------------------------- `tinyray train`: rank 0 → driver


class ProgressBoard:
    """A Ray actor (no CPU) that rank 0 posts epoch lines and its place in the epoch to."""

    def __init__(self):
        self.lines, self.progress = [], None

    def post(self, line: str) -> None:
        self.lines.append(line)

    def step(self, progress: tuple) -> None:
        self.progress = progress

    def read(self, since: int) -> tuple[list[str], tuple | None]:
        return self.lines[since:], self.progress


class ProgressPrinter:
    """The driver's side of a ``tinyray train`` run: prints each epoch line as rank 0 posts it to
    its ``ProgressBoard``, and, on a terminal, redraws a progress bar within the epoch.
    ``handle`` (the board) goes to the workers."""

    def __init__(self, bar: bool | None = None, out=None, every: float = 0.5):
        self.out = out or sys.stdout
        self.bar = self.out.isatty() if bar is None else bar
        self.every, self.seen, self.drawn = every, 0, False
        self.stop = threading.Event()

    def __enter__(self) -> "ProgressPrinter":
        import ray

        self.handle = ray.remote(num_cpus=0)(ProgressBoard).remote()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="tinyray-progress")
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
            self._epochs = {}  # trial id → its planned epochs, from its whole config once

        def planned(self, trial) -> int:
            if trial.trial_id not in self._epochs:
                self._epochs[trial.trial_id] = TrainConfig.from_dict({**self.base, **trial.config}).epochs
            return self._epochs[trial.trial_id]

        def table(self, trials) -> str:
            rows = []
            for t in trials:
                result = t.last_result or {}
                planned = self.planned(t)
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
            from tinyray.errors import failure_line

            for trial in list(self.failed):
                error = trial.get_error()
                if error is None and not final:
                    continue
                self.failed.remove(trial)
                line = failure_line(str(error)) if error else "see its error.txt"
                print(f"{trial_label(trial.config)}  failed: {line}", file=sys.stderr, flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result and "train_loss" in result:
                print(epoch_line(result, self.planned(trial), trial_label(trial.config)), flush=True)

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
