"""Each member's mean training loss from one batched forward: cotune.train.compute_loss per member.

    loss = member_losses(out, y, w, mask, specs)   # out (K, B, C), y/w/mask (K, B) -> (K,)

Every member keeps its own loss (cross_entropy with its label smoothing, focal with its gamma, gce, sce, mse,
huber) and its own sample weights; padded rows (mask False) count for nothing. A member with no rows gets 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cotune.train import RCE_LOG_ZERO, resolve_loss


@dataclass(frozen=True)
class LossSpecs:
    """The members' loss settings: names (one per member) and (K, 1) float tensors of their parameters."""
    names: tuple[str, ...]
    smoothing: torch.Tensor
    focal_gamma: torch.Tensor
    gce_q: torch.Tensor
    sce_alpha: torch.Tensor
    sce_beta: torch.Tensor
    huber_delta: torch.Tensor

    @property
    def host(self) -> dict:
        """id(parameter tensor) -> its values as Python floats (computed once)."""
        if "_host" not in self.__dict__:
            object.__setattr__(self, "_host", {id(t): t.flatten().tolist() for t in (
                self.smoothing, self.focal_gamma, self.gce_q, self.sce_alpha, self.sce_beta, self.huber_delta)})
        return self.__dict__["_host"]

    @classmethod
    def of(cls, cfgs: list, task: str, device) -> "LossSpecs":
        col = lambda a: torch.tensor([float(getattr(c, a)) for c in cfgs], device=device).reshape(-1, 1)  # noqa: E731
        return cls(tuple(resolve_loss(c.loss, task) for c in cfgs), col("label_smoothing"), col("focal_gamma"),
                   col("gce_q"), col("sce_alpha"), col("sce_beta"), col("huber_delta"))

    def take(self, idx: torch.Tensor) -> "LossSpecs":
        keep = idx.tolist()
        return LossSpecs(tuple(self.names[i] for i in keep), *(getattr(self, f)[idx] for f in (
            "smoothing", "focal_gamma", "gce_q", "sce_alpha", "sce_beta", "huber_delta")))


def _per_sample(name: str, out: torch.Tensor, y: torch.Tensor, s: LossSpecs) -> torch.Tensor:
    """(K, B) loss of every row under loss `name`, with each member's parameters."""
    users = [i for i, n in enumerate(s.names) if n == name]

    def _param(t: torch.Tensor, dtype):
        """The Python number when the members on this loss agree (compute_loss's very kernels), else (K, 1)."""
        vals = {s.host[id(t)][i] for i in users}  # read on the host: no device sync per step
        return vals.pop() if len(vals) == 1 else t.to(dtype)

    if name in ("mse", "huber"):
        pred, target = out.squeeze(-1), y  # no cast: the dtypes promote as in compute_loss
        if name == "mse":
            return F.mse_loss(pred, target, reduction="none")
        delta = _param(s.huber_delta, out.dtype)
        if isinstance(delta, float):
            return F.huber_loss(pred, target, delta=delta, reduction="none")
        z = (pred - target).abs()
        return torch.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta))
    k, b, c = out.shape
    eps = _param(s.smoothing, out.dtype)
    if name == "cross_entropy" and not isinstance(eps, float):  # smoothing differs: torch's formula written out
        logp = F.log_softmax(out, -1)
        return (1 - eps) * -logp.gather(-1, y[..., None]).squeeze(-1) + eps * -logp.mean(-1)
    # per row the very kernel compute_loss runs, so a member's gradients are its solo run's to the last bit
    ce = F.cross_entropy(out.reshape(k * b, c), y.reshape(-1), label_smoothing=eps if name == "cross_entropy" else 0.0,
                         reduction="none").reshape(k, b)
    if name == "cross_entropy":
        return ce
    if name == "focal":
        return (1 - torch.exp(-ce)) ** _param(s.focal_gamma, out.dtype) * ce
    if name == "gce":
        q = _param(s.gce_q, out.dtype)
        return -torch.expm1(-q * ce) / q
    one_minus_py = -torch.expm1(-ce)  # sce
    return _param(s.sce_alpha, out.dtype) * ce + _param(s.sce_beta, out.dtype) * -RCE_LOG_ZERO * one_minus_py


def ensemble_rows(z: torch.Tensor, *ts):
    """An in-model ensemble's output (K, B, e, C) as (K, B * e, C), each copy scored on its own row as compute_loss
    does, and the per-row tensors `ts` (K, B) (None kept) repeated to match; any other output as it is."""
    if z.dim() != 4:
        return (z, *ts)
    e = z.shape[2]
    return (z.reshape(z.shape[0], -1, z.shape[-1]), *(None if t is None else t.repeat_interleave(e, dim=1) for t in ts))


def member_losses(out: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, mask: torch.Tensor | None,
                  s: LossSpecs) -> torch.Tensor:
    """(K,) each member's mean loss over its real rows (weighted by w when given), as compute_loss."""
    per = None
    for name in dict.fromkeys(s.names):
        vals = _per_sample(name, out, y, s)
        if per is None:
            per = vals
        else:
            use = torch.tensor([n == name for n in s.names], device=out.device).reshape(-1, 1)
            per = torch.where(use, vals, per)
    if w is None and mask is None:
        return per.mean(1)
    weight = torch.ones_like(per) if w is None else w  # per * w promotes as compute_loss's does
    weight = weight if mask is None else weight * mask.to(weight.dtype)
    den = weight.sum(1)
    return torch.where(den > 0, (per * weight).sum(1) / den.clamp(min=torch.finfo(per.dtype).tiny), torch.zeros_like(den))
