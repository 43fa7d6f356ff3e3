"""Reading a table file: CSV / TSV (optionally compressed) in the dialect it is written in, or Parquet.

The separator (comma, semicolon, tab or pipe), a UTF-8 byte-order mark and a decimal comma are read off the
file's first SNIFF_BYTES (csv_dialect); pandas' C engine then reads the whole file in that dialect. Training and
prediction read files through the same functions, so they agree on every cell.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import pandas as pd

from cotune.errors import DataError, one_line

_CSV_ENDINGS = tuple(f"{base}{comp}" for base in (".csv", ".tsv") for comp in ("", ".gz", ".bz2", ".zip", ".xz", ".zst"))
_PARQUET_ENDINGS = (".parquet", ".pq")


def read_table(path: Path) -> pd.DataFrame | None:
    """The raw table in a .csv/.tsv (optionally compressed) or .parquet/.pq file; None for any other file.
    Training, auditing and prediction all read tables here, so a file is read the same way by each."""
    lower = Path(path).name.lower()
    if lower.endswith(_CSV_ENDINGS):
        return read_csv(Path(path))[0]
    return _read_parquet(Path(path)) if lower.endswith(_PARQUET_ENDINGS) else None


SNIFF_BYTES = 1 << 16  # the dialect is read off the file's first 64 KiB; pandas' C engine then reads it all
SNIFF_ROWS = 200
SEPARATORS = (",", ";", "\t", "|")
_COMMA_NUMBER = re.compile(r"[+-]?\d+,\d+")
_DOT_NUMBER = re.compile(r"[+-]?\d*\.\d+(?:[eE][+-]?\d+)?")


def default_dialect(path) -> dict:
    """What a .csv (a comma) or .tsv (a tab) file is assumed to be when nothing says otherwise."""
    return {"separator": "\t" if ".tsv" in Path(path).name.lower() else ",", "decimal": ".", "bom": False}


def csv_dialect(path) -> dict:
    """How a CSV/TSV file is written: {'separator', 'decimal', 'bom'}, from its first SNIFF_BYTES.

    Spreadsheets in many locales save ';'-separated files with decimal commas and a UTF-8 byte-order mark;
    read with a comma they are one column of text. A separator counts when it splits the header and every
    sampled row into the same number (> 1) of fields, quotes respected; the file type's own separator wins
    whenever it does (csv.Sniffer guesses from character counts instead, and decimal commas fool it). A
    decimal comma is assumed only with ';' and when numbers look like '3,14' and never like '3.14'."""
    dialect = default_dialect(path)
    try:
        from pandas.io.common import get_handle
        with get_handle(str(path), "rb", compression="infer", is_text=False) as h:  # .gz, .zip, ... too
            head = h.handle.read(SNIFF_BYTES)
    except Exception:
        return dialect  # unreadable: pandas says why when it reads the file
    dialect["bom"] = head.startswith(codecs.BOM_UTF8)
    text = head.decode("utf-8-sig", errors="replace")
    cut = len(head) == SNIFF_BYTES  # the sample ends inside a row: drop that row
    if cut:
        text = text[:text.rfind("\n") + 1]

    def rows(sep: str) -> list[list[str]]:
        out = [r for r in csv.reader(io.StringIO(text), delimiter=sep) if r]  # pandas skips blank lines too
        return (out[:-1] if cut and len(out) > 2 else out)[:SNIFF_ROWS + 1]

    def width(sep: str) -> int:  # fields per row when every sampled row has as many, else 0
        try:
            counts = {len(r) for r in rows(sep)}
        except csv.Error:
            return 0
        return counts.pop() if len(counts) == 1 else 0

    if width(dialect["separator"]) < 2:
        widths = {sep: width(sep) for sep in SEPARATORS if sep != dialect["separator"]}
        best = max(widths, key=widths.get, default=None)  # ties: the order of SEPARATORS
        if best is not None and widths[best] >= 2:
            dialect["separator"] = best
    if dialect["separator"] == ";" and width(";") >= 2:
        cells = [c.strip() for r in rows(";")[1:] for c in r]
        if any(_COMMA_NUMBER.fullmatch(c) for c in cells) and not any(_DOT_NUMBER.fullmatch(c) for c in cells):
            dialect["decimal"] = ","
    return dialect


_SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def dialect_note(dataset: dict) -> str | None:
    """One line on how a CSV file was read (`describe(ds)`'s 'dialect'), when that was not the comma (or, for
    .tsv, tab) its name suggests; None when it was, or for any other source."""
    d = dataset.get("dialect") or {}
    if not d or (d.get("separator"), d.get("decimal")) == (default_dialect(dataset.get("name", ""))["separator"], "."):
        return None
    sep = d.get("separator")
    extras = [x for x, on in (("decimal commas", d.get("decimal") == ","), ("a UTF-8 byte-order mark", d.get("bom"))) if on]
    return (f"read {dataset.get('name', 'the table')} as {_SEPARATOR_NAMES.get(sep, repr(sep))}-separated"
            + (f" with {' and '.join(extras)}" if extras else "") + " (env.json: dataset.dialect)")


def read_csv(path: Path) -> tuple[pd.DataFrame, dict]:
    """A CSV/TSV file (optionally compressed) as a table, and the dialect it was read with (csv_dialect)."""
    path = Path(path)
    dialect = csv_dialect(path)
    try:
        df = pd.read_csv(path, sep=dialect["separator"], decimal=dialect["decimal"], encoding="utf-8-sig",
                         low_memory=False)
        return df, dialect
    except pd.errors.EmptyDataError:
        raise DataError(f"The table {str(path)!r} is empty (no header, no rows); point data.source at a file with data in it.") from None
    except UnicodeDecodeError:
        raise DataError(f"The table {str(path)!r} is not UTF-8 text; re-save it as UTF-8 CSV.") from None
    except Exception as e:  # ParserError, OSError, compression errors: all user-file problems
        raise DataError(f"Cannot read the table {str(path)!r}: {one_line(e)[:300]}; fix the file or re-export it as CSV.") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for corrupt or non-parquet files
        raise DataError(f"Cannot read the Parquet file {str(path)!r}: {one_line(e)[:300]}; "
                        "fix the file or re-export it (e.g. DataFrame.to_parquet).") from None
