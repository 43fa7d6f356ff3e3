"""The label check of every part: each proxy on planted noise, the trust in its flags, data.clean.val and
min_trust, test labels never changed, and fit's report of validation and test flags."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cotune
from cotune.data.audit import audit
from cotune.data.dataset import make_dataset
from cotune.data.split import split_indices
from cotune.errors import ConfigError
from cotune.config import from_dict
from cotune.pipeline import held_out, load_data, prepare


def blobs_table(n=600, flip_share=0.12, seed=0):
    """Three well-separated Gaussian classes (every proxy can learn them), labels flipped in every part."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n)
    X = (g.standard_normal((n, 6)) + 3.0 * np.eye(3, 6)[y] * 1.5).astype(np.float32)
    flipped = np.sort(g.choice(n, int(flip_share * n), replace=False))
    y_noisy = y.copy()
    y_noisy[flipped] = (y_noisy[flipped] + g.integers(1, 3, len(flipped))) % 3
    return X, y, y_noisy, flipped


def hard_table(n=1500, seed=1):
    """Clean labels drawn from a logistic model whose Bayes error is about 25%: hard, not wrong."""
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, 6)).astype(np.float32)
    z = X @ g.standard_normal(6)
    p = 1 / (1 + np.exp(-1.3 * z / z.std()))
    return X, (g.random(n) < p).astype(int), float(np.mean(np.minimum(p, 1 - p)))


def precision_recall(mask, flipped):
    hit = mask[flipped].sum()
    return hit / max(mask.sum(), 1), hit / len(flipped)


@pytest.mark.parametrize("proxy", ["linear", "gbdt", "net"])
def test_each_proxy_finds_planted_noise_in_every_part(proxy):
    X, _, y, flipped = blobs_table()
    ds = make_dataset(X, y)
    tr, va, te = split_indices(ds, seed=0)
    iss = audit(ds, tr, va, te, checks=["label_issues"], cache=False, proxy=proxy)["label_issues"]
    precision, recall = precision_recall(iss.mask, flipped)
    assert precision >= 0.6 and recall >= 0.6, (proxy, precision, recall)
    assert iss.summary["proxy"] == proxy and set(iss.summary["by_part"]) == {"train", "val", "test"}
    assert sum(iss.summary["by_part"].values()) == iss.summary["count"] == iss.mask.sum()
    for part, rows in (("val", va), ("test", te)):  # flipped labels outside the training part are found too
        held = np.intersect1d(rows, flipped)
        assert iss.mask[held].mean() >= 0.5, (proxy, part)


def test_the_net_proxy_on_images():
    ds0 = load_data(from_dict({"data": {"source": "sklearn:digits"}}))
    keep = np.random.default_rng(0).choice(len(ds0), 700, replace=False)
    X, y = ds0.X[keep], ds0.y[keep].copy()
    g = np.random.default_rng(1)
    flipped = np.sort(g.choice(len(y), 105, replace=False))
    y[flipped] = (y[flipped] + g.integers(1, 10, len(flipped))) % 10
    ds = make_dataset(X, y)
    assert ds.modality == "image"
    report = audit(ds, *split_indices(ds, seed=0), checks=["label_issues"], cache=False)  # auto: the network
    iss = report["label_issues"]
    assert iss.summary["proxy"] == "net" and list(iss.summary["proxy_candidates"]) == ["net"]
    precision, recall = precision_recall(iss.mask, flipped)
    assert precision >= 0.75 and recall >= 0.75, (precision, recall)


def test_auto_takes_the_better_proxy_on_tables_and_caches_both(tmp_path, monkeypatch):
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path))
    X, _, y, _ = blobs_table()
    ds = make_dataset(X, y)
    sp = split_indices(ds, seed=0)
    iss = audit(ds, *sp, checks=["label_issues"])["label_issues"]
    cand = iss.summary["proxy_candidates"]
    assert set(cand) == {"linear", "gbdt"} and iss.summary["proxy"] == max(cand, key=cand.get)
    assert audit(ds, *sp, checks=["label_issues"]).computed == []
    assert audit(ds, *sp, checks=["label_issues"], proxy="linear").computed == []


def test_hard_clean_labels_are_not_high_severity_and_not_relabelled(tmp_path):
    X, y, bayes = hard_table()
    assert 0.2 <= bayes <= 0.3
    ds = make_dataset(X, y)
    iss = audit(ds, *split_indices(ds, seed=0), checks=["label_issues"], cache=False)["label_issues"]
    assert iss.summary["count"] > 0  # the proxy disagrees with many labels ...
    assert iss.summary["trust"] != "high" and iss.summary["severity"] != "high"  # ... and says how little that means
    assert "hard" in iss.summary["message"] and "agrees with" in iss.summary["message"]
    np.savez(tmp_path / "hard.npz", X=X, y=y)
    cfg = from_dict({"data": {"source": str(tmp_path / "hard.npz"), "clean": {"label_issues": "relabel"}}})
    data = prepare(cfg, load_data(cfg))
    assert data.summary["clean"]["relabelled"] == 0 and "does not trust" in data.summary["clean"]["skipped"]
    low = cfg.replace(**{"data.clean.min_trust": "low"})
    assert prepare(low, load_data(low)).summary["clean"]["relabelled"] > 0  # asked for, it acts


def test_clean_val_drops_or_relabels_validation_rows_and_never_test_rows(tmp_path):
    X, y_true, y, flipped = blobs_table(n=800, flip_share=0.15)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    base = {"data": {"source": str(tmp_path / "d.npz"), "clean": {"label_issues": "relabel", "min_trust": "low"}}}
    ds = load_data(from_dict(base))
    tr, va, te = split_indices(ds, seed=0)
    keep = prepare(from_dict(base), ds)
    assert np.array_equal(keep.val, va) and np.array_equal(keep.val_labels, y[va])
    for option in ("relabel", "drop"):
        cfg = from_dict({"data": {**base["data"], "clean": {**base["data"]["clean"], "val": option}}})
        data = prepare(cfg, ds)
        assert np.array_equal(data.test, te) and np.array_equal(data.y[te], y[te])  # test labels as given
        noisy_val = np.intersect1d(va, flipped)
        if option == "relabel":
            assert np.array_equal(data.val, va) and data.summary["clean"]["val"]["relabelled"] > 0
            fixed = np.isin(va, noisy_val) & (data.val_labels == y_true[va])
            assert fixed.sum() >= 0.5 * len(noisy_val)
            assert np.array_equal(data.y[va], data.val_labels)  # what validation scores against
        else:
            assert data.summary["clean"]["val"]["dropped"] == len(va) - len(data.val) > 0
            assert np.isin(noisy_val, data.val).mean() < 0.5
        v2, y2, t2 = held_out(cfg, ds)  # the search ranks, ensembles and calibrates on the same rows
        assert np.array_equal(v2, data.val) and np.array_equal(y2, data.val_labels) and np.array_equal(t2, te)


def test_clean_options_are_checked():
    from cotune.data.clean import clean_val, needed_checks
    assert needed_checks(val="drop") == {"label_issues"}
    with pytest.raises(ConfigError, match="data.clean.val"):
        needed_checks(val="fix")
    with pytest.raises(ConfigError, match="data.clean.min_trust"):
        needed_checks(min_trust="some")
    with pytest.raises(ConfigError, match="regression"):
        clean_val(np.arange(3), np.array([0.5, 1.0, 2.0]), None, val="drop")
    with pytest.raises(ConfigError, match="data.clean.proxy"):
        from_dict({"data": {"clean": {"proxy": "svm"}}})


def test_cli_audit_names_the_part_and_bad_proxy_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from cotune.cli import app
    X, _, y, _ = blobs_table()
    np.savez(tmp_path / "d.npz", X=X, y=y)
    r = CliRunner().invoke(app, ["audit", str(tmp_path / "d.npz"), "--checks", "label_issues", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "a" / "audit.json").read_text())["checks"]["label_issues"]
    assert "val" in summary["message"] and "test" in summary["message"] and summary["trust"] in ("low", "medium", "high")
    import pandas as pd
    table = pd.read_csv(tmp_path / "a" / "audit.csv")
    assert set(table.loc[table.label_issues, "part"]) <= {"train", "val", "test"}
    assert table.loc[table.label_issues, "part"].nunique() >= 2
    bad = CliRunner().invoke(app, ["audit", str(tmp_path / "d.npz"), "--set", "data.clean.proxy=svm", "--out",
                                   str(tmp_path / "b")])
    assert bad.exit_code == 2 and "data.clean.proxy" in bad.output and not (tmp_path / "b").exists()


def test_fit_reports_validation_and_test_flags(tmp_path):
    X, _, y, _ = blobs_table()
    np.savez(tmp_path / "d.npz", X=X, y=y)
    res = cotune.fit(str(tmp_path / "d.npz"), trials=1, out=tmp_path / "s",
                     overrides=["search.mlflow=none", "train.epochs=2", "model.width=8", "runtime.progress=false",
                                "search.reeval=0"])
    labels = json.loads((res.path / "fit.json").read_text())["labels"]
    assert labels["count"] == sum(labels["by_part"].values()) > 0 and labels["by_part"]["test"] > 0
    assert (res.path / "labels" / "audit.csv").is_file()
    assert labels["trust"] in ("low", "medium", "high") and labels["proxy"] in ("linear", "gbdt")


def test_a_label_check_still_running_at_the_deadline_is_stopped(tmp_path):
    import subprocess
    import sys
    import time

    from cotune.search import labels
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t = time.time()
    res = labels.finish((proc, tmp_path / "summary.json"), time.time() + 2.0)
    assert "did not finish" in res["skipped"] and proc.poll() is not None and time.time() - t < 10
    assert labels.finish(None, None) is None
