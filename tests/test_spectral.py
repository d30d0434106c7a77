"""Spectral metrics against answers known by hand, and their failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repgeo_utils.activations import ShardedArray
from repgeo_utils.spectral import (
    LAYER_SPECTRA_COLUMNS,
    PHASES,
    CovarianceAccumulator,
    alpha_req,
    alpha_req_ci,
    bootstrap_ci,
    eigenspectrum,
    features_with_spectrum,
    layer_spectra,
    numerical_rank,
    paired_subsamples,
    rank_tolerance,
    rankme,
    rankme_ci,
    segment_phases,
    spectral_summary,
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


# --- known spectra, summaries and per-layer tables ------------------------------------------


def test_features_with_spectrum_has_exactly_that_spectrum():
    lam = np.arange(1, 41, dtype=float) ** -1.3
    x = features_with_spectrum(lam, n_samples=200, seed=3)
    assert x.shape == (200, 40)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(eigenspectrum(x), lam, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="must exceed"):
        features_with_spectrum(lam, n_samples=40)


def test_spectral_summary_of_an_exact_power_law():
    lam = np.arange(1, 151, dtype=float) ** -1.4
    summary = spectral_summary(eigenspectrum(features_with_spectrum(lam, n_samples=400)))
    assert summary["n_eigenvalues"] == 150
    assert summary["alpha"] == pytest.approx(1.4, abs=1e-9)
    assert summary["alpha_r2"] == pytest.approx(1.0, abs=1e-9)
    for variant in ("covariance", "singular"):
        expected = rankme_by_hand(lam, variant)
        assert summary[f"rankme_{variant}"] == pytest.approx(expected, rel=1e-8)


def test_spectral_summary_of_a_low_rank_matrix_has_no_alpha(caplog):
    # rank 10 in 256 dimensions: eigenvalues 11.. are round-off (~1e-16 of the largest),
    # so the fit range 12..100 holds only zeros and must not be fitted
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2000, 10)) @ rng.normal(size=(10, 256))
    with caplog.at_level("WARNING", logger="repgeo_utils.spectral"):
        summary = spectral_summary(eigenspectrum(x), label="rank-10 case")
    assert math.isnan(summary["alpha"]) and math.isnan(summary["alpha_r2"])
    assert summary["rankme_covariance"] <= 10 + 1e-3
    assert summary["rankme_singular"] <= 10 + 1e-3
    assert "rank-10 case: no alpha-ReQ" in caplog.text and "only 10 of the 256" in caplog.text


def test_spectral_summary_clipped_to_rank_fits_a_narrow_model():
    # a 32-wide model: the fixed range 12..100 cannot be fitted, the clipped one ends at 32
    lam = np.arange(1, 33, dtype=float) ** -2.0
    fixed = spectral_summary(lam, fit_range=(12, 100))
    clipped = spectral_summary(lam, fit_range=(12, 100), clip_to_rank=True)
    assert math.isnan(fixed["alpha"]) and math.isnan(fixed["alpha_fit_hi"])
    assert clipped["alpha"] == pytest.approx(2.0, abs=1e-9) and clipped["alpha_fit_hi"] == 32
    assert math.isnan(spectral_summary(lam[:12], clip_to_rank=True)["alpha"])  # 12..12: no fit


def test_round_off_of_a_lost_direction_is_not_fitted():
    # the last of 32 eigenvalues is the round-off of a direction that float32 features lose
    # (a LayerNorm output): 1.8e-14 of the largest, above 32 * float64 epsilon (7e-15) but
    # below the rank tolerance, so the clipped fit ends at rank 31
    lam = np.arange(1, 33, dtype=float) ** -2.0
    lam[-1] = 1.8e-14
    assert numerical_rank(lam) == 31
    assert rank_tolerance(lam) == pytest.approx(1e-12)
    summary = spectral_summary(lam, clip_to_rank=True)
    assert summary["alpha_fit_hi"] == 31 and summary["alpha"] == pytest.approx(2.0, abs=1e-9)
    assert rank_tolerance(np.ones(10_000)) == pytest.approx(10_000 * np.finfo(float).eps)


def test_spectral_summary_without_variance_is_all_nan():
    summary = spectral_summary(np.zeros(120))
    assert summary["n_eigenvalues"] == 120
    assert all(math.isnan(summary[k]) for k in LAYER_SPECTRA_COLUMNS[4:])


class KnownLayers:
    """A stand-in for an ActivationSet: layer l's per-text rows have spectrum r^-alpha_l;
    its token rows are those rows plus one [CLS]-like row per text, all far along one axis."""

    def __init__(self, alphas, n_texts=300, d=120):
        self.alphas = alphas
        self.layers = tuple(range(len(alphas)))
        self.n_hidden_states = len(alphas)
        ranks = np.arange(1, d + 1, dtype=float)
        self.rows = [
            features_with_spectrum(ranks**-a, n_texts, seed=i) for i, a in enumerate(alphas)
        ]
        self.special_mask = np.r_[np.ones(n_texts, dtype=bool), np.zeros(n_texts, dtype=bool)]
        special = np.zeros((n_texts, d))
        special[:, 0] = 50.0 + np.arange(n_texts)  # huge variance along one axis
        self.special = special

    def pooled(self, layer, how):
        assert how == "mean"
        return self.rows[layer]

    def tokens(self, layer):
        return ShardedArray([self.special[:100], np.r_[self.special[100:], self.rows[layer]]])


def test_layer_spectra_recovers_each_layers_exponent():
    alphas = [0.6, 1.0, 1.8]
    table = layer_spectra(KnownLayers(alphas))
    assert list(table.columns) == list(LAYER_SPECTRA_COLUMNS)
    assert table["layer"].tolist() == [0, 1, 2]
    assert (table["representation"] == "mean").all()
    assert (table["n_samples"] == 300).all() and (table["n_eigenvalues"] == 120).all()
    np.testing.assert_allclose(table["alpha"], alphas, atol=1e-9)
    ranks = np.arange(1, 121, dtype=float)
    for row, a in zip(table.itertuples(), alphas, strict=True):
        assert row.rankme_covariance == pytest.approx(rankme_by_hand(ranks**-a, "covariance"))
        assert row.rankme_singular == pytest.approx(rankme_by_hand(ranks**-a, "singular"))
    assert table.attrs["fit_range"] == (12, 100)
    # negative indices count from the end; the last layer is the steepest, so the lowest RankMe
    last = layer_spectra(KnownLayers(alphas), layers=[-1])
    assert last["layer"].tolist() == [2]
    assert last["rankme_covariance"].iloc[0] == table["rankme_covariance"].min()


def test_layer_spectra_tokens_streamed_and_without_special_rows():
    known = KnownLayers([1.2])
    kept = layer_spectra(known, pooling="tokens", exclude_special=True)
    assert kept["n_samples"].tolist() == [300]
    assert kept["alpha"].iloc[0] == pytest.approx(1.2, abs=1e-9)
    everything = layer_spectra(known, pooling="tokens")
    assert everything["n_samples"].tolist() == [600]
    # the special rows' one huge direction dominates: RankMe collapses towards 1
    assert everything["rankme_covariance"].iloc[0] < 1.5 < kept["rankme_covariance"].iloc[0]
    with pytest.raises(ValueError, match="tokens"):
        layer_spectra(known, pooling="mean", exclude_special=True)
    with pytest.raises(ValueError, match="Unknown pooling"):
        layer_spectra(known, pooling="max")


def test_layer_spectra_short_spectrum_has_rankme_but_no_alpha(caplog):
    with caplog.at_level("WARNING", logger="repgeo_utils.spectral"):
        table = layer_spectra(KnownLayers([1.0], n_texts=80, d=60))
    assert table["n_eigenvalues"].tolist() == [60]
    assert table["alpha"].isna().all() and table["rankme_covariance"].notna().all()
    assert "layer 0 (mean, 80 samples): no alpha-ReQ" in caplog.text
    narrow = layer_spectra(KnownLayers([1.0], n_texts=80, d=60), fit_range=(5, 50))
    assert narrow["alpha"].iloc[0] == pytest.approx(1.0, abs=1e-9)
    assert narrow.attrs["fit_range"] == (5, 50)


def test_layer_spectra_on_a_tiny_bert(tiny_bert):
    from repgeo_utils.activations import extract_activations

    texts = ["the movie was very good", "i hate this app", "the team lost the game",
             "love it", "awful acting , terrible film", "news on sport and tech",
             "this update is not easy to use", "the cast were brilliant"]  # fmt: skip
    acts = extract_activations(tiny_bert, texts, max_length=32, progress=False)
    mean = layer_spectra(acts, fit_range=(2, 6))
    assert mean["layer"].tolist() == list(acts.layers)
    assert (mean["n_eigenvalues"] == 8).all()  # 8 texts, 16 features
    assert mean["alpha"].notna().all() and (mean["rankme_covariance"] <= 7 + 1e-3).all()
    cls = layer_spectra(acts, pooling="cls", fit_range=(2, 6))
    assert cls.loc[0, ["rankme_covariance", "alpha"]].isna().all()  # one [CLS] vector at layer 0
    tokens = layer_spectra(acts, pooling="tokens", exclude_special=True)
    assert (tokens["n_samples"] == acts.n_tokens - 2 * len(texts)).all()
    assert tokens["alpha"].isna().all()  # 16 features: too few eigenvalues for ranks 12..100


def test_spectral_plots_draw():
    import matplotlib.pyplot as plt
    import pandas as pd

    from repgeo_utils.plotting import plot_eigenspectra, plot_layer_spectra

    ranks = np.arange(1, 201, dtype=float)
    spectra = {"a": ranks**-1.0, "b": np.r_[ranks[:10] ** -2.0, np.zeros(190)]}
    fig = plot_eigenspectra(spectra, {"a": alpha_req(spectra["a"])})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "a: alpha = 1.00" in labels and "alpha fit range (ranks 12-100)" in labels
    plt.close(fig)
    table = pd.concat(
        [layer_spectra(KnownLayers([0.8, 1.5], n_texts=150, d=110)).assign(task=t, model=m)
         for t in ("task 1", "task 2") for m in ("pre-trained", "fine-tuned")]
    )  # fmt: skip
    fig = plot_layer_spectra(table)
    assert len(fig.axes) == 6 and len(fig.axes[0].lines) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="lacks columns"):
        plot_layer_spectra(table.drop(columns="model"))


def test_paired_subsamples_draw_without_replacement_and_pair_the_rows():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(60, 100))  # fewer samples than features: every row adds a direction
    b = a @ np.linalg.qr(rng.normal(size=(100, 100)))[0]  # a rotation: the same spectrum

    def nonzero(lam):
        return float((lam > 1e-10 * lam.max()).sum())

    values = paired_subsamples(a, b, nonzero, n_resamples=20, fraction=0.5, seed=1)
    assert values.shape == (20, 2)
    # 30 distinct centred rows span exactly 29 directions; a repeated row would give fewer
    assert (values == 29).all()
    both = paired_subsamples(a, b, lambda lam: [rankme(lam), lam.sum()], n_resamples=5, seed=2)
    assert both.shape == (5, 2, 2)
    np.testing.assert_allclose(both[:, 0], both[:, 1], rtol=1e-9)  # paired rows, same spectrum
    again = paired_subsamples(a, b, lambda lam: [rankme(lam), lam.sum()], n_resamples=5, seed=2)
    np.testing.assert_array_equal(both, again)


def test_paired_subsamples_see_a_known_difference():
    ranks = np.arange(1, 151, dtype=float)
    a = features_with_spectrum(ranks**-0.8, 400, seed=0)
    b = features_with_spectrum(ranks**-1.6, 400, seed=0)  # same U: rows paired
    values = paired_subsamples(a, b, lambda lam: alpha_req(lam).alpha, n_resamples=30, seed=3)
    assert (values[:, 1] > values[:, 0]).all()


def test_paired_subsamples_reject_unpaired_or_bad_settings():
    x = np.random.default_rng(0).normal(size=(20, 5))
    with pytest.raises(ValueError, match="paired"):
        paired_subsamples(x, x[:10], rankme)
    with pytest.raises(ValueError, match="fraction"):
        paired_subsamples(x, x, rankme, fraction=1.5)
    with pytest.raises(ValueError, match="too small"):
        paired_subsamples(x, x, rankme, fraction=0.05)
