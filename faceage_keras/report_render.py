"""Report documents: sections of text, tables and figures, written as Markdown and as one HTML file.

Missing values in tables are shown as "–" with a numbered footnote that
gives the reason, so a reader never mistakes a missing value for a zero.
The HTML file embeds every figure as a base64 PNG and needs no other file.
"""

import base64
import dataclasses
import html
import pathlib

MISSING = "–"


@dataclasses.dataclass(frozen=True)
class Cell:
    """A table cell: its text and the number of its footnote, if any."""

    text: str
    note: int | None = None


@dataclasses.dataclass
class Table:
    """A table with a title, column headers, rows of cells and footnotes.

    Rows hold strings or `Cell`s. Call `missing(reason)` for a cell without a
    value: it returns a "–" cell whose footnote states the reason, and each
    distinct reason gets one footnote number per table.
    """

    title: str
    columns: list
    rows: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    caption: str | None = None

    def missing(self, reason):
        if reason not in self.notes:
            self.notes.append(reason)
        return Cell(MISSING, self.notes.index(reason) + 1)

    def add_row(self, cells):
        if len(cells) != len(self.columns):
            raise ValueError(f"Table {self.title!r} has {len(self.columns)} columns but a row has {len(cells)} cells.")
        self.rows.append([cell if isinstance(cell, Cell) else Cell(str(cell)) for cell in cells])


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of the report: a PNG file and its caption."""

    title: str
    path: pathlib.Path
    caption: str = ""


@dataclasses.dataclass
class Section:
    """A report section: a heading, then paragraphs, tables and figures in the order they were added."""

    heading: str
    blocks: list = dataclasses.field(default_factory=list)

    def text(self, paragraph):
        self.blocks.append(str(paragraph))

    def table(self, table):
        self.blocks.append(table)
        return table

    def figure(self, figure):
        self.blocks.append(figure)


@dataclasses.dataclass
class Document:
    """A whole report: a title, an introduction and sections."""

    title: str
    introduction: list = dataclasses.field(default_factory=list)
    sections: list = dataclasses.field(default_factory=list)

    def section(self, heading):
        section = Section(heading)
        self.sections.append(section)
        return section


# Markdown.


def _markdown_cell(cell):
    text = cell.text.replace("|", "\\|").replace("\n", " ")
    return f"{text}<sup>{cell.note}</sup>" if cell.note else text


def _markdown_table(table):
    lines = [f"**{table.title}**", ""]
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(column.replace("|", "\\|") for column in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"<sup>{number}</sup> {note}  " for number, note in enumerate(table.notes, start=1)]
    return "\n".join(lines)


def render_markdown(document, base_dir):
    """Return the document as Markdown; figures link to their PNG paths relative to `base_dir`."""
    base_dir = pathlib.Path(base_dir)
    parts = [f"# {document.title}"] + list(document.introduction)
    for section in document.sections:
        parts.append(f"## {section.heading}")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_markdown_table(block))
            elif isinstance(block, Figure):
                relative = pathlib.Path(block.path).relative_to(base_dir).as_posix()
                parts.append(f"![{block.title}]({relative})" + (f"\n\n*{block.caption}*" if block.caption else ""))
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


# HTML.

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.table-wrap { overflow-x: auto; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; }
td { text-align: right; white-space: nowrap; }
td:first-child { text-align: left; }
.notes { font-size: 0.85em; color: #444; margin: 0.3em 0 0; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
"""


def _html_cell(cell, tag):
    text = html.escape(cell.text)
    note = f"<sup>{cell.note}</sup>" if cell.note else ""
    return f"<{tag}>{text}{note}</{tag}>"


def _html_table(table):
    lines = ['<div class="table-wrap">', "<table>", f"<caption>{html.escape(table.title)}</caption>"]
    lines.append("<tr>" + "".join(f"<th>{html.escape(column)}</th>" for column in table.columns) + "</tr>")
    for row in table.rows:
        lines.append("<tr>" + "".join(_html_cell(cell, "td") for cell in row) + "</tr>")
    lines.append("</table>")
    if table.caption:
        lines.append(f'<p class="notes">{html.escape(table.caption)}</p>')
    if table.notes:
        notes = "<br>".join(f"<sup>{number}</sup> {html.escape(note)}" for number, note in enumerate(table.notes, 1))
        lines.append(f'<p class="notes">{notes}</p>')
    lines.append("</div>")
    return "\n".join(lines)


def _html_figure(figure):
    encoded = base64.b64encode(pathlib.Path(figure.path).read_bytes()).decode("ascii")
    caption = html.escape(figure.title) + (f". {html.escape(figure.caption)}" if figure.caption else "")
    return (
        f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_html(document):
    """Return the document as one self-contained HTML page with the figures embedded."""
    body = [f"<h1>{html.escape(document.title)}</h1>"]
    body += [f"<p>{html.escape(paragraph)}</p>" for paragraph in document.introduction]
    for section in document.sections:
        body.append(f"<h2>{html.escape(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                body.append(_html_table(block))
            elif isinstance(block, Figure):
                body.append(_html_figure(block))
            else:
                body.append(f"<p>{html.escape(block)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(document.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
