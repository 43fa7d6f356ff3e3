"""Scaling laws fitted to validation losses: one axis L(x) = E + A/x**alpha and the joint
L(N, D) = E + A/N**alpha + B/D**beta over model size N and training-set size D.

The joint law also comes in an interaction form, L = E + ((A/N**alpha)**(1/q) + (B/D**beta)**(1/q))**q:
q = 1 is the additive law; q < 1 bends it toward max(A/N**alpha, B/D**beta), where a bigger model gains
little until the data stops limiting it (Kaplan et al. 2020 use such a form for early-stopped runs).

The fit follows Hoffmann et al. 2022 (Chinchilla, Approach 3): with E = exp(e), A = exp(a),
B = exp(b), minimise a Huber loss of logsumexp(a - alpha*log N, b - beta*log D, e) - log L with
L-BFGS-B from the best starts of a grid, then bootstrap the points for 90% intervals. E is kept at
or above 1% of the smallest loss (see _fit). numpy + scipy only: the HTML report imports this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from cotune.errors import ConfigError

# Residuals are differences of log losses. Those under 1% are penalised quadratically (smooth, and
# efficient at the 1-3% seed noise of small runs); larger ones linearly, so one diverged run cannot
# drag the fit. Chinchilla used 1e-3, which makes the fit nearly L1 and its objective kinked almost everywhere.
HUBER_DELTA = 1e-2
MIN_SIZES, MIN_POINTS = 3, 8
_EXPONENT_MAX = 3.0
_ALPHAS = (0.1, 0.3, 0.6, 1.0, 2.0)          # starting exponents
_E_FRACS = (0.05, 0.3, 0.6, 0.9)             # starting E as a fraction of the smallest loss
_TERM_FRACS = (0.1, 0.5, 2.0)                # starting term at the geometric-mean size, same units
_N_STARTS = 8                                # best grid points that get a full L-BFGS-B run
Q_MIN, Q_MAX = 0.05, 2.0                     # the interaction form's q
_QS = (0.2, 0.5, 1.0, 1.5)                   # its starting q, each from the additive optimum


# ---------------------------------------------------------------- objective (shared by both laws)
# Parameters p = [e, a_1, alpha_1, ..., a_m, alpha_m]; logX is (n, m), one column per axis. Inside
# the fit each log x is centred on its mean, so a_j is the log of term j at the geometric-mean size:
# a and alpha are then nearly uncorrelated and L-BFGS-B converges in a few dozen steps.

def _residuals(P: np.ndarray, logX: np.ndarray, logL: np.ndarray) -> np.ndarray:
    """Returns the log residuals (G, n) for parameter rows P (G, k); used to rank the grid."""
    U = P[:, None, 1::2] - P[:, None, 2::2] * logX[None]                  # (G, n, m)
    U = np.concatenate([U, np.broadcast_to(P[:, None, :1], U.shape[:2] + (1,))], axis=2)
    mx = U.max(axis=2)
    return mx + np.log(np.exp(U - mx[..., None]).sum(axis=2)) - logL


def _huber(r: np.ndarray) -> np.ndarray:
    """Mean Huber loss over the last axis, scaled by 1/delta**2 so L-BFGS-B tolerances bite."""
    m = np.minimum(np.abs(r), HUBER_DELTA)                                # |dH/dr|
    return (m * (np.abs(r) - 0.5 * m)).sum(axis=-1) / (r.shape[-1] * HUBER_DELTA ** 2)


def _huber_grad(r: np.ndarray) -> tuple[float, np.ndarray]:
    """(_huber of the residuals r (n,), its derivative by each residual)."""
    ar = np.abs(r)
    m = np.minimum(ar, HUBER_DELTA)
    scale = 1.0 / (len(r) * HUBER_DELTA ** 2)
    return float(m @ (ar - 0.5 * m)) * scale, np.copysign(m, r) * scale


def _objective(p: np.ndarray, logX: np.ndarray, logL: np.ndarray):
    """Returns (scaled mean Huber loss, its gradient) at one parameter vector p."""
    S = np.exp(p[1::2] - p[2::2] * logX)      # (n, m) power terms; the bounds keep exp finite
    s0 = np.exp(p[0])
    s = S.sum(axis=1) + s0
    loss, psi = _huber_grad(np.log(s) - logL)  # residual: logsumexp - log L
    psi = psi / s                             # dH/dr over the sum: softmax weights are S/s, s0/s
    g = np.empty_like(p)
    g[0] = psi.sum() * s0
    g[1::2] = psi @ S
    g[2::2] = -psi @ (S * logX)
    return loss, g


def _interaction(p: np.ndarray, logX: np.ndarray):
    """The interaction form's log L at p = [e, a_1, alpha_1, ..., a_m, alpha_m, log q] (n,), and what
    its gradient needs: softmax weights over the terms (n, m), the inner log sum (n,), the terms' logs U."""
    q = np.exp(p[-1])
    U = p[1:-1:2] - p[2:-1:2] * logX          # (n, m) log power terms
    V = U / q
    vmax = V.max(axis=1, keepdims=True)
    W = np.exp(V - vmax)
    sw = W.sum(axis=1, keepdims=True)
    inner = q * (vmax[:, 0] + np.log(sw[:, 0]))  # q * logsumexp(U / q): log of the combined terms
    return np.logaddexp(p[0], inner), W / sw, inner, U


def _objective_q(p: np.ndarray, logX: np.ndarray, logL: np.ndarray):
    """_objective for the interaction form: (scaled mean Huber loss, its gradient)."""
    logs, W, inner, U = _interaction(p, logX)
    loss, psi = _huber_grad(logs - logL)
    pe = np.exp(p[0] - logs)                  # share of E in L; the rest is the combined terms'
    pin = psi * (1.0 - pe)
    g = np.empty_like(p)
    g[0] = psi @ pe
    g[1:-1:2] = pin @ W
    g[2:-1:2] = -pin @ (W * logX)
    g[-1] = pin @ (inner - (W * U).sum(axis=1))  # d inner / d log q
    return loss, g


def _minimise(starts, logX, logL, bounds, maxiter: int = 1000, objective=_objective) -> np.ndarray | None:
    """Returns the best optimum found by L-BFGS-B from each start (rows of `starts`)."""
    lo, hi = np.array(bounds).T
    best, best_f = None, np.inf
    for p0 in starts:
        res = minimize(objective, np.clip(p0, lo, hi), args=(logX, logL), jac=True,
                       method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": maxiter, "ftol": 1e-12, "gtol": 1e-9})
        if np.isfinite(res.fun) and res.fun < best_f:
            best, best_f = res.x, res.fun
    return best


def _fit(logX: np.ndarray, logL: np.ndarray, n_boot: int, seed: int, interaction: bool = False):
    """Returns (best parameters, bootstrap parameter draws (n_boot, k), RMS log residual).

    Parameters come back in the caller's uncentred form [e, a_1, alpha_1, ...] (+ [log q] with
    `interaction`, whose fit starts from the additive optimum at several q).
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError(f"n_boot must be a whole number >= 0 (got {n_boot!r}); pass e.g. n_boot=200.")
    mu = logX.mean(axis=0)
    Xc, lmin, lmax = logX - mu, float(logL.min()), float(logL.max())
    # Exponents in [0, 3]; each term, at the geometric-mean size, between e**-10 times the smallest
    # loss and e**5 times the largest. E has a floor of 1% of the smallest loss: as E = exp(e) -> 0
    # its gradient vanishes too, so a fit (or a bootstrap refit) that reaches a lower floor cannot
    # climb back out. 1% is well inside what the seed noise of small runs can resolve.
    bounds = [(lmin + np.log(0.01), lmax)] + [(lmin - 10.0, lmax + 5.0), (0.0, _EXPONENT_MAX)] * logX.shape[1]
    axes = [np.log(_E_FRACS) + lmin] + [np.log(_TERM_FRACS) + lmin, np.asarray(_ALPHAS)] * logX.shape[1]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    starts = grid[np.argsort(_huber(_residuals(grid, Xc, logL)))[:_N_STARTS]]
    p = _minimise(starts, Xc, logL, bounds)
    objective = _objective
    if interaction:
        objective, bounds = _objective_q, bounds + [(np.log(Q_MIN), np.log(Q_MAX))]
        p = _minimise([np.append(p, np.log(q)) for q in _QS], Xc, logL, bounds, objective=objective)
    rng, n, draws = np.random.default_rng(seed), len(logL), []
    for _ in range(n_boot):        # refit each resample from the full-data optimum: one cheap run
        i = rng.integers(0, n, n)
        q = _minimise([p], Xc[i], logL[i], bounds, maxiter=300, objective=objective)
        if q is not None:
            draws.append(q)
    r = _interaction(p, Xc)[0] - logL if interaction else _residuals(p[None], Xc, logL)[0]
    rmse = float(np.sqrt(np.mean(r ** 2)))
    P = np.vstack([p[None], np.asarray(draws).reshape(-1, len(p))])
    k = 2 * logX.shape[1]
    P[:, 1:k:2] += P[:, 2:k + 1:2] * mu                                   # un-centre: a = a_c + alpha*mu
    return P[0], P[1:], rmse


def _natural(P: np.ndarray, has_q: bool = False) -> np.ndarray:
    """Log-space parameter rows [e, a, alpha, (b, beta), (log q)] -> [E, A, alpha, (B, beta), (q)]."""
    Q = np.array(P, dtype=float)
    end = Q.shape[-1] - has_q
    Q[..., 0] = np.exp(Q[..., 0])
    Q[..., 1:end:2] = np.exp(Q[..., 1:end:2])                             # a, b; exponents stay
    if has_q:
        Q[..., -1] = np.exp(Q[..., -1])
    return Q


def _intervals(names: tuple[str, ...], draws: np.ndarray) -> dict[str, tuple[float, float]]:
    """90% percentile intervals per parameter; empty when there are no bootstrap draws."""
    if not len(draws):
        return {}
    Q = _natural(draws, "q" in names)
    return {k: (float(np.percentile(Q[:, i], 5)), float(np.percentile(Q[:, i], 95)))
            for i, k in enumerate(names)}


# ---------------------------------------------------------------- input checks

def _positive(name: str, v, fix: str) -> np.ndarray:
    """Returns v as a 1-d float array; ConfigError if any value is non-finite or <= 0."""
    try:
        a = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ConfigError(f"Every {name} must be a finite number > 0 (got {v!r}); {fix}.") from None
    bad = np.flatnonzero(~np.isfinite(a) | (a <= 0))
    if len(bad):
        raise ConfigError(f"Every {name} must be a finite number > 0 (got {float(a[bad[0]])!r} at "
                          f"index {int(bad[0])}); {fix}.")
    return a


def _same_length(**arrays: np.ndarray) -> None:
    """Returns None; ConfigError unless every array has the same length."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ConfigError(f"A scaling fit needs one value per point in each array (got lengths {got}); "
                          "pass arrays of equal length.")


def check_points(N, D, L) -> None:
    """Returns None; raises ConfigError when (N, D, L) cannot support a joint scaling fit."""
    fix = "drop runs that diverged or failed before fitting"
    N, D = _positive("model size N", N, fix), _positive("training-set size D", D, fix)
    L = _positive("validation loss", L, fix)
    _same_length(N=N, D=D, L=L)
    n_sizes, n_fracs = len(np.unique(N)), len(np.unique(D))
    if n_sizes < MIN_SIZES or n_fracs < MIN_SIZES:
        raise ConfigError(f"A scaling fit needs at least {MIN_SIZES} model sizes and {MIN_SIZES} "
                          f"training-set sizes (got {n_sizes} sizes x {n_fracs} fractions); "
                          "run `cotune scale` with more --sizes/--fractions.")
    if len(L) < MIN_POINTS:
        raise ConfigError(f"A scaling fit needs at least {MIN_POINTS} points (got {len(L)}); "
                          "run `cotune scale` with more --sizes/--fractions.")


# ---------------------------------------------------------------- single-axis law

@dataclass
class AxisLaw:
    """y = E + A * x**(-alpha) along one axis (model size N or data size D)."""
    E: float
    A: float
    alpha: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # 90% bootstrap intervals
    rmse_log: float = float("nan")                                    # RMS residual in log(y)

    def __call__(self, x) -> np.ndarray:
        """Returns the law at x (any shape)."""
        return self.E + self.A * np.asarray(x, dtype=float) ** (-self.alpha)

    def to_dict(self) -> dict:
        """Returns a JSON-serialisable dict; from_dict inverts it."""
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "rmse_log": self.rmse_log,
                "ci": {k: list(v) for k, v in self.ci.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> AxisLaw:
        """Returns the AxisLaw that to_dict wrote."""
        return cls(**_load(d, ("E", "A", "alpha"), "AxisLaw"))


def fit_axis(x, y, *, n_boot: int = 200, seed: int = 0) -> AxisLaw:
    """Returns the AxisLaw y = E + A*x**(-alpha) fitted to the points, with bootstrap intervals."""
    fix = "drop runs that diverged or failed before fitting"
    x, y = _positive("size x", x, fix), _positive("loss", y, fix)
    _same_length(x=x, y=y)
    if len(np.unique(x)) < MIN_SIZES:
        raise ConfigError(f"A single-axis scaling fit needs at least {MIN_SIZES} distinct sizes "
                          f"(got {len(np.unique(x))}); run `cotune scale` with more --sizes/--fractions.")
    p, draws, rmse = _fit(np.log(x)[:, None], np.log(y), n_boot, seed)
    E, A, alpha = (float(v) for v in _natural(p))
    return AxisLaw(E, A, alpha, _intervals(("E", "A", "alpha"), draws), rmse)


# ---------------------------------------------------------------- joint law

@dataclass
class JointLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta over model size N and training-set size D; with q != 1
    the interaction form E + ((A / N**alpha)**(1/q) + (B / D**beta)**(1/q))**q."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # 90% bootstrap intervals
    rmse_log: float = float("nan")                                    # RMS residual in log(L)
    n_points: int = 0
    q: float = 1.0
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)  # bootstrap rows (not saved)

    @property
    def form(self) -> str:
        return "additive" if self.q == 1.0 else "interaction"

    def terms(self, N, D) -> tuple[np.ndarray, np.ndarray]:
        """(A / N**alpha, B / D**beta): the model's and the data's term at (N, D)."""
        return self.A * np.asarray(N, dtype=float) ** (-self.alpha), self.B * np.asarray(D, dtype=float) ** (-self.beta)

    def predict(self, N, D) -> np.ndarray:
        """Returns the predicted loss at (N, D), broadcast together."""
        tn, td = self.terms(N, D)
        if self.q == 1.0:
            return self.E + tn + td
        return self.E + np.exp(self.q * np.logaddexp(np.log(tn) / self.q, np.log(td) / self.q))

    def interval(self, N, D, level: float = 0.9) -> tuple[float, float] | None:
        """The bootstrap's `level` percentile interval for the loss at one (N, D); None without draws."""
        if self.draws is None or not len(self.draws):
            return None
        preds = [JointLaw(**dict(zip(PARAMS, map(float, row)))).predict(N, D) for row in self.draws]
        tail = 50 * (1 - level)
        return float(np.percentile(preds, tail)), float(np.percentile(preds, 100 - tail))

    def describe(self) -> str:
        """The law with its numbers, as one line."""
        tn, td = f"{self.A:.3g} / N^{self.alpha:.3f}", f"{self.B:.3g} / D^{self.beta:.3f}"
        if self.q == 1.0:
            return f"L(N, D) = {self.E:.3g} + {tn} + {td}"
        return f"L(N, D) = {self.E:.3g} + (({tn})^(1/q) + ({td})^(1/q))^q with q = {self.q:.3f}"

    def to_dict(self) -> dict:
        """Returns a JSON-serialisable dict; from_dict inverts it."""
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta, "q": self.q,
                "form": self.form, "rmse_log": self.rmse_log, "n_points": self.n_points,
                "ci": {k: list(v) for k, v in self.ci.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> JointLaw:
        """Returns the JointLaw that to_dict wrote."""
        out = _load(d, ("E", "A", "alpha", "B", "beta"), "JointLaw")
        return cls(**out, n_points=int(d.get("n_points", 0)), q=float(d.get("q", 1.0)))


def _load(d: dict, names: tuple[str, ...], kind: str) -> dict:
    """Returns constructor kwargs (parameters, ci, rmse_log) read from a to_dict() dict."""
    missing = [k for k in names if k not in d]
    if missing:
        raise ConfigError(f"A saved {kind} lacks {', '.join(missing)}; rerun `cotune scale` to rewrite it.")
    out = {k: float(d[k]) for k in names}
    out["ci"] = {k: (float(v[0]), float(v[1])) for k, v in (d.get("ci") or {}).items()}
    out["rmse_log"] = float(d.get("rmse_log", float("nan")))
    return out


FORMS = ("additive", "interaction")
PARAMS = ("E", "A", "alpha", "B", "beta", "q")  # a JointLaw's fitted parameters, in _fit's order (q: interaction)


def fit_joint(N, D, L, *, n_boot: int = 200, seed: int = 0, form: str = "additive") -> JointLaw:
    """Returns the JointLaw of `form` fitted to losses L at model sizes N and data sizes D, with 90% intervals."""
    if form not in FORMS:
        raise ConfigError(f"The joint law's form must be one of {', '.join(FORMS)} (got {form!r}).")
    check_points(N, D, L)
    N, D, L = (np.asarray(v, dtype=float).ravel() for v in (N, D, L))
    p, draws, rmse = _fit(np.log(np.column_stack([N, D])), np.log(L), n_boot, seed, interaction=form == "interaction")
    names = PARAMS[:len(p)]
    params = dict(zip(names, (float(v) for v in _natural(p, "q" in names))))
    return JointLaw(**params, ci=_intervals(names, draws), rmse_log=rmse, n_points=len(L),
                    draws=_natural(draws, "q" in names) if len(draws) else None)


def compute_optimal(law: JointLaw, compute: float, flops_per_param_sample: float) -> dict:
    """Returns {"N", "D", "loss"}: the split minimising law.predict under compute = k * N * D.

    Additive form: setting d/dN of A/N**alpha + B/(C/(k N))**beta to zero gives
    N = G * (C/k)**(beta/(alpha+beta)) with G = (alpha*A / (beta*B))**(1/(alpha+beta)), and D = (C/k) / N.
    The interaction form has no closed form; along the constraint it is a power of a sum of two
    exponentials in log N (convex, one minimum), found by a bounded scalar search.
    """
    for name, v in (("compute", compute), ("flops_per_param_sample", flops_per_param_sample)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 < float(v) < np.inf:
            raise ConfigError(f"{name} must be a finite number > 0 (got {v!r}); pass e.g. 1e15.")
    if not (law.alpha > 0 and law.beta > 0 and law.A > 0 and law.B > 0):
        raise ConfigError(f"The fitted law has alpha={law.alpha:.3g}, beta={law.beta:.3g}, so loss does not "
                          "trade model size against data; run `cotune scale` with a wider range of "
                          "--sizes/--fractions.")
    s, a, b = compute / flops_per_param_sample, law.alpha, law.beta
    G = (a * law.A / (b * law.B)) ** (1.0 / (a + b))
    N = G * s ** (b / (a + b))
    if law.q != 1.0:
        res = minimize_scalar(lambda t: float(np.log(law.predict(np.exp(t), s / np.exp(t)))),
                              bounds=(0.0, np.log(s)), method="bounded", options={"xatol": 1e-6})
        N = float(np.exp(res.x))
    D = s / N
    return {"N": float(N), "D": float(D), "loss": float(law.predict(N, D))}
