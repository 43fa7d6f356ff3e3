"""Adversarial training on MNIST-1D (cnn1d): robust and clean test accuracy against standard training.

    OMP_NUM_THREADS=1 .venv/bin/python bench/adversarial_mnist1d.py --eps 0.1 --seeds 0 1 2 --json .bench-out/adv.json

Both sides: `cotune.train` with the search's sequence start configuration (cnn1d depth 4, batch norm, kernel 7, batch
64, the modality's augmentations, 30 epochs, early stopping on validation accuracy), the default MNIST-1D split, one
thread; the adversarial side adds train.adversarial (pgd, --steps steps, half of each batch). Both report test
accuracy and robust_accuracy: a 10-step PGD attack (random start, step 2.5 eps / 10) within --eps, L-inf, in the
standardized input units the model sees. Target: robust accuracy +15 points or more, clean accuracy within 2 points
(means over the seeds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cotune

START = {"model.family": "cnn1d", "model.depth": 4, "model.norm": "batch", "model.kernel_size": 7,
         "train.batch_size": 64, "data.augment.policy": "auto", "train.epochs": 30}


def one(seed: int, eps: float, method: str, steps: int, mix: float = 0.5, extra: dict | None = None) -> dict:
    sets = {**START, **(extra or {}), "data.source": "mnist1d", "runtime.seed": seed, "runtime.threads": 1, "runtime.progress": False,
            "train.adv_epsilon": eps, "train.adversarial": method, "train.adv_steps": steps, "train.adv_mix": mix}
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        res = cotune.train(out=str(Path(d) / "r"), overrides=[f"{k}={v}" for k, v in sets.items()], checkpoint=False)
        return {"clean": res.test["accuracy"], "robust": res.test["robust_accuracy"], "seconds": time.time() - t,
                "epochs": res.train.epochs_run}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--method", default="pgd", choices=["pgd", "fgsm"])
    ap.add_argument("--mix", type=float, default=0.5, help="train.adv_mix: the attacked share of each batch")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a knob for both sides over the start configuration (repeatable), e.g. model.width=128")
    args = ap.parse_args()
    extra = dict(s.split("=", 1) for s in args.set)
    out: dict = {"standard": [], args.method: []}
    for seed in args.seeds:
        for side, method in (("standard", "none"), (args.method, args.method)):
            r = one(seed, args.eps, method, args.steps, args.mix, extra)
            out[side].append(r)
            print(f"seed {seed} {side:8s} clean {100 * r['clean']:.1f}%  robust {100 * r['robust']:.1f}%  "
                  f"({r['epochs']} epochs, {r['seconds']:.0f} s)", flush=True)
    print(f"\neps {args.eps} (L-inf, standardized inputs), {args.method} {args.steps} steps on {args.mix:g} of each batch, "
          f"robust = 10-step PGD; mean +/- sd over seeds {args.seeds}; knobs {extra or 'as the start'}")
    for side, rs in out.items():
        c, r = [100 * x["clean"] for x in rs], [100 * x["robust"] for x in rs]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
        print(f"| {side} | {statistics.mean(c):.2f} +/- {sd(c):.2f} | {statistics.mean(r):.2f} +/- {sd(r):.2f} | "
              f"{statistics.mean(x['seconds'] for x in rs):.0f} s |")
    gain = statistics.mean(100 * x["robust"] for x in out[args.method]) - statistics.mean(100 * x["robust"] for x in out["standard"])
    drop = statistics.mean(100 * x["clean"] for x in out["standard"]) - statistics.mean(100 * x["clean"] for x in out[args.method])
    print(f"robust accuracy gain {gain:+.1f} points (target >= 15), clean accuracy drop {drop:+.1f} points (target <= 2)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
