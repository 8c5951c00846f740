"""Class by class: what a model gets right and wrong, and how models compare (all pure).

Every run writes ``eval.json`` beside result.json, from its final model on the whole val split
(every image counted once, across workers)::

    {"top1": …, "top5": …, "count": …,
     "per_class": [{"wnid", "name", "count", "top1", "top5"}, …],     one row per class, label order
     "confused": [{"true", "predicted", "count"}, …]}                  the most confused pairs, by wnid

The report compares the models' best variants with ``compare``; the export's model card
summarises one with ``summary``.
"""
from __future__ import annotations

import numpy as np

EVAL_FILE = "eval.json"
TOP_CONFUSED = 20  # pairs kept in eval.json: enough for a report's top ten across models


def tally(labels: np.ndarray, top_k: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(confusion, top-k hits per class) of one batch: ``confusion[true, predicted]`` counts the
    top-1 predictions (``top_k[:, 0]``); ``hits[c]`` counts class-c images whose label is in
    their row of ``top_k``."""
    labels = np.asarray(labels, np.int64)
    top_k = np.asarray(top_k, np.int64).reshape(len(labels), -1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, top_k[:, 0]), 1)
    hits = np.bincount(labels[(top_k == labels[:, None]).any(axis=1)], minlength=num_classes)
    return confusion, hits


def class_report(confusion: np.ndarray, top5_hits: np.ndarray, classes: list[dict],
                 top_confused: int = TOP_CONFUSED) -> dict:
    """eval.json from a confusion matrix summed over every worker. ``classes`` are the manifest's
    (label order, with ``wnid`` and ``name``). Confused pairs: most counted first, then by label."""
    confusion = np.asarray(confusion, np.int64)
    counts = confusion.sum(axis=1)
    total = int(counts.sum())
    right = np.diag(confusion)
    per_class = [{"wnid": c["wnid"], "name": c["name"], "count": int(n),
                  "top1": float(r / n) if n else None, "top5": float(h / n) if n else None}
                 for c, n, r, h in zip(classes, counts, right, np.asarray(top5_hits, np.int64))]
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((int(off[t, p]), t, p) for t, p in zip(*np.nonzero(off))), key=lambda x: (-x[0], x[1], x[2]))
    return {
        "top1": float(right.sum() / total) if total else 0.0,
        "top5": float(np.sum(top5_hits) / total) if total else 0.0,
        "count": total,
        "per_class": per_class,
        "confused": [{"true": classes[t]["wnid"], "predicted": classes[p]["wnid"], "count": n}
                     for n, t, p in pairs[:top_confused]],
    }


def compare(evals: dict[str, dict], top: int = 10) -> dict:
    """The models' eval.json side by side (``evals``: model → eval.json, same classes).

    ``order``: class indices, hardest first (lowest mean top-1 over the models); ``matrix``:
    models × classes top-1 in that order; ``all_wrong``: classes no model gets right;
    ``disagree``: the ``top`` classes with the widest spread between models (best − worst);
    ``confused``: the ``top`` class pairs most confused across models, either way round."""
    models = list(evals)
    if not models:
        return {"models": [], "classes": [], "order": [], "matrix": np.zeros((0, 0)), "all_wrong": [],
                "disagree": [], "confused": []}
    classes = [{"wnid": c["wnid"], "name": c["name"]} for c in evals[models[0]]["per_class"]]
    acc = np.array([[np.nan if c["top1"] is None else c["top1"] for c in evals[m]["per_class"]] for m in models])
    mean = np.nanmean(acc, axis=0) if len(models) else np.zeros(len(classes))
    order = sorted(range(len(classes)), key=lambda i: (mean[i], classes[i]["wnid"]))
    spread = np.nanmax(acc, axis=0) - np.nanmin(acc, axis=0)
    disagree = sorted(range(len(classes)), key=lambda i: (-spread[i], classes[i]["wnid"]))[:top]
    pairs: dict[tuple[str, str], int] = {}
    for m in models:
        for c in evals[m]["confused"]:
            key = tuple(sorted((c["true"], c["predicted"])))
            pairs[key] = pairs.get(key, 0) + c["count"]
    confused = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "models": models, "classes": classes, "order": order, "matrix": acc[:, order],
        "all_wrong": [i for i in order if np.nanmax(acc[:, i]) == 0],
        "disagree": [(i, [float(v) for v in acc[:, i]]) for i in disagree if spread[i] > 0],
        "confused": [(a, b, n) for (a, b), n in confused],
    }


def summary(evaluation: dict, top: int = 5) -> dict:
    """One model's best and worst classes (by top-1, ties by wnid) and most confused pairs."""
    rows = [c for c in evaluation["per_class"] if c["count"]]
    by_acc = sorted(rows, key=lambda c: (c["top1"], c["wnid"]))
    return {"worst": by_acc[:top], "best": by_acc[::-1][:top], "confused": evaluation["confused"][:top]}
