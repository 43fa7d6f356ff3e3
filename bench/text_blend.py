"""How much a cotune text model and TF-IDF + LogisticRegression know that the other does not, on fortunes.

    bash scripts/install_fortunes.sh
    OMP_NUM_THREADS=1 .venv/bin/python bench/text_blend.py --seed 0 --budget 4m --out runs/bench-text-blend

One seed of bench/text_fortunes.py's protocol (the same rows, split, baseline pipeline and C grid, and the same
`cotune fit` command). Both sides then predict class probabilities for the test rows (cotune through
`cotune predict`), and the script prints:
  - each side's test accuracy, and the paired counts: rows only the baseline gets right, only cotune, both, neither;
  - the test accuracy of blends of the two probability vectors at fixed weights on the baseline (0.25, 0.5, 0.75),
    arithmetic (w P_lr + (1 - w) P_net) and geometric (argmax of w log P_lr + (1 - w) log P_net).
Every weight is printed: none is chosen, since only test rows are left to choose on (the baseline is refitted on
train + validation). It is a diagnostic of how far an ensemble with a linear model could go, not a method.
--out/blend.json holds the figures.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_fortunes as tf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default="4m", help="cotune fit --budget")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-text-blend"))
    ap.add_argument("--fortunes", type=Path, default=tf.FORTUNES)
    args = ap.parse_args()
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    args.out.mkdir(parents=True, exist_ok=True)
    df = tf.pick_classes(tf.load_fortunes(args.fortunes)[0], 300, 8)
    df["split"] = tf.split_column(df["category"].to_numpy(), args.seed)
    csv, test_csv = args.out / "data.csv", args.out / "test.csv"
    df.to_csv(csv, index=False)
    fit, test = df[df["split"] != "test"], df[df["split"] == "test"]
    test.drop(columns=["category", "split"]).to_csv(test_csv, index=False)
    y = test["category"].to_numpy()

    gs = GridSearchCV(tf.make_pipeline("word+char"), {"clf__C": list(tf.C_GRID)}, scoring="accuracy", n_jobs=1,
                      cv=StratifiedKFold(3, shuffle=True, random_state=args.seed))
    gs.fit(fit["text"].tolist(), fit["category"].to_numpy())
    classes, p_lr = gs.classes_, gs.predict_proba(test["text"].tolist())

    run = args.out / "cotune"
    subprocess.run(tf.cotune_command(csv, run, args.budget, args.seed, []), check=True)
    exe = Path(sys.executable).parent / "cotune"
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "cotune.cli"]
    subprocess.run([*head, "predict", str(run), str(test_csv), "--out", str(args.out / "pred.csv")], check=True,
                   stdout=subprocess.DEVNULL)
    p_net = pd.read_csv(args.out / "pred.csv")[[f"proba_{c}" for c in classes]].to_numpy()

    right_lr, right_net = classes[p_lr.argmax(1)] == y, classes[p_net.argmax(1)] == y
    res = {"seed": args.seed, "budget": args.budget, "C": gs.best_params_["clf__C"], "test_rows": int(len(y)),
           "lr": float(right_lr.mean()), "cotune": float(right_net.mean()),
           "only_lr": int((right_lr & ~right_net).sum()), "only_cotune": int((right_net & ~right_lr).sum()),
           "both": int((right_lr & right_net).sum()), "neither": int((~right_lr & ~right_net).sum()),
           "final": json.loads((run / "fit.json").read_text()).get("final", {}).get("summary"), "blends": []}
    for w in (0.25, 0.5, 0.75):
        arith = classes[(w * p_lr + (1 - w) * p_net).argmax(1)] == y
        geo = classes[(w * np.log(p_lr + 1e-12) + (1 - w) * np.log(p_net + 1e-12)).argmax(1)] == y
        res["blends"].append({"w_lr": w, "arithmetic": float(arith.mean()), "geometric": float(geo.mean())})
    (args.out / "blend.json").write_text(json.dumps(res, indent=2))
    print(f"seed {args.seed}: TF-IDF + LR (C={res['C']}) {100 * res['lr']:.2f}%, cotune {100 * res['cotune']:.2f}% "
          f"({res['final']})")
    print(f"test rows: only LR right {res['only_lr']}, only cotune {res['only_cotune']}, both {res['both']}, "
          f"neither {res['neither']}")
    print("| w on LR | arithmetic blend % | geometric blend % |\n|---:|---:|---:|")
    for b in res["blends"]:
        print(f"| {b['w_lr']} | {100 * b['arithmetic']:.2f} | {100 * b['geometric']:.2f} |")


if __name__ == "__main__":
    main()
