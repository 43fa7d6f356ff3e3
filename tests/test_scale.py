"""`cotune scale`: the grid, scale.csv, resume, the fit and advice in scale.json, and bad input.

One real study (sklearn digits, an MLP, 3 sizes x 3 shares x 1 seed, 2 workers; about a minute) is shared
by the tests; the fit itself is tested on synthetic points in tests/test_scale_law.py.
"""
from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cotune
from cotune.cli import app
from cotune.config import from_dict
from cotune.errors import ConfigError
from cotune.scale.advice import summarize
from cotune.scale.grid import COLUMNS, fractions_for
from cotune.scale.law import JointLaw
from cotune.scale.study import base_config
from cotune.track import write_json

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
EPOCHS = 6
GRID = ("--sizes", "3", "--fractions", "3", "--seeds", "1", "--workers", "2", "-q")


def cli_proc(*args):
    p = subprocess.run([sys.executable, "-m", "cotune.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, **ENV})
    return p.returncode, p.stdout, p.stderr


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def user_error(res, match):
    code, out, err = res
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in out + err, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], lines
    return lines[0]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    run = root / "run"
    code, out, err = cli("train", "--set", "data.source=sklearn:digits", "--set", f"train.epochs={EPOCHS}",
                         "--set", "model.width=32", "--set", "runtime.threads=1", "--set", "runtime.progress=false",
                         "--out", run)
    assert code == 0, err
    res = cli_proc("scale", run, *GRID)
    return run, res


def test_scale_end_to_end(study):
    run, (code, stdout, err) = study
    assert code == 0, stdout + err
    out = run / "scale"
    assert "L(N, D) =" in stdout and "Most promising:" in stdout and "10 runs trained now" in stdout
    every = read_csv(out / "scale.csv")
    assert len(every) == 10 and list(every[0]) == list(COLUMNS)
    # the schedule is cosine (the default), so the current point is also trained at twice the epochs
    longer = [r for r in every if r["longer"] == "True"]
    rows = [r for r in every if r["longer"] == "False"]
    assert len(longer) == 1 and len(rows) == 9
    params = sorted({int(r["params"]) for r in rows})
    samples = sorted({int(r["samples"]) for r in rows})
    assert len(params) == 3 and len(samples) == 3
    assert 8 <= params[-1] / params[0] <= 32  # scale.size_span 16, through the width knob
    assert 6 <= samples[-1] / samples[0] <= 10  # scale.fraction_span 8
    cfg = from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.train.monitor == "loss" and cfg.model.width == 32
    top = max(fractions_for(cfg))
    for r in rows:
        tcfg = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        metrics = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert tcfg["model"]["width"] == int(r["width"]) and tcfg["data"]["fraction"] == pytest.approx(float(r["fraction"]))
        # up to scale.epoch_factor (3) x the epochs, and a smaller share as many steps: epochs and patience
        # scale with 1 / share; early stopping on validation loss ends the run when it stops improving
        k = top / float(r["fraction"])
        assert tcfg["train"]["epochs"] == math.ceil(EPOCHS * 3 * k - 1e-9)
        assert tcfg["train"]["patience"] == math.ceil(cfg.train.patience * k - 1e-9)
        assert tcfg["train"]["val_every"] == max(1, round(k))  # validated about as often per step as the full share
        assert int(r["epochs"]) == metrics["train"]["epochs_run"] <= tcfg["train"]["epochs"]
        assert float(r["val_loss"]) == pytest.approx(metrics["val"]["log_loss"])
        assert float(r["val_loss_se"]) == pytest.approx(metrics["val"]["log_loss_se"]) and float(r["val_loss_se"]) > 0
        assert float(r["val_metric"]) == pytest.approx(metrics["val"]["accuracy"])
        assert int(r["params"]) == metrics["train"]["n_params"] and float(r["flops"]) > 0

    (lr,) = longer
    tcfg = json.loads((Path(lr["run_dir"]) / "config.json").read_text())
    assert int(lr["width"]) == cfg.model.width and float(lr["fraction"]) == pytest.approx(top)
    assert tcfg["train"]["epochs"] == 2 * math.ceil(EPOCHS * 3 - 1e-9) and tcfg["train"]["patience"] == cfg.train.patience

    s = json.loads((out / "scale.json").read_text())
    assert {"law", "axes", "holdout", "current", "advice", "compute_optimal", "text"} <= set(s)
    law = JointLaw.from_dict(s["law"])
    corner = [r for r in rows if int(r["params"]) == params[-1] and int(r["samples"]) == samples[-1]]
    h = s["holdout"]
    assert h["actual"] == pytest.approx(np.mean([float(r["val_loss"]) for r in corner]))
    held = JointLaw.from_dict(h["law"])
    # the corner is left out of the checking fit; the runs past the overfitting turn (a smaller model did
    # better on the same rows) are left out of both, unless that leaves fewer than 8 points (1 seed here)
    mean = lambda n, d: np.mean([float(r["val_loss"]) for r in rows if int(r["params"]) == n and int(r["samples"]) == d])  # noqa: E731
    turned = [(n, d) for n in params for d in samples if any(mean(m, d) < mean(n, d) for m in params if m < n)]
    left = turned if len(turned) <= 1 else []
    assert [(p["params"], p["samples"]) for p in s["past_the_turn"]] == left
    assert held.n_points == 8 and law.n_points == s["points"] == 9 - len(left)
    assert h["predicted"] == pytest.approx(float(held.predict(params[-1], samples[-1])))
    assert h["rel_error"] == pytest.approx(abs(h["predicted"] - h["actual"]) / h["actual"])
    lo, hi = h["interval"]  # the held-out fit's bootstrap: is the miss more than the fit's own uncertainty?
    assert lo < hi and h["inside"] == (lo <= h["actual"] <= hi)
    trust = next(t for t in s["text"] if t.startswith("Trust:"))
    assert f"[{lo:.4g}, {hi:.4g}]" in trust and ("holds it" in trust) == h["inside"]
    # the corner's runs share the validation rows: its standard error is theirs, not shrunk by the seeds
    assert h["actual_se"] == pytest.approx(np.mean([float(r["val_loss_se"]) for r in corner]))
    measured = next(t for t in s["text"] if t.startswith("Measured:"))
    assert f"+/-{100 * h['actual_se'] / h['actual']:.1f}%" in measured
    assert ("data.split.val" in measured) == (h["actual_se"] / h["actual"] > 0.05)
    gains = [a["loss_gain"] for a in s["advice"]]
    assert gains == sorted(gains, reverse=True) and {a["option"] for a in s["advice"]} >= {"2x data", "2x params"}
    # 2x epochs as trained: the longer run against the corner's run of the same seed
    here = next(r for r in corner if r["seed"] == lr["seed"])
    assert s["epochs"]["measured"] and s["epochs"]["ratio"] == pytest.approx(float(lr["val_loss"]) / float(here["val_loss"]))
    two_e = next(a for a in s["advice"] if a["option"] == "2x epochs")
    assert two_e["loss"] == pytest.approx(s["current"]["loss_fit"] * s["epochs"]["ratio"])
    assert any(t.startswith("Epochs: measured: the current point trained again with twice the epochs") for t in s["text"])
    two_d = next(a for a in s["advice"] if a["option"] == "2x data")
    assert two_d["loss"] == pytest.approx(float(law.predict(params[-1], 2 * samples[-1])))
    assert s["current"]["limited_by"] in ("data", "capacity")
    assert s["form"]["form"] == law.form == "interaction" and "as scale.law sets" in s["form"]["note"]  # the default
    assert any(t.startswith("Left out of the fits:") for t in s["text"]) == bool(left)
    assert s["text"][0].startswith("Most promising: " + s["advice"][0]["option"])
    opt = s["compute_optimal"]
    assert "N" in opt or "error" in opt
    if "N" in opt:
        assert opt["N"] * opt["D"] * opt["flops_per_param_sample"] == pytest.approx(opt["compute"], rel=1e-6)


def test_scale_resumes_skipping_finished_rows(study):
    run, (code, _, err) = study
    assert code == 0, err
    out = run / "scale"
    before = (out / "scale.csv").read_bytes()
    res = cotune.scale(run, sizes=3, fractions=3, seeds=1, workers=2)  # the Python API, same grid
    assert res.ran == 0 and (out / "scale.csv").read_bytes() == before
    rows = read_csv(out / "scale.csv")
    kept, dropped = rows[:7], rows[7:]  # two grid runs and the longer one (or three grid runs)
    with open(out / "scale.csv", "w", newline="") as f:  # as if the study had been killed two runs short
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    res = cotune.scale(run, sizes=3, fractions=3, seeds=1, workers=2)
    assert res.ran == 3
    after = read_csv(out / "scale.csv")
    assert after[:7] == kept and len(after) == 10
    key = lambda r: (r["width"], r["fraction"], r["seed"], r["longer"])  # noqa: E731
    assert sorted(map(key, after[7:])) == sorted(map(key, dropped))
    assert res.summary["points"] == 9 and (out / "scale.json").is_file()


def test_a_study_saved_before_the_newer_columns_still_reads(study, tmp_path):
    """scale.csv files written without val_loss_se and longer resume: their rows read as NaN and False
    there, the summary leaves the corner's standard error out, and new rows are written with every column."""
    from cotune.scale.grid import append_row, read_rows, row_key
    run, (code, _, err) = study
    assert code == 0, err
    rows = [r for r in read_csv(run / "scale" / "scale.csv") if r["longer"] == "False"]
    old = tmp_path / "scale.csv"
    with open(old, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k not in ("val_loss_se", "longer")], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows[:-1])
    got = read_rows(old)
    assert len(got) == 8 and all(math.isnan(r["val_loss_se"]) and r["longer"] is False for r in got)
    assert {row_key(r) for r in got} <= {row_key(r) for r in read_rows(run / "scale" / "scale.csv")}  # resume skips them
    append_row(old, got, {**got[0], "seed": 99, "val_loss_se": 0.01})
    again = read_csv(old)
    assert list(again[0]) == list(COLUMNS) and again[-1]["val_loss_se"] == "0.01" and again[0]["val_loss_se"] == ""  # unknown: an empty cell
    assert again[0]["longer"] == "False"
    grid = json.loads((run / "scale" / "grid.json").read_text())
    cfg = from_dict(json.loads((run / "scale" / "config.json").read_text()))
    s = summarize([{**r, "val_loss_se": float("nan")} for r in read_rows(run / "scale" / "scale.csv")], cfg,
                  [(w["width"], w["params"], w["forward_flops"]) for w in grid["widths"]])
    assert "actual_se" not in s["holdout"] and not any(t.startswith("Measured:") for t in s["text"])


def test_the_study_reads_only_trials_of_grid_points(tmp_path):
    """A finished trial without a grid point (one a worker sampled past the queue) adds no row."""
    import optuna
    from cotune.scale.study import sweep
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    rows: list = []
    sweep(study, set(), rows, set(), tmp_path / "scale.csv", {})
    assert rows == [] and not (tmp_path / "scale.csv").exists()


def test_too_few_points_say_what_is_needed(study, tmp_path):
    run, _ = study
    msg = user_error(cli("scale", run, "--sizes", "2", "--out", tmp_path / "s"), "at least 3 model sizes")
    assert "--sizes" in msg
    assert not (tmp_path / "s").exists()


def test_bad_input_is_one_line(study, tmp_path):
    run, _ = study
    user_error(cli("scale", tmp_path), "neither a finished search")
    (tmp_path / "half").mkdir()
    write_json(tmp_path / "half" / "fit.json", {"config": {}, "best": None})
    user_error(cli("scale", tmp_path / "half"), "has not finished")
    user_error(cli("scale", run, "--extrapolate", "--out", tmp_path / "x"), "generates its data")
    user_error(cli("scale", run, "--set", "train.lr=0.05", *GRID), "another configuration")
    user_error(cli("scale", run, "--set", "scale.sizes=1", "--out", tmp_path / "y"), "scale.sizes")


def test_base_config_is_the_best_trial_of_a_search(tmp_path):
    cfg = from_dict({"data": {"source": "sklearn:iris"}, "train": {"epochs": 7}})
    write_json(tmp_path / "fit.json", {"config": cfg.to_dict(), "best": {"params": {"model.width": 48, "train.lr": 0.02}}})
    base = base_config(tmp_path)
    assert base.model.width == 48 and base.train.lr == 0.02 and base.train.epochs == 7
    with pytest.raises(ConfigError, match="neither"):
        base_config(tmp_path / "nope")


def test_report_draws_the_scaling_section(study):
    from test_report import CHROMIUM_FLAGS, ChartScan, chromium, visible_text
    from cotune.report import build_report
    run, (code, _, err) = study
    assert code == 0, err
    page = build_report(run)
    assert not page.problems, page.problems
    s = json.loads((run / "scale" / "scale.json").read_text())
    text = html.unescape(visible_text(page.read_text()))
    assert "More data or a bigger model?" in text and s["text"][0] in text
    assert f"{100 * s['holdout']['rel_error']:.1f}%" in text and f"{s['law']['alpha']:.4g}" in text
    lo, hi = s["holdout"]["interval"]
    assert f"[{lo:.4g}, {hi:.4g}]: " + ("holds" if s["holdout"]["inside"] else "misses") in text
    assert f"{s['holdout']['actual']:.4g} +/- {s['holdout']['actual_se']:.2g}" in text
    assert "2x epochs as trained, the others as the fit predicts" in text and s["epochs"]["measured"]
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={run / 'chromium-profile'}", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    scan = ChartScan()
    scan.feed(dom)
    scaling = [cid for cid in scan.charts if "scale" in cid]
    assert len(scaling) == 2, sorted(scan.charts)
    assert all({"plot-container", "main-svg"} <= scan.charts[c] for c in scaling)
    errors = re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, flags=re.S)
    assert errors is not None and errors.group(1).strip() == ""


def test_report_shows_the_interaction_form(study, tmp_path):
    """A scale.json whose law has the interaction form: its curves, its q and its formula on the page."""
    from test_report import visible_text
    from cotune.report import build_report
    run, (code, _, err) = study
    assert code == 0, err
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("runs", "*.db*", "report.html"))
    s = json.loads((copy / "scale" / "scale.json").read_text())
    s["law"].update(q=0.35, form="interaction")
    s["law"]["ci"]["q"] = [0.3, 0.41]
    s["form"] = {"form": "interaction", "errors": {"additive": 0.2, "interaction": 0.05},
                 "note": "interaction: inner corners predicted 5.0% off on average, against 20.0% for the other form"}
    (copy / "scale" / "scale.json").write_text(json.dumps(s))
    page = build_report(copy)
    assert not page.problems, page.problems
    text = html.unescape(visible_text(page.read_text()))
    assert "E + ((A / N^alpha)^(1/q) + (B / D^beta)^(1/q))^q" in text and "0.3 to 0.41" in text
    assert s["form"]["note"] in text


def test_grid_points_shares_epochs_and_extrapolation():
    from cotune.scale.grid import grid
    cfg = from_dict({"data": {"source": "mnist1d", "fraction": 0.5}, "train": {"epochs": 10},
                     "scale": {"fractions": 4, "fraction_span": 8, "seeds": 2}, "runtime": {"seed": 3}})
    fr = fractions_for(cfg)
    assert fr == pytest.approx([0.5 / 8, 0.5 / 4, 0.5 / 2, 0.5])  # shares of what the configuration trains on
    widths = [(8, 100, 1.0), (16, 400, 4.0), (32, 1600, 16.0)]
    points = grid(cfg, widths)
    assert len(points) == 3 * 4 * 2 + 2 and {p.seed for p in points} == {3, 4}
    assert {(p.epochs, p.patience, p.val_every) for p in points if p.fraction == fr[0]} == {(240, 80, 8)}  # 3 x 10 epochs x 8
    assert {(p.epochs, p.patience, p.val_every) for p in points if p.fraction == fr[-1] and not p.longer} == {(30, 10, 1)}
    assert {p.val_every for p in points if p.fraction == fr[1]} == {4}  # k = 4: validated every 4 epochs
    assert {p.val_every for p in grid(cfg.replace(**{"train.val_every": 2}), widths) if p.fraction == fr[0]} == {16}
    assert len({p.key for p in points}) == len(points)
    extra = [p for p in grid(cfg, widths, extrapolate=True) if p.extrapolated]
    assert sorted((p.n_samples, p.seed) for p in extra) == [(10000, 3), (10000, 4), (20000, 3), (20000, 4)]
    assert all(p.width == 32 and p.fraction == fr[-1] and p.epochs == 30 for p in extra)
    # the current point at twice the epochs (same patience), when its learning curve cannot be read forward
    longer = [p for p in points if p.longer]
    assert [(p.width, p.fraction, p.epochs, p.patience, p.seed) for p in longer] == [(32, fr[-1], 60, 10, 3), (32, fr[-1], 60, 10, 4)]
    for schedule, warmup, check, n in (("cosine", 0.0, "auto", 2), ("constant", 0.0, "auto", 0), ("step", 0.1, "auto", 2),
                                        ("constant", 0.0, "on", 2), ("onecycle", 0.0, "off", 0)):
        c = cfg.replace(**{"train.schedule": schedule, "train.warmup": warmup, "scale.epochs_check": check})
        assert sum(p.longer for p in grid(c, widths)) == n, (schedule, warmup, check)


def _corner_runs(tmp_path, curve, stopped=False, every=1):
    """Run directories holding only what the epochs advice reads: history.csv (validated every `every`
    epochs and the last, as train.val_every writes it) and metrics.json."""
    runs = []
    for seed in (0, 1):
        d = tmp_path / f"run{seed}"
        d.mkdir(parents=True)
        seen = lambda t, v: v if t % every == 0 or t == len(curve) else ""  # noqa: E731
        (d / "history.csv").write_text("epoch,val_loss\n" + "".join(f"{t},{seen(t, v)}\n" for t, v in enumerate(curve, 1)))
        write_json(d / "metrics.json", {"train": {"stopped_early": stopped}})
        runs.append({"run_dir": str(d)})
    return runs


def test_the_epochs_advice_reads_only_curves_a_longer_run_would_continue(tmp_path):
    """2x epochs comes from the runs' learning curves only when the schedule does not depend on the run's
    length; under cosine (the default), exponential, one-cycle or a warmup, a longer run is another run."""
    from cotune.scale.advice import _epochs_gain
    t = np.arange(1, 21)
    runs = _corner_runs(tmp_path, 0.1 + t ** -0.5)
    train = from_dict({}).train
    const = _epochs_gain(runs, train.model_copy(update={"schedule": "constant"}))
    assert const["ratio"] == pytest.approx((0.1 + 40 ** -0.5) / (0.1 + 20 ** -0.5), rel=1e-3)
    assert "from the learning curve over 20 epochs" in const["note"]
    assert _epochs_gain(runs, train.model_copy(update={"schedule": "step"}))["ratio"] == pytest.approx(const["ratio"])
    sparse = _epochs_gain(_corner_runs(tmp_path / "every3", 0.1 + t ** -0.5, every=3),  # validated at 3, 6, ..., 18, 20
                          train.model_copy(update={"schedule": "constant"}))
    assert sparse["ratio"] == pytest.approx(const["ratio"], rel=1e-3) and "over 20 epochs" in sparse["note"]
    for schedule in ("cosine", "exponential", "onecycle"):
        got = _epochs_gain(runs, train.model_copy(update={"schedule": schedule}))
        assert got["ratio"] is None and f"({schedule})" in got["note"] and "scale.epochs_check=on" in got["note"]
    warm = _epochs_gain(runs, train.model_copy(update={"schedule": "constant", "warmup": 0.1}))
    assert warm["ratio"] is None and "warmup 0.1" in warm["note"]
    flat = _corner_runs(tmp_path / "flat", np.r_[0.1 + t[:10] ** -0.5, np.full(10, 0.5)], stopped=True)
    assert _epochs_gain(flat, train)["ratio"] == 1.0  # stopped improving: no gain, whatever the schedule
    turned = _corner_runs(tmp_path / "turned", np.r_[0.1 + t[:10] ** -0.5, np.full(10, 0.5)], every=4)
    got = _epochs_gain(turned, train.model_copy(update={"schedule": "constant"}))  # best at epoch 8 of 20: turned
    assert got["ratio"] == 1.0 and "the last of 20 epochs" in got["note"]
    # runs trained at twice the epochs replace any reading of the curves, and may show a loss
    corner = [{**r, "seed": s, "val_loss": v, "epochs": 20} for r, s, v in zip(flat, (0, 1), (0.2, 0.3))]
    longer = [{"seed": 1, "val_loss": 0.33, "epochs": 31}, {"seed": 7, "val_loss": 0.01, "epochs": 40}]
    got = _epochs_gain(corner, train, longer[:1])
    assert got["measured"] and got["ratio"] == pytest.approx(1.1) and "0.3 -> 0.33" in got["note"] and "20 epochs" in got["note"]
    assert _epochs_gain(corner, train, longer[1:])["ratio"] == 1.0  # no seed in common: not a measurement


def test_extrapolated_runs_are_scored_on_the_studys_validation_rows(tmp_path):
    """--extrapolate on generated rows: the larger generations have validation rows of their own, so their
    loss in scale.csv (and the check against the fit) comes from the grid's rows, not from theirs."""
    from cotune.bundle import load
    from cotune.data.split import split_indices
    from cotune.pipeline import load_data
    run = tmp_path / "run"
    code, _, err = cli("train", "--set", "data.source=mnist1d", "--set", "data.n_samples=600", "--set", "train.epochs=2",
                       "--set", "model.family=mlp", "--set", "model.width=16", "--set", "runtime.threads=1",
                       "--set", "runtime.progress=false", "--out", run)
    assert code == 0, err
    code, stdout, err = cli_proc("scale", run, "--extrapolate", *GRID, "--set", "scale.epochs_check=off")
    assert code == 0, stdout + err
    rows = read_csv(run / "scale" / "scale.csv")
    extra = [r for r in rows if r["extrapolated"] == "True"]
    assert len(rows) == 11 and sorted(int(r["n_samples"]) for r in extra) == [1200, 2400]
    cfg = from_dict(json.loads((run / "scale" / "config.json").read_text()))
    ds = load_data(cfg)
    _, val, _ = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    s = json.loads((run / "scale" / "scale.json").read_text())
    for r in extra:
        p = load(r["run_dir"]).predict_proba(ds.X[val])
        rows_loss = -np.log(np.clip(p[np.arange(len(val)), ds.y[val]], 1e-15, 1.0))
        own = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["val"]
        assert own["n"] == 2 * len(val) or own["n"] == 4 * len(val)  # its own rows: another, larger draw
        assert float(r["val_loss"]) == pytest.approx(rows_loss.mean(), rel=1e-5) != pytest.approx(own["log_loss"])
        assert float(r["val_loss_se"]) == pytest.approx(rows_loss.std(ddof=1) / np.sqrt(len(val)), rel=1e-5)
        assert float(r["val_metric"]) == pytest.approx(np.mean(p.argmax(1) == ds.y[val]))
        e = next(e for e in s["extrapolation"] if e["n_samples"] == int(r["n_samples"]))
        assert e["actual"] == pytest.approx(float(r["val_loss"]))


def test_workers_get_the_configurations_threads_wherever_it_was_set(tmp_path, monkeypatch):
    """runtime.threads set in the run's YAML (so only in its saved config) reaches the workers, as --set does."""
    from cotune.scale import study as scale_study
    run = tmp_path / "run"
    write_json(run / "config.json", from_dict({"data": {"source": "sklearn:iris"}, "runtime": {"threads": 2}}).to_dict())
    write_json(run / "metrics.json", {})
    seen = []

    class Seen(Exception):
        pass

    def record(study, url, n, out, threads, **kw):
        seen.append(threads)
        raise Seen()

    monkeypatch.setattr(scale_study, "run_workers", record)
    for overrides, want in (((), 2), (("runtime.threads=1",), 1)):
        with pytest.raises(Seen):
            scale_study.scale(run, ["scale.sizes=3", "scale.fractions=3", "scale.seeds=1", *overrides],
                              out=tmp_path / f"s{want}", live=False)
    assert seen == [2, 1]
