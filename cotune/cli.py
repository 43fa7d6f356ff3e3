"""The `cotune` command: parses, calls one API function, prints where the results went.

Bad input (a CotuneError) prints one line to stderr and exits with code 2, never a traceback.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cotune.errors import EXIT_INTERRUPTED, CotuneError, one_line
from cotune.show import out_console, print_dialect, print_metrics, print_mlflow, print_report

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Co-optimize a dataset and the training of a neural network on it.")
err_console = Console(stderr=True)


def friendly(fn):
    """Turn a CotuneError into 'error: <message>' and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CotuneError as err:
            err_console.print(f"[bold red]error:[/] {escape(one_line(err))}", highlight=False, soft_wrap=True)  # 'cotune[track]' is no markup
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: a run can be continued with --resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    return wrapper


STARTED: list[float] = []  # main() puts the process's start here: the `cotune` command, not the app called in-process


def command_start() -> float:
    """When the command started: its process's start under `cotune` / `python -m cotune.cli` (so a budget counts
    the interpreter's start-up), else now (the app called in a long-lived process: a test, a notebook)."""
    return STARTED[0] if STARTED else time.time()


def process_start() -> float:
    """Unix time at which this process started (Linux: from /proc; elsewhere: now), so that the budget of
    `cotune fit --budget` counts the command's own start-up too (importing torch and friends takes seconds)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")  # btime is whole seconds, rounded down: never late
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


SET_HELP = "Override one config key, e.g. --set train.lr=1e-3 (repeatable). Keys: see `cotune knobs`."


@app.command()
@friendly
def train(config: Optional[Path] = typer.Argument(None, help="YAML config; every key has a default."),
          set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<data>-<time>)."),
          resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out from its last checkpoint."),
          mlflow: Optional[str] = typer.Option(None, "--mlflow", help="Log the run and its model (pyfunc) to this MLflow tracking URI (default: no tracking)."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
          nproc: int = typer.Option(1, "--nproc", help="Training processes (torchrun + DDP), each on its share of every batch.")):
    """Train one model with fixed knobs and write a run directory (model, metrics, history)."""
    from cotune import api
    if resume and (config is not None or set_):
        raise CotuneError("--resume continues the run in --out with its saved config; drop the CONFIG and --set arguments.")
    result = api.train(config, overrides=set_, out=out, resume=resume, progress=False if quiet else None, nproc=nproc,
                       mlflow=mlflow)
    print_dialect(result.path)
    print_metrics(result)
    print_mlflow(result.mlflow)


@app.command()
@friendly
def audit(data: str = typer.Argument(..., help="CSV / Parquet / .npz / image folder / built-in name."),
          target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column of a table."),
          config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (split, columns, ...)."),
          set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
          checks: Optional[str] = typer.Option(None, "--checks", help="Comma-separated checks to run (default: all that apply)."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write audit.json and audit.csv here.")):
    """Find data-quality problems (duplicates, leakage, outliers, label issues, ...); changes nothing."""
    from cotune import api
    report = api.audit(data, target=target, config=config, overrides=set_, out=out,
                       checks=[c.strip() for c in checks.split(",") if c.strip()] if checks else None)
    report.print(out_console)
    if out is not None:
        out_console.print(f"audit written to [bold]{out}[/] (audit.json, audit.csv)")


@app.command()
@friendly
def fit(data: Optional[str] = typer.Argument(None, help="CSV / Parquet / .npz / image folder / built-in name."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column of a table."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; knobs set there are fixed."),
        set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP + " A knob set here is not searched."),
        budget: Optional[str] = typer.Option(None, "--budget", "-b", help="Wall time for everything, e.g. 10m."),
        trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Stop after this many trials."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Trials at once (worker processes)."),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe, random, grid, cmaes, nsga2."),
        objective: Optional[str] = typer.Option(None, "--objective", help="quality, quality,size or quality,latency."),
        metric: Optional[str] = typer.Option(None, "--metric", "-m", help="What ranks the trials: accuracy, balanced_accuracy, f1_macro, f1, roc_auc, log_loss, robust_accuracy (set train.adv_epsilon); rmse, mae, r2."),
        storage: Optional[str] = typer.Option(None, "--storage", help="Study storage URL (default: SQLite in --out)."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the --out folder name)."),
        mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI (default: SQLite in --out; 'none': off)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
        resume: bool = typer.Option(False, "--resume", help="Continue the search in --out, keeping finished trials."),
        no_report: bool = typer.Option(False, "--no-report", help="Skip report.html (build it later with `cotune report OUT`)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No live table.")):
    """Search data and model knobs as one space, train the final model, test it once, write report.html."""
    from cotune import api
    if resume and (data is not None or config is not None or set_):
        raise CotuneError("--resume continues the search in --out with its saved config; drop DATA, --config and --set.")
    res = api.fit(data, target=target, config=config, overrides=set_, budget=budget, trials=trials, workers=workers,
                  sampler=sampler, objective=objective, metric=metric, storage=storage, started_at=command_start(), study=study, mlflow=mlflow, out=out, resume=resume,
                  live=not quiet, console=out_console, report=not no_report)
    print_dialect(res.final.path, res.final.path / "members" / "0", res.best.get("run_dir"))
    print_metrics(res.final, res.how)
    c = res.counts
    out_console.print(f"trials: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed; best #{res.best['number']}")
    from cotune.track import read_json
    labels = read_json(res.path / "fit.json").get("labels") or {}
    if labels.get("by_part"):
        out_console.print("labels that look wrong: " + ", ".join(f"{k} {v}" for k, v in labels["by_part"].items())
                          + f" (trust {labels['trust']}; {res.path / 'labels' / 'audit.csv'})", highlight=False)
    out_console.print(f"search directory: [bold]{res.path}[/] (final model in {res.path / 'final'})")
    print_mlflow(res.mlflow)
    print_report(res)


@app.command(hidden=False)
@friendly
def worker(storage: str = typer.Option(..., "--storage", help="Study storage URL (sqlite:///... or postgresql://...)."),
           study: str = typer.Option(..., "--study", help="Study name."),
           threads: int = typer.Option(1, "--threads", help="CPU threads for this worker."),
           out: Optional[Path] = typer.Option(None, "--out", help="Where trial directories go (default: the study's)."),
           deadline: Optional[float] = typer.Option(None, "--deadline", help="Unix time after which no trial starts."),
           wait_for: Optional[Path] = typer.Option(None, "--wait-for", hidden=True,
                                                   help="Start once this file exists (`cotune fit` starts its workers early).")):
    """Join a search from another process or machine: run its trials until it is done."""
    from cotune.search.worker import work
    import torch
    torch.set_num_threads(threads)
    import cotune.pipeline  # noqa: F401  the training stack now, not in the first trial (its heartbeat running)
    if wait_for is not None:  # spawned before the study is ready: it imported the stack meanwhile; now wait
        parent = os.getppid()
        while not wait_for.exists():
            if os.getppid() != parent or (deadline is not None and time.time() > deadline):
                out_console.print("worker ran 0 trial(s): the search did not start")
                return
            time.sleep(0.05)
    n = work(storage, study, deadline=deadline, threads=threads, out=str(out) if out else None)
    out_console.print(f"worker ran {n} trial(s)")


@app.command()
@friendly
def predict(run: Path = typer.Argument(..., help="Run directory of a finished run, or a search directory (its final model)."),
            data: str = typer.Argument(..., help="CSV / Parquet / .npz (X) / image folder / built-in name."),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write predictions here as CSV (default: print the first rows)."),
            engine: str = typer.Option("torch", "--engine", help="torch (the saved weights) or onnx (the export `cotune compress` chose, through ONNX Runtime; no torch import)."),
            drift_report: Optional[Path] = typer.Option(None, "--drift-report", help="Write the drift check's details here (JSON: per column the test, p-value, PSI, flagged; the classifier test)."),
            no_drift: bool = typer.Option(False, "--no-drift", help="Skip comparing the rows with the training rows.")):
    """Predict classes and probabilities (or values) for new data with a trained run; warn when the rows differ from the training rows."""
    from cotune import api
    hint = f"details: {drift_report}" if drift_report else "details: --drift-report FILE"
    frame = api.predict(run, data, out=out, engine=engine, drift=not no_drift, drift_report=drift_report,
                        warn=lambda line: err_console.print(f"drift warning: {line} ({hint})", highlight=False, soft_wrap=True))
    if out is None:
        out_console.print(frame.head(20).to_string(index=False))
        if len(frame) > 20:
            out_console.print(f"... {len(frame)} rows; pass --out FILE.csv for all of them")
    else:
        out_console.print(f"{len(frame)} predictions written to [bold]{out}[/]")
    if drift_report is not None:
        out_console.print(f"drift report: [bold]{drift_report}[/]")


@app.command("label-next")
@friendly
def label_next(data: Optional[str] = typer.Argument(None, help="CSV / Parquet / .npz / image folder with unlabeled rows."),
               labeled: Optional[str] = typer.Option(None, "--labeled", "--target", "-t", help="The label column of a table: rows whose cell is empty are the pool to rank (.npz: the label array, default y, -1 or NaN = unlabeled; image folders: the images in unlabeled/)."),
               n: int = typer.Option(50, "--n", help="How many rows to propose."),
               strategy: str = typer.Option("mix", "--strategy", help="mix (k-center among the most uncertain), margin, entropy, kcenter, random."),
               config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config of the model to train on the labeled rows."),
               set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
               budget: Optional[str] = typer.Option(None, "--budget", "-b", help="Search the model for this long (e.g. 30s) instead of training the config's."),
               trials: Optional[int] = typer.Option(None, "--trials", help="Search this many trials instead of training the config's."),
               workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Search trials at once (worker processes)."),
               candidates: int = typer.Option(10, "--candidates", help="mix: k-center picks among the n x this many smallest-margin rows."),
               seed: int = typer.Option(0, "--seed", help="Seed of the selection (and of the training, unless the config sets it)."),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the ranked rows here as CSV (default: print them)."),
               run_dir: Optional[Path] = typer.Option(None, "--run", help="Keep the trained model's directory here (default: a temporary one)."),
               quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or live table.")):
    """Active learning: train on the labeled rows, rank the unlabeled ones, propose the N to label next."""
    from cotune import api
    res = api.label_next(data, target=labeled, n=n, strategy=strategy, config=config, overrides=set_, budget=budget,
                         trials=trials, workers=workers, seed=seed, out=out, run_dir=run_dir, candidates=candidates,
                         progress=False if quiet else None, live=not quiet, console=out_console,
                         started_at=command_start())
    if out is None:
        out_console.print(res.picks.head(20).to_string(index=False))
    out_console.print(res.summary(), highlight=False, soft_wrap=True)


@app.command()
@friendly
def scale(run: Path = typer.Argument(..., help="A finished search (`cotune fit`) or run (`cotune train`) directory."),
          set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
          sizes: Optional[int] = typer.Option(None, "--sizes", help="Model sizes in the grid (scale.sizes)."),
          fractions: Optional[int] = typer.Option(None, "--fractions", help="Training-set sizes (scale.fractions)."),
          seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per point (scale.seeds)."),
          workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Runs at once (worker processes)."),
          compute: Optional[float] = typer.Option(None, "--compute", help="Training FLOPs to plan the compute-optimal size for."),
          extrapolate: bool = typer.Option(False, "--extrapolate", help="mnist1d: also train on 2x and 4x generated rows."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study directory (default RUN/scale); rerun to resume."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line.")):
    """More data or a bigger model? Train RUN's configuration over sizes x data, fit the scaling law, advise."""
    from cotune import api
    from cotune.scale.law import JointLaw
    res = api.scale(run, overrides=set_, sizes=sizes, fractions=fractions, seeds=seeds, workers=workers,
                    compute=compute, extrapolate=extrapolate or None, out=out, live=not quiet, console=out_console)
    law = JointLaw.from_dict(res.summary["law"])
    out_console.print(f"fit over {res.summary['points']} runs: {law.describe()}", highlight=False, soft_wrap=True)
    for line in res.summary["text"]:
        out_console.print(line, highlight=False, soft_wrap=True)
    out_console.print(f"scaling study: [bold]{res.path}[/] (scale.csv, scale.json; {res.ran} runs trained now); "
                      f"curves and advice in the report: cotune report {run}", highlight=False, soft_wrap=True)


@app.command()
@friendly
def compress(run: Path = typer.Argument(..., help="A finished search (`cotune fit`) or run (`cotune train`) directory."),
             tolerance: float = typer.Option(0.5, "--tolerance", help="Validation metric the chosen variant may lose: points of a bounded metric (accuracy, f1, r2, ...), percent of a loss (rmse, log_loss)."),
             prefer: str = typer.Option("size", "--prefer", help="What the chosen variant minimises: size or latency."),
             batch: str = typer.Option("1,256", "--batch", help="Batch sizes to time, comma-separated."),
             prune: str = typer.Option("0.75,0.5,0.25", "--prune", help="Width shares of the pruned variants, comma-separated ('none': no pruning)."),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines.")):
    """ONNX export, int8, pruning and distillation of RUN's model: the size / latency / accuracy table, and the variant to ship."""
    from cotune import api
    res = api.compress(run, tolerance=tolerance, prefer=prefer, batches=batch, keeps=prune,
                       console=None if quiet else out_console)
    metric = next(k[4:] for k in res.rows[0] if k.startswith("val_"))
    batches = [k.rsplit("_b", 1)[1] for k in res.rows[0] if k.startswith("latency_ms_b")]
    table = Table("variant", "params", "bytes", *[f"ms @{b}" for b in batches], f"val {metric}", f"test {metric}", "")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for r in res.rows:
        table.add_row(r["variant"], f"{r['params']:,}", f"{r['bytes']:,}", *[f"{r[f'latency_ms_b{b}']:.3f}" for b in batches],
                      fmt(r[f"val_{metric}"]), fmt(r[f"test_{metric}"]),
                      "chosen" if r["chosen"] else ("" if r["within_tolerance"] else "over tolerance"))
    out_console.print(table)
    out_console.print(res.summary, highlight=False, soft_wrap=True)
    out_console.print(f"compressed: [bold]{res.path}[/] (compress.csv, compress.json); predict with: "
                      f"cotune predict {run} DATA --engine onnx", highlight=False, soft_wrap=True)


@app.command()
@friendly
def explain(run: Path = typer.Argument(..., help="A finished run (`cotune train`) or search (`cotune fit`) directory."),
            data: Optional[str] = typer.Argument(None, help="Rows to explain, as `cotune predict` reads them (default: the run's test rows); a table needs its target column."),
            repeats: int = typer.Option(5, "--repeats", help="Tables: shuffles per column."),
            steps: int = typer.Option(32, "--steps", help="Sequences and images: integrated-gradient steps."),
            baseline: str = typer.Option("zero", "--baseline", help="Sequences and images: zero (the training mean) or mean (of the explained rows)."),
            rows: int = typer.Option(2000, "--rows", help="At most this many rows (a seeded sample)."),
            seed: int = typer.Option(0, "--seed", help="Seed of the sample and the shuffles.")):
    """Which inputs RUN's model relies on: permutation importance per column (tables), integrated gradients (sequences, images)."""
    from cotune import api
    res = api.explain(run, data, n_repeats=repeats, n_steps=steps, baseline=baseline, max_rows=rows, seed=seed)
    if res.importances is not None:
        table = Table("column", f"importance ({res.record['metric']['name']})", "sd", "")
        for r in res.record["importances"][:15]:
            table.add_row(r["column"], f"{r['mean']:.4f}", f"{r['sd']:.4f}", "within noise" if r["within_noise"] else "")
        out_console.print(table)
    out_console.print(res.summary, highlight=False, soft_wrap=True)
    files = "explain.json" + (", explain.csv" if res.importances is not None else "")
    shown = f"report: {res.report}" if res.report is not None else f"charts: cotune report {run}"
    out_console.print(f"explained: [bold]{res.path}[/] ({files}); {shown}", highlight=False, soft_wrap=True)


@app.command()
@friendly
def demo(out: Optional[Path] = typer.Option(None, "--out", "-o", help="Search directory (default runs/digits-<time>)."),
         budget: str = typer.Option("2m", "--budget", "-b", help="Wall time of the search, final model included."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No live table.")):
    """End to end on built-in data (sklearn digits): audit, joint search, final model, report."""
    from cotune import api
    res, _ = api.demo(out=out, budget=budget, live=not quiet, console=out_console)
    print_metrics(res.final, res.how)
    c = res.counts
    out_console.print(f"search: {c['COMPLETE']} trials complete, {c['PRUNED']} pruned, {c['FAIL']} failed; "
                      f"best trial #{res.best['number']}")
    print_report(res)
    out_console.print(f"predict with: cotune predict {res.path / 'final'} sklearn:digits")


@app.command()
@friendly
def report(run: Path = typer.Argument(..., help="A run directory (`cotune train`) or search directory (`cotune fit`).")):
    """Rebuild RUN/report.html from RUN's files only; print its path and each file that could not be used."""
    from cotune import api
    out = api.report(run)  # BundleError -> exit 2 when RUN is not a directory
    out_console.print(f"report: {out} ({out.size / 1e6:.1f} MB)", highlight=False, soft_wrap=True)
    for line in out.problems:
        out_console.print(f"problem: {line}", highlight=False, soft_wrap=True)


@app.command()
@friendly
def models(pattern: str = typer.Argument("*", help="Filter, e.g. 'cnn*'.")):
    """List the registered model families and sized variants."""
    from cotune.models import list_models, model_info
    table = Table("name", "family", "inputs", "description")
    for name in list_models(pattern):
        info = model_info(name)
        table.add_row(name, str(info.get("family", "")), ", ".join(info.get("modalities", ())), str(info.get("summary", "")))
    out_console.print(table)


@app.command()
@friendly
def knobs(stage: Optional[str] = typer.Argument(None, help="Only this stage: data, model, train, runtime.")):
    """List every config key with its default, valid values and help."""
    from cotune.config import expected
    from cotune.config import STAGES
    from cotune.knobs import KNOBS
    if stage is not None and stage not in STAGES:
        raise CotuneError(f"Unknown stage {stage!r}; choose one of {', '.join(STAGES)} or none for all keys.")
    table = Table("key", "default", "valid", "searched", "help")
    for k in KNOBS:
        if stage is None or k.stage == stage:
            table.add_row(k.name, repr(k.default), expected(k), "yes" if k.search is not None else "", k.help)
    out_console.print(table)


def main() -> None:
    STARTED[:] = [process_start()]
    app()


if __name__ == "__main__":
    sys.exit(main())
