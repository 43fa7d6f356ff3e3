"""Column scalings fitted on the training rows, as plain numbers (JSON-able), and the regression target's transform.

Numeric table columns (`Preprocessor(numeric=...)`), after the train-median imputation:
    standard   (x - mean) / std (std 0 -> 1)
    robust     s * (x - median), s = 1 / IQR, else 2 / (max - min) when the IQR is 0, else 0 (a constant
               column); then the smooth clip f(x) = x / sqrt(1 + (x / 3)^2), so outputs lie in (-3, 3)
    quantile   to a standard normal like sklearn's QuantileTransformer(output_distribution='normal'):
               n_quantiles = max(min(n_train // 30, 1000), 10) reference values, np.interp between them,
               outputs clipped to +-5.2 (a constant column maps to 0)

`bin_edges` gives the piecewise-linear-encoding bins of a transformed column (the layout's `bins`).

Regression targets: `TargetTransform(kind).fit(y_train)`; `transform(y)` -> the float32 values the
model trains on, `inverse(z)` -> float64 target units.
    standard   (y - mean) / std
    log        u = log1p(y - shift), shift = min(min(y_train), 0) (values below the shift count as it),
               then standardized; the inverse clips u to the train range +- 2 std before expm1
    quantile   to a normal distribution (as above), then standardized; the inverse maps back through
               the reference values, so predictions stay inside the training range
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

NUMERIC_METHODS = ("standard", "robust", "quantile")
TARGET_KINDS = ("standard", "log", "quantile")
_BOUND = 1e-7  # sklearn's BOUNDS_THRESHOLD: probabilities are kept in [1e-7, 1 - 1e-7]
_CLIP = float(-ndtri(_BOUND - np.spacing(1)))  # ~5.199
_MAX_LOG = 709.0  # expm1 overflows float64 above ~709.78


def n_quantiles(n: int) -> int:
    return max(min(int(n) // 30, 1000), 10)


def fit_quantiles(v: np.ndarray) -> list[float]:
    """Reference values of a finite column at n_quantiles(len(v)) evenly spaced levels (non-decreasing)."""
    q = np.quantile(np.asarray(v, dtype=np.float64), np.linspace(0.0, 1.0, n_quantiles(len(v))))
    return [float(x) for x in np.maximum.accumulate(q)]


def quantile_forward(x: np.ndarray, quantiles) -> np.ndarray:
    """Finite values -> standard normal scores (float64), through the reference values."""
    q = np.asarray(quantiles, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if q[-1] <= q[0]:  # constant in train
        return np.zeros_like(x)
    refs = np.linspace(0.0, 1.0, len(q))
    # the mean of the interpolations from both ends: repeated reference values map to the middle of their levels
    p = 0.5 * (np.interp(x, q, refs) - np.interp(-x, -q[::-1], -refs[::-1]))
    p[x >= q[-1]] = 1.0
    p[x <= q[0]] = 0.0
    return np.clip(ndtri(p), -_CLIP, _CLIP)


def quantile_inverse(g: np.ndarray, quantiles) -> np.ndarray:
    """Standard normal scores -> values, inside [quantiles[0], quantiles[-1]]."""
    q = np.asarray(quantiles, dtype=np.float64)
    return np.interp(ndtr(np.asarray(g, dtype=np.float64)), np.linspace(0.0, 1.0, len(q)), q)


def robust_scale(v: np.ndarray) -> float:
    """s of the robust scaling: 1 / IQR, else 2 / (max - min), else 0."""
    q25, q75 = np.quantile(v, [0.25, 0.75])
    if q75 - q25 > 0:
        return float(1.0 / (q75 - q25))
    lo, hi = float(np.min(v)), float(np.max(v))
    return float(2.0 / (hi - lo)) if hi > lo else 0.0


def fit_column(method: str, filled: np.ndarray) -> dict:
    """The method's state for one imputed column, beyond median / mean / std."""
    if method == "robust":
        return {"scale": robust_scale(filled)}
    if method == "quantile":
        return {"quantiles": fit_quantiles(filled)}
    return {}


def scale_column(method: str, c: dict, v: np.ndarray) -> np.ndarray:
    """One imputed (finite) column -> its transformed values (float64)."""
    if method == "robust":
        x = c["scale"] * (v - c["median"])
        return x / np.sqrt(1.0 + (x / 3.0) ** 2)
    if method == "quantile":
        return quantile_forward(v, c["quantiles"])
    return (v - c["mean"]) / c["std"]


def bin_edges(t: np.ndarray, n_train: int) -> list[float]:
    """Sorted distinct edges (>= 2) of a transformed training column: its quantiles at n_bins + 1 levels,
    n_bins = min(48, max(2, n_train // 50)), rounded to float32 precision."""
    t = np.asarray(t, dtype=np.float32)
    n_bins = min(48, max(2, int(n_train) // 50))
    edges = np.unique(np.quantile(t.astype(np.float64), np.linspace(0.0, 1.0, n_bins + 1)).astype(np.float32))
    if len(edges) < 2:
        lo = np.float32(t.min())
        edges = np.array([lo, np.float32(lo + np.float32(1.0))], dtype=np.float32)
    return [float(e) for e in edges]


class TargetTransform:
    """The regression target's transform: fit on the training targets, `transform` / `inverse`, JSON-able state."""

    def __init__(self, kind: str = "standard"):
        if kind not in TARGET_KINDS:
            raise ValueError(f"TargetTransform kind must be one of {TARGET_KINDS}, got {kind!r}")
        self.kind = kind
        self.mean, self.std = 0.0, 1.0
        self.shift, self.lo, self.hi = 0.0, -np.inf, np.inf
        self.quantiles: list[float] | None = None

    def fit(self, y) -> "TargetTransform":
        y = np.asarray(y, dtype=np.float64).ravel()
        if len(y) == 0 or not np.isfinite(y).all():
            raise ValueError("TargetTransform.fit needs at least one target value, all finite")
        if self.kind == "log":
            self.shift = min(float(y.min()), 0.0)
        elif self.kind == "quantile":
            self.quantiles = fit_quantiles(y)
        u = self._forward(y)
        self.mean, std = float(u.mean()), float(u.std())
        self.std = std if np.isfinite(std) and std > 0 else 1.0
        if self.kind == "log":
            self.lo, self.hi = float(u.min() - 2 * self.std), float(min(u.max() + 2 * self.std, _MAX_LOG))
        return self

    def _forward(self, y: np.ndarray) -> np.ndarray:
        if self.kind == "log":
            return np.log1p(np.maximum(y - self.shift, 0.0))
        if self.kind == "quantile":
            return quantile_forward(y, self.quantiles)
        return y

    def transform(self, y) -> np.ndarray:
        """Targets -> the standardized values the model trains on (float32)."""
        u = self._forward(np.asarray(y, dtype=np.float64))
        return ((u - self.mean) / self.std).astype(np.float32)

    def inverse(self, z) -> np.ndarray:
        """Model outputs, (N,) or (N, 1) -> (N,) float64 values in target units."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim == 2 and z.shape[1] == 1:
            z = z[:, 0]
        if z.ndim != 1:
            raise ValueError(f"TargetTransform.inverse takes (N,) or (N, 1) outputs, got shape {z.shape}")
        u = z * self.std + self.mean
        if self.kind == "log":
            return np.expm1(np.clip(u, self.lo, self.hi)) + self.shift
        if self.kind == "quantile":
            return quantile_inverse(u, self.quantiles)
        return u

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "mean": self.mean, "std": self.std}
        if self.kind == "log":
            d.update(shift=self.shift, lo=self.lo, hi=self.hi)
        elif self.kind == "quantile":
            d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TargetTransform":
        t = cls(str(d["kind"]))
        t.mean, t.std = float(d["mean"]), float(d["std"])
        if t.kind == "log":
            t.shift, t.lo, t.hi = float(d["shift"]), float(d["lo"]), float(d["hi"])
        elif t.kind == "quantile":
            t.quantiles = [float(v) for v in d["quantiles"]]
            if len(t.quantiles) < 2:
                raise ValueError("a quantile target transform needs at least 2 reference values")
        if not (np.isfinite([t.mean, t.std, t.shift]).all() and t.std > 0):
            raise ValueError("the target transform's statistics must be finite, with std > 0")
        return t

    def __repr__(self) -> str:
        return f"TargetTransform({self.kind!r})"
