"""The search's check of every part's labels, in a process of its own beside the trials.

    job = start(cfg, ds, out)                               # while the workers start; returns at once
    state["labels"] = finish(job, deadline, cfg, ds, out)   # once the trials are done

The check (`cotune.pipeline.label_check`: the audit's label_issues over every part) can take a minute
on images and sequences, whose proxy is a network trained in folds, so it must not hold the parent's
loop or outlast the budget: the process gets what is left of the search, and a check not done by then
is stopped and recorded as skipped; under a 2-minute budget it does not start. It runs at the lowest CPU
priority, on what the trials leave. Its out-of-fold probabilities land in the audit cache, where the
trials that clean labels find them. The result is out/labels/ (audit.json, audit.csv, summary.json).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cotune.search.space import parse_budget
from cotune.track import read_json, write_json

SUMMARY = "summary.json"
MIN_BUDGET = 120.0  # under this budget (s) the check is skipped: its minutes would come out of the trials'


def _job(cfg_dict: dict, out: str, threads: int) -> None:
    import torch

    from cotune.config import from_dict
    from cotune.pipeline import label_check, load_data
    torch.set_num_threads(threads)
    cfg = from_dict(cfg_dict)
    summary = label_check(cfg, load_data(cfg), Path(out))
    write_json(Path(out) / SUMMARY, summary or {"skipped": "regression: no labels to check"})


def start(cfg, ds, out: Path):
    """The check's process and its summary's path; {"after": True} without a budget (`finish` runs it),
    {"skipped": why} under MIN_BUDGET, None for regression (nothing to check)."""
    if ds.task == "regression":
        return None
    budget = parse_budget(cfg.search.budget)
    if budget is None:  # no deadline: the check runs once the trials are done (finish), competing with none
        return {"after": True}
    if budget < MIN_BUDGET:
        return {"skipped": f"a budget under {MIN_BUDGET / 60:.0f} minutes: its time goes to the trials"}
    where = out / "labels"
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / "config.json", cfg.to_dict())
    # the whole process at the lowest priority, its imports included: the trials and the workers' start come first
    proc = subprocess.Popen([sys.executable, "-m", "cotune.search.labels", str(where), str(cfg.runtime.threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(19))
    return proc, where / SUMMARY


def finish(job, deadline: float | None, cfg=None, ds=None, out: Path | None = None) -> dict | None:
    """The check's summary once the search is over: waiting for it at most a quarter of the time left (the
    rest is the final model's), stopping it if still running then; a search without a deadline runs it now."""
    if isinstance(job, dict) and job.get("after") and cfg is not None:
        from cotune.pipeline import label_check
        return label_check(cfg, ds, out / "labels")
    if job is None or isinstance(job, dict):
        return job
    proc, path = job
    try:
        proc.wait(None if deadline is None else max(0.0, (deadline - time.time()) / 4))
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(5)
        return {"skipped": "the label check did not finish within the budget"}
    if not path.is_file():
        return {"skipped": f"the label check failed (exit code {proc.returncode})"}
    return read_json(path)


if __name__ == "__main__":  # python -m cotune.search.labels OUT THREADS: the check itself
    _job(read_json(Path(sys.argv[1]) / "config.json"), sys.argv[1], int(sys.argv[2]))
