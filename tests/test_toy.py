"""The toy model at a fixed seed: the main condition rises then falls, the controls do not."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from repgeo_utils.spectral import segment_phases
from repgeo_utils.toy import ToyConfig, rise_then_fall, run_conditions, toy_conditions, train_toy

# The fall is complete by step ~1,000 (measured: 11.2% by step 1,000, 11.7% by 2,000).
FAST = ToyConfig(steps=1000, seed=0)


@pytest.fixture(scope="module")
def runs():
    conditions = toy_conditions(FAST)
    conditions.pop("no bottleneck")  # the slowest (d = 64); tested on its own below
    return run_conditions(conditions=conditions)


@pytest.mark.parametrize("variant", ["covariance", "singular"])
def test_main_condition_collapses_rises_then_falls(runs, variant):
    run = runs["main"]
    shape = rise_then_fall(run.steps, run.rankme(variant))
    assert shape.rises_then_falls
    assert shape.fall > 0.07  # measured 11.2% (covariance), 8.4% (singular)
    assert shape.collapse_value < 2.0 < shape.peak_value  # warmup collapse, then expansion
    assert 0 < shape.collapse_step < shape.peak_step < run.steps[-1]
    phases = segment_phases(run.steps, run.rankme(variant))
    assert [p.name for p in phases.phases] == ["warmup", "entropy-seeking", "compression-seeking"]


@pytest.mark.parametrize("name", ["uniform classes", "MSE loss", "hard labels"])
def test_controls_do_not_fall(runs, name):
    run = runs[name]
    for variant in ("covariance", "singular"):
        shape = rise_then_fall(run.steps, run.rankme(variant))
        assert not shape.rises_then_falls, (name, variant, shape.describe())
        assert shape.fall < 0.02


def test_no_bottleneck_keeps_expanding():
    run = train_toy(replace(toy_conditions(FAST)["no bottleneck"], steps=600))
    shape = rise_then_fall(run.steps, run.rankme_covariance)
    assert shape.fall == 0.0 and shape.peak_step == 600
    assert shape.final_value > 2 * FAST.d_embed  # far beyond what the bottleneck allows


def test_losses_decrease_and_runs_repeat_exactly(runs):
    for run in runs.values():
        assert np.all(np.diff(run.loss) <= 1e-12)  # gradient-flow regime, no oscillation
    again = train_toy(replace(FAST, steps=50))
    first = train_toy(replace(FAST, steps=50))
    np.testing.assert_array_equal(again.rankme_covariance, first.rankme_covariance)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    other_seed = train_toy(replace(FAST, steps=50, seed=1))
    assert not np.array_equal(other_seed.rankme_covariance, first.rankme_covariance)


def test_conditions_differ_from_main_in_one_setting():
    conditions = toy_conditions(FAST)
    assert conditions["uniform classes"].zipf_exponent == 0
    assert conditions["no bottleneck"].d_embed == FAST.n_classes
    assert conditions["MSE loss"].loss == "mse"
    assert conditions["hard labels"].label_smoothing == 0
    np.testing.assert_allclose(conditions["uniform classes"].class_distribution(), 1 / 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_embed": 0}, "d_embed"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"loss": "hinge"}, "loss"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"zipf_exponent": -1.0}, "zipf_exponent"),
    ],
)
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToyConfig(**kwargs)


def test_main_condition_needs_bottleneck_and_skew():
    with pytest.raises(ValueError, match="bottleneck"):
        toy_conditions(ToyConfig(d_embed=64))
    with pytest.raises(ValueError, match="skewed"):
        toy_conditions(ToyConfig(zipf_exponent=0.0))


def test_divergence_is_a_clear_error():
    with pytest.raises(FloatingPointError, match="learning_rate"):
        train_toy(ToyConfig(learning_rate=200.0, steps=300))


def test_rise_then_fall_on_a_synthetic_curve():
    steps = np.arange(7)
    shape = rise_then_fall(steps, np.array([5.0, 1.0, 3.0, 6.0, 5.8, 5.5, 5.4]))
    assert (shape.collapse_step, shape.peak_step) == (1, 3)
    assert shape.fall == pytest.approx(0.1)
    assert shape.rises_then_falls
    assert not rise_then_fall(steps, np.array([5.0, 1.0, 3.0, 6.0, 6.0, 6.0, 5.9])).rises_then_falls
    with pytest.raises(ValueError, match="NaN"):
        rise_then_fall(steps[:3], np.array([1.0, np.nan, 2.0]))
