"""The report's figures, as PNG bytes (matplotlib, no display needed)."""
from __future__ import annotations

import io

import numpy as np


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    # Labels are class names and trial axes from outside: a "$" must print, never start mathtext
    # (a wnid like "n$0$" made the plots raise).
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=110)


def log_x(ax) -> None:
    """A log-scale x axis labelled in plain numbers (0.01, 0.1, 1): matplotlib's own log labels
    are mathtext ("$\\mathdefault{10^{-2}}$"), which parse_math=False above would print as is."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str) -> bytes:
    """Labels, grid and legend of a one-axis figure with labelled series, as PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # beside the axes, not on them: with six or more series "best" still covers lines
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return _png(plt, fig)


def accuracy_vs_epoch(lines: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """One line per label: (epoch, accuracy) points — the seed's two plots."""
    from matplotlib.ticker import MaxNLocator

    plt, fig, ax = _figure(9, 4.2)  # the legend sits beside the axes
    for label, points in lines.items():
        ax.plot([e for e, _ in points], [100 * a for _, a in points], marker="o", ms=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(plt, fig, ax, "epoch", "accuracy (%)", title)


def class_heatmap(models: list[str], matrix: np.ndarray, class_labels: list[str]) -> bytes:
    """Per-class top-1 of each model (rows) over the classes (columns, hardest first)."""
    n = matrix.shape[1]
    plt, fig, ax = _figure(min(14, 4 + 0.06 * n + (0.25 * n if n <= 40 else 0)), 1.6 + 0.45 * len(models))
    image = ax.imshow(100 * matrix, aspect="auto", cmap="RdYlGn", vmin=0, vmax=100, interpolation="nearest")
    ax.set_yticks(range(len(models)), models)
    if n <= 40:  # names are readable only on small class counts
        ax.set_xticks(range(n), class_labels, rotation=90, fontsize=7)
    else:
        ax.set_xticks([0, n - 1], ["hardest", "easiest"])
    ax.set_xlabel(f"{n} classes, ordered by mean top-1 over the models")
    fig.colorbar(image, ax=ax, label="val top-1 (%)", fraction=0.03)
    ax.set_title("Per-class val top-1, each model's best variant")
    return _png(plt, fig)


def versus_seed(models: list[str], ours: list[float], seed: list[float | None]) -> bytes:
    """Our val top-1 per model beside the seed's, as grouped bars."""
    plt, fig, ax = _figure(7, 3.8)
    x = np.arange(len(models))
    ax.bar(x - 0.2, [100 * v for v in ours], 0.4, label="tinyray")
    ax.bar(x + 0.2, [0 if v is None else v for v in seed], 0.4, label="seed study", color="#999")
    ax.set_xticks(x, models)
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Val top-1 per model: this experiment and the seed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def accuracy_vs_cost(points: list[tuple[str, float, float]], seed: list[tuple[str, float, float]],
                     unit: str) -> bytes:
    """Val top-1 against training cost: (label, device-hours, top-1 0..1) for ours, (label,
    GPU-hours, top-1 %) for the seed's one-GPU runs."""
    plt, fig, ax = _figure(7, 4.2)
    # labels alternate above and below their points, so that neighbours (model5 and model6
    # often sit on one spot) stay readable
    for i, (label, hours, acc) in enumerate(sorted(points, key=lambda p: (p[1], p[2]))):
        ax.scatter(hours, 100 * acc, color="C0")
        ax.annotate(label, (hours, 100 * acc), fontsize=7, xytext=(4, 4 if i % 2 == 0 else -10),
                    textcoords="offset points")
    for i, (label, hours, acc) in enumerate(sorted(seed, key=lambda p: (p[1], p[2]))):
        ax.scatter(hours, acc, marker="x", color="#777")
        ax.annotate(f"{label} (seed)", (hours, acc), fontsize=7, color="#777",
                    xytext=(4, 4 if i % 2 == 0 else -10), textcoords="offset points")
    log_x(ax)
    ax.set_xlabel(f"training cost, {unit} (log scale); seed: GPU-hours (×)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Accuracy against training cost")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def lr_scatter(points: dict[str, list[tuple[float, float]]], title: str) -> bytes:
    """Best val top-1 against a continuous lr (a random or optuna search): one colour per label
    (the optimizer), lr on a log scale."""
    plt, fig, ax = _figure(9, 4.2)
    for label, pts in points.items():
        ax.scatter([lr for lr, _ in pts], [100 * a for _, a in pts], label=label, s=22)
    log_x(ax)
    return _finish(plt, fig, ax, "lr (log scale)", "best val top-1 (%)", title)
