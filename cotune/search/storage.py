"""Optuna storage: where every study (`fit`, `scale`, `cotune worker`) lives, and how one is opened.

A study lives in SQLite (a file in its directory) or PostgreSQL (across machines), together with its base
config, space, metric and direction, so a worker anywhere can join it with the URL and the name alone. On
SQLite the workers of one machine share the file, so the claim of a trial is made safe here (BEGIN
IMMEDIATE, and a lock file around the limit check and the ask).
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

from cotune.config import RunConfig, from_dict
from cotune.errors import ConfigError, CotuneError, one_line
from cotune.evaluate import Metric, metric as metric_named
from cotune.knobs import BY_NAME
from cotune.track import sqlite_wal

STUDY_DB = "study.db"
FIDELITY_RUNGS = 3  # search.fidelity=data: train on 1/9, 1/3, then all of the trial's rows


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


def driver_url(url: str) -> str:
    """A postgresql:// URL with the driver that is installed: SQLAlchemy 2.1 reads the bare scheme as psycopg 3,
    while the `postgres` extra installs psycopg2, so without this every such URL failed to import a driver."""
    if url.startswith("postgresql://"):
        from importlib.util import find_spec
        if find_spec("psycopg") is None and find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def rdb_storage(url: str):
    import_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    sqlite = url.startswith("sqlite")
    # SQLite: the driver's own transaction handling off (isolation_level None), so _serialize's BEGIN IMMEDIATE rules
    kw = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    try:
        storage = RDBStorage(driver_url(url), engine_kwargs=kw, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as err:
        raise ConfigError(f"Cannot open the study storage {url!r} ({one_line(err)[:200]}); check the URL and that "
                          "the database server is running.") from None
    storage.record_heartbeat = functools.partial(_beat, storage.record_heartbeat)
    if sqlite:
        _serialize(storage.engine)
    if sqlite_file(url):
        sqlite_wal(sqlite_file(url))  # a commit costs ~5 ms instead of ~20: a trial makes a dozen
    return storage


HEARTBEAT_S = 10  # a running trial's heartbeat; one older than GRACE_S is a dead worker's: another worker retries it
GRACE_S = 60  # six missed beats: a worker starved by a loaded machine is not taken for a dead one


def _beat(record, trial_id: int) -> None:
    """Optuna's heartbeat thread ends at its first error, and the live trial is then retried as a dead one's: a
    beat that fails (the database restarting, a dropped connection) is reported and the next one tried."""
    try:
        record(trial_id)
    except Exception as err:
        print(f"cotune worker: the heartbeat of a running trial was not recorded ({one_line(err)[:200]}); "
              f"next try in {HEARTBEAT_S} s", file=sys.stderr)


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


# ---------------------------------------------------------------------------------------------
# a study: sampler, pruner, and what is stored with it

def _sampler(cfg: RunConfig, space: dict, worker: int = 0, start: int = 0):
    """Each worker gets its own seed (search.seed + worker index), or identical workers propose identical trials;
    `start` (trials already in the study) keeps a resumed search from replaying the first run's proposals."""
    optuna = import_optuna()
    s, seed = cfg.search.sampler, (cfg.search.seed + 7919 * worker + 104729 * start) % 2**32
    if cfg.search.objective != "quality" and s not in ("nsga2", "random"):
        s = "nsga2"  # TPE/CMA-ES here rank one objective; two objectives need NSGA-II
    if s == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, constant_liar=True)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "grid":
        grid = {k: list(v) for k, v in space.items() if BY_NAME[k].choices or BY_NAME[k].type in (bool, str)}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _pruner(cfg: RunConfig):
    optuna = import_optuna()
    p, epochs = cfg.search.pruner, cfg.train.epochs
    if cfg.search.fidelity == "data":  # the resource is the rung's share of the rows, in ninths: 1, 3, 9
        epochs = 3 ** (FIDELITY_RUNGS - 1)
    if p == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs, reduction_factor=3)
    if p == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 10), reduction_factor=3)
    if p == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 10))
    return optuna.pruners.NopPruner()


def open_study(url: str, name: str, cfg: RunConfig | None = None, space: dict | None = None,
               metric: Metric | None = None, load_only: bool = False):
    """Create (or load) a study; the base config, space, metric and its direction are stored with it.

    metric: what ranks the trials (evaluate.primary_metric of the task; default validation accuracy)."""
    optuna = import_optuna()
    storage = rdb_storage(url)
    if load_only:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(f"No study named {name!r} in {url!r}; start it with `cotune fit` first.") from None
        if "config" not in study.user_attrs or "space" not in study.user_attrs:
            raise ConfigError(f"The study {name!r} in {url!r} was not started by cotune (it holds no config and space); "
                              "join a study that `cotune fit` or `cotune scale` started.")
        cfg = from_dict(study.user_attrs["config"])
        space = {k: tuple(v) for k, v in study.user_attrs["space"].items()}
        worker = int(os.environ.get("COTUNE_WORKER_INDEX", os.getpid()))
        start = len(study.get_trials(deepcopy=False))
        study.sampler, study.pruner = _sampler(cfg, space, worker, start), _pruner(cfg)
        return study, cfg, space
    metric = metric or metric_named("accuracy")
    directions = [metric.direction] + (["minimize"] if cfg.search.objective != "quality" else [])
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True,
                                sampler=_sampler(cfg, space), pruner=_pruner(cfg))
    study.set_user_attr("config", cfg.to_dict())
    study.set_user_attr("space", {k: list(v) for k, v in space.items()})
    study.set_user_attr("metric", metric.name)
    return study, cfg, space


def study_metric(study) -> Metric:
    """The metric a study ranks its trials by (its first objective); studies made before it was stored
    ranked by accuracy when maximizing and by RMSE when minimizing."""
    maximize = study.directions[0].name == "MAXIMIZE"
    return Metric(study.user_attrs.get("metric") or ("accuracy" if maximize else "rmse"), maximize)
