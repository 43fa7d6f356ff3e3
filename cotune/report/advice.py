"""The top of the page: a plain-language summary, honest caveats, and the three most useful next actions.

Every candidate action is drawn from a number in the files (failed trials, an audit finding, a best
knob at the edge of its range, the learning curves, calibration, the weakest class) and carries a
priority; the page shows the three with the highest. Numbers are quoted as the files hold them.
"""
from __future__ import annotations

from cotune.knobs import BY_NAME
from cotune.report.compare import has_baselines, verdict
from cotune.report.files import fmt, get, knob_value, number, pct
from cotune.report.load import Loaded
from cotune.report.page import Page
from cotune.report.search import counts, edge, objective, search_range
from cotune.report.sections import SEVERITY_ORDER, check_name, final_config

NEAR_PERFECT = 0.99
SMALL_TEST = 200
TINY_DATA = 1000
FEW_TRIALS = 10


def headline(msg: str) -> str:
    """The first clause of an audit message: up to the first ':' or '. ' outside parentheses."""
    depth = 0
    for i, ch in enumerate(msg):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and (ch == ":" or (ch == "." and msg[i + 1:i + 2] in (" ", ""))):
            return msg[:i]
    return msg.rstrip(".")


def _short(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0].rstrip(",;:( ") + " \u2026"


def _test(L: Loaded) -> dict:
    t = get(L.run, "metrics", "test") if L.run is not None else None
    return t if isinstance(t, dict) else (get(L.fit, "test") or {})


def _env(L: Loaded) -> dict:
    for run in ([L.run] if L.run is not None else []) + L.members + ([L.best_trial] if L.best_trial else []):
        if isinstance(run.env, dict):
            return run.env
    return {}


def summarize(page: Page, L: Loaded) -> None:
    actions: list[tuple[float, str]] = []
    env, test = _env(L), _test(L)
    ds = get(env, "dataset", default={}) or {}
    cfg = final_config(L)
    name = ds.get("name") or cfg.get("data.source") or "the data"
    shape = ", ".join(x for x in (ds.get("task"), ds.get("modality"),
                                  f"{ds['rows']:,} rows" if isinstance(ds.get("rows"), int) else None) if x)
    what = (f"A search over {sum(counts(L).values())} trials" if L.kind == "search" else
            f"One training run of a {cfg.get('model.family', 'model')} model" if L.kind == "run" else "This directory")
    page.summary.append(f"{what} on {name}" + (f" ({shape})." if shape else "."))
    m = get(L.run, "prefix", default="")
    page.guard(f"The summary of the test metrics ({m}metrics.json)", _quality, page, test, ds, cfg, actions)
    page.guard(f"The summary of the audit ({m}audit.json)", _data, page, L, cfg, actions)
    if L.kind == "search":
        page.guard("The summary of the search (fit.json, trials.csv)", _search, page, L, actions)
    page.guard("The summary of training (history.csv)", _training, L, cfg, actions)
    actions.sort(key=lambda pa: -pa[0])
    page.actions[:] = [a for _, a in actions[:3]] or ["No obvious next step stands out in these results."]


def _quality(page: Page, test: dict, ds: dict, cfg: dict, actions: list) -> None:
    n = test.get("n") if isinstance(test.get("n"), int) else None
    rows = f" on {n:,} held-out test rows" if n else ""
    acc, rmse, r2 = number(test.get("accuracy")), number(test.get("rmse")), number(test.get("r2"))
    if acc is not None:
        extra = ", ".join(f"{k} {fmt(number(test[k]))}" for k in ("f1_macro", "roc_auc") if number(test.get(k)) is not None)
        page.summary.append(f"Test accuracy {fmt(acc)}" + (f" ({extra})" if extra else "") + f"{rows}.")
    elif rmse is not None:
        page.summary.append(f"Test RMSE {fmt(rmse)}" + (f" (R\u00b2 {fmt(r2)})" if r2 is not None else "") + f"{rows}.")
    else:
        page.summary.append("No test metrics were found.")
        return
    top = acc if acc is not None else r2
    if top is not None and top >= NEAR_PERFECT:
        what = "accuracy" if acc is not None else "R\u00b2"
        one = f"; with {n} test rows one row is {fmt(1 / n)} of accuracy" if n and acc is not None else ""
        page.caveats.append(f"Test {what} is near-perfect ({fmt(top)}): this data leaves little room to tell "
                            f"models apart{one}. Differences between trials are mostly noise here.")
        actions.append((30, f"Little headroom left (test {what} {fmt(top)}): more tuning is unlikely to show; "
                            "use the model, or move to harder data."))
    if n is not None and n < SMALL_TEST:
        one = f"one row moves accuracy by {fmt(1 / n)}" if acc is not None else "a few rows move the metrics"
        page.caveats.append(f"The test part is small ({n} rows): {one}, so treat small differences as noise.")
    rows_all = ds.get("rows")
    if isinstance(rows_all, int) and rows_all < TINY_DATA:
        page.caveats.append(f"The dataset is tiny ({rows_all:,} rows): results depend on the split; "
                            "another data.split.seed can move the metrics noticeably.")
    if r2 is not None and r2 < 0.5:
        actions.append((50, f"The model explains little of the target's variance (test R\u00b2 {fmt(r2)}): check "
                            "the features and the audit before tuning further."))
    ece = number(test.get("ece"))
    cal = test.get("calibration") or {}
    if ece is not None and ece > 0.1 and isinstance(cal, dict):
        gap = sum((c - a) * k for c, a, k in zip(cal.get("confidence") or [], cal.get("accuracy") or [], cal.get("count") or [])
                  if c is not None and a is not None and isinstance(k, (int, float)))
        way = "over-confident" if gap > 0 else "under-confident"
        smooth = number(cfg.get("train.label_smoothing")) or 0
        why = f" (train.label_smoothing={knob_value(smooth)} makes them so)" if way == "under-confident" and smooth > 0.05 else ""
        actions.append((40, f"The probabilities are {way} (test ECE {fmt(ece)}, see the reliability diagram){why}: "
                            "do not read them as confidences as they are."))
    pcs = [p for p in test.get("per_class") or [] if isinstance(p, dict) and number(p.get("recall")) is not None]
    macro = number(test.get("recall_macro"))
    if pcs and macro is not None:
        worst = min(pcs, key=lambda p: number(p["recall"]))
        if number(worst["recall"]) < macro - 0.1:
            confused = ""
            cm, k = test.get("confusion_matrix"), pcs.index(worst)
            if isinstance(cm, list) and k < len(cm) and isinstance(cm[k], list):
                off = [(v, j) for j, v in enumerate(cm[k]) if j != k and isinstance(v, int) and v > 0]
                if off:
                    v, j = max(off)
                    label = get(test, "per_class", j, "class", default=j)
                    confused = f", most often predicted as {label}: {v} rows"
            actions.append((45, f"Class {worst.get('class')} is the weakest (test recall {fmt(number(worst['recall']))} against "
                                f"{fmt(macro)} on average{confused}): look at those rows in the confusion matrix; "
                                "more or cleaner examples of it, or data.balance=class_weights, may help."))


def _data(page: Page, L: Loaded, cfg: dict, actions: list) -> None:
    audit = get(L.run, "audit") if L.run is not None else None
    checks = get(audit, "checks")
    if not isinstance(checks, dict):
        return
    found = [(n, c) for n, c in checks.items() if isinstance(c, dict) and (number(c.get("count")) or 0) > 0
             and c.get("severity") in SEVERITY_ORDER[:3]]
    if not found:
        ran = ", ".join(check_name(n) for n in checks)
        page.summary.append(f"The data audit found no issue ({ran or 'no check ran'}).")
        return
    name, c = min(found, key=lambda nc: (SEVERITY_ORDER.index(nc[1]["severity"]), -(number(nc[1].get("share")) or 0)))
    sev, share = c["severity"], number(c.get("share"))
    msg = headline(str(c.get("message", "")))
    head = f"{check_name(name).capitalize()} is the largest data issue ({sev} severity): {msg}" + (
        f" ({pct(share)} of the audited rows)" if share is not None else "")
    fix = str(c.get("fix") or "")
    knob, _, want = fix.partition("=")
    have = cfg.get(knob) if knob else None
    searched = knob in (get(L.fit, "best", "params", default={}) or {})
    if knob and knob in cfg and (knob_value(have) == want or str(have) == want):
        done = f"; the final model uses {knob}={knob_value(have)}" + (" (picked by the search)." if searched else ".")
        page.summary.append(head + done)
        return
    if knob and knob in cfg and have != getattr(BY_NAME.get(knob), "default", None):
        page.summary.append(head + f"; the final model uses {knob}={knob_value(have)}" +
                            (" (picked by the search)." if searched else "."))
        return
    if searched:
        page.summary.append(head + f"; the search tried {knob} and kept {knob_value(have)} (cleaning did not help validation).")
        if sev == "high":
            actions.append((75, f"{check_name(name).capitalize()} affects {pct(share)} of the rows but the search kept them: "
                                f"check the flagged rows (examples below, all in audit.csv) before trusting the model."))
        return
    page.summary.append(head + ".")
    if fix:
        prio = {"high": 85, "medium": 58, "low": 20}[sev]
        how = f"--set {fix}, or let the search try it by leaving {knob} unset" if knob in BY_NAME else fix
        actions.append((prio, f"Fix the largest data issue, {check_name(name)} ({pct(share)} of rows, {sev} severity): "
                              f"{how}."))


def _widen(knob: str, rng, side: str) -> str:
    k = BY_NAME[knob]
    lo, hi = float(rng[0]), float(rng[1])
    if side == "top":
        new = hi * 2 if k.log else hi + (hi - lo) / 2
        hi = min(new, k.high) if k.high is not None else new
    else:
        new = lo / 2 if k.log else lo - (hi - lo) / 2
        lo = max(new, k.low) if k.low is not None else new
    show = (lambda x: str(int(round(x)))) if k.type is int else (lambda x: f"{x:.6g}")
    return f'search.space={{"{knob}": [{show(lo)}, {show(hi)}]}}'


def _search(page: Page, L: Loaded, actions: list) -> None:
    n = counts(L)
    total, failed, done = sum(n.values()), n.get("FAIL", 0), n.get("COMPLETE", 0)
    metric, _ = objective(L)
    best = get(L.fit, "best", default={}) or {}
    if best:
        params = best.get("params") or {}
        knobs = ", ".join(f"{k.split('.')[-1]} {knob_value(params[k])}" for k in
                          ("model.family", "model.width", "model.depth", "train.lr") if k in params)
        page.summary.append(f"The best of {done} complete trials is #{best.get('number')} ({metric} "
                            f"{fmt(number(get(best, 'values', 0)))})" + (f": {knobs}." if knobs else "."))
    if failed:
        reasons = [t.get("fail_reason") for t in L.trials or [] if t.get("state") == "FAIL" and t.get("fail_reason")]
        common = max(set(reasons), key=reasons.count) if reasons else None
        why = f" (most often: {_short(common)})" if common else ""
        actions.append((95 if failed >= 0.25 * total else 60,
                        f"{failed} of {total} trials failed{why}: see the pruned and failed trials table and "
                        "trials/NNNNN/error.txt."))
    said = verdict(L) if has_baselines(L) else None
    if said is not None and said[1]:  # a simple model on the same rows beats the network
        actions.append((80, said[0]))
    if 0 < done < FEW_TRIALS:
        actions.append((55, f"Only {done} trials completed: the best knobs and the importances are rough; run a "
                            "longer search (--budget or --trials) before reading much into them."))
    imp = {r.get("knob"): number(r.get("importance")) or 0 for r in get(L.importances, "importances", default=[]) or []
           if isinstance(r, dict)}
    edges = []
    for k, v in (best.get("params") or {}).items():
        rng = search_range(k, L.config, L.fit)
        side = edge(k, v, rng)
        if side:
            edges.append((imp.get(k, 0), k, v, rng, side))
    if edges:
        edges.sort(key=lambda e: -e[0])
        w, k, v, rng, side = edges[0]
        more = "" if len(edges) == 1 else " (also " + ", ".join(f"{e[1]} at the {e[4]}" for e in edges[1:3]) + ")"
        actions.append((62 + 30 * min(1.0, 3 * w), f"The best model is at the {side} of the {k} range ({knob_value(v)} in "
                                                   f"{knob_value(rng[0])}\u2013{knob_value(rng[1])}){more}: widen "
                                                   f"search.space, e.g. {_widen(k, rng, side)}."))


def _training(L: Loaded, cfg: dict, actions: list) -> None:
    run = L.best_trial if L.kind == "search" else L.run
    h = get(run, "history") if run is not None else None
    if not h:
        return
    vl = [(r.get("epoch"), number(r.get("val_loss"))) for r in h if number(r.get("val_loss")) is not None]
    tl = [number(r.get("train_loss")) for r in h if number(r.get("train_loss")) is not None]
    who = "the best trial" if L.kind == "search" else "training"
    if len(vl) >= 3 and len(tl) >= 2:
        e_min, v_min = min(vl, key=lambda ev: ev[1])
        e_last, v_last = vl[-1]
        if e_min != e_last and v_last > 1.1 * v_min and tl[-1] < tl[0]:
            actions.append((65, f"Over-fitting in {who}: validation loss rose from {fmt(v_min)} (epoch {e_min}) to "
                                f"{fmt(v_last)} (epoch {e_last}) while training loss kept falling: raise model.dropout or "
                                "train.weight_decay, or try data.augment.policy=auto."))
            return
    tr = get(run, "metrics", "train", default={}) or {}
    best_e, ran = tr.get("best_epoch"), tr.get("epochs_run")
    epochs = cfg.get("train.epochs")
    if isinstance(best_e, int) and best_e == ran and ran == epochs and not tr.get("stopped_early"):
        actions.append((60, f"Validation kept improving up to the last epoch ({ran}) in {who}: raise train.epochs "
                            f"(now {epochs}); early stopping (train.patience) keeps the best weights anyway."))
