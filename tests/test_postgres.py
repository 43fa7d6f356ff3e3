"""A distributed search on PostgreSQL: `cotune fit --storage URL` and a second `cotune worker` that joins it.

Needs a server: CI starts one with `bash scripts/postgres.sh start` and exports its URL as
COTUNE_TEST_PG_URL; without it (a developer machine) the test is skipped.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import pytest

URL = os.environ.get("COTUNE_TEST_PG_URL")
pytestmark = pytest.mark.skipif(not URL, reason="COTUNE_TEST_PG_URL is not set: run `bash scripts/postgres.sh start` "
                                                "and export its URL to test distributed search on PostgreSQL")
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
TRIALS = 8


def cotune(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "cotune.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV}, **kw)


def wait_for_study(optuna, name: str, fit, timeout: float = 120.0):
    """Until `cotune fit` has created the study and stored everything a worker reads (the MLflow run comes last)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert fit.poll() is None, f"cotune fit exited early:\n{fit.communicate()[0]}"
        try:
            if "mlflow" in optuna.load_study(study_name=name, storage=URL).user_attrs:
                return
        except KeyError:
            pass  # not created yet
        time.sleep(0.2)
    raise AssertionError(f"study {name!r} did not appear in {timeout:.0f} s")


def test_a_second_worker_joins_a_search_on_postgres(tmp_path):
    optuna = pytest.importorskip("optuna")
    name = f"pg-{uuid.uuid4().hex[:10]}"
    out = tmp_path / "search"
    # trials of a few seconds each, so that the second worker (a cold start: its imports) has trials left when it is up
    fit = cotune("fit", "sklearn:iris", "--storage", URL, "--study", name, "--trials", TRIALS, "--workers", 1,
                 "--set", "train.epochs=300", "--set", "train.patience=0", "--set", "model.width=8",
                 "--set", "search.pruner=none", "--set", "search.top_k=1", "--out", out, "-q")
    try:
        wait_for_study(optuna, name, fit)
        worker = cotune("worker", "--storage", URL, "--study", name, "--threads", 1, cwd=tmp_path)
        w_out = worker.communicate(timeout=300)[0]
        f_out = fit.communicate(timeout=300)[0]
    finally:
        for p in (fit, locals().get("worker")):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert fit.returncode == 0, f_out
    assert worker.returncode == 0, w_out
    joined = int(re.search(r"worker ran (\d+) trial", w_out).group(1))
    spawned = int(re.search(r"worker ran (\d+) trial", (out / "workers.log").read_text()).group(1))
    assert joined >= 1 and spawned >= 1, (joined, spawned)

    study = optuna.load_study(study_name=name, storage=URL)
    trials = study.get_trials(deepcopy=False)
    assert joined + spawned == len(trials)
    assert all(t.state.name == "COMPLETE" for t in trials), [t.state.name for t in trials]
    # each worker checks the limit before it starts a trial, so two can pass it at once: at most one extra
    assert TRIALS <= len(trials) <= TRIALS + 1, len(trials)
    assert all(t.user_attrs["run_dir"].startswith(str(out)) for t in trials)  # the joined worker writes there too
    assert (out / "final" / "metrics.json").is_file() and not (tmp_path / "trials").exists()
    optuna.delete_study(study_name=name, storage=URL)
