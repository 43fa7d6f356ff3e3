"""The report's compression section, from compress/compress.json (`cotune compress`): the variants' table and
the metric against file size and against latency. Reads files only (no torch, no onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

from cotune.report.charts import _axis, _layout, figure
from cotune.report.page import Section

KIND_COLORS = {"torch": "#7f7f7f", "onnx-fp32": "#1f77b4", "int8": "#ff7f0e", "pruned": "#2ca02c",
               "distilled": "#9467bd"}


def _scatter(rows: list, x: str, xlabel: str, metric: str, title: str) -> dict:
    data = []
    for kind, color in KIND_COLORS.items():
        pts = [r for r in rows if r.get("kind") == kind and r.get(x) is not None and r.get(f"val_{metric}") is not None]
        if pts:
            data.append({"type": "scatter", "mode": "markers+text", "name": kind, "x": [r[x] for r in pts],
                         "y": [r[f"test_{metric}"] if r.get(f"test_{metric}") is not None else r[f"val_{metric}"]
                               for r in pts],
                         "text": [r["variant"] + (" (chosen)" if r.get("chosen") else "") for r in pts],
                         "textposition": "top center", "marker": {"color": color, "size": 10}})
    return figure(data, _layout(title, 380, xaxis=_axis(xlabel, type="log"), yaxis=_axis(f"test {metric}")))


def compress_section(sec: Section, L, path: Path) -> None:
    """Builder for compress/compress.json (registered in build.py)."""
    s = json.loads(Path(path).read_text())
    rows, metric, batches = s["variants"], s["metric"]["name"], s["batches"]
    unit = "points" if s.get("tolerance_unit") == "points" else "percent"
    sec.p(f"Chosen: {s['summary']}. Tolerance {s['tolerance']:g} {unit} of validation {metric}, preferring "
          f"{s['prefer']}; a variant replaces the fp32 export only when at least 10% smaller or faster.")
    if s.get("val_in_sample"):
        sec.note("The model was refitted on train + validation, so the validation figures are in-sample: they show "
                 "what compression costs, not how well the model generalizes; test is the held-out figure.")
    cols = ["variant", "params", "bytes", *[f"ms @ batch {b}" for b in batches], f"val {metric}", f"test {metric}", ""]
    table = []
    for r in rows:
        note = "chosen" if r.get("chosen") else ("" if r.get("within_tolerance") else "over tolerance")
        table.append([r["variant"], f"{r['params']:,}", f"{r['bytes']:,}",
                      *[f"{r[f'latency_ms_b{b}']:.3f}" for b in batches],
                      "" if r.get(f"val_{metric}") is None else f"{r[f'val_{metric}']:.4f}",
                      "" if r.get(f"test_{metric}") is None else f"{r[f'test_{metric}']:.4f}", note])
    load = [f"{v:.2f}" for v in s.get("load_average") or [] if isinstance(v, (int, float))]
    sec.table(cols, table, caption="Median latency over interleaved calls, one thread (ONNX Runtime; PyTorch eager "
                                   "for the torch row)" + (f"; load average {' -> '.join(load)}" if load else ""))
    for skip in s.get("skipped") or []:
        sec.note(f"{skip['name']}: not built ({skip['reason']})")
    sec.plot("The size chart (compress.json)", _scatter, rows, "bytes", "file bytes", metric,
             f"Test {metric} against file size")
    b = batches[-1]
    sec.plot("The latency chart (compress.json)", _scatter, rows, f"latency_ms_b{b}", f"ms at batch {b}", metric,
             f"Test {metric} against latency at batch {b}")
