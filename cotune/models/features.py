"""What a model makes of its input: the penultimate layer's activations (the input of its output layer).

Every registered family ends in one output layer: an nn.Linear (mlp, cnn1d, cnn2d, gru, lstm, transformer)
or, for an mlp ensemble, the per-member EnsembleHead; it is the last linear layer a forward pass runs.
Forward hooks on the linear layers read its input, so no family needs code of its own:

    emb = penultimate(model, X)   # (N, D): D = the output layer's input width (k x it for a k-member ensemble)

Active learning measures diversity with these (k-center greedy: rows far from everything labeled).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cotune.models.embeddings import EnsembleHead

EVAL_BATCH = 4096


def _linear_layers(model: nn.Module) -> list:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, EnsembleHead))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linear output layer to read the penultimate activations at")
    return layers


@torch.no_grad()
def _run(model: nn.Module, X: torch.Tensor, batch_size: int):
    """(the output layer, its flattened inputs per batch): the last linear layer each forward pass ran."""
    last: list = []
    hooks = [m.register_forward_hook(lambda mod, args, out: last.append((mod, args[0]))) for m in _linear_layers(model)]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    layer, seen = None, []
    try:
        for i in range(0, X.shape[0], batch_size):
            last.clear()
            model(X[i:i + batch_size].to(dev))
            layer, inp = last[-1]
            seen.append(inp.detach().flatten(1).float().cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return layer, seen


def output_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The layer that makes the model's outputs: the last nn.Linear or EnsembleHead a forward pass on x runs."""
    return _run(model, x[:1], 1)[0]


def penultimate(model: nn.Module, X: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """(N, D) float32 inputs of the output layer for X (preprocessed, (N, *in_shape)), in eval mode, on CPU."""
    if X.shape[0] == 0:
        return torch.empty(0, 0)
    return torch.cat(_run(model, X, batch_size)[1])
