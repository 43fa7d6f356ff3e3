"""What the `cotune` command prints about finished work: the metrics table, the CSV dialect, the report's and
the MLflow model's whereabouts (cotune/cli.py parses and calls; this module only prints).
"""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

out_console = Console()


def print_metrics(result, how: dict | None = None) -> None:
    """The run's metrics; `how` (a search's fit.json 'final') names an ensemble's members instead of epochs."""
    keys = [k for k in ("accuracy", "robust_accuracy", "f1_macro", "roc_auc", "log_loss", "ece", "rmse", "mae", "r2")
            if any(k in (result.metrics.get(p) or {}) for p in ("val", "test"))]
    if how is not None and how.get("kind") == "ensemble":
        trained = {"train+val": "each refitted on train+val", "mixed": "some refitted on train+val"}.get(
            how["trained_on"], "as trained in the search")
        title = (f"soft-voting ensemble of trials {', '.join(f'#{n}' for n in how['trials'])} ({trained}), "
                 f"{result.n_params:,} parameters in all")
    else:
        title = (f"{result.config.model.family}, {result.n_params:,} parameters, best epoch "
                 f"{result.train.best_epoch}/{result.train.epochs_run}")
    if not any(result.metrics.get(p) for p in ("val", "test")):
        out_console.print(f"{title}: no validation or test rows to score (data.split.val / data.split.test = 0)")
        out_console.print(f"run directory: [bold]{result.path}[/]")
        return
    table = Table(title=title)
    table.add_column("split")
    for k in keys:
        table.add_column(k, justify="right")
    for part in ("val", "test"):
        m = result.metrics.get(part)
        if m:
            table.add_row(part, *[("-" if m.get(k) is None else f"{m[k]:.4f}") for k in keys])
    out_console.print(table)
    out_console.print(f"run directory: [bold]{result.path}[/]")


def print_dialect(*run_dirs) -> None:
    """One line when a CSV was not read as the plain comma-separated file its name suggests (a ';' file with
    decimal commas, say), from the first of `run_dirs` that holds an env.json; nothing otherwise."""
    from cotune.data.sources import dialect_note
    for d in run_dirs:
        f = Path(d) / "env.json" if d else None
        if f is not None and f.is_file():
            try:
                note = dialect_note(json.loads(f.read_text()).get("dataset") or {})
            except (ValueError, AttributeError):
                return  # a damaged env.json is the report's to name
            if note:
                out_console.print(note, highlight=False, soft_wrap=True)
            return


def print_report(res) -> None:
    """Where a search's report.html went, or the one line saying why it could not be built."""
    if res.report is not None:
        for line in res.report.problems:
            out_console.print(f"report problem: {line}", highlight=False, soft_wrap=True)
        out_console.print(f"report: [bold]{res.report}[/] (open it in a browser)")
    elif res.report_note:
        out_console.print(f"note: {res.report_note}", highlight=False, soft_wrap=True)


def print_mlflow(info: dict | None) -> None:
    """The MLflow model's URI (what mlflow.pyfunc.load_model takes) and the tracking URI it resolves in."""
    if info:
        out_console.print(f"MLflow model: {info['model_uri']} (tracking URI {info['tracking_uri']}; without it: "
                          f"mlflow.pyfunc.load_model('{info['artifact_uri']}'))", highlight=False, soft_wrap=True)
