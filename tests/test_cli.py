"""End to end through the real `cotune` command: train -> run directory -> predict, and bad input.

Bad input must give exit code 2, exactly one stderr line 'error: ...', no traceback, and no run
directory left behind. Most of those cases run `python -m cotune.cli` in a subprocess (that proves
the exit code and the clean stderr of the real process); the rest, and the happy paths, use typer's
CliRunner in-process to keep the suite fast (every subprocess pays the torch import).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import cotune
from cotune.cli import app

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
COMMANDS = ("train", "predict", "label-next", "demo", "models", "knobs")
FAMILIES = ("mlp", "cnn1d", "cnn2d", "gru", "lstm", "transformer")
TINY = ("--set", "train.epochs=2", "--set", "model.width=8", "-q")


def cli(*args, env=None):
    """In-process run of the CLI; returns (exit code, stdout, stderr)."""
    r = CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **(env or {})})
    return r.exit_code, r.stdout, r.stderr


def cli_proc(*args, cwd):
    """The real process: `python -m cotune.cli ...`; returns (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "cotune.cli", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=300, env={**os.environ, **ENV})
    return p.returncode, p.stdout, p.stderr


def ok(res):
    code, out, err = res
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def assert_user_error(res, *leftovers, match: str | None = None) -> str:
    """Exit code 2, one non-empty stderr line starting with 'error:', no traceback, nothing left behind."""
    code, out, err = res
    assert "Traceback" not in out + err, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for p in leftovers:
        assert not p.exists(), f"{p} was left behind"
    if match is not None:
        assert re.search(match, lines[0]), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- data

def write_table(path, n=150, seed=0) -> pd.DataFrame:
    """Numeric + categorical columns with a few NaN; a 3-class string target that depends on both."""
    g = np.random.default_rng(seed)
    x1, x2 = g.normal(size=n), g.normal(size=n)
    color = g.choice(["red", "green", "blue"], n).astype(object)
    label = np.where(x1 + (color == "red") > 0.5, "high", np.where(x2 > 0, "mid", "low"))
    df = pd.DataFrame({"x1": x1.round(3), "x2": x2.round(3), "color": color, "size": g.integers(1, 5, n), "label": label})
    df.loc[[3, 17, 40], "x1"] = np.nan
    df.loc[[8, 60], "color"] = np.nan
    df.to_csv(path, index=False)
    return df


def write_images(root, per_class=10, size=12, bad=False):
    """One folder per class of small PNGs whose dominant colour is the class."""
    g = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (g.random((size, size, 3)) * 80).astype(np.uint8)
            img[..., c] += 170
            Image.fromarray(img).save(root / name / f"{i}.png")
    if bad:
        (root / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_table(d / "table.csv")
    pd.read_csv(d / "table.csv").drop(columns="label").head(25).to_csv(d / "new.csv", index=False)
    (d / "run.yaml").write_text(f"data:\n  source: {d / 'table.csv'}\n  target: label\n"
                                "model: {family: mlp, width: 16, depth: 1}\ntrain: {epochs: 5, batch_size: 32}\n")
    return d


@pytest.fixture(scope="module")
def csv_run(work):
    """A finished run trained through the CLI on the CSV (the YAML says 5 epochs, --set says 2)."""
    out = work / "runs" / "csv"
    ok(cli("train", work / "run.yaml", "--set", "train.epochs=2", "--set", "train.patience=0", "--out", out, "-q"))
    return out


# ---------------------------------------------------------------------------------------------- happy paths

def test_train_csv_writes_the_run_directory(csv_run):
    for f in ("config.json", "env.json", "model.safetensors", "model.json", "preprocess.json", "metrics.json",
              "history.csv", "metrics.jsonl"):
        assert (csv_run / f).is_file(), f
    assert not (csv_run / "checkpoint.json").exists()
    cfg = json.loads((csv_run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["width"] == 16  # --set beats the YAML, the YAML beats defaults
    history = pd.read_csv(csv_run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert len((csv_run / "metrics.jsonl").read_text().splitlines()) == 2
    metrics = json.loads((csv_run / "metrics.json").read_text())
    assert metrics["train"]["epochs_run"] == 2
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and "log_loss" in metrics["val"]
    env = json.loads((csv_run / "env.json").read_text())
    assert env["dataset"]["categorical"] == 1 and env["dataset"]["n_classes"] == 3


def test_predict_csv_without_target(work, csv_run):
    preds = work / "preds.csv"
    out = ok(cli("predict", csv_run, work / "new.csv", "--out", preds))
    assert "25 predictions" in out
    df = pd.read_csv(preds)
    assert len(df) == 25
    assert list(df.columns) == ["prediction", "proba_high", "proba_low", "proba_mid"]
    assert set(df["prediction"]) <= {"high", "low", "mid"}
    proba = df[["proba_high", "proba_low", "proba_mid"]].to_numpy()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert (df["prediction"].to_numpy() == np.array(["high", "low", "mid"])[proba.argmax(1)]).all()


def test_predict_csv_with_target_column_and_to_stdout(work, csv_run):
    out = ok(cli("predict", csv_run, work / "table.csv"))  # the target column is present: ignored
    assert "prediction" in out and "proba_mid" in out and "150 rows" in out


def test_regression_trains_and_predicts_values(tmp_path):
    run = tmp_path / "diabetes"
    out = ok(cli("train", "--set", "data.source=sklearn:diabetes", *TINY, "--out", run))
    assert "rmse" in out and "r2" in out
    assert "rmse" in json.loads((run / "metrics.json").read_text())["test"]
    ok(cli("predict", run, "sklearn:diabetes", "--out", tmp_path / "p.csv"))
    df = pd.read_csv(tmp_path / "p.csv")
    assert list(df.columns) == ["prediction"] and len(df) == 442
    assert np.isfinite(df["prediction"]).all() and df["prediction"].std() > 0


def test_image_folder_trains_with_cnn2d_and_predicts(tmp_path):
    images = write_images(tmp_path / "images")
    run = tmp_path / "img-run"
    ok(cli("train", "--set", f"data.source={images}", "--set", "model.family=cnn2d", "--set", "data.image_size=12",
           "--set", "train.batch_size=8", *TINY, "--out", run))
    assert json.loads((run / "model.json").read_text())["modality"] == "image"
    ok(cli("predict", run, images, "--out", tmp_path / "p.csv"))
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 30 and list(df.columns) == ["prediction", "proba_blue", "proba_green", "proba_red"]
    np.testing.assert_allclose(df.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)


def test_mnist1d_tiny_run_and_predict(tmp_path):
    env = {"COTUNE_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / "m1d"
    ok(cli("train", "--set", "data.source=mnist1d", "--set", "data.n_samples=300", "--set", "train.epochs=1",
           "--set", "model.family=cnn1d", "--set", "model.width=8", "-q", "--out", run, env=env))
    assert list((tmp_path / "cache" / "mnist1d").glob("*.npz"))
    ok(cli("predict", run, "mnist1d", "--out", tmp_path / "p.csv", env=env))
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 300 and df.shape[1] == 11  # the run's own 300 samples, 10 classes


def test_a_semicolon_csv_trains_and_predicts_like_the_comma_one(work, csv_run, tmp_path):
    """A spreadsheet's ';' export with decimal commas and a byte-order mark: the same columns and values at
    training and at prediction (one reader for both), and one line saying how the file was read."""
    plain = pd.read_csv(work / "table.csv")
    semi = tmp_path / "semi.csv"
    plain.to_csv(semi, index=False, sep=";", decimal=",", encoding="utf-8-sig")
    run = tmp_path / "semi-run"
    out = ok(cli("train", "--set", f"data.source={semi}", "--set", "data.target=label", *TINY, "--out", run))
    assert re.search(r"^read semi\.csv as semicolon-separated with decimal commas and a UTF-8 byte-order mark", out, re.M)
    env = json.loads((run / "env.json").read_text())["dataset"]
    assert env["dialect"] == {"separator": ";", "decimal": ",", "bom": True}
    assert (env["numeric"], env["categorical"], env["features"]) == (3, 1, 4)  # x1, x2, size; color
    plain_env = json.loads((csv_run / "env.json").read_text())["dataset"]
    assert plain_env["dialect"] == {"separator": ",", "decimal": ".", "bom": False}
    new_semi = tmp_path / "new-semi.csv"
    pd.read_csv(work / "new.csv").to_csv(new_semi, index=False, sep=";", decimal=",", encoding="utf-8-sig")
    ok(cli("predict", csv_run, new_semi, "--out", tmp_path / "a.csv"))
    ok(cli("predict", csv_run, work / "new.csv", "--out", tmp_path / "b.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))


def test_models_lists_every_family():
    out = ok(cli("models"))
    for fam in FAMILIES:
        assert re.search(rf"^│ {fam}\s+│ {fam}\s+│", out, re.M), fam
    assert "Multilayer perceptron" in out  # the description column is filled
    out = ok(cli("models", "cnn*"))
    assert "cnn1d" in out and "mlp" not in out


def test_knobs_lists_keys_of_one_stage():
    out = ok(cli("knobs", "train"))
    assert re.search(r"│ train\.lr\s+│ 0\.003\s+│ a number > 0", out)
    assert "model.width" not in out and "data.source" not in out
    assert "model.width" in ok(cli("knobs"))


@pytest.mark.parametrize("cmd", ("",) + COMMANDS)
def test_help_works_for_every_command(cmd):
    out = ok(cli(*([cmd] if cmd else []), "--help"))
    assert "Usage" in out
    if not cmd:
        for c in COMMANDS:
            assert c in out


def test_demo_searches_and_writes_the_report(tmp_path):
    run = tmp_path / "demo"
    out = ok(cli("demo", "--out", run, "--budget", "60s", "-q"))  # worker start-up counts against it
    lines = out.splitlines()
    header = next(ln for ln in lines if "split" in ln and "accuracy" in ln)
    cols = [c.strip() for c in re.split(r"[┃│]", header)[1:-1]]
    row = next(ln for ln in lines if re.match(r"\s*│\s*test\s*│", ln))
    vals = [c.strip() for c in row.split("│")[1:-1]]
    acc = float(vals[cols.index("accuracy")])
    assert acc > 0.85, out
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["test"]["accuracy"] == pytest.approx(acc, abs=1e-4)
    assert (run / "trials.csv").is_file() and (run / "report.html").is_file()
    html = (run / "report.html").read_text()
    assert f"{final['test']['accuracy']:.4f}"[:5] in html  # the page shows the file's number
    assert "report:" in out and "cotune predict" in out


# ---------------------------------------------------------------------------------------------- resume

class Kill(Exception):
    pass


def test_resume_from_cli_finishes_an_interrupted_run(tmp_path):
    cfg = {"data": {"source": "sklearn:wine"}, "model": {"width": 16, "depth": 1},
           "train": {"epochs": 4, "batch_size": 32, "patience": 0}, "runtime": {"progress": False}}

    def die_after_2(epoch, row):
        if epoch == 2:
            raise Kill()

    run = tmp_path / "cut"
    with pytest.raises(Kill):
        cotune.train(cfg, out=run, on_eval=die_after_2)
    assert (run / "checkpoint.json").is_file() and not (run / "metrics.json").exists()
    # a plain train into it refuses and points at --resume; --resume with a config is refused too
    assert_user_error(cli("train", "--set", "data.source=sklearn:wine", "--out", run, "-q"), match="--resume")
    assert_user_error(cli("train", "--set", "train.epochs=9", "--out", run, "--resume", "-q"), match="--resume")
    ok(cli("train", "--out", run, "--resume", "-q"))
    assert (run / "metrics.json").is_file() and not (run / "checkpoint.json").exists()
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3, 4]
    assert json.loads((run / "metrics.json").read_text())["train"]["epochs_run"] == 4


def test_damaged_or_hand_edited_run_files_are_one_line(tmp_path):
    """config.json / fit.json that no longer parse, or hold a value out of range, are one line and exit 2."""
    cfg = {"data": {"source": "sklearn:wine"}, "model": {"width": 8, "depth": 1}, "train": {"epochs": 3},
           "runtime": {"progress": False}}

    def die_after_1(epoch, row):
        raise Kill()

    run = tmp_path / "cut"
    with pytest.raises(Kill):
        cotune.train(cfg, out=run, on_eval=die_after_1)
    good = (run / "config.json").read_text()
    (run / "config.json").write_text(good[:40])  # cut short
    assert_user_error(cli("train", "--out", run, "--resume", "-q"), match="config.json.*damaged")
    edited = json.loads(good)
    edited["train"]["epochs"] = -1
    (run / "config.json").write_text(json.dumps(edited))
    assert_user_error(cli("train", "--out", run, "--resume", "-q"), match="train.epochs")
    search = tmp_path / "search"
    search.mkdir()
    (search / "fit.json").write_text('{"config": ')
    assert_user_error(cli("fit", "--out", search, "--resume", "-q"), match="fit.json.*damaged")
    assert_user_error(cli("scale", search), match="fit.json.*damaged")


def test_a_worker_on_a_study_cotune_did_not_start_is_one_line(tmp_path):
    import optuna
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(storage=url, study_name="theirs")
    assert_user_error(cli("worker", "--storage", url, "--study", "theirs"), match="not started by cotune")


def test_a_numeric_out_directory_is_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(cli("train", "--set", "data.source=sklearn:iris", *TINY, "--out", "2024"))
    assert (tmp_path / "2024" / "metrics.json").is_file()
    assert cotune.api.resolve_config({"out": 2024}).out == "2024"


def test_resume_on_a_finished_run_is_refused(csv_run):
    before = {p.name: p.stat().st_mtime_ns for p in csv_run.iterdir()}
    assert_user_error(cli("train", "--out", csv_run, "--resume", "-q"), match="resume")
    assert {p.name: p.stat().st_mtime_ns for p in csv_run.iterdir()} == before


def test_resume_on_a_missing_dir_is_refused(tmp_path):
    assert_user_error(cli_proc("train", "--out", tmp_path / "nothing", "--resume", "-q", cwd=tmp_path),
                      tmp_path / "nothing", match="resume")


# ---------------------------------------------------------------------------------------------- bad input

def _single_class(d):
    df = write_table(d / "t.csv")
    df.assign(label="same").to_csv(d / "t.csv", index=False)


def _header_only(d):
    write_table(d / "t.csv").head(0).to_csv(d / "t.csv", index=False)


def _junk_number(d):
    pd.DataFrame({"x": [str(i / 7) for i in range(99)] + ["abc"], "label": [i % 2 for i in range(100)]}).to_csv(d / "t.csv", index=False)


TABLE = ("--set", "data.source=t.csv", "--set", "data.target=label")
IRIS = ("--set", "data.source=sklearn:iris")

# id: (make the input in the working dir or None, train arguments, a regex the message must match, run in a subprocess)
BAD_TRAIN = {
    "missing-data-file": (None, ("--set", "data.source=no_such.csv", "--set", "data.target=label"), "not found", True),
    "unknown-target": (lambda d: write_table(d / "t.csv"), ("--set", "data.source=t.csv", "--set", "data.target=lable"), "'lable'.*'label'", True),
    "single-class": (_single_class, TABLE, "single class", True),
    "header-only": (_header_only, TABLE, "no rows", True),
    "junk-in-numeric-column": (_junk_number, TABLE, "'x'.*'abc'", True),
    "corrupt-image": (lambda d: write_images(d / "imgs", per_class=2, bad=True),
                      ("--set", "data.source=imgs", "--set", "model.family=cnn2d"), "broken.png", True),
    "unknown-family": (None, (*IRIS, "--set", "model.family=resnet9000"), "model.family.*resnet9000", True),
    "unknown-optimizer": (None, (*IRIS, "--set", "train.optimizer=adamax"), "train.optimizer.*adamax", False),
    "wrong-type-in-yaml": (lambda d: (d / "c.yaml").write_text("train: {epochs: many}\n"), ("c.yaml", *IRIS),
                           "train.epochs.*many", True),
    "negative-lr": (None, (*IRIS, "--set", "train.lr=-0.1"), "train.lr", False),
    "unknown-key": (None, (*IRIS, "--set", "train.lrr=0.1"), "train.lrr.*train.lr", False),
    "repeated-yaml-key": (lambda d: (d / "c.yaml").write_text("train:\n  lr: 0.01\n  epochs: 2\n  lr: 0.1\n"),
                          ("c.yaml", *IRIS), r"'train\.lr' twice, on lines 2 and 4", False),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_train_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, monkeypatch):
    make, args, match, in_subprocess = BAD_TRAIN[case]
    if make is not None:
        make(tmp_path)
    out = tmp_path / "run"
    cmd = ("train", *args, "--out", "run", "-q")
    if in_subprocess:
        res = cli_proc(*cmd, cwd=tmp_path)
    else:
        monkeypatch.chdir(tmp_path)
        res = cli(*cmd)
    assert_user_error(res, out, match=match)
    assert not (tmp_path / "runs").exists()


def test_out_holding_a_finished_run_is_refused_and_untouched(work, csv_run):
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in csv_run.iterdir()}
    res = cli_proc("train", "run.yaml", "--set", "train.epochs=1", "--out", csv_run, "-q", cwd=work)
    assert_user_error(res, match="finished run")
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in csv_run.iterdir()} == before


def test_predict_on_missing_run_dir(tmp_path, work):
    preds = tmp_path / "p.csv"
    assert_user_error(cli("predict", tmp_path / "nope", work / "new.csv", "--out", preds), preds, match="not found")


def test_predict_with_a_missing_feature_column(tmp_path, work, csv_run):
    pd.read_csv(work / "new.csv").drop(columns="x2").to_csv(tmp_path / "nox2.csv", index=False)
    preds = tmp_path / "p.csv"
    assert_user_error(cli_proc("predict", csv_run, "nox2.csv", "--out", preds, cwd=tmp_path), preds, match="'x2'")


def test_an_in_process_command_counts_its_budget_from_its_own_start():
    """`cotune fit --budget` counts the process's start-up only under the `cotune` command (main()); the app called
    in a long-lived process (this test run, a notebook) counts from the call, or an old process would have no budget."""
    import time

    from cotune import cli as cli_module
    assert cli_module.STARTED == []
    assert cli_module.process_start() < time.time() - 1  # this test process is older than a second
    assert abs(cli_module.command_start() - time.time()) < 1
