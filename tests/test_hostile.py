"""Names, class ids and text from outside, as they reach tinyray's outputs: each is one line, or
comes out as text that no spreadsheet, markdown viewer or plot runs. (Hostile model files are
in test_export.py.)"""
import csv
import io

import pytest

from tinyray.config import TrainConfig
from tinyray.errors import TinyrayError


@pytest.mark.parametrize("name", ["../x", "..", ".", "a b", "x;rm -rf", "a/b", "", "$(id)"])
def test_a_sweep_or_run_name_that_is_not_one_plain_folder_name_is_refused(name):
    from tinyray.sweepfile import parse_sweep

    with pytest.raises(TinyrayError, match="may hold only letters, digits and"):
        parse_sweep(f"name: {name!r}\ntrain: {{model: tinycnn}}\n")
    with pytest.raises(TinyrayError, match="may hold only letters, digits and"):
        TrainConfig(model="tinycnn", data="s3://b/d", name=name)


def test_plain_names_still_pass():
    from tinyray.sweepfile import parse_sweep

    assert parse_sweep("name: grid-v2.1_a=b\ntrain: {model: tinycnn}\n").name == "grid-v2.1_a=b"
    assert TrainConfig(model="tinycnn", data="s3://b/d", name="..a").run_name == "..a"


@pytest.mark.parametrize("wnid", ["../etc", "n0/1", "$x$", "<b>", "-rf"])
def test_a_class_id_that_could_be_a_path_or_markup_is_one_line(wnid):
    from tinyray.data.layout import parse_wnids

    with pytest.raises(TinyrayError, match=r"wnids.txt line 2: .* is not a class id"):
        parse_wnids(f"n01443537\n{wnid}\n")


def test_csv_cells_a_spreadsheet_would_run_are_quoted():
    from tinyray.render import csv_cell

    assert [csv_cell(v) for v in ("=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "adam", -0.5, 3, None)] == [
        "'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "adam", -0.5, 3, None]


def test_results_csv_and_the_report_show_hostile_text_as_text():
    from test_report import BASE, epochs

    from tinyray.folders import Trial
    from tinyray.report import build_report

    axes = {"model": "model2", "optimizer": "adam", "lr": 1e-4}
    config = TrainConfig.from_dict({**BASE, **axes}).to_dict()
    bad = Trial("=HYPERLINK(\"http://x\")", axes, config, epochs(0.1), error="<script>alert(1)</script>",
                status="failed")
    good = Trial("t2", axes, config, epochs(0.2, 0.3, 0.4))
    meta = {"sweep": {"name": "t", "storage": "/exp", "train": BASE, "grid": {"optimizer": ["adam"]},
                      "scheduler": {"type": "fifo"}},
            "data": "s3://b/d", "source": {}, "dataset": {"classes": 200, "train": 96, "val": 24, "skipped": 0},
            "cluster": {"nodes": 1, "resources": [{"CPU": 2.0}], "max_concurrent_trials": 1},
            "started": "now", "endpoint": "http://127.0.0.1:9"}
    files = build_report(meta, [bad, good])
    rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode())))
    assert rows[0]["trial"] == "'=HYPERLINK(\"http://x\")" and rows[1]["trial"] == "t2"
    md = files["report.md"].decode()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "<script>" not in files["report.html"].decode()


def test_a_code_span_holding_backticks_stays_one_span():
    from tinyray.render import Section, code, para, to_markdown

    md = to_markdown("t", [], [Section("s", [para("run ", code("a`b``c"), " then")])])
    assert "run ```a`b``c``` then" in md


@pytest.mark.parametrize("label", ["n$0$", "a$b", r"\frac{1}{0}$"])
def test_plot_labels_are_never_mathtext(label):
    from tinyray.plots import accuracy_vs_epoch

    png = accuracy_vs_epoch({label: [(1, 0.2), (2, 0.4)]}, f"title {label}")
    assert png[:4] == b"\x89PNG"


def test_log_axes_are_labelled_in_plain_numbers_not_mathtext_printed_as_is():
    from tinyray.plots import _figure, log_x

    plt, fig, ax = _figure(4, 3)
    ax.scatter([0.003, 0.05, 2.0], [1, 2, 3])
    log_x(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert labels and not any("$" in t or "mathdefault" in t for t in labels)
    assert {"0.01", "0.1", "1"} <= set(labels)


def test_predictions_csv_quotes_what_a_spreadsheet_would_run(tmp_path):
    import pyarrow as pa

    from tinyray.data.storage import StorageOptions
    from tinyray.predict import write_one_file

    out = tmp_path / "p.csv"
    table = pa.table({"file": ["=cmd|' /C calc'!A0", "ok.JPEG"], "top1_prob": [0.5, 0.25]})
    write_one_file([table], table.schema, str(out), StorageOptions())
    rows = list(csv.DictReader(open(out)))
    assert [r["file"] for r in rows] == ["'=cmd|' /C calc'!A0", "ok.JPEG"] and rows[1]["top1_prob"] == "0.25"
