"""train.adversarial through the pipeline, the CLI and the search: robust_accuracy in the metrics, every sequence
family attacked through its input, the knobs' bad values as one line, and search.metric=robust_accuracy."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cotune import api
from cotune.cli import app
from cotune.config import from_dict
from cotune.models import list_models
from cotune.pipeline import load_data
from cotune.search.space import search_space

TINY = ["data.source=mnist1d", "data.n_samples=400", "train.epochs=2", "model.width=8", "runtime.threads=1",
        "runtime.progress=false"]


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"OMP_NUM_THREADS": "1"})
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_training_reports_robust_accuracy(tmp_path, method):
    res = api.train(overrides=TINY + [f"train.adversarial={method}", "train.adv_epsilon=0.3", "train.adv_steps=2"],
                    out=str(tmp_path / "r"), checkpoint=False)
    for part in ("val", "test"):
        m = res.metrics[part]
        assert 0.0 <= m["robust_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["test"]["robust_accuracy"] == res.metrics["test"]["robust_accuracy"]
    assert method in saved["data"]["augment"] and "eps 0.3" in saved["data"]["augment"]


def test_standard_training_reports_robust_accuracy_at_the_stated_epsilon_only(tmp_path):
    plain = api.train(overrides=TINY, out=str(tmp_path / "a"), checkpoint=False)
    assert "robust_accuracy" not in plain.metrics["test"]  # train.adv_epsilon 0: nothing attacked, nothing spent
    stated = api.train(overrides=TINY + ["train.adv_epsilon=1.0"], out=str(tmp_path / "b"), checkpoint=False)
    m = stated.metrics["test"]
    assert m["robust_accuracy"] < m["accuracy"]  # a radius of 1 sd moves a weak model's answers


@pytest.mark.parametrize("family", [f for f in ("mlp", "cnn1d", "gru", "lstm", "transformer") if f in list_models()])
def test_every_sequence_family_trains_adversarially(tmp_path, family):
    res = api.train(overrides=TINY + [f"model.family={family}", "train.adversarial=pgd", "train.adv_epsilon=0.2",
                                      "train.adv_steps=1", "train.epochs=1", "data.augment.policy=none"],
                    out=str(tmp_path / family), checkpoint=False)
    assert "robust_accuracy" in res.metrics["test"]


def test_a_table_trains_adversarially_with_its_categories_untouched(tmp_path):
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=300), "z": rng.normal(size=300), "c": rng.choice(list("abc"), 300)})
    df["y"] = (df.x + (df.c == "a") > 0.5).astype(int)
    df.to_csv(tmp_path / "t.csv", index=False)
    res = api.train(overrides=[f"data.source={tmp_path / 't.csv'}", "data.target=y", "train.epochs=3", "model.width=8",
                               "train.adversarial=pgd", "train.adv_epsilon=0.2", "runtime.progress=false"],
                    out=str(tmp_path / "r"), checkpoint=False)
    assert 0 <= res.metrics["test"]["robust_accuracy"] <= 1


@pytest.mark.parametrize("sets,fragment", [
    (["train.adversarial=pgd"], "train.adv_epsilon > 0"),          # a method and no radius
    (["train.adv_epsilon=-0.1"], "train.adv_epsilon"),             # a negative radius
    (["train.adversarial=cw"], "train.adversarial"),               # an unknown method
    (["train.adv_steps=0", "train.adversarial=pgd", "train.adv_epsilon=0.1"], "train.adv_steps"),
])
def test_bad_adversarial_knobs_are_one_line_and_write_nothing(tmp_path, sets, fragment):
    out = tmp_path / "r"
    code, _, err = cli("train", "--out", out, *[a for s in TINY + sets for a in ("--set", s)])
    assert code == 2 and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_robust_accuracy_as_the_search_metric(tmp_path):
    cfg = from_dict({"data": {"source": "mnist1d", "n_samples": 400}})
    ds = load_data(cfg)
    assert "train.adversarial" not in search_space(cfg, set(), ds.modality, ds.task)  # accuracy: not searched
    ranked = cfg.replace(**{"search.metric": "robust_accuracy", "train.adv_epsilon": 0.2})
    assert search_space(ranked, set(), ds.modality, ds.task)["train.adversarial"] == ("none", "fgsm", "pgd")
    out = tmp_path / "s"
    code, _, err = cli("fit", "mnist1d", "--trials", "2", "--out", out, "--metric", "robust_accuracy", "-q",
                       *[a for s in TINY[1:] + ["train.adv_epsilon=0.2", "train.adv_steps=1", "search.mlflow=none",
                                                 "search.reeval=0"] for a in ("--set", s)])
    assert code == 0, err
    fit = json.loads((out / "fit.json").read_text())
    best = fit["best"]
    run = json.loads((out / "trials" / f"{best['number']:05d}" / "metrics.json").read_text())
    assert best["values"][0] == pytest.approx(run["val"]["robust_accuracy"])
    assert "robust_accuracy" in json.loads((out / "final" / "metrics.json").read_text())["test"]
    assert "robust_accuracy" in (out / "report.html").read_text()  # the report shows it beside accuracy


def test_robust_accuracy_needs_a_stated_epsilon(tmp_path):
    out = tmp_path / "s"
    code, _, err = cli("fit", "mnist1d", "--trials", "2", "--out", out, "--metric", "robust_accuracy")
    assert code == 2 and "train.adv_epsilon" in err and not out.exists()
