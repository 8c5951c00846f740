"""The report's one structure rendered as markdown and as a self-contained HTML page
(tinyray.render, pure)."""
import re

from tinyray.render import Section, Table, code, is_figure, to_html, to_markdown


def test_figures_never_wrap_in_the_html_and_words_still_do():
    table = Table(["model", "val top-1", "note"],
                  [["model2", "79.58 / 81.2 %", "stopped: the object store at http://x became unreachable"],
                   [code("tinycnn"), "1,234 img/s", "12.3 s"]])
    page = to_html("r", [], [Section("s", [table])])
    cells = re.findall(r"<td( class=n)?>(.*?)</td>", page)
    assert [(bool(n), text) for n, text in cells] == [
        (False, "model2"), (True, "79.58 / 81.2 %"), (False, "stopped: the object store at http://x became unreachable"),
        (False, "<code>tinycnn</code>"), (True, "1,234 img/s"), (True, "12.3 s")]
    assert "td.n,th{white-space:nowrap}" in page and "<div class=wide><table>" in page
    # figures and the header of a column of figures are right-aligned; words, and the first column, read left
    assert "<tr><th>model</th><th class=n>val top-1</th><th>note</th></tr>" in page and ".n{text-align:right}" in page


def test_what_counts_as_a_figure():
    assert is_figure("2026-12-04 01:00:52") and is_figure("0.917") and is_figure("3 × 0.5 CPU")
    assert not is_figure("adam") and not is_figure("no finished epoch 3")


def test_markdown_and_html_hold_the_same_rows_and_escape_html():
    table = Table(["a", "b"], [["<b>x</b>", "1"], ["y|z", "2"]])
    md = to_markdown("t", [], [Section("s", [table])])
    page = to_html("t", [], [Section("s", [table])])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert len([l for l in md.splitlines() if l.startswith("| ")]) == 3 == page.count("<tr>")
