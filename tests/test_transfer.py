"""Transfer learning: model.init_from copies a finished run's weights (its output layer only when it predicts
the same classes), train.freeze_epochs trains the output layer alone first, train.backbone_lr scales the
rate of the rest; and bad input, each one line with exit code 2 and no run directory left behind.

Data: sklearn's digits written as CSV tables with the same 64 pixel columns, split by class (0-4 / 5-9)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.datasets import load_digits
from typer.testing import CliRunner

import cotune
from cotune import bundle
from cotune.cli import app
from cotune.config import from_dict
from cotune.data.batches import TensorData
from cotune.errors import ConfigError
from cotune.knobs import BY_NAME, searchable
from cotune.models import create_model, head
from cotune.models.registry import KNOBS as MODEL_KNOBS, head_keys
from cotune.pipeline import load_data, prepare, setup
from cotune.runtime import Runtime, seed_everything
from cotune.train import make_optimizer, train

torch.set_num_threads(1)

RT = Runtime.resolve("cpu", "fp32", 1)
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
LOW, HIGH = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
MODEL = {"family": "mlp", "width": 16, "depth": 1, "norm": "batch"}  # batch norm: its statistics are frozen too


def write_digits(path, classes, start=0, rows=None, columns=None):
    d = load_digits()
    keep = np.isin(d.target, classes)
    df = pd.DataFrame(d.data[keep], columns=columns or [f"px{i}" for i in range(64)]).assign(label=d.target[keep])
    df.iloc[start:None if rows is None else start + rows].to_csv(path, index=False)
    return path


def config(source, model=None, train=None, **data) -> dict:
    return {"data": {"source": str(source), "target": "label", **data}, "model": {**MODEL, **(model or {})},
            "train": {"epochs": 2, "batch_size": 64, **(train or {})}, "runtime": {"progress": False}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A source run on digits 0-4, and tables of 5-9, of 0-4 again (other rows) and of renamed columns."""
    d = tmp_path_factory.mktemp("transfer")
    write_digits(d / "low.csv", LOW, rows=500)
    write_digits(d / "low_more.csv", LOW, start=500, rows=200)
    write_digits(d / "high.csv", HIGH, rows=300)
    write_digits(d / "renamed.csv", HIGH, rows=100, columns=[f"pixel{i}" for i in range(64)])
    cotune.train(config(d / "low.csv"), out=d / "runs" / "src")
    return d


def built(cfg: dict):
    """(the Setup, the TrainingSet) of a config as run() builds them: the model fresh (seeded) or transferred."""
    cfg = from_dict(cfg)
    seed_everything(cfg.runtime.seed)
    ds = load_data(cfg)
    data = prepare(cfg, ds)
    return setup(cfg, ds, data), data


def source_state(work) -> dict:
    return bundle.load(work / "runs" / "src").model.state_dict()


# ---------------------------------------------------------------------------------------------- the knobs

def test_the_knobs_are_declared_once_and_never_searched():
    assert BY_NAME["model.init_from"].default is None and BY_NAME["train.freeze_epochs"].default == 0
    assert BY_NAME["train.backbone_lr"].default == 1.0
    assert not {"model.init_from", "train.freeze_epochs", "train.backbone_lr"} & {k.name for k in searchable()}
    assert "init_from" not in MODEL_KNOBS  # never a factory argument
    with pytest.raises(ConfigError, match="train.backbone_lr"):
        from_dict({}, ["train.backbone_lr=0"])
    with pytest.raises(ConfigError, match="train.freeze_epochs"):
        from_dict({}, ["train.freeze_epochs=-1"])
    assert from_dict({}, ["model.init_from=runs/a b"]).model.init_from == "runs/a b"


def test_a_search_from_init_from_keeps_the_model_and_a_scaling_study_refuses_it(work):
    from cotune.scale.study import study_config
    from cotune.search.space import search_space
    cfg = from_dict(config(work / "high.csv", model={"init_from": str(work / "runs" / "src")}))
    space = search_space(cfg, set(), "tabular", "multiclass", cpu=True)
    assert space and not [k for k in space if k.startswith("model.") or k == "data.numeric"]
    assert "model.width" in search_space(from_dict(config(work / "high.csv")), set(), "tabular", "multiclass", cpu=True)
    with pytest.raises(ConfigError, match="model.init_from=null"):
        study_config(cfg)


# ---------------------------------------------------------------------------------------------- weights

def test_the_backbone_is_copied_and_the_head_reinitialized_for_new_classes(work):
    src = source_state(work)
    fresh = built(config(work / "high.csv"))[0].model.state_dict()
    s, _ = built(config(work / "high.csv", model={"init_from": str(work / "runs" / "src")}))
    got, in_head = s.model.state_dict(), head_keys(s.model)
    assert in_head and s.transfer["head"] == "reinitialized" and s.transfer["head_why"] == "the classes differ"
    for k, v in got.items():
        if k in in_head:  # the same seed's fresh initialization, not the source's 0-4 head
            assert torch.equal(v, fresh[k]) and not torch.equal(v, src[k]), k
        else:
            assert torch.equal(v, src[k]), k
    assert s.transfer["tensors_copied"] == len(got) - len(in_head) and s.transfer["source_classes"] == LOW


def test_the_head_is_copied_when_the_classes_are_the_same(work):
    src = source_state(work)
    s, _ = built(config(work / "low_more.csv", model={"init_from": str(work / "runs" / "src")}))
    assert s.transfer["head"] == "copied" and s.transfer["head_why"] == "the same classes"
    assert all(torch.equal(v, src[k]) for k, v in s.model.state_dict().items())


def test_a_search_directory_stands_for_its_final_model(work):
    import shutil
    shutil.copytree(work / "runs" / "src", work / "search" / "final")
    (work / "search" / "fit.json").write_text("{}")
    s, _ = built(config(work / "low_more.csv", model={"init_from": str(work / "search")}))
    assert s.transfer["init_from"] == str((work / "search" / "final").resolve()) and s.transfer["head"] == "copied"


def test_freeze_epochs_keep_the_backbone_and_its_batch_norm_statistics_then_train_it(work):
    src = source_state(work)
    s, data = built(config(work / "high.csv", model={"init_from": str(work / "runs" / "src")},
                           train={"epochs": 3, "freeze_epochs": 2, "patience": 0}))
    in_head, seen = head_keys(s.model), []
    train(s.model, TensorData.from_numpy(data.train_X, data.train_y), None, s.train_cfg, RT, task="multiclass",
          on_eval=lambda epoch, row: seen.append({k: v.clone() for k, v in s.model.state_dict().items()}))
    assert len(seen) == 3
    start = built(config(work / "high.csv", model={"init_from": str(work / "runs" / "src")}))[0].model.state_dict()
    for epoch in (0, 1):  # frozen: every tensor outside the head as the source has it, running statistics too
        assert all(torch.equal(v, src[k]) for k, v in seen[epoch].items() if k not in in_head), epoch
        assert any(not torch.equal(seen[epoch][k], start[k]) for k in in_head)  # the head trains
    moved = [k for k, v in seen[2].items() if k not in in_head and not torch.equal(v, src[k])]
    assert any(k.endswith(".weight") for k in moved) and any(k.endswith("running_mean") for k in moved)
    assert all(p.requires_grad for p in s.model.parameters())  # unfrozen after training, whatever the epochs


def test_a_run_that_only_freezes_records_where_its_weights_came_from(work):
    src = source_state(work)
    res = cotune.train(config(work / "high.csv", model={"init_from": str(work / "runs" / "src")},
                              train={"epochs": 2, "freeze_epochs": 2}), out=work / "runs" / "frozen")
    saved = bundle.load(res.path).model
    in_head = head_keys(saved)
    assert all(torch.equal(v, src[k]) for k, v in saved.state_dict().items() if k not in in_head)
    metrics = json.loads((res.path / "metrics.json").read_text())
    assert metrics["transfer"]["init_from"] == str((work / "runs" / "src").resolve())
    assert metrics["transfer"]["head"] == "reinitialized"
    assert json.loads((res.path / "config.json").read_text())["model"]["init_from"] == str(work / "runs" / "src")
    # the source's fitted preprocessing, not one refitted on the new rows: the inputs its weights expect
    assert (res.path / "preprocess.json").read_text() == (work / "runs" / "src" / "preprocess.json").read_text()


def test_backbone_lr_scales_the_backbone_step_and_not_the_head(work):
    """One plain SGD step on the whole training part from the same weights (and the same dropout masks): the
    backbone moves exactly backbone_lr times as far, the head as far."""
    moves = {}
    for factor in (1.0, 0.1):
        s, data = built(config(work / "high.csv", model={"init_from": str(work / "runs" / "src")},
                               train={"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
                                      "epochs": 1, "batch_size": 100_000, "backbone_lr": factor, "lr": 0.05}))
        before = {k: v.clone() for k, v in s.model.state_dict().items()}
        train(s.model, TensorData.from_numpy(data.train_X, data.train_y), None, s.train_cfg, RT, task="multiclass")
        moves[factor] = {k: v - before[k] for k, v in s.model.state_dict().items() if v.is_floating_point()}
        in_head = head_keys(s.model)
    for k, full in moves[1.0].items():
        if "running" in k:
            continue
        want = full if k in in_head else 0.1 * full
        assert torch.allclose(moves[0.1][k], want, atol=1e-7), k
    assert any(moves[1.0][k].abs().max() > 0 for k in moves[1.0] if k not in in_head)


def test_the_optimizer_groups_scale_the_backbone_rate_and_keep_weight_decay_off_biases():
    model = create_model("mlp", (8,), 3, width=4, depth=2)
    cfg = from_dict({}, ["train.backbone_lr=0.25", "train.weight_decay=0.01"]).train
    groups = make_optimizer(model, cfg, head=head(model)).param_groups
    in_head = {id(p) for p in head(model).parameters()}
    for g in groups:
        assert g["lr_scale"] == (1.0 if all(id(p) in in_head for p in g["params"]) else 0.25)
        assert all(id(p) in in_head for p in g["params"]) or not any(id(p) in in_head for p in g["params"])
        assert g["weight_decay"] == (0.01 if all(p.dim() >= 2 for p in g["params"]) else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) and len(groups) == 4
    assert [g["lr_scale"] for g in make_optimizer(model, from_dict({}).train).param_groups] == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------- the CLI

def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def assert_one_line_error(res, match: str) -> str:
    code, out, err = res
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in out + err, f"exit {code}\n{out}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    return lines[0]


def test_train_from_a_relative_run_directory_through_the_cli(work, monkeypatch):
    monkeypatch.chdir(work)
    (work / "ft.yaml").write_text(yaml.safe_dump(config("high.csv")))
    code, out, err = cli("train", "ft.yaml", "--set", "model.init_from=runs/src", "--out", "runs/ft", "-q")
    assert code == 0, out + err
    transfer = json.loads((work / "runs" / "ft" / "metrics.json").read_text())["transfer"]
    assert transfer["init_from"] == str((work / "runs" / "src").resolve())


def _unfinished(d):
    (d / "runs" / "half").mkdir(parents=True, exist_ok=True)
    (d / "runs" / "half" / "config.json").write_text("{}")
    return "runs/half"


def _ensemble(d):
    bundle.save_ensemble(d / "runs" / "ens", [d / "runs" / "src", d / "runs" / "src"])
    return "runs/ens"


def _sequences(d):
    """A run on sequences (1, 64) of the same digits; the source of the modality and input-shape cases."""
    if not (d / "runs" / "seq" / "model.json").is_file():
        digits = load_digits()
        np.savez(d / "seq.npz", X=digits.data[:300, None, :].astype(np.float32), y=digits.target[:300])
        cotune.train({**config(d / "seq.npz"), "data": {"source": str(d / "seq.npz")}}, out=d / "runs" / "seq")
    return "runs/seq"


def _short_sequences(d):
    digits = load_digits()
    np.savez(d / "short.npz", X=digits.data[:300, None, :32].astype(np.float32), y=digits.target[:300])
    return "short.npz"


# id: (make the source in the work dir -> its init_from, the run's own --set arguments, what the line says)
BAD = {
    "missing-directory": (lambda d: "runs/nope", (), "model.init_from 'runs/nope' is not a directory"),
    "unfinished-run": (_unfinished, (), "no model.safetensors; it is not a finished run"),
    "ensemble": (_ensemble, (), "is an ensemble of 2 models, not one; point it at one of them"),
    "other-modality": (_sequences, (), "holds a model of sequence data but this data is tabular"),
    "other-family": (lambda d: "runs/src", ("model.family=cnn1d",), "holds model family 'mlp' but model.family is 'cnn1d'"),
    "other-width": (lambda d: "runs/src", ("model.width=32",),
                    "layer 'net.1.weight' is (16, 64) there but (32, 64) here; its model knobs differ (model.width=16 there, 32 here)"),
    "other-depth": (lambda d: "runs/src", ("model.depth=2",), "layer 'net.5' is the source's output layer but this "
                    "model's is 'net.9'; its model knobs differ (model.depth=1 there, 2 here)"),
    "dropout-off": (lambda d: "runs/src", ("model.dropout=0",), "model.dropout=0.1 there, 0.0 here"),
    "other-columns": (lambda d: "runs/src", ("data.source=renamed.csv",), "was trained on other table columns (px0, px1"),
    "other-sample-shape": (_sequences, ("data.source=short.npz", "data.target=null"),
                           "was trained on samples of shape (1, 64), this data's are (1, 32)"),
    "other-scaling": (lambda d: "runs/src", ("data.numeric=quantile",),
                      "preprocesses tables with data.numeric='standard' (its preprocessing comes with its weights) but "
                      "this run sets 'quantile'; set data.numeric=standard."),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_init_from_is_one_line_exit_2_and_leaves_nothing(case, work, monkeypatch):
    make, extra, match = BAD[case]
    monkeypatch.chdir(work)
    source = make(work)
    if case == "other-sample-shape":
        _short_sequences(work)
    sets = [a for s in (f"model.init_from={source}", *extra) for a in ("--set", s)]
    (work / "ft.yaml").write_text(yaml.safe_dump(config("high.csv")))
    out = work / "runs" / f"bad-{case}"
    assert_one_line_error(cli("train", "ft.yaml", *sets, "--out", out, "-q"), match)
    assert not out.exists()


def test_the_real_process_exits_2_with_one_line(work):
    (work / "ft.yaml").write_text(yaml.safe_dump(config("high.csv")))
    p = subprocess.run([sys.executable, "-m", "cotune.cli", "train", "ft.yaml", "--set", "model.init_from=runs/nope",
                        "--out", "runs/bad", "-q"], cwd=work, capture_output=True, text=True, timeout=300,
                       env={**os.environ, **ENV})
    assert_one_line_error((p.returncode, p.stdout, p.stderr), "is not a directory")
    assert not (work / "runs" / "bad").exists()
