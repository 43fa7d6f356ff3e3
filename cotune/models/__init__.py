"""Model families behind one timm-style registry: `create_model(name, in_shape, out_dim, **knobs)`.

Importing this package registers every family (mlp, cnn1d, cnn2d, gru, lstm, transformer) and its
sized variants (`<family>_s`, `_m`, `_l`).
"""
from cotune.models.registry import (create_model, factory_knobs, families, head, list_models, model_info,
                                    register_model, searched_families, takes_layout)
from cotune.models import mlp, cnn1d, cnn2d, rnn, transformer  # noqa: F401  (registers the families)

FAMILIES = families()  # the registered families, in registration order

__all__ = ["FAMILIES", "create_model", "factory_knobs", "families", "head", "list_models", "model_info", "register_model",
           "searched_families", "takes_layout"]
