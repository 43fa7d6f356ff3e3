"""scale.law=auto: the joint law's form is chosen on the grid's inner corners, never on the study's own.

Synthetic 4x4 grids (2% noise, seed 0) from an additive law and from an interaction law (q = 0.3);
auto must pick the form each came from, and a set scale.law is kept as it is.
"""
from __future__ import annotations

import numpy as np
import pytest

from cotune.scale.advice import choose_form
from cotune.scale.law import JointLaw

ADD = JointLaw(E=0.2, A=150.0, alpha=0.5, B=60.0, beta=0.4)
INTER = JointLaw(E=0.2, A=150.0, alpha=0.5, B=60.0, beta=0.4, q=0.3)


def points(law: JointLaw, drop_corner: bool = True):
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e3, 1.6e4, 4), np.geomspace(5e2, 8e3, 4)))
    L = law.predict(N, D) * (1 + 0.02 * np.random.default_rng(0).standard_normal(N.shape))
    keep = ~((N == N.max()) & (D == D.max())) if drop_corner else np.ones(len(N), bool)
    return N[keep], D[keep], L[keep]


@pytest.mark.parametrize("law, form", [(ADD, "additive"), (INTER, "interaction")])
def test_auto_picks_the_form_the_points_came_from(law, form):
    choice = choose_form(*points(law), "auto", seed=0)
    assert choice["form"] == form
    assert choice["errors"][form] < choice["errors"][{"additive": "interaction", "interaction": "additive"}[form]]
    assert form in choice["note"]


def test_the_corner_takes_no_part():
    """Changing the study's own corner changes nothing: choose_form never sees it (summarize passes the rest)."""
    N, D, L = points(INTER, drop_corner=False)
    corner = (N == N.max()) & (D == D.max())
    a = choose_form(N[~corner], D[~corner], L[~corner], "auto", seed=0)
    L2 = L.copy()
    L2[corner] *= 10
    b = choose_form(N[~corner], D[~corner], L2[~corner], "auto", seed=0)
    assert a == b


def test_a_set_form_is_kept_and_too_few_sizes_fall_back_to_additive():
    assert choose_form(*points(INTER), "additive", seed=0)["form"] == "additive"
    assert choose_form(*points(ADD), "interaction", seed=0)["form"] == "interaction"
    N, D, L = points(INTER)
    small = (N < N.max()) & (D < D.max())   # 3 x 3: without its largest size or share a grid has 2, too few to fit
    choice = choose_form(N[small], D[small], L[small], "auto", seed=0)
    assert choice["form"] == "additive" and "too few" in choice["note"]


def _rows(N, D, L):
    return [{"params": float(n), "samples": float(d), "val_loss": float(v)} for n, d, v in zip(N, D, L)]


def test_runs_past_the_overfitting_turn_are_left_out_of_the_fit():
    """Where a bigger model did worse than a smaller one on the same rows, no law falling with N describes
    the point: law_rows leaves every run there out, and only there; with too few left, it keeps them all."""
    from cotune.scale.advice import law_rows, past_the_turn
    N, D, L = points(INTER, drop_corner=False)
    rows = _rows(N, D, L) + _rows(N, D, L * 1.01)              # two seeds
    assert past_the_turn(rows) == set() and law_rows(rows) == (rows, set())
    ns, ds = np.unique(N), np.unique(D)
    worse = {(ns[-1], ds[0]), (ns[-1], ds[1])}                 # the largest model overfits the two smallest shares
    for r in rows:
        if (r["params"], r["samples"]) in worse:
            below = next(x for x in rows if x["params"] == ns[-2] and x["samples"] == r["samples"])
            r["val_loss"] = below["val_loss"] * 1.05
    assert past_the_turn(rows) == worse
    kept, turned = law_rows(rows)
    assert turned == worse and len(kept) == len(rows) - 4
    assert all((r["params"], r["samples"]) not in worse for r in kept)
    small = [r for r in rows if r["params"] < ns[-1] and r["samples"] < ds[-1]]  # 3 x 3: 9 points, 2 seeds
    for r in small:
        if r["params"] == ns[-2]:
            r["val_loss"] *= 3.0                                # past the turn on every share: 6 points would be left
    assert len(past_the_turn(small)) == 3 and law_rows(small) == (small, set())
