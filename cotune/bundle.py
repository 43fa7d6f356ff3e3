"""A saved model: preprocessing state + weights (safetensors) + model spec + config + metrics.

    b = cotune.load("runs/x")
    b.predict(df)            # class labels or values
    b.predict_proba(df)      # (N, K) class probabilities
    b.predict_frame("new.csv")  # DataFrame: prediction + one proba_<class> column per class
    b.predict_output(df)     # probabilities or values, whatever the task: what cotune.evaluate takes
    b.embed(df)              # (N, D) penultimate-layer activations (active learning's diversity)
    b.drift(df)              # do df's rows look like the training rows? (cotune.drift)

A classifier's bundle may hold decision.json: a temperature applied to its probabilities (an
ensemble's: to the averaged ones) and, for a binary model tuned for a label metric, the decision
threshold `predict` applies to P(second class). reference.parquet is a seeded sample of the training rows,
which `drift` compares new rows with (a bundle saved before it existed predicts without the check).
Loading reads JSON, Parquet and safetensors only; nothing is ever unpickled.

This module is the torch engine. What does not need torch (Spec, decision.json, reading new data,
outputs -> `predictions`, the predict API itself) lives in cotune.predictor and is re-exported here;
cotune.onnx_engine predicts the same way from an ONNX export, without torch
(`cotune.load(run, engine="onnx")`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cotune.data.preprocess import Preprocessor
from cotune.drift import save_reference
from cotune.errors import BundleError, CotuneError
from cotune.models import create_model
from cotune.predictor import (DECISION, ENSEMBLE, NO_DECISION, SPEC, Predictor, Spec, Voting,  # noqa: F401  (re-exported)
                              load_decision, member_names, predictions, read_features, save_decision)
from cotune.runtime import Runtime
from cotune.track import read_json, write_json
from cotune.train import infer

WEIGHTS = "model.safetensors"
REQUIRED = (WEIGHTS, SPEC, "preprocess.json")


def save(run_dir: str | Path, model: torch.nn.Module, spec: Spec, pre: Preprocessor, train=None) -> None:
    """Weights, preprocessing state and model.json (spec.to_dict()) into run_dir. train: (Dataset, the training
    rows' indices), whose seeded sample becomes reference.parquet, what predict compares new rows with (cotune.drift)."""
    run_dir = Path(run_dir)
    if train is not None:
        save_reference(run_dir, *train)
    tmp = run_dir / f".{WEIGHTS}.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(run_dir / WEIGHTS)
    pre.save(run_dir)
    write_json(run_dir / SPEC, spec.to_dict())


class Bundle(Predictor):
    """A trained model loaded from a run directory, ready to predict on raw features (torch on the CPU)."""

    def __init__(self, path: Path, spec: Spec, model: torch.nn.Module, pre: Preprocessor, decision: dict | None = None):
        super().__init__(path, spec, pre, decision)
        self.model = model
        self.runtime = Runtime(device="cpu", precision="fp32", threads=torch.get_num_threads())

    def _outputs(self, feats: np.ndarray) -> torch.Tensor:
        return infer(self.model, torch.as_tensor(feats), self.runtime)

    def embed(self, X) -> np.ndarray:
        """(N, D) penultimate-layer activations for X: the model's own representation of each row (the input
        of its output layer; cotune.models.features), e.g. to measure how far apart rows are."""
        from cotune.models.features import penultimate
        feats = self.pre.transform(self._features(X))
        return penultimate(self.model, torch.as_tensor(feats)).numpy()


class Ensemble(Voting, Bundle):
    """Soft voting over member bundles (the top trials of a search): probabilities (or values) averaged.

    `spec` is member 0's, as the description of the raw data every member takes (`pre` is member 0's
    too; each member transforms with its own). There is no single model: `.model` raises rather than
    hand one member to latency measurement or export."""

    def __init__(self, path: Path, members: list[Bundle], decision: dict | None = None):
        super().__init__(path, members, decision)
        self.runtime = members[0].runtime

    @property
    def model(self) -> torch.nn.Module:
        raise BundleError(f"An ensemble has {len(self.members)} member models, not one; use .members[i].model.")

    def embed(self, X) -> np.ndarray:
        """The members' embeddings side by side: (N, D_1 + D_2 + ...)."""
        if isinstance(X, (str, Path)):
            X = read_features(str(X), self.spec)
        return np.concatenate([m.embed(X) for m in self.members], axis=1)


def save_ensemble(out: str | Path, member_dirs: list[str | Path]) -> None:
    """Copy the member run directories into out/members/<i>/ (a member trained there already stays) and write
    ensemble.json."""
    import shutil
    out = Path(out)
    names = []
    for i, d in enumerate(member_dirs):
        name = f"members/{i}"
        if Path(d).resolve() != (out / name).resolve():
            shutil.copytree(d, out / name, ignore=shutil.ignore_patterns("metrics.jsonl", ".*"))
        names.append(name)
    write_json(out / ENSEMBLE, {"members": names, "voting": "soft"})


def load(path: str | Path) -> Bundle:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"Run directory {str(path)!r} not found; pass the --out directory of a finished run.")
    if (path / ENSEMBLE).is_file():
        return Ensemble(path, [load(path / n) for n in member_names(path)], load_decision(path))
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise BundleError(f"Run directory {str(path)!r} has no {missing[0]}; it is not a finished run (resume it with --resume).")
    try:
        spec = Spec.from_dict(read_json(path / SPEC))
        model = create_model(spec.family, spec.in_shape, spec.out_dim, **spec.kwargs)
        model.load_state_dict(load_file(str(path / WEIGHTS)))
        pre = Preprocessor.load(path)
    except CotuneError:
        raise
    except Exception as err:
        raise BundleError(f"Run directory {str(path)!r} could not be loaded ({type(err).__name__}: {' '.join(str(err).split())[:150]}); "
                          "its files are damaged: retrain it.") from None
    model.eval()
    return Bundle(path, spec, model, pre, load_decision(path))


def spec_of(cfg, ds, data, s) -> Spec:
    """The bundle's description of a run's trained model (its config, Dataset, pipeline.TrainingSet and pipeline.Setup):
    what turns its outputs into predictions."""
    return Spec(family=cfg.model.family, in_shape=tuple(data.pre.in_shape_), out_dim=s.out_dim, kwargs=s.kwargs,
                task=ds.task, classes=list(ds.classes), target=ds.target, modality=ds.modality,
                columns=list(ds.X.columns) if ds.modality == "tabular" else None,
                raw_shape=tuple(ds.feature_shape), y_mean=data.y_mean, y_std=data.y_std, meta=ds.meta,
                n_params=sum(p.numel() for p in s.model.parameters()),
                target_transform=data.target.to_dict() if data.target is not None else None)
