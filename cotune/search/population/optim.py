"""Stacked optimizers: one update over every member's slice, with each member's settings as a (K, 1) tensor.

    opt = StackedOptimizer(pop, cfgs)          # cfgs: the members' TrainConfigs (one train.optimizer)
    opt.step(lr)                               # lr: (K,) this step's rate per member (cotune.train.get_lr)

The update rules are torch.optim's (for-loop order) with the options cotune.train.make_optimizer passes: weight decay
only on matrices and kernels (dim >= 2 in the member's own model), train.backbone_lr on every parameter outside the
output layer, the default eps / alpha / lr_decay. torch.optim cannot do this itself: a tensor lr must have one element.
Settings, bias corrections and step counts are float64 whatever the parameters' dtype (torch.optim computes them as
Python floats), cast once per step. State is keyed by parameter name, so `shrink` survives new parameter tensors.
"""
from __future__ import annotations

import torch

from cotune.errors import ConfigError
from cotune.search.population.stack import Population, take

OPTIMIZERS = ("sgd", "rmsprop", "adagrad", "adam", "adamw")
ADAM_EPS, RMSPROP_ALPHA, RMSPROP_EPS, ADAGRAD_EPS = 1e-8, 0.99, 1e-8, 1e-10
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


def param_info(pop: Population) -> dict[str, tuple[bool, bool]]:
    """name -> (decayed: dim >= 2 in a member's model, in the output layer) for every parameter of pop."""
    info = {}
    for mname, mod in pop.named_modules():
        for layer, _, head in pop.slots:
            if layer is mod:
                member = layer.member(0)
                for n, _ in mod.named_parameters(recurse=False):
                    info[f"{mname}.{n}"] = (member[n].dim() >= 2, head)
    return info


class StackedOptimizer:
    def __init__(self, pop: Population, cfgs: list):
        names = {c.optimizer for c in cfgs}
        if len(names) > 1:
            raise ConfigError(f"A population has one train.optimizer; these members use {sorted(names)}: "
                              "group the trials by optimizer.")
        self.name, self.pop = names.pop(), pop
        dev = pop.ctx.p.device
        col = lambda vals: torch.tensor(vals, dtype=torch.float64, device=dev).reshape(-1, 1)  # noqa: E731
        self.hp = {"wd": col([c.weight_decay for c in cfgs]), "beta1": col([c.beta1 for c in cfgs]),
                   "beta2": col([c.beta2 for c in cfgs]), "momentum": col([c.momentum for c in cfgs]),
                   "nesterov": col([float(c.nesterov) for c in cfgs]), "backbone": col([c.backbone_lr for c in cfgs])}
        self.steps = torch.zeros(len(cfgs), 1, dtype=torch.float64, device=dev)  # per member, as torch's state['step']
        self.info = param_info(pop)
        self._flags = None
        self._flags = self.flags  # on the host, once (and again after shrink)
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def k(self) -> int:
        return self.steps.shape[0]

    def params(self):
        return [(n, p) for n, p in self.pop.named_parameters() if p.requires_grad]

    def zero_grad(self) -> None:
        for _, p in self.params():
            p.grad = None

    def _state(self, name: str, pv: torch.Tensor) -> dict:
        if name not in self.state:
            keys = {"sgd": ("buf",), "rmsprop": ("sq", "buf"), "adagrad": ("sum",)}.get(self.name, ("m", "v"))
            self.state[name] = {k: torch.zeros_like(pv) for k in keys}
        return self.state[name]

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: list[bool] | None = None) -> None:
        """One update of every member at its rate lr (K,); members with active[k] False stay exactly as they are."""
        idle = [] if active is None else [k for k, a in enumerate(active) if not a]
        keep = torch.as_tensor(idle, dtype=torch.long, device=self.steps.device) if idle else None
        saved = {}
        if keep is not None:
            for n, p in self.params():
                saved[n] = (p.view(self.k, -1)[keep].clone(), {s: t[keep].clone() for s, t in self._state(n, p.view(self.k, -1)).items()})
        self.steps += 1 if keep is None else torch.tensor(active, dtype=torch.float64, device=self.steps.device).reshape(-1, 1)
        lr, cache = lr.to(torch.float64).reshape(-1, 1), {}
        for n, p in self.params():
            if p.grad is None:
                continue
            decayed, head = self.info[n]
            key = (decayed, head, p.dtype)
            if key not in cache:  # the step's coefficients, once per kind of parameter
                cache[key] = self._coeffs(lr, decayed, head, p.dtype)
            c, pv, g = cache[key], p.view(self.k, -1), p.grad.view(self.k, -1)
            st = self._state(n, pv)
            if self.name == "adamw":
                pv.mul_(c["decay"])
            elif decayed:  # L2 added to the gradient
                g = g.add(pv * c["wd"])
            if self.name in ("adam", "adamw"):
                st["m"].lerp_(g, c["1-b1"])
                st["v"].mul_(c["b2"]).addcmul_(g, g * c["1-b2"])
                denom = (st["v"].sqrt() / c["bc2_sqrt"]).add_(ADAM_EPS)
                pv.addcdiv_(st["m"] * c["step_size"], denom)
            elif self.name == "sgd":
                st["buf"].mul_(c["momentum"]).add_(g)
                nest = self.flags["nesterov"]
                g = (g + st["buf"] * c["momentum"] if nest is True else st["buf"] if nest is False else
                     torch.where(c["nesterov"], g + st["buf"] * c["momentum"], st["buf"]))
                pv.sub_(g * c["lr"])
            elif self.name == "rmsprop":
                st["sq"].mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
                avg = st["sq"].sqrt().add_(RMSPROP_EPS)
                st["buf"].mul_(c["momentum"]).addcdiv_(g, avg)
                with_m = self.flags["momentum"]
                pv.sub_(st["buf"] * c["lr"] if with_m is True else (g * c["lr"]) / avg if with_m is False else
                        torch.where(c["with_m"], st["buf"] * c["lr"], (g * c["lr"]) / avg))
            else:  # adagrad
                st["sum"].addcmul_(g, g)
                pv.addcdiv_(g * -c["lr"], st["sum"].sqrt().add_(ADAGRAD_EPS))
        for n, (pk, sk) in saved.items():
            p = dict(self.params())[n]
            p.view(self.k, -1)[keep] = pk
            for s, t in sk.items():
                self.state[n][s][keep] = t

    @property
    def flags(self) -> dict:
        """True / False when every member agrees (one branch of the update), else None (a where per parameter)."""
        agree = lambda vals: True if all(vals) else False if not any(vals) else None  # noqa: E731
        return {"nesterov": agree(self.hp["nesterov"].flatten().tolist()),
                "momentum": agree([m > 0 for m in self.hp["momentum"].flatten().tolist()])} if self._flags is None else self._flags

    def _coeffs(self, lr: torch.Tensor, decayed: bool, head: bool, dtype) -> dict:
        """This step's (K, 1) coefficients for one kind of parameter, computed in float64, cast to its dtype once."""
        h = self.hp
        plr = lr if head else lr * h["backbone"]
        wd = h["wd"] if decayed else torch.zeros_like(h["wd"])
        c = {"lr": plr, "wd": wd, "momentum": h["momentum"]}
        if self.name in ("adam", "adamw"):
            c.update({"decay": 1 - plr * wd, "1-b1": 1 - h["beta1"], "b2": h["beta2"], "1-b2": 1 - h["beta2"],
                      "bc2_sqrt": (1 - h["beta2"] ** self.steps).sqrt(), "step_size": -plr / (1 - h["beta1"] ** self.steps)})
        out = {k: v.to(dtype) for k, v in c.items()}
        return {**out, "nesterov": h["nesterov"] > 0, "with_m": h["momentum"] > 0}

    def shrink(self, keep: list[int]) -> None:
        """Keep members `keep` (after pop.shrink(keep)): their state and step counts exactly."""
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.steps.device)
        self.hp = {k: v[idx] for k, v in self.hp.items()}
        k_old = self.k
        self.steps = self.steps[idx]
        self._flags = None
        self._flags = self.flags
        self.state = {n: {s: take(t, k_old, idx) for s, t in st.items()} for n, st in self.state.items()}


@torch.no_grad()
def clip_members(pop: Population, max_norm: torch.Tensor) -> None:
    """clip_grad_norm_ per member: each member's gradients scaled so their global norm is at most max_norm[k]
    (max_norm (K,) float64; 0 = no clipping for that member)."""
    grads = [p.grad.view(pop.k, -1) for p in pop.parameters() if p.grad is not None]
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2, dim=1) for g in grads]), 2, dim=0)
    coef = (max_norm.to(total.device) / (total.to(torch.float64) + CLIP_EPS)).clamp(max=1.0)
    coef = torch.where(max_norm > 0, coef, torch.ones_like(coef)).reshape(-1, 1)
    for g in grads:
        g.mul_(coef.to(g.dtype))
