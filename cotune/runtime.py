"""Device, precision, threads and seeds: resolved once, logged, then used everywhere.

    rt = Runtime.resolve(device="auto", precision="auto", threads=1)
    with rt.autocast():   # bf16 on CUDA when asked, a no-op context on CPU fp32
        loss = model(x)

"auto" is decided here and nowhere else; the result goes into env.json of every run.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch

from cotune.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"        # 'cpu' or 'cuda' (or 'cuda:N')
    precision: str = "fp32"    # 'fp32' or 'bf16' (autocast; weights stay fp32)
    threads: int = 1           # torch intra-op threads in this process
    compile: bool = False      # torch.compile the model

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", threads: int = 1, compile: bool = False) -> "Runtime":
        has_cuda = torch.cuda.is_available()
        if device == "auto":
            device = "cuda" if has_cuda else "cpu"
        elif device.startswith("cuda") and not has_cuda:
            raise ConfigError("runtime.device is 'cuda' but no CUDA device is visible; use runtime.device=auto or cpu.")
        if precision == "auto":
            precision = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
        elif precision == "bf16" and not device.startswith("cuda"):
            raise ConfigError("runtime.precision=bf16 is only used on CUDA (bf16 autocast on CPU is slower here); use auto or fp32.")
        torch.set_num_threads(threads)
        return cls(device=device, precision=precision, threads=threads, compile=compile)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def seed(self, seed: int) -> None:
        """torch.manual_seed for the generators this runtime draws from: the CPU's, and the GPUs' on CUDA. torch's
        own also queues seeds for every device type not yet in use, with a stack trace each (0.5-3 ms a call)."""
        torch.default_generator.manual_seed(seed)
        if self.is_cuda:
            torch.cuda.manual_seed_all(seed)

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def info(self) -> dict:
        """Everything needed to know where a number came from, for env.json."""
        d = asdict(self)
        d.update(torch=torch.__version__, python=sys.version.split()[0], platform=platform.platform(),
                 cpu_count=os.cpu_count(), cuda_device=torch.cuda.get_device_name() if self.is_cuda else None)
        return d


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global RNG. cotune's own sampling uses explicit generators."""
    import numpy as np
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def versions() -> dict:
    import importlib.metadata as md
    out = {}
    for pkg in ("cotune", "torch", "numpy", "pandas", "scikit-learn", "pydantic", "safetensors", "mnist1d"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


class Timer:
    """Wall-clock timer that synchronizes CUDA before reading, so timings include queued kernels."""

    def __init__(self, runtime: Runtime | None = None):
        self.runtime = runtime
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        if self.runtime is not None:
            self.runtime.synchronize()
        return time.perf_counter() - self.start
