"""Scaling-law fits: known laws are recovered from synthetic points, bad points are refused with a
message that says what is needed, the compute-optimal split is optimal along its constraint, and
fitted laws survive a JSON round trip.

The noisy joint fit uses the 4x4 grid a small `cotune scale` study would produce, with 2% Gaussian
multiplicative noise (seed 0). On 16 such points E is only weakly identified (it is ~10% of the
smallest loss, and a fit with E near 0 explains the data almost as well; its 90% interval spans
0.02..0.28), so E gets a loose tolerance there; the noiseless test pins it exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cotune.errors import ConfigError
from cotune.scale.law import AxisLaw, JointLaw, check_points, compute_optimal, fit_axis, fit_joint

TRUE = {"E": 0.2, "A": 40.0, "alpha": 0.5, "B": 60.0, "beta": 0.4}
TRUE_LAW = JointLaw(**TRUE)


def grid(n_sizes: int = 4, n_fracs: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Returns (N, D) flattened over an n_sizes x n_fracs grid, N in 1e3..1.6e4, D in 5e2..8e3."""
    N, D = np.meshgrid(np.geomspace(1e3, 1.6e4, n_sizes), np.geomspace(5e2, 8e3, n_fracs))
    return N.ravel(), D.ravel()


@pytest.fixture(scope="module")
def noisy_fit() -> JointLaw:
    N, D = grid()
    L = TRUE_LAW.predict(N, D) * (1 + 0.02 * np.random.default_rng(0).standard_normal(N.shape))
    return fit_joint(N, D, L, n_boot=200, seed=0)


def test_fit_joint_recovers_a_known_law_from_noisy_points(noisy_fit):
    law = noisy_fit
    assert law.n_points == 16
    assert abs(law.alpha - TRUE["alpha"]) < 0.15
    assert abs(law.beta - TRUE["beta"]) < 0.05
    assert abs(law.E - TRUE["E"]) < 0.35           # ~15% of the smallest loss (2.2)
    assert 0.01 < law.rmse_log < 0.04              # the residuals look like the 2% noise put in
    # a held-out corner, twice beyond the largest N and D that were fitted
    N, D = 3.2e4, 1.6e4
    assert float(law.predict(N, D)) == pytest.approx(float(TRUE_LAW.predict(N, D)), rel=0.05)
    for k in ("E", "alpha", "beta"):               # the truth lies in the 90% interval (give or take 0.02)
        lo, hi = law.ci[k]
        assert lo - 0.02 <= TRUE[k] <= hi + 0.02, (k, law.ci[k])
        assert lo <= getattr(law, k) <= hi and hi - lo < 0.6
    assert set(law.ci) == set(TRUE)


def test_interval_holds_the_truth_and_widens_beyond_the_points(noisy_fit):
    inner, far = (4e3, 2e3), (1.6e5, 8e4)           # inside the grid; 10x beyond its largest N and D
    lo, hi = noisy_fit.interval(*inner)
    assert lo <= float(TRUE_LAW.predict(*inner)) <= hi and lo <= float(noisy_fit.predict(*inner)) <= hi
    flo, fhi = noisy_fit.interval(*far)
    assert flo <= float(TRUE_LAW.predict(*far)) <= fhi
    assert (fhi - flo) / float(noisy_fit.predict(*far)) > 2 * (hi - lo) / float(noisy_fit.predict(*inner))
    N, D = grid()
    assert fit_joint(N, D, TRUE_LAW.predict(N, D), n_boot=0).interval(*inner) is None  # no bootstrap, no interval
    assert JointLaw.from_dict(noisy_fit.to_dict()).interval(*inner) is None           # the draws are not saved


def test_fit_joint_is_near_exact_without_noise():
    N, D = grid()
    law = fit_joint(N, D, TRUE_LAW.predict(N, D), n_boot=10)
    for k, v in TRUE.items():
        assert getattr(law, k) == pytest.approx(v, rel=1e-4), k
        lo, hi = law.ci[k]
        assert lo == pytest.approx(v, rel=1e-3) and hi == pytest.approx(v, rel=1e-3), k
    assert law.rmse_log < 1e-6


def test_fit_joint_is_deterministic_for_a_seed():
    N, D = grid()
    L = TRUE_LAW.predict(N, D) * (1 + 0.02 * np.random.default_rng(1).standard_normal(N.shape))
    a, b = fit_joint(N, D, L, n_boot=20, seed=3), fit_joint(N, D, L, n_boot=20, seed=3)
    assert a == b
    assert fit_joint(N, D, L, n_boot=0).ci == {}


def test_fit_axis_recovers_a_known_law():
    x = np.geomspace(1e3, 1e5, 8)
    truth = AxisLaw(E=0.5, A=30.0, alpha=0.6)
    exact = fit_axis(x, truth(x), n_boot=0)
    assert (exact.E, exact.A, exact.alpha) == pytest.approx((0.5, 30.0, 0.6), rel=1e-4)
    y = truth(x) * (1 + 0.01 * np.random.default_rng(0).standard_normal(x.shape))
    law = fit_axis(x, y, n_boot=100)
    assert abs(law.alpha - 0.6) < 0.1 and abs(law.E - 0.5) < 0.1
    assert law(2e5) == pytest.approx(truth(2e5), rel=0.03)
    assert law.ci["alpha"][0] <= law.alpha <= law.ci["alpha"][1]
    assert law(np.array([1e3, 1e4])).shape == (2,)


@pytest.mark.parametrize("N, D, L, needle", [
    # two model sizes
    (*grid(2, 4), np.full(8, 1.0), "at least 3 model sizes and 3 training-set sizes (got 2 sizes x 4"),
    # three of each but only 7 points
    (*[v[:7] for v in grid(3, 3)], np.full(7, 1.0), "at least 8 points (got 7)"),
])
def test_check_points_names_what_is_needed(N, D, L, needle):
    with pytest.raises(ConfigError, match="cotune scale") as err:
        check_points(N, D, L)
    assert needle in str(err.value)
    with pytest.raises(ConfigError):
        fit_joint(N, D, L, n_boot=0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_check_points_refuses_a_loss_that_is_not_positive_and_finite(bad):
    N, D = grid()
    L = TRUE_LAW.predict(N, D)
    L[5] = bad
    with pytest.raises(ConfigError) as err:
        check_points(N, D, L)
    msg = str(err.value)
    assert "validation loss must be a finite number > 0" in msg and "index 5" in msg and "\n" not in msg
    check_points(N, D, TRUE_LAW.predict(N, D))     # the clean points pass


def test_check_points_refuses_arrays_of_different_lengths():
    N, D = grid()
    with pytest.raises(ConfigError, match="equal length"):
        check_points(N, D[:-1], TRUE_LAW.predict(N, D))


def test_fit_axis_refuses_too_few_sizes():
    with pytest.raises(ConfigError, match="at least 3 distinct sizes"):
        fit_axis([1e3, 1e3, 2e3], [2.0, 2.1, 1.8])


def test_compute_optimal_is_the_minimum_along_the_constraint():
    C, k = 1e15, 6.0
    opt = compute_optimal(TRUE_LAW, C, k)
    N, D = opt["N"], opt["D"]
    assert k * N * D == pytest.approx(C, rel=1e-12)
    assert opt["loss"] == pytest.approx(float(TRUE_LAW.predict(N, D)))
    assert opt["loss"] < float(TRUE_LAW.predict(2 * N, D / 2))
    assert opt["loss"] < float(TRUE_LAW.predict(N / 2, 2 * D))
    # brute force along k*N*D = C over twelve decades of N
    Ns = np.geomspace(N * 1e-6, N * 1e6, 200_001)
    losses = TRUE_LAW.predict(Ns, C / (k * Ns))
    assert Ns[np.argmin(losses)] == pytest.approx(N, rel=1e-3)
    assert opt["loss"] <= losses.min() + 1e-12


def test_compute_optimal_refuses_bad_input():
    with pytest.raises(ConfigError, match="compute must be a finite number > 0"):
        compute_optimal(TRUE_LAW, -1.0, 6.0)
    with pytest.raises(ConfigError, match="flops_per_param_sample"):
        compute_optimal(TRUE_LAW, 1e15, float("nan"))
    with pytest.raises(ConfigError, match="alpha=0"):
        compute_optimal(JointLaw(**{**TRUE, "alpha": 0.0}), 1e15, 6.0)


def test_laws_round_trip_through_json(noisy_fit):
    back = JointLaw.from_dict(json.loads(json.dumps(noisy_fit.to_dict())))
    assert back == noisy_fit
    assert back.predict(1e4, 1e4) == noisy_fit.predict(1e4, 1e4)
    x = np.geomspace(1e3, 1e5, 6)
    axis = fit_axis(x, 0.5 + 30 * x ** -0.6, n_boot=5)
    assert AxisLaw.from_dict(json.loads(json.dumps(axis.to_dict()))) == axis
    with pytest.raises(ConfigError, match="lacks beta"):
        JointLaw.from_dict({k: v for k, v in noisy_fit.to_dict().items() if k != "beta"})


# ---------------------------------------------------------------- the interaction form
# near max(A/N^alpha, B/D^beta): a bigger model gains little while data limits it. A is larger than in
# TRUE so that both terms matter across the grid (otherwise q is hardly identified).
TRUE_Q = {**TRUE, "A": 150.0, "q": 0.3}
TRUE_Q_LAW = JointLaw(**TRUE_Q)


def test_interaction_form_reduces_to_the_additive_law_at_q_1():
    N, D = grid()
    assert np.allclose(JointLaw(**{**TRUE, "q": 1.0 + 1e-12}).predict(N, D), TRUE_LAW.predict(N, D), rtol=1e-9)
    tn, td = TRUE_Q_LAW.terms(N, D)
    assert np.all(TRUE_Q_LAW.predict(N, D) < TRUE["E"] + tn + td)               # q < 1: below the sum of the terms
    assert np.all(TRUE_Q_LAW.predict(N, D) > TRUE["E"] + np.maximum(tn, td))    # and above the larger term
    assert TRUE_LAW.form == "additive" and TRUE_Q_LAW.form == "interaction"
    assert TRUE_LAW.describe() == "L(N, D) = 0.2 + 40 / N^0.500 + 60 / D^0.400"
    assert TRUE_Q_LAW.describe() == "L(N, D) = 0.2 + ((150 / N^0.500)^(1/q) + (60 / D^0.400)^(1/q))^q with q = 0.300"


def test_fit_joint_recovers_a_known_interaction_law_from_noisy_points():
    N, D = grid()
    L = TRUE_Q_LAW.predict(N, D) * (1 + 0.02 * np.random.default_rng(0).standard_normal(N.shape))
    law = fit_joint(N, D, L, n_boot=100, seed=0, form="interaction")
    assert law.form == "interaction" and set(law.ci) == set(TRUE_Q)
    assert abs(law.q - TRUE_Q["q"]) < 0.1
    lo, hi = law.ci["q"]
    assert lo - 0.02 <= TRUE_Q["q"] <= hi + 0.02
    assert law.rmse_log < 0.04                                                   # the 2% noise put in
    additive = fit_joint(N, D, L, n_boot=0)
    assert additive.rmse_log > 3 * law.rmse_log                                 # the additive form cannot follow it
    assert float(law.predict(3.2e4, 1.6e4)) == pytest.approx(float(TRUE_Q_LAW.predict(3.2e4, 1.6e4)), rel=0.05)
    assert JointLaw.from_dict(json.loads(json.dumps(law.to_dict()))) == law


def test_fit_joint_refuses_an_unknown_form():
    N, D = grid()
    with pytest.raises(ConfigError, match="additive, interaction"):
        fit_joint(N, D, TRUE_LAW.predict(N, D), form="kaplan")


def test_compute_optimal_of_the_interaction_form_is_the_minimum_along_the_constraint():
    C, k = 1e15, 6.0
    opt = compute_optimal(TRUE_Q_LAW, C, k)
    Ns = np.geomspace(opt["N"] * 1e-6, opt["N"] * 1e6, 200_001)
    losses = TRUE_Q_LAW.predict(Ns, C / (k * Ns))
    assert Ns[np.argmin(losses)] == pytest.approx(opt["N"], rel=1e-3)
    assert opt["loss"] <= losses.min() + 1e-9
    assert k * opt["N"] * opt["D"] == pytest.approx(C, rel=1e-12)
