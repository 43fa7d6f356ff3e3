"""What predicting needs besides the network, without torch: model.json's Spec, decision.json, reading new
data, raw outputs -> predictions, and `Predictor`, the predict API over any engine.

An engine is a subclass that says how to get raw model outputs for preprocessed features (`_outputs`):
cotune.bundle.Bundle runs the torch model, cotune.onnx_engine.OnnxBundle an ONNX export through ONNX Runtime.
Everything else (reading and checking the raw data, preprocessing, softmax or the inverse target transform,
the decision's temperature and threshold, the prediction frame, the drift check) is here, once, so both engines
predict alike.
`Voting` is soft voting over member predictors of any engine.

`resolve(run)` maps what a user passes (a search directory, its final/, or a run directory) to the bundle
directory and the directory `cotune compress` writes its exports to.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.data.preprocess import Preprocessor
from cotune.data.scaling import TargetTransform
from cotune.errors import BundleError, CotuneError, DataError, one_line
from cotune.track import read_json, write_json

SPEC = "model.json"
ENSEMBLE = "ensemble.json"
DECISION = "decision.json"
NO_DECISION = {"temperature": 1.0, "threshold": None}


@dataclass(frozen=True, kw_only=True)
class Spec:
    """model.json: how to rebuild the model, the data it takes and what its outputs mean (fields in file order)."""
    family: str
    in_shape: tuple[int, ...]            # one preprocessed sample, the model's input
    out_dim: int
    kwargs: dict                         # the model knobs create_model was called with
    task: str
    classes: list = field(default_factory=list)  # original label values, in output order; [] for regression
    target: str | None
    modality: str
    columns: list[str] | None = None     # tabular: the raw feature columns, in order
    raw_shape: tuple[int, ...]           # one raw sample, before preprocessing
    y_mean: float = 0.0                  # regression: the model predicts (y - y_mean) / y_std
    y_std: float = 1.0
    meta: dict = field(default_factory=dict)  # the source's description (image size and mode, mnist1d generator)
    n_params: int = 0
    target_transform: dict | None = None  # regression: TargetTransform.to_dict(); None = y_mean / y_std alone

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["target_transform"] is None:  # classification: model.json as before the field existed
            del d["target_transform"]
        return d | {"in_shape": list(self.in_shape), "raw_shape": list(self.raw_shape), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        """From a model.json's content; keys it does not know are ignored, a missing required one is a TypeError."""
        s = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        s.update({k: tuple(s[k]) for k in ("in_shape", "raw_shape") if k in s})
        if "classes" in s:
            s["classes"] = list(s["classes"] or [])
        return cls(**s)


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64 and returned in z's float dtype; the row maximum is
    subtracted first, so exp never overflows however large the logits."""
    dtype = z.dtype if np.issubdtype(z.dtype, np.floating) else np.float64
    if z.size == 0:
        return z.astype(dtype)
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(dtype, copy=False)


def predictions(outputs, spec: Spec) -> np.ndarray:
    """Raw model outputs (a numpy array, or a torch tensor) -> (N, K) class probabilities (classification) or
    (N,) values in target units.

    The one place outputs become predictions: the evaluation after training, every engine's bundle and every
    ensemble member go through it, so a calibration temperature or class thresholds hook in here."""
    if hasattr(outputs, "detach"):  # a torch tensor, without importing torch
        outputs = outputs.detach().cpu().numpy()
    outputs = np.asarray(outputs)
    if spec.task == "regression":
        if spec.target_transform is not None:
            return TargetTransform.from_dict(spec.target_transform).inverse(outputs.squeeze(-1))
        return outputs.squeeze(-1) * spec.y_std + spec.y_mean
    return softmax(outputs)


class Predictor:
    """A trained model with its preprocessing and decision, predicting on raw features. A subclass supplies
    `_outputs`: raw model outputs for preprocessed features."""

    def __init__(self, path: Path, spec: Spec, pre: Preprocessor, decision: dict | None = None):
        self.path, self.spec, self.pre = path, spec, pre
        self.decision = dict(decision or NO_DECISION)

    def _outputs(self, feats: np.ndarray):
        """Raw outputs (N, K) for preprocessed features of shape (N, *spec.in_shape): what `predictions` takes."""
        raise NotImplementedError

    @property
    def threshold(self) -> float | None:
        """The decision threshold on P(second class) that `predict` applies (binary models tuned for a label
        metric), or None: the most probable class."""
        return self.decision.get("threshold")

    def _decide(self, output: np.ndarray) -> np.ndarray:
        """The decision's temperature on a classifier's probabilities (regression values pass through)."""
        t = float(self.decision.get("temperature") or 1.0)
        if self.task == "regression" or t == 1.0:
            return output
        from cotune.calibrate import apply_temperature
        return apply_temperature(output, t)

    def _labels(self, proba: np.ndarray) -> np.ndarray:
        from cotune.evaluate import labels
        return np.asarray(self.classes_, dtype=object)[labels(proba, self.threshold)]

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def classes_(self) -> list:
        return list(self.spec.classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, family={self.spec.family!r}, task={self.task!r})"

    def predict_output(self, X) -> np.ndarray:
        """`predictions` on X, for any task: what cotune.evaluate.evaluate takes."""
        feats = self.pre.transform(self._features(X))
        return self._decide(predictions(self._outputs(feats), self.spec))

    def predict_proba(self, X) -> np.ndarray:
        """(N, K) class probabilities, columns in the order of `classes_`."""
        if self.task == "regression":
            raise BundleError("predict_proba needs a classification model but this one is regression; use predict().")
        return self.predict_output(X)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (original label values) or regression values in target units."""
        if self.task == "regression":
            return self.predict_output(X)
        return self._labels(self.predict_proba(X))

    def predict_frame(self, X) -> pd.DataFrame:
        if self.task == "regression":
            return pd.DataFrame({"prediction": self.predict(X)})
        proba = self.predict_proba(X)
        df = pd.DataFrame({"prediction": self._labels(proba)})
        for j, c in enumerate(self.classes_):
            df[f"proba_{c}"] = proba[:, j]
        if self.threshold is not None:  # the cut the prediction column applied to the last probability column
            df["threshold"] = self.threshold
        return df

    def drift(self, X, **options):
        """A cotune.drift.DriftReport: X's rows (as `predict` takes them) against the sample of training rows saved
        with the model, per column and all columns together (.flagged, .moved, .columns, .summary(), .to_dict()).
        options: alpha, min_psi, min_auc, seed. A model saved without a sample gives a report with checked=False."""
        from cotune.drift import check
        if isinstance(X, (str, Path)):
            X = read_features(str(X), self.spec)
        return check(self._reference_dirs(), self._features(X), **options)

    def _reference_dirs(self) -> list[Path]:
        return [self.path]

    def _features(self, X):
        """Raw features from a DataFrame, an array, or a path / built-in name (the target is dropped if present)."""
        if isinstance(X, (str, Path)):
            X = read_features(str(X), self.spec)
        if self.spec.modality == "tabular":
            if isinstance(X, np.ndarray):
                cols = self.spec.columns
                if X.ndim != 2 or X.shape[1] != len(cols):
                    raise DataError(f"Expected a table with columns {cols[:8]}...; got an array of shape {X.shape}; pass a DataFrame or CSV.")
                X = pd.DataFrame(X, columns=cols)
            if not isinstance(X, pd.DataFrame):
                raise DataError(f"This model takes a table (DataFrame, CSV or Parquet); got {type(X).__name__}.")
            return X.drop(columns=[c for c in [self.spec.target] if c in X.columns])
        X = np.asarray(X, dtype=np.float32)
        shape = self.spec.raw_shape
        if X.ndim == len(shape) and self.spec.modality == "sequence" and len(shape) == 2:
            X = X[:, None, :] if X.shape[1:] == shape[1:] else X
        if tuple(X.shape[1:]) != shape:
            raise DataError(f"Expected samples of shape {shape}; got {tuple(X.shape[1:])}; pass data shaped like the training data.")
        return X


class Voting(Predictor):
    """Soft voting over member predictors (the top trials of a search): probabilities (or values) averaged,
    then the ensemble's own decision applied.

    `spec` is member 0's, as the description of the raw data every member takes (`pre` is member 0's too;
    each member transforms with its own)."""

    def __init__(self, path: Path, members: list[Predictor], decision: dict | None = None):
        first = members[0]
        self.path, self.spec, self.pre, self.members = path, first.spec, first.pre, members
        self.decision = dict(decision or NO_DECISION)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, members={len(self.members)}, task={self.task!r})"

    def _reference_dirs(self) -> list[Path]:
        return [self.path] + [d for m in self.members for d in m._reference_dirs()]  # the members' training rows

    def predict_output(self, X) -> np.ndarray:
        if isinstance(X, (str, Path)):
            X = read_features(str(X), self.spec)  # read once, not once per member
        return self._decide(np.mean([m.predict_output(X) for m in self.members], axis=0))


def member_names(path: Path) -> list[str]:
    """ensemble.json's member directories, relative to `path`."""
    try:
        names = read_json(path / ENSEMBLE)["members"]
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError("'members' must be a non-empty list of directory names")
    except Exception as err:
        raise BundleError(f"{str(path / ENSEMBLE)!r} is damaged ({one_line(err)[:120]}); rerun the search.") from None
    return names


def read_features(source: str, spec: Spec):
    """Features of new data: a table file, an .npz with X, an image folder, or a built-in name."""
    from cotune.data import sources
    p = Path(source)
    if not p.exists() and ":" not in source and source != "mnist1d":
        raise DataError(f"Data {source!r} not found; check the path.")
    try:
        table = sources.read_table(p) if p.is_file() else None  # as training read it: the same dialect sniffing
        if table is not None:
            return table
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "X" not in z:
                    raise DataError(f"{source!r} has no array named 'X'; save features with np.savez(path, X=...).")
                return z["X"]
    except CotuneError:
        raise
    except Exception as err:
        raise DataError(f"Could not read {source!r} ({type(err).__name__}: {' '.join(str(err).split())[:120]}); check the file.") from None
    if p.is_dir():
        return sources.read_images(p, spec.meta.get("image_size", 32), spec.meta.get("image_mode", "rgb"))[0]
    gen = spec.meta.get("generator") or {}  # mnist1d: regenerate the data the run was trained on
    kw = {"n_samples": gen["num_samples"], "generator_seed": gen["seed"]} if "num_samples" in gen else {}
    ds = sources.load(source, target=spec.target if spec.modality == "tabular" else None, **kw)
    return ds.X


def save_decision(path: str | Path, decision: dict) -> None:
    """Write decision.json (temperature, threshold and how they were chosen) into a bundle's directory."""
    write_json(Path(path) / DECISION, decision)


def load_decision(path: Path) -> dict:
    """A bundle's decision.json (its temperature and threshold checked), or no decision when there is none."""
    f = Path(path) / DECISION
    if not f.is_file():
        return dict(NO_DECISION)
    d = read_json(f)
    t, thr = d.get("temperature", 1.0), d.get("threshold")
    if (not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0
            or (thr is not None and (not isinstance(thr, (int, float)) or not 0.0 <= thr <= 1.0))):
        raise BundleError(f"{str(f)!r} holds an invalid temperature or threshold ({t!r}, {thr!r}); "
                          "delete it to predict without them, or rerun the search.")
    return {**d, "temperature": float(t), "threshold": None if thr is None else float(thr)}


def resolve(run: str | Path) -> tuple[Path, Path]:
    """(bundle directory, compression directory) for what a user passes as RUN; the latter may not exist.

    A bundle directory (model.json or ensemble.json): itself, and its compress/ if there is one, else, when
    it is a search's final/ (its parent holds fit.json), the search's compress/. A search directory (it
    holds final/): its final/ and its compress/. Anything else is returned as the bundle directory, for
    the loader to say what is wrong with it."""
    run = Path(run)
    if (run / SPEC).is_file() or (run / ENSEMBLE).is_file():
        parent = run.parent if run.name not in ("", "..") else run.resolve().parent
        if (not (run / "compress").is_dir() and (parent / "fit.json").is_file()
                and (parent / "final").resolve() == run.resolve()):
            return run, parent / "compress"
        return run, run / "compress"
    if (run / "final").is_dir():
        return run / "final", run / "compress"
    return run, run / "compress"
