"""`cotune explain`: permutation importance finds the informative columns of a table (3 seeds), integrated gradients
keep their completeness property and their shapes, ensembles are averaged over their members, the files and the
report section appear, and bad input is one line with exit code 2 and nothing written."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cotune
from cotune import api
from cotune.bundle import save_ensemble
from cotune.cli import app
from cotune.errors import BundleError, ConfigError, DataError
from cotune.explain.gradients import integrated_gradients
from cotune.models import create_model
from cotune.track import write_json

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
needs_captum = pytest.mark.skipif(importlib.util.find_spec("captum") is None, reason="pip install 'cotune[explain]'")
INFORMATIVE = ["x0", "x1", "color"]
FAST = {"runtime": {"progress": False, "threads": 1}}
TABLE = {"model": {"family": "mlp", "width": 32, "depth": 2}, "train": {"epochs": 10, "batch_size": 64}, **FAST}
SEQ = {"data": {"source": "mnist1d", "n_samples": 300}, "model": {"family": "cnn1d", "width": 8, "depth": 2},
       "train": {"epochs": 2, "batch_size": 64}, **FAST}


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def make_table(seed: int, n: int = 500) -> pd.DataFrame:
    """3 informative columns (two numeric, one categorical of 4 levels) and 5 of pure noise (one categorical)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    color = rng.choice(["red", "green", "blue", "grey"], size=n)
    effect = pd.Series(color).map({"red": -2.0, "green": -0.7, "blue": 0.7, "grey": 2.0}).to_numpy()
    y = (2 * x[:, 0] - 2 * x[:, 1] + effect + 0.3 * rng.normal(size=n) > 0).astype(int)
    df = pd.DataFrame({"x0": x[:, 0], "noise0": x[:, 2], "x1": x[:, 1], "noise1": x[:, 3], "color": color,
                       "noise2": x[:, 4], "noise3": x[:, 5], "shade": rng.choice(["a", "b", "c"], size=n)})
    return df.assign(y=y)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Three runs, one per seed (its own table, split and weights)."""
    root = tmp_path_factory.mktemp("explain")
    runs = []
    for seed in range(3):
        make_table(seed).to_csv(root / f"t{seed}.csv", index=False)
        cfg = {**TABLE, "data": {"source": str(root / f"t{seed}.csv"), "target": "y", "split": {"seed": seed}},
               "runtime": {**FAST["runtime"], "seed": seed}}
        runs.append(cotune.train(cfg, out=root / f"run{seed}").path)
    return runs


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory):
    return cotune.train(SEQ, out=tmp_path_factory.mktemp("explain-seq") / "run").path


def test_the_informative_columns_rank_first_for_three_seeds(tables):
    for seed, run in enumerate(tables):
        res = cotune.explain(run, seed=seed)
        names = [r["column"] for r in res.importances]
        assert sorted(names) == sorted(make_table(0).columns.drop("y"))  # original columns: 'color', not 'color=red'
        assert set(names[:3]) == set(INFORMATIVE), (seed, res.importances)
        assert min(r["mean"] for r in res.importances[:3]) > max(r["mean"] for r in res.importances[3:])
        assert all(r["mean"] > 2 * r["sd"] for r in res.importances[:3])
        assert len(res.importances[0]["drops"]) == 5 and res.record["metric"]["name"] == "accuracy"
        assert res.record["rows"] == len(res.rows) == 75  # the run's test rows (15% of 500)
        csv = pd.read_csv(run / "explain" / "explain.csv")
        assert list(csv["column"]) == names and list(csv["rank"]) == list(range(1, 9))
        if seed == 0:
            first = res.importances
    assert cotune.explain(tables[0], seed=0).importances == first  # seeded: the same figures


def test_cli_on_a_table_its_data_and_the_report(tables, tmp_path):
    run = shutil.copytree(tables[0], tmp_path / "run")
    api.report(run)
    code, out, err = cli("explain", run, "--repeats", "3")
    assert code == 0, err
    assert "importance (accuracy)" in out and "explained:" in out and "report:" in out
    rec = json.loads((run / "explain" / "explain.json").read_text())
    assert rec["kind"] == "permutation" and rec["n_repeats"] == 3 and "test rows" in rec["data"]
    html = (run / "report.html").read_text()
    assert "Which inputs the model relies on" in html and "Permutation importance" in html
    # DATA: the rows of a file (its target column scores them)
    data = tmp_path / "new.csv"
    make_table(0, n=200).to_csv(data, index=False)
    code, out, err = cli("explain", run, data, "--rows", "150", "--seed", "3")
    assert code == 0, err
    rec = json.loads((run / "explain" / "explain.json").read_text())
    assert rec["rows"] == 150 and rec["rows_available"] == 200 and "new.csv" in rec["data"]
    assert {r["column"] for r in rec["importances"][:3]} == set(INFORMATIVE)
    assert not list(tmp_path.glob("run/.explain-*"))


def test_bad_input_is_one_line_and_writes_nothing(tables, tmp_path):
    run = shutil.copytree(tables[0], tmp_path / "run", ignore=shutil.ignore_patterns("explain"))
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    shutil.copy2(run / "config.json", no_model / "config.json")
    odd = shutil.copytree(tables[0], tmp_path / "odd", ignore=shutil.ignore_patterns("explain"))
    spec = json.loads((odd / "model.json").read_text())
    write_json(odd / "model.json", {**spec, "modality": "text"})
    short = tmp_path / "short.csv"
    make_table(0, n=50).drop(columns=["x1", "color"]).to_csv(short, index=False)
    unlabeled = tmp_path / "unlabeled.csv"
    make_table(0, n=50).drop(columns=["y"]).to_csv(unlabeled, index=False)
    cases = [(no_model, (), "no model.safetensors"), (odd, (), "no method for 'text'"),
             (run, (short,), "lacks 2 column(s)"), (run, (unlabeled,), "no 'y' column"),
             (run, ("--repeats", "0"), "--repeats"), (run, ("--baseline", "noise"), "--baseline"),
             (tmp_path / "missing", (), "not found")]
    for where, extra, says in cases:
        code, out, err = cli("explain", where, *extra)
        assert code == 2, (where, extra, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and says in err, err
        assert not (where / "explain").exists() and not list(where.parent.glob(".explain-*"))


@needs_captum
def test_integrated_gradients_are_complete_and_shaped():
    """Completeness: a row's attributions sum to f(x) - f(baseline) for its target logit, up to the quadrature."""
    torch.manual_seed(0)
    model = create_model("cnn1d", (2, 16), 3, width=8, depth=2, activation="gelu").eval()
    feats = torch.randn(20, 2, 16).numpy()
    with torch.no_grad():
        logits = model(torch.from_numpy(feats))
    targets = logits.argmax(1).numpy()
    for baseline in ("zero", "mean"):
        attr, gap, diff = integrated_gradients(model, feats, targets, n_steps=32, baseline=baseline)
        assert attr.shape == feats.shape and gap.shape == diff.shape == (20,)
        base = np.zeros_like(feats[:1]) if baseline == "zero" else feats.mean(0, keepdims=True)
        with torch.no_grad():
            f_base = model(torch.from_numpy(np.repeat(base, 20, axis=0))).numpy()
        want = logits.numpy()[np.arange(20), targets] - f_base[np.arange(20), targets]
        np.testing.assert_allclose(diff, want, rtol=1e-4, atol=1e-5)  # f(x) - f(b) as the model computes it
        total = attr.reshape(20, -1).sum(1)
        assert np.abs(total - want).max() <= 0.02 * np.abs(want).max() + 1e-4, (total, want)  # within 2%
        np.testing.assert_allclose(total - want, gap, atol=1e-4)
    _, gap_fine, _ = integrated_gradients(model, feats[:5], targets[:5], n_steps=128)  # more steps, a smaller gap
    assert np.abs(gap_fine).max() <= np.abs(gap[:5]).max() + 1e-6
    # a regressor: one output, no target
    reg = create_model("cnn1d", (2, 16), 1, width=8, depth=1).eval()
    attr, gap, diff = integrated_gradients(reg, feats, None, n_steps=32)
    assert attr.shape == feats.shape and np.abs(gap).max() < 0.05 * np.abs(diff).max() + 1e-4


@needs_captum
def test_a_sequence_run_through_the_cli_and_the_report(seq_run, tmp_path):
    run = shutil.copytree(seq_run, tmp_path / "run")
    code, out, err = cli("explain", run, "--steps", "16")
    assert code == 0, err
    assert "integrated gradients over 60 rows" in out and "cotune report" in out
    rec = json.loads((run / "explain" / "explain.json").read_text())
    assert rec["kind"] == "integrated_gradients" and rec["in_shape"] == [1, 40] and rec["n_steps"] == 16
    assert len(rec["per_position"]) == 40 and np.shape(rec["mean_abs"]) == (1, 40)
    assert len(rec["examples"]) == 4 and np.shape(rec["examples"][0]["attribution"]) == (1, 40)
    assert 0 <= rec["completeness"]["median_relative_gap"] < 0.25  # 16 steps (the unit test checks completeness)
    assert not (run / "explain" / "explain.csv").exists()
    code, out, err = cli("report", run)
    assert code == 0, err
    html = (run / "report.html").read_text()
    assert "Which inputs the model relies on" in html and "Mean |attribution| per position" in html
    # DATA: a built-in name, regenerated as the run was trained on; a sample of its rows
    res = cotune.explain(run, "mnist1d", max_rows=30, baseline="mean", examples=2)
    assert res.attributions.shape == (30, 1, 40) and len(res.record["examples"]) == 2 and res.rows.max() < 300


@needs_captum
def test_an_ensemble_averages_its_members(seq_run, tmp_path):
    other = cotune.train({**SEQ, "model": {**SEQ["model"], "width": 12}, "runtime": {**FAST["runtime"], "seed": 1}},
                         out=tmp_path / "b").path
    search = tmp_path / "search"
    search.mkdir()
    write_json(search / "fit.json", {"finished": True})
    save_ensemble(search / "final", [seq_run, other])
    shutil.copy2(seq_run / "config.json", search / "final" / "config.json")
    res = cotune.explain(search, n_steps=8, max_rows=20)
    assert res.path == search / "explain" and res.record["members"] == 2 and "mean over" in res.record["ensemble"]
    ens = cotune.load(search)
    X = cotune.load(seq_run)._features("mnist1d")[res.rows]
    targets = ens.predict_output(X).argmax(1)
    each = [integrated_gradients(m.model, m.pre.transform(X), targets, n_steps=8)[0] for m in ens.members]
    np.testing.assert_allclose(res.attributions, np.mean(each, axis=0), rtol=1e-4, atol=1e-6)


@needs_captum
def test_an_image_model_gets_per_pixel_maps(tmp_path):
    run = cotune.train({"data": {"source": "sklearn:digits"}, "model": {"family": "cnn2d", "width": 8, "depth": 1},
                        "train": {"epochs": 2}, **FAST}, out=tmp_path / "digits").path
    res = cotune.explain(run, n_steps=8, max_rows=40)
    assert res.attributions.shape[1:] == tuple(res.record["in_shape"]) and np.shape(res.record["per_position"]) == (8, 8)
    assert np.shape(res.record["examples"][0]["attribution"]) == (8, 8) and "pixel (row" in res.summary
    html = api.report(run).read_text()
    assert "Mean |attribution| per pixel" in html


def test_the_api_checks_its_arguments(tables):
    with pytest.raises(ConfigError, match="--steps"):
        cotune.explain(tables[0], n_steps=1)
    with pytest.raises(DataError, match="labels the model was not trained on"):
        cotune.explain(tables[0], make_table(0, n=30).assign(y=7))


def test_without_captum_sequences_say_what_to_install(seq_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)  # `import captum...` raises ImportError
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(BundleError, match=r"pip install 'cotune\[explain\]'"):
        cotune.explain(seq_run)
    assert not (seq_run / "explain").exists() and not list(seq_run.parent.glob(".explain-*"))
