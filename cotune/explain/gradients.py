"""Integrated gradients (captum) for sequence and image models, with respect to the preprocessed input.

    attr, gap = integrated_gradients(model, feats, targets, n_steps=32)

The attribution of input element i for row x is (x_i - b_i) times the average gradient of the target output along
the straight path from the baseline b to x (Gauss-Legendre quadrature over n_steps points, captum's default). The
target output is the logit of a class (explain: the predicted one) or a regressor's single output. Completeness:
the attributions of a row sum to f(x) - f(b) up to the quadrature error, which `gap` reports per row.

Baselines: 'zero' is zero in preprocessed units, which for cotune's per-channel standardization is each channel's
training mean; 'mean' is the mean preprocessed input over the explained rows, position by position.
"""
from __future__ import annotations

import numpy as np

from cotune.errors import BundleError

BASELINES = ("zero", "mean")
CALL_ROWS = 4096  # rows x steps per forward / backward pass


def need_captum():
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise BundleError("cotune explain needs captum for sequence and image models; install it with "
                          "pip install 'cotune[explain]'.") from None
    return IntegratedGradients


def integrated_gradients(model, feats: np.ndarray, targets: np.ndarray | None, *, n_steps: int = 32,
                         baseline: str = "zero") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions (N, *in_shape), gap (N,): sum of a row's attributions - (f(x) - f(b)), and f(x) - f(b) (N,)).

    feats: preprocessed inputs (N, *in_shape) float32. targets: (N,) class codes whose logit is explained, or None
    for a model with one output (regression). The model runs in eval mode, on the CPU, in float32."""
    import torch
    IntegratedGradients = need_captum()
    x = torch.as_tensor(np.ascontiguousarray(feats, dtype=np.float32))
    base = torch.zeros_like(x[:1]) if baseline == "zero" else x.mean(0, keepdim=True)
    was_training = model.training
    model.eval()
    ig = IntegratedGradients(model)
    step = max(1, CALL_ROWS // n_steps)
    attrs, gaps = [], []
    try:
        for i in range(0, len(x), step):
            xc = x[i:i + step]
            tc = 0 if targets is None else torch.as_tensor(np.asarray(targets[i:i + step], dtype=np.int64))
            a, gap = ig.attribute(xc, baselines=base.expand_as(xc), target=tc, n_steps=n_steps,
                                  return_convergence_delta=True)
            attrs.append(a.detach())
            gaps.append(gap.detach().reshape(-1))
    finally:
        model.train(was_training)
    attr = torch.cat(attrs).numpy() if attrs else np.zeros_like(feats, dtype=np.float32)
    gap = torch.cat(gaps).numpy().astype(np.float64) if gaps else np.zeros(0)
    total = attr.reshape(len(attr), -1).sum(1).astype(np.float64)
    return attr, gap, total - gap


def explain_predictor(predictor, X: np.ndarray, targets: np.ndarray | None, *, n_steps: int, baseline: str):
    """Attributions for a Bundle or an Ensemble on raw rows X: (attributions, gap, f(x) - f(b), note).

    An ensemble's are the mean over its members, each member's on its own preprocessed input and its own output
    for the same target (the ensemble's predicted class); members whose inputs differ in shape cannot be averaged,
    and then only the first member is explained. The note says which was done."""
    members = getattr(predictor, "members", None) or [predictor]
    shapes = {tuple(m.spec.in_shape) for m in members}
    if len(members) > 1 and len(shapes) > 1:
        members, note = members[:1], (f"the first of the ensemble's {len(predictor.members)} members (their inputs "
                                       "differ in shape, so their attributions cannot be averaged)")
    else:
        note = (f"the mean over the ensemble's {len(members)} members, each on its own preprocessed input, for the "
                "ensemble's predicted class") if len(members) > 1 else "the model"
    parts = [integrated_gradients(m.model, m.pre.transform(m._features(X)), targets, n_steps=n_steps,
                                  baseline=baseline) for m in members]
    return (np.mean([p[0] for p in parts], axis=0), np.mean([p[1] for p in parts], axis=0),
            np.mean([p[2] for p in parts], axis=0), note)


def per_position(attr: np.ndarray) -> np.ndarray:
    """Mean over the rows of |attribution| summed over the channels: (L,) for sequences (N, C, L), (H, W) for
    images (N, C, H, W)."""
    return np.abs(attr).sum(axis=1).mean(axis=0)


def pick_examples(predicted: np.ndarray | None, n_rows: int, n: int) -> list[int]:
    """Up to n of the n_rows row positions: one per predicted class first (in row order), then the next rows."""
    chosen = []
    if predicted is not None:
        seen = set()
        for i, p in enumerate(predicted):
            if len(chosen) < n and p not in seen:
                chosen.append(i)
                seen.add(p)
    chosen += [i for i in range(n_rows) if i not in chosen][:max(0, n - len(chosen))]
    return sorted(chosen)
