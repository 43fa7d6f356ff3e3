"""Permutation importance per original input column of a table.

Each raw column is shuffled before preprocessing (so the one-hot columns of a categorical, its embedding code or
its numeric bins move together), the model predicts on the shuffled rows, and the score drop against the rows as
they are is the column's importance: positive means the model relies on the column, about zero that it does not.
A column's n_repeats shuffles are scored from one prediction call over n_repeats x N rows. numpy, pandas and the
predictor only (no torch import here)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cotune.errors import DataError


def permutation_importance(predict, X: pd.DataFrame, y: np.ndarray, metric, task: str, *, n_repeats: int = 5,
                           seed: int = 0, threshold: float | None = None) -> tuple[float, list[dict]]:
    """(the score on X as it is, one dict per column: column, mean, sd, drops), sorted by mean, largest first.

    predict: raw rows -> what cotune.evaluate.score takes (a Predictor's predict_output). metric: a
    cotune.evaluate.Metric; a drop is score(X) - score(shuffled) when the metric is maximized, the reverse when it
    is minimized, so a larger drop always means a more important column. Column j's shuffles are drawn from
    np.random.default_rng([seed, j]): one column's figures do not depend on which other columns are explained.
    sd is the standard deviation over the repeats (ddof=0, as scikit-learn's permutation_importance)."""
    from cotune.evaluate import score
    n = len(X)

    def scored(output) -> float:
        value = score(metric.name, y, output, task, threshold)
        if value is None:
            raise DataError(f"{metric.name} is undefined on these {n} rows (one class only?); explain on more rows, "
                            "or on rows with every class.")
        return float(value)

    base = scored(predict(X))
    X = X.reset_index(drop=True)
    stacked = pd.concat([X] * n_repeats, ignore_index=True)
    out = []
    for j, col in enumerate(X.columns):
        rng = np.random.default_rng([seed, j])
        shuffled = stacked.copy(deep=False)
        shuffled[col] = pd.concat([X[col].iloc[rng.permutation(n)] for _ in range(n_repeats)], ignore_index=True)
        output = np.asarray(predict(shuffled))
        scores = np.array([scored(output[r * n:(r + 1) * n]) for r in range(n_repeats)])
        drops = base - scores if metric.maximize else scores - base
        out.append({"column": str(col), "mean": float(drops.mean()), "sd": float(drops.std()),
                    "drops": [float(d) for d in drops]})
    out.sort(key=lambda r: -r["mean"])
    return base, out


def within_noise(row: dict) -> bool:
    """A column whose shuffles cost no more than two of their own standard deviations (or nothing at all)."""
    return row["mean"] <= 0 or row["mean"] < 2 * row["sd"]
