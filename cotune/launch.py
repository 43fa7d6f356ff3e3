"""One run trained by N processes: `cotune train --nproc N`, and a search's final model (search.final_nproc).

    result = run(cfg, nproc=2)   # the RunResult pipeline.run(cfg) returns, trained by 2 processes under DDP

nproc=1 is pipeline.run in this process. Otherwise this process checks N (at least 1; no more than the CPU cores,
or the GPUs on CUDA), the run directory and the batch, writes the resolved config to a job folder outside the run
directory, and starts `python -m torch.distributed.run --standalone --nproc_per_node N -m cotune.launch JOB`, each
rank with runtime.threads threads. Each rank joins the process group (gloo on CPU, nccl on CUDA) and calls
pipeline.run; rank 0 alone writes the run directory (cotune.distributed says how the ranks share the work).
A CotuneError in a rank comes back here as that error, one line, whichever rank raised it; a bug comes back with
its rank's traceback. The RunResult is read back from the run directory (metrics.json, config.json) and rank 0's
training record. A run that cannot train leaves nothing behind, as in one process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path

from cotune import distributed
from cotune.config import RunConfig, from_dict
from cotune.errors import ConfigError, CotuneError, one_line
from cotune.pipeline import RunResult, prepare_out, run as run_here
from cotune.track import default_out, read_json, write_json
from cotune.train import TrainResult

LOG_TAIL = 4000  # characters of torchrun's output shown when it fails without a rank's own report


class LaunchError(RuntimeError):
    """A training process failed on something that is not bad input (a bug); the message holds its traceback."""


def run(cfg: RunConfig, *, nproc: int = 1, resume: bool = False, progress: bool | None = None,
        refit_epochs: int | None = None, checkpoint: bool = True, on_eval=None, tracker=None) -> RunResult:
    """pipeline.run(cfg, ...) in this process (nproc=1) or in `nproc` processes under torchrun. With resume, cfg is
    only where the run is (cfg.out): the run's saved config is used. tracker (e.g. MLflow) sees the run's params and
    metrics: as they come in one process, from the run directory's files once N processes are done."""
    distributed.check_nproc(nproc, cfg.runtime.device)
    if nproc == 1:
        return run_here(cfg, resume=resume, progress=progress, on_eval=on_eval, refit_epochs=refit_epochs,
                        checkpoint=checkpoint, tracker=tracker)
    if on_eval is not None:
        raise ConfigError("on_eval sees each epoch in this process, but with nproc > 1 the training runs in other "
                          "processes; read the run's metrics.jsonl as it grows, or train with nproc=1.")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    prepare_out(out, resume)
    cfg = from_dict(read_json(out / "config.json")) if resume else cfg.replace(out=str(out))  # every rank: one out
    distributed.check_nproc(nproc, cfg.runtime.device)  # the saved config's device, on resume
    distributed.check_batch(cfg.train.batch_size, nproc)
    job = Path(tempfile.mkdtemp(prefix="cotune-ddp-"))
    try:
        write_json(job / "job.json", {"config": cfg.to_dict(), "resume": resume, "progress": progress,
                                      "refit_epochs": refit_epochs, "checkpoint": checkpoint})
        threads = str(cfg.runtime.threads)
        package = str(Path(__file__).resolve().parents[1])  # the ranks import this cotune
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   PYTHONPATH=os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "cotune.launch", str(job)]
        with open(job / "torchrun.log", "wb") as log:  # the ranks' stderr too; rank 0's progress bar goes to stdout
            proc = subprocess.Popen(cmd, stderr=log, env=env)
            try:
                rc = proc.wait()
            except BaseException:  # Ctrl-C: torchrun passes it on to the ranks; a run keeps its checkpoint
                proc.terminate()
                proc.wait()
                raise
        if rc != 0:
            err = rank_error(job, rc)
            if isinstance(err, CotuneError) and not resume:
                shutil.rmtree(out, ignore_errors=True)  # a run that cannot train leaves nothing behind
            raise err
        metrics = read_json(out / "metrics.json")
        if tracker is not None:
            replay(tracker, out)
        return RunResult(path=out, metrics={k: metrics[k] for k in ("val", "test") if k in metrics},
                         train=TrainResult(**read_json(job / "train.json")), config=from_dict(read_json(out / "config.json")),
                         n_params=int(metrics["train"]["n_params"]))
    finally:
        shutil.rmtree(job, ignore_errors=True)


def replay(tracker, out: Path) -> None:
    """A finished run's params, per-epoch metrics and final metrics into tracker, read from its files."""
    tracker.log_params(from_dict(read_json(out / "config.json")).flat())
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row.get("step"))
    tracker.log_summary(read_json(out / "metrics.json"))
    tracker.close()


def rank_error(job: Path, rc: int) -> Exception:
    """The exception a failed launch raises: the lowest rank's CotuneError (its own class, its one-line message),
    else the lowest rank's bug with its traceback, else torchrun's exit code and the end of its output."""
    reports = sorted((read_json(f) for f in job.glob("error-*.json")), key=lambda r: r["rank"])
    for r in reports:
        if r["kind"] == "input":
            cls = _error_classes().get(r["type"], CotuneError)
            try:
                return cls(r["message"])
            except TypeError:  # a subclass with its own constructor
                return CotuneError(r["message"])
    if reports:
        return LaunchError(f"training process {reports[0]['rank']} failed:\n{reports[0]['traceback']}")
    log = job / "torchrun.log"
    tail = log.read_text(errors="replace")[-LOG_TAIL:] if log.is_file() else ""
    return LaunchError(f"torchrun exited with code {rc} before a training process reported why:\n{tail}")


def _error_classes() -> dict[str, type]:
    """Every CotuneError subclass loaded here, by name (cotune.train's TrainingError included)."""
    found, todo = {}, [CotuneError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def rank_main(job: Path) -> int:
    """One rank: join the group, run the pipeline, report. Returns the process's exit code."""
    spec = read_json(job / "job.json")
    rank = int(os.environ.get("RANK", "0"))
    try:
        distributed.init(spec["config"]["runtime"]["device"])
        res = run_here(from_dict(spec["config"]), resume=spec["resume"], refit_epochs=spec["refit_epochs"],
                       checkpoint=spec["checkpoint"], progress=spec["progress"] if rank == 0 else False)
        if rank == 0:
            write_json(job / "train.json", asdict(res.train))
        return 0
    except CotuneError as err:
        write_json(job / f"error-{rank}.json", {"rank": rank, "kind": "input", "type": type(err).__name__,
                                                "message": one_line(err)})
        return err.exit_code
    except Exception:
        write_json(job / f"error-{rank}.json", {"rank": rank, "kind": "bug", "traceback": traceback.format_exc()})
        return 1
    finally:
        distributed.close()


if __name__ == "__main__":
    sys.exit(rank_main(Path(sys.argv[1])))
