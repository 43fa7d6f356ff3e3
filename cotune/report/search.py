"""The search's section of the page: best knobs, importances, history, top trials, pruned and failed trials."""
from __future__ import annotations

import math
from collections import Counter

from cotune.evaluate import primary_metric
from cotune.knobs import BY_NAME
from cotune.report import charts
from cotune.report.files import fmt, get, knob_value, number
from cotune.report.load import Loaded
from cotune.report.page import Cell, Page

TRIAL_COLUMNS = ("number", "state", "value", "second_objective", "seconds", "epochs_run", "pruned_at", "fail_reason",
                 "pruned_fraction", "population")
TOP_TRIALS = 30      # trials drawn in the parallel coordinates
PARALLEL_KNOBS = 12  # axes in the parallel coordinates (most important first)
MAX_PRUNED_ROWS = 40
MAX_FAILED_ROWS = 60
MAX_REASON = 300


def objective(L: Loaded) -> tuple[str, bool]:
    """(validation metric name, maximize) from the files: the metric fit.json records; for a search written
    before it did, the primary metric of the task its test metrics (or its config) show."""
    recorded = get(L.fit, "metric")
    if isinstance(recorded, dict) and isinstance(recorded.get("name"), str):
        return f"val {recorded['name']}", bool(recorded.get("maximize"))
    test = get(L.run, "metrics", "test") if L.run is not None else None
    test = test or get(L.fit, "test") or {}
    regression = "rmse" in test or get(L.config, "data", "task") == "regression"
    m = primary_metric("regression" if regression else "multiclass")
    return f"val {m.name}", m.maximize


def search_range(knob: str, config: dict | None, fit: dict | None = None):
    """The range the search drew `knob` from: the space fit.json records (what the study drew from: model
    families included), else search.space in the config, else the knob table's range."""
    for space in (get(fit, "space"), get(config, "search", "space")):
        if isinstance(space, dict) and isinstance(space.get(knob), (list, tuple)):
            return tuple(space[knob])
    k = BY_NAME.get(knob)
    return None if k is None else k.search


def edge(knob: str, value, rng) -> str | None:
    """'top' / 'bottom' when a numeric best value sits in the outer 5% of its searched range (log scale for
    log knobs) and the knob's valid range leaves room to widen it there; else None."""
    k = BY_NAME.get(knob)
    if k is None or rng is None or len(rng) != 2 or k.type not in (int, float) or isinstance(value, bool):
        return None
    lo, hi, v = number(rng[0]), number(rng[1]), number(value)
    if lo is None or hi is None or v is None or hi <= lo:
        return None
    if k.log and lo > 0 and v > 0:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    pos = (v - lo) / (hi - lo)
    if pos >= 0.95 and (k.high is None or number(rng[1]) < k.high):
        return "top"
    if pos <= 0.05 and (k.low is None or number(rng[0]) > k.low):
        return "bottom"
    return None


def knob_columns(trials: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for t in trials[:1]:
        seen.update((k, None) for k in t if k not in TRIAL_COLUMNS)
    return list(seen)


def counts(L: Loaded) -> dict[str, int]:
    c = get(L.fit, "counts")
    if isinstance(c, dict) and c:
        return {k: int(v) for k, v in c.items() if isinstance(v, int)}
    return dict(Counter(t.get("state") for t in L.trials or []))


def _tried(trials: list[dict] | None, knob: str) -> list:
    """The distinct values of a knob in trials.csv, in the order first seen."""
    return list(dict.fromkeys(t.get(knob) for t in trials or [] if t.get(knob) is not None))


def _range_text(rng, tried: list) -> str:
    if rng is not None and len(rng) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng):
        return f"{knob_value(rng[0])} \u2013 {knob_value(rng[1])}"
    if tried:  # choices: those the trials actually drew (the space drops families that do not fit the data)
        shown = [knob_value(v) for v in (rng or tried) if v in tried] or [knob_value(v) for v in tried]
        return ", ".join(shown) + " (tried)"
    return "-" if rng is None else ", ".join(knob_value(v) for v in rng)


def search(page: Page, L: Loaded) -> None:
    sec = page.section("search", "What the search found")
    metric, maximize = objective(L)
    n = counts(L)
    total = sum(n.values())
    if total:
        pruner = get(L.config, "search", "pruner", default="the")
        sec.p(f"{total} trials: {n.get('COMPLETE', 0)} complete, {n.get('PRUNED', 0)} pruned (stopped early by {pruner} "
              f"pruning), {n.get('FAIL', 0)} failed" + (f", {n['RUNNING']} still running" if n.get("RUNNING") else "") + ".")
    elapsed, budget = number(get(L.fit, "elapsed")), number(get(L.fit, "budget_s"))
    if elapsed is not None:
        sec.p(f"Search time {fmt(elapsed, 1)} s" + (f" of a {fmt(budget, 0)} s budget." if budget else " (no time budget)."))
    best = get(L.fit, "best")
    if isinstance(best, dict):
        vals = best.get("values") or []
        second = "" if len(vals) < 2 else f", second objective {fmt(number(vals[1]))}"
        sec.p(f"Best trial #{best.get('number')}: {metric} {fmt(number(get(vals, 0)))}{second}.")
        if (line := reeval_line(get(L.fit, "reeval"))) is not None:
            sec.p(line)
        params = best.get("params") or {}
        imp = {r.get("knob"): r.get("importance") for r in get(L.importances, "importances", default=[]) or []
               if isinstance(r, dict)}
        rows = []
        for k, v in params.items():
            rng = search_range(k, L.config, L.fit)
            e = edge(k, v, rng)
            rows.append([k, Cell(k.split(".")[0], f"stage stage-{k.split('.')[0]}"), Cell(knob_value(v), "num"),
                         _range_text(rng, _tried(L.trials, k)), Cell(fmt(number(imp.get(k))), "num"),
                         Cell(f"at the {e} of the range" if e else "", "warn" if e else "")])
        sec.table(["knob", "stage", "best value", "searched range / choices tried", "importance", ""], rows,
                  caption=f"Knobs of the best trial (#{best.get('number')})", cls="knobs")
    _importances(sec, L)
    trials = L.trials
    if trials is None:
        return
    sec.plot("The optimization history (trials.csv)", charts.history, trials, maximize, metric)
    if any(t.get("second_objective") is not None for t in trials):
        second = get(L.config, "search", "objective", default="quality,second").split(",")[-1]
        sec.plot("The trade-off chart (trials.csv)", charts.pareto, trials, metric, second)
    _parallel(sec, L, trials, metric, maximize)
    _pruned_failed(sec, trials, metric)


def reeval_line(r) -> str | None:
    """One sentence on fit.json's 'reeval': which trial the cross-validation of the top trials chose, and its mean."""
    if not isinstance(r, dict) or str(r.get("skipped", "")).startswith("off"):
        return None
    rows = [c for c in r.get("candidates") or [] if isinstance(c, dict)]
    chosen = next((c for c in rows if c.get("trial") == r.get("chosen")), None)
    if r.get("skipped") or chosen is None:
        return f"The cross-validation of the top trials did not decide: {r.get('skipped') or 'no record'}."
    sd, other = number(chosen.get("cv_sd")), r.get("best_val_trial")
    names = ", ".join(f"#{c.get('trial')}" for c in rows)
    return (f"A {r.get('folds')}-fold cross-validation over train + validation of the top {len(rows)} trials ({names}) "
            f"chose #{chosen.get('trial')}: mean {r.get('metric')} {fmt(number(chosen.get('cv_mean')))}"
            + (f" \u00b1 {fmt(sd)}" if sd is not None else "")
            + ("" if other == chosen.get("trial") else f"; the best on validation alone was #{other}") + ".")


def _importances(sec, L: Loaded) -> None:
    if L.importances is None:
        return
    rows = [r for r in get(L.importances, "importances", default=[]) or []
            if isinstance(r, dict) and isinstance(r.get("knob"), str) and number(r.get("importance")) is not None]
    if rows:
        rows = [{"knob": r["knob"], "stage": r.get("stage") or r["knob"].split(".")[0],
                 "importance": number(r["importance"])} for r in rows]
        sec.plot("The importances chart (importances.json)", charts.importances, rows)
        by_stage = Counter()
        for r in rows:
            by_stage[r["stage"]] += r["importance"]
        sec.p("Importance by stage: " + ", ".join(f"{s} knobs {fmt(v, 2)}" for s, v in by_stage.most_common()) +
              " (fANOVA over the complete trials; with few trials these are rough).")
    else:
        note = get(L.importances, "note")
        sec.note("No parameter importances" + (f": {note}" if note else "."))


def _parallel(sec, L: Loaded, trials: list[dict], metric: str, maximize: bool) -> None:
    done = [t for t in trials if t.get("state") == "COMPLETE" and number(t.get("value")) is not None]
    if len(done) < 2:
        sec.note(f"Parallel coordinates need at least 2 complete trials; {len(done)} completed.")
        return
    top = sorted(done, key=lambda t: t["value"], reverse=maximize)[:TOP_TRIALS]
    cols = knob_columns(trials)
    ranked = [r.get("knob") for r in get(L.importances, "importances", default=[]) or [] if isinstance(r, dict)]
    knobs = [k for k in ranked if k in cols] + [k for k in cols if k not in ranked]
    logs = {k for k in knobs if getattr(BY_NAME.get(k), "log", False)}
    sec.plot("The parallel coordinates (trials.csv)", charts.parallel, top, knobs[:PARALLEL_KNOBS], logs, maximize, metric)


def _reason(text) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 1] + "\u2026"


def _pruned_failed(sec, trials: list[dict], metric: str) -> None:
    failed = sorted((t for t in trials if t.get("state") == "FAIL"), key=lambda t: t.get("number", 0))
    pruned = sorted((t for t in trials if t.get("state") == "PRUNED"), key=lambda t: t.get("number", 0))
    reasons = {_reason(t.get("fail_reason")) for t in failed}
    if len(reasons) < len(failed):  # some failures share a reason: group them first
        by_reason: dict[str, list[int]] = {}
        for t in failed:
            by_reason.setdefault(_reason(t.get("fail_reason")) or "(no reason recorded)", []).append(t.get("number"))
        rows = [[r, Cell(str(len(ns)), "num"), ", ".join(f"#{n}" for n in ns[:20]) + (" \u2026" if len(ns) > 20 else "")]
                for r, ns in sorted(by_reason.items(), key=lambda rn: -len(rn[1]))]
        sec.table(["failure reason", "trials", "which"], rows,
                  caption="Why trials failed (each failed trial's traceback is in trials/NNNNN/error.txt)", cls="failed")
    rows = []
    for t in failed[:MAX_FAILED_ROWS] + pruned[-MAX_PRUNED_ROWS:]:
        state = "failed" if t.get("state") == "FAIL" else "pruned"
        why = _reason(t.get("fail_reason")) if state == "failed" else (
            f"pruned at epoch {t.get('pruned_at')}: {metric} {fmt(number(t.get('value')))} was below what the pruner "
            "kept at that epoch" if t.get("pruned_at") is not None else "pruned")
        rows.append([f"#{t.get('number')}", Cell(state, f"state-{state}"), Cell(fmt(t.get("pruned_at")), "num"),
                     Cell(fmt(number(t.get("value"))), "num"), Cell(fmt(number(t.get("seconds")), 1), "num"), why])
    if rows:
        sec.table(["trial", "state", "epoch reached", metric, "seconds", "reason"], rows,
                  caption="Pruned and failed trials", cls="trials")
    left = len(failed) - MAX_FAILED_ROWS, len(pruned) - MAX_PRUNED_ROWS
    if left[0] > 0 or left[1] > 0:
        sec.p(f"Not listed: {max(left[0], 0)} more failed and {max(left[1], 0)} more pruned trials (earliest first); "
              "every trial is in trials.csv.")
    if not failed and not pruned:
        sec.p("No trial was pruned or failed.")
