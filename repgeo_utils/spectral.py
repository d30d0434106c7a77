"""Spectral geometry of representations: eigenspectrum, RankMe, alpha-ReQ, phases.

Paper 2 (Li et al., 2025, section 2.1) measures the geometry of a set of representations
(rows of a ``samples x features`` matrix) by the eigenvalues of their covariance:

- **RankMe**, the exponential of the entropy of the normalised eigenvalues (an effective
  rank between 1 and the number of eigenvalues). Two variants, always named:
  ``"covariance"`` (paper 2's code: ``p_i = lambda_i / sum|lambda| + 1e-7``) and
  ``"singular"`` (Garrido et al., 2023: the same on singular values, ``p`` proportional to
  ``sqrt(lambda)``).
- **alpha-ReQ**, the exponent of a power law ``lambda_r ~ r^-alpha`` fitted to the
  eigenvalues (as fractions of the total variance) by weighted least squares over a range of
  1-based ranks (default 12..100), weights ``1/r``.

Everything is computed in float64. ``eigenspectrum`` takes the ``features x features``
covariance or the ``samples x samples`` Gram matrix, whichever is smaller (their nonzero
eigenvalues are the same); ``CovarianceAccumulator`` gives the same eigenvalues for data
streamed in batches. ``segment_phases`` labels the warmup, entropy-seeking and
compression-seeking stretches of a trajectory (paper 2, section 3.1). ``layer_spectra``
tabulates both metrics for every layer of an ``activations.ActivationSet``.

Arrays in, numbers out: the eigen-direction ablation that acts inside a model's forward pass
(``fit_eigenbasis``, ``eigen_ablation``, ``ablation_sweep``) lives in
:mod:`repgeo_utils.ablation`; the old names here forward to it for one release, with a
DeprecationWarning.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.linalg
from jaxtyping import Float

from . import validate

log = logging.getLogger(__name__)

RankMeVariant = Literal["covariance", "singular"]

#: Epsilon added to every normalised eigenvalue before the entropy (paper 2's code; Garrido).
RANKME_EPS = 1e-7

#: Human-readable names of the RankMe variants, for figure labels.
RANKME_LABELS: dict[str, str] = {
    "covariance": "RankMe (covariance eigenvalues)",
    "singular": "RankMe (singular values)",
}

#: The three pretraining phases of paper 2, in the order they appear.
PHASES: tuple[str, str, str] = ("warmup", "entropy-seeking", "compression-seeking")


# --- input checks --------------------------------------------------------------------------


def as_float_matrix(features, name: str = "features") -> np.ndarray:
    """``features`` (NumPy array, torch tensor or nested list) as a checked 2-D float array.

    Float32 and float64 arrays are passed through without a copy; the callers compute in
    float64 from there.
    """
    if hasattr(features, "detach"):  # torch tensor, without importing torch
        features = features.detach().cpu()
        if str(features.dtype) in ("torch.bfloat16", "torch.float16"):
            features = features.float()
        features = features.numpy()
    array = np.asarray(features)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (samples x features) matrix, got {array.ndim}-D "
            f"with shape {array.shape}; reshape a single vector to (n, 1) or (1, d)."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    return validate.finite_array(name, array)


def _as_eigenvalues(eigenvalues, name: str = "eigenvalues") -> np.ndarray:
    """Check a 1-D spectrum: finite, non-empty, not negative beyond round-off."""
    if hasattr(eigenvalues, "detach"):
        eigenvalues = eigenvalues.detach().cpu().numpy()
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, got shape {lam.shape}; for a feature matrix call "
            "eigenspectrum(features) first."
        )
    if lam.size == 0:
        raise ValueError(f"{name} is empty.")
    validate.finite_array(name, lam)
    scale = np.abs(lam).max()
    if scale == 0:
        raise ValueError(f"{name} are all zero: the features have no variance.")
    if lam.min() < -1e-8 * scale:
        raise ValueError(
            f"{name} must be non-negative (a covariance spectrum), got minimum {lam.min():.3g}."
        )
    return np.clip(lam, 0.0, None)


# --- eigenspectrum -------------------------------------------------------------------------


#: From this size on, eigenvalues go through torch's LAPACK (MKL in the x86 wheels), whose
#: tridiagonal reduction was 4-6x faster than NumPy's OpenBLAS build at 2,048 x 2,048 here;
#: below it NumPy's lower call overhead wins.
TORCH_EIGH_MIN_SIZE = 512


def _symmetric_eigenvalues(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix, descending, round-off negatives set to 0.

    Reads only the lower triangle (LAPACK syevd, eigenvalues only).
    """
    if matrix.shape[0] >= TORCH_EIGH_MIN_SIZE:
        # torch is loaded only for large matrices: spectral itself stays light to import
        import torch  # noqa: PLC0415

        values = torch.linalg.eigvalsh(torch.from_numpy(matrix), UPLO="L").numpy()
    else:
        values = np.linalg.eigvalsh(matrix, UPLO="L")
    return np.clip(values[::-1], 0.0, None)


def _scatter(x: np.ndarray, features_side: bool) -> np.ndarray:
    """``x.T @ x`` (``features_side``) or ``x @ x.T``, lower triangle filled (BLAS syrk).

    syrk computes one triangle in half the flops of a general product; a C-ordered ``x`` is
    handed to it as its Fortran-ordered transpose, so nothing is copied.
    """
    xt = np.ascontiguousarray(x).T  # Fortran-ordered view
    # syrk: trans=0 gives a @ a.T, trans=1 gives a.T @ a, for a = x.T
    return scipy.linalg.blas.dsyrk(1.0, xt, trans=0 if features_side else 1, lower=1)


def _centred_float64(x: np.ndarray) -> np.ndarray:
    """A new float64 array ``x - mean(x)`` (one allocation, whatever ``x``'s dtype)."""
    return np.subtract(x, x.mean(axis=0, dtype=np.float64), dtype=np.float64)


def eigenspectrum(
    features: Float[np.ndarray, "samples features"],
    center: bool = True,
    max_eigenvalues: int | None = None,
) -> Float[np.ndarray, " eigenvalues"]:
    """Eigenvalues of the feature covariance, descending, in float64.

    The covariance is ``X^T X / (n - 1)`` of the column-centred matrix (``center=False``:
    the second-moment matrix ``X^T X / n`` of the raw rows). It is formed as the
    ``features x features`` covariance when ``features <= samples`` and as the
    ``samples x samples`` Gram matrix ``X X^T`` otherwise; both have the same nonzero
    eigenvalues. ``min(samples, features)`` eigenvalues are returned (fewer with
    ``max_eigenvalues``), round-off negatives set to zero.

    Accepts a NumPy array or a torch tensor of any float dtype.
    """
    x = as_float_matrix(features)
    n, d = x.shape
    if max_eigenvalues is not None:
        validate.positive_int("max_eigenvalues", max_eigenvalues)
    if center:
        if n < 2:
            raise ValueError("A centred covariance needs at least 2 samples, got 1.")
        x = _centred_float64(x)
        denominator = n - 1
    else:
        x = x.astype(np.float64, copy=False)
        denominator = n
    route = "covariance" if d <= n else "gram"
    matrix = _scatter(x, features_side=(route == "covariance"))
    matrix /= denominator
    values = _symmetric_eigenvalues(matrix)[: min(n, d)]
    log.debug("eigenspectrum of %d x %d features via the %s matrix", n, d, route)
    if max_eigenvalues is not None:
        values = values[:max_eigenvalues]
    return values


class CovarianceAccumulator:
    """Streaming feature covariance: ``update`` batch by batch, then ``eigenvalues()``.

    Keeps the running mean and the centred scatter matrix in float64 and merges each batch
    with the pairwise update of Chan, Golub and LeVeque (1979), so a large mean does not cancel
    the variance. Its eigenvalues equal ``eigenspectrum`` of all rows stacked.

    >>> acc = CovarianceAccumulator()
    >>> for batch in batches:  # doctest: +SKIP
    ...     acc.update(batch)
    >>> acc.eigenvalues()  # doctest: +SKIP
    """

    def __init__(self, center: bool = True) -> None:
        self.center = center
        self.n_samples = 0
        self._mean: np.ndarray | None = None
        # sum of outer products (centred if center); only its lower triangle is kept valid
        self._scatter: np.ndarray | None = None

    @property
    def n_features(self) -> int | None:
        """Number of features, fixed by the first batch (``None`` before it)."""
        return None if self._mean is None else self._mean.shape[0]

    def update(self, batch: Float[np.ndarray, "batch features"]) -> CovarianceAccumulator:
        """Add the rows of ``batch``; returns ``self`` so calls can be chained."""
        x = as_float_matrix(batch, name="batch")
        m, d = x.shape
        if self._mean is not None and d != self._mean.shape[0]:
            raise ValueError(
                f"batch has {d} features but earlier batches had {self._mean.shape[0]}."
            )
        batch_mean = x.mean(axis=0, dtype=np.float64)
        if self.center:
            batch_scatter = _scatter(_centred_float64(x), features_side=True)
        else:
            batch_scatter = _scatter(x.astype(np.float64, copy=False), features_side=True)
        if self._mean is None:
            self._mean, self._scatter = batch_mean, batch_scatter
            self.n_samples = m
            return self
        n = self.n_samples
        total = n + m
        delta = batch_mean - self._mean
        if self.center:
            self._scatter = self._scatter + batch_scatter + np.outer(delta, delta) * (n * m / total)
        else:
            self._scatter = self._scatter + batch_scatter
        self._mean = self._mean + delta * (m / total)
        self.n_samples = total
        return self

    @property
    def mean(self) -> Float[np.ndarray, " features"]:
        """Mean of all rows seen so far."""
        if self._mean is None:
            raise ValueError("No batch has been added yet; call update(batch) first.")
        return self._mean.copy()

    def covariance(self) -> Float[np.ndarray, "features features"]:
        """Covariance (``/(n-1)``, centred) or second-moment matrix (``/n``) so far."""
        if self._scatter is None:
            raise ValueError("No batch has been added yet; call update(batch) first.")
        if self.center:
            if self.n_samples < 2:
                raise ValueError("A centred covariance needs at least 2 samples, got 1.")
            denominator = self.n_samples - 1
        else:
            denominator = self.n_samples
        lower = np.tril(self._scatter)  # only the lower triangle is maintained
        return (lower + np.tril(lower, -1).T) / denominator

    def eigenvalues(self, max_eigenvalues: int | None = None) -> Float[np.ndarray, " eigenvalues"]:
        """Eigenvalues of ``covariance()``, descending; ``min(samples, features)`` of them."""
        values = _symmetric_eigenvalues(self.covariance())
        values = values[: min(self.n_samples, values.shape[0])]
        if max_eigenvalues is not None:
            values = values[: validate.positive_int("max_eigenvalues", max_eigenvalues)]
        return values


# --- RankMe --------------------------------------------------------------------------------


def rankme(
    eigenvalues: Float[np.ndarray, " eigenvalues"],
    variant: RankMeVariant = "covariance",
) -> float:
    """Effective rank: ``exp(-sum_i p_i log p_i)`` of the normalised spectrum.

    - ``variant="covariance"`` (paper 2's code): ``p_i = lambda_i / sum_j |lambda_j| + 1e-7``
      on the covariance eigenvalues.
    - ``variant="singular"`` (Garrido et al., 2023): ``p_i = sigma_i / sum_j sigma_j + 1e-7``
      on the singular values ``sigma_i = sqrt(lambda_i)`` (up to a constant factor, which the
      normalisation removes).

    The singular variant is always the larger of the two for a non-flat spectrum. Both lie
    between about 1 and ``len(eigenvalues)``; the epsilon lifts the value slightly when many
    eigenvalues are zero.
    """
    lam = _as_eigenvalues(eigenvalues)
    if variant == "covariance":
        weights = lam
    elif variant == "singular":
        weights = np.sqrt(lam)
    else:
        raise ValueError(f"Unknown RankMe variant {variant!r}; use 'covariance' or 'singular'.")
    p = weights / np.abs(weights).sum() + RANKME_EPS
    return float(np.exp(-np.sum(p * np.log(p))))


# --- alpha-ReQ -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlphaReqFit:
    """A power-law fit ``lambda_r / sum(lambda) = exp(intercept) * r^-alpha``."""

    alpha: float  # the decay exponent (the fit's slope against -log r)
    r2: float  # weighted R^2 of the fit in log space over the fit range
    fit_range: tuple[int, int]  # first and last 1-based rank used, inclusive
    intercept: float  # log of the fitted fraction of variance at rank 1
    n_eigenvalues: int  # length of the spectrum the fit was made on

    def fraction_of_variance(
        self, ranks: Float[np.ndarray, " ranks"]
    ) -> Float[np.ndarray, " ranks"]:
        """The fitted power law at 1-based ``ranks``, as fractions of the total variance."""
        r = np.asarray(ranks, dtype=np.float64)
        return np.exp(self.intercept - self.alpha * np.log(r))


def check_fit_range(fit_range: Any) -> tuple[int, int]:
    """``(first, last)``: two int 1-based ranks with ``1 <= first < last``."""
    first, last = validate.pair("fit_range", fit_range)
    first = validate.integer("fit_range[0]", first)
    last = validate.integer("fit_range[1]", last)
    if first < 1 or last <= first:
        raise ValueError(
            f"fit_range must be 1-based ranks with first >= 1 and last > first, got {fit_range}"
        )
    return first, last


def alpha_req(
    eigenvalues: Float[np.ndarray, " eigenvalues"],
    fit_range: tuple[int, int] = (12, 100),
) -> AlphaReqFit:
    """Power-law exponent alpha of a descending spectrum (alpha-ReQ, Agrawal et al., 2022).

    The eigenvalues are normalised to fractions of their sum, then ``log(lambda_r)`` is
    regressed on ``[-log r, 1]`` by weighted least squares with weights ``1/r`` over the
    1-based ranks ``fit_range[0] .. fit_range[1]`` inclusive (paper 2's default 12..100,
    i.e. 0-based indices 11..99). ``alpha`` is the slope; ``r2`` is the weighted R^2 of that
    fit. The caller's array is never modified.

    A range that reaches beyond the numerical rank (:func:`numerical_rank`: eigenvalues above
    :func:`rank_tolerance`) is refused with the number of nonzero eigenvalues: a power law
    fitted to round-off (a rank-40 spectrum of 64 float32 features keeps eigenvalues of about
    1e-15 of the largest past rank 40) gives a meaningless, much steeper alpha.
    """
    lam = _as_eigenvalues(eigenvalues)
    first, last = check_fit_range(fit_range)
    if last > lam.size:
        raise ValueError(
            f"fit_range {fit_range} needs at least {last} eigenvalues, but the spectrum has "
            f"only {lam.size}; use a range within 1..{lam.size}."
        )
    rises = np.flatnonzero(np.diff(lam) > 1e-12 * lam.max())
    if rises.size:
        i = int(rises[0]) + 1
        raise ValueError(
            f"eigenvalues must be sorted in descending order: the one at index {i} "
            f"({lam[i]:.4g}) is larger than the one before it ({lam[i - 1]:.4g}); pass "
            "np.sort(eigenvalues)[::-1]."
        )
    rank = numerical_rank(lam)
    if last > rank:
        raise ValueError(
            f"The fit range {fit_range} includes zero eigenvalues: only {rank} of the "
            f"{lam.size} eigenvalues are nonzero (above the numerical-rank tolerance "
            f"{rank_tolerance(lam):.3g}; below it they are round-off, not variance); use a range "
            f"within 1..{rank}."
        )
    fractions = lam / lam.sum()
    ranks = np.arange(first, last + 1, dtype=np.float64)
    window = fractions[first - 1 : last]
    y = np.log(window)
    design = np.column_stack([-np.log(ranks), np.ones_like(ranks)])
    weights = 1.0 / ranks
    root_w = np.sqrt(weights)
    coef, *_ = np.linalg.lstsq(design * root_w[:, None], y * root_w, rcond=None)
    alpha, intercept = float(coef[0]), float(coef[1])
    residual = y - design @ coef
    y_mean = np.sum(weights * y) / weights.sum()
    total = np.sum(weights * (y - y_mean) ** 2)
    r2 = 1.0 - np.sum(weights * residual**2) / total if total > 0 else 1.0
    return AlphaReqFit(
        alpha=alpha,
        r2=float(r2),
        fit_range=(first, last),
        intercept=intercept,
        n_eigenvalues=int(lam.size),
    )


# --- bootstrap -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic on all samples with a bootstrap interval over samples."""

    estimate: float  # the statistic on the full sample
    low: float
    high: float
    bootstrap_mean: float  # mean of the statistic over the resamples
    confidence: float
    method: str  # "basic" or "percentile"
    n_resamples: int
    seed: int

    @property
    def bias(self) -> float:
        """Bootstrap estimate of the plug-in statistic's bias (resample mean minus estimate)."""
        return self.bootstrap_mean - self.estimate


def bootstrap_ci(
    features: Float[np.ndarray, "samples features"],
    statistic: Callable[[np.ndarray], float],
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    method: Literal["basic", "percentile"] = "basic",
    center: bool = True,
    max_eigenvalues: int | None = None,
) -> BootstrapCI:
    """Bootstrap interval of ``statistic(eigenspectrum(rows))`` over rows.

    Rows are resampled with replacement ``n_resamples`` times from a NumPy generator seeded
    with ``seed``, so the interval is the same on every run.

    Spectral statistics are biased at finite sample size: a resample repeats rows, which
    spreads its eigenvalues further, so RankMe of a resample is systematically *lower* than
    RankMe of the sample, which in turn is lower than the population's. The default
    ``method="basic"`` interval ``[2*estimate - q_high, 2*estimate - q_low]`` corrects that
    first-order bias (it can lie above the plug-in estimate); ``method="percentile"`` gives
    the raw quantiles ``[q_low, q_high]`` of the resampled statistic. ``bias`` reports the
    size of the effect.
    """
    x = as_float_matrix(features)
    validate.integer("n_resamples", n_resamples, minimum=2)
    validate.fraction("confidence", confidence, open_low=True, open_high=True)
    validate.non_negative_int("seed", seed)
    if method not in ("basic", "percentile"):
        raise ValueError(f"Unknown bootstrap method {method!r}; use 'basic' or 'percentile'.")
    spectrum = eigenspectrum(x, center=center, max_eigenvalues=max_eigenvalues)
    estimate = float(statistic(spectrum))
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        rows = rng.integers(0, n, size=n)
        resample = eigenspectrum(x[rows], center=center, max_eigenvalues=max_eigenvalues)
        values[i] = statistic(resample)
    tail = (1.0 - confidence) / 2.0
    q_low, q_high = np.quantile(values, [tail, 1.0 - tail])
    if method == "basic":
        low, high = 2 * estimate - q_high, 2 * estimate - q_low
    else:
        low, high = q_low, q_high
    return BootstrapCI(
        estimate=estimate,
        low=float(low),
        high=float(high),
        bootstrap_mean=float(values.mean()),
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        seed=seed,
    )


def rankme_ci(
    features: Float[np.ndarray, "samples features"],
    variant: RankMeVariant = "covariance",
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    method: Literal["basic", "percentile"] = "basic",
) -> BootstrapCI:
    """RankMe of ``features`` with a seeded bootstrap interval over samples (see bootstrap_ci)."""
    return bootstrap_ci(
        features,
        lambda lam: rankme(lam, variant=variant),
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        method=method,
    )


def alpha_req_ci(
    features: Float[np.ndarray, "samples features"],
    fit_range: tuple[int, int] = (12, 100),
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    method: Literal["basic", "percentile"] = "basic",
    max_eigenvalues: int | None = 2048,
) -> BootstrapCI:
    """alpha-ReQ of ``features`` with a seeded bootstrap interval over samples (see bootstrap_ci).

    ``max_eigenvalues`` keeps the top 2,048 eigenvalues as paper 2's code does; the fractions
    of variance are then taken of their sum.
    """
    return bootstrap_ci(
        features,
        lambda lam: alpha_req(lam, fit_range=fit_range).alpha,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        method=method,
        max_eigenvalues=max_eigenvalues,
    )


# --- phases of a trajectory ----------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One monotone stretch of a trajectory, between two turning points (inclusive)."""

    name: str  # one of PHASES
    start_step: float
    end_step: float
    start_index: int
    end_index: int
    start_value: float  # smoothed value at the start
    end_value: float  # smoothed value at the end

    @property
    def change(self) -> float:
        """Smoothed change over the stretch (end minus start)."""
        return self.end_value - self.start_value


@dataclass(frozen=True)
class PhaseSegmentation:
    """The labelled stretches of a trajectory, in order, and the named phases it lacks."""

    phases: tuple[Phase, ...]
    absent: tuple[str, ...]
    smoothed: Float[np.ndarray, " points"]

    def first(self, name: str) -> Phase | None:
        """The first stretch labelled ``name``, or ``None`` if that phase is absent."""
        if name not in PHASES:
            raise ValueError(f"Unknown phase {name!r}; phases are {', '.join(PHASES)}.")
        return next((p for p in self.phases if p.name == name), None)

    def describe(self, step_format: str = "{:g}", value_format: str = "{:.2f}") -> str:
        """One line per stretch, then the absent phases, e.g. for a notebook's summary."""
        lines = [
            f"{p.name}: steps {step_format.format(p.start_step)}-{step_format.format(p.end_step)} "
            f"({value_format.format(p.start_value)} -> {value_format.format(p.end_value)})"
            for p in self.phases
        ]
        lines += [f"{name}: absent" for name in self.absent]
        return "\n".join(lines)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average in index space; the window shrinks symmetrically at the ends."""
    if window <= 1:
        return values.copy()
    half = window // 2
    padded_cumsum = np.concatenate([[0.0], np.cumsum(values)])
    out = np.empty_like(values)
    n = values.size
    for i in range(n):
        h = min(half, i, n - 1 - i)
        out[i] = (padded_cumsum[i + h + 1] - padded_cumsum[i - h]) / (2 * h + 1)
    return out


def _monotone_runs(values: np.ndarray, tolerance: float) -> list[list[int]]:
    """Split ``values`` into alternating runs ``[sign, start, end]``, merging small wiggles.

    A run whose total change is below ``tolerance`` is absorbed into its neighbours (the
    smallest first), so a trajectory with noise keeps only its substantial turns.
    """
    signs = np.sign(np.diff(values))
    # flat steps continue the previous direction (or the next one at the very start)
    nonzero = np.flatnonzero(signs)
    if nonzero.size == 0:
        return []
    signs[: nonzero[0]] = signs[nonzero[0]]
    for i in range(1, signs.size):
        if signs[i] == 0:
            signs[i] = signs[i - 1]
    runs: list[list[int]] = []
    for i, s in enumerate(signs):
        if runs and runs[-1][0] == s:
            runs[-1][2] = i + 1
        else:
            runs.append([int(s), i, i + 1])

    def amplitude(run: list[int]) -> float:
        return abs(values[run[2]] - values[run[1]])

    while len(runs) > 1:
        k = min(range(len(runs)), key=lambda j: amplitude(runs[j]))
        if amplitude(runs[k]) >= tolerance:
            break
        if k == 0:
            runs[1][1] = runs[0][1]
            del runs[0]
        elif k == len(runs) - 1:
            runs[-2][2] = runs[-1][2]
            del runs[-1]
        else:
            # left and right neighbours share a sign: fuse all three into one run
            runs[k - 1][2] = runs[k + 1][2]
            del runs[k : k + 2]
    return runs


def segment_phases(
    steps: Sequence[float] | Float[np.ndarray, " points"],
    values: Sequence[float] | Float[np.ndarray, " points"],
    smooth_window: int = 3,
    min_change: float = 0.05,
    higher_is_expansion: bool = True,
) -> PhaseSegmentation:
    """Label the warmup, entropy-seeking and compression-seeking stretches of a trajectory.

    ``values`` (e.g. RankMe at each checkpoint ``steps``) are smoothed with a centred moving
    average over ``smooth_window`` points (in index space, so log-spaced checkpoints are
    treated alike), split into stretches of one sign of change, and stretches whose change is
    below ``min_change`` times the smoothed range are absorbed into their neighbours. Then:

    - a contraction before any expansion is the **warmup** (collapse);
    - an expansion is **entropy-seeking**;
    - a contraction after an expansion is **compression-seeking**.

    Later alternations get the same two labels again. Pass ``higher_is_expansion=False`` for
    a metric that falls when the representation expands (alpha-ReQ). Phases that do not occur
    are listed in ``absent``.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or v.ndim != 1:
        raise ValueError(f"steps and values must be 1-D, got shapes {s.shape} and {v.shape}.")
    if s.size != v.size:
        raise ValueError(f"steps ({s.size}) and values ({v.size}) differ in length.")
    if v.size < 2:
        raise ValueError(f"A trajectory needs at least 2 points, got {v.size}.")
    if not (np.isfinite(s).all() and np.isfinite(v).all()):
        raise ValueError("steps and values must not contain NaN or infinite values.")
    stalls = np.flatnonzero(np.diff(s) <= 0)
    if stalls.size:
        i = int(stalls[0]) + 1
        raise ValueError(
            f"steps must be strictly increasing: at index {i} the step {s[i]:g} follows "
            f"{s[i - 1]:g}."
        )
    validate.positive_int("smooth_window", smooth_window)
    validate.real("min_change", min_change, minimum=0.0, maximum=1.0, strict_maximum=True)

    smoothed = _moving_average(v, smooth_window)
    oriented = smoothed if higher_is_expansion else -smoothed
    span = float(oriented.max() - oriented.min())
    runs = _monotone_runs(oriented, tolerance=min_change * span) if span > 0 else []

    phases: list[Phase] = []
    expanded = False
    for sign, start, end in runs:
        if sign > 0:
            name = "entropy-seeking"
            expanded = True
        else:
            name = "compression-seeking" if expanded else "warmup"
        phases.append(
            Phase(
                name=name,
                start_step=float(s[start]),
                end_step=float(s[end]),
                start_index=int(start),
                end_index=int(end),
                start_value=float(smoothed[start]),
                end_value=float(smoothed[end]),
            )
        )
    found = {p.name for p in phases}
    absent = tuple(name for name in PHASES if name not in found)
    log.info(
        "segment_phases: %s",
        ", ".join(f"{p.name} {p.start_step:g}-{p.end_step:g}" for p in phases) or "no phases",
    )
    return PhaseSegmentation(phases=tuple(phases), absent=absent, smoothed=smoothed)


# --- known spectra, one-spectrum summaries, per layer of an activation set -----------------


def features_with_spectrum(
    eigenvalues: Float[np.ndarray, " eigenvalues"],
    n_samples: int,
    seed: int = 0,
) -> Float[np.ndarray, "samples eigenvalues"]:
    """A ``n_samples x len(eigenvalues)`` matrix whose centred covariance has exactly
    ``eigenvalues`` (up to round-off): a test case with a known answer.

    Built as ``U diag(sqrt((n - 1) lambda)) V^T`` with ``U`` orthonormal columns orthogonal to
    the all-ones vector (so the columns are centred) and ``V`` a random rotation, both drawn
    from a NumPy generator seeded with ``seed``. Needs ``n_samples > len(eigenvalues)``.
    """
    lam = _as_eigenvalues(eigenvalues)
    d = lam.size
    if n_samples <= d:
        raise ValueError(
            f"n_samples ({n_samples}) must exceed the number of eigenvalues ({d}): centred "
            f"data of n samples have at most n - 1 nonzero eigenvalues."
        )
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n_samples, d))
    u, _ = np.linalg.qr(g - g.mean(axis=0))  # orthonormal, and orthogonal to the ones vector
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (u * np.sqrt((n_samples - 1) * lam)) @ v.T


#: Relative size below which an eigenvalue counts as zero (see :func:`rank_tolerance`).
RANK_RTOL = 1e-12


def rank_tolerance(eigenvalues: Float[np.ndarray, " eigenvalues"]) -> float:
    """The numerical-rank tolerance: ``max(RANK_RTOL, len(eigenvalues) * float64 epsilon)``
    times the largest eigenvalue. Below it an eigenvalue is round-off, not variance: the
    eigensolver's own error is about ``len * epsilon`` of the largest, and a direction of
    float32 features that is exactly constant in exact arithmetic (the one a LayerNorm output
    loses) keeps an eigenvalue of about 1e-14 of the largest, above ``len * epsilon`` for
    small widths; genuine eigenvalues at the ranks alpha-ReQ fits are many orders larger."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if not lam.size:
        return 0.0
    return float(max(RANK_RTOL, lam.size * np.finfo(np.float64).eps) * lam.max())


def numerical_rank(eigenvalues: Float[np.ndarray, " eigenvalues"]) -> int:
    """How many eigenvalues exceed :func:`rank_tolerance`."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if not lam.size or not lam.any():
        return 0
    return int(np.count_nonzero(lam > rank_tolerance(lam)))


def spectral_summary(
    eigenvalues: Float[np.ndarray, " eigenvalues"],
    fit_range: tuple[int, int] = (12, 100),
    label: str | None = None,
    *,
    clip_to_rank: bool = False,
) -> dict[str, float]:
    """RankMe (both variants) and alpha-ReQ of one spectrum, never raising on a short one: the
    one summary behind every table of RankMe and alpha (:func:`layer_spectra`, the checkpoint
    sweeps of :mod:`repgeo_utils.lm` and the post-training measures).

    Returns ``n_eigenvalues``, ``rankme_covariance``, ``rankme_singular``, ``alpha``,
    ``alpha_r2`` and ``alpha_fit_hi`` (the last rank the fit used; NaN without a fit).
    Eigenvalues below the numerical-rank tolerance (:func:`rank_tolerance`) count as zeros:
    a power law fitted to round-off means nothing. alpha is fitted over the 1-based ranks
    ``fit_range``; when fewer than ``fit_range[1]`` eigenvalues are non-zero (a short spectrum,
    or a rank-k one with ``k < fit_range[1]``):

    - ``clip_to_rank=False`` (a fixed range, as notebook 05 compares layers): ``alpha`` and
      ``alpha_r2`` are NaN and a warning says why;
    - ``clip_to_rank=True`` (models narrower than the range, as the small LM of notebooks 06
      and 08): the range ends at the numerical rank instead, and only a range of fewer than two
      ranks gives NaN.

    A spectrum of zeros (samples without any variance) gives NaN for everything but its
    length. ``label`` names the spectrum in the warnings.
    """
    check_fit_range(fit_range)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    nan = float("nan")
    out = {"n_eigenvalues": int(lam.size), "rankme_covariance": nan, "rankme_singular": nan,
           "alpha": nan, "alpha_r2": nan, "alpha_fit_hi": nan}  # fmt: skip
    prefix = f"{label}: " if label else ""
    if lam.size and not lam.any():
        log.warning("%sthe samples have no variance: no RankMe, no alpha-ReQ", prefix)
        return out
    out["rankme_covariance"] = rankme(lam, "covariance")
    out["rankme_singular"] = rankme(lam, "singular")
    rank = numerical_rank(lam)
    first, last = int(fit_range[0]), int(fit_range[1])
    if clip_to_rank:
        last = min(last, rank)
        if last <= first:
            log.warning(
                "%sno alpha-ReQ: %d non-zero eigenvalues, too few for a fit from rank %d",
                prefix,
                rank,
                first,
            )
            return out
    try:
        fit = alpha_req(np.where(lam > rank_tolerance(lam), lam, 0.0), fit_range=(first, last))
    except ValueError as err:
        log.warning("%sno alpha-ReQ: %s", prefix, err)
    else:
        out["alpha"], out["alpha_r2"] = fit.alpha, fit.r2
        out["alpha_fit_hi"] = float(last)
    return out


#: Which rows of an ``activations.ActivationSet`` ``layer_spectra`` measures, and what they are.
REPRESENTATIONS: dict[str, str] = {
    "mean": "mean-pooled per text (all real tokens, [CLS]/[SEP] included)",
    "cls": "first token per text ([CLS] of a BERT)",
    "last": "last real token per text ([SEP] of a BERT; paper 2's choice for causal LMs)",
    "tokens": "every real token",
}

#: Columns of the table ``layer_spectra`` returns, in order.
LAYER_SPECTRA_COLUMNS = (
    "layer",
    "representation",
    "n_samples",
    "n_eigenvalues",
    "rankme_covariance",
    "rankme_singular",
    "alpha",
    "alpha_r2",
)


def _token_eigenvalues(tokens, keep: np.ndarray | None, block_rows: int = 1 << 16) -> np.ndarray:
    """Covariance eigenvalues of the rows of a (sharded, memory-mapped) token matrix.

    Streams shard by shard and block by block through ``CovarianceAccumulator`` so memory does
    not grow with the number of tokens; ``keep`` (a boolean mask over all rows) drops rows.
    """
    parts = list(tokens.parts()) if hasattr(tokens, "parts") else [np.asarray(tokens)]
    acc = CovarianceAccumulator()
    start = 0
    for part in parts:
        for lo in range(0, len(part), block_rows):
            hi = min(lo + block_rows, len(part))
            block = np.asarray(part[lo:hi])
            if keep is not None:
                block = block[keep[start + lo : start + hi]]
            if len(block):
                acc.update(block)
        start += len(part)
    if acc.n_samples < 2:
        raise ValueError(f"Only {acc.n_samples} token rows to measure; need at least 2.")
    return acc.eigenvalues()


def layer_spectra(
    activation_set,
    layers: Sequence[int] | None = None,
    pooling: Literal["mean", "cls", "last", "tokens"] = "mean",
    *,
    fit_range: tuple[int, int] = (12, 100),
    exclude_special: bool = False,
) -> pd.DataFrame:
    """RankMe (both variants) and alpha-ReQ of every layer of an activation set, as a table.

    Args:
        activation_set: an ``activations.ActivationSet`` (anything with ``layers``,
            ``n_hidden_states``, ``pooled(layer, how)`` and, for ``"tokens"``,
            ``tokens(layer)`` and ``special_mask``).
        layers: ``hidden_states`` indices (0 = embeddings, negative from the end); default
            every layer the set holds.
        pooling: which rows are the samples (see :data:`REPRESENTATIONS`): one row per text
            (``"mean"``, ``"cls"``, ``"last"``) or every real token (``"tokens"``, streamed,
            so memory does not grow with the number of tokens).
        fit_range: 1-based ranks of the alpha-ReQ fit (paper 2: 12..100).
        exclude_special: with ``"tokens"``, leave out [CLS]/[SEP] rows.

    Returns:
        One row per layer with the columns of :data:`LAYER_SPECTRA_COLUMNS`: the layer
        (stored ``hidden_states`` index), the representation, the number of samples and of
        eigenvalues (``min(samples, features)`` of the centred covariance),
        ``rankme_covariance``, ``rankme_singular``, ``alpha`` and the fit's weighted
        ``alpha_r2``; ``attrs["fit_range"]`` holds the fit range.

    As in :func:`spectral_summary`, a layer whose spectrum is too short for ``fit_range``
    (fewer samples or features than ``fit_range[1]``) gets NaN for ``alpha`` and a warning,
    and samples without any variance (the [CLS] row of the embedding layer is one vector
    for every text) get NaN throughout. Paper 2's code kept at most 2,048 eigenvalues for
    alpha, which only matters for models wider than that.
    """
    if pooling not in REPRESENTATIONS:
        raise ValueError(f"Unknown pooling {pooling!r}; use one of {list(REPRESENTATIONS)}.")
    if exclude_special and pooling != "tokens":
        raise ValueError(
            f"exclude_special applies to pooling='tokens' only, got pooling={pooling!r}."
        )
    check_fit_range(fit_range)
    n_states = activation_set.n_hidden_states
    if layers is None:
        layers = activation_set.layers
    if isinstance(layers, int | np.integer):
        layers = [int(layers)]
    for layer in layers:  # every layer checked before any is measured
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
            raise TypeError(f"layers must be ints, got {type(layer).__name__} {layer!r}")
        if not -n_states <= layer < n_states:
            raise IndexError(
                f"layer {layer} is out of range: the set has {n_states} hidden states, valid "
                f"layers are 0..{n_states - 1} (0 = embeddings) or -{n_states}..-1."
            )
    keep = ~np.asarray(activation_set.special_mask, dtype=bool) if exclude_special else None
    records = []
    for layer in layers:
        stored = int(layer) % n_states
        if pooling == "tokens":
            tokens = activation_set.tokens(stored)
            lam = _token_eigenvalues(tokens, keep)
            n_samples = int(keep.sum()) if keep is not None else len(tokens)
        else:
            features = activation_set.pooled(stored, pooling)
            lam = eigenspectrum(features)
            n_samples = int(features.shape[0])
        label = f"layer {stored} ({pooling}, {n_samples} samples)"
        summary = spectral_summary(lam, fit_range=fit_range, label=label)
        records.append(
            {"layer": stored, "representation": pooling, "n_samples": n_samples, **summary}
        )
    table = pd.DataFrame.from_records(records, columns=list(LAYER_SPECTRA_COLUMNS))
    table.attrs["fit_range"] = tuple(fit_range)
    return table


def paired_subsamples(
    features_a: Float[np.ndarray, "samples features"],
    features_b: Float[np.ndarray, "samples features_b"],
    statistic: Callable[[np.ndarray], float | Sequence[float]],
    n_resamples: int = 100,
    fraction: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """``statistic`` of two paired feature sets' spectra on the same random subsets of rows.

    The rows of ``features_a`` and ``features_b`` must be paired (e.g. the same texts through a
    pre-trained and a fine-tuned model). Each resample draws ``round(fraction * n)`` rows
    *without* replacement from a NumPy generator seeded with ``seed`` and evaluates
    ``statistic(eigenspectrum(rows))`` on both sets, so a difference between the two is
    measured on the same samples. Returns an array of shape ``(n_resamples, 2, ...)``:
    ``[:, 0]`` for ``a``, ``[:, 1]`` for ``b``, then the statistic's own shape.

    Why not the bootstrap: a bootstrap resample repeats rows (about 63% are distinct), which
    removes directions, and with fewer samples than features that bias swamps the sampling
    spread of a spectral statistic (``bootstrap_ci``'s interval can then exclude the
    estimate). Half-samples (``fraction=0.5``) repeat nothing, and the spread of a smooth
    statistic over them approximates its sampling spread at the full size (the subsampling
    variance of a size-m estimate carries the factor (n - m) / n). Their *level* is that of
    a statistic at half the sample size: read the spread of ``b - a``, not its values.
    """
    a = as_float_matrix(features_a, "features_a")
    b = as_float_matrix(features_b, "features_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"features_a and features_b must hold the same (paired) samples: "
            f"{a.shape[0]} vs {b.shape[0]} rows."
        )
    validate.fraction("fraction", fraction, open_low=True)
    validate.positive_int("n_resamples", n_resamples)
    validate.non_negative_int("seed", seed)
    n = a.shape[0]
    m = int(round(fraction * n))
    if m < 2:
        raise ValueError(f"A subsample of {m} rows is too small; use a larger fraction.")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        rows = np.sort(rng.choice(n, size=m, replace=False))
        values.append([statistic(eigenspectrum(a[rows])), statistic(eigenspectrum(b[rows]))])
    return np.asarray(values, dtype=np.float64)


#: Names that moved to :mod:`repgeo_utils.ablation` (the forward-hook ablation).
_MOVED_TO_ABLATION = frozenset(
    {
        "ABLATION_COLUMNS",
        "ABLATION_MODES",
        "AblationHook",
        "AblationMode",
        "EigenBasis",
        "ablation_sweep",
        "eigen_ablation",
        "fit_eigenbasis",
    }
)


def __getattr__(name: str) -> Any:
    """``spectral.eigen_ablation`` and the other ablation names, forwarded with a warning."""
    if name in _MOVED_TO_ABLATION:
        warnings.warn(
            f"repgeo_utils.spectral.{name} has moved to repgeo_utils.ablation.{name}; "
            "this alias goes in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        # imported on first use: repgeo_utils.ablation imports this module
        return getattr(importlib.import_module("repgeo_utils.ablation"), name)
    raise AttributeError(f"module 'repgeo_utils.spectral' has no attribute {name!r}")
