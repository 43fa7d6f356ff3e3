"""The report: report.html from a real run and a real search directory, opened in headless Chromium.

A tiny run (iris, 2 epochs) and a tiny search (wine, 4 trials, 2 epochs) are made once, in parallel,
by the real `cotune` command; every test below reads them. The Chromium tests need a `chromium`
binary (scripts/chromium.sh installs Debian's) and are skipped, with that reason, only when none is
found. The report must: build without importing torch, show the numbers the files hold, draw every
chart without a JavaScript error, survive a damaged trials.csv and a missing importances.json (naming
both), and stay under 5 MB for a 200-trial search.
"""
from __future__ import annotations

import csv
from html import unescape
import json
import os
import random
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cotune.errors import BundleError
from cotune.report import build_report

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
QUICK = ("--set", "train.epochs=2", "--set", "model.width=8", "-q")
MAX_BYTES = 5_000_000
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--window-size=1280,2000")
IGNORE_COPY = shutil.ignore_patterns("*.safetensors", "study.db", "mlflow.db", "mlartifacts", "report.html")


def cotune(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cotune.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_ok(p: subprocess.Popen, what: str) -> None:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"{what} exited {p.returncode}\nstdout:\n{out}\nstderr:\n{err}"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(run directory, search directory): the run trains in a background process while the search runs here
    (in-process, as its trials run in worker processes anyway; this saves one torch start-up)."""
    from typer.testing import CliRunner

    from cotune.cli import app
    root = tmp_path_factory.mktemp("report")
    run, search = root / "run", root / "search"
    train = cotune("train", "--set", "data.source=sklearn:iris", "--set", "data.clean.label_issues=drop", *QUICK,
                   "--out", run)
    try:
        r = CliRunner().invoke(app, [str(a) for a in ("fit", "sklearn:wine", "--budget", "45s", "--trials", 4, "--workers", 1, "--set",
                                                      "search.mlflow=none", "--set", "search.top_k=1", *QUICK,
                                                      # trials long enough to differ: importances need variance
                                                      "--set", "train.epochs=4", "--set", "model.width=16", "--set", "train.batch_size=16",
                                                      "--out", search)], env=ENV)
        assert r.exit_code == 0, f"cotune fit exited {r.exit_code}\n{r.stdout}\n{r.stderr}"
        wait_ok(train, "cotune train")
    finally:
        if train.poll() is None:
            train.kill()
    return run, search


@pytest.fixture(scope="module")
def run_dir(made):
    return made[0]


@pytest.fixture(scope="module")
def search_dir(made):
    return made[1]


@pytest.fixture(scope="module")
def damaged_dir(search_dir, tmp_path_factory):
    """A copy of the search with a trials.csv that is not ours (ragged rows) and no importances.json."""
    d = tmp_path_factory.mktemp("damaged") / "search"
    shutil.copytree(search_dir, d, ignore=IGNORE_COPY)
    (d / "trials.csv").write_text("number,state,value\n0,COMPLETE,0.5,oops\n\x00\x01garbage\n")
    (d / "importances.json").unlink()
    return d


def read_json(p: Path) -> dict:
    return json.loads(p.read_text())


def visible_text(html: str) -> str:
    """The page without its scripts and styles (plotly.js holds many strings of its own)."""
    return re.sub(r"<(script|style)\b[^>]*>.*?</\1>", "", html, flags=re.S | re.I)


# ---------------------------------------------------------------------------------------------
# building

def test_run_report_shows_the_files_numbers(run_dir):
    out = build_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file() and out.problems == [], out.problems
    html = out.read_text()
    text = visible_text(html)
    m = read_json(run_dir / "metrics.json")
    assert f"{m['test']['accuracy']:.4f}" in text and f"{m['val']['accuracy']:.4f}" in text
    assert f"{m['test']['log_loss']:.4f}" in text
    for sid in ("summary", "quality", "data", "training"):
        assert f'<section id="{sid}">' in html, sid
    assert 'id="search"' not in html  # a run directory has no search section
    audit = read_json(run_dir / "audit.json")
    for name, check in audit["checks"].items():
        assert check["message"] in text, name
    assert "Next actions" in text and text.count('class="chart"') >= 4


def test_search_report_shows_the_files_numbers(search_dir):
    out = build_report(search_dir)
    assert out.problems == [], out.problems
    html = out.read_text()
    text = visible_text(html)
    fit, final = read_json(search_dir / "fit.json"), read_json(search_dir / "final" / "metrics.json")
    assert f"Test accuracy {final['test']['accuracy']:.4f}" in text
    best = fit["best"]
    assert f"Best trial #{best['number']}: val accuracy {best['values'][0]:.4f}" in text
    assert f"The final model: {fit['final']['summary']}." in unescape(text)  # how it was made, as fit.json says
    with open(search_dir / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert f"{len(trials)} trials:" in text
    for sid in ("summary", "quality", "data", "search", "training"):
        assert f'<section id="{sid}">' in html, sid
    for knob in best["params"]:
        assert f"<td>{knob}</td>" in html, knob
    assert "Parameter importances" in html and "Optimization history" in html and "Parallel coordinates" in html


def compare_table(html: str) -> tuple[list[str], list[list[str]], str]:
    """(header, rows of cell texts, the section's text) of the page's "How the network compares" section."""
    sec = re.search(r'<section id="compare">(.*?)</section>', html, flags=re.S)
    assert sec is not None, "no compare section"
    cells = [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)]
             for row in re.findall(r"<tr[^>]*>(.*?)</tr>", sec.group(1), flags=re.S)]
    return cells[0], cells[1:], unescape(re.sub(r"<[^>]+>", " ", sec.group(1)))


def expected_compare(search_dir: Path) -> tuple[str, list[list]]:
    """The ranking metric, and per model (network, linear, LightGBM): (label, val metrics, test metrics) from the files."""
    fit = read_json(search_dir / "fit.json")
    final = read_json(search_dir / "final" / "metrics.json")
    trial = read_json(search_dir / "trials" / f"{fit['best']['number']:05d}" / "metrics.json")
    models = fit["baselines"]["models"]
    return fit["metric"]["name"], [("network", trial["val"], final["test"]),
                                   (f"linear ({models['linear']['name']})", models["linear"]["val"], models["linear"]["test"]),
                                   ("LightGBM", models["lightgbm"]["val"], models["lightgbm"]["test"])]


def check_compare(html: str, search_dir: Path) -> str:
    """The compare section shows fit.json's baseline numbers (and the network's) exactly, as the report formats them."""
    header, rows, text = compare_table(html)
    metric, expected = expected_compare(search_dir)
    assert header[0] == "model" and header[1:3] == [f"val {metric}", f"test {metric}"] and len(header) >= 7, header
    assert [r[0] for r in rows] == [label for label, _, _ in expected]
    for row, (label, val, test) in zip(rows, expected):
        for col, shown in zip(header[1:], row[1:]):
            part, name = col.split(" ", 1)
            value = (val if part == "val" else test).get(name)
            assert shown == ("-" if value is None else f"{value:.4f}"), (label, col, shown, value)
    return text


def test_the_baselines_come_first_with_fit_jsons_numbers(search_dir):
    html = build_report(search_dir).read_text()
    fit = read_json(search_dir / "fit.json")
    b = fit["baselines"]
    assert b["rows"]["test"] == fit["test"]["n"] and b["test_trained_on"] == "train+val"
    sections = re.findall(r'<section id="([^"]+)">', html)
    assert sections.index("compare") == sections.index("summary") + 1 < sections.index("quality"), sections
    assert "How the network compares" in html
    text = check_compare(html, search_dir)
    metric, expected = expected_compare(search_dir)
    net, best = expected[0][2][metric], max(expected[1:], key=lambda e: e[2][metric])
    if net > best[2][metric]:
        assert f"The network is best on the test rows: {metric} {net:.4f}" in text, text
    elif net == best[2][metric]:
        assert f"The network and {best[0]} tie on the test rows" in text, text
    else:
        points = f"{100 * (best[2][metric] - net):.1f}"
        assert f"{best[0][0].upper() + best[0][1:]} is ahead of the network by {points} points of {metric}" in text, text


@pytest.mark.parametrize("gap,said", [
    (0.05, "LightGBM is ahead of the network by 5.0 points of accuracy on the test rows"),
    (-0.125, "The network is best on the test rows: accuracy"),
    (0.0, "The network and LightGBM tie on the test rows"),
])
def test_the_sentence_under_the_table_says_who_wins_and_by_how_much(search_dir, tmp_path, gap, said):
    d = tmp_path / "search"
    shutil.copytree(search_dir, d, ignore=IGNORE_COPY)
    fit = read_json(d / "fit.json")
    net = fit["test"]["accuracy"]
    models = fit["baselines"]["models"]
    models["linear"]["test"]["accuracy"] = 0.0
    models["lightgbm"]["test"]["accuracy"] = net + gap
    models["lightgbm"]["test"]["f1_macro"] = None  # an undefined metric shows as '-'
    (d / "fit.json").write_text(json.dumps(fit))
    out = build_report(d)
    assert out.problems == [], out.problems
    html = out.read_text()
    text = check_compare(html, d)
    assert said in text, text
    if gap > 0:  # a baseline ahead of the network is also a next action at the top
        assert "consider it, or a longer budget." in visible_text(html).split('<section id="compare">')[0]


def test_a_fit_json_without_baselines_or_with_a_failed_one_still_builds(search_dir, tmp_path):
    d = tmp_path / "search"
    shutil.copytree(search_dir, d, ignore=IGNORE_COPY)
    fit = read_json(d / "fit.json")
    old = {k: v for k, v in fit.items() if k != "baselines"}  # a search written before baselines (or of images)
    (d / "fit.json").write_text(json.dumps(old))
    out = build_report(d)
    assert out.problems == [], out.problems
    html = out.read_text()
    assert 'id="compare"' not in html and "How the network compares" not in html
    assert '<section id="quality">' in html and '<section id="search">' in html
    (d / "fit.json").write_text(json.dumps({**old, "baselines": {}}))
    assert 'id="compare"' not in build_report(d).read_text()
    fit["baselines"]["models"]["lightgbm"] = {"error": "RuntimeError: no trees today"}
    (d / "fit.json").write_text(json.dumps(fit))
    out = build_report(d)
    assert out.problems == [], out.problems
    header, rows, text = compare_table(out.read_text())
    assert rows[2][0] == "LightGBM" and set(rows[2][1:]) == {"-"}
    assert "LightGBM could not be fitted: RuntimeError: no trees today" in text
    (d / "fit.json").write_text(json.dumps({**old, "baselines": {"error": "ValueError: the split broke"}}))
    out = build_report(d)
    assert out.problems == [] and "The baselines could not be fitted: ValueError: the split broke" in out.read_text()


def test_self_contained_and_plotly_inlined_once(search_dir):
    from plotly.offline import get_plotlyjs
    html = build_report(search_dir).read_text()
    assert html.count(get_plotlyjs()[:300]) == 1
    assert not re.search(r"<script[^>]+src=|<link\b|@import|url\(\s*['\"]?https?:", html, flags=re.I)
    assert "Plotly.newPlot" in html and '<pre id="js-errors" hidden>' in html


def test_building_does_not_import_torch(run_dir, search_dir):
    code = ("import sys\nfrom cotune.report import build_report\n"
            f"for d in ({str(run_dir)!r}, {str(search_dir)!r}):\n    build_report(d)\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not bad, bad[:5]\nprint('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_damaged_and_missing_files_are_named_and_the_rest_renders(damaged_dir):
    out = build_report(damaged_dir)
    assert out.is_file()
    assert any(p.startswith("trials.csv could not be read: ValueError: line 2 has 4 fields") for p in out.problems), out.problems
    assert any(p.startswith("importances.json is missing") for p in out.problems), out.problems
    text = visible_text(out.read_text())
    for p in out.problems:
        assert f'<li class="problem">{p}</li>' in text
    for sid in ("quality", "data", "search", "training"):
        assert f'<section id="{sid}">' in text, sid
    assert "Knobs of the best trial" in text  # fit.json still gives the best knobs
    assert "Optimization history" not in text and "Parameter importances" not in text


def test_corrupt_json_and_missing_directory(run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d, ignore=IGNORE_COPY)
    (d / "metrics.json").write_text('{"test": {"accuracy": 0.5')  # cut short
    (d / "history.csv").unlink()
    out = build_report(d)
    assert any(p.startswith("metrics.json could not be read: JSONDecodeError") for p in out.problems), out.problems
    assert any(p.startswith("history.csv is missing") for p in out.problems), out.problems
    assert '<section id="data">' in out.read_text()  # audit.json is still there
    with pytest.raises(BundleError, match="not found"):
        build_report(tmp_path / "nowhere")


def test_ensemble_layout(search_dir, tmp_path):
    """final/ as an ensemble: final/ensemble.json, final/metrics.json and final/members/<i>/ run directories."""
    d = tmp_path / "search"
    shutil.copytree(search_dir, d, ignore=IGNORE_COPY)
    fit = read_json(d / "fit.json")
    done = [r["number"] for r in csv.DictReader(open(d / "trials.csv")) if r["state"] == "COMPLETE"][:2]
    assert len(done) == 2, f"the 45 s search completed {len(done)} trial(s): an ensemble needs two"
    final = read_json(d / "final" / "metrics.json")
    shutil.rmtree(d / "final")
    for i, n in enumerate(done):
        shutil.copytree(d / "trials" / f"{int(n):05d}", d / "final" / "members" / str(i))
    info = {"members": [int(n) for n in done], "val": 0.9876, "best_single_val": 0.9, "metric": "accuracy", "kept": True}
    (d / "final" / "ensemble.json").write_text(json.dumps({"members": [f"members/{i}" for i in range(len(done))]}))
    (d / "final" / "metrics.json").write_text(json.dumps({"test": final["test"], "ensemble": info}))
    fit["ensemble"] = info
    (d / "fit.json").write_text(json.dumps(fit))
    out = build_report(d)
    assert out.problems == [], out.problems
    text = visible_text(out.read_text())
    assert "soft-voting ensemble of trials " + ", ".join(f"#{n}" for n in done) in text and "0.9876" in text
    assert f"Test accuracy {final['test']['accuracy']:.4f}" in text
    assert f"Training of ensemble member 1 (trial #{done[1]})" in text


REASONS = ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB " + "(details) " * 40,
           "ModelError: model.family='cnn2d' needs image data; this source is tabular", "ValueError: NaN loss at epoch 3")


def synthetic_trials(header: list[str], n: int, seed: int = 0) -> list[dict]:
    from cotune.knobs import BY_NAME
    from cotune.models import FAMILIES
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        state = rng.choices(["COMPLETE", "PRUNED", "FAIL"], [6, 3, 1])[0]
        row = {"number": i, "state": state, "value": "" if state == "FAIL" else rng.random(), "second_objective": "",
               "seconds": rng.uniform(1, 60), "epochs_run": 2 if state == "COMPLETE" else "",
               "pruned_at": 1 if state == "PRUNED" else "", "pruned_fraction": "",
               "fail_reason": rng.choice(REASONS) if state == "FAIL" else "", "population": ""}
        for k in header[len(row):]:
            spec = BY_NAME[k].search or FAMILIES  # model.family's choices come from the registry
            row[k] = rng.choice(spec) if BY_NAME[k].type in (str, bool) else (
                rng.randint(*spec) if BY_NAME[k].type is int else rng.uniform(*spec))
        rows.append(row)
    return rows


def test_a_200_trial_search_stays_under_5_mb(search_dir, tmp_path):
    d = tmp_path / "search"
    shutil.copytree(search_dir, d, ignore=IGNORE_COPY)
    header = next(csv.reader(open(d / "trials.csv")))
    rows = synthetic_trials(header, 200)
    with open(d / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    fit = read_json(d / "fit.json")
    fit["counts"] = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    (d / "fit.json").write_text(json.dumps(fit))
    out = build_report(d)
    assert out.problems == [], out.problems
    assert out.size == out.stat().st_size < MAX_BYTES, f"report.html is {out.size:,} bytes"
    text = visible_text(out.read_text())
    assert "200 trials:" in text and f"{fit['counts']['FAIL']} of 200 trials failed" in text
    assert "Why trials failed" in text and "more pruned trials" in text


def test_module_command(run_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "cotune.report", str(run_dir)], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0 and f"report: {run_dir / 'report.html'}" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-m", "cotune.report", str(tmp_path / "nowhere")], capture_output=True,
                       text=True, env=ENV)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# in a real browser

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary on PATH (bash scripts/chromium.sh installs Debian's chromium)")


class ChartScan(HTMLParser):
    """For each <div class="chart">: the classes of everything inside it."""

    def __init__(self):
        super().__init__()
        self.charts: dict[str, set[str]] = {}
        self.open: list[tuple[str, int]] = []  # (chart id, div depth at which it opened)
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        for cid, _ in self.open:
            self.charts[cid] |= classes
        if tag == "div":
            self.depth += 1
            if "chart" in classes:
                cid = a.get("id") or f"?{len(self.charts)}"
                self.charts[cid] = set()
                self.open.append((cid, self.depth))

    def handle_endtag(self, tag):
        if tag == "div":
            if self.open and self.open[-1][1] == self.depth:
                self.open.pop()
            self.depth -= 1


@pytest.fixture(scope="module")
def rendered(run_dir, search_dir, damaged_dir, tmp_path_factory):
    """Each report opened in headless Chromium (all at once): name -> (dumped DOM, stderr, screenshot path)."""
    binary = chromium()
    root = tmp_path_factory.mktemp("chromium")
    jobs = {}
    for name, d in (("run", run_dir), ("search", search_dir), ("damaged", damaged_dir)):
        page = build_report(d)
        shot = root / f"{name}.png"
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={root / ('profile-' + name)}", f"--screenshot={shot}",
               "--dump-dom", page.resolve().as_uri()]
        jobs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root), shot)
    out = {}
    for name, (p, shot) in jobs.items():
        dom, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"chromium on the {name} report exited {p.returncode}:\n{err[-3000:]}"
        out[name] = (dom, err, shot)
    return out


@pytest.mark.parametrize("name", ["run", "search", "damaged"])
def test_every_chart_renders_without_javascript_errors(rendered, name):
    dom, err, _ = rendered[name]
    scan = ChartScan()
    scan.feed(dom)
    assert len(scan.charts) >= (2 if name == "damaged" else 4), sorted(scan.charts)
    blank = [cid for cid, classes in scan.charts.items() if not {"plot-container", "main-svg"} <= classes]
    assert not blank, f"charts with no plot drawn: {blank}"
    errors = re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, flags=re.S)
    assert errors is not None and errors.group(1).strip() == "", errors and errors.group(1)
    uncaught = [ln for ln in err.splitlines() if "Uncaught" in ln]
    assert not uncaught, uncaught[:5]


def test_the_browser_shows_fit_jsons_baseline_numbers(rendered, search_dir):
    dom, _, _ = rendered["search"]
    check_compare(dom, search_dir)


def test_the_browser_shows_the_final_models_calibration(rendered, search_dir):
    """After `cotune fit --budget 45s`: the final classifier's temperature scaling, with the reliability chart."""
    dom, _, _ = rendered["search"]
    fit = json.loads((search_dir / "fit.json").read_text())
    assert fit["budget_s"] == 45 and fit["finished"]
    assert re.search(r"(The probabilities are calibrated by temperature scaling|Temperature scaling was tried)", dom)
    assert "perfect calibration" in dom  # the reliability diagram's diagonal, drawn by plotly in the browser


def test_screenshot_is_not_blank(rendered):
    from PIL import Image
    _, _, shot = rendered["search"]
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, f"{0 if colors is None else len(colors)} distinct colours"
    white = sum(n for n, c in colors if min(c) >= 245)
    assert 1 - white / (img.size[0] * img.size[1]) > 0.03, "the screenshot is almost all white"
