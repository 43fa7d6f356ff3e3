"""Run-directory files, each written atomically (temp file + rename), and the tracker interface.

A run directory holds: config.json (resolved), env.json (versions, seed, device), history.csv
(one row per epoch), metrics.jsonl (appended as training goes), metrics.json (final), plus what
bundle.py writes. A reader never sees a half-written file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every file parses anywhere."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(_clean(rows))
    atomic_write_bytes(path, buf.getvalue().encode())


def append_jsonl(path: str | Path, obj: Any) -> None:
    """One line per call; a line is written with a single write() so a kill cannot split it."""
    with open(path, "a") as f:
        f.write(json.dumps(_clean(obj)) + "\n")


class NullTracker:
    """Same methods as a real tracker, doing nothing: code never branches on whether tracking is on."""

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...

    def log_artifacts(self, path: str | Path) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class FileTracker(NullTracker):
    """Appends every logged metric dict to <run>/metrics.jsonl."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        append_jsonl(self.path, {"step": step, **metrics})
