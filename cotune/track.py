"""Run-directory files, each written atomically (temp file + rename), and the tracker interface.

A run directory holds: config.json (resolved), env.json (versions, seed, device), history.csv
(one row per epoch), metrics.jsonl (appended as training goes), metrics.json (final), plus what
bundle.py writes. A reader never sees a half-written file.

Trackers get a run's params, per-epoch metrics and final metrics: FileTracker (metrics.jsonl),
MlflowTracker (an MLflow run; `cotune fit` makes one per trial, nested under the study's run: see
cotune.search.tracking). Nothing here knows the config tree.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cotune.errors import ConfigError, DamagedFileError, one_line


_UMASK = os.umask(0)
os.umask(_UMASK)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the finished folder tmp (made beside dest) in dest's place: dest, when it exists, is swapped out whole."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)


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


def default_out(cfg) -> Path:
    """A run's directory when the config names none: runs/<data name>-<date-time>."""
    name = cfg.data.source.replace("sklearn:", "").rstrip("/").split("/")[-1].split(".")[0] or "data"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_writable(path: str | Path, what: str) -> None:
    """A one-line ConfigError, before any work is done, when no file can be written at `path` (a folder, a file
    where a folder must be, no permission); missing folders are fine: atomic_write_bytes creates them."""
    p = Path(path)
    where = p.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if p.is_dir():
        problem = "is a folder; pass a file path inside it"
    elif not where.is_dir():
        problem = f"cannot be written: {str(where)!r} is a file, not a folder; pick another path"
    elif not os.access(where, os.W_OK | os.X_OK):
        problem = f"cannot be written: no permission to write in {str(where)!r}; pick another path"
    else:
        return
    raise ConfigError(f"{what} {str(p)!r} {problem}.")


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
    """The file's JSON; a file that no longer parses (cut short, edited by hand) is a DamagedFileError."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{str(path)!r} is damaged (not valid JSON: {err.msg} at line {err.lineno}); restore it, "
                               "or start again in a new --out directory.") from None


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

    def log_summary(self, metrics: dict) -> None: ...  # final metrics: {'val': {...}, 'test': {...}}

    def set_tags(self, tags: dict) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...

    def discard(self) -> None: ...  # a run that bad input stopped: closed and deleted, as its run directory is


class FileTracker(NullTracker):
    """Appends every logged metric dict to <run>/metrics.jsonl."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        append_jsonl(self.path, {"step": step, **metrics})


class Tee(NullTracker):
    """Forwards every call to each tracker in turn (the run directory's FileTracker and MLflow, say)."""

    def __init__(self, *trackers):
        self.trackers = trackers

    def log_params(self, params: dict) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_summary(self, metrics: dict) -> None:
        for t in self.trackers:
            t.log_summary(metrics)

    def log_artifacts(self, path: str | Path) -> None:
        for t in self.trackers:
            t.log_artifacts(path)

    def set_tags(self, tags: dict) -> None:
        for t in self.trackers:
            t.set_tags(tags)

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status)


# ---------------------------------------------------------------------------------------------
# MLflow (optional: pip install 'cotune[track]'); imported on first use only

MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"
_CLIENTS: dict[str, Any] = {}  # one MlflowClient per tracking URI and process


def mlflow_client(uri: str):
    """The process's MlflowClient for a tracking URI (quiet loggers; WAL on a SQLite store)."""
    if uri not in _CLIENTS:
        import logging

        from mlflow.tracking import MlflowClient
        for name in ("mlflow", "alembic"):  # no 'creating tables' chatter on the user's console
            logging.getLogger(name).setLevel(logging.WARNING)
        if uri.startswith("sqlite:///"):  # before the tables are made: a new store's ~50 migrations commit in WAL
            sqlite_wal(uri[len("sqlite:///"):])  # mode, 6% faster when idle, more on a busy disk (BENCHMARKS.md)
        _CLIENTS[uri] = MlflowClient(tracking_uri=uri)  # creates the tables in a new SQLite file
    return _CLIENTS[uri]


def sqlite_wal(path: str | Path) -> None:
    """Write-ahead logging for a SQLite file (persistent): a commit costs a quarter, readers never block the writer."""
    import sqlite3
    try:
        with sqlite3.connect(path, timeout=20) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # another process holds it: it is set already, or the next process sets it


def _number(v) -> float | None:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    return float(v) if isinstance(v, (int, float)) else None


def _guarded(fn):
    """A tracking error never stops training: it is reported once on stderr and this run's tracking stops."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self.broken:
            return None
        t0 = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        except Exception as err:
            self.broken = True
            print(f"warning: MLflow tracking of run {self.run_id} stopped ({type(err).__name__}: {one_line(err)[:200]})",
                  file=sys.stderr)
        finally:
            self.seconds += time.perf_counter() - t0
    return wrapper


class MlflowTracker(NullTracker):
    """One MLflow run: params in one batch, metrics buffered and sent in batches (every FLUSH_S seconds
    and at close), final metrics of the `summary` parts as 'final/<part>_<name>'. A new run, nested under
    parent_run_id when given, or an existing run_id reopened. `seconds`: time spent tracking, creation included."""

    FLUSH_S = 5.0

    def __init__(self, uri: str, *, experiment: str | None = None, experiment_id: str | None = None,
                 run_id: str | None = None, parent_run_id: str | None = None, run_name: str | None = None,
                 tags: dict | None = None, artifact_location: str | None = None, summary=("val", "test")):
        t0 = time.perf_counter()
        self.uri, self.run_id, self.broken, self.summary = uri, run_id, False, tuple(summary)
        self._buffer: list = []
        self._params_done, self._flushed = False, time.time()
        self.client = mlflow_client(uri)
        if run_id is None:
            if experiment_id is None:
                exp = self.client.get_experiment_by_name(experiment or "cotune")
                experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                    experiment or "cotune", artifact_location=artifact_location)
            tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
            run = self.client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
            self.run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            experiment_id = experiment_id or self.client.get_run(run_id).info.experiment_id
        self.experiment_id = experiment_id
        self.seconds = time.perf_counter() - t0

    @_guarded
    def log_params(self, params: dict) -> None:
        """Once per run (params are immutable in MLflow); later calls do nothing."""
        if self._params_done:
            return
        from mlflow.entities import Param
        items = [Param(str(k), (v if isinstance(v, str) else json.dumps(_clean(v)))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch; cotune has fewer knobs than that
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self._params_done = True

    @_guarded
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._add(metrics, step)
        if time.time() - self._flushed >= self.FLUSH_S:
            self._flush()

    @_guarded
    def log_summary(self, metrics: dict) -> None:
        self._add({f"final/{part}_{k}": v for part in self.summary for k, v in (metrics.get(part) or {}).items()
                   if k != "n"}, None)

    @_guarded
    def log_artifacts(self, path: str | Path) -> None:
        """The folder's files under <folder name>/ in the run's artifacts."""
        self.client.log_artifacts(self.run_id, str(path), artifact_path=Path(path).name)

    @_guarded
    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)[:5000]) for k, v in tags.items()])

    @_guarded
    def close(self, status: str = "FINISHED") -> None:
        self._add({"tracking_s": self.seconds}, None)  # this run's tracking cost so far (creation, params, flushes)
        self._flush()
        self.client.set_terminated(self.run_id, status)

    @_guarded
    def discard(self) -> None:
        self.client.set_terminated(self.run_id, "FAILED")
        self.client.delete_run(self.run_id)

    def _add(self, metrics: dict, step: int | None) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self._buffer += [Metric(str(k), v, ts, step or 0) for k, v in ((k, _number(v)) for k, v in metrics.items())
                         if v is not None and k != "epoch"]  # the epoch is the step

    def _flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=batch)
        self._flushed = time.time()


_WARNED: set[str] = set()


def warn_once(msg: str) -> None:
    """'warning: ...' on stderr, once per process (a worker's log does not repeat it every trial)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(f"warning: {msg}", file=sys.stderr)


def open_mlflow(uri: str, *, required: bool = False, fix: str = "pass --mlflow none to search without tracking",
                **kwargs) -> NullTracker:
    """An MlflowTracker, or a NullTracker (and a warning on stderr) when mlflow is not installed or the
    store cannot be opened. required=True (a URI the user asked for) makes that a ConfigError instead, ending
    with `fix`: what to do to go on without tracking."""
    try:
        return MlflowTracker(uri, **kwargs)
    except ImportError:
        msg = "MLflow tracking needs mlflow: pip install 'cotune[track]'"
    except Exception as err:
        msg = f"Cannot open the MLflow tracking store {uri!r} ({type(err).__name__}: {one_line(err)[:200]})"
    if required:
        raise ConfigError(f"{msg}; or {fix}.")
    warn_once(f"{msg}; tracking is off.")
    return NullTracker()
