"""The report's scaling section, from scale.csv and scale.json (`cotune scale`): the curves, the fit, the advice.

Drawn for a search or run directory holding scale/ (or for the scale directory itself). The measured
points come from scale.csv; the fitted curves, the held-out check and the advice from scale.json, which
`cotune scale` wrote; nothing is refitted here. Reads files only (no torch).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from cotune.report.charts import _axis, _layout, figure
from cotune.report.page import Section
from cotune.scale.law import JointLaw

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError("scale.csv has no runs yet")
    for r in rows:
        for k in ("params", "samples", "val_loss", "val_metric", "flops"):
            r[k] = float(r[k])
        r["extrapolated"], r["longer"] = (r.get(k) in ("True", "true", "1") for k in ("extrapolated", "longer"))
    return rows


def _means(rows, group: str, x: str) -> dict[float, tuple[list, list]]:
    """{group value: (x values, mean val loss over seeds)}, x ascending."""
    acc: dict = {}
    for r in rows:
        acc.setdefault(r[group], {}).setdefault(r[x], []).append(r["val_loss"])
    return {g: (sorted(d), [float(np.mean(d[k])) for k in sorted(d)]) for g, d in sorted(acc.items())}


def _curve_chart(rows, law: dict | None, x: str, group: str, title: str, xlabel: str, glabel) -> dict:
    data = []
    for i, (g, (xs, ys)) in enumerate(_means(rows, group, x).items()):
        color = PALETTE[i % len(PALETTE)]
        data.append({"type": "scatter", "mode": "markers", "name": glabel(g), "x": xs, "y": ys,
                     "marker": {"color": color, "size": 8}})
        if law:
            grid = np.geomspace(min(xs), max(xs) * 2, 40)
            N, D = (grid, g) if x == "params" else (g, grid)
            pred = JointLaw.from_dict(law).predict(N, D)
            data.append({"type": "scatter", "mode": "lines", "name": f"fit, {glabel(g)}", "x": list(grid),
                         "y": list(np.broadcast_to(pred, grid.shape)), "line": {"color": color, "dash": "dash"},
                         "showlegend": False})
    return figure(data, _layout(title, 400, xaxis=_axis(xlabel, type="log"), yaxis=_axis("validation loss", type="log")))


def scale_section(sec: Section, L, path: Path) -> None:
    """Builder for scale.csv (registered in build.py)."""
    rows = _rows(path)
    summary_path = path.with_name("scale.json")
    s = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    fitted = [r for r in rows if not (r["extrapolated"] or r["longer"])]
    if s is None:
        sec.note(f"{len(rows)} runs in scale.csv but no scale.json (the study has not finished fitting); "
                 "rerun `cotune scale` to complete it.")
    else:
        for i, line in enumerate(s.get("text", [])):
            (sec.p if i == 0 else sec.note)(line)
    law = s.get("law") if s else None
    sec.plot("The scaling chart against training rows (scale.csv)", _curve_chart, fitted, law, "samples", "params",
             "Validation loss against training rows, one line per model size (dashed: the fit)", "training rows",
             lambda g: f"{g:,.0f} params")
    sec.plot("The scaling chart against parameters (scale.csv)", _curve_chart, fitted, law, "params", "samples",
             "Validation loss against parameters, one line per training-set size (dashed: the fit)", "parameters",
             lambda g: f"{g:,.0f} rows")
    if s is None:
        return
    ci, interaction = law.get("ci", {}), law.get("form") == "interaction"
    form = ("E + ((A / N^alpha)^(1/q) + (B / D^beta)^(1/q))^q" if interaction else "E + A / N^alpha + B / D^beta")
    sec.table(["parameter", "value", "90% interval"],
              [[k, f"{law[k]:.4g}", "" if k not in ci else f"{ci[k][0]:.3g} to {ci[k][1]:.3g}"]
               for k in ("E", "A", "alpha", "B", "beta", "q")[:6 if interaction else 5]],
              caption=f"L(N, D) = {form} over {s.get('points')} runs "
                      f"(RMS log residual {law.get('rmse_log', float('nan')):.3g}; {s.get('form', {}).get('note', '')})")
    metric = s.get("metric", "accuracy")
    sec.table(["option", "val loss", "loss gain", f"{metric} gain", "extra training FLOPs"],
              [[a["option"], f"{a['loss']:.4g}", f"{a['loss_gain']:.4g}",
                "" if a.get("metric_gain") is None else (f"{100 * a['metric_gain']:+.2f} pts" if metric != "rmse"
                                                          else f"{-a['metric_gain']:+.4g}"),
                f"{a['extra_flops']:.3g}"] for a in s.get("advice", [])],
              caption="What doubling each would do at the current point (best first; "
                      + ("2x epochs as trained, the others as the fit predicts)" if s.get("epochs", {}).get("measured")
                         else "as the fit predicts)"))
    h = s.get("holdout", {})
    if "rel_error" in h:
        trust = [("held-out run (largest model, all rows)", f"{h['params']:,.0f} params, {h['samples']:,.0f} rows"),
                 ("measured val loss", f"{h['actual']:.4g}" + (f" +/- {h['actual_se']:.2g} (standard error over the "
                                                                 "validation rows)" if h.get("actual_se") is not None else "")),
                 ("predicted without it", f"{h['predicted']:.4g}"),
                 ("relative error", f"{100 * h['rel_error']:.1f}%")]
        if "interval" in h:
            lo, hi = h["interval"]
            trust.append(("the fit's 90% interval there",
                          f"[{lo:.4g}, {hi:.4g}]: " + ("holds" if h["inside"] else "misses") + " the measured loss"))
        sec.pairs(trust, caption="How far to trust the fit")
    ext = s.get("extrapolation") or []
    if ext:
        sec.table(["rows generated", "training rows", "measured", "predicted", "error"],
                  [[f"{e['n_samples']:,}", f"{e['samples']:,.0f}", f"{e['actual']:.4g}", f"{e['predicted']:.4g}",
                    f"{100 * e['rel_error']:.1f}%"] for e in ext],
                  caption="Beyond the data: the largest model on more generated rows, against the fit's prediction")
