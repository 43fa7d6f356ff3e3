"""TrainingSet: what a run trains on, after split, fraction, cleaning, preprocessing and balancing (pipeline.prepare)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cotune.data.preprocess import Preprocessor, TargetTransform


@dataclass
class TrainingSet:
    """What the model trains on, after split, fraction, cleaning, preprocessing and balancing."""
    X: np.ndarray                   # (N, *in_shape) float32, preprocessed, for ALL rows of the dataset
    y: np.ndarray                   # (N,) targets of all rows (regression: through `target`)
    train_X: np.ndarray             # training rows (after clean / balance / SMOTE)
    train_y: np.ndarray
    weights: np.ndarray | None      # per training row loss weights
    sampling: np.ndarray | None     # per training row batch sampling weights
    val: np.ndarray                 # dataset rows
    test: np.ndarray
    pre: Preprocessor
    y_mean: float                   # regression: the standardization of the transformed target (y_std
    y_std: float                    # multiplies the model's outputs); 0 / 1 for classification
    loss: str | None                # balance='focal' sets the loss
    report: object | None           # the AuditReport when cleaning needed one
    summary: dict                   # what was done to the data, for metrics.json and the report
    target: TargetTransform | None = None  # regression: targets -> what the model learns, and back
    train_idx: np.ndarray | None = None     # dataset rows of the training part after cleaning, before balancing
    train_labels: np.ndarray | None = None  # their labels after cleaning (relabel), unscaled, aligned with train_idx
    val_labels: np.ndarray | None = None    # the validation rows' labels after data.clean.val, unscaled, aligned with val
    train_rows: np.ndarray | None = None    # the dataset row of each training row (train_X's order); -1 for a synthetic one
    source: object | None = None            # model.init_from's Bundle: its preprocessing is `pre`, its weights the model's
