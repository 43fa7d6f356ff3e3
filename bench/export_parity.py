"""Every registered model (list_models(): each family and its sizes) trained briefly on real data, exported to
ONNX, and checked against PyTorch on the test rows and at batch 1, 7 and 256.

    .venv/bin/python bench/export_parity.py              # all registered models
    .venv/bin/python bench/export_parity.py --only gru   # a pattern (fnmatch) over the names

Data per family, the first that it accepts of: sklearn:digits as 8x8 images (cnn2d), mnist1d sequences (cnn1d,
gru, lstm, transformer), sklearn:wine as a table with a piecewise-linear numeric embedding (mlp). Each model
trains 2 epochs through `cotune train` (so its weights are not the initialization), then
cotune.compress.export.to_onnx and parity(): the max |onnx - torch| of the raw outputs over the test rows and
batches of 1, 7 and 256 of them, and the share of equal argmaxes; the same for the model at its own sizes
(create_model's defaults for the name; fresh weights), which a config's width and depth override. Prints a markdown table; exits 1 if any
model fails the gate (<= 1e-4, 100%).
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import tempfile
import time
from pathlib import Path

import torch

import cotune
from cotune.compress import export
from cotune.data.split import split_indices
from cotune.models import create_model, list_models
from cotune.models.registry import family_of
from cotune.pipeline import load_data

DATA = {"cnn2d": ["data.source=sklearn:digits"],
        "mlp": ["data.source=sklearn:wine", "model.num_embedding=piecewise"]}
SEQUENCE = ["data.source=mnist1d"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="export-parity-"))
    rows, failed = [], []
    print("| model | data | params (trained / own sizes) | export s | test rows | max abs diff | argmax agreement | ok |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in [n for n in list_models() if fnmatch.fnmatch(n, args.only)]:
        data = DATA.get(family_of(name), SEQUENCE)
        res = cotune.train(overrides=[*data, f"model.family={name}", "train.epochs=2", "runtime.progress=false",
                                      "runtime.threads=1"], out=work / name)
        b = cotune.load(res.path)
        ds = load_data(res.config)
        d = res.config.data
        _, _, te = split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
        X = b.pre.transform(ds.X.iloc[te] if ds.modality == "tabular" else ds.X[te])
        t0 = time.time()
        path = export.to_onnx(b.model, b.spec.in_shape, work / f"{name}.onnx", family=name)
        secs = time.time() - t0
        p = export.parity(b.model, path, X)
        # a config always sets model.width / depth, so a sized variant trains at the config's size: its own
        # sizes (the factory's defaults) are checked too, with fresh weights, on the same rows
        torch.manual_seed(0)
        own = create_model(name, b.spec.in_shape, b.spec.out_dim, **{k: v for k, v in b.spec.kwargs.items()
                                                                      if k not in ("width", "depth")}).eval()
        q = export.parity(own, export.to_onnx(own, b.spec.in_shape, work / f"{name}-own.onnx", family=name), X)
        rows.append(p)
        if not (p["ok"] and q["ok"]):
            failed.append(name)
        print(f"| {name} | {data[0].split('=')[1]} | {b.spec.n_params:,} / {sum(x.numel() for x in own.parameters()):,} | "
              f"{secs:.1f} | {len(X)} | {max(p['max_abs_diff'], q['max_abs_diff']):.1e} | "
              f"{min(p['argmax_agreement'], q['argmax_agreement']):.4f} | {'yes' if p['ok'] and q['ok'] else 'NO'} |",
              flush=True)
    print(f"\n{len(rows) - len(failed)} of {len(rows)} models pass (max |diff| <= {export.PARITY_ATOL:g}, every argmax "
          f"equal, at batch {', '.join(map(str, export.PARITY_BATCHES))} and on all test rows)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
