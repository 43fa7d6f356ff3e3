"""train(): one flat training loop in plain PyTorch.

    result = train(model, train_data, val_data, cfg.train, runtime, task="multiclass", seed=0)

Reads top to bottom: optimizer, then per epoch a reseed (so a resumed run replays the same shuffles and dropout
masks), the frozen part (train.freeze_epochs: only the output layer trains in the first epochs), index-slice
batches, the LR from get_lr(step) (times train.backbone_lr outside the output layer), forward under autocast,
loss (+ L1), backward, clip, step; then validation, history, early stopping, a checkpoint (after validated
epochs), the progress bar and on_eval. Best weights are restored at the end. Under `cotune train --nproc N` each
process steps on its rows of every (global) batch and DDP averages the gradients: cotune.distributed says how.

`on_eval(epoch, row)` is the one hook: it sees each epoch's metrics and may return True to stop or raise (a
search uses it to prune). This module never imports optuna.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cotune import distributed as dist
from cotune.data.batches import TensorData
from cotune.errors import ConfigError, CotuneError
from cotune.evaluate import MODEL_METRICS, Metric, metric, monitored_metric, score as metric_score
from cotune.models.registry import head as model_head
from cotune.runtime import Runtime
from cotune.track import write_json

CHECKPOINT, CHECKPOINT_STATE = "checkpoint.safetensors", "checkpoint.json"
EVAL_BATCH = 4096  # samples per forward pass at evaluation


class TrainingError(CotuneError):
    """Training cannot go on (the loss became NaN or infinite)."""


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0            # 1-based epoch whose weights were restored
    best_score: float = math.nan   # monitored validation value at best_epoch
    epochs_run: int = 0
    stopped_early: bool = False
    steps: int = 0
    train_time_s: float = 0.0      # training steps only, evaluation excluded
    samples_per_s: float = 0.0


def check_config(cfg, task: str) -> None:
    """Reject knob combinations that cannot train, before anything is written."""
    loss = resolve_loss(cfg.loss, task)
    if task == "regression" and loss in CLASSIFICATION_LOSSES:
        raise ConfigError(f"train.loss={cfg.loss!r} needs a classification target but the task is regression; use mse or huber.")
    if task != "regression" and loss in ("mse", "huber"):
        raise ConfigError(f"train.loss={cfg.loss!r} is for regression but the task is {task}; use cross_entropy, focal, gce or sce.")
    if loss == "sce" and cfg.sce_alpha + cfg.sce_beta <= 0:
        raise ConfigError("train.loss='sce' needs train.sce_alpha + train.sce_beta > 0 (both are 0, so the loss is 0); "
                          "e.g. --set train.sce_alpha=0.1 --set train.sce_beta=1.")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum <= 0):
        raise ConfigError("train.nesterov=true needs train.optimizer=sgd and train.momentum > 0; set both or drop nesterov.")


CLASSIFICATION_LOSSES = ("cross_entropy", "focal", "gce", "sce")
RCE_LOG_ZERO = -4.0  # sce: log 0 of the one-hot label, clipped to A = -4 (Wang et al. 2019), so RCE = -A * (1 - p_y)


def resolve_loss(loss: str, task: str) -> str:
    return ("mse" if task == "regression" else "cross_entropy") if loss == "auto" else loss


def get_lr(step: int, total: int, base: float, schedule: str, warmup: float, gamma: float, decay_every: int) -> float:
    """Learning rate at `step` of `total`: linear warmup, then the schedule over the remaining steps."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return base * (step + 1) / n_warm
    t = (step - n_warm) / max(1, total - n_warm)  # progress after warmup, in [0, 1)
    if schedule == "constant":
        return base
    if schedule == "step":
        return base * gamma ** ((step - n_warm) // max(1, decay_every))
    if schedule == "exponential":
        return base * gamma ** t
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "coslog4":  # RealMLP's: four cosine cycles, each shorter than the last (log-spaced restarts)
        return base * 0.5 * (1 - math.cos(2 * math.pi * math.log2(1 + 15 * t)))
    if schedule == "onecycle":  # rise from base/25 over 30%, then anneal to base/1e4 (as torch's OneCycleLR)
        lo, hi, end = base / 25, base, base / 1e4
        if t < 0.3:
            return lo + (hi - lo) * 0.5 * (1 - math.cos(math.pi * t / 0.3))
        return end + (hi - end) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7))
    raise ConfigError(f"Unknown train.schedule {schedule!r}")


def make_optimizer(model: torch.nn.Module, cfg, fused: bool = False, head: torch.nn.Module | None = None
                   ) -> torch.optim.Optimizer:
    """Weight decay only on matrices and kernels (dim >= 2), not on biases and norm scales. Each group's
    `lr_scale` multiplies get_lr's rate: train.backbone_lr outside `head` (the output layer, given when
    backbone_lr != 1), 1 in it. One parameter group when there is neither decay nor a backbone factor (each
    group costs a Python pass per step), and the foreach (multi-tensor) implementation, or fused kernels on
    CUDA for Adam/AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    parts = [(params, 1.0)]
    if head is not None:
        in_head = {id(p) for p in head.parameters()}
        parts = [([p for p in params if id(p) not in in_head], cfg.backbone_lr), ([p for p in params if id(p) in in_head], 1.0)]
    groups = []
    for ps, scale in parts:
        if cfg.weight_decay > 0:
            groups += [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                       {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
        else:
            groups.append({"params": ps, "weight_decay": 0.0, "lr_scale": scale})
    groups = [g for g in groups if g["params"]] or groups[:1]
    name, lr = cfg.optimizer, cfg.lr
    if name in ("sgd", "rmsprop", "adagrad"):
        extra = {"sgd": {"momentum": cfg.momentum, "nesterov": cfg.nesterov}, "rmsprop": {"momentum": cfg.momentum}}
        cls = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[name]
        return cls(groups, lr=lr, foreach=True, **extra.get(name, {}))
    impl = {"fused": True} if fused else {"foreach": True}
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), **impl)


def compute_loss(out: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, loss: str, cfg) -> torch.Tensor:
    """Mean loss over the batch, weighted per sample when w is given. out: (B, K) or (B, 1), or (B, k, K)
    from an ensemble model in training mode: the mean of its k members' losses (each scored on y).

    Per sample, p_y the softmax probability of the label: cross_entropy -log p_y (label-smoothed), focal
    (1 - p_y)^gamma * -log p_y, gce (1 - p_y^q) / q, sce alpha * -log p_y + beta * 4 * (1 - p_y); with soft
    targets y (B, K) (a teacher's probabilities when distilling) -sum_k y_k log p_k, whatever the loss."""
    if out.dim() == 3:
        k = out.shape[1]
        out, y = out.reshape(-1, out.shape[2]), y.repeat_interleave(k, dim=0)
        w = None if w is None else w.repeat_interleave(k)
    if y.dim() == 2:  # soft targets
        per = -(y * F.log_softmax(out, -1)).sum(-1)
    elif loss == "cross_entropy" and w is None:  # the common case in one kernel
        return F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
    elif loss == "cross_entropy":
        per = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing, reduction="none")
    elif loss == "focal":
        ce = F.cross_entropy(out, y, reduction="none")
        per = (1 - torch.exp(-ce)) ** cfg.focal_gamma * ce
    elif loss == "gce":  # (1 - p_y^q) / q with p_y^q = exp(-q CE): -expm1 keeps a small q exact (q -> 0: CE)
        per = -torch.expm1(-cfg.gce_q * F.cross_entropy(out, y, reduction="none")) / cfg.gce_q
    elif loss == "sce":  # alpha * CE + beta * RCE, RCE = -sum_k p_k log t_k = -A * (1 - p_y) for a one-hot t
        ce = F.cross_entropy(out, y, reduction="none")
        one_minus_py = -torch.expm1(-ce)  # 1 - p_y, as p_y = exp(-CE)
        per = cfg.sce_alpha * ce + cfg.sce_beta * -RCE_LOG_ZERO * one_minus_py
    elif loss == "mse":
        per = F.mse_loss(out.squeeze(-1), y, reduction="none")
    else:
        per = F.huber_loss(out.squeeze(-1), y, delta=cfg.huber_delta, reduction="none")
    return per.mean() if w is None else (per * w).sum() / w.sum()


@torch.no_grad()
def infer(model: torch.nn.Module, X: torch.Tensor, runtime: Runtime, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Raw model outputs (B, K) in fp32 for all of X, in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, X.shape[0], batch_size):
        with runtime.autocast():
            outs.append(model(X[i:i + batch_size].to(dev, non_blocking=True)).float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def validate(model, data: TensorData, runtime: Runtime, task: str, y_scale: float, metrics=(), inverse=None) -> dict:
    """val_loss (the plain log loss, or MSE in standardized units, whatever the training loss smooths or weights:
    early stopping and the scaling study read it as the model's loss), val_accuracy / val_rmse, and val_<name> for
    each further name in `metrics` (search.metric's). inverse: regression, model outputs (standardized) -> target
    units, so RMSE / MAE / R2 are in the target's units whatever transform it trains under (default: times y_scale)."""
    return val_row(infer(model, data.X, runtime), data, task, y_scale, metrics, inverse)


def val_row(out: torch.Tensor, data: TensorData, task: str, y_scale: float, metrics=(), inverse=None) -> dict:
    """validate's row from the model's outputs `out` (N, C) on data (a population member's too)."""
    y = data.y.to(out.device)
    extra = [m for m in metrics if m not in ("loss", "accuracy", "rmse", *MODEL_METRICS)]  # those need the model
    if task == "regression":
        mse = F.mse_loss(out.squeeze(-1), y).item()
        row = {"val_loss": mse}
        if inverse is None:
            row["val_rmse"] = math.sqrt(mse) * y_scale
            if not extra:
                return row
            inverse = lambda v: v * y_scale  # noqa: E731
        yt, pt = inverse(y.cpu().numpy()), inverse(out.squeeze(-1).cpu().numpy())
        row["val_rmse"] = metric_score("rmse", yt, pt, task)
        row.update({f"val_{m}": metric_score(m, yt, pt, task) for m in extra})
        return row
    row = {"val_loss": F.cross_entropy(out, y).item(), "val_accuracy": (out.argmax(-1) == y).float().mean().item()}
    if extra:
        p = torch.softmax(out, -1).cpu().numpy()
        row.update({f"val_{m}": metric_score(m, y.cpu().numpy(), p, task) for m in extra})
    return row


def _save_checkpoint(ckpt_dir: Path, model, opt, best_state, state: dict) -> None:
    """Weights and optimizer tensors as safetensors, everything else as JSON: nothing is pickled."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.contiguous().cpu() for k, v in best_state.items()})
    opt_sd = opt.state_dict()
    scalars = {}
    for pid, st in opt_sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    state = dict(state, opt_groups=opt_sd["param_groups"], opt_scalars=scalars)
    tmp = ckpt_dir / f".{CHECKPOINT}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(ckpt_dir / CHECKPOINT)
    write_json(ckpt_dir / CHECKPOINT_STATE, state)  # written last: it marks the checkpoint complete


def _load_checkpoint(ckpt_dir: Path, model, opt) -> tuple[dict, dict]:
    state = json.loads((ckpt_dir / CHECKPOINT_STATE).read_text())
    tensors = load_file(str(ckpt_dir / CHECKPOINT), device=str(next(model.parameters()).device))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    opt_state: dict = {}
    for k, v in [*((k[4:], v) for k, v in tensors.items() if k.startswith("opt.")), *state["opt_scalars"].items()]:
        pid, name = k.split(".", 1)  # tensors 'opt.<pid>.<name>', then the scalars '<pid>.<name>'
        opt_state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state["opt_groups"]})
    return state, best


def train(model: torch.nn.Module, train_data: TensorData, val_data: TensorData | None, cfg, runtime: Runtime, *,
          task: str, seed: int = 0, y_scale: float = 1.0, augment: Callable | None = None,
          sampling_weights: torch.Tensor | None = None, on_eval: Callable[[int, dict], bool | None] | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
          monitor: Metric | None = None, ranking: Metric | None = None, inverse: Callable | None = None) -> TrainResult:
    """Train `model` in place and return its history; the best validation weights end up loaded.

    cfg: a TrainConfig (optimizer, lr, schedule, loss, epochs, batch_size, patience, ...).
    y_scale: regression only, multiplies RMSE back into target units for the history.
    augment: `aug(x, y) -> (x, y_b, lam)` applied to training batches only (y_b: mixing partner labels or None).
    sampling_weights: (N,) draw each epoch's samples with replacement in proportion to these (balanced batches).
    monitor: what early stopping and the best weights follow (a history key and its direction); default
    `evaluate.monitored_metric(task, cfg.monitor)`. Without validation rows, the training loss.
    ranking: the metric that ranks the run (search.metric), validated each time too so a search can prune on it.
    inverse: regression, the target transform's inverse (model outputs -> target units) for the history's metrics.
    checkpoint_dir: where the state after each validated epoch goes (None: no checkpoints, as for search
    trials, which are never resumed); resume=True continues from it.
    """
    check_config(cfg, task)
    model.to(runtime.device)
    dev = next(model.parameters()).device  # with its index ('cuda' -> cuda:0): resident batches skip the copy below
    net = torch.compile(model) if runtime.compile else model
    rank, world = dist.world()  # several processes (cotune train --nproc): each steps on its rows of every batch
    fwd = dist.wrap(net, runtime, find_unused=cfg.freeze_epochs > 0)  # DDP averages their gradients
    head = model_head(model) if cfg.freeze_epochs > 0 or cfg.backbone_lr != 1.0 else None  # the output layer
    opt = make_optimizer(model, cfg, fused=runtime.is_cuda and cfg.optimizer in ("adam", "adamw"),
                         head=head if cfg.backbone_lr != 1.0 else None)
    # train.freeze_epochs: the rest gets no gradients (so no steps, no weight decay, no optimizer state) and its
    # batch norms keep their statistics (eval mode, as Keras freezes them): the head learns the inference features
    in_head = {id(p) for p in head.parameters()} if head is not None else set()
    frozen_params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head] if cfg.freeze_epochs else []
    frozen_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                    and not any(m is h for h in head.modules())] if cfg.freeze_epochs else []
    loss_name = resolve_loss(cfg.loss, task)
    n, bs = len(train_data), min(cfg.batch_size, len(train_data))  # bs: the global batch, over all processes
    dist.check_batch(bs, world)
    steps_per_epoch = dist.steps(n, bs, world)  # never a lone 1-sample batch (batch norm)
    total_steps = cfg.epochs * steps_per_epoch
    has_val = val_data is not None and len(val_data) > 0
    monitor = (monitor or monitored_metric(task, cfg.monitor)) if has_val else metric("loss")
    key = monitor.history_key if has_val else "train_loss"
    names = tuple(sorted({monitor.name, *([ranking.name] if ranking is not None else [])}))
    l1_params = [p for p in model.parameters() if p.dim() >= 2] if cfg.l1 > 0 else []  # matrices and kernels
    X, y, w, res = train_data.X, train_data.y, train_data.w, TrainResult()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad_epochs, start_epoch, step = 0, 0, 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is not None and (ckpt / CHECKPOINT_STATE).exists():
        state, best_state = _load_checkpoint(ckpt, model, opt)
        start_epoch, step, bad_epochs = state["epoch"], state["step"], state["bad_epochs"]
        res.history, res.best_epoch, res.best_score, res.train_time_s = (state[k] for k in (
            "history", "best_epoch", "best_score", "train_time_s"))
    bar = ProgressBar(cfg.epochs, start_epoch) if progress else NullProgress()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            runtime.seed(seed * 1_000_003 + epoch)  # shuffles and dropout depend only on (seed, epoch)
            t0 = time.perf_counter()
            frozen = epoch < cfg.freeze_epochs
            for p in frozen_params:
                p.requires_grad_(not frozen)
            fwd.train()
            for m in frozen_norms if frozen else ():
                m.eval()
            perm = (torch.randperm(n, device=X.device) if sampling_weights is None else
                    torch.multinomial(sampling_weights.to(X.device), n, replacement=True))
            dist.reseed(seed * 1_000_003 + epoch, rank, world)  # the same permutation everywhere, dropout per rank
            running = torch.zeros((), device=dev)
            for i in range(steps_per_epoch):
                idx = perm[i * bs:(i + 1) * bs]
                if world > 1:  # this rank's rows of the global batch, and the factor on its mean loss
                    idx, share = dist.shard(idx, w, rank, world)
                lr = get_lr(step, total_steps, cfg.lr, cfg.schedule, cfg.warmup, cfg.gamma, cfg.step_every * steps_per_epoch)
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)  # train.backbone_lr (a checkpoint from before it: 1)
                xb, yb, wb = X[idx], y[idx], None if w is None else w[idx]
                if X.device != dev:  # too big for the device: the batches come from pinned host memory
                    xb, yb, wb = (None if t is None else t.to(dev, non_blocking=True) for t in (xb, yb, wb))
                xb, yb2, lam = (xb, None, 1.0) if augment is None else augment(xb, yb)  # yb2: mixing partners' labels
                with runtime.autocast():
                    out = fwd(xb).float()  # (B, K), or (B, k, K) from an ensemble model
                loss = compute_loss(out, yb, wb, loss_name, cfg)
                if yb2 is not None:  # mixup / cutmix: the loss mixes both label sets
                    loss = lam * loss + (1 - lam) * compute_loss(out, yb2, wb, loss_name, cfg)
                loss = loss * share if world > 1 else loss  # the mean over ranks: the whole batch's mean loss
                if l1_params:
                    loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                running += loss.detach()
                step += 1
            train_loss = dist.mean(running).item() / steps_per_epoch  # the epoch's one host sync
            res.train_time_s += time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise TrainingError(f"Training diverged: the loss became {train_loss} in epoch {epoch + 1}; "
                                    "lower train.lr or set train.grad_clip (e.g. 1.0).")
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr}
            # with train.val_every > 1 only every val_every-th epoch (and the last) is validated and can be the best
            check = not has_val or (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
            if check and rank == 0:  # with several processes rank 0 alone validates, checkpoints and decides
                if has_val:
                    row.update(validate(net, val_data, runtime, task, y_scale, names, inverse))
                score = row[key]
                if res.best_epoch == 0 or monitor.better(score, res.best_score):
                    res.best_epoch, res.best_score = epoch + 1, score
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad_epochs = epoch + 1 - res.best_epoch  # epochs since the best
            res.history.append(row)
            stop = check and cfg.patience > 0 and bad_epochs >= cfg.patience
            if ckpt is not None and check and rank == 0:  # a resumed run replays the epochs since (each: seed, epoch)
                _save_checkpoint(ckpt, model, opt, best_state, {
                    "epoch": epoch + 1, "step": step, "bad_epochs": bad_epochs, "history": res.history,
                    "best_epoch": res.best_epoch, "best_score": res.best_score, "train_time_s": res.train_time_s})
            bar.update(train_loss, row)
            if on_eval is not None and rank == 0 and on_eval(epoch + 1, row):
                stop = True
            if world > 1:  # the other ranks keep rank 0's best weights and stop with it
                best, stop = dist.follow(res.best_epoch, stop, dev)
                if best != res.best_epoch:
                    res.best_epoch, best_state = best, {k: v.detach().clone() for k, v in model.state_dict().items()}
            if stop:
                res.stopped_early = epoch + 1 < cfg.epochs
                break
    finally:
        bar.stop()
        for p in frozen_params:
            p.requires_grad_(True)
    model.load_state_dict(best_state)
    res.epochs_run, res.steps = len(res.history), step
    res.samples_per_s = res.steps * bs / res.train_time_s if res.train_time_s > 0 else 0.0
    return res


class NullProgress:
    """The progress bar's methods, doing nothing: the loop never asks whether a bar is shown."""

    def update(self, loss: float, row: dict) -> None: ...

    def stop(self) -> None: ...


class ProgressBar(NullProgress):
    """One rich bar over the epochs, with the last training loss and validation value."""

    def __init__(self, epochs: int, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                          TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[val]}"),
                          TimeRemainingColumn(), transient=False)
        self.task = self.p.add_task("train", total=epochs, completed=done, loss=float("nan"), val="")
        self.p.start()

    def update(self, loss: float, row: dict) -> None:
        val = next((f"{k[4:]} {row[k]:.4f}" for k in ("val_accuracy", "val_rmse", "val_loss") if k in row), "")
        self.p.update(self.task, advance=1, loss=loss, val=val)

    def stop(self) -> None:
        self.p.stop()
