"""What a person watching a run or a sweep sees, as text (pure): epoch lines, the sweep's table,
the progress bar, a trial's label; and what keeps the rest quiet.

Quiet by default: one line per finished epoch per trial, the sweep's table, a progress bar
within each epoch when ``tinyray train`` runs on a terminal, and errors as one line each.
``--verbose`` brings Ray's and TensorFlow's own logs back. How: the workers' output is not
forwarded to the driver (``ray.init(log_to_driver=...)``, in ``cluster.ensure_ray``);
TensorFlow's C++ logs and Ray Data's progress bars are switched off in every worker
(``quiet_env``); Ray's loggers in the driver keep warnings and errors only. What carries the
lines from where they happen to the driver (a Ray actor, a Keras and a Tune callback) is in
``progress``.
"""
from __future__ import annotations

import logging
import re
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
    # and its C++ log lines after the import ("failed call to cuInit" on a machine with no GPU),
    # as in the workers (QUIET_ENV); TensorFlow reads it when it loads. A user's own level wins.
    import tinyray

    if tinyray.USER_TF_LOG_LEVEL is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_ENV["TF_CPP_MIN_LOG_LEVEL"]
    logging.getLogger("ray").setLevel(logging.WARNING)
    for name in ("ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    # A local Ray started with RAY_AUTH_MODE unset turns token auth on (a token in
    # ~/.ray/auth_token) and says so at every start: it protects the laptop's cluster and asks
    # nothing of the person, so the note goes and the token stays; --verbose shows it
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"ray(\.|$)")
    drop_startup_warnings()


# The raylet's note that many Python workers have started (at 4x its start-up concurrency, which
# is the node's CPU count): every trial starts about ten actors, so a sweep on a laptop's local
# Ray always reaches it, and it says nothing the person can act on. Raising the concurrency
# instead keeps it away too, but the main job then ran 1.15x as long on 2 CPUs (1.11-1.26, 3 runs each)
# (benchmarks/startup_concurrency.py); the shipped heads raise it (resources.STARTUP_CONCURRENCY).
STARTUP_WARNING = re.compile(r"worker processes have been started on node: .* the maximum expected startup "
                             r"concurrency")


def drop_startup_warnings() -> None:
    """Keep the raylet's start-up concurrency warning off this driver's console; every other
    message the raylet sends (a worker killed for memory, a dead node) still prints. Ray prints
    them from its error-listener thread through ``ray._private.worker.print_to_stdstream``,
    which is wrapped here (docs/workarounds.md)."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "tinyray_filtered", False):
        return

    def filtered(data, ignore_prefix):
        if data.get("pid") == "raylet":
            lines = [line for line in data.get("lines", []) if not STARTUP_WARNING.search(line)]
            if not lines:
                return None
            data = {**data, "lines": lines}
        return original(data, ignore_prefix)

    filtered.tinyray_filtered = True
    ray_worker.print_to_stdstream = filtered


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
