"""Small ResNet for images (C, H, W). Knobs: width (stem channels; stage i has width * 2**i, capped at
8 * width), depth (residual stages; stage i > 0 halves H and W), dropout (before the head), norm
('batch' = BatchNorm2d, 'layer' = GroupNorm(1, C), 'none' = no norm layers), activation, pool ('auto'
or 'mean' = global average pool, 'flatten' = flatten the final feature map). Ignored: kernel_size
(convs are 3x3), bidirectional, heads and the mlp-only num_embedding, embedding_dim, ensemble."""
from __future__ import annotations

import torch
import torch.nn as nn

from cotune.models.registry import act_layer, check_knobs, check_pool, register_model


def norm2d(norm: str, ch: int) -> nn.Module:
    return {"none": nn.Identity, "batch": lambda: nn.BatchNorm2d(ch), "layer": lambda: nn.GroupNorm(1, ch)}[norm]()


def conv(cin: int, cout: int, k: int, stride: int, norm: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=norm == "none")  # norm adds its own bias


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> act -> conv3x3 -> norm, plus identity (or 1x1 conv) shortcut, then act."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, activation: str):
        super().__init__()
        self.body = nn.Sequential(conv(cin, cout, 3, stride, norm), norm2d(norm, cout), act_layer(activation),
                                  conv(cout, cout, 3, 1, norm), norm2d(norm, cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Sequential(conv(cin, cout, 1, stride, norm), norm2d(norm, cout)))
        self.act = act_layer(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H', W')
        return self.act(self.body(x) + self.shortcut(x))


class CNN2D(nn.Module):
    """Stem conv3x3 -> `depth` residual stages -> pool -> dropout -> Linear."""

    head_name = "head"  # the output layer (registry.head)

    def __init__(self, in_shape: tuple, out_dim: int, width: int, depth: int, dropout: float, norm: str,
                 activation: str, pool: str):
        super().__init__()
        c, h, w = in_shape
        layers = [conv(c, width, 3, 1, norm), norm2d(norm, width), act_layer(activation)]
        ch = width
        for i in range(depth):
            out, stride = min(width * 2 ** i, 8 * width), 1 if i == 0 else 2
            layers.append(BasicBlock(ch, out, stride, norm, activation))
            ch = out
            if stride == 2:
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.flatten = pool == "flatten"
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(ch * (h * w if self.flatten else 1), out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, ch, H', W')
        f = f.flatten(1) if self.flatten else f.mean(dim=(2, 3))  # (B, ch * H' * W') or (B, ch)
        return self.head(f)  # (B, out_dim)


@register_model(modalities=("image",), searched=("image",))
def cnn2d(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """Small ResNet-style 2-D CNN with global average pooling."""
    k = check_knobs("cnn2d", in_shape, knobs)
    check_pool("cnn2d", k["pool"], ("auto", "mean", "flatten"))
    return CNN2D(tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["norm"], k["activation"], k["pool"])


@register_model
def cnn2d_s(in_shape, out_dim, **kw):
    """ResNet-style CNN, small preset: width 16, depth 2."""
    return cnn2d(in_shape, out_dim, **{"width": 16, "depth": 2, **kw})


@register_model
def cnn2d_m(in_shape, out_dim, **kw):
    """ResNet-style CNN, medium preset: width 32, depth 3."""
    return cnn2d(in_shape, out_dim, **{"width": 32, "depth": 3, **kw})


@register_model
def cnn2d_l(in_shape, out_dim, **kw):
    """ResNet-style CNN, large preset: width 64, depth 3."""
    return cnn2d(in_shape, out_dim, **{"width": 64, "depth": 3, **kw})
