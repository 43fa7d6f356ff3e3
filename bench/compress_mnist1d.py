"""`cotune compress` on MNIST-1D CNNs from a search: int8, pruning and the distilled student of a top-3 ensemble.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compress_mnist1d.py --seeds 0 1 2 --budget 6m --keep

Per seed: `cotune fit mnist1d` with model.family=cnn1d (search.seed = runtime.seed = the seed, top_k 1, so the
final model is one CNN refitted on train + validation), then `cotune compress` on it (tolerance 0.5 points,
batches 1 and 256): onnx-fp32, onnx-int8, pruned-75/70/50/25 (width shares; 70% keeps about half the
parameters). Then the search's three best complete trials (as the search trained them, on the training part)
as a soft-voting ensemble, compressed too: its distilled student (the best trial's knobs trained on the
ensemble's probabilities, early-stopped on validation) against the ensemble and against the best single trial
model. Test accuracy on the 1,000 MNIST-1D test rows; latency is
compress's own measurement (ONNX Runtime and PyTorch eager, one thread, interleaved, median), run by run.
Prints a markdown table per seed and the acceptance summary.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import cotune
from cotune.bundle import save_ensemble
from cotune.track import write_json


def fit(seed: int, budget: str, out: Path):
    return cotune.fit("mnist1d", budget=budget, workers=2, out=out,
                      overrides=["model.family=cnn1d", f"search.seed={seed}", f"runtime.seed={seed}", "search.top_k=1"])


def top_ensemble(search: Path, out: Path, k: int = 3) -> tuple[Path, list]:
    """out/: a search-like directory whose final/ is the soft-voting ensemble of the k best complete trials."""
    trials = pd.read_csv(search / "trials.csv")
    done = trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=False)
    dirs = [search / "trials" / f"{int(n):05d}" for n in done["number"]]
    dirs = [d for d in dirs if (d / "model.safetensors").is_file()][:k]
    out.mkdir(parents=True)
    write_json(out / "fit.json", {"finished": True, "members": [d.name for d in dirs]})
    save_ensemble(out / "final", dirs)
    shutil.copy2(dirs[0] / "config.json", out / "final" / "config.json")
    return out, dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--prune", default="0.75,0.7,0.5,0.25", help="width shares of the pruned variants (0.7: about half the parameters)")
    ap.add_argument("--resume", action="store_true", help="reuse the seeds already in .bench-out/compress_mnist1d.json")
    ap.add_argument("--reuse", type=Path, help="a kept work directory: redo only the ensemble side on its searches")
    args = ap.parse_args()
    work = args.reuse or Path(tempfile.mkdtemp(prefix="compress-bench-"))
    old = {r["seed"]: r for r in json.loads(Path(".bench-out/compress_mnist1d.json").read_text())} if args.reuse else {}
    saved = Path(".bench-out/compress_mnist1d.json")
    results = [r for r in json.loads(saved.read_text()) if r["seed"] in args.seeds] if args.resume and saved.is_file() else []
    if args.reuse:
        shutil.copy2(saved, saved.with_name("compress_mnist1d-before-reuse.json"))
    for seed in args.seeds:
        if any(r["seed"] == seed for r in results):
            continue
        t0 = time.time()
        search = work / f"s{seed}"
        if args.reuse:
            trials, single_rows, chosen = old[seed]["trials"], old[seed]["final"], old[seed]["chosen"]
            shutil.rmtree(work / f"e{seed}")
        else:
            res = fit(seed, args.budget, search)
            single = cotune.compress(search, tolerance=0.5, batches=(1, 256), keeps=args.prune)
            trials, single_rows, chosen = res.counts.get("COMPLETE"), single.rows, single.chosen
        ens_dir, dirs = top_ensemble(search, work / f"e{seed}")
        ens = cotune.compress(ens_dir, tolerance=0.5, batches=(1, 256), keeps=())
        members = [json.loads((d / "metrics.json").read_text())["test"]["accuracy"] for d in dirs]
        member_val = [json.loads((d / "metrics.json").read_text())["val"]["accuracy"] for d in dirs]
        best_single = members[int(np.argmax(member_val))]
        r = {"seed": seed, "trials": trials, "seconds": round(time.time() - t0), "final": single_rows,
             "ensemble": ens.rows, "best_single_test": best_single, "chosen": chosen, "ens_chosen": ens.chosen,
             "members_params": [json.loads((d / "model.json").read_text())["n_params"] for d in dirs]}
        results.append(r)
        saved.parent.mkdir(exist_ok=True)
        saved.write_text(json.dumps(results, indent=1, default=str))
        print(f"\n### seed {seed}: {r['trials']} complete trials, final {row_of(single_rows, 'torch')['params']} params; "
              f"chosen {chosen} (ensemble side: {ens.chosen}; members {r['members_params']} params)")
        print("| variant | params | bytes | ms @1 | ms @256 | val acc | test acc |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for x in single_rows + [dict(v, variant="ensemble " + v["variant"]) for v in ens.rows]:
            print(f"| {x['variant']} | {x['params']:,} | {x['bytes']:,} | {x['latency_ms_b1']:.3f} | "
                  f"{x['latency_ms_b256']:.3f} | {x['val_accuracy']:.4f} | {x['test_accuracy']:.4f} |")
        print(f"best single trial model (of the ensemble's members, by validation): test {best_single:.4f}")
    print("\n## acceptance (3 seeds)")

    def stat(values):
        return f"{statistics.mean(values):+.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else f"{values[0]:+.2f}"
    for label, fn in (
            ("int8 bytes / fp32 bytes", lambda r: row_of(r["final"], "onnx-int8")["bytes"] / row_of(r["final"], "onnx-fp32")["bytes"]),
            ("int8 test points lost", lambda r: 100 * (row_of(r["final"], "onnx-fp32")["test_accuracy"] - row_of(r["final"], "onnx-int8")["test_accuracy"])),
            ("pruned-50 params / original", lambda r: row_of(r["final"], "pruned-50")["params"] / row_of(r["final"], "torch")["params"]),
            ("pruned-50 test points lost", lambda r: 100 * (row_of(r["final"], "torch")["test_accuracy"] - row_of(r["final"], "pruned-50")["test_accuracy"])),
            ("pruned-75 test points lost", lambda r: 100 * (row_of(r["final"], "torch")["test_accuracy"] - row_of(r["final"], "pruned-75")["test_accuracy"])),
            ("pruned-70 params / original", lambda r: row_of(r["final"], "pruned-70")["params"] / row_of(r["final"], "torch")["params"]),
            ("pruned-70 test points lost", lambda r: 100 * (row_of(r["final"], "torch")["test_accuracy"] - row_of(r["final"], "pruned-70")["test_accuracy"])),
            ("ensemble - student test points", lambda r: 100 * (row_of(r["ensemble"], "torch")["test_accuracy"] - row_of(r["ensemble"], "distilled")["test_accuracy"])),
            ("student - best single test points", lambda r: 100 * (row_of(r["ensemble"], "distilled")["test_accuracy"] - r["best_single_test"])),
            ("student / ensemble latency @256 (ONNX)", lambda r: row_of(r["ensemble"], "distilled")["latency_ms_b256"] / row_of(r["ensemble"], "onnx-fp32")["latency_ms_b256"]),
            ("int8 / fp32 latency @256", lambda r: row_of(r["final"], "onnx-int8")["latency_ms_b256"] / row_of(r["final"], "onnx-fp32")["latency_ms_b256"]),
            ("int8 / fp32 latency @1", lambda r: row_of(r["final"], "onnx-int8")["latency_ms_b1"] / row_of(r["final"], "onnx-fp32")["latency_ms_b1"]),
            ("onnx-fp32 / torch latency @1", lambda r: row_of(r["final"], "onnx-fp32")["latency_ms_b1"] / row_of(r["final"], "torch")["latency_ms_b1"]),
            ("onnx-fp32 / torch latency @256", lambda r: row_of(r["final"], "onnx-fp32")["latency_ms_b256"] / row_of(r["final"], "torch")["latency_ms_b256"])):
        vals = []
        for r in results:
            try:
                vals.append(float(fn(r)))
            except StopIteration:
                pass
        per = ", ".join(f"{v:.3f}" for v in vals)
        print(f"| {label} | {per} | {stat(vals) if vals else 'n/a'} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory: {work}")


def row_of(rows: list, name: str) -> dict:
    return next(r for r in rows if r["variant"] == name)


if __name__ == "__main__":
    main()
