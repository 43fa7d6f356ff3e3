"""`cotune fit`: the search space from the knobs, suggest(), the budget, failing trials, resume and bad input.

The space tests run in-process against cotune.search; the searches go through the real command.
Every search is tiny (iris / wine / a small .npz, width 16, one torch thread, a handful of trials)
and MLflow tracking is off (tests/test_track.py covers it), so the file takes about two minutes on
two cores. What costs the time is process start-up: every worker imports torch, so the parent of a
search runs in-process (typer's CliRunner) wherever the test does not need the real process (exit
code, wall time, SIGKILL).
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial
from typer.testing import CliRunner

from cotune.cli import app
from cotune.config import explicit, from_dict
from cotune.errors import ConfigError
from cotune.knobs import BY_NAME, searchable
from cotune.models import FAMILIES, searched_families
from cotune.search.space import START, parse_budget, rungs, search_space, start_params, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
NO_TRACK = ("--set", "search.mlflow=none") if "search.mlflow" in BY_NAME else ()  # MLflow is tested elsewhere
ONE_THREAD = ("--set", "runtime.threads=1")  # tiny models: a second torch thread only costs (a lot, on a busy machine)
QUICK = ("--set", "train.epochs=3", "--set", "model.width=16", *ONE_THREAD, *NO_TRACK, "-q")


def cli(*args):
    """In-process run of the CLI; returns (exit code, stdout, stderr)."""
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def cli_proc(*args, timeout=300):
    """The real process: `python -m cotune.cli ...`; returns (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "cotune.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **ENV})
    return p.returncode, p.stdout, p.stderr


def ok(res):
    code, out, err = res
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def assert_user_error(res, match: str | None = None) -> str:
    """Exit code 2, one non-empty stderr line starting with 'error:', no traceback."""
    code, out, err = res
    assert "Traceback" not in out + err, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    if match is not None:
        assert re.search(match, lines[0], re.I), lines[0]
    return lines[0]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_study(out: Path):
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out}/study.db")


def space_of(overrides=(), modality="tabular", task="multiclass", cpu=False):
    """The space `cotune fit sklearn:iris --set ...` would search (knobs the user set are fixed)."""
    cfg = from_dict({"data": {"source": "sklearn:iris"}}, list(overrides))
    return cfg, search_space(cfg, explicit(cfg), modality, task, cpu=cpu)


def pick(space: dict, **chosen) -> dict:
    """A value for every knob of the space (the first choice / the low end), with `chosen` overriding."""
    return {**{k: v[0] for k, v in space.items()}, **chosen}


# ------------------------------------------------------------------------------------------ the space

def test_space_holds_every_searchable_knob_the_user_did_not_set():
    cfg, space = space_of(["train.lr=0.01", "model.norm=layer"])
    expected = {k.name for k in searchable() if "multiclass" in (k.tasks or ("multiclass",))
                and "accuracy" not in k.unless_metric and not k.text_only} - {"train.lr", "model.norm"}  # by accuracy
    assert set(space) == expected
    for name, spec in space.items():
        k = BY_NAME[name]
        if k.choices or k.type in (bool, str):
            assert set(spec) <= set(k.search or FAMILIES) and spec, name  # model.family: the registry's
        else:
            assert spec == tuple(k.type(v) for v in k.search), name
    # the fixed values reach every suggested config, whatever the sampler proposes
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        tcfg = suggest(trial, cfg, space)
        assert tcfg.train.lr == 0.01 and tcfg.model.norm == "layer"
        assert "train.lr" not in trial.params and "model.norm" not in trial.params
        study.tell(trial, 0.0)


def test_search_space_narrows_ranges_and_choices():
    narrow = ("search.space={train.lr: [0.001, 0.002], model.width: [20, 24], model.norm: [batch], "
              "data.balance: [none, oversample]}")
    cfg, space = space_of([narrow])
    assert space["train.lr"] == (0.001, 0.002) and space["model.width"] == (20, 24)
    assert space["model.norm"] == ("batch",) and space["data.balance"] == ("none", "oversample")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        tcfg = suggest(trial, cfg, space)
        assert 0.001 <= tcfg.train.lr <= 0.002 and 20 <= tcfg.model.width <= 24
        assert tcfg.model.norm == "batch" and tcfg.data.balance in ("none", "oversample")
        seen.add(tcfg.data.balance)
        study.tell(trial, 0.0)
    assert seen == {"none", "oversample"}
    # YAML reads 1e-4 as a string: a numeric string is a number
    assert space_of(["search.space={train.lr: [1e-4, 1e-3], model.width: [16, 32.0]}"])[1]["train.lr"] == (1e-4, 1e-3)


@pytest.mark.parametrize("modality", ["tabular", "image", "sequence"])
def test_model_families_fit_the_modality(modality):
    every = "search.space={model.family: [mlp, cnn1d, cnn2d, gru, lstm, transformer]}"
    for overrides in ([], [every]):
        for cpu in (False, True):
            _, space = space_of(overrides, modality=modality, cpu=cpu)
            fams = set(space["model.family"])
            assert fams and fams <= set(searched_families(modality)), (overrides, cpu, fams)
            if overrides:  # naming the families searches every one that fits
                assert fams == set(searched_families(modality))
    _, space = space_of(modality="image")
    assert not {"gru", "lstm", "transformer", "cnn1d"} & set(space["model.family"])
    _, space = space_of(modality="tabular")
    assert set(space["model.family"]) <= {"mlp", "transformer"}
    _, space = space_of([every], modality="tabular")
    assert set(space["model.family"]) == {"mlp", "transformer"}
    assert "smote" not in space_of(modality="image")[1].get("data.balance", ())


# what the space held before the families, tasks and modalities were declared with the knobs and the models
FAMILIES_FOR = {"tabular": ("mlp", "transformer"), "image": ("mlp", "cnn2d"),
                "sequence": ("mlp", "cnn1d", "gru", "lstm", "transformer")}
FAMILIES_FOR_CPU = {"tabular": ("mlp",), "image": ("mlp", "cnn2d"), "sequence": ("mlp", "cnn1d")}
CLASSIFICATION_ONLY = ("data.balance", "data.clean.label_issues", "data.clean.label_threshold", "train.label_smoothing",
                       "train.focal_gamma", "train.loss", "train.gce_q", "train.sce_alpha")
REGRESSION_ONLY = ("data.target_transform",)
TABULAR_ONLY = ("data.numeric", "data.tokenizer", "data.vocab_size", "data.max_tokens", "model.text_encoder",
                "model.text_width", "model.text_linear")  # all but the first: tables with text columns only


@pytest.mark.parametrize("modality", ["tabular", "image", "sequence"])
def test_families_searched_come_from_the_registry(modality):
    assert FAMILIES == ("mlp", "cnn1d", "cnn2d", "gru", "lstm", "transformer")
    assert searched_families(modality) == FAMILIES_FOR[modality]
    assert searched_families(modality, cpu=True) == FAMILIES_FOR_CPU[modality]
    every = "search.space={model.family: [mlp, cnn1d, cnn2d, gru, lstm, transformer]}"
    for overrides, cpu, fams in (([], False, FAMILIES_FOR), ([], True, FAMILIES_FOR_CPU),
                                 ([every], False, FAMILIES_FOR), ([every], True, FAMILIES_FOR)):
        assert space_of(overrides, modality=modality, cpu=cpu)[1]["model.family"] == fams[modality], (overrides, cpu)
    # the order named is the order searched; names that do not fit the data are left out
    named = space_of(["search.space={model.family: [transformer, cnn2d, mlp]}"], modality=modality)[1]
    assert named["model.family"] == tuple(f for f in ("transformer", "cnn2d", "mlp") if f in FAMILIES_FOR[modality])
    # none left: the configured family
    _, space = space_of(["model.width=16", "search.space={model.family: [cnn2d]}"], modality="sequence")
    assert space["model.family"] == ("mlp",)


def test_regression_drops_classification_only_knobs():
    assert {k.name for k in searchable() if k.tasks} == set(CLASSIFICATION_ONLY + REGRESSION_ONLY)
    _, reg = space_of(["data.source=sklearn:diabetes"], task="regression")
    _, cls = space_of(task="multiclass")
    _, binary = space_of(task="binary")
    assert not set(CLASSIFICATION_ONLY) & set(reg)
    assert set(CLASSIFICATION_ONLY) <= set(cls) and set(binary) == set(cls)
    assert set(cls) - set(reg) == set(CLASSIFICATION_ONLY) and set(reg) - set(cls) == set(REGRESSION_ONLY)
    assert reg["data.target_transform"] == ("standard", "log", "quantile")


def test_table_preprocessing_is_searched_only_on_tables():
    assert {k.name for k in searchable() if k.modalities} == set(TABULAR_ONLY)
    assert space_of(modality="tabular")[1]["data.numeric"] == ("standard", "robust", "quantile")
    for modality in ("image", "sequence"):
        assert not set(TABULAR_ONLY) & set(space_of(modality=modality)[1])


def test_smote_is_searched_only_on_tables():
    assert "smote" not in BY_NAME["data.balance"].search  # only when named
    named = "search.space={data.balance: [none, smote, focal]}"
    assert space_of([named], modality="tabular")[1]["data.balance"] == ("none", "smote", "focal")
    for modality in ("image", "sequence"):
        assert space_of([named], modality=modality)[1]["data.balance"] == ("none", "focal")
        assert "smote" not in space_of(modality=modality)[1]["data.balance"]
    with pytest.raises(ConfigError, match=r"data.balance.*no choice for image data.*'smote' is for tabular"):
        space_of(["search.space={data.balance: [smote]}"], modality="image")


@pytest.mark.parametrize("space, needle", [
    ("{train.lrr: [0.001, 0.01]}", "'train.lrr', which is not a searchable knob"),
    ("{train.epochs: [1, 5]}", "'train.epochs', which is not a searchable knob"),
    ("{runtime.seed: [0, 1]}", "'runtime.seed', which is not a searchable knob"),
    ("{train.lr: [0.001]}", r"search.space\['train.lr'\] must be \[low, high\]. Got \[0.001\]"),
    ("{train.lr: [0.001, 0.002, 0.003]}", r"search.space\['train.lr'\] must be \[low, high\]"),
    ("{train.lr: [low, .01]}", r"search.space\['train.lr'\] must be a number > 0 and <= 10. Got 'low'"),
    ("{train.lr: [0.01, 0.001]}", r"search.space\['train.lr'\] must be \[low, high\] with low <= high. Got \[0.01, 0.001\]"),
    ("{train.l1: [0, 1e-4]}", r"low bound in search.space\['train.l1'\] must be > 0 \(the knob is searched on a log scale\). Got 0"),
    ("{model.dropout: [0, .99]}", r"search.space\['model.dropout'\] must be a number >= 0 and <= 0.95. Got 0.99"),
    ("{model.width: [16.5, 32]}", r"search.space\['model.width'\] must be an integer >= 1 and <= 8192. Got 16.5"),
    ("{model.depth: [null, 3]}", r"search.space\['model.depth'\] must be an integer .* Got None"),
    ("{train.optimizer: [adam, adamx]}", r"search.space\['train.optimizer'\] must be one of \{'sgd', .*\}. Got 'adamx' instead; use 'adam'"),
    ("{model.norm: []}", r"search.space\['model.norm'\] must be a list of choices, each one of"),
    ("{model.family: [mlp, resnet]}", r"search.space\['model.family'\] must be a registered model family, one of \{'mlp', .*\}. Got 'resnet'"),
    ("{model.family: [mlp_s]}", r"model.family.*Got 'mlp_s'"),
    ("{model.bidirectional: [maybe]}", r"search.space\['model.bidirectional'\] must be true or false. Got 'maybe'"),
    ("{data.clean.duplicates: [0]}", r"search.space\['data.clean.duplicates'\] must be one of .* Got 0"),
])
def test_bad_search_space_is_one_line_config_error(space, needle):
    with pytest.raises(ConfigError) as err:
        space_of([f"search.space={space}"])
    msg = str(err.value)
    assert "\n" not in msg and re.search(needle, msg), msg
    assert msg.endswith(".") and ("; " in msg or "which is not" in msg), msg  # says how to fix it
    # a bad value is caught even where the knob is fixed (its range is not searched) or the task drops it
    with pytest.raises(ConfigError):
        space_of(["train.lr=0.01", "model.width=16", "model.family=mlp", f"search.space={space}"], task="regression")


@pytest.mark.parametrize("space, needle", [("{train.optimizer: [adamx]}", "train.optimizer.*'adamx'"),
                                           ("{model.dropout: [0, .99]}", "model.dropout.*0.99"),
                                           ("{train.lr: [low, .01]}", "train.lr.*'low'")])
def test_bad_search_space_stops_fit_before_anything_is_written(tmp_path, space, needle):
    out = tmp_path / "run"
    assert_user_error(cli("fit", "sklearn:iris", "--trials", 2, "--set", f"search.space={space}", *NO_TRACK,
                          "--out", out), match=needle)
    assert not out.exists()


def test_conditional_knobs_are_asked_only_when_their_condition_holds():
    cfg, space = space_of()
    assert {"train.momentum", "train.beta1", "train.beta2", "train.nesterov"} <= set(space)
    optimizer_knobs = ("train.momentum", "train.nesterov", "train.beta1", "train.beta2")
    base = {k: v for k, v in pick(space, **{"train.label_smoothing": 0.05}).items() if k not in optimizer_knobs}

    adam = FixedTrial({**base, "train.optimizer": "adam", "train.beta1": 0.85, "train.beta2": 0.99})
    tcfg = suggest(adam, cfg, space)
    assert "train.momentum" not in adam.params and "train.nesterov" not in adam.params
    assert adam.params["train.beta1"] == 0.85 and tcfg.train.beta1 == 0.85 and tcfg.train.beta2 == 0.99
    assert tcfg.train.momentum == cfg.train.momentum  # not asked: the default stays
    with pytest.raises(ValueError, match="train.beta1"):
        suggest(FixedTrial({**base, "train.optimizer": "adamw"}), cfg, space)

    sgd = FixedTrial({**base, "train.optimizer": "sgd", "train.momentum": 0.5, "train.nesterov": True})
    tcfg = suggest(sgd, cfg, space)
    assert sgd.params["train.momentum"] == 0.5 and tcfg.train.momentum == 0.5 and tcfg.train.nesterov is True
    assert "train.beta1" not in sgd.params and "train.beta2" not in sgd.params
    with pytest.raises(ValueError, match="train.momentum"):
        suggest(FixedTrial({**base, "train.optimizer": "sgd"}), cfg, space)
    rms = FixedTrial({**base, "train.optimizer": "rmsprop", "train.momentum": 0.3})
    suggest(rms, cfg, space)
    assert "train.momentum" in rms.params and "train.nesterov" not in rms.params  # nesterov is sgd-only

    # a knob the user fixed counts for the condition: optimizer=sgd set -> momentum searched, betas never
    cfg2, space2 = space_of(["train.optimizer=sgd"])
    base2 = {k: v for k, v in base.items() if k in space2}
    t = FixedTrial({**base2, "train.momentum": 0.7, "train.nesterov": False})
    assert suggest(t, cfg2, space2).train.momentum == 0.7 and "train.beta1" not in t.params

    # label_threshold only when label issues are acted on
    t = FixedTrial({**base, "train.optimizer": "adam", "train.beta1": 0.9, "train.beta2": 0.99,
                    "data.clean.label_issues": "drop", "data.clean.label_threshold": 0.4})
    assert suggest(t, cfg, space).data.clean.label_threshold == 0.4


def test_focal_gamma_is_searched_only_with_focal_balance():
    cfg, space = space_of()
    assert "focal" in space["data.balance"] and "train.focal_gamma" in space and "train.l1" in space
    base = pick(space, **{"train.optimizer": "adam", "train.beta1": 0.9, "train.beta2": 0.99})
    base = {k: v for k, v in base.items() if k not in ("train.momentum", "train.nesterov", "train.focal_gamma",
                                                       "data.clean.label_threshold")}
    t = FixedTrial({**base, "data.balance": "focal", "train.focal_gamma": 3.0})
    assert suggest(t, cfg, space).train.focal_gamma == 3.0
    t = FixedTrial({**base, "data.balance": "none"})
    suggest(t, cfg, space)
    assert "train.focal_gamma" not in t.params


@pytest.mark.parametrize("modality", ["tabular", "image", "sequence"])
def test_warm_start_trial_is_the_modality_start_over_the_defaults(modality):
    cfg, space = space_of(modality=modality)
    params = start_params(cfg, space, modality)
    assert set(params) == set(space)  # every knob of the space, so the sampler adds nothing random to it
    flat = cfg.flat()
    for k, v in params.items():
        if k == "train.l1":  # off by default; the range's low end is off in effect
            assert v == BY_NAME[k].search[0] and flat[k] == 0.0
        else:
            assert v == START[modality].get(k, flat[k]), k
    # what the user fixed or narrowed the start away from is left to the space
    cfg, space = space_of(["model.depth=1", "search.space={model.family: [mlp], train.lr: [0.01, 0.02]}"],
                          modality="sequence")
    params = start_params(cfg, space, "sequence")
    assert "model.depth" not in params and params["model.family"] == "mlp"
    assert params["train.lr"] == 0.01  # the default 3e-3 is outside [0.01, 0.02]: the nearest end
    assert params["data.augment.policy"] == "auto"


def test_data_fidelity_rungs():
    cfg = from_dict({"data": {"source": "sklearn:iris", "fraction": 0.9}, "search": {"fidelity": "data"}})
    assert rungs(cfg) == pytest.approx([0.1, 0.3, 0.9])
    assert rungs(cfg.replace(**{"search.fidelity": "epochs"})) == [0.9]


def test_replaying_suggested_params_gives_the_same_config():
    cfg, space = space_of(["train.epochs=3"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(25):
        trial = study.ask()
        tcfg = suggest(trial, cfg, space)
        study.tell(trial, 0.0)
        replay = FixedTrial(trial.params)
        assert suggest(replay, cfg, space) == tcfg == cfg.replace(**trial.params)
        assert replay.params == trial.params  # the replay asks exactly the knobs the trial was asked


# ------------------------------------------------------------------------------------------ budget parsing

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("600", 600), (" 2m ", 120),
                                           (None, None)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["ten", "-1m", "0", "0s", "10 min", "1d", "", "m"])
def test_parse_budget_rejects(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(text)


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def iris_fit(tmp_path_factory):
    """One real search: 6 trials in 2 worker processes, width fixed at 16, the ensemble and the cross-validated
    re-evaluation off, so the final model is the best trial's on validation (tests/test_reeval.py: with it on)."""
    out = tmp_path_factory.mktemp("fit") / "iris"
    res = cli_proc("fit", "sklearn:iris", "--trials", 6, "--workers", 2, "--set", "search.top_k=1",
                   "--set", "search.reeval=0", *QUICK, "--out", out)
    return out, res


def test_fit_end_to_end(iris_fit):
    out, res = iris_fit
    text = ok(res)
    assert "trials:" in text and "search directory" in text
    for f in ("config.json", "fit.json", "study.db", "trials.csv", "importances.json", "final/model.safetensors",
              "final/metrics.json", "workers.log"):
        assert (out / f).is_file(), f

    rows = read_csv(out / "trials.csv")
    assert [int(r["number"]) for r in rows] == list(range(6))
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"} and "COMPLETE" in {r["state"] for r in rows}
    assert "model.width" not in rows[0] and "train.lr" in rows[0]  # fixed knobs are not searched

    state = json.loads((out / "fit.json").read_text())
    assert state["finished"] and state["counts"]["COMPLETE"] + state["counts"]["PRUNED"] == 6
    assert "model.width" in state["fixed"]
    final = json.loads((out / "final/metrics.json").read_text())
    assert 0.0 <= final["test"]["accuracy"] <= 1.0 and "log_loss" in final["test"]
    assert "val" not in final  # the validation rows were trained on
    assert state["test"] == final["test"]

    # every trial trained what the study says, with the fixed knob's value
    study = load_study(out)
    assert len(study.trials) == 6 and "model.width" not in study.user_attrs["space"]
    for t in study.trials:
        tcfg = json.loads((out / "trials" / f"{t.number:05d}" / "config.json").read_text())
        assert tcfg["model"]["width"] == 16 and tcfg["train"]["epochs"] == 3
        assert tcfg["runtime"]["threads"] == 1 and tcfg["runtime"]["progress"] is False
        for k, v in t.params.items():
            node = tcfg
            for part in k.split("."):
                node = node[part]
            assert node == pytest.approx(v), k

    # the first trial is the warm start: the tabular start over the defaults, width fixed by the user
    start = start_params(base_cfg := from_dict(study.user_attrs["config"]), study.user_attrs["space"], "tabular")
    first = study.trials[0].params  # the knobs asked (conditional ones only where their condition holds)
    assert first and first == {k: start[k] for k in first}
    assert study.trials[0].params["model.family"] == "mlp" and base_cfg.model.width == 16
    # workers with their own seeds never propose the same knobs
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params)
    assert study.trials[0].params != study.trials[1].params

    # the final model: the best trial's knobs, trained on train+val, for the best trial's epochs
    best = study.best_trial
    assert state["best"]["number"] == best.number and state["reeval"] == {"skipped": "off (search.reeval=0)"}
    fcfg = json.loads((out / "final/config.json").read_text())
    assert fcfg["model"]["width"] == 16
    base = from_dict(study.user_attrs["config"])
    assert from_dict(fcfg).replace(out=None) == base.replace(**best.params, out=None, **{"runtime.progress": False})
    rows_final = json.loads((out / "final/env.json").read_text())["rows"]
    rows_best = json.loads((Path(best.user_attrs["run_dir"]) / "env.json").read_text())["rows"]
    assert rows_final["val"] == 0 and rows_best["val"] > 0
    assert rows_final["train_split"] == rows_best["train_split"] + rows_best["val"]
    assert rows_final["test"] == rows_best["test"]
    assert rows_final["train_used"] > rows_best["train_used"]
    assert final["train"]["epochs_run"] == max(1, best.user_attrs["best_epoch"])

    imp = json.loads((out / "importances.json").read_text())
    assert set(imp) == {"importances", "note"}
    for row in imp["importances"]:
        assert row["knob"] in study.user_attrs["space"] and row["stage"] in ("data", "model", "train")

    code, stdout, err = cli("predict", out / "final", "sklearn:iris")
    assert code == 0, err
    assert "prediction" in stdout and "150 rows" in stdout


def test_fit_writes_its_report(iris_fit):
    out, res = iris_fit
    text = ok(res)
    html = (out / "report.html").read_text()
    test_acc = json.loads((out / "final/metrics.json").read_text())["test"]["accuracy"]
    assert f"{test_acc:.4f}"[:5] in html
    assert re.search(rf"^report: {re.escape(str(out / 'report.html'))} \(open it in a browser\)$", text, re.M), text


def test_a_report_that_cannot_be_built_is_one_note_and_the_fit_stands(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import cotune.report
    import cotune.search.parent as parent
    out = tmp_path / "s"
    out.mkdir()
    (out / "fit.json").write_text("{}")
    final = SimpleNamespace(metrics={"test": {"accuracy": 0.9}}, config=from_dict({}), n_params=10, path=out / "final",
                            train=SimpleNamespace(best_epoch=1, epochs_run=2))
    done = parent.FitResult(path=out, study_name="s", best={"number": 0}, final=final, test=final.metrics["test"],
                            counts={"COMPLETE": 1, "PRUNED": 0, "FAIL": 0}, how={"kind": "single"})
    monkeypatch.setattr(parent, "fit", lambda *a, **k: done)  # the search itself is tested above

    def broken(path):
        raise RuntimeError("no room for the figures")

    monkeypatch.setattr(cotune.report, "build_report", broken)
    text = ok(cli("fit", "sklearn:iris", "--trials", 1, "--out", out))
    notes = [ln for ln in text.splitlines() if ln.startswith("note:")]
    assert notes == [f"note: report.html could not be built (RuntimeError: no room for the figures); "
                     f"rebuild it with: cotune report {out}"], text
    assert "search directory" in text and done.report is None


def test_replaying_the_best_trial_reproduces_its_config(iris_fit):
    out, res = iris_fit
    ok(res)
    study = load_study(out)
    cfg = from_dict(study.user_attrs["config"])
    space = {k: tuple(v) for k, v in study.user_attrs["space"].items()}
    for t in [study.best_trial, *study.trials]:
        replay = suggest(FixedTrial(t.params), cfg, space)
        assert replay == cfg.replace(**t.params)
        ran = from_dict(json.loads((out / "trials" / f"{t.number:05d}" / "config.json").read_text()))
        assert ran.replace(out=None) == replay.replace(out=None, **{"runtime.progress": False})


def test_data_fraction_as_fidelity(tmp_path):
    out = tmp_path / "fid"
    ok(cli("fit", "sklearn:digits", "--trials", 8, "--workers", 1, "--sampler", "random", "--set", "search.fidelity=data",
           "--set", "search.pruner=halving", "--set", "search.warm_start=false", *QUICK, "--out", out))
    study = load_study(out)
    rows = {int(r["number"]): r for r in read_csv(out / "trials.csv")}
    full = json.loads((out / "fit.json").read_text())
    assert full["counts"]["PRUNED"] >= 1, "successive halving over 8 trials prunes at the 1/9 rung"
    for t in study.trials:
        tdir = out / "trials" / f"{t.number:05d}"
        steps = sorted(t.intermediate_values)
        fracs = [json.loads((tdir.with_name(f"{tdir.name}.rung{i}") / "config.json").read_text())["data"]["fraction"]
                 for i in range(len(steps))]
        assert fracs == pytest.approx([1 / 9, 1 / 3][:len(steps)])
        used = [json.loads((tdir.with_name(f"{tdir.name}.rung{i}") / "env.json").read_text())["rows"]["train_used"]
                for i in range(len(steps))]
        assert used == sorted(used)
        if t.state.name == "PRUNED":  # judged on a share of the rows, reported with it
            assert steps in ([1], [1, 3]) and float(rows[t.number]["pruned_fraction"]) == pytest.approx(fracs[-1])
            assert not (tdir / "model.safetensors").exists()
        else:
            assert t.state.name == "COMPLETE" and steps == [1, 3]
            cfg_t = json.loads((tdir / "config.json").read_text())
            assert cfg_t["data"]["fraction"] == 1.0 and (tdir / "model.safetensors").is_file()
            assert not rows[t.number]["pruned_fraction"]


# ------------------------------------------------------------------------------------------ failing trials

def test_every_trial_failing_ends_the_fit_with_one_line(tmp_path):
    out = tmp_path / "allfail"
    # a cnn1d with a first kernel of 9 cannot read iris's 4 features: every trial fails in create_model (ModelError)
    res = cli("fit", "sklearn:iris", "--trials", 2, "--workers", 1, "--set", "model.family=cnn1d",
              "--set", "model.kernel_size=9", *QUICK, "--out", out)
    assert_user_error(res, match="no trial finished")
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 2 and {r["state"] for r in rows} == {"FAIL"}
    for r in rows:
        assert "cnn1d" in r["fail_reason"] and "\n" not in r["fail_reason"]
        err = (out / "trials" / f"{int(r['number']):05d}" / "error.txt").read_text()
        assert err.startswith("Traceback") and "ModelError" in err
        assert not (out / "trials" / f"{int(r['number']):05d}" / "checkpoint.safetensors").exists()
    assert not (out / "final").exists()
    assert not json.loads((out / "fit.json").read_text()).get("finished")


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path):
    # sequences of length 12: cnn1d with a kernel of 63 cannot be built, mlp trains
    g = np.random.default_rng(0)
    X = g.normal(size=(120, 1, 12)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", X=X, y=(X.mean(axis=(1, 2)) > 0).astype(np.int64))
    out = tmp_path / "mixed"
    live = [a for a in QUICK if a != "-q"]  # the live table, captured (not a terminal), and no report.html
    text = ok(cli("fit", tmp_path / "seq.npz", "--trials", 4, "--workers", 1, "--sampler", "random",
                  "--set", "model.kernel_size=63", "--set", "search.space={model.family: [mlp, cnn1d]}",
                  "--set", "search.pruner=none", *live, "--no-report", "--out", out))
    assert re.search(r"^trials: \d+ complete, \d+ running", text, re.M), text
    # rich leaves a captured live view's last line open: the final metrics' title must start a line of its own
    title = next(ln for ln in text.splitlines() if "parameters, best epoch" in ln or "soft-voting ensemble" in ln)
    assert re.match(r"\s*(\w+, [\d,]+ parameters, best epoch|soft-voting ensemble)", title), text
    assert not (out / "report.html").exists() and "report:" not in text
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 4
    fams = {r["model.family"] for r in rows}
    assert fams == {"mlp", "cnn1d"}, "the seed should give both families; pick another search.seed"
    for r in rows:
        tdir = out / "trials" / f"{int(r['number']):05d}"
        if r["model.family"] == "cnn1d":
            assert r["state"] == "FAIL" and "kernel_size" in r["fail_reason"], r
            assert "ModelError" in (tdir / "error.txt").read_text()
        else:
            assert r["state"] == "COMPLETE" and not r["fail_reason"], r
            assert (tdir / "model.safetensors").is_file() and not (tdir / "error.txt").exists()
    state = json.loads((out / "fit.json").read_text())
    assert state["counts"]["FAIL"] == sum(r["model.family"] == "cnn1d" for r in rows)
    assert state["best"]["params"]["model.family"] == "mlp"
    # a final model: the chosen trial's, or the top trials' ensemble when it beats that one on validation
    assert (out / "final/model.safetensors").is_file() or (out / "final/ensemble.json").is_file()


# ------------------------------------------------------------------------------------------ budget

def test_budget_bounds_the_wall_time(tmp_path):
    out = tmp_path / "budget"
    t0 = time.time()
    # 500 epochs without early stopping, the best epoch by validation loss (late): left alone, the first trial
    # would train until the deadline, and the final model as long again after it
    text = ok(cli_proc("fit", "sklearn:wine", "--budget", "20s", "--set", "train.epochs=500", "--set", "train.patience=0",
                       "--set", "train.monitor=loss", *ONE_THREAD, *NO_TRACK, "-q", "--out", out))
    wall = time.time() - t0
    assert "trials:" in text
    state = json.loads((out / "fit.json").read_text())
    assert state["budget_s"] == 20 and state["finished"] and (out / "final/metrics.json").is_file()
    # the budget covers the search and the final training, measured by the search itself ...
    assert state["elapsed"] <= 20 * 1.05 + 1, state["elapsed"]
    # ... and by the clock: from the search's first file to the end of the process. Before that the
    # interpreter imports torch & co., ~6 s on an idle machine, much more on a loaded one.
    startup = (out / "config.json").stat().st_mtime - t0
    assert wall - startup <= 20 * 1.05 + 2, f"a 20 s budget took {wall:.1f} s, {startup:.1f} s of it start-up"
    assert wall <= 20 * 1.05 + max(8.0, startup + 2), f"a 20 s budget took {wall:.1f} s"


# ------------------------------------------------------------------------------------------ resume

def _pids_with(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (Linux /proc; zombies excluded)."""
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if text in (p / "cmdline").read_bytes().decode(errors="replace") and \
                    (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def test_resume_after_kill_keeps_finished_trials(tmp_path):
    out = tmp_path / "wine"
    p = subprocess.Popen([sys.executable, "-m", "cotune.cli", "fit", "sklearn:wine", "--trials", "12", "--workers", "1",
                          "--set", "train.epochs=10", "--set", "model.width=16",
                          "--set", "data.clean.label_issues=keep",
                          *ONE_THREAD, *NO_TRACK, "--out", str(out), "-q"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV})

    def training():  # a RUNNING trial past suggest() (its run directory exists), while two are COMPLETE
        if not (out / "trials").is_dir():  # the study exists once workers run
            return False
        trials = load_study(out).get_trials(deepcopy=False)
        return sum(t.state.name == "COMPLETE" for t in trials) >= 2 and any(
            t.state.name == "RUNNING" and (out / "trials" / f"{t.number:05d}" / "config.json").exists() for t in trials)

    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            assert p.poll() is None, "the search ended before it could be killed"
            if training():
                workers = [pid for pid in _pids_with(str(out)) if pid != p.pid]
                for pid in workers:  # freeze the worker: the trial cannot finish between this check and the kill
                    os.kill(pid, signal.SIGSTOP)
                if training():
                    break
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.1)
        else:
            pytest.fail("no two trials finished in time")
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the parent's group; its workers have their own sessions
        p.wait()
    assert not (out / "trials.csv").exists()
    # the workers die with their parent: nothing keeps writing to the study
    for _ in range(50):
        survivors = _pids_with(str(out))
        if not survivors:
            break
        time.sleep(0.1)
    for pid in survivors:  # never leave a frozen orphan behind
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "orphaned workers survive a killed `cotune fit`"

    killed = json.loads((out / "fit.json").read_text())
    assert killed["elapsed"] > 0 and not killed.get("finished")  # saved during the search: --resume gets the rest
    before = {t.number: t for t in load_study(out).trials}
    complete = {n: t for n, t in before.items() if t.state.name == "COMPLETE"}
    running = {n: t for n, t in before.items() if t.state.name == "RUNNING"}
    assert len(complete) >= 2 and running and all(t.params for t in running.values())

    out_text = ok(cli("fit", "--out", out, "--resume", "-q"))
    assert "trials:" in out_text
    after = {t.number: t for t in load_study(out).trials}
    for n, t in complete.items():  # nothing finished is lost or changed
        assert after[n].state.name == "COMPLETE" and after[n].params == t.params and after[n].values == t.values
    assert not [t for t in after.values() if t.state.name in ("RUNNING", "WAITING")]

    retries = {t.system_attrs["failed_trial"]: t for t in after.values() if "failed_trial" in t.system_attrs}
    for n, t in running.items():  # the killed trial is failed and run again with its knobs
        assert after[n].state.name == "FAIL" and n in retries, n
        assert t.params == retries[n].params and retries[n].state.name != "FAIL"
    finished = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    assert len(finished) == 12 + len(retries)

    # the resumed sampler does not replay the proposals of the first run
    distinct = [tuple(sorted(t.params.items())) for t in after.values() if t.number not in retries]
    assert len(set(distinct)) == len(distinct)

    rows = read_csv(out / "trials.csv")
    assert len(rows) == len(after)
    # runtime.threads=1 was set: the one worker on this machine trained with one thread, not os.cpu_count()
    assert json.loads((out / "trials" / f"{max(after):05d}" / "config.json").read_text())["runtime"]["threads"] == 1
    assert all(r["fail_reason"] for r in rows if int(r["number"]) in running)
    state = json.loads((out / "fit.json").read_text())
    assert state["finished"] and (out / "final/metrics.json").is_file()


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args, match", [
    (("sklearn:iris",), "--budget.*--trials|limit"),
    (("sklearn:iris", "--budget", "ten"), "budget"),
    (("sklearn:iris", "--budget=-1m"), "budget"),
    (("sklearn:iris", "--trials", 2, "--set", "data.split.val=0"), "data.split.val"),
    (("sklearn:iris", "--trials", 2, "--set", "search.space={train.epochs: [1, 5]}"), "train.epochs"),
    (("sklearn:iris", "--trials", 2, "--set", "search.spacee={}"), "search.space"),
    (("no_such_file.csv", "--trials", 2), "no_such_file"),
])
def test_fit_bad_input_leaves_nothing(tmp_path, args, match):
    out = tmp_path / "run"
    assert_user_error(cli("fit", *args, *NO_TRACK, "--out", out), match=match)
    assert not out.exists()


def test_resume_with_nothing_to_resume(tmp_path):
    assert_user_error(cli("fit", "--out", tmp_path / "missing", "--resume"), match="resume")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert_user_error(cli("fit", "--out", tmp_path / "empty", "--resume"), match="resume")
    assert list((tmp_path / "empty").iterdir()) == []
    assert_user_error(cli("fit", "sklearn:iris", "--out", tmp_path / "x", "--resume"), match="drop")


def test_fit_refuses_a_finished_search_without_resume(iris_fit):
    out, res = iris_fit
    ok(res)
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    stamp = (out / "fit.json").stat().st_mtime_ns
    assert_user_error(cli("fit", "sklearn:iris", "--trials", 2, *NO_TRACK, "--out", out), match="already holds")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing
    assert (out / "fit.json").stat().st_mtime_ns == stamp


def test_a_search_whose_storage_cannot_be_opened_leaves_nothing(tmp_path):
    """It fails before its first trial: the folders it made go, runs/ too."""
    out = tmp_path / "runs" / "x"
    res = cli_proc("fit", "sklearn:iris", "--trials", 1, "--workers", 1, *NO_TRACK, "--storage",
                   f"sqlite:///{tmp_path / 'no_such_dir' / 'x.db'}", "--out", out, timeout=120)
    assert_user_error(res, match="storage")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "no_such_dir").exists()


def test_a_search_that_fails_before_its_first_trial_empties_the_out_folder_it_was_given(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    assert_user_error(cli("fit", "sklearn:iris", "--trials", 1, "--workers", 1, *NO_TRACK, "--storage",
                          "postgresql://nobody@127.0.0.1:1/x", "--out", mine), match="storage")
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_a_bare_postgresql_url_uses_the_installed_driver(monkeypatch):
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the `postgres` extra installs psycopg2."""
    import importlib.util

    from cotune.search.storage import driver_url
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "psycopg" else object())
    assert driver_url("postgresql://u@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"
    assert driver_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"  # a driver named stays
    assert driver_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # psycopg 3 there: SQLAlchemy's choice
    assert driver_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_finished_live_view_ends_its_line():
    """Not on a terminal, rich leaves the live table's last line open; what is printed next starts a new one."""
    import io

    from rich.console import Console
    from rich.table import Table

    from cotune.search.parent import live_view
    buf = io.StringIO()
    console = Console(file=buf, width=80)
    with live_view(True, console, refresh=2, transient=False) as view:
        view.update(Table("#", title="trials"))
    console.print("metrics")
    assert buf.getvalue().endswith("┘\nmetrics\n"), buf.getvalue()


def test_worker_with_a_bad_storage_is_one_line(tmp_path):
    res = cli_proc("worker", "--storage", "sqlite:///nonexistent/x.db", "--study", "nope", timeout=120)
    assert_user_error(res, match="storage")
    assert not Path("nonexistent").exists()
    assert_user_error(cli("worker", "--storage", f"sqlite:///{tmp_path}/x.db", "--study", "nope"), match="nope")


# -------------------------------------------------------------------------------- workers sharing a study

# Two processes share one SQLite study, argv: URL, study, mode, out. "work": cotune.search.worker.work() with an instant
# objective and an ask slowed by 0.2 s (a slow sampler), so both workers sit between the limit check and the
# claim at once; "work-nolock": the same without the ask lock. "claim": a bare ask/tell loop over the queue, so
# two claims of one waiting trial meet in the database; "claim-plain": the same without BEGIN IMMEDIATE.
RACER = """
import sys, time, warnings, optuna, cotune.search.worker as t, cotune.search.storage as w
warnings.simplefilter("ignore")
url, name, mode, out = sys.argv[1:]
if mode == "work-nolock":
    w.AskLock.acquire = lambda self: None
if mode == "claim-plain":
    w._serialize = lambda engine: None
if mode.startswith("work"):
    ask = optuna.Study.ask
    optuna.Study.ask = lambda self, *a, **k: (time.sleep(0.2), ask(self, *a, **k))[1]
    t.Objective = lambda study, cfg, space, out, deadline, threads: lambda trial: trial.suggest_float("train.lr", 1e-4, 0.1)
    t.work(url, name, out=out)
else:
    study = optuna.load_study(study_name=name, storage=w.rdb_storage(url))
    while any(x.state.name == "WAITING" for x in study.get_trials(deepcopy=False)):
        trial = study.ask()
        try:
            study.tell(trial, 0.0)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # the other one claimed it too
            print("twice", trial.number)
"""


def _race(tmp_path, mode: str, queued: int, limit: int):
    """The study's trials and the claims the workers saw a second time."""
    from cotune.search.storage import open_study
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = from_dict({"data": {"source": "sklearn:iris"}, "search": {"trials": limit, "sampler": "random"}})
    study, _, _ = open_study(url, "race", cfg, {"train.lr": (1e-4, 0.1)})
    for i in range(queued):
        study.enqueue_trial({"train.lr": 1e-3}, user_attrs={"i": i})
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, "race", mode, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    return study.get_trials(deepcopy=False), sum(o.count("twice") for o, _ in outs)


def test_workers_stop_exactly_at_the_trial_limit(tmp_path):
    trials, _ = _race(tmp_path / "a", "work", queued=4, limit=10)
    assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.user_attrs["i"] for t in trials if "i" in t.user_attrs) == [0, 1, 2, 3]  # each queued one once
    # unguarded, both workers count the last trial as free and both start one: the check above can fail
    over = [len(_race(tmp_path / f"n{k}", "work-nolock", queued=0, limit=6)[0]) - 6 for k in range(2)]
    assert max(over) > 0, over


def test_a_waiting_trial_is_claimed_by_one_worker(tmp_path):
    trials, twice = _race(tmp_path / "a", "claim", queued=150, limit=150)
    # Without BEGIN IMMEDIATE both workers can read a trial as WAITING and both claim it (the second tell then
    # fails), or a new trial is read before its number is set; in 5 runs here that came 3 times ("claim-plain").
    assert twice == 0 and sorted(t.user_attrs["i"] for t in trials if "i" in t.user_attrs) == list(range(150))


def test_a_worker_that_starts_late_still_runs_one_trial(tmp_path):
    """A worker that opens the study with less time left than the final refit's estimate (a loaded machine, a short
    budget) runs one trial when none has finished, stopped at its first validated epoch; once one has, none."""
    from cotune.search.storage import open_study
    from cotune.search.worker import work
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = from_dict({"data": {"source": "sklearn:iris"}, "model": {"width": 16}, "train": {"epochs": 200, "patience": 0},
                     "runtime": {"threads": 1, "progress": False}, "search": {"mlflow": "none", "sampler": "random"}})
    study, _, _ = open_study(url, "late", cfg, {"train.lr": (1e-4, 0.1)})
    assert work(url, "late", deadline=time.time() + 3, out=str(tmp_path)) == 1  # the final's estimate alone is 5 s
    (t,) = study.get_trials(deepcopy=False)
    assert t.state.name == "COMPLETE" and t.user_attrs["epochs_run"] < 200
    assert work(url, "late", deadline=time.time() + 3, out=str(tmp_path)) == 0
    open_study(url, "past", cfg, {"train.lr": (1e-4, 0.1)})
    assert work(url, "past", deadline=time.time() - 1, out=str(tmp_path / "past")) == 0  # past the deadline: none


def test_a_trial_ended_by_another_worker_is_run_again_and_the_worker_goes_on(tmp_path, monkeypatch, capsys):
    """Another worker's heartbeat check can end a live trial whose beats were late (a starved worker): optuna then
    fails to tell it and its worker died with it. Here it is ended at its second epoch, as that check does."""
    import optuna
    from optuna.trial import TrialState

    from cotune.search import objective as obj
    from cotune.search.storage import open_study, rdb_storage
    from cotune.search.worker import work
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = from_dict({"data": {"source": "sklearn:iris"}, "model": {"width": 8}, "train": {"epochs": 6, "patience": 0},
                     "runtime": {"threads": 1, "progress": False},
                     "search": {"mlflow": "none", "sampler": "random", "trials": 1, "pruner": "none"}})
    study, _, _ = open_study(url, "taken", cfg, {"train.lr": (1e-3, 0.1)})
    other = optuna.load_study(study_name="taken", storage=rdb_storage(url))
    hook = obj.Objective.on_eval_for

    def on_eval_for(self, trial, t0):
        inner = hook(self, trial, t0)

        def on_eval(epoch, row):
            if trial.number == 0 and epoch == 2:  # what optuna.storages.fail_stale_trials does to a stale trial
                assert other._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                other._storage.get_heartbeat_stale_trial_callback()(other, other._storage.get_trial(trial._trial_id))
            return inner(epoch, row)
        return on_eval
    monkeypatch.setattr(obj.Objective, "on_eval_for", on_eval_for)
    assert work(url, "taken", out=str(tmp_path)) == 2
    first, again = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL and again.state == TrialState.COMPLETE
    assert again.params == first.params and again.system_attrs["retry_history"] == [0]
    assert "trial 0 ended by another worker" in capsys.readouterr().err


def test_a_failed_heartbeat_is_reported_and_the_next_one_tried(monkeypatch, capsys):
    """Optuna's heartbeat thread ends at its first error; then the live trial is soon taken for a dead one's."""
    from cotune.search import storage as st
    calls = []

    def record(trial_id):
        calls.append(trial_id)
        if len(calls) == 1:
            raise OSError("server closed the connection unexpectedly")
    st._beat(record, 7)
    st._beat(record, 7)
    assert calls == [7, 7] and "heartbeat of a running trial was not recorded (server closed" in capsys.readouterr().err
    assert st.rdb_storage("sqlite:///:memory:").record_heartbeat.func is st._beat


def test_table_start_cuts_its_ensemble_on_large_tables():
    cfg = from_dict({"data": {"source": "sklearn:breast_cancer"}})
    space = search_space(cfg, set(), "tabular", "binary", cpu=True)
    assert start_params(cfg, space, "tabular")["model.ensemble"] == START["tabular"]["model.ensemble"]
    assert start_params(cfg, space, "tabular", rows=3_000)["model.ensemble"] == 4
    assert start_params(cfg, space, "tabular", rows=15_000)["model.ensemble"] == 2
    assert start_params(cfg, space, "tabular", rows=43_000)["model.ensemble"] == 1


def test_table_start_with_text_is_one_layer_without_an_ensemble():
    """With text columns (the text knobs in the space) the table start is the n-gram bag under a one-layer MLP."""
    from cotune.search.space import START_TEXT
    cfg = from_dict({"data": {"source": "sklearn:breast_cancer"}})
    plain = start_params(cfg, search_space(cfg, set(), "tabular", "binary", cpu=True), "tabular")
    text = start_params(cfg, search_space(cfg, set(), "tabular", "binary", cpu=True, text=True), "tabular")
    assert plain["model.depth"] == START["tabular"]["model.depth"] != START_TEXT["model.depth"] == text["model.depth"]
    assert text["model.ensemble"] == 1 and text["data.tokenizer"] == "ngrams" and "data.tokenizer" not in plain
    assert text["model.text_linear"] == 1.0 and "model.text_linear" not in plain  # LogisticRegression's default C


def test_a_worker_that_crashes_is_said_and_the_others_watched_to_their_end(tmp_path, capsys):
    """A worker that dies of a bug used to leave a silently shorter search: the parent names it and its log."""
    from types import SimpleNamespace

    from cotune.search.parent import run_workers
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]),
             subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])]
    run_workers(SimpleNamespace(), "sqlite://", 2, tmp_path, 1, procs=procs, poll_s=0.05)
    assert all(p.returncode is not None for p in procs)
    err = capsys.readouterr().err
    assert "worker 0 stopped with exit code 3" in err and "workers.log" in err and "worker 1" not in err
