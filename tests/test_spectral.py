"""Spectral metrics against answers known by hand, and their failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repgeo_utils.spectral import (
    PHASES,
    CovarianceAccumulator,
    alpha_req,
    alpha_req_ci,
    bootstrap_ci,
    eigenspectrum,
    rankme,
    rankme_ci,
    segment_phases,
)


def rankme_by_hand(eigenvalues, variant):
    """Independent transcription of the two definitions, in plain Python.

    covariance (paper 2's code): p_i = lambda_i / sum_j |lambda_j| + 1e-7
    singular (Garrido et al.):   p_i = sigma_i / sum_j sigma_j + 1e-7, sigma = sqrt(lambda)
    RankMe = exp(-sum_i p_i log p_i)
    """
    values = [float(v) for v in eigenvalues]
    if variant == "singular":
        values = [math.sqrt(v) for v in values]
    total = sum(abs(v) for v in values)
    entropy = 0.0
    for v in values:
        p = v / total + 1e-7
        entropy -= p * math.log(p)
    return math.exp(entropy)


# --- eigenspectrum ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(300, 40), (700, 520)])  # 520: the torch LAPACK path
def test_eigenspectrum_matches_svd_of_centred_matrix(n, d):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 5.0
    centred = x - x.mean(axis=0)
    expected = np.linalg.svd(centred, compute_uv=False) ** 2 / (x.shape[0] - 1)
    np.testing.assert_allclose(eigenspectrum(x), expected, rtol=1e-10, atol=1e-12)


def test_gram_route_equals_covariance_route():
    # 40 samples x 100 features: eigenspectrum takes the 40 x 40 Gram matrix
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 100)) * np.linspace(3, 0.1, 100)
    gram_route = eigenspectrum(x)
    covariance = np.cov(x, rowvar=False)  # 100 x 100, the other route, computed independently
    cov_route = np.sort(np.linalg.eigvalsh(covariance))[::-1][:40]
    assert gram_route.shape == (40,)
    np.testing.assert_allclose(gram_route, cov_route, rtol=1e-9, atol=1e-10)
    # and the streaming accumulator (always the covariance route) agrees
    acc_route = CovarianceAccumulator().update(x).eigenvalues()
    np.testing.assert_allclose(gram_route, acc_route, rtol=1e-9, atol=1e-10)


def test_streaming_equals_batch_with_a_large_mean():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 24)) * np.linspace(2, 0.05, 24) + 1e4  # large offset
    acc = CovarianceAccumulator()
    for start, stop in [(0, 1), (1, 100), (100, 101), (101, 537), (537, 1000)]:
        acc.update(x[start:stop])
    assert acc.n_samples == 1000
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(acc.eigenvalues(), eigenspectrum(x), rtol=1e-8, atol=1e-10)


def test_uncentred_second_moment():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 10)) + 3.0
    expected = np.sort(np.linalg.eigvalsh(x.T @ x / 200))[::-1]
    np.testing.assert_allclose(eigenspectrum(x, center=False), expected, rtol=1e-10)
    acc = CovarianceAccumulator(center=False).update(x[:50]).update(x[50:])
    np.testing.assert_allclose(acc.eigenvalues(), expected, rtol=1e-10)


def test_torch_float32_input_and_max_eigenvalues():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 30)).astype(np.float32)
    full = eigenspectrum(torch.from_numpy(x))
    assert full.dtype == np.float64 and full.shape == (30,)
    assert np.all(np.diff(full) <= 0)
    np.testing.assert_allclose(eigenspectrum(x, max_eigenvalues=7), full[:7])


# --- RankMe -------------------------------------------------------------------------------


def test_rankme_of_isotropic_gaussian_is_close_to_d():
    d = 32
    x = np.random.default_rng(6).normal(size=(20_000, d))
    lam = eigenspectrum(x)
    for variant in ("covariance", "singular"):
        value = rankme(lam, variant)
        assert 0.99 * d < value <= d + 1e-3, (variant, value)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_rankme_of_rank_k_matrix_is_at_most_k(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(500, k)) @ rng.normal(size=(k, 50))
    lam = eigenspectrum(x)
    for variant in ("covariance", "singular"):
        assert rankme(lam, variant) <= k + 1e-3


def test_rankme_of_k_equal_eigenvalues_is_k():
    lam = np.r_[np.full(5, 2.0), np.zeros(45)]
    for variant in ("covariance", "singular"):
        assert rankme(lam, variant) == pytest.approx(5.0, abs=1e-3)


@pytest.mark.parametrize("variant", ["covariance", "singular"])
def test_rankme_matches_independent_transcription(variant):
    rng = np.random.default_rng(7)
    lam = np.sort(rng.gamma(0.5, size=200))[::-1]
    lam[-20:] = 0.0  # zeros: the epsilon matters here
    assert rankme(lam, variant) == pytest.approx(rankme_by_hand(lam, variant), rel=1e-12)


def test_singular_variant_exceeds_covariance_variant():
    lam = np.arange(1, 101, dtype=float)[::-1] ** -1.0
    assert rankme(lam, "singular") > rankme(lam, "covariance")


# --- alpha-ReQ ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.7])
def test_alpha_of_exact_power_law_is_its_exponent(alpha):
    ranks = np.arange(1, 501, dtype=float)
    lam = 3.7 * ranks**-alpha  # the scale must not matter
    fit = alpha_req(lam)
    assert abs(fit.alpha - alpha) < 1e-9
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.fit_range == (12, 100)
    assert fit.n_eigenvalues == 500
    fitted = fit.fraction_of_variance(ranks[11:100])
    np.testing.assert_allclose(fitted, lam[11:100] / lam.sum(), rtol=1e-9)


def test_alpha_is_weighted_least_squares_over_one_based_ranks():
    rng = np.random.default_rng(8)
    ranks = np.arange(1, 301, dtype=float)
    lam = np.sort(ranks**-1.2 * np.exp(0.2 * rng.normal(size=300)))[::-1]
    fit = alpha_req(lam, fit_range=(12, 100))
    # numpy's polyfit weights multiply the residuals, so sqrt(1/r) gives weights 1/r
    r = ranks[11:100]
    slope, _ = np.polyfit(np.log(r), np.log(lam[11:100] / lam.sum()), 1, w=np.sqrt(1 / r))
    assert fit.alpha == pytest.approx(-slope, rel=1e-10)
    assert 0 < fit.r2 < 1


def test_alpha_req_does_not_modify_its_input():
    lam = np.arange(1, 201, dtype=float) ** -1.0
    before = lam.copy()
    alpha_req(lam, fit_range=(5, 150))
    np.testing.assert_array_equal(lam, before)


def test_alpha_req_range_beyond_spectrum_says_how_many():
    with pytest.raises(ValueError, match="only 64"):
        alpha_req(np.arange(1, 65, dtype=float)[::-1])


def test_alpha_req_zero_eigenvalues_in_range():
    lam = np.r_[np.arange(1, 51, dtype=float)[::-1], np.zeros(60)]
    with pytest.raises(ValueError, match="only 50 of the 110"):
        alpha_req(lam)


@pytest.mark.parametrize("bad", [(0, 10), (10, 10), (20, 5)])
def test_alpha_req_bad_fit_range(bad):
    with pytest.raises(ValueError, match="fit_range"):
        alpha_req(np.arange(1, 101, dtype=float)[::-1], fit_range=bad)


# --- bad inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.array([[1.0, np.nan], [2.0, 3.0]]), "NaN"),
        (np.zeros((0, 5)), "empty"),
        (np.ones(5), "2-D"),
        (np.ones((2, 3, 4)), "2-D"),
        (np.ones((1, 5)), "at least 2 samples"),
    ],
)
def test_eigenspectrum_rejects_bad_features(features, message):
    with pytest.raises(ValueError, match=message):
        eigenspectrum(features)


def test_accumulator_rejects_mismatched_batches_and_empty_state():
    acc = CovarianceAccumulator()
    with pytest.raises(ValueError, match="No batch"):
        acc.eigenvalues()
    acc.update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="4"):
        acc.update(np.ones((3, 5)))


@pytest.mark.parametrize(
    ("eigenvalues", "message"),
    [
        ([], "empty"),
        ([1.0, np.nan], "NaN"),
        ([[1.0, 2.0]], "1-D"),
        ([0.0, 0.0], "all zero"),
        ([1.0, -0.5], "non-negative"),
    ],
)
def test_rankme_rejects_bad_eigenvalues(eigenvalues, message):
    with pytest.raises(ValueError, match=message):
        rankme(np.asarray(eigenvalues, dtype=float))


def test_rankme_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        rankme(np.ones(3), variant="entropy")


# --- bootstrap ----------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_bracketing():
    x = np.random.default_rng(9).normal(size=(300, 8)) * np.linspace(2, 0.5, 8)
    a = rankme_ci(x, n_resamples=30, seed=3)
    b = rankme_ci(x, n_resamples=30, seed=3)
    assert a == b
    assert a.low <= a.high
    assert a.estimate == pytest.approx(rankme(eigenspectrum(x)))
    pct = rankme_ci(x, n_resamples=30, seed=3, method="percentile")
    # resampling repeats rows, so RankMe of a resample is biased low ...
    assert pct.bias < 0
    # ... and the basic interval reflects the percentile one around the estimate
    assert a.low == pytest.approx(2 * a.estimate - pct.high)
    assert a.high == pytest.approx(2 * a.estimate - pct.low)


def test_alpha_bootstrap_and_generic_statistic():
    ranks = np.arange(1, 61, dtype=float)
    x = np.random.default_rng(10).normal(size=(400, 60)) * ranks**-0.5  # alpha about 1
    ci = alpha_req_ci(x, fit_range=(5, 40), n_resamples=20, seed=0)
    assert ci.low <= ci.high and 0.7 < ci.estimate < 1.3
    top = bootstrap_ci(x, lambda lam: lam[0] / lam.sum(), n_resamples=10, seed=0)
    assert 0 < top.low <= top.high < 1
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(x, lambda lam: lam[0], n_resamples=10, method="bca")


# --- phases -------------------------------------------------------------------------------


def down_up_down(noise: float = 0.0):
    steps = np.unique(np.round(np.logspace(0, 4, 80)))
    t = np.log10(steps)
    values = np.where(t < 1, 50 - 40 * t, np.where(t < 3, 10 + 25 * (t - 1), 60 - 10 * (t - 3)))
    rng = np.random.default_rng(11)
    return steps, values + noise * rng.normal(size=steps.size)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_segment_phases_finds_down_up_down(noise):
    steps, values = down_up_down(noise)
    result = segment_phases(steps, values)
    assert [p.name for p in result.phases] == list(PHASES)
    assert result.absent == ()
    warmup, entropy, compression = result.phases
    assert 5 <= warmup.end_step <= 20  # true turn at step 10
    assert 500 <= entropy.end_step <= 2000  # true turn at step 1000
    assert compression.end_step == steps[-1]
    assert warmup.change < 0 < entropy.change and compression.change < 0
    assert result.first("compression-seeking") is compression
    assert "warmup: steps" in result.describe()


def test_segment_phases_reports_absent_phases():
    steps = np.arange(1, 51, dtype=float)
    rising = segment_phases(steps, np.sqrt(steps))
    assert [p.name for p in rising.phases] == ["entropy-seeking"]
    assert rising.absent == ("warmup", "compression-seeking")
    assert rising.first("warmup") is None
    assert "compression-seeking: absent" in rising.describe()
    flat = segment_phases(steps, np.ones(50))
    assert flat.phases == () and flat.absent == PHASES


def test_segment_phases_for_a_metric_that_falls_on_expansion():
    steps, values = down_up_down()
    result = segment_phases(steps, -values, higher_is_expansion=False)  # e.g. alpha
    assert [p.name for p in result.phases] == list(PHASES)


@pytest.mark.parametrize(
    ("steps", "values", "message"),
    [
        ([0, 1, 2], [1.0, np.nan, 2.0], "NaN"),
        ([0, 1, 2], [1.0, 2.0], "differ in length"),
        ([0, 2, 1], [1.0, 2.0, 3.0], "strictly increasing"),
        ([0], [1.0], "at least 2"),
        ([[0, 1]], [[1.0, 2.0]], "1-D"),
    ],
)
def test_segment_phases_rejects_bad_input(steps, values, message):
    with pytest.raises(ValueError, match=message):
        segment_phases(steps, values)
