"""Reading a run or search directory for the report: every read is guarded.

A `Source` reads JSON and CSV files under one root directory. A missing or unreadable file
returns None and, unless it is optional, records one line in `problems` naming the file and why
("trials.csv could not be read: ValueError: row 3 has 5 fields, the header has 33"). Nothing here
raises for a bad file; nothing here imports torch (plain json/csv only).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable

from cotune.errors import one_line

MAX_REASON = 160  # characters of an exception message kept in a problem line


def why(err: BaseException) -> str:
    msg = one_line(str(err)) if str(err) else ""
    msg = msg if len(msg) <= MAX_REASON else msg[:MAX_REASON - 1] + "\u2026"
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def number(v: Any) -> float | None:
    """A finite float from a JSON value or CSV cell; None for '', null, NaN, text."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def cell(v: str) -> Any:
    """A CSV cell as int, float, bool or str; '' becomes None."""
    if v is None or v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


class Source:
    """Guarded readers over files under `root`; problems are collected, never raised."""

    def __init__(self, root: Path, problems: list[str] | None = None):
        self.root = Path(root)
        self.problems = [] if problems is None else problems

    def name(self, rel: str | Path) -> str:
        return Path(rel).as_posix()

    def exists(self, rel: str | Path) -> bool:
        return (self.root / rel).is_file()

    def note(self, line: str) -> None:
        if line not in self.problems:
            self.problems.append(line)

    def _read(self, rel, parse: Callable[[Path], Any], optional: bool, missing: str | None):
        p = self.root / rel
        if not p.is_file():
            if not optional:
                self.note(f"{self.name(rel)} is missing" + (f": {missing}" if missing else ""))
            return None
        try:
            return parse(p)
        except Exception as err:  # a damaged file: say which and why, render the rest
            self.note(f"{self.name(rel)} could not be read: {why(err)}")
            return None

    def json(self, rel, *, optional: bool = False, missing: str | None = None, kind: type = dict):
        def parse(p: Path):
            obj = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(obj, kind):
                raise ValueError(f"expected a JSON {'object' if kind is dict else kind.__name__}, "
                                 f"found {type(obj).__name__}")
            return obj
        return self._read(rel, parse, optional, missing)

    def csv(self, rel, *, optional: bool = False, missing: str | None = None, need: tuple[str, ...] = (),
            keep: Callable[[dict], bool] | None = None) -> list[dict] | None:
        """Rows as dicts of typed cells. A row with a different field count than the header, or a header
        without the `need` columns, makes the whole file unreadable (it is not the file we wrote)."""
        def parse(p: Path):
            with p.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f, strict=True)
                header = next(reader, None)
                if not header:
                    raise ValueError("the file is empty")
                absent = [c for c in need if c not in header]
                if absent:
                    raise ValueError(f"no {', '.join(repr(c) for c in absent)} column in the header {header[:6]!r}")
                rows = []
                for i, values in enumerate(reader, start=2):
                    if not values:
                        continue
                    if len(values) != len(header):
                        raise ValueError(f"line {i} has {len(values)} fields, the header has {len(header)}")
                    row = {k: cell(v) for k, v in zip(header, values)}
                    if keep is None or keep(row):
                        rows.append(row)
                return rows
        return self._read(rel, parse, optional, missing)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1} (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in ("search.space",):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get(d: Any, *keys, default=None):
    """d[k1][k2]... (or attributes of a dataclass) or default when any level is missing."""
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        elif is_dataclass(d) and isinstance(k, str) and hasattr(d, k):
            d = getattr(d, k)  # a Run / Loaded dataclass
        else:
            return default
    return d


# ---------------------------------------------------------------------------------------------
# how numbers are shown: every number on the page goes through one of these

def fmt(v: Any, digits: int = 4) -> str:
    """A metric as shown in tables: floats with `digits` decimals, ints as ints, missing as '-'."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def knob_value(v: Any) -> str:
    """A knob value: short and exact enough (lr 8.62e-04, dropout 0.1049, width 37, 'adamw')."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            s = f"{v:.4f}".rstrip("0").rstrip(".")
            return s if s not in ("", "-0") else "0"
        return f"{v:.3g}" if abs(v) >= 1e5 else f"{v:.2e}"
    return str(v)


def pct(share: float | None, digits: int = 1) -> str:
    if share is None:
        return "-"
    s = f"{100 * share:.{digits}f}%"
    if share > 0 and s == f"{0:.{digits}f}%":  # never show a real finding as 0%
        s = f"{100 * share:.2g}%"
    return s


def compact(v: Any, sig: int = 5) -> Any:
    """Chart data: floats to `sig` significant digits so 200 trials stay small in the page."""
    if isinstance(v, float):
        return float(f"{v:.{sig}g}") if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [compact(x, sig) for x in v]
    if isinstance(v, dict):
        return {k: compact(x, sig) for k, x in v.items()}
    return v
