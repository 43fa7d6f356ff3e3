"""The worker side of a search: `cotune worker --storage URL --study NAME` runs trials until the study is done.

Workers are started by `cotune fit` and `cotune scale` (search/parent.py), or by hand on other machines;
each opens the study from its storage (config, space and sampler come with it) and runs one trial at a
time until the trial limit, the deadline, or the study's stop flag. Trials never run in the parent.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from cotune.search.objective import TAKEN, Objective, estimate_final
from cotune.search.space import parse_population
from cotune.search.storage import AskLock, open_study

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def work(url: str, name: str, *, deadline: float | None = None, threads: int = 1, out: str | None = None) -> int:
    """A worker: run trials of the study until the trial limit, the deadline, or the study's stop flag."""
    study, cfg, space = open_study(url, name, load_only=True)
    out_dir = Path(out or study.user_attrs.get("out", "."))
    deadline = deadline if deadline is not None else study.user_attrs.get("deadline")
    limit = cfg.search.trials
    size = parse_population(cfg.search.population)  # K trials at once, as one batched model (population/search.py)
    objective = Objective(study, cfg, space, out_dir, deadline, threads)
    me = f"{socket.gethostname()}:{os.getpid()}"

    lock = AskLock(url)
    mine: list[int] = []

    def run_trial(trial):
        lock.release()  # the trial is claimed: the other workers may ask
        mine.append(trial._trial_id)
        trial.set_user_attr("worker", me)  # lets `fit --resume` tell a dead worker's trial from a live one
        return objective(trial)

    done = 0
    while True:
        lock.acquire()
        try:
            trials = study.get_trials(deepcopy=False)
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}  # each runs again as a new trial
            finished = sum(t.state.name in FINISHED and t.number not in retried for t in trials)
            running = sum(t.state.name == "RUNNING" for t in trials)
            if limit is not None and finished + running >= limit:
                break
            if deadline is not None and time.time() + _reserve(trials) + estimate_final(trials, cfg, objective.metric.maximize) >= deadline \
                    and not _first_chance(trials, deadline):
                break
            if study.user_attrs.get("stop"):
                break
            if size != 1 and cfg.search.fidelity == "epochs":
                from cotune.search.population import search as population  # torch & co.: only a population needs them
                top = population.LADDER[-1]
                room = min(top if size == "auto" else size, top if limit is None else limit - running - finished)
                if room > 1:
                    done += population.run_population(study, objective, lock, room, size, me)
                    continue
            try:
                study.optimize(run_trial, n_trials=1, catch=(Exception,))
            except Exception:  # optuna cannot tell a trial that another worker's heartbeat check has ended
                last = study._storage.get_trial(mine[-1]) if mine else None
                if last is None or last.state.name == "RUNNING":
                    raise
                print(f"cotune worker: trial {last.number} {TAKEN}", file=sys.stderr)
        finally:
            lock.release()
        done += 1
    return done


def _first_chance(trials, deadline: float) -> bool:
    """True while no trial has completed nor runs and the deadline is still ahead: a worker that started late (a
    loaded machine, a short budget) still runs one trial, which stops at its first validated epoch, so the search
    ends with a model rather than none."""
    return time.time() < deadline and not any(t.state.name in ("COMPLETE", "RUNNING") for t in trials)


def _reserve(trials) -> float:
    """Seconds a new trial needs to be worth starting: half the median of the finished ones (0 before any). A
    trial that runs out of time stops at its best epoch so far and still counts, so it need not fit whole."""
    secs = sorted(t.user_attrs["seconds"] for t in trials if "seconds" in t.user_attrs)
    return 0.5 * secs[len(secs) // 2] if secs else 0.0


def alive(pid: int) -> bool:
    """Whether the worker process `pid` on this machine still runs (`fit --resume` requeues the trials of dead ones)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker nobody has reaped yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
