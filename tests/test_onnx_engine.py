"""Predicting through ONNX Runtime (cotune.onnx_engine): the same predictions as the torch bundle, on tables,
regression and ensembles, found from a run, a search or its final/, without importing torch; one-line errors.

Each model is exported here with torch.onnx into a compress directory laid out as `cotune compress` writes it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cotune
from cotune import onnx_engine
from cotune.bundle import Bundle, Ensemble, save_decision, save_ensemble
from cotune.cli import app
from cotune.errors import BundleError, ConfigError
from cotune.onnx_engine import OnnxBundle, OnnxEnsemble
from cotune.predictor import resolve

TINY = {"model": {"family": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 2, "patience": 0}}


def write_table(path, n=120, seed=0) -> pd.DataFrame:
    """Numeric and categorical columns with missing cells; a binary string target."""
    g = np.random.default_rng(seed)
    x1, x2 = g.normal(size=n), g.normal(size=n)
    color = g.choice(["red", "green", "blue"], n).astype(object)
    df = pd.DataFrame({"x1": x1.round(3), "x2": x2.round(3), "color": color,
                       "label": np.where(x1 + (color == "red") - x2 > 0.3, "yes", "no")})
    df.loc[[3, 17], "x1"] = np.nan
    df.loc[[8], "color"] = np.nan
    df.to_csv(path, index=False)
    return df


def train(out, source, seed=0, **data):
    return cotune.train({**TINY, "data": {"source": str(source), **data}, "runtime": {"seed": seed, "progress": False}},
                        out=out).path


def export(bundle_dir, to):
    """One bundle (or ensemble) as a self-contained export directory: model.onnx beside the bundle's JSON files."""
    b = cotune.load(bundle_dir)
    if isinstance(b, Ensemble):
        to.mkdir(parents=True)
        shutil.copy(bundle_dir / "ensemble.json", to / "ensemble.json")
        names = json.loads((bundle_dir / "ensemble.json").read_text())["members"]
        for name, m in zip(names, b.members):
            export(m.path, to / name)
    else:
        to.mkdir(parents=True)
        x = torch.zeros((2, *b.spec.in_shape))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(b.model.eval(), (x,), dynamo=True,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        program.save(str(to / "model.onnx"))
        for f in ("model.json", "preprocess.json"):
            shutil.copy(bundle_dir / f, to / f)
    if (bundle_dir / "decision.json").is_file():
        shutil.copy(bundle_dir / "decision.json", to / "decision.json")
    return to


def compress(bundle_dir, where, variant="fp32"):
    """where/compress.json choosing `variant`, exported from bundle_dir (another variant beside it, not chosen)."""
    export(bundle_dir, where / variant)
    (where / "other").mkdir(parents=True)
    (where / "compress.json").write_text(json.dumps({"chosen": variant, "variants": [variant, "other"]}))
    return where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    df = write_table(d / "table.csv")
    df.drop(columns="label").to_csv(d / "new.csv", index=False)
    clf, clf2 = train(d / "clf", d / "table.csv", target="label"), train(d / "clf2", d / "table.csv", seed=1, target="label")
    save_decision(clf, {"temperature": 1.7, "threshold": 0.4})  # both engines apply it
    save_ensemble(d / "ens", [clf, clf2])
    save_decision(d / "ens", {"temperature": 0.8, "threshold": None})
    compress(clf, clf / "compress")
    reg = train(d / "reg", "sklearn:diabetes", target_transform="log")
    compress(reg, reg / "compress")
    compress(d / "ens", d / "ens" / "compress", variant="int8")
    return d


def test_classification_matches_torch(runs):
    t, o = cotune.load(runs / "clf"), cotune.load(runs / "clf", engine="onnx")
    assert isinstance(t, Bundle) and isinstance(o, OnnxBundle) and o.path == runs / "clf" / "compress" / "fp32"
    assert o.threshold == 0.4 and o.decision["temperature"] == 1.7 and o.classes_ == t.classes_ == ["no", "yes"]
    X = pd.read_csv(runs / "table.csv")
    np.testing.assert_allclose(o.predict_proba(X), t.predict_proba(X), atol=1e-4)
    np.testing.assert_array_equal(o.predict(X), t.predict(X))
    ft, fo = t.predict_frame(runs / "new.csv"), o.predict_frame(runs / "new.csv")
    assert list(fo.columns) == list(ft.columns) == ["prediction", "proba_no", "proba_yes", "threshold"]
    pd.testing.assert_frame_equal(fo, ft, atol=1e-4, check_exact=False)


def test_regression_matches_torch(runs):
    t, o = cotune.load(runs / "reg"), cotune.load(runs / "reg", engine="onnx")
    assert o.spec.target_transform is not None and o.task == "regression"
    pred = o.predict("sklearn:diabetes")
    assert pred.shape == (442,)
    np.testing.assert_allclose(pred, t.predict("sklearn:diabetes"), rtol=1e-4)
    with pytest.raises(BundleError, match="regression"):
        o.predict_proba("sklearn:diabetes")


def test_ensemble_matches_torch(runs):
    t, o = cotune.load(runs / "ens"), cotune.load(runs / "ens", engine="onnx")
    assert isinstance(o, OnnxEnsemble) and len(o.members) == 2 and o.decision["temperature"] == 0.8
    assert all(isinstance(m, OnnxBundle) for m in o.members) and o.members[0].threshold == 0.4
    np.testing.assert_allclose(o.predict_proba(runs / "new.csv"), t.predict_proba(runs / "new.csv"), atol=1e-4)
    np.testing.assert_array_equal(o.predict(runs / "new.csv"), t.predict(runs / "new.csv"))


def test_batches_and_sessions(runs, monkeypatch):
    o = cotune.load(runs / "clf", engine="onnx")
    opts = o.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    X = pd.read_csv(runs / "table.csv")
    whole = o.predict_proba(X)
    monkeypatch.setattr(onnx_engine, "BATCH", 7)  # 120 rows in 18 runs, concatenated in order
    np.testing.assert_array_equal(o.predict_proba(X), whole)
    assert o.predict_proba(X.head(0)).shape == (0, 2)
    assert onnx_engine.load(o.path, threads=2).session.get_session_options().intra_op_num_threads == 2


def test_a_search_its_final_and_a_variant_resolve_to_the_same_export(runs, tmp_path):
    search = tmp_path / "s"
    shutil.copytree(runs / "clf", search / "final", ignore=shutil.ignore_patterns("compress"))
    (search / "fit.json").write_text("{}")
    assert resolve(search) == (search / "final", search / "compress")
    assert resolve(search / "final") == (search / "final", search / "compress")
    assert resolve(runs / "clf") == (runs / "clf", runs / "clf" / "compress")
    assert resolve(tmp_path / "nothing")[0] == tmp_path / "nothing"
    with pytest.raises(BundleError, match=r"no ONNX export; run `cotune compress .*s` first, or use --engine torch"):
        cotune.load(search / "final", engine="onnx")
    shutil.copytree(runs / "clf" / "compress", search / "compress")
    X = pd.read_csv(runs / "new.csv")
    want = cotune.load(runs / "clf").predict_proba(X)
    for where in (search, search / "final", search / "compress" / "fp32"):
        np.testing.assert_allclose(cotune.load(where, engine="onnx").predict_proba(X), want, atol=1e-4)
    assert isinstance(cotune.load(search), Bundle)  # the torch engine takes a search directory too


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg.strip() and "\n" not in msg, msg
    return msg


def test_damaged_or_missing_exports_are_one_line_errors(runs, tmp_path, monkeypatch):
    run = shutil.copytree(runs / "clf", tmp_path / "clf")
    index = run / "compress" / "compress.json"
    for text, match in (('{"chosen": "fp3', "damaged"), ('{"variants": []}', "damaged"), ('{"chosen": "../x"}', "damaged"),
                        ('{"chosen": "gone"}', "'gone' but")):
        index.write_text(text)
        with pytest.raises(BundleError) as e:
            cotune.load(run, engine="onnx")
        assert match in one_line(e) and "cotune compress" in str(e.value)
    index.write_text('{"chosen": "fp32"}')
    (run / "compress" / "fp32" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError) as e:
        cotune.load(run, engine="onnx")
    assert "damaged" in one_line(e)
    (run / "compress" / "fp32" / "model.onnx").unlink()
    with pytest.raises(BundleError) as e:
        cotune.load(run, engine="onnx")
    assert "model.onnx" in one_line(e)
    with pytest.raises(BundleError) as e:
        cotune.load(tmp_path / "nothing", engine="onnx")
    assert "not found" in one_line(e)
    with pytest.raises(ConfigError) as e:
        cotune.load(run, engine="tensorflow")
    assert "'onnx'" in one_line(e)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(BundleError) as e:
        onnx_engine.load(runs / "clf" / "compress" / "fp32")
    assert "install onnxruntime" in one_line(e)


def test_cli_predicts_through_onnx_without_torch(runs, tmp_path):
    """The real process: `cotune predict RUN DATA --engine onnx --out CSV` never imports torch."""
    out = tmp_path / "onnx.csv"
    code = ("import sys\nfrom cotune.cli import app\n"
            f"try:\n    app(['predict', {str(runs / 'ens')!r}, {str(runs / 'new.csv')!r}, '--engine', 'onnx', '--out', {str(out)!r}])\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch imported' if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 'no torch')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert p.stdout.splitlines()[-2:] == ["exit 0", "no torch"], p.stdout + p.stderr
    got, want = pd.read_csv(out), cotune.predict(runs / "ens", str(runs / "new.csv"), out=tmp_path / "torch.csv")
    assert list(got.columns) == list(want.columns) and len(got) == 120
    np.testing.assert_array_equal(got["prediction"], want["prediction"])
    np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), want.iloc[:, 1:].to_numpy(), atol=1e-4)


@pytest.mark.parametrize("args,match", [(("--engine", "onnx"), "no ONNX export"), (("--engine", "tf"), "'engine' must be")])
def test_cli_bad_engine_is_one_line(runs, tmp_path, args, match):
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(runs / "clf2"), str(runs / "new.csv"), "--out", str(out), *args],
                           env={"COLUMNS": "200"})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not out.exists()
