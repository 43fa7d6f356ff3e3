"""A cotune model as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(df)` gives what `cotune predict`
writes (the prediction column, plus proba_<class> per class and, where a decision threshold applies, threshold).

    from cotune.mlflow_model import save_model, log_model
    save_model("runs/x", "exported/x")                          # an MLflow model directory
    log_model("runs/x", tracking_uri="sqlite:///mlflow.db", run_id=run_id)   # -> runs:/<run_id>/model

The MLflow model holds the bundle directory as its artifact `bundle` (JSON + safetensors; cotune.pyfunc is the
code MLflow runs, nothing is pickled), an input example (the first rows of the raw inputs), a signature inferred
from the inputs and the example's prediction, and pip requirements pinned to this environment (cotune, torch,
numpy, pandas, scikit-learn, safetensors, mlflow), so MLflow infers none.
Tables take a DataFrame of the raw feature columns: every column is optional in the signature (any may hold
missing values), an integer column is typed Any (ints, or floats once a value is missing), a float column double
(MLflow refuses an int64 column there: pass floats, df.astype({"col": float})). Array, image and sequence models
take a float32 array shaped like the training samples, (N, *raw_shape).

`log_model` logs through MlflowClient with an explicit run id (no active run): an MLflow LoggedModel named
`model`, source run the given run, so both `runs:/<run_id>/model` and `models:/<model_id>` load it.
`cotune fit` logs its final model this way into its MLflow run; `cotune train --mlflow URI` its run's model.
mlflow is imported on first use only: without it these functions raise one ConfigError naming the install.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.errors import ConfigError, CotuneError, DataError, one_line
from cotune.predictor import Predictor, read_features, resolve
from cotune.track import MLFLOW_ARTIFACTS, NullTracker, open_mlflow, read_json, warn_once

NAME = "model"          # the model's name in its run: runs:/<run_id>/model
EXAMPLE_ROWS = 5        # rows of the input example
SIGNATURE_ROWS = 1000   # rows the input signature is inferred from (an object column's values are looked at)
REQUIREMENTS = ("cotune", "torch", "numpy", "pandas", "scikit-learn", "safetensors")
SKIP = shutil.ignore_patterns("compress", "report.html", "metrics.jsonl", "mlflow.json", ".*")  # not the model's
HINT = "MLflow models need mlflow: pip install 'cotune[track]'"


def _mlflow():
    """mlflow, its pyfunc module imported; without it, the one-line ConfigError that says how to install it."""
    try:
        import mlflow.pyfunc
        return mlflow
    except ImportError:
        raise ConfigError(HINT + ".") from None


def prediction_frame(model: Predictor, X) -> pd.DataFrame:
    """`cotune predict`'s frame for X, with the prediction column in its labels' own dtype (int, bool or str
    rather than object), as MLflow's signature types it."""
    frame = model.predict_frame(X)
    frame["prediction"] = frame["prediction"].infer_objects()
    return frame


def model_inputs(model: Predictor, data) -> pd.DataFrame | np.ndarray:
    """The first SIGNATURE_ROWS raw inputs the model takes, from `data` (a DataFrame, an array, or a path or built-in
    name): a table's feature columns in the model's order, or a float32 array of samples."""
    spec = model.spec
    X = read_features(str(data), spec) if isinstance(data, (str, Path)) else data
    if spec.modality == "tabular":
        if not isinstance(X, pd.DataFrame):
            raise DataError(f"The example rows of a table model must be a DataFrame; got {type(X).__name__}.")
        missing = [c for c in spec.columns if c not in X.columns]
        if missing:
            raise DataError(f"The example rows lack the model's column(s) {missing[:5]}; pass rows of the training table.")
        return X.head(SIGNATURE_ROWS)[spec.columns].reset_index(drop=True)
    return model._features(X[:SIGNATURE_ROWS])  # checked against the model's sample shape, float32


def signature(model: Predictor, X, example):
    """The MLflow signature: inputs from X (model_inputs'), outputs from the example's prediction. A
    table's columns are all optional (any may hold missing values); an integer column is typed Any, since MLflow
    takes neither a float (what a missing value makes of it) as a long nor an int64 as a double."""
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, DataType, Schema
    with _quiet():
        out = infer_signature(model_output=prediction_frame(model, example)).outputs
        inputs = infer_signature(X).inputs
    if isinstance(X, pd.DataFrame):
        inputs = Schema([ColSpec(AnyType() if c.type in (DataType.integer, DataType.long) else c.type, c.name,
                                 required=False) for c in inputs.inputs])
    return ModelSignature(inputs=inputs, outputs=out)


def requirements() -> list[str]:
    """cotune and its predict-time dependencies pinned to this environment's versions (torch without its local
    build tag, so a CPU or a CUDA build of that version both satisfy it), then the mlflow distribution installed."""
    from importlib.metadata import PackageNotFoundError, version
    found = []
    for name in REQUIREMENTS:
        try:
            found.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:  # cotune run from a source tree
            found.append(name)
    for name in ("mlflow", "mlflow-skinny"):
        try:
            return found + [f"{name}=={version(name)}"]
        except PackageNotFoundError:
            continue
    return found


@contextmanager
def _quiet():
    """No artifact progress bars, no MLflow hints or notes on the console while a model is written."""
    import logging
    before, log = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"), logging.getLogger("mlflow")
    level = log.level
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    log.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def _default_data(bundle_dir: Path, model: Predictor):
    """The data the model was trained on (the config.json of the bundle, or of an ensemble's first member: its
    data.source), for the example when none is given."""
    for d in (bundle_dir, *[m.path for m in getattr(model, "members", [])[:1]]):
        if (Path(d) / "config.json").is_file():
            source = (read_json(Path(d) / "config.json").get("data") or {}).get("source")
            if source:
                return read_features(source, model.spec)
    raise DataError(f"{str(bundle_dir)!r} has no config.json naming its data; pass data=... (a few raw input rows).")


def _prepare(run, data):
    """(bundle directory, loaded model, input example, signature): everything that can reject the input, before
    anything is written."""
    from cotune.bundle import load
    bundle_dir = resolve(run)[0]
    model = load(bundle_dir)
    X = model_inputs(model, _default_data(bundle_dir, model) if data is None else data)
    example = X.head(EXAMPLE_ROWS) if isinstance(X, pd.DataFrame) else X[:EXAMPLE_ROWS]
    if not len(example):
        raise DataError("No rows to make the MLflow model's input example from; pass data=... with a few rows.")
    return bundle_dir, model, example, signature(model, X, example)


def _write(prepared, path: Path, mlflow_model=None) -> Path:
    """The MLflow model directory at `path`, written beside it and renamed into place."""
    import mlflow.pyfunc
    bundle_dir, _, example, sig = prepared
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / "bundle"  # the bundle's own files only: no compress/ exports, report or metric log
        shutil.copytree(bundle_dir, staged, ignore=SKIP)
        with _quiet():
            mlflow.pyfunc.save_model(str(Path(tmp) / NAME), python_model=str(Path(__file__).with_name("pyfunc.py")),
                                     artifacts={"bundle": str(staged)}, signature=sig, input_example=example,
                                     pip_requirements=requirements(), mlflow_model=mlflow_model)
        os.replace(Path(tmp) / NAME, path)
    return path


def save_model(run, path, *, data=None) -> Path:
    """Write `run`'s model (a run directory, a search directory or a bundle) as an MLflow pyfunc model directory at
    `path`, which must not exist yet. data: raw input rows (a DataFrame, an array, or a path or built-in name) that
    the input example (the first EXAMPLE_ROWS) and the signature come from; default: the model's own training
    data (its config.json's data.source). Returns `path`; a write that fails leaves nothing there."""
    _mlflow()
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{str(path)!r} exists already; pass a new path for the MLflow model.")
    return _write(_prepare(run, data), path)


def _run_of(tracking_uri: str, run_id: str):
    """(client, experiment id) of an existing MLflow run; one ConfigError when it cannot be found."""
    from cotune.track import mlflow_client
    try:
        client = mlflow_client(tracking_uri)
        return client, client.get_run(run_id).info.experiment_id
    except Exception as err:
        raise ConfigError(f"Cannot open MLflow run {run_id!r} in {tracking_uri!r} ({type(err).__name__}: "
                          f"{one_line(err)[:200]}); check the tracking URI and the run id.") from None


def log_model(run, *, tracker=None, tracking_uri: str | None = None, run_id: str | None = None, data=None,
              name: str = NAME) -> dict:
    """Log `run`'s model into an MLflow run as a pyfunc model named `name`, which runs:/<run_id>/<name> loads: into
    `tracker`'s run (a cotune.track.MlflowTracker), or into the existing run `run_id` of `tracking_uri`. data: as
    for save_model. Returns {'tracking_uri', 'run_id', 'model_id', 'model_uri', 'artifact_uri'}; artifact_uri loads
    without the tracking store. A failure deletes the half-logged model and raises."""
    _mlflow()
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model
    if tracker is not None:
        client, run_id, experiment_id, tracking_uri = tracker.client, tracker.run_id, tracker.experiment_id, tracker.uri
    elif tracking_uri and run_id:
        client, experiment_id = _run_of(tracking_uri, run_id)
    else:
        raise ConfigError("log_model needs the run: pass tracker=..., or tracking_uri=... and run_id=....")
    prepared = _prepare(run, data)
    spec, members = prepared[1].spec, getattr(prepared[1], "members", None)
    tags = {"cotune.family": spec.family, "cotune.task": spec.task, "cotune.modality": spec.modality,
            **({"cotune.ensemble_members": len(members)} if members else {})}
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = _write(prepared, Path(tmp) / name, Model(artifact_path=logged.artifact_location, run_id=run_id,
                                                             model_id=logged.model_id, model_uuid=logged.model_id))
            with _quiet():
                client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        try:
            client.delete_logged_model(logged.model_id)
        except Exception:
            pass  # the error that stopped the logging is the one to report
        raise
    return {"tracking_uri": tracking_uri, "run_id": run_id, "model_id": logged.model_id,
            "model_uri": f"runs:/{run_id}/{name}", "artifact_uri": logged.artifact_location}


def track_model(tracker, run, data=None) -> dict | None:
    """log_model into a tracker's run, for `cotune fit` and `cotune train --mlflow`: None when the run is not tracked
    (a NullTracker, or tracking that broke); a failure is one warning on stderr, and the run's files stand."""
    if getattr(tracker, "run_id", None) is None or tracker.broken:
        return None
    t0 = time.perf_counter()
    try:
        return log_model(run, tracker=tracker, data=data)
    except Exception as err:
        what = one_line(err) if isinstance(err, CotuneError) else f"{type(err).__name__}: {one_line(err)[:200]}"
        warn_once(f"the model of MLflow run {tracker.run_id} was not logged ({what}); "
                  "log it later with cotune.mlflow_model.log_model")
        return None
    finally:
        tracker.seconds += time.perf_counter() - t0


def open_run(uri: str | None, out):
    """`cotune train --mlflow URI`'s MLflow run (experiment 'cotune', named after the run directory `out`), or a
    NullTracker for None / 'none'. A new experiment in a SQLite store keeps its artifacts beside the file
    (mlartifacts/), as `cotune fit`'s does. A store that cannot be opened, or no mlflow, is a ConfigError."""
    if uri is None or uri.strip().lower() in ("", "none"):
        return NullTracker()
    uri = uri.strip()
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    return open_mlflow(uri, required=True, fix="drop --mlflow to train without tracking", experiment="cotune",
                       run_name=Path(out).name, tags={"cotune.out": str(Path(out).resolve())},
                       artifact_location=(db.resolve().parent / MLFLOW_ARTIFACTS).as_uri() if db else None)
