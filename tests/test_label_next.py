"""Active learning (`cotune label-next`, `cotune.label_next`): the pool of tables, arrays and image folders,
the ranking (reproducible, diverse, never a labeled row), embeddings of every model family, bad input."""
from __future__ import annotations

import re
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cotune
from cotune.active import COLUMNS, STRATEGIES, greedy, nearest, rank
from cotune.cli import app
from cotune.data import sources
from cotune.models import create_model, list_models
from cotune.models.embeddings import EnsembleHead
from cotune.models.features import output_layer, penultimate
from cotune.models.registry import family_of

torch.set_num_threads(1)
FAST = ["model.width=16", "model.depth=1", "train.epochs=4", "train.batch_size=32", "runtime.progress=false"]
SET = [a for o in FAST for a in ("--set", o)]


def blobs(n=120, k=3, d=4, seed=0):
    """k well-separated Gaussian classes in d dimensions."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = g.normal(size=(n, d)) * 0.5 + np.eye(k, d)[y] * 4
    return X.astype(np.float32), y


def write_table(path, n=120, labeled=45, seed=0):
    X, y = blobs(n, seed=seed)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    df["label"] = np.array(["a", "b", "c"], dtype=object)[y]
    df.loc[labeled:, "label"] = np.nan  # rows labeled.. are the pool
    df.to_csv(path, index=False) if str(path).endswith(".csv") else df.to_parquet(path, index=False)
    return df


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("label_next")


@pytest.fixture
def no_leftovers(tmp_path, monkeypatch):
    """Temporary folders go under tmp_path/tmp; the test checks that label-next removed its own."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield tmp_path / "tmp"
    assert not list((tmp_path / "tmp").glob("cotune-label-next-*")), "label-next left its work folder behind"


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return r.exit_code, r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------- pools

@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_table_pool_ranks_only_unlabeled_rows(tmp_path, no_leftovers, ext):
    src = tmp_path / f"data.{ext}"
    df = write_table(src)
    res = cotune.label_next(src, target="label", n=10, overrides=FAST, out=tmp_path / "next.csv")
    picks = pd.read_csv(tmp_path / "next.csv")
    assert list(picks.columns) == list(COLUMNS) and len(picks) == 10
    assert picks["rank"].tolist() == list(range(1, 11))
    pool = set(np.flatnonzero(df["label"].isna()))
    assert set(picks["row"]) <= pool and picks["row"].is_unique
    assert set(picks["predicted"]) <= {"a", "b", "c"}
    assert ((picks["probability"] > 0) & (picks["probability"] <= 1)).all()
    assert np.allclose(picks["uncertainty"], 1 - picks["margin"], atol=1e-6)  # mix ranks by margin
    assert (picks["distance"] >= 0).all() and (picks["entropy"] >= 0).all()
    assert res.n_pool == len(pool) and res.n_labeled == 45 and "10 of 75 unlabeled rows" in res.summary()
    assert res.run is None and res.model.classes_ == ["a", "b", "c"]


def test_integer_labels_stay_integers(tmp_path, no_leftovers):
    src = tmp_path / "ints.csv"
    df = write_table(src)
    df["label"] = df["label"].map({"a": 0, "b": 1, "c": 2})  # with empty cells the column reads as float
    df.to_csv(src, index=False)
    res = cotune.label_next(src, target="label", n=5, overrides=FAST)
    assert res.model.classes_ == [0, 1, 2] and set(res.picks["predicted"]) <= {0, 1, 2}


@pytest.mark.parametrize("empty", ["minus_one", "nan"])
def test_array_pool(tmp_path, no_leftovers, empty):
    X, y = blobs(90)
    y = y.astype(np.int64) if empty == "minus_one" else y.astype(np.float64)
    y[30:] = -1 if empty == "minus_one" else np.nan
    np.savez(tmp_path / "arrays.npz", X=X, y=y)
    res = cotune.label_next(tmp_path / "arrays.npz", n=8, strategy="margin", overrides=FAST)
    assert set(res.picks["row"]) <= set(range(30, 90)) and len(res.picks) == 8
    assert res.model.classes_ == [0, 1, 2] and res.n_pool == 60
    assert res.picks["uncertainty"].is_monotonic_decreasing  # margin: the most uncertain first


def write_images(root, per_class=8, pool=6, size=8):
    g = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = (g.random((size, size, 3)) * 60).astype(np.uint8)
            img[..., c] += 180
            Image.fromarray(img).save(root / name / f"{i}.png")
    (root / "unlabeled" / "batch1").mkdir(parents=True)
    for i in range(pool):
        img = (g.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "unlabeled" / ("batch1" if i % 2 else "") / f"u{i}.png")
    return root


def test_image_folder_pool_is_the_unlabeled_subfolder(tmp_path, no_leftovers):
    root = write_images(tmp_path / "imgs")
    ds = sources.load(root, image_size=8)
    assert ds.classes == ("blue", "green", "red") and len(ds) == 24  # unlabeled/ is never a class
    res = cotune.label_next(root, n=6, strategy="kcenter", overrides=[*FAST, "data.image_size=8"])
    expected = {f"unlabeled/u{i}.png" for i in (0, 2, 4)} | {f"unlabeled/batch1/u{i}.png" for i in (1, 3, 5)}
    assert set(res.picks["row"]) == expected  # the whole pool, named by path under the folder
    assert res.picks["distance"].is_monotonic_decreasing  # k-center: each pick at most as far as the one before


# ---------------------------------------------------------------------------------------------- ranking

def test_ranking_is_reproducible_and_never_proposes_a_labeled_row(tmp_path):
    src = tmp_path / "data.csv"
    df = write_table(src, labeled=60)
    pool = set(np.flatnonzero(df["label"].isna()))
    first = {s: cotune.label_next(src, target="label", n=12, strategy=s, overrides=FAST, seed=3).picks for s in STRATEGIES}
    for s, picks in first.items():
        assert set(picks["row"]) <= pool and picks["row"].is_unique, s
    again = cotune.label_next(src, target="label", n=12, strategy="mix", overrides=FAST, seed=3).picks
    pd.testing.assert_frame_equal(first["mix"], again)  # same seed: same model, same picks
    other = cotune.label_next(src, target="label", n=12, strategy="random", overrides=FAST, seed=4).picks
    assert set(other["row"]) != set(first["random"]["row"])


def clusters(per=20, k=5, d=6, seed=0):
    """k tight clusters far apart in embedding space; returns (embeddings, cluster of each row)."""
    g = np.random.default_rng(seed)
    centers = g.normal(size=(k, d)) * 20
    which = np.repeat(np.arange(k), per)
    return centers[which] + g.normal(size=(k * per, d)) * 0.1, which


def test_kcenter_picks_one_row_per_planted_cluster():
    emb, which = clusters()
    labeled = emb[which == 0][:3]  # cluster 0 is already labeled
    proba = np.full((len(emb), 3), 1 / 3)
    order, dist = rank(proba, emb, labeled, 4, "kcenter")
    assert sorted(which[order]) == [1, 2, 3, 4]
    assert np.all(np.diff(dist) <= 0) and dist[-1] > 1.0
    assert np.allclose(dist[0], nearest(emb[order[:1]], labeled)[0])


def test_mix_spreads_the_uncertain_rows_over_clusters_where_margin_does_not():
    emb, which = clusters(per=20, k=4)
    g = np.random.default_rng(1)
    margin = np.choose(which, [0.01, 0.05, 0.05, 0.9]) + 0.01 * g.random(len(emb))  # cluster 3 is sure, 0 the least
    proba = np.stack([0.5 + margin / 2, 0.5 - margin / 2, np.zeros_like(margin)], 1)
    labeled = emb[which == 3][:2]
    margin_rows, _ = rank(proba, emb, labeled, 3, "margin")
    mix_rows, _ = rank(proba, emb, labeled, 3, "mix", candidates=20)
    assert set(which[margin_rows]) == {0}  # the three most uncertain rows sit in one cluster
    assert sorted(which[mix_rows]) == [0, 1, 2]  # mix: uncertain, and one from each uncertain cluster


def test_greedy_in_a_given_order_measures_distances_at_pick_time():
    emb = np.array([[0.0], [1.0], [5.0], [5.5]])
    picked, dist = greedy(emb, nearest(emb, np.array([[0.0]])), 3, order=[3, 2, 1])
    assert picked.tolist() == [3, 2, 1] and np.allclose(dist, [5.5, 0.5, 1.0])
    picked, dist = greedy(emb, nearest(emb, np.array([[0.0]])), 2)
    assert picked.tolist() == [3, 1] and np.allclose(dist, [5.5, 1.0])


# ---------------------------------------------------------------------------------------------- embeddings

SHAPES = {"cnn2d": (3, 8, 8)}


@pytest.mark.parametrize("name", [n for n in list_models() if "_" not in n] + ["mlp_ensemble"])
def test_every_family_gives_penultimate_embeddings(name):
    family, kw = (("mlp", {"ensemble": 3}) if name == "mlp_ensemble" else (name, {}))
    shape = SHAPES.get(family_of(family), (1, 16))
    torch.manual_seed(0)
    model = create_model(family, shape, 4, **kw)
    x = torch.randn(10, *shape)
    emb = penultimate(model, x)
    assert model.training and not any(m._forward_hooks for m in model.modules())  # left as it was
    layer = output_layer(model, x)
    width = layer.in_features if isinstance(layer, torch.nn.Linear) else 3 * layer.weight.shape[1]
    assert emb.shape == (10, width) and torch.isfinite(emb).all()
    model.eval()
    if isinstance(layer, torch.nn.Linear):  # the hook read exactly what the head turns into the outputs
        assert torch.allclose(layer(emb), model(x), atol=1e-5)
    else:  # the ensemble head: its input is (B, k, width), one copy per member
        assert isinstance(layer, EnsembleHead)


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_and_api_agree(tmp_path, no_leftovers):
    src = tmp_path / "data.csv"
    write_table(src)
    code, out, err = cli("label-next", src, "--labeled", "label", "--n", "7", "--seed", "2", "--out",
                         tmp_path / "next.csv", "--run", tmp_path / "run", "-q", *SET)
    assert code == 0, out + err
    assert "7 of 75 unlabeled rows to label next (mix; mlp trained on 45 labeled rows" in out
    api = cotune.label_next(src, target="label", n=7, seed=2, overrides=FAST).picks
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "next.csv"), api, check_dtype=False, atol=1e-6)
    assert (tmp_path / "run" / "model.safetensors").is_file()  # --run keeps the model
    assert cotune.load(tmp_path / "run").classes_ == ["a", "b", "c"]


def bad_inputs(tmp_path):
    src = tmp_path / "data.csv"
    write_table(src)
    full = tmp_path / "full.csv"
    pd.read_csv(src).assign(label=lambda d: np.where(d.index % 2, "a", "b")).to_csv(full, index=False)
    one = tmp_path / "one.csv"
    pd.read_csv(src).assign(label=lambda d: np.where(d.index < 40, "a", None)).to_csv(one, index=False)
    reg = tmp_path / "reg.csv"
    pd.read_csv(src).assign(label=lambda d: np.where(d.index < 60, np.random.default_rng(0).normal(size=len(d)), np.nan)
                            ).to_csv(reg, index=False)
    return {"no unlabeled rows": ([full, "--labeled", "label"], r"no unlabeled rows"),
            "regression target": ([reg, "--labeled", "label"], r"regression"),
            "--n larger than the pool": ([src, "--labeled", "label", "--n", "76"], r"--n must be at most the 75"),
            "one labeled class": ([one, "--labeled", "label"], r"1 labeled class"),
            "unknown strategy": ([src, "--labeled", "label", "--strategy", "uncertainty"], r"--strategy must be one of"),
            "no label column": ([src], r"--labeled COLUMN"),
            "unknown column": ([src, "--labeled", "lable"], r"did you mean 'label'"),
            "built-in": (["sklearn:digits"], r"no pool"),
            "out is a folder": ([src, "--labeled", "label", "--out", tmp_path], r"is a folder")}


@pytest.mark.parametrize("case", ["no unlabeled rows", "regression target", "--n larger than the pool",
                                  "one labeled class", "unknown strategy", "no label column", "unknown column",
                                  "built-in", "out is a folder"])
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, no_leftovers, case):
    args, match = bad_inputs(tmp_path)[case]
    out, run = tmp_path / "next.csv", tmp_path / "run"
    code, stdout, stderr = cli("label-next", *args, *([] if "--out" in args else ["--out", out]), "--run", run, "-q", *SET)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, stdout + stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stdout + stderr, stderr
    assert re.search(match, lines[0]), lines[0]
    assert not out.exists() and not run.exists()
