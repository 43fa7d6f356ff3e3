"""Drift at predict time (cotune.drift): random splits of a real table stay quiet, a 2-sd shift of one column
names that column alone, categorical, missing-value, joint and array shifts are caught, a tiny shift in a huge
batch is not; end to end through `cotune predict` (torch and ONNX engines) and the Python API; bundles without
a reference still predict; bad paths are one-line errors."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

import cotune
from cotune import drift
from cotune.bundle import save_ensemble
from cotune.cli import app
from cotune.data import sources
from cotune.data.dataset import make_dataset
from cotune.data.split import split_indices
from cotune.errors import BundleError

TINY = {"model": {"family": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 2, "patience": 0}}


def reference(where, ds, rows):
    drift.save_reference(where, ds, rows)
    return drift.load_reference(where)


def table_ref(df: pd.DataFrame, categorical=()):
    numeric = [c for c in df.columns if c not in categorical]
    return drift.Reference(drift.typed(df, set(numeric), set(categorical)), numeric, list(categorical), "tabular",
                           len(df), None)


def compare(ref, df: pd.DataFrame, **kw):
    return drift.compare(ref, drift.typed(df, set(ref.numeric), set(ref.categorical)), **kw)


# ---------------------------------------------------------------------------------------------- the module

@pytest.mark.parametrize("name,splits", [("breast_cancer", 20), ("diabetes", 5)])
def test_random_splits_stay_quiet_and_a_2sd_shift_names_only_its_column(tmp_path, name, splits):
    """Random splits of a real table: the held-out rows are never flagged against the training rows' sample
    (breast_cancer: 0 of 20, a false-alarm rate under 5%); the same rows with one numeric column moved by 2 sd
    flag that column alone."""
    ds = sources.load(f"sklearn:{name}")
    alarms, sd = 0, ds.X.std()
    for seed in range(splits):
        tr, _, te = split_indices(ds, val=0.0, test=0.3, seed=seed)
        ref = reference(tmp_path / str(seed), ds, tr)
        new = ds.X.iloc[te]
        alarms += drift.check([tmp_path / str(seed)], new).flagged
        if seed < 3:
            col = ds.numeric[(7 * seed + 2) % len(ds.numeric)]
            shifted = new.assign(**{col: new[col] + 2 * sd[col]})
            report = compare(ref, shifted, seed=seed)
            assert report.flagged and report.moved == [col], (col, report.summary())
            assert repr(col) in report.summary() and "mean +" in report.summary()
            assert report.columns[col].p_adjusted <= drift.ALPHA and report.columns[col].psi >= drift.MIN_PSI
    assert alarms / splits < 0.05, f"{alarms} of {splits} random splits flagged"


def test_a_tiny_shift_in_a_huge_batch_is_significant_but_not_flagged():
    g = np.random.default_rng(0)
    ref = table_ref(pd.DataFrame({"x": g.normal(size=5000)}))
    tiny = compare(ref, pd.DataFrame({"x": g.normal(size=200_000) + 0.1}))
    assert tiny.columns["x"].p_adjusted < 1e-4 and tiny.columns["x"].psi < drift.MIN_PSI and not tiny.flagged
    assert compare(ref, pd.DataFrame({"x": g.normal(size=200_000) + 0.6})).moved == ["x"]


def test_categorical_shifts_unseen_categories_and_missing_values():
    g = np.random.default_rng(1)
    p = [0.5, 0.3, 0.2]
    ref = table_ref(pd.DataFrame({"c": g.choice(list("abc"), 3000, p=p), "v": g.normal(size=3000)}), categorical=["c"])
    same = compare(ref, pd.DataFrame({"c": g.choice(list("abc"), 300, p=p), "v": g.normal(size=300)}))
    assert not same.flagged and same.columns["c"].test == "chi2"
    few_new = compare(ref, pd.DataFrame({"c": [*g.choice(list("abc"), 297, p=p), "d", "e", "f"], "v": g.normal(size=300)}))
    assert not few_new.flagged and few_new.columns["c"].unseen == pytest.approx(0.01)  # 1% unseen: within chance
    unseen = compare(ref, pd.DataFrame({"c": g.choice(list("abcd"), 300, p=[0.3, 0.2, 0.2, 0.3]), "v": g.normal(size=300)}))
    assert unseen.moved == ["c"] and unseen.columns["c"].unseen > 0.2 and "unseen" in unseen.summary()
    reweighted = compare(ref, pd.DataFrame({"c": g.choice(list("abc"), 300, p=p[::-1]), "v": g.normal(size=300)}))
    assert reweighted.moved == ["c"]
    v = g.normal(size=300)
    v[:120] = np.nan  # 40% missing where training had none
    holes = compare(ref, pd.DataFrame({"c": g.choice(list("abc"), 300, p=p), "v": v}))
    assert holes.moved == ["v"] and holes.columns["v"].missing_new == pytest.approx(0.4)


def test_a_joint_shift_is_caught_by_the_classifier_test_alone():
    """Same marginals, the correlation gone: no column moves, the rows together do."""
    g = np.random.default_rng(2)
    x = g.normal(size=2000)
    ref = table_ref(pd.DataFrame({"x": x, "y": 0.95 * x + np.sqrt(1 - 0.95 ** 2) * g.normal(size=2000)}))
    report = compare(ref, pd.DataFrame({"x": g.normal(size=1000), "y": g.normal(size=1000)}))
    assert report.moved == [] and report.flagged and report.multivariate["auc"] > drift.MIN_AUC
    assert "taken together" in report.summary() and "AUC" in report.summary()
    few = compare(ref, pd.DataFrame({"x": [0.1] * 5, "y": [0.2] * 5}))
    assert "skipped" in few.multivariate and not few.multivariate["flagged"]


def test_images_and_sequences_are_compared_on_per_channel_summaries(tmp_path):
    g = np.random.default_rng(3)
    images = g.random((600, 3, 8, 8)).astype(np.float32)
    ds = make_dataset(images, g.integers(0, 2, 600))
    ref = reference(tmp_path / "img", ds, np.arange(400))
    assert list(ref.frame.columns)[:3] == ["c0_mean", "c0_std", "c0_step"] and ref.modality == "image"
    assert not drift.check([tmp_path / "img"], images[400:]).flagged
    darker = images[400:].copy()
    darker[:, 1] *= 0.5  # the second channel at half brightness
    report = drift.check([tmp_path / "img"], darker)
    assert report.flagged and set(report.moved) <= {"c1_mean", "c1_std", "c1_step"} and "c1_mean" in report.moved
    assert "per-row summaries" in report.summary()
    seq = g.random((5, 20, 30))
    wide = drift.summaries(seq)  # more than 16 channels: summaries over all of them
    assert list(wide.columns) == ["all_mean", "all_std", "all_step"]
    np.testing.assert_allclose(wide["all_std"], seq.reshape(5, -1).std(1))
    np.testing.assert_allclose(wide["all_step"], np.abs(np.diff(seq, axis=-1)).mean((1, 2)))


def test_holm_psi_and_the_reference_file(tmp_path):
    np.testing.assert_allclose(drift.holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    assert drift.psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert drift.chi2_pooled([100, 0], [0, 1]) == (0.0, 1.0)  # one sparse cell pools into the other: no test
    g = np.random.default_rng(4)
    wide = make_dataset(pd.DataFrame(g.normal(size=(9000, 400)), columns=[f"f{i}" for i in range(400)]), g.integers(0, 2, 9000))
    ref = reference(tmp_path / "wide", wide, np.arange(9000))
    assert len(ref.frame) == drift.MAX_CELLS // 400 and ref.training_rows == 9000  # wide tables: fewer rows
    assert drift.load_reference(tmp_path / "none") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / drift.REFERENCE).write_bytes(b"not parquet")
    with pytest.raises(BundleError, match="damaged.*delete it"):
        drift.load_reference(tmp_path / "bad")
    from cotune.compress.core import BUNDLE_FILES
    assert drift.REFERENCE in BUNDLE_FILES  # every exported variant checks drift too


# ---------------------------------------------------------------------------------------------- end to end

def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model trained on 400 rows of breast_cancer (plus a categorical column); the other 169 rows held out,
    as they are and with 'mean texture' moved by 2 sd."""
    d = tmp_path_factory.mktemp("drift")
    df = load_breast_cancer(as_frame=True).frame
    g = np.random.default_rng(0)
    df["site"] = g.choice(["north", "south", "east"], len(df))
    perm = g.permutation(len(df))
    df.iloc[perm[:400]].to_csv(d / "train.csv", index=False)
    held = df.iloc[perm[400:]]
    held.drop(columns="target").to_csv(d / "held.csv", index=False)
    held.assign(**{"mean texture": held["mean texture"] + 2 * df["mean texture"].std()}).to_csv(d / "shifted.csv", index=False)
    cotune.train({**TINY, "data": {"source": str(d / "train.csv"), "target": "target"}, "runtime": {"progress": False}},
                 out=d / "run")
    return d


def test_cli_warns_on_the_shifted_rows_and_writes_the_report(work, tmp_path):
    code, out, err = cli("predict", work / "run", work / "shifted.csv", "--out", tmp_path / "p.csv",
                         "--drift-report", tmp_path / "drift.json")
    assert code == 0, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("drift warning:") and "'mean texture'" in lines[0], err
    assert len(pd.read_csv(tmp_path / "p.csv")) == 169  # predictions are still written
    d = json.loads((tmp_path / "drift.json").read_text())
    assert d["checked"] and d["flagged"] and d["moved"] == ["mean texture"] and d["rows"] == 169
    col = d["columns"]["mean texture"]
    assert col["test"] == "ks" and col["flagged"] and col["p_adjusted"] <= d["alpha"] and col["psi"] >= d["min_psi"]
    assert d["columns"]["site"]["test"] == "chi2" and not d["columns"]["site"]["flagged"]
    assert set(d["columns"]) == set(pd.read_csv(work / "held.csv").columns)
    assert d["multivariate"]["test"] == "classifier" and d["multivariate"]["flagged"]


def test_cli_is_quiet_on_held_out_rows_and_with_no_drift(work, tmp_path):
    code, out, err = cli("predict", work / "run", work / "held.csv", "--out", tmp_path / "p.csv",
                         "--drift-report", tmp_path / "d.json")
    assert code == 0 and err.strip() == "", out + err
    assert json.loads((tmp_path / "d.json").read_text())["moved"] == []
    code, out, err = cli("predict", work / "run", work / "shifted.csv", "--no-drift")
    assert code == 0 and err.strip() == "" and "prediction" in out


@pytest.mark.parametrize("args,match", [(("--drift-report", "{tmp}"), "is a folder"),
                                        (("--drift-report", "{held}/d.json"), "is a file, not a folder"),
                                        (("--drift-report", "{tmp}/d.json", "--no-drift"), "needs the drift check")])
def test_cli_bad_drift_report_is_one_line_exit_2(work, tmp_path, args, match):
    args = [a.format(tmp=tmp_path, held=work / "held.csv") for a in args]
    code, out, err = cli("predict", work / "run", work / "shifted.csv", "--out", tmp_path / "p.csv", *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert "Traceback" not in out + err and not (tmp_path / "p.csv").exists()


def test_a_bundle_saved_without_a_reference_still_predicts(work, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(work / "run", old)
    (old / drift.REFERENCE).unlink()
    code, out, err = cli("predict", old, work / "shifted.csv", "--out", tmp_path / "p.csv", "--drift-report", tmp_path / "d.json")
    assert code == 0 and err.strip() == "" and len(pd.read_csv(tmp_path / "p.csv")) == 169
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["checked"] is False and "without a sample" in d["note"] and not d["flagged"]


def test_python_api_and_an_ensemble(work, tmp_path):
    with pytest.warns(drift.DriftWarning, match="'mean texture'"):
        frame = cotune.predict(work / "run", str(work / "shifted.csv"), drift_report=tmp_path / "d.json")
    assert len(frame) == 169 and json.loads((tmp_path / "d.json").read_text())["moved"] == ["mean texture"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # held-out rows: no warning at all
        cotune.predict(work / "run", str(work / "held.csv"))
    save_ensemble(tmp_path / "ens", [work / "run", work / "run"])  # members keep their reference.parquet
    ens = cotune.load(tmp_path / "ens")
    report = ens.drift(pd.read_csv(work / "shifted.csv"))
    assert report.flagged and report.moved == ["mean texture"] and report.to_dict()["moved"] == ["mean texture"]
    assert not ens.drift(work / "held.csv").flagged


def test_the_onnx_engine_checks_drift_too(work, tmp_path):
    """`cotune predict --engine onnx`: an export laid out as `cotune compress` writes it (reference.parquet beside
    model.onnx), exported here with the TorchScript exporter, which is fast."""
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    b = cotune.load(run)
    variant = run / "compress" / "fp32"
    variant.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(b.model.eval(), (torch.zeros((2, *b.spec.in_shape)),), str(variant / "model.onnx"),
                          dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    for f in ("model.json", "preprocess.json", drift.REFERENCE):
        shutil.copy(run / f, variant / f)
    (run / "compress" / "compress.json").write_text(json.dumps({"chosen": "fp32"}))
    code, out, err = cli("predict", run, work / "shifted.csv", "--engine", "onnx", "--drift-report", tmp_path / "d.json")
    assert code == 0 and "drift warning:" in err and "'mean texture'" in err, out + err
    assert json.loads((tmp_path / "d.json").read_text())["moved"] == ["mean texture"]
    code, out, err = cli("predict", run, work / "held.csv", "--engine", "onnx")
    assert code == 0 and err.strip() == "", out + err
