"""Adversarial examples, adversarial training and robust accuracy for continuous inputs.

    loss_fn = lambda out, y: compute_loss(out, y, None, loss_name, cfg)     # the training loss
    x_adv = pgd(model, xb, yb, eps=0.1, steps=7, loss_fn=loss_fn, mask=numeric)
    aug = Adversarial(model, "pgd", eps=0.1, steps=7, loss_fn=loss_fn, base=make_augment(...))
    train(model, tr, va, cfg, runtime, task=task, augment=aug)               # train() needs no change
    acc = robust_accuracy(model, X_test, y_test, eps=0.1, steps=10)

The threat model is the L-infinity ball of radius eps around each input, in the units the model sees:
standardized features for tables and sequences, normalized pixels for images. No box constraint is
applied on top (standardized inputs have no fixed range). `mask` (bool, broadcastable to one sample's
shape, e.g. (F,) for a table, see data.augment.numeric_mask) limits the attack to its True entries: a
one-hot or category-code column is never perturbed, as a real input could not take a value between codes.
A table's token-id columns are not either: adversarial training and robust_accuracy attack a text column in
embedding space instead, moving each token's embedding within eps times the std of the encoder's embedding
table (cotune.models.text.TextEncoder.delta; the public fgsm and pgd move the inputs only).

FGSM (Goodfellow et al. 2015) is one signed-gradient step of size eps. PGD (Madry et al. 2018) starts at a
uniform random point of the ball and takes `steps` signed-gradient steps of size alpha (default
2.5 * eps / steps, so the steps together can cross the ball from side to side), projecting back after each.

An attack changes nothing in the model: gradients are taken with respect to the input only
(torch.autograd.grad), so no parameter's .grad is touched; the batch-norm running statistics an attack's
forward passes would update in training mode are put back; every module keeps its training flag.
fgsm and pgd attack the model in the mode it is in; Adversarial and robust_accuracy switch it to eval mode
for the attack (see Adversarial for why).
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cotune.errors import ConfigError, invalid
from cotune.models.embeddings import TextLinear
from cotune.runtime import Runtime

METHODS = ("fgsm", "pgd")
ALPHA_FACTOR = 2.5  # PGD's default step: 2.5 * eps / steps (Madry et al. 2018)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# checks

def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ConfigError(invalid("'train.adv_epsilon'", "a finite number >= 0 (the L-inf radius in standardized input units)",
                                  eps, "e.g. --set train.adv_epsilon=0.1"))
    return float(eps)


def check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(invalid("'train.adv_steps'", "an integer >= 1 (PGD's gradient steps)", steps,
                                  "e.g. --set train.adv_steps=7"))
    return int(steps)


def _mask_for(mask, x: torch.Tensor) -> torch.Tensor | None:
    """mask as a bool tensor on x's device, checked to broadcast to one sample's shape x.shape[1:]."""
    if mask is None:
        return None
    m = mask.to(x.device) if torch.is_tensor(mask) else torch.from_numpy(np.asarray(mask).copy()).to(x.device)
    if m.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may be perturbed), got dtype {m.dtype}")
    sample = tuple(x.shape[1:])
    try:
        ok = m.dim() <= len(sample) and tuple(torch.broadcast_shapes(m.shape, sample)) == sample
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not broadcast to the sample shape {sample}")
    return m


# ---------------------------------------------------------------------------------------------
# the model's state around an attack

_NORMS = torch.nn.modules.batchnorm._NormBase  # batch and instance norms: the modules with running statistics


@contextlib.contextmanager
def _unchanged(model: torch.nn.Module):
    """Put back the running statistics of the norms in training mode (each attack forward would update them)."""
    kept = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
            for m in model.modules() if isinstance(m, _NORMS) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in kept:
                for k, b in bufs.items():
                    getattr(m, k).copy_(b)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """The model in eval mode, then every module's own flag back (not model.train(): the training loop keeps
    frozen batch norms in eval mode inside a training model)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _forward(model, x, autocast):
    with autocast():
        out = model(x)
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


# ---------------------------------------------------------------------------------------------
# attacks

def _start(shape, x, eps, random_start, generator) -> torch.Tensor:
    if not random_start:
        return torch.zeros(shape, device=x.device, dtype=x.dtype)
    if generator is None:  # torch's global generator of x's device, as the augmentations use
        u = torch.rand(shape, device=x.device, dtype=x.dtype)
    else:  # drawn on the generator's device: a CPU generator gives the same start on any device
        u = torch.rand(shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    return (u * 2 - 1) * eps


def text_encoders(model: torch.nn.Module) -> list:
    """The model's text encoders (cotune.models.text), whose token embeddings an attack may move."""
    from cotune.models.text import TextEncoder
    return [m for m in model.modules() if isinstance(m, TextEncoder)]


def _attack(model, x, y, eps, steps, alpha, loss_fn, mask, random_start, generator, autocast=contextlib.nullcontext,
            text: bool = False):
    """Signed-gradient ascent on loss_fn over delta in [-eps, eps] (zero where mask is False); x + delta.
    text: also over each text encoder's token embeddings, within eps times the std of its embedding table;
    then (x + delta, [embedding deltas]).

    Working on delta keeps the projection exact (a clamp) and the masked entries exactly x's."""
    if not x.is_floating_point():
        raise TypeError(f"an attack needs a floating-point input (continuous features), got {x.dtype}")
    x = x.detach()
    m = _mask_for(mask, x)
    delta = _start(x.shape, x, eps, random_start, generator)
    if m is not None:
        delta = delta * m
    encs = text_encoders(model) if text else []
    radii = [eps * float(e.embedding.weight.detach()[2:].float().std().nan_to_num(1.0)) for e in encs]
    deltas = [_start((x.shape[0], e.length, e.embedding.embedding_dim), x, r, random_start, generator)
              for e, r in zip(encs, radii)]
    # cuDNN's RNN kernels have no backward in eval mode: a GRU / LSTM is attacked through the native kernels
    rnn = x.is_cuda and any(isinstance(mod, torch.nn.RNNBase) for mod in model.modules())
    with _unchanged(model), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False) if rnn else contextlib.nullcontext():
        try:
            for _ in range(steps):
                delta.requires_grad_(True)
                for e, d in zip(encs, deltas):
                    e.delta = d.requires_grad_(True)
                loss = loss_fn(_forward(model, x + delta, autocast), y)
                g, *gs = torch.autograd.grad(loss, [delta, *deltas])  # the inputs' only: no parameter's .grad
                step = g.sign() if m is None else g.sign() * m
                delta = (delta.detach() + alpha * step).clamp_(-eps, eps)
                deltas = [(d.detach() + alpha / eps * r * gd.sign()).clamp_(-r, r) for d, gd, r in zip(deltas, gs, radii)]
        finally:
            for e in encs:
                e.delta = None
    return ((x + delta).detach(), deltas) if text else (x + delta).detach()


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss_fn: LossFn,
         mask=None) -> torch.Tensor:
    """x + eps * sign(grad_x loss_fn(model(x), y)), only where mask is True; detached, x's dtype and device.

    The model is attacked in the mode it is in; eps == 0 returns x (detached) itself."""
    eps = check_eps(eps)
    if eps == 0:
        return x.detach()
    return _attack(model, x, y, eps, 1, eps, loss_fn, mask, random_start=False, generator=None)


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, loss_fn: LossFn,
        alpha: float | None = None, mask=None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on loss_fn in the L-inf ball of radius eps around x; detached, x's dtype/device.

    alpha: the step size, default 2.5 * eps / steps. random_start: begin at x + U(-eps, eps) (masked), drawn
    from `generator` when given (on its device, so a CPU generator makes the start the same on any device),
    else from torch's global generator of x's device. The model is attacked in the mode it is in (in training
    mode dropout draws from the global generator too); eps == 0 returns x (detached) itself."""
    eps, steps = check_eps(eps), check_steps(steps)
    if alpha is not None and not (isinstance(alpha, numbers.Real) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0 (PGD's step size), got {alpha!r}")
    if eps == 0:
        return x.detach()
    alpha = ALPHA_FACTOR * eps / steps if alpha is None else float(alpha)
    return _attack(model, x, y, eps, steps, alpha, loss_fn, mask, random_start, generator)


# ---------------------------------------------------------------------------------------------
# adversarial training

def _share(mix: float) -> str:
    if mix == 1.0:
        return "every row of each batch"
    if mix == 0.5:
        return "half of each batch"
    return f"{mix:.0%} of each batch"


class Adversarial:
    """Callable `aug(x, y) -> (x_aug, y_b, lam)` for train(augment=...): the base augmentation, then the first
    n = floor(mix * B + 0.5) rows of each batch replaced by their adversarial versions against the current model.

    Which rows: the first n, so no random numbers are drawn for the choice. The training loop shuffles the
    rows every epoch, so the first n are a fresh random subset each step. Clean and adversarial rows are
    trained on together, in the same step: Goodfellow et al. 2015 weight the clean and the adversarial loss
    0.5 each, which mix=0.5 does over different rows.

    Base augmentation first: the attack starts from the input the step trains on. When the base returns
    mixing partners (mixup, cutmix: y_b is not None), y_b and lam are passed through unchanged and the
    attack ascends the loss the step minimises, lam * L(out, y) + (1 - lam) * L(out, y_b), rather than
    the primary labels' loss alone (which near lam = 0.5 could move a row towards its partner's label).

    Eval mode during the attack: batch norms normalise with their running statistics and dropout is off,
    so the gradient is deterministic, the attack forwards neither update the running statistics nor
    consume random numbers beyond PGD's start point, and an ensemble (cotune.models.mlp) is attacked
    through its averaged prediction; the training step that follows runs in the loop's own mode. The
    price: in the first few steps the running statistics are still near their initial values.

    steps: PGD's (not used by fgsm). mask: as for pgd, checked against the first batch.
    runtime: when given, the attack's forward passes run under runtime.autocast() (bf16 on CUDA when
    the run trains in it). Holds only its configuration and the model and loss it was given.
    """

    def __init__(self, model: torch.nn.Module, method: str, eps: float, steps: int, loss_fn: LossFn,
                 base: Callable | None = None, mask=None, mix: float = 0.5, runtime: Runtime | None = None):
        if method not in METHODS:
            raise ConfigError(invalid("'train.adv_method'", "one of " + ", ".join(repr(m) for m in METHODS), method))
        if isinstance(mix, bool) or not isinstance(mix, numbers.Real) or not 0 < mix <= 1:
            raise ConfigError(invalid("'train.adv_mix'", "a number in (0, 1] (the share of each batch attacked)", mix,
                                      "e.g. --set train.adv_mix=0.5"))
        self.model, self.method, self.loss_fn, self.base = model, method, loss_fn, base
        self.eps = check_eps(eps)
        self.steps = check_steps(steps) if method == "pgd" else 1
        self.mix = float(mix)
        self.mask = None if mask is None else (mask if torch.is_tensor(mask) else torch.from_numpy(np.asarray(mask).copy()))
        if self.mask is not None and self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = may be perturbed), got dtype {self.mask.dtype}")
        self._autocast = contextlib.nullcontext if runtime is None else runtime.autocast
        self._mask_on: dict = {}  # the (constant) mask per device: one copy, not one per step

    def rows(self, batch: int) -> int:
        """How many rows of a batch of `batch` are attacked: mix * batch, rounded half up."""
        return min(batch, int(math.floor(self.mix * batch + 0.5)))

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if y is None:
            raise ValueError("adversarial training needs the batch's labels y")
        x, y_b, lam = (x, None, 1.0) if self.base is None else self.base(x, y)
        n = self.rows(x.shape[0])
        if self.eps == 0 or n == 0:
            return x, y_b, lam
        loss_fn, yn = self.loss_fn, y[:n]
        if y_b is not None:
            y_bn = y_b[:n]
            loss_fn = lambda out, _y: lam * self.loss_fn(out, yn) + (1 - lam) * self.loss_fn(out, y_bn)  # noqa: E731
        if self.method == "fgsm":
            steps, alpha, start = 1, self.eps, False
        else:
            steps, alpha, start = self.steps, ALPHA_FACTOR * self.eps / self.steps, True
        mask = self._mask_on.get(x.device)
        if mask is None and self.mask is not None:
            mask = self._mask_on[x.device] = _mask_for(self.mask, x)
        with _eval_mode(self.model):
            x_adv, deltas = _attack(self.model, x[:n], yn, self.eps, steps, alpha, loss_fn, mask, start, None,
                                    self._autocast, text=True)
        for e, d in zip(text_encoders(self.model), deltas):  # the training step's forward adds them to its first n rows
            e.delta = torch.cat([d, d.new_zeros((x.shape[0] - n, *d.shape[1:]))])
        return torch.cat([x_adv, x[n:].detach()]), y_b, lam  # a new tensor: x is never written into

    def describe(self) -> str:
        what = f"{self.method} eps {self.eps:g}" + (f", {self.steps} steps" if self.method == "pgd" else "")
        what += f", {_share(self.mix)}"
        describe = getattr(self.base, "describe", None)
        return what if self.base is None else f"{describe() if describe else type(self.base).__name__}, then {what}"

    def __repr__(self) -> str:
        return f"Adversarial({self.describe()})"


# ---------------------------------------------------------------------------------------------
# robustness evaluation

def robust_outputs(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
                   batch_size: int = 512, mask=None, seed: int = 0, runtime: Runtime | None = None) -> torch.Tensor:
    """The model's outputs (N, K) in eval mode on PGD-attacked X (cross-entropy, random start), on its device.

    The start points come from one CPU torch.Generator seeded with `seed`, drawn batch after batch: the same
    seed, batch_size and model give the same outputs, on CPU and GPU alike. An ensemble in eval mode gives
    log-probabilities, whose cross-entropy is its log loss. eps == 0: the clean outputs."""
    eps, steps = check_eps(eps), check_steps(steps)
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    autocast = contextlib.nullcontext if runtime is None else runtime.autocast
    alpha = ALPHA_FACTOR * eps / steps
    mask = None if mask is None or X.shape[0] == 0 else _mask_for(mask, X[:1].to(dev))  # one copy to the device
    outs = []
    with _eval_mode(model):
        for i in range(0, X.shape[0], batch_size):
            xb, yb = X[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            if eps > 0:
                xb, deltas = _attack(model, xb, yb, eps, steps, alpha, F.cross_entropy, mask, True, gen, autocast, text=True)
                for e, d in zip(text_encoders(model), deltas):
                    e.delta = d
            with torch.no_grad():
                outs.append(_forward(model, xb, autocast).float())
    return torch.cat(outs) if outs else torch.empty(0, device=dev)


def robust_accuracy(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
                    batch_size: int = 512, mask=None, seed: int = 0, runtime: Runtime | None = None) -> float:
    """Classification accuracy on X under a PGD attack of radius eps (see robust_outputs); NaN for no rows."""
    if X.shape[0] == 0:
        return math.nan
    out = robust_outputs(model, X, y, eps, steps, batch_size, mask, seed, runtime)
    return (out.argmax(-1) == y.to(out.device)).float().mean().item()


# ---------------------------------------------------------------------------------------------
# a run's knobs (train.adversarial, train.adv_*): what pipeline.setup and the evaluation call

EVAL_STEPS = 10  # robust_accuracy's PGD steps, whatever the training's


def input_mask(modality: str, pre) -> torch.Tensor | None:
    """The features an attack may move: a table's numeric columns (data.augment.numeric_mask); all of any other input."""
    if modality != "tabular":
        return None
    from cotune.data.augment import numeric_mask
    return torch.as_tensor(numeric_mask(pre))


def for_run(model: torch.nn.Module, cfg, task: str, base: Callable | None, mask=None) -> Callable | None:
    """train()'s augment for a run's TrainConfig: `base` when train.adversarial is 'none', else an Adversarial
    around it that attacks with the run's own training loss."""
    if cfg.adversarial == "none":
        return base
    if cfg.adv_epsilon <= 0:
        raise ConfigError(f"train.adversarial={cfg.adversarial!r} needs a radius: set train.adv_epsilon > 0 "
                          "(standardized input units), e.g. --set train.adv_epsilon=0.1.")
    from cotune.train import compute_loss, resolve_loss
    loss_name = resolve_loss(cfg.loss, task)
    return Adversarial(model, cfg.adversarial, cfg.adv_epsilon, cfg.adv_steps,
                       lambda out, y: compute_loss(out, y, None, loss_name, cfg), base=base, mask=mask, mix=cfg.adv_mix)


def run_metrics(model: torch.nn.Module, X, y, cfg, task: str, mask=None, runtime: Runtime | None = None) -> dict:
    """{'robust_accuracy': ...} of a trained classifier on rows X (labels y, class codes) under a EVAL_STEPS-step
    PGD attack of radius train.adv_epsilon; {} for regression or when train.adv_epsilon is 0."""
    if task == "regression" or cfg.adv_epsilon <= 0 or len(X) == 0:
        return {}
    y = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return {"robust_accuracy": robust_accuracy(model, torch.as_tensor(X), y, cfg.adv_epsilon, EVAL_STEPS, mask=mask,
                                               runtime=runtime)}
