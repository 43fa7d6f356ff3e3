"""The search's check of every part's labels, in a process of its own beside the trials.

    job = start(cfg, ds, out)          # while the workers start; returns at once
    state["labels"] = finish(job, deadline)

The check (`cotune.pipeline.label_check`: the audit's label_issues over every part) can take a minute
on images and sequences, whose proxy is a network trained in folds, so it must not hold the parent's
loop or outlast the budget: the process gets what is left of the search, and a check not done by then
is stopped and recorded as skipped. Its out-of-fold probabilities land in the audit cache, where the
trials that clean labels find them. The result is out/labels/ (audit.json, audit.csv, summary.json).
"""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from cotune.track import read_json, write_json

SUMMARY = "summary.json"


def _job(cfg_dict: dict, out: str, threads: int) -> None:
    import torch

    from cotune.config import from_dict
    from cotune.pipeline import label_check, load_data
    torch.set_num_threads(threads)
    cfg = from_dict(cfg_dict)
    summary = label_check(cfg, load_data(cfg), Path(out))
    write_json(Path(out) / SUMMARY, summary or {"skipped": "regression: no labels to check"})


def start(cfg, ds, out: Path):
    """The check's process (None for regression: nothing to check)."""
    if ds.task == "regression":
        return None
    proc = multiprocessing.get_context("spawn").Process(target=_job, args=(cfg.to_dict(), str(out / "labels"),
                                                                          cfg.runtime.threads), daemon=True)
    proc.start()
    return proc, out / "labels" / SUMMARY


def finish(job, deadline: float | None) -> dict | None:
    """The check's summary once the search is over: waiting for it at most a quarter of the time left (the
    rest is the final model's), stopping it if still running then."""
    if job is None:
        return None
    proc, path = job
    proc.join(None if deadline is None else max(0.0, (deadline - time.time()) / 4))
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
        return {"skipped": "the label check did not finish within the budget"}
    if not path.is_file():
        return {"skipped": f"the label check failed (exit code {proc.exitcode})"}
    return read_json(path)
