"""cotune: co-optimize a dataset and the training of a neural network on it.

    import cotune
    result = cotune.train("run.yaml", out="runs/a")      # one run with fixed knobs
    cotune.load(result.path).predict(new_rows)

Importing cotune is light (no torch): each API function imports what it needs when called.
"""
import sys as _sys
import types as _types

__version__ = "0.1.0"

from cotune.api import audit, compress, demo, explain, fit, label_next, load, predict, scale, train  # noqa: E402
from cotune.config import RunConfig, load_config  # noqa: E402
from cotune.errors import BundleError, ConfigError, CotuneError, DataError, ModelError  # noqa: E402

__all__ = ["RunConfig", "load_config", "train", "audit", "fit", "scale", "compress", "explain", "label_next", "load", "predict", "demo",
           "CotuneError", "ConfigError", "DataError", "ModelError", "BundleError", "__version__"]


class _Package(_types.ModuleType):
    """Keeps `cotune.train`, `cotune.scale`, `cotune.compress` and `cotune.explain` the API functions after the
    modules `cotune/train.py`, `cotune/scale/`, `cotune/compress/` and `cotune/explain/` are imported (Python binds
    an imported submodule as an attribute of its package). Import those with `from cotune.train import train`,
    `from cotune.scale.study import scale`, `from cotune.compress.core import compress`,
    `from cotune.explain.core import explain`."""

    def __setattr__(self, name, value):
        if name in ("train", "scale", "compress", "explain") and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
