"""Data sources, splits and preprocessing: every source kind, leakage guards and bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cotune.data.dataset import make_dataset
from cotune.data.preprocess import Preprocessor
from cotune.data.sources import BUILTINS, describe, dialect_note, load, read_csv
from cotune.data.split import split_indices, subsample
from cotune.errors import BundleError, ConfigError, CotuneError, DataError


def one_line_error(excinfo, kind=CotuneError) -> str:
    err = excinfo.value
    assert isinstance(err, kind), type(err)
    msg = str(err)
    assert "\n" not in msg and msg.strip(), msg
    return msg


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({
        "age": rng.normal(40, 10, n).round(1),
        "income": rng.normal(5e4, 1e4, n),
        "city": rng.choice(["paris", "rome", "oslo"], n),
        "label": np.where(np.arange(n) % 3 == 0, "yes", "no"),
    })
    df.loc[[1, 5, 9], "age"] = np.nan
    df.loc[[2, 7], "city"] = None
    return df


@pytest.fixture
def csv_path(tmp_path, table):
    p = tmp_path / "people.csv"
    table.to_csv(p, index=False)
    return p


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for k, cls in enumerate(["cat", "dog", "eel"]):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            h, w = 10 + i, 12  # different sizes: everything is resized
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(root / "dog" / "extra.jpg")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(root / "eel" / "gray.bmp")
    (root / "eel" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------------------- sources

def test_csv_with_categorical_and_nans(csv_path):
    ds = load(str(csv_path), target="label")
    assert ds.modality == "tabular" and ds.task == "binary"
    assert ds.classes == ("no", "yes")
    assert set(ds.numeric) == {"age", "income"} and ds.categorical == ("city",)
    assert "label" not in ds.X.columns and len(ds) == 60
    info = describe(ds)
    assert info["rows"] == 60 and info["features"] == 3 and info["n_classes"] == 2
    assert info["class_counts"] == {"no": 40, "yes": 20}
    json.dumps(info)


def test_a_semicolon_csv_with_decimal_commas_and_a_bom_reads_like_the_comma_one(tmp_path, table, csv_path):
    """A spreadsheet's ';' export (decimal commas, UTF-8 byte-order mark) is the same table as the plain CSV."""
    semi = tmp_path / "people-semi.csv"
    table.to_csv(semi, index=False, sep=";", decimal=",", encoding="utf-8-sig")
    assert semi.read_bytes().startswith(b"\xef\xbb\xbf") and b"," in semi.read_bytes()
    plain, read = load(str(csv_path), target="label"), load(str(semi), target="label")
    pd.testing.assert_frame_equal(read.X, plain.X)
    assert (read.y == plain.y).all() and read.numeric == plain.numeric and read.categorical == plain.categorical
    assert describe(read)["dialect"] == {"separator": ";", "decimal": ",", "bom": True}
    assert describe(plain)["dialect"] == {"separator": ",", "decimal": ".", "bom": False}
    assert dialect_note(describe(plain)) is None and "semicolon" in dialect_note(describe(read))


@pytest.mark.parametrize("text, columns, dialect", [
    ("x\n1.5\n2\n", ["x"], (",", ".")),                                   # one column stays one column
    ("note\nhello;world\nfoo\n", ["note"], (",", ".")),                   # ... even with a ';' in a cell
    ("a,b\n1.5,\"x;y\"\n2.5,z\n", ["a", "b"], (",", ".")),              # a quoted ';' is no separator
    ("a;b\n1.5;2\n3,5;4\n", ["a", "b"], (";", ".")),                       # '1.5' beside '3,5': no decimal comma
    ("a;b;c\n1;x,y;2\n3;z;4\n", ["a", "b", "c"], (";", ".")),              # text with a comma is not a number
    ("a|b\n1|2\n", ["a", "b"], ("|", ".")),
])
def test_the_csv_dialect_is_only_changed_when_the_file_says_so(tmp_path, text, columns, dialect):
    p = tmp_path / "t.csv"
    p.write_text(text)
    df, d = read_csv(p)
    assert list(df.columns) == columns and (d["separator"], d["decimal"]) == dialect and not d["bom"]


def test_the_dialect_is_sniffed_on_a_sample_of_a_big_file(tmp_path):
    """Only the first SNIFF_BYTES are sniffed (the row cut there is ignored); the C engine reads the rest."""
    from cotune.data.sources import SNIFF_BYTES
    n = 3 * SNIFF_BYTES // 12
    p = tmp_path / "big.csv.gz"
    pd.DataFrame({"x": np.arange(n) / 4, "y": np.arange(n) % 2}).to_csv(p, sep=";", decimal=",", index=False)
    df, d = read_csv(p)
    assert d == {"separator": ";", "decimal": ",", "bom": False} and len(df) == n and df["x"].iloc[-1] == (n - 1) / 4


def test_csv_drop_split_column_and_forced_categorical(tmp_path, table):
    table = table.assign(split=np.where(np.arange(60) < 40, "train", np.where(np.arange(60) < 50, "val", "test")))
    p = tmp_path / "t.csv"
    table.to_csv(p, index=False)
    ds = load(p, target="label", drop=["income"], split_column="split", categorical=["age"])
    assert list(ds.X.columns) == ["age", "city"] and set(ds.categorical) == {"age", "city"}
    assert (ds.split == "train").sum() == 40 and (ds.split == "test").sum() == 10
    with pytest.raises(DataError) as e:
        load(p, target="label", drop=["incme"])
    assert "income" in one_line_error(e)


def test_parquet(tmp_path, table):
    p = tmp_path / "people.parquet"
    table.to_parquet(p, engine="pyarrow")
    ds = load(str(p), target="label")
    assert ds.categorical == ("city",) and len(ds) == 60
    assert load(str(p), target="income").task == "regression"


@pytest.mark.parametrize("with_split", [False, True])
def test_npz(tmp_path, with_split):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 2, 16)).astype(np.float32), np.arange(30) % 3
    arrays = {"X": X, "y": y}
    if with_split:
        arrays["split"] = np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5)
    np.savez(tmp_path / "a.npz", **arrays)
    ds = load(str(tmp_path / "a.npz"))
    assert ds.modality == "sequence" and ds.X.shape == (30, 2, 16) and ds.task == "multiclass"
    assert (ds.split is not None) == with_split
    if with_split:
        tr, va, te = split_indices(ds)
        assert list(va) == list(range(20, 25)) and list(te) == list(range(25, 30))


@pytest.mark.parametrize("mode,channels", [("rgb", 3), ("grayscale", 1)])
def test_image_folder(image_dir, mode, channels):
    ds = load(str(image_dir), image_size=16, image_mode=mode)
    assert ds.modality == "image" and ds.X.shape == (11, channels, 16, 16) and ds.X.dtype == np.float32
    assert 0.0 <= ds.X.min() and ds.X.max() <= 1.0
    assert ds.classes == ("cat", "dog", "eel")
    assert np.bincount(ds.y).tolist() == [3, 4, 4]
    assert ds.meta["skipped_files"] == 1


@pytest.mark.parametrize("name", [b for b in BUILTINS if b.startswith("sklearn:")])
def test_sklearn_builtins(name):
    ds = load(name)
    expected = {"sklearn:digits": ("image", "multiclass", 10), "sklearn:iris": ("tabular", "multiclass", 3),
                "sklearn:wine": ("tabular", "multiclass", 3), "sklearn:breast_cancer": ("tabular", "binary", 2),
                "sklearn:diabetes": ("tabular", "regression", 0)}[name]
    assert (ds.modality, ds.task, ds.n_classes) == expected
    assert ds.target == "target"
    if name == "sklearn:digits":
        assert ds.X.shape == (1797, 1, 8, 8) and ds.X.max() == 1.0 and ds.X.min() == 0.0
    else:
        assert "target" not in ds.X.columns and all(isinstance(c, str) for c in ds.X.columns)


def test_mnist1d_generated_split_and_cache(tmp_path, monkeypatch):
    import mnist1d.data

    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path))
    np.random.seed(123)
    ds = load("mnist1d")
    after = np.random.rand()
    np.random.seed(123)
    assert after == np.random.rand(), "the generator must not disturb the global RNG"
    assert ds.X.shape == (5000, 1, 40) and ds.X.dtype == np.float32 and ds.modality == "sequence"
    assert (ds.split == "train").sum() == 4000 and (ds.split == "test").sum() == 1000
    assert ds.n_classes == 10
    assert len(list((tmp_path / "mnist1d").glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have been served from the cache")
    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    again = load("mnist1d")
    np.testing.assert_array_equal(again.X, ds.X)
    np.testing.assert_array_equal(again.y, ds.y)
    tr, va, te = split_indices(again)
    assert len(te) == 1000 and len(va) == 600 and len(tr) == 3400


# ---------------------------------------------------------------------------------------------- split

def _synthetic(n=600, weights=(0.6, 0.3, 0.1), seed=0, split=None):
    rng = np.random.default_rng(seed)
    y = rng.choice(len(weights), size=n, p=weights)
    return make_dataset(rng.normal(size=(n, 4)), y, split=split)


def test_split_disjoint_complete_stratified():
    ds = _synthetic()
    tr, va, te = split_indices(ds, val=0.2, test=0.1, seed=3)
    allidx = np.concatenate([tr, va, te])
    assert len(allidx) == len(ds) and len(np.unique(allidx)) == len(ds)
    for part in (tr, va, te):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    assert abs(len(te) - 60) <= 1 and abs(len(va) - 120) <= 1
    overall = np.bincount(ds.y) / len(ds)
    for part in (tr, va, te):
        assert np.allclose(np.bincount(ds.y[part], minlength=3) / len(part), overall, atol=0.02)


def test_split_seeded():
    ds = _synthetic()
    a, b = split_indices(ds, seed=7), split_indices(ds, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = split_indices(ds, seed=8)
    assert not np.array_equal(a[2], c[2])


def test_split_predefined_respected_and_val_carved_from_train():
    split = np.array(["train"] * 500 + ["test"] * 100)
    ds = _synthetic(split=split)
    tr, va, te = split_indices(ds, val=0.1, test=0.3)
    assert np.array_equal(te, np.arange(500, 600))
    assert len(va) == 50 and va.max() < 500 and len(tr) == 450
    split[:50] = "val"
    tr, va, te = split_indices(_synthetic(split=split), val=0.3)
    assert np.array_equal(va, np.arange(50)) and np.array_equal(tr, np.arange(50, 500))


def test_split_tiny_class_goes_to_train_and_regression():
    y = np.array([0] * 40 + [1] * 40 + [2])
    ds = make_dataset(np.zeros((81, 2)), y)
    tr, va, te = split_indices(ds, seed=1)
    assert 80 in tr and len(tr) + len(va) + len(te) == 81
    reg = make_dataset(np.zeros((50, 2)), np.linspace(0, 1, 50) + 0.5, task="regression")
    assert sum(map(len, split_indices(reg))) == 50
    tr, va, te = split_indices(ds, val=0, test=0)
    assert len(tr) == 81 and len(va) == len(te) == 0


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (0.5, 0.5), ("a", 0.1), (0.1, 1.2)])
def test_split_bad_fractions(val, test):
    with pytest.raises(ConfigError) as e:
        split_indices(_synthetic(n=50), val=val, test=test)
    one_line_error(e, ConfigError)


def test_subsample():
    ds = _synthetic()
    idx = np.arange(0, 600, 2)
    sub = subsample(idx, 0.25, seed=1, y=ds.y)
    assert len(sub) == 75 and set(sub) <= set(idx) and np.all(np.diff(sub) > 0)
    assert np.array_equal(sub, subsample(idx, 0.25, seed=1, y=ds.y))
    expected = np.bincount(ds.y[idx], minlength=3) * 0.25
    assert np.all(np.abs(np.bincount(ds.y[sub], minlength=3) - expected) <= 1)
    assert len(subsample(idx, 0.1, seed=0)) == 30
    assert np.array_equal(subsample(idx, 1.0, seed=0), idx)
    assert len(np.unique(ds.y[subsample(idx, 0.01, seed=0, y=ds.y)])) == 3  # every class kept
    for bad in (0, 1.5, -1):
        with pytest.raises(ConfigError):
            subsample(idx, bad, seed=0)


# ---------------------------------------------------------------------------------------------- preprocess

def test_tabular_statistics_come_from_train_only(table):
    table = table.copy()
    train = np.arange(40)
    table.loc[40:, "income"] = 1e9        # extreme values only outside train
    table.loc[40:, "age"] = -1e6
    table.loc[55:, "city"] = "atlantis"   # a category seen only in val/test
    ds = make_dataset(table.drop(columns="label"), table["label"])
    pre = Preprocessor().fit(ds, train)
    tr = table.iloc[train]
    age = tr["age"].fillna(tr["age"].median())
    assert pre.mean_ == pytest.approx([age.mean(), tr["income"].mean()])
    assert pre.std_ == pytest.approx([age.std(ddof=0), tr["income"].std(ddof=0)])
    assert pre.median_[0] == pytest.approx(tr["age"].median())
    assert "atlantis" not in pre.categories_["city"]
    assert not any("atlantis" in f for f in pre.feature_names_)
    assert pre.in_shape_ == (2 + len(pre.categories_["city"]),) == (len(pre.feature_names_),)
    out = pre.transform_rows(ds, np.arange(55, 60))
    assert out.dtype == np.float32 and np.all(out[:, 2:] == 0)  # unknown category -> all zeros
    assert np.allclose(pre.transform_rows(ds, train)[:, :2].mean(axis=0), 0, atol=1e-5)


def test_array_statistics_come_from_train_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3, 4, 4)).astype(np.float32)
    X[30:] = 1e4
    ds = make_dataset(X, np.arange(40) % 2)
    pre = Preprocessor().fit(ds, np.arange(30))
    assert pre.in_shape_ == (3, 4, 4)
    assert np.allclose(pre.mean_, X[:30].mean(axis=(0, 2, 3)), atol=1e-5)
    assert np.allclose(pre.std_, X[:30].std(axis=(0, 2, 3)), atol=1e-5)
    z = pre.transform(X[:30])
    assert z.dtype == np.float32 and np.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-4)


def test_save_load_round_trip(tmp_path, table):
    ds = make_dataset(table.drop(columns="label"), table["label"])
    pre = Preprocessor().fit(ds, np.arange(45))
    path = pre.save(tmp_path / "run")
    assert path.name == "preprocess.json" and json.loads(path.read_text())["modality"] == "tabular"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["preprocess.json"]
    back = Preprocessor.load(tmp_path / "run")
    assert back.feature_names_ == pre.feature_names_ and back.in_shape_ == pre.in_shape_
    np.testing.assert_array_equal(back.transform(table), pre.transform(table))
    seq = make_dataset(np.random.default_rng(0).normal(size=(20, 2, 9)), np.arange(20) % 2)
    pre2 = Preprocessor().fit(seq, np.arange(15))
    back2 = Preprocessor.from_dict(json.loads(json.dumps(pre2.to_dict())))
    np.testing.assert_array_equal(back2.transform(seq.X), pre2.transform(seq.X))
    with pytest.raises(BundleError) as e:
        Preprocessor.load(tmp_path / "nowhere")
    one_line_error(e, BundleError)


def test_transform_input_problems(table):
    ds = make_dataset(table.drop(columns="label"), table["label"])
    pre = Preprocessor().fit(ds, np.arange(45))
    extra = table.assign(unused=1.0)
    np.testing.assert_array_equal(pre.transform(extra), pre.transform(table))
    with pytest.raises(DataError) as e:
        pre.transform(table.drop(columns=["age", "city"]))
    msg = one_line_error(e, DataError)
    assert "'age'" in msg and "'city'" in msg
    junk = table.astype({"income": object})
    junk.loc[3, "income"] = "n/a?"
    with pytest.raises(DataError) as e:
        pre.transform(junk)
    assert "'income'" in one_line_error(e, DataError)


def test_category_cap_buckets_rare_values():
    cats = [f"c{i:02d}" for i in range(60)]
    values = cats * 2 + ["c00"] * 10
    df = pd.DataFrame({"k": values, "v": np.arange(len(values), dtype=float)})
    ds = make_dataset(df, np.arange(len(values)) % 2)
    pre = Preprocessor(max_categories=50).fit(ds, np.arange(len(values)))
    kept = pre.categories_["k"]
    assert len(kept) == 51 and kept[-1] == "__other__" and "c00" in kept
    out = pre.transform(pd.DataFrame({"k": ["c00", "brand-new"], "v": [1.0, 2.0]}))
    assert out[0, 1 + kept.index("c00")] == 1 and out[1, -1] == 1 and out[:, 1:].sum() == 2


# ---------------------------------------------------------------------------------------------- bad inputs

def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        load(str(tmp_path / "nope.csv"), target="y")
    assert "not found" in one_line_error(e, DataError)


def test_missing_and_unknown_target(csv_path):
    with pytest.raises(ConfigError) as e:
        load(str(csv_path))
    assert "--target" in one_line_error(e, ConfigError)
    with pytest.raises(DataError) as e:
        load(str(csv_path), target="lable")
    assert "'label'" in one_line_error(e, DataError)


def test_single_class_target(tmp_path):
    p = tmp_path / "one.csv"
    pd.DataFrame({"a": [1, 2, 3], "y": ["x", "x", "x"]}).to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        load(str(p), target="y")
    assert "single class" in one_line_error(e, DataError)


def test_empty_table(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("a,b,y\n")
    with pytest.raises(DataError) as e:
        load(str(p), target="y")
    one_line_error(e, DataError)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DataError) as e:
        load(str(tmp_path / "blank.csv"), target="y")
    one_line_error(e, DataError)


def test_junk_in_numeric_column(tmp_path):
    p = tmp_path / "junk.csv"
    vals = [str(v) for v in range(40)]
    vals[7] = "oops"
    pd.DataFrame({"a": vals, "y": [0, 1] * 20}).to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        load(str(p), target="y")
    assert "'a'" in one_line_error(e, DataError)


def test_corrupt_image(image_dir):
    (image_dir / "cat" / "x.png").write_bytes(b"\x00garbage bytes, not a png\xff" * 3)
    with pytest.raises(DataError) as e:
        load(str(image_dir))
    msg = one_line_error(e, DataError)
    assert "x.png" in msg and "remove or fix" in msg


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError) as e:
        load(str(tmp_path / "flat"))
    assert "subfolder" in one_line_error(e, DataError)


def test_unknown_extension(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"PK")
    with pytest.raises(DataError) as e:
        load(str(p), target="y")
    assert ".csv" in one_line_error(e, DataError)


def test_unknown_builtin():
    with pytest.raises(DataError) as e:
        load("sklearn:irs")
    msg = one_line_error(e, DataError)
    assert "sklearn:iris" in msg and "sklearn:digits" in msg
