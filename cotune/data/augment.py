"""Training-time data augmentation as batched tensor ops on the batch's device.

    aug = make_augment("image", policy="auto", strength=0.5, ops={"mixup": 0.2})  # None when nothing is on
    x_aug, y_b, lam = aug(xb, yb)   # loss = lam * L(out, yb) + (1 - lam) * L(out, y_b) when y_b is not None

Only the training loop calls an Augment, and only on training batches; evaluation never does.
`policy='auto'` turns on the modality's default ops at `strength`; `ops` maps an op name to its
own strength (overriding the policy; 0 = off, None = not set). Every op is one or a few whole-batch
torch ops (no per-sample Python loop), keeps the shape, dtype and device of x, and never writes
into x. Strength s in [0, 1] maps to magnitudes as follows (any s > 0 has some effect; s = 0 is
the identity):

==========  ========  ==============================================================  =======
modality    op        what strength s does                                            'auto'
==========  ========  ==============================================================  =======
image       flip      horizontal flip of each sample with probability 0.5*s           yes
image       crop      zero-pad by p = max(1, round(s*H/8)) pixels (likewise for W),   yes
                      then a random HxW crop per sample (shift of up to +-p pixels)
image       affine    rotate by U(-15s, 15s) degrees and scale by U(1-0.1s, 1+0.1s)   no
                      per sample (bilinear, zero fill, aspect-correct)
image       cutout    zero one square of side max(1, round(s*min(H,W)/2)) at a       yes
                      uniformly random centre per sample (clipped at the border)
image       mixup     x = lam*x + (1-lam)*x[perm], lam ~ Beta(s, s)                   no
image       cutmix    paste one box of area ~(1-lam) from x[perm], lam ~ Beta(s, s);  no
                      lam is then set to the exact kept area share
sequence    shift     shift each sample by an integer in [-m, m] steps,               yes
                      m = max(1, round(s*L/8)), zero fill
sequence    scale     multiply each sample by U(1-0.2s, 1+0.2s)                       yes
sequence    jitter    add Gaussian noise of std 0.1*s (normalized units)              yes
sequence    mask      zero one contiguous span of max(1, round(s*L/4)) steps at a     no
                      random start per sample
tabular     noise     add Gaussian noise of std 0.1*s to numeric features only        yes
                      (`numeric_mask`; one-hot columns are never touched)
tabular     token_    each real token of a text column becomes padding (is dropped)   yes, with
            drop      with probability 0.25*s                                          text
tabular     span_     one span of max(1, round(s*L/4)) of each text's tokens, at a    no
            mask      random start inside its real tokens, becomes the unknown token
tabular     mixup     as for images, lam ~ Beta(s, s); the `whole` columns (codes,    no
                      token ids, n-gram weights) come from the heavier row unblended
==========  ========  ==============================================================  =======

The text ops act on the token-id columns of a table's text columns (`text_spans`: (start, length) per
text column, from the Preprocessor's layout; ids 0 = padding, 1 = unknown), and 'auto' turns token_drop
on only for a table that has text columns.

Plain ops run in the order of the table (cutout after the geometric ops, mask last), then at
most one mixing op: when both mixup and cutmix are on, each batch picks one at random (50/50).
A mixing op returns the permuted labels y_b and lam as a Python float; otherwise y_b is None, lam 1.0.

Randomness comes only from torch's global generators, which `torch.manual_seed` resets (the
training loop reseeds them every epoch, so augmented batches replay exactly on resume):
per-sample draws use the generator of x's device; the few per-batch scalars (lam, the cutmix
box, which mixing op) use torch's global CPU generator, so no device-to-host sync is needed.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cotune.data.text import token_spans, whole_mask
from cotune.errors import ConfigError, fmt_choices, invalid

POLICIES = ("none", "auto")
_ALIASES = {"images": "image", "sequences": "sequence", "table": "tabular", "tables": "tabular"}
_NDIM = {"image": 4, "sequence": 3, "tabular": 2}


# ---------------------------------------------------------------------------------------------
# plain ops: fn(x, s, **ctx) -> tensor like x. Each returns x itself when s <= 0.

def _rand(n: int, x: torch.Tensor) -> torch.Tensor:
    """(n,) uniform [0, 1) float32 on x's device, from the device's global generator."""
    return torch.rand(n, device=x.device)


def _randint(high: torch.Tensor | int, n: int, x: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, int(high), (n,), device=x.device)


def _pixels(s: float, size: int, div: float) -> int:
    """max(1, round(s * size / div)) for s > 0, else 0."""
    return max(1, int(round(s * size / div))) if s > 0 else 0


def flip(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    hit = _rand(x.shape[0], x) < 0.5 * s
    return torch.where(hit.view(-1, 1, 1, 1), x.flip(-1), x)


def crop(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    B, C, H, W = x.shape
    ph, pw = _pixels(s, H, 8), _pixels(s, W, 8)
    xp = F.pad(x, (pw, pw, ph, ph))  # zeros
    oy, ox = _randint(2 * ph + 1, B, x), _randint(2 * pw + 1, B, x)  # per-sample top-left corner
    rows = oy[:, None, None] + torch.arange(H, device=x.device)[:, None]  # (B, H, 1)
    cols = ox[:, None, None] + torch.arange(W, device=x.device)  # (B, 1, W)
    flat = (rows * (W + 2 * pw) + cols).view(B, 1, H * W)  # one gather over the flattened padded image
    return xp.reshape(B, C, -1).gather(2, flat.expand(B, C, H * W)).view(B, C, H, W)


def affine(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    B, C, H, W = x.shape
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    angle = (_rand(B, x) * 2 - 1).to(xf.dtype) * math.radians(15.0 * s)
    scale = 1 + (_rand(B, x) * 2 - 1).to(xf.dtype) * 0.1 * s
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=xf.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * (H / W)  # normalized coords: keep the rotation aspect-correct
    theta[:, 1, 0], theta[:, 1, 1] = sin * (W / H), cos
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def cutout(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    B, C, H, W = x.shape
    side = _pixels(s, min(H, W), 2)
    y0 = _randint(H, B, x) - side // 2  # top-left of a square centred on a random pixel
    x0 = _randint(W, B, x) - side // 2
    r, c = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_r = (r >= y0[:, None]) & (r < y0[:, None] + side)  # (B, H)
    in_c = (c >= x0[:, None]) & (c < x0[:, None] + side)  # (B, W)
    return x.masked_fill(in_r[:, None, :, None] & in_c[:, None, None, :], 0)


def shift(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    B, C, L = x.shape
    m = _pixels(s, L, 8)
    xp = F.pad(x, (m, m))
    start = _randint(2 * m + 1, B, x)[:, None] + torch.arange(L, device=x.device)  # (B, L)
    return xp.gather(2, start[:, None, :].expand(B, C, L))


def scale(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    factor = 1 + (_rand(x.shape[0], x) * 2 - 1) * (0.2 * s)
    return x * factor.to(x.dtype).view(-1, 1, 1)


def jitter(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    return x + torch.randn_like(x) * (0.1 * s)


def mask(x: torch.Tensor, s: float, **_) -> torch.Tensor:
    if s <= 0:
        return x
    B, C, L = x.shape
    span = min(L, _pixels(s, L, 4))
    start = _randint(L - span + 1, B, x)[:, None]
    pos = torch.arange(L, device=x.device)
    inside = (pos >= start) & (pos < start + span)  # (B, L)
    return x.masked_fill(inside[:, None, :], 0)


def noise(x: torch.Tensor, s: float, numeric_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
    if s <= 0:
        return x
    noisy = x + torch.randn_like(x) * (0.1 * s)
    if numeric_mask is None:
        return noisy
    return torch.where(numeric_mask.view(1, -1), noisy, x)  # one-hot columns stay exactly as they were


def token_drop(x: torch.Tensor, s: float, text_spans=(), **_) -> torch.Tensor:
    if s <= 0 or not text_spans:
        return x
    out = x.clone()
    for a, n in text_spans:
        ids = out[:, a:a + n]
        out[:, a:a + n] = ids.masked_fill((torch.rand(ids.shape, device=x.device) < 0.25 * s) & (ids >= 2), 0)
    return out


def span_mask(x: torch.Tensor, s: float, text_spans=(), **_) -> torch.Tensor:
    if s <= 0 or not text_spans:
        return x
    out = x.clone()
    for a, n in text_spans:
        ids = out[:, a:a + n]
        span = min(n, _pixels(s, n, 4))
        real = (ids > 0).sum(1)  # the tokens come first, then the padding
        start = (_rand(len(x), x) * (real - span + 1).clamp(min=1)).floor()[:, None]
        pos = torch.arange(n, device=x.device)
        out[:, a:a + n] = ids.masked_fill((pos >= start) & (pos < start + span) & (ids > 0), 1)
    return out


# ---------------------------------------------------------------------------------------------
# mixing ops: fn(x, s) -> (x_mixed, perm, lam). Per-batch scalars come from the CPU generator.

def _beta(s: float) -> float:
    """One draw of Beta(s, s) from the CPU generator, as a Python float."""
    a = torch.tensor(float(s), dtype=torch.float64)
    lam = float(torch.distributions.Beta(a, a).sample())
    return lam if math.isfinite(lam) else 0.5


def mixup(x: torch.Tensor, s: float, **_) -> tuple[torch.Tensor, torch.Tensor, float]:
    perm = torch.randperm(x.shape[0], device=x.device)
    if s <= 0:
        return x, perm, 1.0
    lam = _beta(s)
    return lam * x + (1 - lam) * x[perm], perm, lam


def cutmix(x: torch.Tensor, s: float, **_) -> tuple[torch.Tensor, torch.Tensor, float]:
    perm = torch.randperm(x.shape[0], device=x.device)
    if s <= 0:
        return x, perm, 1.0
    B, C, H, W = x.shape
    r = math.sqrt(1.0 - _beta(s))
    ch, cw = int(H * r), int(W * r)
    cy, cx = int(torch.randint(0, H, (1,))), int(torch.randint(0, W, (1,)))  # box centre
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, H)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, W)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    return out, perm, 1.0 - (y2 - y1) * (x2 - x1) / (H * W)


@dataclass(frozen=True)
class Op:
    fn: Callable
    mixing: bool
    doc: str


OPS: dict[str, dict[str, Op]] = {  # modality -> op name -> Op, in the order plain ops are applied
    "image": {
        "flip": Op(flip, False, "horizontal flip with probability 0.5*s"),
        "crop": Op(crop, False, "random crop after zero padding of round(s*H/8) pixels"),
        "affine": Op(affine, False, "rotation +-15s degrees, scale 1 +- 0.1s"),
        "cutout": Op(cutout, False, "one zeroed square of side s*H/2"),
        "mixup": Op(mixup, True, "mixup with alpha s"),
        "cutmix": Op(cutmix, True, "cutmix with alpha s"),
    },
    "sequence": {
        "shift": Op(shift, False, "shift by up to s*L/8 steps, zero fill"),
        "scale": Op(scale, False, "amplitude x U(1-0.2s, 1+0.2s)"),
        "jitter": Op(jitter, False, "Gaussian noise, std 0.1*s"),
        "mask": Op(mask, False, "one zeroed span of s*L/4 steps"),
    },
    "tabular": {
        "noise": Op(noise, False, "Gaussian noise on numeric features, std 0.1*s"),
        "token_drop": Op(token_drop, False, "text tokens dropped with probability 0.25*s"),
        "span_mask": Op(span_mask, False, "one span of s*L/4 text tokens set to unknown"),
        "mixup": Op(mixup, True, "mixup with alpha s"),
    },
}
DEFAULTS: dict[str, tuple[str, ...]] = {
    "image": ("flip", "crop", "cutout"),
    "sequence": ("shift", "scale", "jitter"),
    "tabular": ("noise", "token_drop"),
}
TEXT_OPS = ("token_drop", "span_mask")


def _modality(modality: str) -> str:
    m = _ALIASES.get(modality, modality)
    if m not in OPS:
        raise ConfigError(invalid("The augmentation modality", f"one of {fmt_choices(tuple(OPS))}", modality))
    return m


def numeric_mask(pre) -> np.ndarray:
    """Bool mask over a fitted tabular Preprocessor's features: True for the numeric columns (they come first)."""
    return np.arange(pre.in_shape_[0]) < len(getattr(pre, "numeric_", ()))


def text_spans(pre) -> list[tuple[int, int]]:
    """(start, length) of each text column's token ids in a fitted tabular Preprocessor's features (text.token_spans)."""
    return [(a, n) for a, n, _ in token_spans(pre)]


_numeric_mask, _text_spans = numeric_mask, text_spans  # make_augment's arguments shadow the names


class Augment:
    """Callable `aug(x, y) -> (x_aug, y_b, lam)`; holds only its configuration (no RNG, no learned state).

    ops: op name -> strength in (0, 1]; zero strengths are dropped. numeric_mask (tabular only): bool per feature,
    True = numeric (gets noise), None = all; whole: bool per feature, the columns mixup does not blend.
    """

    def __init__(self, modality: str, ops: dict[str, float], numeric_mask=None, text_spans=(), whole=None):
        self.modality = _modality(modality)
        table = OPS[self.modality]
        unknown = [k for k in ops if k not in table]
        if unknown:
            raise ConfigError(invalid(f"'data.augment.{unknown[0]}'", f"a {self.modality} op, one of {fmt_choices(tuple(table))}",
                                      unknown[0]))
        self.ops = {k: float(ops[k]) for k in table if k in ops and ops[k] > 0}  # application order
        self._plain = [(table[k].fn, s) for k, s in self.ops.items() if not table[k].mixing]
        self._mixing = [(table[k].fn, s) for k, s in self.ops.items() if table[k].mixing]
        self._numeric = None
        if numeric_mask is not None:
            m = np.asarray(numeric_mask)
            if m.ndim != 1 or m.dtype != bool:
                raise ValueError(f"numeric_mask must be a 1-D bool array, got dtype {m.dtype} shape {m.shape}")
            self._numeric = torch.from_numpy(m.copy())
        self._numeric_on: dict = {}  # cache of the (constant) mask per device
        self.text_spans = [(int(a), int(n)) for a, n in text_spans]
        self._whole = None if whole is None or not np.any(whole) else torch.from_numpy(np.flatnonzero(whole))

    def _mask_for(self, x: torch.Tensor):
        if self._numeric is None:
            return None
        if self._numeric.shape[0] != x.shape[1]:
            raise ValueError(f"numeric_mask has {self._numeric.shape[0]} entries but the batch has {x.shape[1]} features")
        m = self._numeric_on.get(x.device)
        if m is None:
            m = self._numeric_on[x.device] = self._numeric.to(x.device)
        return m

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None):
        if x.ndim != _NDIM[self.modality]:
            raise ValueError(f"{self.modality} augmentation expects {_NDIM[self.modality]}-D batches, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"augmentation needs a floating-point batch, got {x.dtype}")
        with torch.no_grad():
            ctx = {"numeric_mask": self._mask_for(x), "text_spans": self.text_spans} if self.modality == "tabular" else {}
            for fn, s in self._plain:
                x = fn(x, s, **ctx)
            if not self._mixing:
                return x, None, 1.0
            k = int(torch.randint(0, len(self._mixing), (1,))) if len(self._mixing) > 1 else 0
            fn, s = self._mixing[k]
            mixed, perm, lam = fn(x, s)
            if self._whole is not None:  # codes and token ids are not blended: the heavier row's, whole
                cols = self._whole.to(x.device)
                mixed[:, cols] = (x if lam >= 0.5 else x[perm])[:, cols]
            x, y_b = mixed, None if y is None else y[perm.to(y.device)]
            return x, y_b, float(lam)

    def describe(self) -> str:
        return f"{self.modality}: " + ", ".join(f"{k}={s:g}" for k, s in self.ops.items())

    def __repr__(self) -> str:
        return f"Augment({self.describe()})"


def _strength(knob: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(invalid(f"'{knob}'", "a number from 0 to 1", value, f"e.g. --set {knob}=0.5"))
    return float(value)


def make_augment(modality: str, *, policy: str = "none", strength: float = 0.5, ops: dict | None = None,
                 numeric_mask=None, text_spans=(), pre=None) -> Augment | None:
    """The Augment for these settings, or None when no op is on (the loop then pays nothing).

    ops: op name -> strength in [0, 1] (0 = off, None = not set); overrides the policy's strength.
    Naming an op of another modality is a ConfigError unless its value is None, and so is a text op on a
    table without text columns. pre: a fitted Preprocessor, for numeric_mask and text_spans (tables).
    """
    whole = None
    if pre is not None and getattr(pre, "modality_", None) == "tabular":
        numeric_mask, text_spans, whole = _numeric_mask(pre), _text_spans(pre), whole_mask(pre)
    mod = _modality(modality)
    if policy not in POLICIES:
        raise ConfigError(invalid("'data.augment.policy'", f"one of {fmt_choices(POLICIES)}", policy))
    strength = _strength("data.augment.strength", strength)
    table = OPS[mod]
    active = {k: strength for k in DEFAULTS[mod] if text_spans or k not in TEXT_OPS} if policy == "auto" else {}
    known = {k for t in OPS.values() for k in t}
    for name, s in (ops or {}).items():
        if name not in table and s is None and name in known:
            continue  # another modality's op, not set: nothing to say
        if name not in table:
            raise ConfigError(invalid(f"'data.augment.{name}'", f"unset for {mod} data, whose ops are {fmt_choices(tuple(table))}",
                                      s, "unset it or use one of those"))
        if s is not None:
            active[name] = _strength(f"data.augment.{name}", s)
            if name in TEXT_OPS and active[name] > 0 and not text_spans:
                raise ConfigError(f"data.augment.{name} acts on text columns, and this table has none (or the model "
                                  "family does not read them); unset it.")
    active = {k: s for k, s in active.items() if s > 0}
    if not active:
        return None
    return Augment(mod, active, numeric_mask=numeric_mask if mod == "tabular" else None, text_spans=text_spans, whole=whole)
