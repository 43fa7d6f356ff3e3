"""`build_report(path)`: one self-contained report.html for a run or search directory, from its files only.

    from cotune.report import build_report
    out = build_report("runs/search")     # -> runs/search/report.html (a Path)
    for line in out.problems:              # files that were missing or damaged, one line each
        print(line)

The page answers, in order: how the network compares with simple baselines on the same rows (searches of
tables), how good the model is, what was wrong with the data and what was done,
what the search found (search directories), how training went; with a plain-language summary and
the three most useful next actions on top. It reads files only (never imports torch), inlines
plotly.js once (no network access when viewed) and is written atomically. A missing or damaged file
costs only the parts that need it, and is named in a notice at the top and in `.problems`.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Callable

from cotune.errors import BundleError
from cotune.report import advice, compare, compression, explain, scaling, search, sections
from cotune.report.files import get
from cotune.report.load import Loaded, load_dir
from cotune.report.page import Page, Section
from cotune.track import atomic_write_bytes

REPORT = "report.html"
TEMPLATE = Path(__file__).with_name("template.html.j2")
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "showLink": False}

# Optional sections, each drawn only when its file exists in the directory: filename -> (title, builder).
# A builder is `fn(section, loaded, path)`. A file found with no builder registered is listed under
# "Other results" by name. `cotune scale` writes into <run>/scale/, `cotune compress` into <run>/compress/ and
# `cotune explain` into <run>/explain/; those directories themselves work too.
EXTRA_SECTIONS: dict[str, tuple[str, Callable[[Section, Loaded, Path], None] | None]] = {
    "scale/scale.csv": ("More data or a bigger model? (scaling study)", scaling.scale_section),
    "scale.csv": ("More data or a bigger model? (scaling study)", scaling.scale_section),
    "compress/compress.json": ("Compression: smaller and faster variants", compression.compress_section),
    "compress.json": ("Compression: smaller and faster variants", compression.compress_section),
    "explain/explain.json": ("Which inputs the model relies on", explain.explain_section),
    "explain.json": ("Which inputs the model relies on", explain.explain_section),
}


def register_section(filename: str, title: str, builder: Callable[[Section, Loaded, Path], None]) -> None:
    """Draw `builder(section, loaded, root / filename)` as a section when `filename` exists."""
    EXTRA_SECTIONS[filename] = (title, builder)


class ReportPath(type(Path())):
    """The written report.html: a Path, plus `problems` (one line per missing or damaged file or part
    that could not be shown) and `size` (bytes)."""
    problems: list[str] | tuple = ()  # set on the returned path; derived paths (path.parent) have none
    size: int = 0


def _finite(obj):
    """JSON has no NaN/inf: figures carry null instead."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def script_json(obj) -> str:
    """JSON safe inside <script>: '<' is escaped, so no '</script>' or '<!--' can end it early."""
    return json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    return re.sub(r"</(script)", r"<\\/\1", get_plotlyjs(), flags=re.IGNORECASE)


def _title(L: Loaded) -> tuple[str, str]:
    name = L.root.resolve().name
    kind = {"run": "run", "search": "search"}.get(L.kind, "directory")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = get(L.run, "env", "versions") if L.run is not None else None
    cotune = f", cotune {versions['cotune']}" if isinstance(versions, dict) and "cotune" in versions else ""
    return f"cotune report: {kind} {name}", f"{L.root.resolve()} \u00b7 built {when}{cotune}"


def _extras(page: Page, L: Loaded) -> None:
    unknown = []
    for filename, p in L.extras.items():
        title, builder = EXTRA_SECTIONS.get(filename, (filename, None))
        if builder is None:
            unknown.append(filename)
            continue
        sec = page.section(re.sub(r"\W", "-", filename), title)
        page.guard(f"{filename} ({title})", builder, sec, L, p)
    if unknown:
        page.section("other", "Other results").p(
            "Found here but not drawn by this version of the report: " + ", ".join(unknown) + ".")


def _details(page: Page, L: Loaded) -> None:
    sec = page.section("details", "Run details")
    cfg = L.config or get(L.run, "config")
    if isinstance(cfg, dict):
        sec.details("Configuration (config.json)", json.dumps(cfg, indent=2))
    env = advice._env(L)
    if env:
        sec.details("Environment (env.json)", json.dumps(env, indent=2))


def assemble(L: Loaded) -> Page:
    """The page for a loaded directory: summary on top, then the sections in the order the brief asks."""
    title, subtitle = _title(L)
    page = Page(title=title, subtitle=subtitle, problems=L.problems)
    m = get(L.run, "prefix", default="")
    if L.run is not None or get(L.fit, "test"):
        if compare.has_baselines(L):  # first: is the network worth it against simple models on the same rows
            page.guard("The baselines section (fit.json)", compare.compare, page, L)
        page.guard(f"The model quality section ({m}metrics.json)", sections.quality, page, L)
        page.guard(f"The data section ({m}audit.json, {m}metrics.json)", sections.data, page, L)
    if L.kind == "search":
        page.guard("The search section (fit.json, trials.csv, importances.json)", search.search, page, L)
    if L.run is not None:
        page.guard(f"The training section ({m}history.csv, {m}metrics.json)", sections.training, page, L)
    page.guard("Extra results", _extras, page, L)
    page.guard("The run details (config.json, env.json)", _details, page, L)
    page.guard("The summary (metrics.json, audit.json, fit.json, trials.csv)", advice.summarize, page, L)
    page.drop_empty()
    return page


def render(page: Page) -> str:
    import jinja2
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(page=page, figures_json=script_json(page.figures), plotly_js=plotly_js(),
                           plot_config=script_json(PLOT_CONFIG))


def build_report(path: str | Path, out: str | Path | None = None) -> ReportPath:
    """Write `<path>/report.html` (or `out`) from the files of a run or search directory; return its path
    with `.problems`. Raises BundleError only when `path` is not a directory."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"Run directory {str(root)!r} not found; pass the --out directory of `cotune train` "
                          "or `cotune fit`.")
    loaded = load_dir(root, extras=tuple(EXTRA_SECTIONS))
    page = assemble(loaded)
    html = render(page).encode("utf-8")
    target = Path(out) if out is not None else root / REPORT
    atomic_write_bytes(target, html)
    result = ReportPath(target)
    result.problems = list(page.problems)
    result.size = len(html)
    return result
