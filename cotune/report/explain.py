"""The report's explanation section, from explain/explain.json (`cotune explain`): permutation importances per
column (tables) as bars with their spread, or the mean |integrated gradient| per position (sequences) or per pixel
(images) and a few example rows' attributions. Reads the file only (no torch, no captum)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cotune.report.charts import BLUE, GREY, _axis, _layout, figure
from cotune.report.page import Section

TOP = 30  # bars drawn at most


def _bars(imps: list, metric: str, n_repeats: int) -> dict:
    rows = list(reversed(imps[:TOP]))  # largest on top
    data = [{"type": "bar", "orientation": "h", "x": [r["mean"] for r in rows], "y": [r["column"] for r in rows],
             "error_x": {"type": "data", "array": [r["sd"] for r in rows], "visible": True, "color": "#555555"},
             "marker": {"color": [GREY if r.get("within_noise") else BLUE for r in rows]},
             "hovertemplate": "%{y}: %{x:.4f}<extra></extra>"}]
    return figure(data, _layout(f"Permutation importance: the {metric} lost when a column is shuffled "
                                f"(mean ± sd over {n_repeats})", min(900, 120 + 24 * len(rows)), showlegend=False,
                                margin={"l": 190, "r": 30, "t": 50, "b": 60}, xaxis=_axis(f"{metric} lost"),
                                yaxis={"type": "category", "categoryorder": "array",
                                       "categoryarray": [r["column"] for r in rows]}))


def _positions(per_position: list) -> dict:
    data = [{"type": "scatter", "mode": "lines+markers", "x": list(range(len(per_position))), "y": per_position,
             "line": {"color": BLUE}, "hovertemplate": "position %{x}: %{y:.4g}<extra></extra>"}]
    return figure(data, _layout("Mean |attribution| per position (summed over channels)", 340, showlegend=False,
                                xaxis=_axis("position"), yaxis=_axis("mean |attribution|", rangemode="tozero")))


def _pixels(per_pixel: list) -> dict:
    h = len(per_pixel)
    data = [{"type": "heatmap", "z": per_pixel, "colorscale": "Viridis",
             "hovertemplate": "row %{y}, column %{x}: %{z:.4g}<extra></extra>"}]
    return figure(data, _layout("Mean |attribution| per pixel (summed over channels)", min(520, 160 + 10 * h),
                                xaxis=_axis("column", scaleanchor="y", constrain="domain"),
                                yaxis=_axis("row", autorange="reversed")))


def _name(e: dict) -> str:
    what = f"predicted {e['predicted']}" if e.get("predicted") is not None else f"output {e.get('value', 0):.3g}"
    return f"row {e['row']}: {what}" + ("" if e.get("label") is None else f", label {e['label']}")


def _sequence_examples(examples: list) -> dict:
    z = [np.asarray(e["attribution"], dtype=float).sum(0).tolist() for e in examples]  # (C, L) -> (L,)
    inputs = [np.asarray(e["input"], dtype=float).mean(0).tolist() for e in examples]
    lim = max((abs(v) for row in z for v in row), default=1.0) or 1.0
    data = [{"type": "heatmap", "z": z, "y": [_name(e) for e in examples], "text": inputs, "colorscale": "RdBu",
             "zmin": -lim, "zmax": lim, "colorbar": {"title": {"text": "attribution"}},
             "hovertemplate": "%{y}, position %{x}: attribution %{z:.4g}, input %{text:.3g}<extra></extra>"}]
    return figure(data, _layout("Example rows: attribution per position (red: towards the prediction)",
                                140 + 45 * len(examples), margin={"l": 230, "r": 30, "t": 50, "b": 50},
                                xaxis=_axis("position"), yaxis={"type": "category", "autorange": "reversed"}))


def _sequence_inputs(examples: list) -> dict:
    data = [{"type": "scatter", "mode": "lines", "name": _name(e), "y": np.asarray(e["input"], dtype=float).mean(0).tolist()}
            for e in examples]
    return figure(data, _layout("The example rows' inputs (preprocessed, mean over channels)", 320,
                                xaxis=_axis("position"), yaxis=_axis("input")))


def _image_examples(examples: list) -> dict:
    """Two rows of panels: each example's input (mean over channels), then its attribution (summed over channels)."""
    n, data, axes = len(examples), [], {}
    gap = 0.02
    for i, e in enumerate(examples):
        a = np.asarray(e["attribution"], dtype=float)
        lim = float(np.abs(a).max()) or 1.0
        for r, (z, kw) in enumerate(((e["input"], {"colorscale": "Greys", "reversescale": True}),
                                     (a.tolist(), {"colorscale": "RdBu", "zmin": -lim, "zmax": lim}))):
            k = r * n + i + 1
            data.append({"type": "heatmap", "z": z, "showscale": False, "xaxis": f"x{k}", "yaxis": f"y{k}",
                         "hovertemplate": "row %{y}, column %{x}: %{z:.3g}<extra></extra>", **kw})
            x0, y0 = i / n + gap, 0.52 if r == 0 else 0.0
            axes[f"xaxis{k}"] = {"domain": [x0, (i + 1) / n - gap], "anchor": f"y{k}", "showticklabels": False,
                                 **({"title": {"text": _name(e), "font": {"size": 10}}} if r == 1 else {})}
            axes[f"yaxis{k}"] = {"domain": [y0, y0 + 0.46], "anchor": f"x{k}", "autorange": "reversed",
                                 "showticklabels": False, "scaleanchor": f"x{k}"}
    return figure(data, _layout("Example rows: input (top) and attribution (bottom; red: towards the prediction)",
                                420, showlegend=False, **axes))


def explain_section(sec: Section, L, path: Path) -> None:
    """Builder for explain/explain.json (registered in build.py)."""
    s = json.loads(Path(path).read_text())
    sec.p(f"On {s['rows']} of {s['data']}: {s['summary']}.")
    if s.get("ensemble"):
        sec.note(f"The model is an ensemble: {s['ensemble']}.")
    if s["kind"] == "permutation":
        metric = s["metric"]["name"]
        sec.p(f"Importance: {s['importance']} ({metric} {s['score']:.4f} on the rows as they are). Each raw column is "
              "shuffled before preprocessing, so a categorical's one-hot columns move together; grey bars are within "
              "noise (below two standard deviations of their own shuffles).")
        sec.plot("The importance chart (explain.json)", _bars, s["importances"], metric, s["n_repeats"])
        sec.table(["column", f"{metric} lost (mean)", "sd", ""],
                  [[r["column"], f"{r['mean']:.4f}", f"{r['sd']:.4f}", "within noise" if r.get("within_noise") else ""]
                   for r in s["importances"]], caption="Permutation importance per original column (explain.csv)")
        return
    c = s.get("completeness") or {}
    sec.p(f"Integrated gradients of {s['target']}, with respect to the preprocessed input, from a {s['baseline']} "
          f"baseline in {s['n_steps']} steps. Completeness (attributions sum to f(x) - f(baseline)): median gap "
          f"{c.get('median_abs_gap', float('nan')):.3g} against a median difference of "
          f"{c.get('median_abs_difference', float('nan')):.3g}.")
    image = s["modality"] == "image"
    sec.plot("The attribution chart (explain.json)", _pixels if image else _positions, s["per_position"])
    if s.get("examples"):
        sec.plot("The example attributions (explain.json)", _image_examples if image else _sequence_examples,
                 s["examples"])
        if not image:
            sec.plot("The example inputs (explain.json)", _sequence_inputs, s["examples"])
