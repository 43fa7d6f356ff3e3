"""Transfer learning: a run starts from a finished run (model.init_from), its preprocessing and its weights.

    src = load_source("runs/a", ds, "mlp", {"data.numeric": "standard", "data.embed_above": 8})  # fails fast
    pre = src.pre                                       # the run preprocesses as the source did
    info = init_from("runs/a", src, model, ds, kwargs)   # model: just built for this run's data

The source must hold one model (not an ensemble) of the same family, trained on data of the same modality
and sample shape (tables: the same columns in the same order, the same data.numeric and data.embed_above). Its fitted
preprocessing comes with its weights, as a pretrained network's input normalization does: the copied first
layer sees inputs scaled as it learned them, not by statistics refitted on what is often a small new set.
Every layer outside the output layer must have the same shape here: the model knobs are not taken from the
source but must match it, so that a run's config says what it trains; a mismatch names the layer, both
shapes and the knobs that differ. The output layer (cotune.models.head) is copied when it predicts the same
thing, the same classes in the same order or a regression target, and otherwise keeps its fresh
initialization (new classes). train.freeze_epochs and train.backbone_lr (cotune.train) then decide how
gently the copied layers move.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cotune import bundle
from cotune.errors import ConfigError, CotuneError, one_line
from cotune.models.registry import KNOBS as MODEL_KNOBS, family_of, head_keys


def load_source(path: str, ds, family: str, preprocessing: dict) -> bundle.Bundle:
    """The finished run at `path`, checked against this run's Dataset `ds`, model.family and table preprocessing
    knobs ({'data.numeric': ..., ...}: FROM_SOURCE, and FROM_SOURCE_TEXT where the source reads text), or a
    one-line error. A search directory stands for its final model."""
    where = f"model.init_from {path!r}"
    src_dir = Path(path)
    if not src_dir.is_dir():
        raise ConfigError(f"{where} is not a directory; pass the --out directory of a finished run.")
    if (src_dir / "fit.json").is_file() and not (src_dir / bundle.SPEC).is_file():
        src_dir = src_dir / "final"
    try:
        with torch.random.fork_rng(devices=[]):  # building the source's model draws weights: the run's seed keeps its draws
            src = bundle.load(src_dir)
    except CotuneError as err:
        raise type(err)(f"{where}: {one_line(err)}") from None
    if isinstance(src, bundle.Ensemble):
        raise ConfigError(f"{where} is an ensemble of {len(src.members)} models, not one; point it at one of them, "
                          f"e.g. {str(src_dir / 'members' / '0')!r} (the best on validation).")
    spec = src.spec
    if spec.modality != ds.modality:
        raise ConfigError(f"{where} holds a model of {spec.modality} data but this data is {ds.modality}; start from "
                          f"a run on {ds.modality} data, or drop model.init_from.")
    if family_of(spec.family) != family_of(family):
        raise ConfigError(f"{where} holds model family {spec.family!r} but model.family is {family!r}; set "
                          f"model.family={spec.family} or start from a {family} run.")
    columns = list(spec.columns or [])
    if ds.modality == "tabular" and columns != list(ds.X.columns):
        raise ConfigError(f"{where} was trained on other table columns ({', '.join(columns[:4])}, ...) than "
                          f"these ({', '.join(map(str, ds.X.columns[:4]))}, ...); its first layer reads them by "
                          "position: give the data the same columns in the same order.")
    if ds.modality != "tabular" and tuple(spec.raw_shape) != tuple(ds.feature_shape):
        raise ConfigError(f"{where} was trained on samples of shape {tuple(spec.raw_shape)}, this data's are "
                          f"{tuple(ds.feature_shape)}; resize or cut the data to the source's shape.")
    pre = src.pre
    theirs = {"data.numeric": pre.numeric, "data.embed_above": pre.embed_above}
    if ds.modality == "tabular" and pre.text_:
        theirs.update({"data.tokenizer": pre.tokenizer, "data.vocab_size": pre.vocab_size, "data.max_tokens": pre.max_tokens})
    for key, value in preprocessing.items() if ds.modality == "tabular" else ():
        if key in theirs and theirs[key] != value:
            raise ConfigError(f"{where} preprocesses tables with {key}={theirs[key]!r} (its preprocessing comes with "
                              f"its weights) but this run sets {value!r}; set {key}={theirs[key]}.")
    return src


def init_from(path: str, src: bundle.Bundle, model: torch.nn.Module, ds, kwargs: dict) -> dict:
    """Copy the weights of `src` (load_source's, for model.init_from `path`) into `model`, built for this run
    (ds its Dataset, kwargs its factory knobs), or raise a one-line error. Returns what was done, for
    metrics.json."""
    where, spec = f"model.init_from {path!r}", src.spec
    ours, theirs = model.state_dict(), src.model.state_dict()
    own_head = head_keys(model)
    same = spec.task == ds.task and (ds.task == "regression" or [str(c) for c in spec.classes] == [str(c) for c in ds.classes])

    def mismatch(key: str, what: str) -> ConfigError:
        diff = [f"model.{k}={spec.kwargs.get(k)!r} there, {v!r} here" for k, v in kwargs.items()
                if k in MODEL_KNOBS and spec.kwargs.get(k) != v]
        why = f"its model knobs differ ({', '.join(diff[:3])})" if diff else "its model knobs differ"
        return ConfigError(f"{where}: layer {key!r} {what}; {why}: set them as the source run has them.")

    if head_keys(src.model) != own_head:  # the output layer elsewhere: other layers, even where some shapes agree
        raise mismatch(src.model.head_name, f"is the source's output layer but this model's is {model.head_name!r}")
    for k in ours:
        if k not in theirs:
            raise mismatch(k, "of this model is not in the source's")
    for k in theirs:
        if k not in ours:
            raise mismatch(k, "of the source's is not in this model")
    copy = [k for k in ours if same or k not in own_head]
    for k in copy:
        if theirs[k].shape != ours[k].shape:
            raise mismatch(k, f"is {tuple(theirs[k].shape)} there but {tuple(ours[k].shape)} here")
    model.load_state_dict({**ours, **{k: theirs[k] for k in copy}})
    if same:
        why = "a regression target in both" if ds.task == "regression" else "the same classes"
    else:
        why = f"the source is {spec.task}, this run {ds.task}" if spec.task != ds.task else "the classes differ"
    return {"init_from": str(Path(src.path).resolve()), "family": spec.family, "tensors_copied": len(copy),
            "head": "copied" if same else "reinitialized", "head_why": why, "source_classes": list(spec.classes)}
