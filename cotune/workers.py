"""Optuna storage and worker processes: what every study (`fit`, `scale`, `cotune worker`) runs on.

A study lives in SQLite (a file in its directory) or PostgreSQL (across machines); its trials run in
`cotune worker` processes, never in the parent. On SQLite the workers of one machine share the file, so
the claim of a trial is made safe here (BEGIN IMMEDIATE, and a lock file around the limit check and the ask).
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from pathlib import Path

from cotune.errors import ConfigError, CotuneError, one_line
from cotune.track import sqlite_wal

STUDY_DB = "study.db"


def import_optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        raise CotuneError("cotune fit needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / STUDY_DB).resolve()}"


def sqlite_file(url: str) -> str | None:
    """The database file of a sqlite:/// URL; None for another database (or SQLite in memory)."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


def rdb_storage(url: str):
    import_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    sqlite = url.startswith("sqlite")
    # SQLite: the driver's own transaction handling off (isolation_level None), so _serialize's BEGIN IMMEDIATE rules
    kw = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    try:
        storage = RDBStorage(url, engine_kwargs=kw, heartbeat_interval=10, grace_period=30,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as err:
        raise ConfigError(f"Cannot open the study storage {url!r} ({one_line(err)[:200]}); check the URL and that "
                          "the database server is running.") from None
    if sqlite:
        _serialize(storage.engine)
    if sqlite_file(url):
        sqlite_wal(sqlite_file(url))  # a commit costs ~5 ms instead of ~20: a trial makes a dozen
    return storage


def _serialize(engine) -> None:
    """Every transaction on a SQLite study takes the write lock when it begins (BEGIN IMMEDIATE).

    Optuna claims a waiting (enqueued) trial with SELECT ... FOR UPDATE, which SQLite ignores, and Python's
    sqlite3 starts the transaction only at the UPDATE: two workers could both read the trial as WAITING and
    both run it (one trial directory, two runs; the queue one short, so a worker then samples past it). With
    the lock taken at BEGIN the read and the claim are one step; the transactions are milliseconds long."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class AskLock:
    """The trial-limit check and the ask as one step across the workers of a SQLite study (a lock file beside it).

    Without it two workers can both count one trial left, and the second samples one past the limit (or past
    the queue of a scaling study). Released as soon as the trial is claimed; the kernel drops it with a dead
    worker. PostgreSQL workers run on several machines and go without: there the limit is approximate, as
    Optuna's own `MaxTrialsCallback`."""

    def __init__(self, url: str):
        db = sqlite_file(url)
        self.path = None if db is None else db + ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.path is None or self.fd is not None:
            return
        import fcntl
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def spawn_workers(url: str, name: str, n: int, deadline: float | None, out: Path,
                  threads: int | None = None) -> list[subprocess.Popen]:
    """N `cotune worker` processes with one CPU thread each unless the user set runtime.threads (`threads`).

    One thread per process is the measured default for small models on these 2-core machines: 2 threads
    ran 0.8-1.1x the time of 1 when idle and 4-5x slower beside another busy process; parallelism comes
    from --workers. With more workers than cores the threads still never exceed one per worker."""
    threads = threads or 1
    cmd = [sys.executable, "-m", "cotune.cli", "worker", "--storage", url, "--study", name, "--threads", str(threads),
           "--out", str(out)] + (["--deadline", repr(deadline)] if deadline else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    log = open(out / "workers.log", "ab")
    die = functools.partial(_die_with_parent, os.getpid()) if sys.platform.startswith("linux") else None
    return [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env, COTUNE_WORKER_INDEX=str(i)),
                             start_new_session=True, preexec_fn=die) for i in range(n)]


def _die_with_parent(parent: int) -> None:
    """In the forked worker (Linux): SIGKILL it when the `cotune fit` that started it dies (kill -9, OOM, a killed
    process group: the worker has its own session), rather than run on as an orphan beside a --resume."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
