"""The parent side of `cotune fit`: start workers, watch the study, refit the best, write the files.

    result = fit(cfg)        # cfg: a RunConfig with search.budget and/or search.trials

Files in the search directory: config.json, fit.json (state, for --resume), study.db (the Optuna study, unless --storage
points elsewhere), trials/NNNNN/ (each trial's run directory, or its error.txt), trials.csv (one row per trial),
importances.json, workers.log, final/ (the model), mlflow.db + mlartifacts/ (MLflow: a parent run with the final model
as a pyfunc model, runs:/<run_id>/model, and its test metrics; a nested run per trial), and report.html (built by
api.fit). A search that fails before its first trial (a storage that cannot be opened, say) removes what it wrote,
so a bad command leaves nothing behind, as one with bad input does.
fit.json's 'best' is the trial the final model is made from: the best on validation, or the one that
search.reeval's cross-validation of the top trials chose ('reeval' records how, reeval.py).
`run_workers` (start worker processes on a study and watch them) serves `cotune scale` too.
"""
from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cotune.config import RunConfig, explicit, from_dict
from cotune.errors import ConfigError, CotuneError, one_line
from cotune.evaluate import primary_metric
from cotune.mlflow_model import track_model
from cotune.search import labels
from cotune.search.ensemble import decide, ensemble_choice, final_model
from cotune.search.reeval import reevaluate
from cotune.search.space import modality_base, parse_budget, parse_population, search_space, start_params
from cotune.search.storage import import_optuna, open_study, storage_url
from cotune.search.tracking import track_study
from cotune.search.worker import alive
from cotune.track import default_out, read_json, write_csv, write_json

GRACE_S = 30.0  # workers still running this long past the deadline are ended
READY = ".workers-go"  # `cotune fit` creates it when the study is ready for the workers it started early


@dataclass
class FitResult:
    path: Path
    study_name: str
    best: dict          # best trial: number, value, params, run_dir
    final: object       # RunResult of the final model
    test: dict          # final test metrics
    counts: dict        # trials per state
    how: dict           # how the final model was made (fit.json 'final'): kind, trials, epochs, trained_on, summary
    report: Path | None = None       # report.html, when the API built it (api.fit's report=True)
    report_note: str | None = None   # why report.html could not be built; the search itself stands
    mlflow: dict | None = None       # the MLflow run and its model (fit.json 'mlflow'); None when not tracked


def fit(cfg: RunConfig, fixed: set[str] | None = None, *, resume: bool = False, storage: str | None = None,
        study_name: str | None = None, live: bool = True, console=None, started_at: float | None = None) -> FitResult:
    """Search, then refit the best config on train+val and evaluate it once on test.

    started_at: the Unix time the budget counts from (default: now; `cotune fit` passes its process's start)."""
    t0 = min(time.time(), started_at) if started_at is not None else time.time()
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if resume:
        if not (out / "fit.json").is_file():
            raise ConfigError(f"Nothing to resume in {str(out)!r} (no fit.json); drop --resume to start a new search there.")
        state = read_json(out / "fit.json")
        cfg, storage, study_name = from_dict(state["config"]), state["storage"], state["study"]
        fixed = set(state["fixed"])
        elapsed = state.get("elapsed", 0.0)
    else:
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"Run directory {str(out)!r} already holds a run; choose another --out or pass --resume.")
        elapsed = 0.0
    budget = parse_budget(cfg.search.budget)
    parse_population(cfg.search.population)
    if budget is None and cfg.search.trials is None:
        raise ConfigError("A search needs a limit: pass --budget (e.g. 10m) and/or --trials (e.g. 50).")
    if cfg.data.split.val <= 0:
        raise ConfigError("A search ranks trials on the validation part: set data.split.val > 0 (e.g. 0.15).")
    deadline = None if budget is None else t0 + budget - elapsed
    new_root = None if resume else _new_root(out)  # what a search that fails before its first trial removes
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    name = study_name or out.name
    # the workers start first: they import torch & co. while this process does (seconds of the budget on a loaded
    # machine), then wait for the study; a config or source that turns out invalid below ends them
    go = out / READY
    go.unlink(missing_ok=True)
    procs: list = []
    try:
        procs = spawn_workers(url, name, cfg.search.workers, deadline, out, cfg.runtime.threads, wait_for=go)
        cfg, fixed, space, ds, metric = _check(cfg, fixed, resume, state if resume else None)
        return _search(cfg, fixed, space, ds, metric, out, url, name, state_args=(budget, elapsed, t0, deadline, resume),
                       procs=procs, go=go, live=live, console=console)
    except BaseException:
        for p in procs:
            p.terminate()
        if not resume and not go.exists():  # no trial began (a storage that cannot be opened, ...): leave nothing
            _discard(out, new_root, procs)
        raise
    finally:
        go.unlink(missing_ok=True)


def _check(cfg: RunConfig, fixed: set[str] | None, resume: bool, state: dict | None):
    """The search's data, metric and space, checked before the study opens: (cfg, fixed, space, ds, metric)."""
    from cotune.distributed import check_nproc
    from cotune.pipeline import load_data
    check_nproc(cfg.search.final_nproc, cfg.runtime.device, "search.final_nproc")  # now, not after the search
    ds = load_data(cfg)  # validates the source before the study is written
    metric = primary_metric(ds.task, cfg.search.metric)  # what ranks the trials: the one source, recorded for the report
    fixed = fixed or explicit(cfg)
    if not resume:
        cfg = modality_base(cfg, fixed, ds.modality)
    space = search_space(cfg, fixed, ds.modality, ds.task, text=bool(ds.text))
    if resume and "space" in state:  # the study's own space: other defaults (a new version, no GPU here) would clash
        space = {k: tuple(v) for k, v in state["space"].items()}
    if not space:
        raise ConfigError("Every searchable knob is fixed by the config; unset some or widen search.space.")
    return cfg, fixed, space, ds, metric


def _new_root(out: Path) -> Path | None:
    """The outermost folder that out.mkdir(parents=True) will create; None when `out` exists already."""
    if out.exists():
        return None
    top = out.absolute()
    while not top.parent.exists():
        top = top.parent
    return top


def _discard(out: Path, new_root: Path | None, procs: list) -> None:
    """Remove what a search wrote before its first trial: the folders it created, or, in a --out folder that
    existed (empty, or the search would have refused it), what it put there."""
    import shutil
    for p in procs:  # they hold workers.log open; let them go first
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    if new_root is not None:
        shutil.rmtree(new_root, ignore_errors=True)
        return
    for child in out.iterdir() if out.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with suppress(OSError):  # the error that ended the search is the one to report
                child.unlink(missing_ok=True)


def _search(cfg, fixed, space, ds, metric, out: Path, url: str, name: str, *, state_args, procs, go: Path, live, console):
    """fit() once its input is checked and its workers are starting: the study, the run, the final model."""
    budget, elapsed, t0, deadline, resume = state_args
    state = {"config": cfg.to_dict(), "fixed": sorted(fixed), "storage": url, "study": name,
             "budget_s": budget, "elapsed": elapsed, "space": {k: list(v) for k, v in space.items()}}
    write_json(out / "fit.json", state)
    write_json(out / "config.json", cfg.to_dict())
    state["metric"] = metric.to_dict()
    study, _, _ = open_study(url, name, cfg, space, metric)
    study.set_user_attr("out", str(out.resolve()))
    study.set_user_attr("stop", False)
    study.set_user_attr("deadline", deadline)  # workers started elsewhere (`cotune worker`) honour it too
    if cfg.search.warm_start and cfg.search.sampler != "grid" and not study.get_trials(deepcopy=False):
        train_rows = int(len(ds.y) * (1 - cfg.data.split.val - cfg.data.split.test) * cfg.data.fraction)
        study.enqueue_trial(start_params(cfg, space, ds.modality, rows=train_rows))
    if resume:
        requeue_interrupted(study)  # trials the killed search's workers left RUNNING
    tracker = track_study(study, cfg, out)  # the MLflow parent run of the trials' runs
    saved = [time.time()]

    def tick(view) -> None:
        if live:
            view.update(trial_table(study, study.get_trials(deepcopy=False), deadline))
        if time.time() - saved[0] > 2:  # a killed search resumes with the budget it had left
            write_json(out / "fit.json", {**state, "elapsed": state["elapsed"] + time.time() - t0})
            saved[0] = time.time()

    jobs: dict = {}

    def started() -> None:  # while the workers start, the idle parent fits the baselines on the same rows
        from cotune.baselines import fit_baselines_safe
        jobs["labels"] = labels.start(cfg, ds, out)  # beside the trials; those that clean labels find its proxy cached
        _warm_up()
        state["baselines"] = fit_baselines_safe(cfg, ds, threads=cfg.runtime.threads)

    try:
        with live_view(live, console, refresh=2, transient=False) as view:
            go.touch()  # the study is ready: the waiting workers open it
            run_workers(study, url, cfg.search.workers, out, cfg.runtime.threads, deadline=deadline, tick=lambda: tick(view),
                        started=started, procs=procs)
            if live:
                view.update(trial_table(study, study.get_trials(deepcopy=False), deadline))
    except KeyboardInterrupt:
        tracker.close("KILLED")
        labels.finish(jobs.get("labels"), time.time())
        raise
    state["labels"] = labels.finish(jobs.get("labels"), deadline, cfg, ds, out)
    trials = study.get_trials(deepcopy=False)
    write_trials(out, trials)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if not done:
        tracker.close("FAILED")
        raise CotuneError(f"No trial finished in the budget (see {out / 'trials'} and workers.log); "
                          "raise --budget or --trials, or narrow the space.")
    best = best_trial(study)
    importances(study, out)
    best, state["reeval"] = reevaluate(cfg, study, done, best, deadline)  # the trial the final model refits
    choice = ensemble_choice(cfg, study, done, best)
    final, how = final_model(cfg, best, choice, out, deadline)
    calibration = decide(cfg, metric, best, choice, how, final)  # temperature and threshold, on held-out predictions
    if calibration is not None:
        how["calibration"] = {k: calibration.get(k) for k in ("temperature", "kept", "threshold", "skipped") if k in calibration}
    if "baselines" in state:  # the baselines see the final model's cleaning, when the budget allows
        from cotune.baselines import match_cleaning
        state["baselines"] = match_cleaning(state["baselines"], cfg, cfg.replace(**best.params), ds, deadline,
                                            threads=cfg.runtime.threads)
    state["ensemble"] = None if choice is None else {k: v for k, v in choice.items() if k not in ("trials", "metrics")}
    state["final"] = how  # how the final model was made, for the report and the command's summary
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best_d = {"number": best.number, "values": best.values, "params": best.params, "run_dir": best.user_attrs.get("run_dir")}
    state.update(elapsed=elapsed + time.time() - t0, best=best_d, counts=counts, test=final.test, finished=True,
                 mlflow=track_model(tracker, out / "final", ds.X))  # final/ as the run's pyfunc model, runs:/<id>/model
    write_json(out / "fit.json", state)
    tracker.set_tags({"best_trial": best.number, **{f"best.{k}": v for k, v in best.params.items()}})
    tracker.log_summary(final.metrics)
    tracker.close()
    return FitResult(out, name, best_d, final, final.test, counts, how, mlflow=state["mlflow"])


def best_trial(study):
    """The best trial; with two objectives, the Pareto front's best quality."""
    if len(study.directions) == 1:
        return study.best_trial
    sign = -1 if study.directions[0].name == "MINIMIZE" else 1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


# ---------------------------------------------------------------------------------------------
# worker processes

def run_workers(study, url: str, n: int, out: Path, threads: int, *, deadline: float | None = None,
                tick: Callable[[], None] | None = None, started: Callable[[], None] | None = None,
                poll_s: float = 1.0, procs: list | None = None) -> None:
    """Start n `cotune worker` processes on the study, each with `threads` CPU threads (runtime.threads of the
    study's config, whether set in YAML, with --set or left at its default), and wait for them, calling `started()` once they are up
    and `tick()` every `poll_s`; end those still running GRACE_S past the deadline. On Ctrl-C: set the study's
    stop flag (workers elsewhere see it too), end them, and re-raise. procs: workers already started
    (spawn_workers(..., wait_for=...)) to watch instead of starting new ones."""
    procs = procs if procs is not None else spawn_workers(url, study.study_name, n, deadline, out, threads)
    try:
        if started is not None:
            started()
        while any(p.poll() is None for p in procs):
            if tick is not None:
                tick()
            if deadline is not None and time.time() > deadline + GRACE_S:
                for p in procs:
                    p.terminate()
            time.sleep(poll_s)
        for i, p in enumerate(procs):  # a crashed worker (a bug, memory): said, not silently a shorter search
            if p.returncode not in (0, -signal.SIGTERM):
                print(f"cotune: worker {i} stopped with exit code {p.returncode} (its error is in {out / 'workers.log'})",
                      file=sys.stderr)
    except KeyboardInterrupt:
        study.set_user_attr("stop", True)
        for p in procs:
            p.terminate()
        raise


def spawn_workers(url: str, name: str, n: int, deadline: float | None, out: Path, threads: int = 1,
                  wait_for: Path | None = None) -> list[subprocess.Popen]:
    """N `cotune worker` processes with `threads` CPU threads each; with wait_for, each imports the training
    stack and then waits for that file to exist before it opens the study (the parent starts them early).

    One thread per process (runtime.threads' default) is the measured default for small models on these 2-core machines: 2 threads
    ran 0.8-1.1x the time of 1 when idle and 4-5x slower beside another busy process; parallelism comes
    from --workers. With more workers than cores the threads still never exceed one per worker."""
    cmd = [sys.executable, "-m", "cotune.cli", "worker", "--storage", url, "--study", name, "--threads", str(threads),
           "--out", str(out)] + (["--deadline", repr(deadline)] if deadline else []) + (
           ["--wait-for", str(wait_for)] if wait_for is not None else [])
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


@contextmanager
def live_view(live: bool, console, *, refresh: float, transient: bool):
    """A rich Live view while workers run, or nothing (the caller's updates are skipped when not live).

    Rich ends the view's last line only on a terminal; written to a pipe or a file (`make demo | tee`, CI logs)
    the next print would start on that line, so the line is ended here."""
    if not live:
        yield None
        return
    from rich.console import Console
    from rich.live import Live
    view = Live(console=console or Console(), refresh_per_second=refresh, transient=transient)
    try:
        with view:
            yield view
    finally:
        c = view.console
        if not transient and not c.is_terminal and not c.is_jupyter:  # a transient view leaves nothing there
            c.line()


def requeue_interrupted(study) -> list[int]:
    """Trials left RUNNING by workers that are gone (the killed search's): FAIL them and queue each again with its
    knobs, as optuna's heartbeat does, but now instead of after its grace period. Returns their numbers."""
    optuna = import_optuna()
    from optuna.trial import TrialState
    storage, host, done = study._storage, socket.gethostname(), []
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        where, _, pid = t.user_attrs.get("worker", "").rpartition(":")
        if where and (where != host or alive(int(pid))):
            continue  # a live worker (here, or on another machine) is still on it
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted: its worker died; queued again")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile
        history = [*t.system_attrs.get("retry_history", []), t.number]
        if len(history) <= 1:  # max_retry=1, as the heartbeat's RetryHeartbeatStaleTrialCallback
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=t.params, distributions=t.distributions,
                system_attrs={"failed_trial": t.system_attrs.get("failed_trial", t.number), "retry_history": history}))
        done.append(t.number)
    return done


def _warm_up() -> None:
    """The first optimizer a process builds imports torch._dynamo (seconds): pay that while the workers search,
    not in the final refit after them, which the budget has to cover."""
    import torch
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


# ---------------------------------------------------------------------------------------------
# what the parent shows and writes

def trial_table(study, trials, deadline):
    from rich.table import Table
    n = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best = best_trial(study) if n["COMPLETE"] else None
    left = "" if deadline is None else f", {max(0, deadline - time.time()):.0f} s left"
    title = (f"trials: {n['COMPLETE']} complete, {n['RUNNING']} running, {n['PRUNED']} pruned, {n['FAIL']} failed{left}"
             + (f" | best #{best.number}: {best.values[0]:.4f}" if best else ""))
    table = Table("#", "state", "value", "family", "width", "lr", "epochs", "s", "note", title=title, title_justify="left")
    for t in sorted(trials, key=lambda t: t.number)[-12:]:
        p, u = t.params, t.user_attrs
        table.add_row(str(t.number), t.state.name.lower(), "" if t.values is None else f"{t.values[0]:.4f}",
                      str(p.get("model.family", "")), str(p.get("model.width", "")),
                      "" if "train.lr" not in p else f"{p['train.lr']:.1e}", str(u.get("epochs_run", "")),
                      f"{u.get('seconds', 0):.0f}", str(u.get("fail_reason", ""))[:40])
    return table


def write_trials(out: Path, trials) -> None:
    """trials.csv: one row per trial with its state, value, knobs, time and failure reason."""
    rows = [{"number": t.number, "state": t.state.name, "value": None if t.values is None else t.values[0],
             "second_objective": None if t.values is None or len(t.values) < 2 else t.values[1],
             "seconds": t.user_attrs.get("seconds"), "epochs_run": t.user_attrs.get("epochs_run"),
             "pruned_at": max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else None,
             **{k: t.user_attrs.get(k) for k in ("pruned_fraction", "fail_reason", "population")}, **t.params} for t in trials]
    write_csv(out / "trials.csv", rows)


def importances(study, out: Path) -> dict:
    """Parameter importances (fANOVA) over finished trials, each marked as a data, model or train knob."""
    optuna, note = import_optuna(), None
    try:
        imp = optuna.importance.get_param_importances(study, target=lambda t: t.values[0],
                                                      evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception as err:  # too few trials, or a single distinct value
        imp, note = {}, one_line(err)[:200]
    result = {"importances": [{"knob": k, "stage": k.split(".")[0], "importance": float(v)} for k, v in imp.items()],
              "note": note}
    write_json(out / "importances.json", result)
    return result
