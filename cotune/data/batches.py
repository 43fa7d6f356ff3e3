"""Tensors for training: the whole split on the device when it fits, batches are index slices.

Slicing a resident tensor with an index vector costs one gather kernel; a DataLoader costs a
Python call per sample plus a host-to-device copy per batch. On CPU the arrays already live in
memory, so TensorData is a thin holder there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEVICE_FRACTION = 0.5  # keep data on the GPU only when it takes under half of the free memory


@dataclass(frozen=True)
class TensorData:
    X: torch.Tensor              # (N, *in_shape) float32
    y: torch.Tensor              # (N,) int64 class codes or float32 values
    w: torch.Tensor | None = None  # (N,) per-sample loss weights, None = uniform

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def device(self) -> torch.device:
        return self.X.device

    @classmethod
    def from_numpy(cls, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, device: str = "cpu") -> "TensorData":
        """Put arrays on `device` if they fit there, else keep them in (pinned) host memory."""
        X_t = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        y_t = torch.as_tensor(np.ascontiguousarray(y))
        w_t = None if w is None else torch.as_tensor(np.ascontiguousarray(w, dtype=np.float32))
        if device.startswith("cuda"):
            nbytes = X_t.nbytes + y_t.nbytes + (0 if w_t is None else w_t.nbytes)
            free, _ = torch.cuda.mem_get_info()
            if nbytes < DEVICE_FRACTION * free:
                X_t, y_t = X_t.to(device), y_t.to(device)
                w_t = None if w_t is None else w_t.to(device)
            else:
                X_t, y_t = X_t.pin_memory(), y_t.pin_memory()
                w_t = None if w_t is None else w_t.pin_memory()
        return cls(X_t, y_t, w_t)
