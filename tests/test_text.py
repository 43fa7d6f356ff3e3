"""Free-text table columns: detection, the tokenizer (fitted on training rows only), the token-id layout, the
text encoders inside the mlp, text augmentation, the search space, baselines and a mixed table end to end."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import cotune
from cotune import evaluate
from cotune.config import from_dict
from cotune.data.augment import make_augment, text_spans
from cotune.data.dataset import infer_column_types, is_text, make_dataset
from cotune.data.preprocess import Preprocessor
from cotune.data.split import split_indices
from cotune.data.text import TOKENIZERS
from cotune.errors import BundleError, ConfigError, DataError
from cotune.knobs import BY_NAME
from cotune.models import create_model
from cotune.models.text import list_text_encoders
from cotune.pipeline import load_data, make_preprocessor
from cotune.search.space import search_space

from tests.test_cli import cli

torch.set_num_threads(1)
FILLER = [f"w{i}" for i in range(300)]


def reviews(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Texts of 6-16 filler words with two words that decide the class, plus a numeric and a categorical column."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = list(rng.choice(FILLER, int(rng.integers(6, 16))))
        y = int(rng.integers(0, 2))
        for w in (("excellent", "loved") if y else ("terrible", "hated")):
            words.insert(int(rng.integers(0, len(words) + 1)), w)
        rows.append((" ".join(words), float(rng.normal()), str(rng.choice(["a", "b", "c"])), "pos" if y else "neg"))
    return pd.DataFrame(rows, columns=["review", "x", "kind", "label"])


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    reviews().to_csv(path, index=False)
    return str(path)


def dataset(df=None, **kw):
    df = reviews() if df is None else df
    return make_dataset(df.drop(columns="label"), df["label"].to_numpy(), **kw)


# ---- detection ----------------------------------------------------------------------------------

def test_free_text_is_detected_and_categories_are_not():
    ds = dataset()
    assert ds.text == ("review",) and ds.categorical == ("kind",) and ds.numeric == ("x",)
    assert not is_text(pd.Series(["red", "green", "blue"] * 50))              # one word each: a category
    assert not is_text(pd.Series(["new york city", "los angeles ca"] * 50))   # several words, few distinct values
    assert is_text(pd.Series([f"item number {i} is fine" for i in range(100)]))


def test_data_text_names_or_disables_the_text_columns():
    df = reviews(50)
    assert infer_column_types(df, text=[])[1] == ("review", "kind", "label")  # [] = none: categorical then
    assert infer_column_types(df, text=["kind"])[2] == ("kind",)              # named: text, detection off
    with pytest.raises(DataError, match="holds numbers, not text"):
        infer_column_types(df, text=["x"])
    with pytest.raises(DataError, match="empty in every row"):
        infer_column_types(df.assign(review=""), text=["review"])
    with pytest.raises(DataError, match="both data.categorical and data.text"):
        infer_column_types(df, categorical=["review"], text=["review"])


# ---- the tokenizer and the token-id columns -----------------------------------------------------

@pytest.mark.parametrize("kind", [k for k in TOKENIZERS if k != "ngrams"])
def test_the_tokenizer_is_fitted_on_the_training_rows_only(kind):
    df = reviews(300)
    df.loc[250:, "review"] = df.loc[250:, "review"] + " zebraquux"  # a word only the held-out rows hold
    ds = dataset(df)
    pre = Preprocessor(embed=True, tokenizer=kind, vocab_size=2000, max_tokens=24).fit(ds, np.arange(250))
    vocab = pre._tokenizers["review"].get_vocab()
    assert not any("zebraquux" in t for t in vocab)
    assert "excellent" in vocab or kind != "word"
    if kind == "word":  # a whole-word vocabulary reads it as the unknown token
        ids = pre.transform(ds.X.iloc[[260]])[0, -24:]
        words = ds.X["review"][260].split()[:24]
        assert ids[words.index("zebraquux")] == 1 if "zebraquux" in words else True


def test_token_ids_round_trip_and_handle_empty_unknown_and_long_texts(tmp_path):
    ds = dataset()
    pre = Preprocessor(embed=True, tokenizer="word", vocab_size=500, max_tokens=8).fit(ds, np.arange(400))
    X = pre.transform(ds.X)
    assert pre.layout_["text"] == [{"name": "review", "length": 8, "vocab": pre._tokenizers["review"].get_vocab_size(),
                                    "weighted": False}]
    assert X.shape[1] == 1 + 3 + 8 and pre.integer_mask_.sum() == 8 and pre.integer_mask_[-8:].all()
    assert (X[:, -8:] > 0).all()  # every text has more than 8 tokens: cut at 8, no padding
    new = pd.DataFrame({"review": ["", None, "qqq zzz", "loved it"], "x": [0.0] * 4, "kind": ["a"] * 4})
    ids = pre.transform(new)[:, -8:]
    assert (ids[:2] == 0).all()                            # empty and missing: all padding
    assert list(ids[2, :3]) == [1, 1, 0]                   # unknown words: the unknown token, then padding
    assert ids[3, 0] >= 2 and ids[3, 1] == 1 and (ids[3, 2:] == 0).all()
    pre.save(tmp_path)
    saved = json.loads((tmp_path / "preprocess.json").read_text())
    assert saved["version"] == 3 and isinstance(saved["text"][0]["tokenizer"], dict)  # the library's own JSON
    np.testing.assert_array_equal(Preprocessor.load(tmp_path).transform(ds.X), X)
    saved["text"][0]["tokenizer"]["model"] = {"type": "WordLevel", "vocab": 3}  # a damaged tokenizer: one clear line
    (tmp_path / "preprocess.json").write_text(json.dumps(saved))
    with pytest.raises(BundleError, match="preprocessing state is invalid.*tokenizer does not load.*re-run training"):
        Preprocessor.load(tmp_path)


def test_ngrams_are_a_tfidf_weighted_bag_fitted_on_the_training_rows(tmp_path):
    df = reviews(300)
    df.loc[250:, "review"] = df.loc[250:, "review"] + " zebraquux"
    ds = dataset(df)
    pre = Preprocessor(embed=True, tokenizer="ngrams", vocab_size=3000, max_tokens=30).fit(ds, np.arange(250))
    state = pre.text_[0]["ngrams"]
    assert len(state["word"]["vocabulary"]) <= 749 and len(state["char"]["vocabulary"]) <= 2249
    assert not any("zebraquux" in g for g in state["word"]["vocabulary"])
    assert not any("quux" in g for g in state["char"]["vocabulary"])
    X = pre.transform(ds.X)
    ids, w = X[:, -60:-30], X[:, -30:]
    assert pre.layout_["text"][0]["weighted"] and pre.integer_mask_.sum() == 30 and pre.integer_mask_[-60:-30].all()
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)  # the kept weights, L2-normalized
    assert (np.diff(w, axis=1) <= 1e-7).all() and (ids[w > 0] >= 2).all()  # heaviest first; a weight has an id
    empty = pre.transform(pd.DataFrame({"review": ["", None], "x": [0.0, 0.0], "kind": ["a", "a"]}))
    assert (empty[:, -60:] == 0).all()
    pre.save(tmp_path)
    np.testing.assert_array_equal(Preprocessor.load(tmp_path).transform(ds.X), X)
    with pytest.raises(Exception, match="only model.text_encoder=bag reads"):
        create_model("mlp", pre.in_shape_, 2, layout=pre.layout_, text_encoder="gru")


def test_ngrams_fit_and_encode_as_scikit_learns_tfidf_does_and_are_memoized():
    """The n-gram state is what TfidfVectorizer(sublinear_tf=True, max_features=...) fits (vocabulary, idf) and the
    weights its transform gives; a second fit of the same texts reads the memoized counts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from cotune.data import text as T
    texts = reviews(200)["review"].tolist() + ["", "Hello, World! hello"]
    state = T.fit_ngrams(texts[:150], 400)
    for part, size in (("word", 99), ("char", 299)):
        ref = TfidfVectorizer(sublinear_tf=True, max_features=size, **T.NGRAMS[part]).fit(texts[:150])
        assert state[part]["vocabulary"] == {k: int(v) for k, v in ref.vocabulary_.items()}
        np.testing.assert_allclose(state[part]["idf"], ref.idf_, rtol=1e-12)
    ids, w = T.encode_ngrams(state, texts, 40)
    words = TfidfVectorizer(sublinear_tf=True, max_features=99, **T.NGRAMS["word"]).fit(texts[:150]).transform(texts)
    chars = TfidfVectorizer(sublinear_tf=True, max_features=299, **T.NGRAMS["char"]).fit(texts[:150]).transform(texts)
    import scipy.sparse as sp
    full = sp.hstack([words, chars]).toarray()
    for i in (0, 7, 150, 201):  # the weights of the kept ids, before the kept ones' renormalization
        kept = ids[i][w[i] > 0] - 2
        np.testing.assert_allclose(full[i, kept] / np.linalg.norm(full[i, kept]), w[i][w[i] > 0], rtol=1e-5)
        assert np.sort(full[i])[::-1][:len(kept)] == pytest.approx(np.sort(full[i, kept])[::-1], rel=1e-5)
    assert (ids[200] == 0).all()  # the empty text
    calls = []
    import sklearn.feature_extraction.text as skt
    orig = skt.CountVectorizer.fit_transform
    try:
        skt.CountVectorizer.fit_transform = lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)
        assert T.fit_ngrams(texts[:150], 300)["word"]["vocabulary"]  # another size, the same texts: no new counting
        assert calls == []
        T.fit_ngrams(texts[:149], 300)
        assert len(calls) == 2  # other texts: both parts counted
    finally:
        skt.CountVectorizer.fit_transform = orig


def test_without_a_layout_texts_are_hashed_word_counts():
    ds = dataset()
    pre = Preprocessor().fit(ds, np.arange(400))
    X = pre.transform(ds.X)
    hashed = X[:, 1 + 3:]
    assert hashed.shape[1] == 512 and pre.layout_["text"] == []
    np.testing.assert_allclose(np.linalg.norm(hashed, axis=1), 1.0, rtol=1e-5)


# ---- the encoders inside the mlp ----------------------------------------------------------------

def test_the_knob_lists_every_registered_encoder():
    assert BY_NAME["model.text_encoder"].choices == tuple(list_text_encoders())


def trained_text_mlp(encoder: str = "bag", tokenizer: str = "word"):
    """An mlp with `encoder` trained 60 full-batch Adam steps on 300 rows whose two words decide the class."""
    ds = dataset(reviews(300))
    pre = Preprocessor(embed=True, tokenizer=tokenizer, vocab_size=400, max_tokens=20).fit(ds, np.arange(300))
    X, y = torch.tensor(pre.transform(ds.X)), torch.tensor(ds.y)
    torch.manual_seed(0)
    model = create_model("mlp", pre.in_shape_, 2, layout=pre.layout_, text_encoder=encoder, text_width=16,
                         width=16, depth=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval(), pre, X, y


@pytest.mark.parametrize("encoder,tokenizer", [(e, "word") for e in list_text_encoders()] + [("bag", "ngrams")])
def test_every_text_encoder_learns_the_deciding_words_in_the_mlp(encoder, tokenizer):
    model, _, X, y = trained_text_mlp(encoder, tokenizer)
    assert (model(X).argmax(1) == y).float().mean() >= 0.9


def test_a_family_without_the_layout_gets_no_token_columns():
    with pytest.raises(Exception, match="tokenized text"):
        create_model("cnn1d", (12,), 2, layout={"numeric": 4, "onehot": 0, "cardinalities": [],
                                                "text": [{"name": "t", "length": 8, "vocab": 50}]})


# ---- augmentation ------------------------------------------------------------------------------

def test_text_augmentation_moves_only_the_token_columns():
    ds = dataset()
    pre = Preprocessor(embed=True, tokenizer="word", vocab_size=500, max_tokens=24).fit(ds, np.arange(400))
    X = torch.tensor(pre.transform(ds.X))
    assert text_spans(pre) == [(4, 24)]
    for op in ("token_drop", "span_mask"):
        torch.manual_seed(0)
        out, _, _ = make_augment("tabular", ops={op: 1.0}, pre=pre)(X)
        assert torch.equal(out[:, :4], X[:, :4])               # the numeric and one-hot columns stay
        changed = out[:, 4:] != X[:, 4:]
        assert changed.any() and (X[:, 4:][changed] >= 2).all()  # only real tokens change, never padding
        assert set(out[:, 4:][changed].unique().tolist()) <= ({0.0} if op == "token_drop" else {1.0})
    assert "token_drop" in make_augment("tabular", policy="auto", pre=pre).ops
    plain = Preprocessor().fit(dataset(reviews().drop(columns="review")), np.arange(400))
    assert "token_drop" not in make_augment("tabular", policy="auto", pre=plain).ops
    with pytest.raises(ConfigError, match="acts on text columns"):
        make_augment("tabular", ops={"span_mask": 0.5}, pre=plain)
    bag = Preprocessor(embed=True, tokenizer="ngrams", vocab_size=500, max_tokens=24).fit(ds, np.arange(400))
    assert text_spans(bag) == [(4, 24)]  # the ids, not the weights after them
    out, _, _ = make_augment("tabular", ops={"token_drop": 1.0}, pre=bag)(torch.tensor(bag.transform(ds.X)))
    assert torch.equal(out[:, 28:], torch.tensor(bag.transform(ds.X))[:, 28:])


# ---- the search space and the baselines ----------------------------------------------------------

def test_the_text_knobs_are_searched_only_on_tables_with_text():
    cfg = from_dict({})
    text_knobs = {"data.tokenizer", "data.vocab_size", "data.max_tokens", "model.text_encoder", "model.text_width",
                  "model.text_linear"}
    assert text_knobs <= set(search_space(cfg, set(), "tabular", "binary", cpu=True, text=True))
    assert not text_knobs & set(search_space(cfg, set(), "tabular", "binary", cpu=True))


def test_the_baselines_read_the_text(table):
    from cotune.baselines import fit_baselines
    cfg = from_dict({"data": {"source": table, "target": "label"}, "runtime": {"progress": False}})
    models = fit_baselines(cfg, load_data(cfg), threads=1)["models"]
    assert models["linear"]["test"]["accuracy"] >= 0.95 and models["lightgbm"]["test"]["accuracy"] >= 0.9


def test_the_linear_baseline_swaps_only_the_hashed_text_counts_for_tfidf():
    """A categorical column whose name starts like a text column's, then '#', keeps its one-hot columns."""
    from cotune.baselines import _text_features
    df = reviews(200).rename(columns={"kind": "review#kind"})
    ds = dataset(df)
    pre = Preprocessor().fit(ds, np.arange(150))
    X = _text_features(ds, np.arange(150), pre)(np.arange(150))
    kept = [n for n in pre.feature_names_ if not n.startswith("review#") or n.startswith("review#kind=")]
    assert len(kept) == len(pre.feature_names_) - pre.text_[0]["hash"] == 4  # x and the three kinds
    np.testing.assert_allclose(X[:, :4].toarray(), pre.transform_rows(ds, np.arange(150))[:, [pre.feature_names_.index(n) for n in kept]])
    assert X.shape[1] > 4 + 1000  # then the word and character n-grams' TF-IDF


# ---- the linear path over the n-grams (model.text_linear) -------------------------------------------

def _ngram_rows(df, train: int, classes: int = 2):
    ds = dataset(df)
    pre = Preprocessor(embed=True, tokenizer="ngrams", vocab_size=2000, max_tokens=40).fit(ds, np.arange(train))
    return ds, pre, pre.transform(ds.X).astype(np.float32)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_linear_path_starts_as_logistic_regression_on_the_ngrams(classes):
    """Fitted, the path is scikit-learn's LogisticRegression on the n-gram bags (built here independently, from the
    ids and weights the layout names), and with the output layer at zero the model's logits are its logits."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    df = reviews(300)
    y = np.where(df["label"] == "pos", 1, 0) if classes == 2 else np.arange(300) % 3
    df = df.assign(review=[r + f" tag{c}" if classes == 3 else r for r, c in zip(df["review"], y)])
    ds, pre, X = _ngram_rows(df, 200)
    model = create_model("mlp", pre.in_shape_, classes, layout=pre.layout_, width=16, depth=1, text_linear=2.0).eval()
    fitted = model.fit_convex(X[:200], y[:200], "multiclass" if classes == 3 else "binary")
    assert fitted["fitted"] and fitted["C"] == 2.0 and fitted["rows"] == 200
    t = pre.layout_["text"][0]
    start = pre.in_shape_[0] - 2 * t["length"]
    ids, w = X[:, start:start + t["length"]].astype(int), X[:, start + t["length"]:]
    S = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(len(X)), t["length"]), ids.ravel())), shape=(len(X), t["vocab"]))
    lr = LogisticRegression(C=2.0, max_iter=1000).fit(S[:200], y[:200])
    with torch.no_grad():
        z = model(torch.from_numpy(X)).double().numpy()
    ref = lr.decision_function(S)
    got = z[:, 1] - z[:, 0] if classes == 2 else z - z.mean(1, keepdims=True)
    np.testing.assert_allclose(got, ref if classes == 2 else ref - ref.mean(1, keepdims=True), atol=1e-5)
    assert not any(p.requires_grad for p in model.linear.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("linear."))


def test_a_run_with_the_linear_path_trains_the_network_on_top_of_it_frozen(tmp_path, table):
    cfg = from_dict({"data": {"source": table, "target": "label", "tokenizer": "ngrams", "max_tokens": 256},
                     "model": {"width": 16, "depth": 1, "text_width": 16, "text_linear": 1.0, "ensemble": 2},
                     "train": {"epochs": 4}, "runtime": {"progress": False}, "out": str(tmp_path / "r")})
    res = cotune.train(cfg)
    metrics = json.loads((res.path / "metrics.json").read_text())
    assert metrics["data"]["text_linear"]["fitted"] and res.test["accuracy"] >= 0.95
    ds = load_data(cfg)
    tr, _, _ = split_indices(ds, val=0.15, test=0.15, seed=0)
    pre = make_preprocessor(cfg).fit(ds, tr)  # every n-gram of these short texts kept: the deciding words too
    again = create_model("mlp", pre.in_shape_, 2, layout=pre.layout_, width=16, depth=1, text_width=16, text_linear=1.0,
                         ensemble=2)
    again.fit_convex(pre.transform(ds.X)[tr], ds.y[tr], "binary")
    trained = cotune.load(res.path).model
    assert torch.allclose(trained.linear.weight, again.linear.weight, atol=1e-6)  # frozen through training
    assert trained.head.weight.abs().sum() > 0  # the network learned on top of it


def test_the_linear_path_without_ngram_text_is_one_line(tmp_path, table):
    base = ("--set", f"data.source={table}", "--set", "data.target=label", "--set", "train.epochs=1", "-q")
    code, _, err = cli("train", *base, "--set", "model.text_linear=1", "--set", "data.tokenizer=bpe", "--out", tmp_path / "b")
    assert code == 2 and "set data.tokenizer=ngrams, or model.text_linear=0" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    code, _, err = cli("train", *base, "--set", "model.text_linear=-1", "--out", tmp_path / "n")
    assert code == 2 and "model.text_linear" in err and not (tmp_path / "n").exists()


# ---- end to end -------------------------------------------------------------------------------

def test_a_mixed_table_trains_predicts_and_round_trips(tmp_path, table):
    cfg = from_dict({"data": {"source": table, "target": "label", "augment": {"token_drop": 0.3}},
                     "model": {"width": 32, "depth": 1, "text_encoder": "bag", "text_width": 32},
                     "train": {"epochs": 15}, "runtime": {"progress": False}, "out": str(tmp_path / "r")})
    res = cotune.train(cfg)
    assert res.test["accuracy"] >= 0.9
    ds = load_data(cfg)
    _, _, te = split_indices(ds, val=0.15, test=0.15, seed=0)
    model = cotune.load(res.path)
    proba = model.predict_proba(ds.X.iloc[te])
    assert evaluate.score("log_loss", ds.y[te], proba, "binary") == pytest.approx(res.test["log_loss"], rel=1e-5)
    new = pd.DataFrame({"review": ["w1 excellent w2 loved", "", "nothing known here"], "x": [0.1, np.nan, 2.0],
                        "kind": ["a", "zz", "b"]})
    out = model.predict_frame(new)
    assert list(out["prediction"])[0] == "pos" and len(out) == 3 and np.isfinite(model.predict_proba(new)).all()


def test_bad_text_settings_are_one_line_and_write_nothing(tmp_path, table):
    base = ("--set", f"data.source={table}", "--set", "data.target=label", "--set", "train.epochs=1", "-q")
    code, _, err = cli("train", *base, "--set", "data.text=[x]", "--out", tmp_path / "x")
    assert code == 2 and "holds numbers, not text" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    empty = tmp_path / "empty.csv"
    reviews(50).assign(review="").to_csv(empty, index=False)
    code, _, err = cli("train", "--set", f"data.source={empty}", "--set", "data.target=label", "--set",
                       "data.text=[review]", "--out", tmp_path / "e")
    assert code == 2 and "empty in every row" in err and not (tmp_path / "e").exists()
    plain = tmp_path / "plain.csv"
    reviews(50).drop(columns="review").to_csv(plain, index=False)
    code, _, err = cli("train", "--set", f"data.source={plain}", "--set", "data.target=label", "--set",
                       "data.augment.token_drop=0.5", "--out", tmp_path / "p")
    assert code == 2 and "acts on text columns" in err and not (tmp_path / "p").exists()


def test_a_run_from_a_text_run_takes_its_tokenizer(tmp_path, table):
    """model.init_from a text run: its fitted tokenizer comes with its weights, so this run's tokenizer knobs must
    match it (one line, exit 2, nothing written) and a search from it leaves them out."""
    base = ("--set", f"data.source={table}", "--set", "data.target=label", "--set", "train.epochs=2",
            "--set", "model.width=16", "--set", "model.depth=1", "--set", "model.text_width=16", "-q")
    code, _, err = cli("train", *base, "--set", "data.tokenizer=word", "--set", "data.vocab_size=500",
                       "--out", tmp_path / "src")
    assert code == 0, err
    src = ("--set", f"model.init_from={tmp_path / 'src'}")
    code, _, err = cli("train", *base, *src, "--set", "data.vocab_size=500", "--out", tmp_path / "bpe")
    assert code == 2 and "data.tokenizer='word'" in err and "set data.tokenizer=word" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bpe").exists()
    code, _, err = cli("train", *base, *src, "--set", "data.tokenizer=word", "--out", tmp_path / "vocab")
    assert code == 2 and "set data.vocab_size=500" in err and not (tmp_path / "vocab").exists()
    code, _, err = cli("train", *base, *src, "--set", "data.tokenizer=word", "--set", "data.vocab_size=500",
                       "--out", tmp_path / "ok")
    assert code == 0, err
    space = search_space(from_dict({"model": {"init_from": str(tmp_path / "src")}}), set(), "tabular", "binary",
                         cpu=True, text=True)
    assert not {"data.tokenizer", "data.vocab_size", "data.max_tokens", "model.text_encoder"} & set(space)


def test_cleaning_drops_duplicate_texts_and_training_twins_of_held_out_texts(tmp_path):
    from cotune.pipeline import prepare
    df = reviews(400)
    ds = dataset(df)
    tr, _, te = split_indices(ds, val=0.15, test=0.15, seed=0)
    t = df["review"].to_numpy().copy()
    t[tr[:6]] = [s.upper() + "!" for s in t[te[:6]]]        # 6 training texts that repeat a test text
    t[tr[10:14]] = [s.title() for s in t[tr[20:24]]]        # 4 training texts that repeat another training text
    path = tmp_path / "t.csv"
    df.assign(review=t).to_csv(path, index=False)
    removed = {}
    for opt in ("leakage", "duplicates"):
        cfg = from_dict({"data": {"source": str(path), "target": "label",
                                  "clean": {opt: "drop" if opt == "leakage" else "drop_near"}}})
        removed[opt] = prepare(cfg, load_data(cfg)).summary["clean"]["removed"]
    assert removed["leakage"] == {"leakage": 6}
    assert removed["duplicates"] == {"duplicates": 0, "near_duplicates": 4}


@pytest.mark.parametrize("encoder", ["bag", "gru"])
def test_text_is_attacked_in_embedding_space_within_the_radius(encoder):
    from cotune.robust import Adversarial, input_mask, robust_accuracy, text_encoders
    model, pre, X, y = trained_text_mlp(encoder)
    mask = input_mask("tabular", pre)  # the numeric column only: token ids never move
    clean = (model(X).argmax(1) == y).float().mean().item()
    assert robust_accuracy(model, X, y, eps=1.0, steps=5, mask=mask) < clean - 0.1
    (enc,) = text_encoders(model)
    assert enc.delta is None  # cleared after the attack
    aug = Adversarial(model, "pgd", 0.5, 3, torch.nn.functional.cross_entropy, mask=mask, mix=0.5)
    xa, _, _ = aug(X[:10], y[:10])
    radius = 0.5 * enc.embedding.weight.detach()[2:].std().item()
    assert enc.delta.shape == (10, 20, 16) and enc.delta.abs().max() <= radius + 1e-6 and enc.delta.abs().max() > 0
    assert (enc.delta[5:] == 0).all() and torch.equal(xa[:, 4:], X[:10, 4:])
    model.train()
    model(xa)
    assert enc.delta is None  # the training step's forward used it up


def test_adversarial_training_on_a_text_table_reports_robust_accuracy(tmp_path, table):
    cfg = from_dict({"data": {"source": table, "target": "label"}, "model": {"width": 16, "depth": 1, "text_width": 16},
                     "train": {"epochs": 3, "adversarial": "pgd", "adv_epsilon": 0.3, "adv_steps": 2},
                     "runtime": {"progress": False}, "out": str(tmp_path / "r")})
    res = cotune.train(cfg)
    assert 0 <= res.test["robust_accuracy"] <= res.test["accuracy"] + 0.02


@pytest.mark.parametrize("encoder,tokenizer,linear", [("bag", "bpe", 0), ("gru", "bpe", 0), ("bag", "ngrams", 0),
                                                      ("bag", "ngrams", 1)])
def test_a_text_model_predicts_the_same_through_onnx_runtime(tmp_path, table, encoder, tokenizer, linear):
    from tests.test_onnx_engine import compress
    cfg = from_dict({"data": {"source": table, "target": "label", "max_tokens": 24, "tokenizer": tokenizer},
                     "model": {"width": 16, "depth": 1, "text_encoder": encoder, "text_width": 16, "text_linear": linear},
                     "train": {"epochs": 2}, "runtime": {"progress": False}, "out": str(tmp_path / "r")})
    run = cotune.train(cfg).path
    compress(run, run / "compress")
    torch_model, onnx_model = cotune.load(run), cotune.load(run, engine="onnx")
    X = pd.concat([pd.read_csv(table).head(50),
                   pd.DataFrame({"review": ["", None, "zzz unknown words only"], "x": [0.0, 1.0, np.nan],
                                 "kind": ["a", "b", "new"]})], ignore_index=True)
    np.testing.assert_allclose(onnx_model.predict_proba(X), torch_model.predict_proba(X), atol=1e-4)


def test_drift_watches_each_text_columns_length_and_word_length(tmp_path):
    """The drift reference keeps each text column as two per-row summaries: held-out texts like the training
    ones stay quiet; texts three times as long move '<column>.words' alone; rows without the column are one line."""
    from cotune import drift
    from cotune.errors import DataError
    ds = dataset()
    drift.save_reference(tmp_path, ds, np.arange(400))
    ref = drift.load_reference(tmp_path)
    assert ref.text == ["review"] and {"review.words", "review.word_length", "x"} <= set(ref.numeric)
    held_out = ds.X.iloc[400:]
    assert not drift.check([tmp_path], held_out).flagged
    longer = held_out.assign(review=[" ".join([t] * 3) for t in held_out["review"]])
    report = drift.check([tmp_path], longer)
    assert report.moved == ["review.words"]
    with pytest.raises(DataError, match="no column 'review'"):
        drift.check([tmp_path], held_out.drop(columns="review"))
