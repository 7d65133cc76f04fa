"""Read a rendered report back as a person sees it: its text, its title and its tables.

Shared by the unit tests (a page rendered from a ``ReportData`` built in the test), the
collector's tests (a page from a tiny run) and the headless-Chromium test (the DOM the browser
built), so all three hold the page to the same rules: prose, not Python reprs; one precision
per table, every figure in a right-aligned cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

# What a Python repr of a dict, list or missing value looks like in running text.
REPR_PATTERNS = (
    re.compile(r"[{\[]\s*'"),  # {'test': 2000}, ['a', 'b']
    re.compile(r"[{\[]\s*\""),  # {"test": 2000}, ["a"]
    re.compile(r"'\s*:\s"),  # 'test': 2000
    re.compile(r"\bNone\b"),
    re.compile(r"\b(nan|inf)\b"),
    re.compile(r"\{\s*\}|\[\s*\]"),  # {} or []
)
# A figure as the report writes it: optional sign, thousands separators, optional decimals.
NUMBER = re.compile(r"^[-−]?\d{1,3}(,\d{3})*(\.\d+)?$|^[-−]?\d+(\.\d+)?$")
FIGURE = re.compile(r"[-−]?\d[\d,]*(?:\.(\d+))?")


@dataclass
class Cell:
    tag: str  # "td" or "th"
    classes: set[str]
    text: str = ""


@dataclass
class Table:
    css_class: str
    rows: list[list[Cell]] = field(default_factory=list)

    def data_cells(self) -> list[Cell]:
        """The body's ``td`` cells (headers and row headers left out)."""
        return [cell for row in self.rows for cell in row if cell.tag == "td"]


class _Reader(HTMLParser):
    """Collects the visible text (``<style>`` left out), ``<title>``, ``<h1>`` and tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.title = ""
        self.h1 = ""
        self.tables: list[Table] = []
        self._open: list[str] = []
        self._cells: list[Cell] = []  # innermost open cell last (tables may nest lists)

    def handle_starttag(self, tag, attrs):
        self._open.append(tag)
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append(Table(attrs.get("class") or ""))
        elif tag == "tr" and self.tables:
            self.tables[-1].rows.append([])
        elif tag in ("td", "th") and self.tables:
            cell = Cell(tag, set((attrs.get("class") or "").split()))
            self.tables[-1].rows[-1].append(cell)
            self._cells.append(cell)

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open and self._open.pop() != tag:
                pass
        if tag in ("td", "th") and self._cells:
            self._cells.pop()

    def handle_data(self, data):
        if "style" in self._open:
            return
        self.text.append(data)
        if "title" in self._open and "svg" not in self._open:
            self.title += data
        if "h1" in self._open:
            self.h1 += data
        if self._cells:
            self._cells[-1].text += data


def read_page(page: str) -> _Reader:
    reader = _Reader()
    reader.feed(page)
    reader.close()
    for table in reader.tables:
        for row in table.rows:
            for cell in row:
                cell.text = " ".join(cell.text.split())
    return reader


def repr_leaks(page: str) -> list[str]:
    """Snippets of the page's text that look like a Python repr (empty when it reads as prose)."""
    text = " ".join(read_page(page).text)
    return [
        text[max(match.start() - 40, 0) : match.end() + 40]
        for pattern in REPR_PATTERNS
        for match in pattern.finditer(text)
    ]


def decimals_of(text: str) -> list[int]:
    """Number of decimals of each figure in a cell's text (``0.0900 to 0.1200`` -> [4, 4])."""
    return [len(match.group(1) or "") for match in FIGURE.finditer(text)]


def table_problems(page: str) -> list[str]:
    """Every table's figures share one number of decimals, every cell that holds a bare figure
    is a right-aligned ``num`` cell, and every ``num`` cell holds figures (or a dash)."""
    problems = []
    for index, table in enumerate(read_page(page).tables):
        numeric = [cell for cell in table.data_cells() if "num" in cell.classes]
        places = {d for cell in numeric for d in decimals_of(cell.text)}
        if len(places) > 1:
            shown = [cell.text for cell in numeric]
            problems.append(f"table {index} ({table.css_class}) mixes {sorted(places)}: {shown}")
        for cell in table.data_cells():
            if NUMBER.match(cell.text) and "num" not in cell.classes:
                problems.append(f"table {index}: figure {cell.text!r} in a text cell")
            bare = cell.text.replace(" to ", " ").split()
            if "num" in cell.classes and not all(NUMBER.match(t) or t == "–" for t in bare):
                problems.append(f"table {index}: {cell.text!r} in a figure cell")
    return problems
