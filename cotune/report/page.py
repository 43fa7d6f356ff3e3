"""The page being built: sections made of blocks (paragraphs, tables, charts, notes), and its figures.

The template renders blocks in order; a chart block is a `<div class="chart">` whose figure spec
sits in `Page.figures` under the div's id. A section builder that fails on an unexpected file
content costs only that section: `Page.guard` records one problem line and the page goes on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from cotune.report.files import why


@dataclass
class Cell:
    """A table cell with a CSS class (severity badges, numbers aligned right)."""
    text: str
    cls: str = ""


@dataclass
class Section:
    id: str
    title: str
    page: "Page"
    blocks: list[dict] = field(default_factory=list)

    def p(self, text: str) -> None:
        self.blocks.append({"kind": "p", "text": text})

    def note(self, text: str) -> None:
        self.blocks.append({"kind": "note", "text": text})

    def heading(self, text: str) -> None:
        self.blocks.append({"kind": "h3", "text": text})

    def table(self, columns: list[str], rows: list[list], caption: str | None = None, cls: str = "") -> None:
        if rows:
            cells = [[c if isinstance(c, Cell) else Cell("" if c is None else str(c)) for c in r] for r in rows]
            self.blocks.append({"kind": "table", "columns": columns, "rows": cells, "caption": caption, "cls": cls})

    def pairs(self, items: list[tuple[str, Any]], caption: str | None = None) -> None:
        """A two-column key/value table."""
        self.table(["", ""], [[k, v] for k, v in items if v is not None], caption, cls="kv")

    def chart(self, fig: dict | None) -> None:
        if fig is None:
            return
        cid = self.page.add_figure(self.id, fig)
        height = fig.get("layout", {}).get("height", 380)
        self.blocks.append({"kind": "chart", "id": cid, "height": height})

    def plot(self, what: str, build: Callable[..., dict | None], *args) -> None:
        """Add the chart `build(*args)`; if it fails on unexpected file content, record why and go on."""
        self.chart(self.page.guard(what, build, *args))

    def details(self, summary: str, text: str) -> None:
        self.blocks.append({"kind": "details", "summary": summary, "text": text})

    @property
    def empty(self) -> bool:
        return not self.blocks


@dataclass
class Page:
    title: str
    subtitle: str = ""
    problems: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    figures: dict[str, dict] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)    # plain-language sentences at the top
    actions: list[str] = field(default_factory=list)    # the most useful next steps
    caveats: list[str] = field(default_factory=list)    # honest notes: tiny data, near-perfect metrics

    def section(self, sid: str, title: str) -> Section:
        s = Section(sid, title, self)
        self.sections.append(s)
        return s

    def add_figure(self, prefix: str, fig: dict) -> str:
        base = re.sub(r"[^a-z0-9-]", "-", prefix.lower())
        cid = f"chart-{base}-{len(self.figures) + 1}"
        self.figures[cid] = fig
        return cid

    def guard(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        """Run a section builder; an exception becomes one problem line naming what could not be shown."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self.problems.append(f"{what} could not be shown: {why(err)}")
            return None

    def drop_empty(self) -> None:
        self.sections = [s for s in self.sections if not s.empty]
