"""The first model section of a search's page: the network against a linear model and LightGBM fitted on the
same rows (fit.json 'baselines', written by `cotune.baselines`). Absent when fit.json has none (images and
sequences, searches written before baselines existed)."""
from __future__ import annotations

from cotune.evaluate import MAXIMIZE
from cotune.report.files import fmt, get, number
from cotune.report.load import Loaded
from cotune.report.page import Cell, Page
from cotune.report.search import objective

CLASSIFICATION = ("accuracy", "f1_macro", "roc_auc", "log_loss")
REGRESSION = ("rmse", "mae", "r2")
OTHERS = 3          # metrics shown beside the ranking one
SHARES = {"accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
          "recall_weighted", "f1_weighted", "roc_auc", "r2", "ece"}  # differences read in points (x100)
LABELS = {"linear": "linear", "lightgbm": "LightGBM"}


def has_baselines(L: Loaded) -> bool:
    b = get(L.fit, "baselines")
    return isinstance(b, dict) and bool(b.get("models") or b.get("error"))


def ranking(L: Loaded) -> tuple[str, bool]:
    """(metric name, maximize) that ranked the trials: fit.json 'metric', else the task's primary metric; a search
    ranked on the validation loss compares on log loss (classification) or RMSE (regression), the scores it has."""
    name, maximize = objective(L)
    name = name.removeprefix("val ")
    if name == "loss":  # the validation loss ranks like log loss (classification) or RMSE (regression)
        regression = "rmse" in (get(L.fit, "test") or {})
        return ("rmse", False) if regression else ("log_loss", False)
    return name, maximize


def network(L: Loaded) -> tuple[str, dict, dict, str]:
    """(row label, validation metrics, test metrics, whose validation metrics) of the final model. Refitted on
    train + validation, it has no validation score of its own: its best trial's (or the kept ensemble's, as the
    search trained it, for its ranking metric only) stands in."""
    metrics = get(L.run, "metrics") if L.run is not None else None
    test = get(metrics, "test") or get(L.fit, "test") or {}
    val, whose = get(metrics, "val"), "final"
    ens = L.ensemble if get(L.ensemble, "kept") else None
    label = f"network (ensemble of {len(ens['members'])})" if ens and isinstance(ens.get("members"), list) else "network"
    if not isinstance(val, dict):
        if ens is not None:
            val, whose = {ens.get("metric"): ens.get("val")}, "ensemble"
        else:
            val, whose = get(L.best_trial, "metrics", "val") or {}, "best trial"
    return label, val, test if isinstance(test, dict) else {}, whose


def rows(L: Loaded) -> list[tuple[str, dict | None, dict | None, str | None]]:
    """(label, val, test, error) per model: the network, then the baselines in fit.json's order."""
    label, val, test, _ = network(L)
    out = [(label, val, test, None)]
    for key, m in (get(L.fit, "baselines", "models", default={}) or {}).items():
        if not isinstance(m, dict):
            continue
        name = LABELS.get(key, key)
        if isinstance(m.get("name"), str) and key == "linear":
            name = f"linear ({m['name']})"
        out.append((name, get(m, "val"), get(m, "test"), m.get("error")))
    return out


def columns(metric: str, table: list) -> list[str]:
    """The ranking metric, then up to OTHERS of the task's useful metrics that some row holds."""
    parts = [d for _, v, t, _ in table for d in (v, t) if isinstance(d, dict)]
    regression = any("rmse" in d for d in parts)
    held = [k for k in (REGRESSION if regression else CLASSIFICATION) if k != metric
            and any(number(d.get(k)) is not None for d in parts)]
    return [metric, *held[:OTHERS]]


def _amount(gap: float, metric: str) -> str:
    if metric in SHARES:
        points = f"{100 * gap:.1f}"
        return f"{points if points != '0.0' else f'{100 * gap:.2g}'} points of {metric}"
    return f"{fmt(gap)} in {metric}" + ("" if MAXIMIZE.get(metric, True) else " (lower is better)")


def verdict(L: Loaded) -> tuple[str, bool] | None:
    """(one sentence on which model is best on test on the ranking metric, and by how much; whether a baseline is
    ahead of the network), or None when the network or every baseline lacks a test score."""
    metric, maximize = ranking(L)
    maximize = MAXIMIZE.get(metric, maximize)
    table = rows(L)
    net = number(get(table[0][2], metric))
    scored = [(label, number(get(t, metric))) for label, _, t, err in table[1:] if not err]
    scored = [(label, v) for label, v in scored if v is not None]
    if net is None or not scored:
        return None
    name, best = (max if maximize else min)(scored, key=lambda lv: lv[1])
    gap = (net - best) if maximize else (best - net)  # > 0: the network is ahead
    if gap > 0:
        return (f"The network is best on the test rows: {metric} {fmt(net)}, {_amount(gap, metric)} ahead of the best "
                f"baseline, {name} ({fmt(best)})."), False
    if gap == 0:
        return f"The network and {name} tie on the test rows: {metric} {fmt(net)} both.", False
    return (f"{name[0].upper() + name[1:]} is ahead of the network by {_amount(-gap, metric)} on the test rows "
            f"({fmt(best)} against {fmt(net)}): consider it, or a longer budget."), True


def compare(page: Page, L: Loaded) -> None:
    sec = page.section("compare", "How the network compares")
    base = get(L.fit, "baselines")
    if get(base, "error"):
        sec.note(f"The baselines could not be fitted: {base['error']}")
        return
    metric, _ = ranking(L)
    table = rows(L)
    names = columns(metric, table)
    head = ["model"] + [f"{part} {m}" for m in names for part in ("val", "test")]
    body = [[label, *[Cell(fmt(number(get(d, m))), "num") for m in names for d in (val, test)]]
            for label, val, test, _ in table]
    n = get(base, "rows", default={}) or {}
    trained = get(base, "test_trained_on") or "train+val"
    refit = f" ({fmt(n['train_val'])} rows)" if isinstance(n.get("train_val"), int) else ""
    same = ", as the network's final model" if get(L.fit, "final", "trained_on") in (None, trained) else ""
    tested = (f"for the {fmt(n.get('test'))} test rows they were refitted on train + validation{refit}{same}"
              if trained == "train+val" else f"the same fits were scored on the {fmt(n.get('test'))} test rows")
    sec.p(f"Two baselines with default settings, a linear model and LightGBM, were fitted on the network's "
          f"{fmt(n.get('train'))} cleaned training rows and scored on the {fmt(n.get('val'))} validation rows; {tested}.")
    sec.table(head, body, cls="metrics compare", caption=f"The network and the baselines (ranked by {metric})")
    said = verdict(L)
    if said is not None:
        sec.p(said[0])
    for label, _, _, err in table[1:]:
        if err:
            sec.note(f"{label} could not be fitted: {err}")
    whose = network(L)[3]
    notes = [] if whose == "final" else [
        f"The network's validation numbers are its {whose}'s, as the search trained it (the search picked it on "
        "these rows, so they lean optimistic); the baselines' come from one fit each."]
    if get(L.fit, "final", "trained_on") == "train" and trained != "train":
        notes.append("The final model was not refitted on train + validation, the baselines' test models were.")
    if isinstance(base.get("cleaning_note"), str):
        notes.append(f"Cleaning: the baselines were {base['cleaning_note']}.")
    if notes:
        sec.p(" ".join(notes))
