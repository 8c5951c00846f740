"""A small document model, rendered once to markdown and once to self-contained HTML.

The report and the export's model card build a list of ``Section``s of blocks (paragraphs,
tables, images, code, bullet lists) whose text is plain strings or ``Span``s (``code(…)``,
``bold(…)``). Each renderer walks that structure: nothing is rendered to one format and parsed
back into another.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    kind: str  # code | bold
    text: str


def code(text) -> Span:
    return Span("code", str(text))


def bold(text) -> Span:
    return Span("bold", str(text))


@dataclass
class Para:
    parts: list  # str | Span


@dataclass
class Table:
    header: list
    rows: list  # list of rows; a cell is a str, a number or a Span


@dataclass
class Image:
    file: str  # the name of a file beside the document (embedded in the HTML)
    alt: str


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Bullets:
    items: list  # each a list of parts, or one str / Span


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    level: int = 2


def csv_cell(value):
    """A value for a CSV cell that a spreadsheet will not run: text starting with = + - @ (or a
    tab or carriage return) gets a leading apostrophe, OWASP's advice for CSV injection. Numbers
    stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def para(*parts) -> Para:
    return Para(list(parts))


# ---------------------------------------------------------------------------------- markdown


def _md_text(text) -> str:
    """Text as markdown shows it, never as HTML a viewer would render (class names, errors and
    paths come from outside)."""
    return html.escape(str(text), quote=False)


def _md_inline(part) -> str:
    if isinstance(part, Span):
        if part.kind == "code":  # a fence longer than any backtick run inside: nothing breaks out
            fence = "`" * (max((len(r) for r in re.findall("`+", part.text)), default=0) + 1)
            pad = " " if part.text.startswith("`") or part.text.endswith("`") else ""
            return f"{fence}{pad}{part.text}{pad}{fence}"
        return f"**{_md_text(part.text)}**"
    return _md_text(part)


def _md_parts(parts) -> str:
    return "".join(_md_inline(p) for p in (parts if isinstance(parts, list) else [parts]))


def _md_cell(cell) -> str:
    return _md_parts(cell).replace("|", "\\|").replace("\n", " ")


def _md_block(block) -> str:
    if isinstance(block, Para):
        return _md_parts(block.parts)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |", "|" + "---|" * len(block.header)]
        return "\n".join(lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows])
    if isinstance(block, Image):
        return f"![{_md_text(block.alt)}]({block.file})"
    if isinstance(block, Code):
        return f"```{block.lang}\n{block.text.rstrip()}\n```"
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_parts(item)}" for item in block.items)
    raise TypeError(f"not a block: {block!r}")


def to_markdown(title: str, intro: list, sections: list[Section]) -> str:
    out = [f"# {_md_text(title)}"] + [_md_block(b) for b in intro]
    for s in sections:
        out.append("#" * s.level + " " + _md_text(s.title))
        out += [_md_block(b) for b in s.blocks]
    return "\n\n".join(out) + "\n"


# -------------------------------------------------------------------------------------- HTML


def _html_inline(part) -> str:
    if isinstance(part, Span):
        tag = "code" if part.kind == "code" else "b"
        return f"<{tag}>{html.escape(part.text)}</{tag}>"
    return html.escape(str(part))


def _html_parts(parts) -> str:
    return "".join(_html_inline(p) for p in (parts if isinstance(parts, list) else [parts]))


def _html_block(block, images: dict[str, bytes]) -> str:
    if isinstance(block, Para):
        return f"<p>{_html_parts(block.parts)}</p>"
    if isinstance(block, Table):
        # figures are right-aligned, and so is the header of a column of figures; words read left
        figures = [bool(block.rows) and all(is_figure(row[i]) or not _text(row[i]) for row in block.rows)
                   for i in range(len(block.header))]
        head = "".join(f"<th{' class=n' if figures[i] and i else ''}>{_html_parts(h)}</th>"
                       for i, h in enumerate(block.header))
        body = "".join("<tr>" + "".join(f"<td{' class=n' if is_figure(c) and i else ''}>{_html_parts(c)}</td>"
                                        for i, c in enumerate(row)) + "</tr>" for row in block.rows)
        # a wide table scrolls on its own rather than squeezing its figures onto two lines
        return f"<div class=wide><table><tr>{head}</tr>{body}</table></div>"
    if isinstance(block, Image):
        data = base64.b64encode(images[block.file]).decode()
        return f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">'
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text.rstrip())}</pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_html_parts(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"not a block: {block!r}")


def is_figure(cell) -> bool:
    """A cell that is a figure ("79.58 / 81.2 %", "1,234 img/s", "12.3 s"): digits and punctuation
    with at most a short unit. A figure never wraps in report.html (a number split over two lines,
    "79.58 /" above "%", reads as two); words (a model's description, an error line) still wrap."""
    text = _text(cell)
    return any(ch.isdigit() for ch in text) and sum(ch.isalpha() for ch in text) <= 5


def _text(cell) -> str:
    return "".join(p.text if isinstance(p, Span) else str(p) for p in (cell if isinstance(cell, list) else [cell]))


# Tables may use a wide window (the seed's table has 13 columns); prose keeps a readable measure.
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1500px;margin:2em auto;padding:0 1em}"
         "p,ul{max-width:1100px}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}.n{text-align:right}"
         "td.n,th{white-space:nowrap}.wide{overflow-x:auto}"
         "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto}")


def to_html(title: str, intro: list, sections: list[Section], images: dict[str, bytes] | None = None) -> str:
    """One self-contained page: images are embedded as data URIs."""
    images = images or {}
    out = [f"<h1>{html.escape(title)}</h1>"] + [_html_block(b, images) for b in intro]
    for s in sections:
        out.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        out += [_html_block(b, images) for b in s.blocks]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
