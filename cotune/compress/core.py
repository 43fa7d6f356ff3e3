"""compress(run): the final model's variants, measured side by side, and the one to ship.

    cotune.compress.compress("runs/x", tolerance=0.5, prefer="size", batches=(1, 256))

From a finished run or search (its final/ model), into <run>/compress/:
    torch            the model as trained (PyTorch eager): the reference row
    onnx-fp32        the fp32 ONNX export (an ensemble: one file per member); model.onnx is a copy of its file
    onnx-int8        int8 through ONNX Runtime (static QDQ for convolutional graphs, dynamic otherwise)
    pruned-<p>       structured pruning to p% of the width, the narrower zoo model fine-tuned, exported
    distilled[-int8] an ensemble's student: the best trial's knobs trained on the ensemble's probabilities
                     (pruned-<p> variants are then the student's)
Every variant directory predicts on its own (model.onnx + model.json + preprocess.json, and reference.parquet for
the drift check; the pruned and distilled ones are also ordinary run directories that cotune.load reads).
compress.csv / compress.json: per variant the parameters, file bytes, latency per batch size (interleaved, one
thread), the validation and test metric; the chosen variant is the smallest (prefer='size') or fastest
(prefer='latency') whose validation metric is within `tolerance` of the model's and that beats the fp32 export by
at least 10% on that score (else onnx-fp32). Test metrics are reported, never used to choose. Everything is built
in a temporary directory that replaces <run>/compress only when complete.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cotune.compress.table import POINT_METRICS, choose, rows as rows_of, summary
from cotune.compress.variants import distill, prune_finetune, trained_on_val
from cotune.errors import BundleError, ConfigError, CotuneError, invalid, one_line
from cotune.track import read_json, replace_dir, write_csv, write_json

PREFER = ("size", "latency")
KEEPS = (0.75, 0.5, 0.25)  # the width kept by the pruned variants
MAX_TOLERANCE = 100.0
BUNDLE_FILES = ("model.json", "preprocess.json", "decision.json", "reference.parquet")  # copied beside each model.onnx


@dataclass
class CompressResult:
    path: Path          # <run>/compress
    chosen: str
    rows: list          # compress.csv's rows
    summary: str


def locate(run) -> tuple[Path, Path]:
    """(the model's directory, its compression directory): cotune.predictor.resolve, after checking that a search
    has its final model."""
    from cotune.predictor import resolve
    run = Path(run)
    if not run.is_dir():
        raise BundleError(f"Run directory {str(run)!r} not found; pass the --out directory of a finished run or search.")
    if (run / "fit.json").is_file() and not any((run / "final" / f).is_file() for f in ("model.json", "ensemble.json")):
        raise BundleError(f"The search in {str(run)!r} has no final model yet; finish it (cotune fit --resume "
                          f"--out {run}) before compressing.")
    return resolve(run)


def check_keeps(keeps) -> tuple:
    """The pruned variants' width shares: numbers in (0, 1), a comma-separated string of them, or 'none'."""
    if isinstance(keeps, str):
        keeps = () if keeps.strip().lower() in ("", "none") else keeps.split(",")
    try:
        out = tuple(dict.fromkeys(float(k) for k in keeps))
    except (TypeError, ValueError):
        out = (-1.0,)
    if any(not 0 < k < 1 for k in out):
        raise ConfigError(invalid("--prune", "width shares in (0, 1), comma-separated, or 'none'", keeps,
                                  "e.g. --prune 0.75,0.5"))
    return out


def check_args(tolerance, prefer: str, batches) -> tuple[float, str, tuple]:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= MAX_TOLERANCE:
        raise ConfigError(invalid("--tolerance", f"a number of metric points in [0, {MAX_TOLERANCE:g}]", tolerance,
                                  "e.g. --tolerance 0.5 accepts half a point of accuracy lost"))
    if prefer not in PREFER:
        raise ConfigError(invalid("--prefer", "'size' or 'latency'", prefer))
    try:
        bs = tuple(dict.fromkeys(int(b) for b in (batches.split(",") if isinstance(batches, str) else batches)))
    except (TypeError, ValueError):
        bs = ()
    if not bs or any(b < 1 or b > 65536 for b in bs):
        raise ConfigError(invalid("--batch", "batch sizes from 1 to 65536, comma-separated", batches, "e.g. --batch 1,256"))
    return float(tolerance), prefer, bs


def compress(run, *, tolerance: float = 0.5, prefer: str = "size", batches=(1, 256), keeps=KEEPS,
             console=None) -> CompressResult:
    """Build, measure and choose; see the module docstring. Bad input is a CotuneError before anything is written."""
    import torch

    from cotune import bundle, evaluate
    from cotune.config import from_dict
    from cotune.pipeline import held_out, load_data
    from cotune.data.split import split_indices
    tolerance, prefer, batches = check_args(tolerance, prefer, batches)
    keeps = check_keeps(keeps)
    model_dir, dest = locate(run)
    model = bundle.load(model_dir)  # an unfinished run: one BundleError
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise BundleError(f"{str(model_dir)!r} has no config.json, so its data cannot be found again; retrain it.")
    cfg = from_dict(read_json(cfg_file))
    from cotune.compress import export
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise BundleError("cotune compress needs onnx, onnxscript and onnxruntime; install them with "
                          "pip install 'cotune[onnx]'.") from None
    say = (lambda msg: console.print(msg, highlight=False)) if console is not None else (lambda msg: None)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = load_data(cfg)
    metric = evaluate.monitored_metric(ds.task, "metric", cfg.search.metric)  # robust_accuracy: clean accuracy
    va, y_va, te = held_out(cfg, ds)
    tr, _, _ = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    rows = (lambda idx: ds.X.iloc[idx]) if ds.modality == "tabular" else (lambda idx: ds.X[idx])  # noqa: E731
    check = te if len(te) else (va if len(va) else tr)  # the rows parity and latency are measured on
    parts = {"val": (va, y_va), "test": (te, ds.y[te])}
    tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=dest.parent))
    t0 = time.time()
    try:
        variants = []  # dicts: name, kind, predictor (predict_output on raw rows), models [(torch module, pre)], files
        members = model.members if isinstance(model, bundle.Ensemble) else [model]
        ensemble = isinstance(model, bundle.Ensemble)
        variants.append({"name": "torch", "kind": "torch", "engine": "torch", "predictor": model,
                         "models": [("torch", m.model, m.pre) for m in members],
                         "bytes": sum(_size(m.path / bundle.WEIGHTS) for m in members),
                         "params": sum(m.spec.n_params for m in members)})

        def add_onnx(name: str, kind: str, source, int8_of: str | None = None, extra: dict | None = None):
            """Export every model of `source` (a Bundle or Ensemble) into tmp/name, or with `int8_of` quantize the
            files of that earlier variant; append the variant."""
            out = tmp / name
            models = source.members if isinstance(source, bundle.Ensemble) else [source]
            info, files = {"parity": [], "quantize": []}, []
            for i, m in enumerate(models):
                d = out / "members" / str(i) if len(models) > 1 or isinstance(source, bundle.Ensemble) else out
                d.mkdir(parents=True, exist_ok=True)
                for f in BUNDLE_FILES:
                    if (m.path / f).is_file() and m.path.resolve() != d.resolve():
                        shutil.copy2(m.path / f, d / f)
                if int8_of is not None:
                    fp32 = tmp / int8_of / d.relative_to(out) / "model.onnx"
                    calib = m.pre.transform(rows(tr[:4096]))
                    info["quantize"].append(_quantize(fp32, d / "model.onnx", calib, cfg.runtime.seed))
                else:
                    export.to_onnx(m.model, m.spec.in_shape, d / "model.onnx", family=m.spec.family)
                    info["parity"].append(export.parity(m.model, d / "model.onnx", m.pre.transform(rows(check[:2048]))))
                files.append(d / "model.onnx")
            if isinstance(source, bundle.Ensemble):
                shutil.copy2(source.path / bundle.ENSEMBLE, out / bundle.ENSEMBLE)
                if (source.path / bundle.DECISION).is_file():
                    shutil.copy2(source.path / bundle.DECISION, out / bundle.DECISION)
            from cotune.onnx_engine import load as load_onnx
            pred = load_onnx(out)
            sessions = [export.session(f) for f in files]
            variants.append({"name": name, "kind": kind, "engine": "onnx", "predictor": pred,
                             "models": [("onnx", s, m.pre) for s, m in zip(sessions, models)],
                             "bytes": sum(_size(f) for f in files), "params": sum(m.spec.n_params for m in models),
                             "dir": out, **info, **(extra or {})})

        def skip(name: str, err: CotuneError) -> None:
            skipped.append({"name": name, "reason": one_line(err)})
            say(f"  {name}: skipped ({one_line(err)})")

        def attempt(name: str, fn, *args, **kw):
            try:
                fn(name, *args, **kw)
                say(f"  {name}: built")
            except CotuneError as err:
                skip(name, err)

        skipped: list = []
        attempt("onnx-fp32", add_onnx, "onnx-fp32", model)
        if any(v["name"] == "onnx-fp32" for v in variants):
            attempt("onnx-int8", add_onnx, "int8", model, "onnx-fp32")
        bases = [] if ensemble else [(model, "")]
        if ensemble and ds.task != "regression":
            try:
                student = distill(cfg, model, tmp / "distilled", say)
                attempt("distilled", _add_run, student, "distilled", add_onnx)
                bases = [(bundle.load(student), "distilled-")]
                if any(v["name"] == "distilled" for v in variants):
                    attempt("distilled-int8", add_onnx, "int8", bases[0][0], "distilled")
            except CotuneError as err:
                skip("distilled", err)
        for base, prefix in bases:
            for keep in keeps:
                name = f"{prefix}pruned-{round(keep * 100)}"
                try:
                    run_dir = prune_finetune(cfg, base, keep, tmp / name, say)
                except CotuneError as err:
                    skip(name, err)
                    continue
                attempt(name, _add_run, run_dir, "pruned", add_onnx, {"keep": keep})

        # ---- metrics (validation chooses, test is reported) and latency, interleaved
        for v in variants:
            for part, (idx, truth) in parts.items():
                if len(idx):
                    scores = evaluate.evaluate(truth, v["predictor"].predict_output(rows(idx)), ds.task,
                                               classes=list(ds.classes), threshold=getattr(v["predictor"], "threshold", None))
                    v[part] = scores
        inputs = {}
        for v in variants:
            for _, _, pre in v["models"]:
                for b in batches:
                    key = (id(pre), b)
                    if key not in inputs:
                        inputs[key] = pre.transform(rows(check[np.arange(b) % len(check)]))
        from cotune.compress.latency import load_average, measure
        predictors = {v["name"]: _timed(v["models"], inputs) for v in variants}
        load_before = load_average()
        lat = measure({n: p for n, p in predictors.items()}, {b: b for b in batches}, seed=cfg.runtime.seed)
        table = rows_of(variants, lat, metric, batches, tolerance)
        chosen = choose(table, prefer, batches)
        for r in table:
            r["chosen"] = r["variant"] == chosen
        if (tmp / "onnx-fp32" / "model.onnx").is_file():
            shutil.copy2(tmp / "onnx-fp32" / "model.onnx", tmp / "model.onnx")
        record = {"chosen": chosen, "prefer": prefer, "tolerance": tolerance, "metric": metric.to_dict(),
                  "tolerance_unit": "points" if metric.name in POINT_METRICS else "percent",
                  "batches": list(batches), "model": str(model_dir), "kind": "ensemble" if ensemble else "single",
                  "val_in_sample": trained_on_val(model_dir, members), "load_average": [load_before, load_average()],
                  "threads": 1, "seconds": round(time.time() - t0, 1), "variants": table, "skipped": skipped,
                  "details": {v["name"]: {k: v.get(k) for k in ("parity", "quantize", "keep", "epochs", "val", "test")
                                          if v.get(k) is not None} for v in variants},
                  "summary": summary(table, chosen, metric, prefer)}
        write_csv(tmp / "compress.csv", [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in table])
        write_json(tmp / "compress.json", record)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return CompressResult(path=dest, chosen=chosen, rows=table, summary=record["summary"])


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _quantize(fp32: Path, out: Path, calib, seed: int) -> dict:
    from cotune.compress.quantize import quantize
    return quantize(fp32, out, calib, seed=seed)


def _add_run(name: str, run_dir: Path, kind: str, add_onnx, extra: dict | None = None) -> None:
    """A trained run directory (pruned, distilled) as an ONNX variant: exported in place."""
    from cotune import bundle
    epochs = read_json(run_dir / "metrics.json").get("train", {}).get("epochs_run")
    add_onnx(name, kind, bundle.load(run_dir), extra={**(extra or {}), "epochs": epochs})


def _timed(models: list, inputs: dict):
    """A callable(batch) that runs every model of a variant on its own preprocessed rows of that batch size."""
    import torch
    calls = []
    for engine, m, pre in models:
        if engine == "torch":
            m.eval()

            def call(b, m=m, pre=pre):
                with torch.inference_mode():
                    m(torch.from_numpy(inputs[(id(pre), b)]))
        else:
            name = m.get_inputs()[0].name

            def call(b, m=m, pre=pre, name=name):
                m.run(None, {name: inputs[(id(pre), b)]})
        calls.append(call)

    def run_all(b):
        for c in calls:
            c(b)
    return run_all
