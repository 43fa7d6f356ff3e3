"""Training-loop overhead: cotune's train() versus a minimal hand-written PyTorch loop and
Lightning's Trainer, on the same model, data and optimizer, interleaved in one process.

    .venv/bin/python bench/loop_overhead.py                 # CPU, 1 thread
    .venv/bin/python bench/loop_overhead.py --device cuda   # on a GPU machine

Data: MNIST-1D (4,000 training samples, generated). Models: the paper CNN (5,210 params) and
MLP 100-100 (15,210). Batches 32 and 512. Each measurement trains a fixed number of samples
with Adam and a constant LR, no validation. A round runs each loop `--repeats` times, in turn
(the hand-written loop first in even repeats, cotune first in odd ones, so a load that drifts
favours neither), and keeps each loop's fastest repeat: on a shared machine the one least slowed
by other processes. The table gives the median over `--rounds` rounds of samples/s, cotune /
hand-written of those medians, and that ratio in each round. The load average (os.getloadavg) is
printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from cotune.config import TrainConfig
from cotune.data.batches import TensorData
from cotune.data.sources import load
from cotune.models import create_model
from cotune.runtime import Runtime
from cotune.track import write_json
from cotune.train import train

MODELS = {"cnn": ("cnn1d", dict(width=25, depth=3, kernel_size=5, pool="flatten", dropout=0.0)),
          "mlp": ("mlp", dict(width=100, depth=2, dropout=0.0))}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hand_loop(model, X, y, bs, epochs, lr, device):
    """The minimal loop: resident tensors, randperm, index slices, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = X.shape[0]
    steps = max(1, n // bs if n % bs == 1 else -(-n // bs))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, device=X.device)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return epochs * n / (time.perf_counter() - t0)


def cotune_loop(model, X, y, bs, epochs, lr, device, rt):
    cfg = TrainConfig(optimizer="adam", lr=lr, weight_decay=0.0, schedule="constant", epochs=epochs,
                      batch_size=bs, patience=0, loss="cross_entropy")
    sync(device)
    t0 = time.perf_counter()
    train(model, TensorData(X, y), None, cfg, rt, task="multiclass", seed=0)
    sync(device)
    return epochs * X.shape[0] / (time.perf_counter() - t0)


def lightning_loop(model, X, y, bs, epochs, lr, device):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    dl = DataLoader(TensorDataset(X.cpu(), y.cpu()), batch_size=bs, shuffle=True)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    sync(device)
    t0 = time.perf_counter()
    trainer.fit(Module(), dl)
    sync(device)
    return epochs * X.shape[0] / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=60_000, help="training samples per measurement at batch 32 (x4 at 512)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each loop per round; the fastest counts")
    ap.add_argument("--models", default="cnn,mlp", help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--no-lightning", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rt = Runtime.resolve(args.device, "fp32", args.threads)
    ds = load("mnist1d")
    tr = ds.split == "train"
    X = torch.as_tensor(ds.X[tr]).to(args.device)  # (4000, 1, 40)
    y = torch.as_tensor(ds.y[tr]).to(args.device)
    if args.rounds < 1 or args.repeats < 1:
        ap.error("--rounds and --repeats must be at least 1")
    models = args.models.split(",")
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models {args.models!r}: choose from {', '.join(MODELS)}")
    loops = ["hand", "cotune"] + ([] if args.no_lightning else ["lightning"])
    rows, load_before = [], tuple(round(v, 2) for v in os.getloadavg())
    print(f"device={rt.device} threads={args.threads} torch={torch.__version__} rounds={args.rounds} repeats={args.repeats}")
    for mname in models:
        family, kw = MODELS[mname]
        for bs in (32, 512):
            epochs = max(1, (args.samples * (4 if bs == 512 else 1)) // X.shape[0])
            fresh = lambda: create_model(family, (1, 40), 10, **kw).to(args.device)  # noqa: E731

            def measure(loop: str, ep: int) -> float:
                torch.manual_seed(0)
                if loop == "hand":
                    return hand_loop(fresh(), X, y, bs, ep, 1e-3, args.device)
                if loop == "cotune":
                    return cotune_loop(fresh(), X, y, bs, ep, 1e-3, args.device, rt)
                return lightning_loop(fresh(), X, y, bs, ep, 1e-3, args.device)

            measure("hand", 1), measure("cotune", 1)  # warm-up
            res = {k: [] for k in loops}
            for _ in range(args.rounds):
                best = {k: 0.0 for k in loops}
                for j in range(args.repeats):
                    for k in (loops if j % 2 == 0 else ["cotune", "hand", *loops[2:]]):
                        best[k] = max(best[k], measure(k, epochs))
                for k in loops:
                    res[k].append(best[k])
            row = {"model": mname, "batch": bs, "epochs": epochs}
            for k in loops:
                row[f"{k}_samples_s"] = round(statistics.median(res[k]))
            for k in loops[1:]:
                row[f"{k}_vs_hand"] = round(statistics.median(res[k]) / statistics.median(res["hand"]), 3)
                row[f"{k}_vs_hand_per_round"] = [round(a / h, 3) for a, h in zip(res[k], res["hand"])]
            rows.append(row)
            print(json.dumps(row), flush=True)
    load_after = tuple(round(v, 2) for v in os.getloadavg())
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    names = {"cotune": "cotune", "lightning": "Lightning"}
    head = "| model | batch | hand-written samples/s |" + "".join(
        f" {names[k]} samples/s | {names[k]} / hand | per round (min-max) |" for k in loops[1:])
    print("\n" + head + "\n" + "| --- " * head.count(" |") + "|")
    for r in rows:
        cells = [r["model"], r["batch"], f"{r['hand_samples_s']:,}"]
        for k in loops[1:]:
            per = r[f"{k}_vs_hand_per_round"]
            cells += [f"{r[f'{k}_samples_s']:,}", f"{r[f'{k}_vs_hand']:.3f}",
                      f"{' '.join(f'{v:.3f}' for v in per)} ({min(per):.3f}-{max(per):.3f})"]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        write_json(args.json, {"args": vars(args), "load_before": load_before, "load_after": load_after, "rows": rows})


if __name__ == "__main__":
    main()
