"""The model's sections of the page: how good it is, what was done to the data, how training went."""
from __future__ import annotations

from cotune.knobs import BY_NAME
from cotune.report import charts
from cotune.report.files import flatten, fmt, get, knob_value, number, pct
from cotune.report.load import Loaded, Run
from cotune.report.page import Cell, Page

METRICS = {  # name -> what it means, in the order shown
    "accuracy": "share of rows classified correctly",
    "robust_accuracy": "accuracy under a 10-step PGD attack within train.adv_epsilon (L-inf, standardized inputs)",
    "balanced_accuracy": "accuracy averaged over classes (robust to imbalance)",
    "f1_macro": "F1 averaged over classes",
    "precision_macro": "precision averaged over classes",
    "recall_macro": "recall averaged over classes",
    "f1_weighted": "F1 averaged over classes, weighted by support",
    "roc_auc": "ranking quality of the probabilities (1 = perfect)",
    "f1": "F1 of the second class (binary)",
    "log_loss": "cross-entropy of the probabilities (lower is better)",
    "brier": "squared error of the probabilities (lower is better)",
    "ece": "expected calibration error: confidence vs accuracy gap (lower is better)",
    "rmse": "root mean squared error (lower is better)",
    "mae": "mean absolute error (lower is better)",
    "r2": "share of the target's variance explained (1 = perfect)",
    "n": "rows evaluated",
}
SEVERITY_ORDER = ("high", "medium", "low", "none")
BALANCE = {"class_weights": "every row reweighted in the loss by inverse class frequency",
           "oversample": "classes resampled with repeats up to the majority count",
           "undersample": "classes subsampled down to the minority count",
           "smote": "synthetic minority rows interpolated by SMOTE",
           "balanced_batches": "batches drawn class-balanced (per-row sampling weights)",
           "focal": "focal loss, which down-weights easy rows"}
CHECK_NAMES = {"label_issues": "label noise", "duplicates": "duplicate rows", "near_duplicates": "near-duplicate rows",
               "conflicting_duplicates": "identical rows with different labels", "leakage": "train/test leakage",
               "outliers": "outliers", "class_imbalance": "class imbalance", "missing_values": "missing values",
               "constant_columns": "constant columns", "id_like_columns": "ID-like columns",
               "target_leak_features": "features that leak the target", "text_empty": "empty texts",
               "text_duplicates": "duplicate texts", "text_overlap": "texts shared by training and held-out rows"}


def check_name(name: str) -> str:
    return CHECK_NAMES.get(name, name.replace("_", " "))


def class_labels(test: dict, k: int) -> list[str]:
    pcs = test.get("per_class") or []
    labels = [str(get(pc, "class", default=i)) for i, pc in enumerate(pcs)]
    return labels if len(labels) == k else [str(i) for i in range(k)]


def final_config(L: Loaded) -> dict:
    """The final model's config, flattened: final/config.json, else the search config with the best knobs."""
    cfg = get(L.run, "config") if L.run is not None and L.run.config else None
    if cfg is None and L.members:
        cfg = L.members[0].config
    flat = flatten(cfg or L.config or {})
    if cfg is None and L.fit:
        flat.update(get(L.fit, "best", "params", default={}) or {})
    return flat


# ---------------------------------------------------------------------------------------------
# how good is the model

def quality(page: Page, L: Loaded) -> None:
    sec = page.section("quality", "How good is the model")
    metrics = get(L.run, "metrics") if L.run is not None else None
    test = get(metrics, "test") or get(L.fit, "test")
    val = get(metrics, "val")
    ens = L.ensemble
    if isinstance(ens, dict) and ens.get("members"):
        members = ", ".join(f"#{m}" for m in ens["members"])
        metric = ens.get("metric", "metric")
        single = f"trial #{ens['single']}" if isinstance(ens.get("single"), int) else "the best single trial"
        if ens.get("kept"):
            sec.p(f"The final model is a soft-voting ensemble of trials {members}: validation {metric} "
                  f"{fmt(ens.get('val'))} against {fmt(ens.get('best_single_val'))} for {single}.")
        else:
            sec.p(f"A soft-voting ensemble of trials {members} scored {fmt(ens.get('val'))} validation {metric}, "
                  f"no better than {single} ({fmt(ens.get('best_single_val'))}): the single model was kept.")
    how = get(L.fit, "final", "summary")
    if isinstance(how, str):
        sec.p(f"The final model: {how}.")
    elif L.kind == "search" and not get(ens, "kept"):  # a search directory written before fit.json said how
        sec.p("The final model was retrained on train + validation with the best trial's knobs, then evaluated "
              "once on the held-out test part.")
    if not isinstance(test, dict) and not isinstance(val, dict):
        sec.note("No test or validation metrics to show.")
        return
    parts = [(n, d) for n, d in (("test", test), ("validation", val)) if isinstance(d, dict)]
    names = [k for k in METRICS if any(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)
                                       for _, d in parts)]
    rows = [[k, *[Cell(fmt(d.get(k)), "num") for _, d in parts], METRICS[k]] for k in names]
    sec.table(["metric", *[n for n, _ in parts], "what it means"], rows, caption="Metrics", cls="metrics")
    if not isinstance(test, dict):
        return
    src = f"{L.run.prefix}metrics.json" if get(metrics, "test") else "fit.json"
    _calibration(sec, get(metrics, "calibration"), src)
    cm = test.get("confusion_matrix")
    if isinstance(cm, list) and cm and all(isinstance(r, list) for r in cm):
        sec.plot(f"The confusion matrix ({src})", charts.confusion, cm, class_labels(test, len(cm)))
    pcs = test.get("per_class")
    if isinstance(pcs, list) and pcs:
        labels = class_labels(test, len(pcs))
        sec.plot(f"The per-class chart ({src})", charts.per_class, labels, [get(p, "precision") for p in pcs],
                 [get(p, "recall") for p in pcs])
    cal = test.get("calibration")
    if isinstance(cal, dict) and cal.get("confidence"):
        sec.plot(f"The reliability diagram ({src})", charts.reliability, cal, number(test.get("ece")))
    if isinstance(test.get("residual_quantiles"), dict):
        sec.plot(f"The residuals chart ({src})", charts.residuals, test["residual_quantiles"])


def _calibration(sec, cal, src: str) -> None:
    """The temperature and threshold of the final classifier, and its test probabilities before and after."""
    if not isinstance(cal, dict):
        return
    if cal.get("skipped"):
        sec.p(f"Calibration: {cal['skipped']}.")
        return
    v = get(cal, "val", default={}) or {}
    t = number(cal.get("temperature"))
    if cal.get("kept"):
        sec.p(f"The probabilities are calibrated by temperature scaling: T = {fmt(t)}, fitted on the validation "
              f"predictions of {cal.get('fitted_on', 'the search-trained model')} ({fmt(v.get('rows'))} rows), kept because "
              f"it lowered the cross-fitted validation log loss from {fmt(v.get('val_log_loss'))} to "
              f"{fmt(v.get('val_log_loss_cross_fitted'))}.")
    else:
        sec.p(f"Temperature scaling was tried on the validation predictions and not kept: it did not lower the "
              f"cross-fitted validation log loss ({fmt(v.get('val_log_loss_cross_fitted'))} against "
              f"{fmt(v.get('val_log_loss'))} without it).")
    thr = cal.get("threshold_check")
    if isinstance(thr, dict):
        if thr.get("kept"):
            sec.p(f"The decision threshold on the second class's probability is {fmt(number(thr.get('threshold')))}: "
                  f"the cut with the best expected {thr.get('metric')} under the calibrated validation probabilities, "
                  f"{fmt(thr.get('val_at_threshold'))} on the validation labels against {fmt(thr.get('val_at_argmax'))} "
                  "at 0.5; `predict` applies it, the probabilities are unchanged by it.")
        else:
            sec.p(f"No decision threshold: the cut with the best expected {thr.get('metric')} "
                  f"({fmt(number(thr.get('tuned')))}) scored {fmt(thr.get('val_at_threshold'))} on the validation labels, "
                  f"below {fmt(thr.get('val_at_argmax'))} at 0.5, so predict uses the most probable class.")
    before, after = get(cal, "test_before"), get(cal, "test_after")
    if isinstance(before, dict) and isinstance(after, dict):
        names = [k for k in ("log_loss", "brier", "ece") if k in before]
        rows = [[k, Cell(fmt(before.get(k)), "num"), Cell(fmt(after.get(k)), "num"), METRICS.get(k, "")] for k in names]
        prior = number(cal.get("test_prior_log_loss"))
        if prior is not None:
            rows.append(["log_loss of the class frequencies", Cell(fmt(prior), "num"), Cell(fmt(prior), "num"),
                         "always predicting the training part's class shares: a model should do better"])
        sec.table(["test", "before", "after", "what it means"], rows, caption=f"Calibration on test ({src})", cls="metrics")


# ---------------------------------------------------------------------------------------------
# what was wrong with the data, and what was done

def _fix_state(fix: str, cfg: dict) -> str:
    """'yes' when the final config holds the audit's suggested fix, else what it holds instead."""
    if not fix or "=" not in fix:
        return "-"
    knob, _, value = fix.partition("=")
    knob = knob.strip()
    if knob not in cfg:
        return "-"
    have = cfg[knob]
    if knob_value(have) == value.strip() or str(have) == value.strip():
        return "yes"
    default = getattr(BY_NAME.get(knob), "default", None)
    return "no" if have == default else f"set to {knob_value(have)}"


def data(page: Page, L: Loaded) -> None:
    sec = page.section("data", "What was wrong with the data, and what was done")
    run = L.run
    audit = get(run, "audit") if run is not None else None
    cfg = final_config(L)
    if isinstance(audit, dict) and isinstance(audit.get("checks"), dict):
        rows_audited = get(audit, "rows", default={}) or {}
        where = ", ".join(f"{v:,} {k}" for k, v in rows_audited.items() if isinstance(v, int) and v)
        source = " (from the first ensemble member)" if L.members else ""
        sec.p(f"Data audit of {audit.get('dataset', 'the dataset')}{source}" + (f" over {where} rows." if where else "."))
        checks = [(n, c) for n, c in audit["checks"].items() if isinstance(c, dict)]
        found = [(n, c) for n, c in checks if c.get("severity") not in (None, "none") or (number(c.get("count")) or 0) > 0]
        clean = [n for n, c in checks if (n, c) not in found]
        found.sort(key=lambda nc: (SEVERITY_ORDER.index(nc[1].get("severity")) if nc[1].get("severity") in SEVERITY_ORDER else 9,
                                   -(number(nc[1].get("share")) or 0)))
        rows = [[check_name(n), c.get("message", ""), Cell(fmt(c.get("count")), "num"), Cell(pct(number(c.get("share"))), "num"),
                 Cell(str(c.get("severity", "-")), f"sev sev-{c.get('severity', 'none')}"), c.get("fix") or "-",
                 _fix_state(c.get("fix") or "", cfg)] for n, c in found]
        sec.table(["finding", "what the audit saw", "count", "share", "severity", "suggested fix",
                   "applied in the final model"], rows, caption="Audit findings", cls="audit")
        if not found:
            sec.p("The audit found no issue.")
        if clean:
            sec.p("No issue found by: " + ", ".join(check_name(n) for n in clean) + ".")
        for name, examples in (run.examples or {}).items():
            unit = get(audit, "checks", name, "unit", default="rows")
            sec.table(["row", "part", "score"], [[e["row"], e["part"], Cell(fmt(e["score"]), "num")] for e in examples],
                      caption=f"Example {unit} flagged for {check_name(name)} (highest scores first; row = index in the dataset)",
                      cls="examples")
    else:
        sec.note("No audit.json here: no data checks ran for this model (every cleaning knob was off). "
                 "`cotune audit DATA` runs them without training.")
    _labels(sec, get(L.fit, "labels") if L.fit else None)
    d = get(run, "metrics", "data") if run is not None else None
    if d is None and L.members:
        d = get(L.members[0], "metrics", "data")
    if isinstance(d, dict):
        _data_changes(sec, d)


def _labels(sec, labels) -> None:
    """fit.json 'labels': the search's check of every part's labels (test labels are reported, never changed)."""
    if not isinstance(labels, dict) or "by_part" not in labels:
        return
    parts = get(labels, "by_part", default={}) or {}
    where = ", ".join(f"{fmt(v)} in {k}" for k, v in parts.items())
    sec.p(f"Labels of every part checked against the {labels.get('proxy', '?')} proxy (out-of-fold accuracy "
          f"{pct(number(labels.get('proxy_accuracy')))}): {fmt(labels.get('count'))} look wrong ({where}); trust in "
          f"these flags: {labels.get('trust', '-')} (the proxy agrees with {pct(number(labels.get('unflagged_agreement')))} "
          "of the labels it does not flag). Test labels are never changed; the test figures above use them as given.")


def _data_changes(sec, d: dict) -> None:
    rows = get(d, "rows", default={}) or {}
    frac = d.get("fraction")
    steps = [("training part after the split", rows.get("train_split")),
             (f"after data.fraction={knob_value(frac)}", rows.get("train_fraction") if frac not in (1, 1.0) else None),
             ("after cleaning", rows.get("train_clean")), ("used for training (after balancing)", rows.get("train_used")),
             ("validation part", rows.get("val")), ("test part", rows.get("test"))]
    sec.table(["rows", "count"], [[k, Cell(fmt(v), "num")] for k, v in steps if isinstance(v, int)],
              caption="Rows at each step", cls="kv")
    clean, bal = get(d, "clean", default={}) or {}, get(d, "balance", default={}) or {}
    acts = [[f"removed: {check_name(k)}", Cell(fmt(v), "num")] for k, v in (clean.get("removed") or {}).items()]
    if "relabelled" in clean:
        acts.append(["relabelled to the proxy model's prediction", Cell(fmt(clean["relabelled"]), "num")])
    method = bal.get("method")
    if method and method != "none":
        before = rows.get("train_clean")
        acts.append([f"balancing ({method}): {BALANCE.get(method, method)}",
                     Cell(f"{fmt(bal.get('rows'))} rows" + (f" (from {fmt(before)})" if isinstance(before, int) else ""), "num")])
        if bal.get("synthetic"):
            acts.append(["synthetic rows added by balancing", Cell(fmt(bal["synthetic"]), "num")])
    aug = d.get("augment")
    if aug not in (None, "none", {}, []):
        acts.append(["augmentation", Cell(knob_value(aug) if not isinstance(aug, dict) else
                                          ", ".join(f"{k} {knob_value(v)}" for k, v in aug.items()), "")])
    sec.table(["what was done to the training part", "rows"], acts, caption="Cleaning and balancing", cls="kv")
    if not acts:
        sec.p("Nothing was removed, relabelled or reweighted.")
    before, after = bal.get("counts_before"), bal.get("counts_after")
    if isinstance(before, list) and isinstance(after, list) and before != after:
        sec.plot("The class counts chart (metrics.json)", charts.class_counts, before, after)


# ---------------------------------------------------------------------------------------------
# how training went

def _curves(sec, run: Run, title: str, best_epoch=None) -> bool:
    h = run.history or []
    if not h:
        return False
    epochs = [r.get("epoch") for r in h]
    series = {k: [r.get(k) for r in h] for k in ("train_loss", "val_loss") if any(r.get(k) is not None for r in h)}
    vm = next((k for k in h[0] if k.startswith("val_") and k != "val_loss"), None)
    metric = (vm, [r.get(vm) for r in h]) if vm and any(r.get(vm) is not None for r in h) else None
    sec.plot(f"The learning curves ({run.prefix}history.csv)", charts.curves, epochs, series, metric, best_epoch, title)
    return True


def training(page: Page, L: Loaded) -> None:
    sec = page.section("training", "How training went")
    runs = L.members or ([L.run] if L.run is not None else [])
    ens_members = get(L.ensemble, "members", default=[]) or []
    for i, run in enumerate(runs):
        tr = get(run, "metrics", "train", default={}) or {}
        who = "the model" if not L.members else f"ensemble member {i}" + (
            f" (trial #{ens_members[i]})" if i < len(ens_members) else "")
        facts = [("epochs run", fmt(tr.get("epochs_run"))), ("best epoch (weights kept)", fmt(tr.get("best_epoch"))),
                 ("stopped early", fmt(tr.get("stopped_early"))), ("training time (s)", fmt(number(tr.get("train_time_s")), 1)),
                 ("samples per second", fmt(number(tr.get("samples_per_s")), 1)), ("parameters", fmt(tr.get("n_params")))]
        facts = [(k, v) for k, v in facts if v != "-"]
        if facts:
            sec.pairs(facts, caption=f"Training of {who}")
        title = f"Learning curves of {who}"
        if _curves(sec, run, title, tr.get("best_epoch")) and not L.members:
            lr = [r.get("lr") for r in run.history or []]
            if any(v is not None for v in lr):
                sec.plot(f"The learning-rate chart ({run.prefix}history.csv)", charts.lr_curve,
                         [r.get("epoch") for r in run.history], lr)
    bt = L.best_trial
    final_has_val = any(r.get("val_loss") is not None for r in (get(L.run, "history") or []))
    if L.kind == "search" and bt is not None and bt.history and not final_has_val:
        n = get(L.fit, "best", "number")
        sec.p(f"The final model was refit on train + validation, so it has no validation curve; "
              f"these are the curves of the best trial (#{n}) on train and validation.")
        _curves(sec, bt, f"Learning curves of the best trial (#{n})", get(bt, "metrics", "train", "best_epoch"))
    if sec.empty:
        sec.note("No history.csv: no learning curves to show.")
