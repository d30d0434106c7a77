"""Checks of notebook ``exercises/ex05_spectral.ipynb``: the covariance eigenvalues of a
representation, RankMe in both variants and alpha-ReQ.

Hand-solved cases follow tests/test_spectral.py: spectra of known effective rank, an
independent transcription of both RankMe definitions, an exact power law, NumPy's weighted
``polyfit``. The real case is the spectrum of MiniLM's last-layer token states, against
:mod:`repgeo_utils.spectral`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from .. import spectral
from . import realdata
from .checking import array, arrays_close, call, close, items, number, require_function, run_check

LAYER = 6
EPS = spectral.RANKME_EPS  # 1e-7, paper 2's code
VARIANTS: tuple[Literal["covariance", "singular"], ...] = ("covariance", "singular")

# Four points around the mean (1, 1): centred [[1,0],[-1,0],[0,2],[0,-2]], covariance
# diag(2/3, 8/3) with the n - 1 = 3 denominator.
EIG_X = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 3.0], [1.0, -1.0]])
EIG_CASE = "hand case (x = [[2,1],[0,1],[1,3],[1,-1]], mean (1, 1))"


def _real() -> tuple[np.ndarray, str]:
    return realdata.minilm_tokens(LAYER), f"{realdata.describe()}, layer {LAYER}"


def check_covariance_eigenvalues(covariance_eigenvalues: Callable) -> None:
    """``covariance_eigenvalues(x)``: the eigenvalues of the centred covariance
    ``X_c^T X_c / (n - 1)`` of the rows of ``x`` (``n x d``, ``n > d``), largest first."""
    name = "covariance_eigenvalues"

    def test() -> str:
        require_function(covariance_eigenvalues, name)
        n, d = EIG_X.shape
        raw = EIG_X.T @ EIG_X / (n - 1)
        hints = [
            ("they are in ascending order: sort them largest first", lambda: [2 / 3, 8 / 3]),
            ("they are divided by n: the covariance divides by n - 1", lambda: [2.0, 0.5]),
            (
                "the columns are not centred: subtract each column's mean first",
                lambda: np.sort(np.linalg.eigvalsh(raw))[::-1],
            ),
            (
                "those are the singular values of the centred matrix: square them and divide "
                "by n - 1",
                lambda: [math.sqrt(8), math.sqrt(2)],
            ),
        ]
        got = array(call(covariance_eigenvalues, EIG_X, case=EIG_CASE), EIG_CASE, (d,))
        arrays_close(got, np.array([8 / 3, 2 / 3]), EIG_CASE, hints=hints)
        rng = np.random.default_rng(3)
        x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 5.0
        case = "300 random rows x 12 features with a mean of 5"
        got = array(call(covariance_eigenvalues, x, case=case), case, (12,))
        centred = x - x.mean(0)
        want = np.linalg.svd(centred, compute_uv=False) ** 2 / (len(x) - 1)
        arrays_close(got, want, case, rel=1e-8, abs=1e-10)
        x, what = _real()
        got = array(call(covariance_eigenvalues, x, case=what), what, (x.shape[1],))
        want = spectral.eigenspectrum(x)
        arrays_close(got, want, what, rel=1e-4, abs=1e-6 * float(want[0]))
        return f"2 hand-solved cases and {what} (spectral.eigenspectrum)"

    run_check(name, test)


# --- RankMe ---------------------------------------------------------------------------------


def _rankme_by_hand(
    eigenvalues: Sequence[float] | np.ndarray, variant: str, eps: float = EPS
) -> float:
    """Both definitions written out in plain Python (as tests/test_spectral.py does);
    ``eps=0`` leaves the epsilon out (zero weights then contribute nothing)."""
    values = [float(v) for v in eigenvalues]
    if variant == "singular":
        values = [math.sqrt(v) for v in values]
    total = sum(abs(v) for v in values)
    entropy = 0.0
    for v in values:
        p = v / total + eps
        if p > 0:
            entropy -= p * math.log(p)
    return math.exp(entropy)


def _rankme_hints(lam: Sequence[float] | np.ndarray, variant: str) -> list:
    other = "singular" if variant == "covariance" else "covariance"
    return [
        (
            f"that is the {other} variant: "
            + (
                "the covariance variant uses the eigenvalues themselves"
                if variant == "covariance"
                else "the singular variant uses sqrt(eigenvalue)"
            ),
            lambda: _rankme_by_hand(lam, other),
        ),
        (
            "that leaves the epsilon out: add 1e-7 to every p_i (the zero ones too), as paper "
            "2's code does",
            lambda: _rankme_by_hand(lam, variant, eps=0.0),
        ),
        (
            "that is the entropy itself: RankMe is exp(entropy)",
            lambda: math.log(_rankme_by_hand(lam, variant)),
        ),
        (
            "that uses log base 2 inside and exp outside: use the natural logarithm throughout",
            lambda: math.exp(math.log(_rankme_by_hand(lam, variant)) / math.log(2)),
        ),
    ]


def check_rankme(rankme: Callable) -> None:
    """``rankme(eigenvalues, variant)``: ``exp(-sum_i p_i log p_i)`` with
    ``p_i = w_i / sum_j |w_j| + 1e-7``, ``w = eigenvalues`` (``"covariance"``) or
    ``w = sqrt(eigenvalues)`` (``"singular"``)."""
    name = "rankme"

    def test() -> str:
        require_function(rankme, name)
        for variant in VARIANTS:
            pair = [4.0, 1.0]
            case = f"hand case (eigenvalues [4, 1], variant {variant!r})"
            got = number(call(rankme, np.array(pair), variant, case=case), case)
            close(got, _rankme_by_hand(pair, variant), case, hints=_rankme_hints(pair, variant))
        nan_note = (
            "with zero eigenvalues p log p is 0 * log 0 = NaN in floating point; the 1e-7 "
            "epsilon added to every p_i avoids it"
        )
        for variant in VARIANTS:
            flat = [2.0] * 5 + [0.0] * 45
            case = f"5 equal eigenvalues and 45 zeros, variant {variant!r} (RankMe about 5)"
            got = number(call(rankme, np.array(flat), variant, case=case), case, nan_note=nan_note)
            close(got, _rankme_by_hand(flat, variant), case, hints=_rankme_hints(flat, variant))
        rng = np.random.default_rng(7)
        lam = np.sort(rng.gamma(0.5, size=200))[::-1]
        lam[-20:] = 0.0
        for variant in VARIANTS:
            case = f"200 random eigenvalues, the last 20 zero, variant {variant!r}"
            got = number(call(rankme, lam, variant, case=case), case, nan_note=nan_note)
            close(got, _rankme_by_hand(lam, variant), case, hints=_rankme_hints(lam, variant))
        x, what = _real()
        lam = spectral.eigenspectrum(x)
        for variant in VARIANTS:
            case = f"{what}, variant {variant!r}"
            got = number(call(rankme, lam, variant, case=case), case, nan_note=nan_note)
            close(got, spectral.rankme(lam, variant), case, hints=_rankme_hints(lam, variant))
        return f"6 hand-solved cases and {what} (spectral.rankme), both variants"

    run_check(name, test)


# --- alpha-ReQ ------------------------------------------------------------------------------


def _fit(lam: np.ndarray, first: int, last: int, *, weighted=True, zero_based=False, norm=True):
    """Weighted least squares of log(lambda_r) on log r, written with NumPy's polyfit (whose
    weights multiply the residuals, so sqrt(1/r) gives weights 1/r); returns (alpha, intercept)
    and, with the switches, what the known mistakes give."""
    values = lam / lam.sum() if norm else lam
    ranks = np.arange(first, last + 1, dtype=np.float64)
    x = np.log(ranks - 1) if zero_based else np.log(ranks)
    w = np.sqrt(1 / ranks) if weighted else None
    slope, intercept = np.polyfit(x, np.log(values[first - 1 : last]), 1, w=w)
    return -float(slope), float(intercept)


def _alpha_hints(lam: np.ndarray, first: int, last: int) -> list:
    return [
        (
            "the fit is unweighted: weight each rank by 1/r",
            lambda: _fit(lam, first, last, weighted=False)[0],
        ),
        (
            "the ranks are 0-based: rank r is 1-based, so the eigenvalue at index i has rank i + 1",
            lambda: _fit(lam, first + 1, last + 1, zero_based=True)[0],
        ),
        (
            f"the range stops one rank early: ranks {first} to {last} are both included",
            lambda: _fit(lam, first, last - 1)[0],
        ),
        (
            f"the range starts one rank late: ranks {first} to {last} are both included",
            lambda: _fit(lam, first + 1, last)[0],
        ),
        ("that is the slope: alpha is minus the slope", lambda: -_fit(lam, first, last)[0]),
    ]


def _check_alpha(alpha_req: Callable, lam: np.ndarray, fit_range, case: str, *, rel: float):
    first, last = fit_range
    got = call(alpha_req, lam, fit_range, case=case)
    alpha, intercept = items(got, ("alpha", "intercept"), case)
    alpha = number(alpha, f"{case}, alpha")
    intercept = number(intercept, f"{case}, intercept")
    fit = spectral.alpha_req(lam, fit_range)
    close(alpha, fit.alpha, f"{case}, alpha", rel=rel, hints=_alpha_hints(lam, first, last))
    hints = [
        (
            "it is off by log(sum of eigenvalues): fit the eigenvalues as fractions of the total "
            "variance",
            lambda: _fit(lam, first, last, norm=False)[1],
        )
    ]
    close(intercept, fit.intercept, f"{case}, intercept", rel=rel, abs=1e-9, hints=hints)


def check_alpha_req(alpha_req: Callable) -> None:
    """``alpha_req(eigenvalues, fit_range) -> (alpha, intercept)``: the weighted (1/r) least
    squares fit of ``log(lambda_r / sum lambda) = intercept - alpha log r`` over the 1-based
    ranks ``fit_range[0] .. fit_range[1]``, both included."""
    name = "alpha_req"

    def test() -> str:
        require_function(alpha_req, name)
        ranks = np.arange(1, 501, dtype=np.float64)
        lam = 3.7 * ranks**-1.2
        case = "an exact power law 3.7 r^-1.2 over 500 ranks, fit range (12, 100)"
        got = call(alpha_req, lam, (12, 100), case=case)
        alpha, intercept = items(got, ("alpha", "intercept"), case)
        close(
            number(alpha, case), 1.2, f"{case}, alpha", abs=1e-9, hints=_alpha_hints(lam, 12, 100)
        )
        hints = [
            (
                "it is off by log(sum of eigenvalues): fit the eigenvalues as fractions of the "
                "total variance",
                lambda: math.log(3.7),
            )
        ]
        want = -math.log(float(np.sum(ranks**-1.2)))
        close(number(intercept, case), want, f"{case}, intercept", abs=1e-9, hints=hints)
        rng = np.random.default_rng(8)
        noisy = np.sort(ranks[:300] ** -1.2 * np.exp(0.2 * rng.normal(size=300)))[::-1]
        for fit_range in ((12, 100), (5, 40)):
            case = f"a noisy power law over 300 ranks, fit range {fit_range}"
            _check_alpha(alpha_req, noisy, fit_range, case, rel=1e-9)
        x, what = _real()
        lam = spectral.eigenspectrum(x)
        _check_alpha(alpha_req, lam, (12, 100), f"{what}, fit range (12, 100)", rel=1e-7)
        return f"3 hand-solved cases and {what} (spectral.alpha_req)"

    run_check(name, test)
