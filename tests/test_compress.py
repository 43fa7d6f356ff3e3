"""`cotune compress`: every registered model exports to ONNX with PyTorch's outputs, int8 variants shrink the file,
a run and an ensemble search compress end to end (table, chosen variant, ONNX predictions equal to torch's), the
report draws the section, and bad input is one line with exit code 2 and nothing written."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cotune
from cotune.bundle import save_ensemble
from cotune.cli import app
from cotune.compress import export
from cotune.compress.core import check_args, check_keeps
from cotune.compress.table import within
from cotune.compress.quantize import quantize
from cotune.errors import BundleError, ConfigError
from cotune.evaluate import Metric
from cotune.models import create_model, families
from cotune.models.registry import family_of
from cotune.track import write_json

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SHAPES = {"mlp": (12,), "cnn1d": (2, 24), "cnn2d": (3, 8, 8), "gru": (2, 9), "lstm": (2, 9), "transformer": (2, 9)}
LAYOUT = {"numeric": 3, "onehot": 2, "cardinalities": [4, 3],
          "bins": [[-1.0, 0.0, 1.0], [-2.0, 0.5, 1.0, 3.0], [0.0, 1.0]]}
DIGITS = {"data": {"source": "sklearn:digits"}, "model": {"family": "mlp", "width": 32, "depth": 2, "norm": "batch"},
          "train": {"epochs": 6, "batch_size": 64, "patience": 0}, "runtime": {"progress": False, "threads": 1}}
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def _export_and_check(tmp_path, name, shape, out_dim=3, **kw):
    torch.manual_seed(0)
    model = create_model(name, shape, out_dim, **kw).eval()
    path = export.to_onnx(model, shape, tmp_path / f"{name}.onnx", family=name)
    X = torch.randn(300, *shape).numpy()
    return export.parity(model, path, X)


@pytest.mark.parametrize("name", families())
def test_every_registered_family_exports_with_torchs_outputs(tmp_path, name):
    """Every family's code path (bench/export_parity.py runs every registered size, list_models(), on real data)."""
    res = _export_and_check(tmp_path, name, SHAPES[family_of(name)])
    assert res["batches"] == [1, 7, 256]
    assert res["max_abs_diff"] <= 1e-4 and res["argmax_agreement"] == 1.0 and res["ok"], res


@pytest.mark.parametrize("kw", [dict(ensemble=4), dict(layout=LAYOUT, num_embedding="periodic"),
                                dict(layout=LAYOUT, num_embedding="piecewise", ensemble=2),
                                dict(depth=0)], ids=["tabm", "periodic", "piecewise-tabm", "linear"])
def test_table_networks_export_too(tmp_path, kw):
    shape = (3 + 2 + 2,) if "layout" in kw else (12,)
    torch.manual_seed(0)
    model = create_model("mlp", shape, 1 if kw.get("depth") == 0 else 4, **kw).eval()
    path = export.to_onnx(model, shape, tmp_path / "m.onnx")
    X = np.random.default_rng(0).normal(size=(300, *shape)).astype(np.float32)
    if "layout" in kw:
        X[:, -2:] = np.random.default_rng(1).integers(0, 3, size=(300, 2))  # category codes
    res = export.parity(model, path, X)
    assert res["ok"], res


def test_int8_shrinks_the_file_and_keeps_the_predictions(tmp_path):
    rng = np.random.default_rng(0)
    for name, shape, want in (("cnn1d", (1, 40), "static"), ("mlp", (40,), "dynamic")):
        torch.manual_seed(0)
        model = create_model(name, shape, 5, width=64, depth=2).eval()
        fp32 = export.to_onnx(model, shape, tmp_path / f"{name}.onnx")
        X = rng.normal(size=(256, *shape)).astype(np.float32)
        info = quantize(fp32, tmp_path / f"{name}-int8.onnx", X)
        assert info["method"] == want
        assert (tmp_path / f"{name}-int8.onnx").stat().st_size <= 0.45 * fp32.stat().st_size
        with torch.inference_mode():
            ref = model(torch.from_numpy(X)).numpy()
        out = export.run_session(export.session(tmp_path / f"{name}-int8.onnx"), X)
        assert out.shape == ref.shape and np.abs(out - ref).max() < 0.25 * np.abs(ref).max()


def test_the_tolerance_counts_points_or_percent():
    acc, loss = Metric("accuracy", True), Metric("rmse", False)
    assert within(acc, 0.900, 0.896, 0.5) and not within(acc, 0.900, 0.894, 0.5)
    assert within(loss, 2.0, 2.009, 0.5) and not within(loss, 2.0, 2.02, 0.5)
    with pytest.raises(ConfigError):
        check_args(-1, "size", (1,))
    with pytest.raises(ConfigError):
        check_args(0.5, "speed", (1,))
    with pytest.raises(ConfigError):
        check_args(0.5, "size", "1,x")
    assert check_keeps("0.75,0.5") == (0.75, 0.5) and check_keeps("none") == ()
    with pytest.raises(ConfigError):
        check_keeps("1.5")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return cotune.train(DIGITS, out=tmp_path_factory.mktemp("compress") / "digits").path


def _digits_rows(run):
    from cotune.pipeline import load_data
    ds = load_data(cotune.load_config(run / "config.json"))
    return ds.X[:300]


def test_compress_a_run_end_to_end(digits_run, tmp_path):
    run = shutil.copytree(digits_run, tmp_path / "run")
    code, out, err = cli("compress", run, "--tolerance", "1", "--batch", "1,64", "-q")
    assert code == 0, err
    comp = run / "compress"
    rec = json.loads((comp / "compress.json").read_text())
    names = [r["variant"] for r in rec["variants"]]
    assert names[:3] == ["torch", "onnx-fp32", "onnx-int8"] and {"pruned-75", "pruned-50", "pruned-25"} <= set(names)
    by = {r["variant"]: r for r in rec["variants"]}
    assert by["onnx-fp32"]["max_abs_diff"] <= 1e-4 and by["onnx-fp32"]["argmax_agreement"] == 1.0
    assert by["onnx-int8"]["bytes"] < 0.45 * by["onnx-fp32"]["bytes"]
    assert by["pruned-50"]["params"] < 0.6 * by["torch"]["params"]
    assert rec["chosen"] in names and by[rec["chosen"]]["within_tolerance"] and by[rec["chosen"]]["chosen"]
    assert set(rec["batches"]) == {1, 64} and all(by[n]["latency_ms_b64"] > 0 for n in names)
    csv = pd.read_csv(comp / "compress.csv")
    assert list(csv["variant"]) == names
    assert (comp / "model.onnx").is_file() and not list(tmp_path.glob("run/.compress-*"))
    # the pruned variant is an ordinary run directory too
    assert cotune.load(comp / "pruned-50").spec.kwargs["width"] == 16
    # predictions through ONNX Runtime equal the torch engine's for the fp32 export
    X = _digits_rows(run)
    onnx_p = cotune.load(comp / "onnx-fp32", engine="onnx").predict_proba(X)
    np.testing.assert_allclose(onnx_p, cotune.load(run).predict_proba(X), atol=1e-4)
    # `cotune predict RUN --engine onnx` runs the chosen variant
    code, out, err = cli("predict", run, "sklearn:digits", "--engine", "onnx", "--out", tmp_path / "p.csv")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "p.csv")
    chosen = cotune.load(comp / rec["chosen"], engine="onnx").predict_frame("sklearn:digits")
    np.testing.assert_allclose(frame.filter(like="proba_").to_numpy(), chosen.filter(like="proba_").to_numpy(), atol=1e-6)


def test_compress_an_ensemble_distils_a_student(digits_run, tmp_path):
    other = cotune.train({**DIGITS, "model": {**DIGITS["model"], "width": 24}}, out=tmp_path / "b").path
    search = tmp_path / "search"
    search.mkdir()
    write_json(search / "fit.json", {"finished": True})
    save_ensemble(search / "final", [digits_run, other])
    shutil.copy2(digits_run / "config.json", search / "final" / "config.json")
    res = cotune.compress(search, tolerance=2.0, prefer="latency", batches=(1, 32), keeps=(0.5,))
    by = {r["variant"]: r for r in res.rows}
    assert {"torch", "onnx-fp32", "onnx-int8", "distilled", "distilled-int8", "distilled-pruned-50"} <= set(by)
    assert by["torch"]["models"] == 2 and by["distilled"]["models"] == 1
    assert by["distilled"]["params"] < by["torch"]["params"]
    assert res.path == search / "compress"
    # the search's final/ finds the same compression directory for predictions
    X = _digits_rows(digits_run)
    ens_onnx = cotune.load(search / "compress" / "onnx-fp32", engine="onnx").predict_proba(X)
    np.testing.assert_allclose(ens_onnx, cotune.load(search / "final").predict_proba(X), atol=1e-4)
    from cotune.report import build_report
    html = build_report(search).read_text()
    assert "Compression: smaller and faster variants" in html and "distilled-int8" in html


def test_bad_input_is_one_line_and_writes_nothing(digits_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy2(digits_run / "config.json", unfinished / "config.json")
    run = shutil.copytree(digits_run, tmp_path / "run")
    cases = [(unfinished, ()), (run, ("--tolerance", "-1")), (run, ("--tolerance", "500")), (run, ("--prefer", "speed")),
             (run, ("--batch", "0")), (run, ("--prune", "2")), (tmp_path / "missing", ())]
    for where, extra in cases:
        code, out, err = cli("compress", where, *extra, "-q")
        assert code == 2, (where, extra, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
        assert not (where / "compress").exists() and not list(where.parent.glob(".compress-*"))
    with pytest.raises(BundleError, match="no final model"):
        (tmp_path / "search" / "final").mkdir(parents=True)
        write_json(tmp_path / "search" / "fit.json", {})
        cotune.compress(tmp_path / "search")
