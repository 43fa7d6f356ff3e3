"""Audit checks of free-text table columns (cotune.data.audit_checks_text): each finds what was planted
(empty texts, duplicates differing in case and punctuation, near duplicates with one word changed, a test
text copied from training) and nothing on clean texts; they report nothing on a table without text; the
column checks leave text columns alone; the public audit lists the findings."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cotune.data.audit import CHECKS, audit, list_checks
from cotune.data.audit_checks_text import normalize
from cotune.data.dataset import make_dataset
from cotune.data.split import split_indices

N = 300
TEXT_CHECKS = ("text_empty", "text_duplicates", "text_overlap")
VOCAB = np.array([f"{a}{b}{c}" for a in "bcdfghklmnprstvz" for b in "aeiou" for c in "bdgklmnprstxz"], dtype=object)


def text_table(seed: int = 0, n: int = N, words: int = 20):
    """A clean binary table: one numeric column and a 'review' of `words` random words (1040-word vocabulary)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, words)).capitalize() + "." for _ in range(n)]
    df = pd.DataFrame({"x": rng.standard_normal(n), "review": np.array(texts, dtype=object)})
    return df, rng.integers(0, 2, n)


def run(df, y, checks=TEXT_CHECKS, splits=None, **kw):
    ds = make_dataset(df, y, **kw)
    sp = splits if splits is not None else split_indices(ds, val=0.15, test=0.15, seed=0)
    report = audit(ds, *sp, checks=list(checks), cache=False)
    for iss in report.issues.values():
        json.dumps(iss.summary, allow_nan=False)
        assert "\n" not in iss.summary["message"] and iss.mask.shape == (len(ds),)
        assert iss.score.dtype == np.float32 and np.all((iss.score >= 0) & (iss.score <= 1))
    return ds, sp, report


def one_word_changed(text: str, at: int) -> str:
    w = text.split()
    w[at] = "zzzword"
    return " ".join(w)


def test_normalize():
    s = normalize(pd.Series(["  Héllo,   WORLD!! ", "ﬁne\tday", "don't stop_now", None, "?!"]))
    assert s.tolist() == ["héllo world", "fine day", "dont stop now", "", ""]


def test_text_columns_are_detected_and_checks_registered():
    df, y = text_table()
    ds = make_dataset(df, y)
    assert ds.text == ("review",) and "review" not in ds.categorical
    assert set(TEXT_CHECKS) <= set(list_checks(ds)) and all(CHECKS[c].level == "rows" for c in TEXT_CHECKS)


def test_clean_texts_report_nothing():
    df, y = text_table()
    _, _, report = run(df, y)
    for name in TEXT_CHECKS:
        iss = report[name]
        assert not iss.mask.any() and iss.summary["count"] == 0, (name, iss.summary["message"])
        assert iss.summary["severity"] == "none" and iss.summary["fix"] == ""


def test_text_empty_finds_missing_empty_and_one_word_texts():
    df, y = text_table()
    df.loc[[3, 40], "review"] = None
    df.loc[[7, 90], "review"] = ["", "   "]
    df.loc[11, "review"] = "?!  ..."
    df.loc[[20, 250], "review"] = ["Great!", "  ok  "]
    _, _, report = run(df, y, checks=["text_empty"], text=["review"])
    iss = report["text_empty"]
    assert set(np.flatnonzero(iss.mask)) == {3, 7, 11, 20, 40, 90, 250}
    s = iss.summary
    assert (s["missing"], s["empty"], s["short"]) == (2, 3, 2) and s["columns"] == {"review": 7}
    assert "'review'" in s["message"] and s["fix"] and s["severity"] == "medium"  # 7 of 300 rows
    assert iss.score[3] == 1.0 and iss.score[20] == 0.5 and iss.score[0] == 0.0


def test_text_duplicates_exact_and_near():
    df, y = text_table()
    ds0 = make_dataset(df, y)
    tr, va, te = split_indices(ds0, val=0.15, test=0.15, seed=0)
    src, exact_dst, near_dst = tr[:6], tr[10:16], tr[20:26]
    texts = df["review"].to_numpy().copy()
    for s, d in zip(src[:3], exact_dst[:3]):
        texts[d] = texts[s].upper().replace(" ", ", ", 2) + "!!"       # case and punctuation only
    for s, d in zip(src[3:], exact_dst[3:]):
        texts[d] = "  " + texts[s].lower().rstrip(".") + " ;-)  "
    for i, (s, d) in enumerate(zip(src, near_dst)):
        texts[d] = one_word_changed(texts[s], at=[0, 5, 9, 10, 14, 19][i])  # one word of 20 changed, anywhere
    df["review"] = texts
    ds, _, report = run(df, y, checks=["text_duplicates"], splits=(tr, va, te))
    iss = report["text_duplicates"]
    assert set(np.flatnonzero(iss.mask)) == set(exact_dst) | set(near_dst)
    s = iss.summary
    assert s["exact"] == 6 and s["near"] == 6 and s["groups"] == 6 and s["count"] == 12  # a source, its two copies
    assert s["threshold"] == 0.8 and s["shingle"] == 1 and s["fix"] and s["severity"] == "high"  # 12 of 210 rows
    assert s["text_columns"] == ["review"]
    first = iss.extra["first"]
    assert np.all(first[iss.mask] < np.flatnonzero(iss.mask)) and np.all(first[~iss.mask] == -1)
    assert set(first[iss.mask]) == set(src)   # the sources come first in the training rows
    assert np.all(iss.score[iss.mask] >= 0.8)
    assert not iss.mask[np.concatenate([va, te])].any()  # training rows only


def test_text_duplicates_ignore_texts_several_words_apart():
    df, y = text_table()
    ds0 = make_dataset(df, y)
    tr, va, te = split_indices(ds0, val=0.15, test=0.15, seed=0)
    texts = df["review"].to_numpy().copy()
    for s, d in zip(tr[:5], tr[10:15]):   # 6 of 20 words changed: Jaccard about 0.54, well under 0.8
        w = texts[s].split()
        for j, at in enumerate((1, 4, 8, 11, 15, 18)):
            w[at] = f"new{j}"
        texts[d] = " ".join(w)
    df["review"] = texts
    _, _, report = run(df, y, checks=["text_duplicates"], splits=(tr, va, te))
    assert report["text_duplicates"].summary["count"] == 0


def test_text_overlap_flags_held_out_copies_of_training_texts():
    df, y = text_table()
    ds0 = make_dataset(df, y)
    tr, va, te = split_indices(ds0, val=0.15, test=0.15, seed=0)
    texts = df["review"].to_numpy().copy()
    texts[te[0]] = texts[tr[0]].upper()                   # a test text copied from training
    texts[te[1]] = texts[tr[1]].replace(" ", "  ") + "?"
    texts[va[0]] = one_word_changed(texts[tr[2]], 10)     # a near copy in validation
    texts[tr[3]] = texts[tr[4]]                           # a training duplicate is not an overlap
    df["review"] = texts
    ds, _, report = run(df, y, checks=["text_overlap", "text_duplicates"], splits=(tr, va, te))
    iss = report["text_overlap"]
    assert set(np.flatnonzero(iss.mask)) == {te[0], te[1], va[0]}
    s = iss.summary
    assert (s["val"], s["test"], s["exact"], s["near"], s["train_twins"]) == (1, 2, 2, 1, 3)
    assert set(iss.extra["train_rows"]) == {tr[0], tr[1], tr[2]} and set(iss.extra["heldout_rows"]) == set(iss.mask.nonzero()[0])
    assert s["severity"] == "medium" and s["fix"]
    assert iss.score[te[0]] == 1.0 and 0.8 <= iss.score[va[0]] < 1.0
    assert set(np.flatnonzero(report["text_duplicates"].mask)) == {max(tr[3], tr[4])}


def test_multiple_text_columns_compare_the_row_text():
    df, y = text_table()
    rng = np.random.default_rng(9)
    df["title"] = [" ".join(rng.choice(VOCAB, 4)) for _ in range(N)]
    tr, va, te = split_indices(make_dataset(df, y), val=0.15, test=0.15, seed=0)
    df.loc[tr[1], ["review", "title"]] = df.loc[tr[0], ["review", "title"]].str.upper().to_numpy()
    df.loc[tr[3], "review"] = df.loc[tr[2], "review"]     # same review, other title: not the same row text
    df.loc[tr[5], "title"] = None                          # an empty title is the text_empty check's
    ds, _, report = run(df, y, splits=(tr, va, te))
    assert ds.text == ("review", "title")
    assert set(np.flatnonzero(report["text_duplicates"].mask)) == {max(tr[0], tr[1])}
    assert report["text_empty"].summary["columns"] == {"title": 1}


def test_no_text_columns_no_findings():
    df, y = text_table()
    df = df.drop(columns="review").assign(color=np.random.default_rng(1).choice(["red", "blue"], N))
    ds, _, report = run(df, y)
    assert ds.text == () and set(TEXT_CHECKS) <= set(list_checks(ds))  # the registry selects by task / modality
    for name in TEXT_CHECKS:
        iss = report[name]
        assert not iss.mask.any() and not iss.score.any()
        assert iss.summary["count"] == 0 and iss.summary["severity"] == "none" and iss.summary["message"] == "No text columns."
    # a column of short repeated phrases is categorical, not text: no finding either
    df["tag"] = np.random.default_rng(2).choice(["very good", "not good at all"], N)
    ds, _, report = run(df, y)
    assert ds.text == () and all(report[n].summary["count"] == 0 for n in TEXT_CHECKS)


def test_column_checks_leave_text_columns_alone():
    df, y = text_table()
    df.loc[[3, 4], "review"] = None
    df["code"] = [f"u{v:06d}" for v in np.random.default_rng(1).permutation(N)]  # still an identifier
    _, _, report = run(df, y, checks=["id_like_columns", "missing_values", "constant_columns", "text_empty"])
    assert report["id_like_columns"].summary["columns"] == ["code"]     # not 'review', distinct in every row
    assert report["missing_values"].summary["count"] == 0               # missing texts are text_empty's
    assert report["constant_columns"].summary["count"] == 0
    assert report["text_empty"].summary["missing"] == 2
    # the same column read as a category (data.text=[]) is an identifier again
    _, _, report = run(df, y, checks=["id_like_columns", "missing_values"], text=[])
    assert set(report["id_like_columns"].summary["columns"]) == {"review", "code"}
    assert report["missing_values"].summary["columns"] == {"review": 2}


def test_public_audit_lists_text_findings(tmp_path, monkeypatch):
    from rich.console import Console

    import cotune.api as api
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "cache"))
    df, y = text_table()
    texts = df["review"].to_numpy().copy()
    texts[5] = "!!"
    texts[7] = texts[3].upper()
    texts[9] = one_word_changed(texts[8], 4)
    texts[20:40] = texts[40:60]       # wherever the split puts them, some cross train and held-out parts
    df["review"], df["label"] = texts, y
    df.to_csv(tmp_path / "reviews.csv", index=False)
    report = api.audit(str(tmp_path / "reviews.csv"), target="label", checks=list_checks(expensive=False),
                       out=tmp_path / "out")
    assert list(report.issues)[-3:] == list(TEXT_CHECKS)
    assert report["text_empty"].mask[5] and report["text_empty"].summary["count"] == 1
    assert report["text_duplicates"].summary["count"] >= 3 and report["text_overlap"].summary["count"] >= 3
    assert report["id_like_columns"].summary["count"] == 0
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert set(TEXT_CHECKS) <= set(saved["checks"])
    table = pd.read_csv(tmp_path / "out" / "audit.csv")
    assert {"text_empty", "text_duplicates_score", "text_overlap"} <= set(table.columns)
    out = Console(file=__import__("io").StringIO(), width=160)
    report.print(out)
    printed = out.file.getvalue()
    assert "text_empty" in printed and "fill those texts in" in printed and "text_overlap" in printed


@pytest.mark.parametrize("name", TEXT_CHECKS)
def test_named_text_check_on_an_image_dataset_is_a_config_error(name):
    from cotune.errors import ConfigError

    ds = make_dataset(np.random.default_rng(0).random((40, 1, 4, 4)).astype(np.float32), np.arange(40) % 2)
    with pytest.raises(ConfigError):
        audit(ds, np.arange(30), np.arange(30, 35), np.arange(35, 40), checks=[name], cache=False)
    assert name not in list_checks(ds)
