"""The data knobs applied by a run: fraction, cleaning, balancing, augmentation; and `cotune audit`."""
import json
import subprocess
import sys

import numpy as np
import pytest

import cotune
from cotune.config import from_dict
from cotune.errors import ConfigError
from cotune.pipeline import load_data

FAST = {"model": {"family": "mlp", "width": 32, "depth": 1}, "train": {"epochs": 2, "batch_size": 64},
        "runtime": {"progress": False}}


def run(tmp_path, name="r", **data):
    cfg = {**FAST, "data": {"source": "sklearn:wine", **data}}
    return cotune.train(cfg, out=tmp_path / name)


def data_summary(res):
    return json.loads((res.path / "metrics.json").read_text())["data"]


def test_fraction_uses_a_stratified_share_of_train(tmp_path):
    full, half = data_summary(run(tmp_path, "a")), data_summary(run(tmp_path, "b", fraction=0.5))
    assert half["rows"]["train_split"] == full["rows"]["train_split"]
    assert half["rows"]["train_used"] == pytest.approx(full["rows"]["train_used"] / 2, abs=2)
    assert half["rows"]["test"] == full["rows"]["test"]  # val / test untouched


def test_cleaning_drops_and_relabels_only_training_rows(tmp_path):
    g = np.random.default_rng(0)
    X = g.normal(size=(300, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    X[10:20] = X[0]  # exact duplicates (train/val/test mixed)
    y_noisy = y.copy()
    y_noisy[g.choice(300, 30, replace=False)] ^= 1
    np.savez(tmp_path / "d.npz", X=X, y=y_noisy)
    cfg = {**FAST, "data": {"source": str(tmp_path / "d.npz"), "clean": {"duplicates": "drop", "label_issues": "drop",
                                                                        "min_trust": "low"}}}
    res = cotune.train(cfg, out=tmp_path / "c")
    s = data_summary(res)
    assert s["clean"]["removed"]["duplicates"] >= 1 and s["clean"]["removed"]["label_issues"] >= 5
    assert s["rows"]["train_clean"] == s["rows"]["train_split"] - sum(s["clean"]["removed"].values())
    assert (res.path / "audit.json").exists() and (res.path / "audit.csv").exists()
    res2 = cotune.train({**cfg, "data": {**cfg["data"], "clean": {"label_issues": "relabel", "min_trust": "low"}}},
                        out=tmp_path / "d")
    assert data_summary(res2)["clean"]["relabelled"] >= 5 and data_summary(res2)["rows"]["train_clean"] == s["rows"]["train_split"]


@pytest.mark.parametrize("method", ["class_weights", "oversample", "undersample", "smote", "balanced_batches", "focal"])
def test_every_balance_method_trains(tmp_path, method):
    s = data_summary(run(tmp_path, balance=method))
    assert s["balance"]["method"] == method
    if method in ("oversample", "undersample", "smote"):
        after = s["balance"]["counts_after"]
        assert max(after) == min(after)


def test_augmentation_runs_in_training(tmp_path):
    cfg = {**FAST, "data": {"source": "sklearn:digits", "augment": {"policy": "auto", "strength": 0.5, "mixup": 0.2}},
           "model": {"family": "cnn2d", "width": 8, "depth": 1}}
    s = data_summary(cotune.train(cfg, out=tmp_path / "a"))
    assert "flip" in s["augment"] and "mixup" in s["augment"]


@pytest.mark.parametrize("data, needle", [
    ({"source": "sklearn:digits", "balance": "smote"}, "is for tables"),
    ({"source": "sklearn:diabetes", "clean": {"label_issues": "drop"}}, "classification"),
    ({"source": "sklearn:diabetes", "balance": "oversample"}, "regression"),
    ({"source": "sklearn:wine", "augment": {"shift": 0.5}}, "data.augment.shift"),
])
def test_knobs_that_do_not_fit_the_data_are_one_line_errors(tmp_path, data, needle):
    with pytest.raises(ConfigError) as e:
        cotune.train({**FAST, "data": data}, out=tmp_path / "x")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_audit_api_and_cli(tmp_path):
    rep = cotune.audit("sklearn:wine", out=tmp_path / "a")
    assert {"duplicates", "outliers", "label_issues", "class_imbalance"} <= set(rep.issues)
    summary = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert summary["rows"]["train"] > 0
    cli = [sys.executable, "-m", "cotune.cli", "audit"]
    ok = subprocess.run(cli + ["sklearn:iris", "--checks", "duplicates,outliers", "--out", str(tmp_path / "b")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "b" / "audit.csv").exists(), ok.stderr
    for args, needle in ((["sklearn:diabetes", "--checks", "label_issues"], "classification"),
                         (["sklearn:iris", "--checks", "nope"], "nope")):
        bad = subprocess.run(cli + args, capture_output=True, text=True)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and needle in bad.stderr
        assert len([ln for ln in bad.stderr.splitlines() if ln.strip()]) == 1


def test_the_data_cache_is_keyed_on_what_the_source_reads():
    base = from_dict({"data": {"source": "sklearn:iris"}})
    ds = load_data(base)
    assert load_data(base.replace(**{"train.lr": 0.01, "data.fraction": 0.5, "model.width": 8})) is ds
    fewer = load_data(base.replace(**{"data.drop": ["petal width (cm)"]}))
    assert fewer is not ds and fewer.X.shape[1] == ds.X.shape[1] - 1
    assert load_data(base.replace(**{"data.task": "multiclass"})) is not fewer
    assert load_data(base) is not ds  # one source at a time: a new key evicts the old
