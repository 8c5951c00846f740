"""Per-class evaluation arithmetic (pure): exact values."""
import numpy as np

from tinyray.evaluate import class_report, compare, summary, tally

CLASSES = [{"label": i, "wnid": f"n0{i}", "name": f"class {i}"} for i in range(3)]


def test_tally_counts_top1_into_the_confusion_and_top5_hits_per_class():
    labels = np.array([0, 0, 1, 2, 2])
    top_k = np.array([[0, 1], [1, 0], [2, 0], [2, 1], [0, 1]])  # top-2 here
    confusion, hits = tally(labels, top_k, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 1]]
    assert hits.tolist() == [2, 0, 1]


def test_class_report_exact_values():
    confusion = np.array([[8, 2, 0], [3, 6, 1], [0, 0, 0]])  # class 2 has no val image
    report = class_report(confusion, np.array([10, 9, 0]), CLASSES, top_confused=2)
    assert report["top1"] == 14 / 20 and report["top5"] == 19 / 20 and report["count"] == 20
    assert report["per_class"] == [
        {"wnid": "n00", "name": "class 0", "count": 10, "top1": 0.8, "top5": 1.0},
        {"wnid": "n01", "name": "class 1", "count": 10, "top1": 0.6, "top5": 0.9},
        {"wnid": "n02", "name": "class 2", "count": 0, "top1": None, "top5": None}]
    assert report["confused"] == [{"true": "n01", "predicted": "n00", "count": 3},
                                  {"true": "n00", "predicted": "n01", "count": 2}]


def test_compare_orders_classes_by_difficulty_and_finds_disagreement():
    def ev(accs, confused):
        return {"per_class": [{"wnid": c["wnid"], "name": c["name"], "count": 10, "top1": a}
                              for c, a in zip(CLASSES, accs)],
                "confused": [{"true": t, "predicted": p, "count": n} for t, p, n in confused]}

    cmp = compare({"a": ev([0.0, 0.9, 0.5], [("n00", "n01", 4)]),
                   "b": ev([0.0, 0.3, 0.5], [("n01", "n00", 2), ("n02", "n01", 1)])})
    assert cmp["order"] == [0, 2, 1]  # mean top-1: 0.0, 0.5, 0.6
    assert cmp["matrix"].tolist() == [[0.0, 0.5, 0.9], [0.0, 0.5, 0.3]]
    assert cmp["all_wrong"] == [0]
    assert cmp["disagree"] == [(1, [0.9, 0.3])]  # classes 0 and 2: no spread, not listed
    assert cmp["confused"] == [("n00", "n01", 6), ("n01", "n02", 1)]


def test_summary_lists_the_best_and_worst_classes():
    report = class_report(np.array([[8, 2, 0], [3, 6, 1], [0, 1, 9]]), np.array([10, 10, 10]), CLASSES)
    s = summary(report, top=2)
    assert [c["wnid"] for c in s["worst"]] == ["n01", "n00"] and [c["wnid"] for c in s["best"]] == ["n02", "n00"]
    assert s["confused"][0] == {"true": "n01", "predicted": "n00", "count": 3}
