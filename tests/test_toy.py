"""The toy model at a fixed seed: the main condition rises then falls, the controls do not."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from repgeo_utils.spectral import segment_phases
from repgeo_utils.toy import (
    ToyConfig,
    ToyRun,
    balance_gap,
    class_spread,
    init_table,
    rise_then_fall,
    run_conditions,
    seed_table,
    shape_table,
    top_two_ratio,
    toy_conditions,
    train_toy,
)

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


def _hand_run(labels, snapshots, singular_w=None):
    labels = np.asarray(labels)
    steps = np.arange(3)
    zeros = np.zeros(3)
    return ToyRun(
        config=ToyConfig(n_samples=max(2, len(labels)), n_classes=4, d_embed=2, steps=2),
        steps=steps, rankme_covariance=zeros, rankme_singular=zeros, loss=zeros, labels=labels,
        embeddings=np.zeros((len(labels), 2)),
        singular_w=np.asarray(singular_w if singular_w is not None else np.ones((3, 2))),
        snapshots=snapshots,
    )  # fmt: skip


def test_class_spread_by_hand():
    # class 0 (3 samples) at (2, 0): distance 2; class 1 at (0, 1): 1; class 2 at (3, 4): 5
    f = np.array([[2.0, 0], [2, 0], [2, 0], [0, 1], [0, 1], [3, 4]])
    run = _hand_run([0, 0, 0, 1, 1, 2], {0: np.zeros_like(f) + 1e-9, 5: f})
    table = class_spread(run, steps=[5], n_frequent=1).set_index("step")
    assert table.loc[5, "frequent"] == pytest.approx(2.0)  # the most frequent class
    assert table.loc[5, "rare"] == pytest.approx(3.0)  # median of 1 and 5 (the rarer half)
    assert table.loc[5, "ratio"] == pytest.approx(1.5)
    assert list(class_spread(run, n_frequent=1)["step"]) == [0, 5]
    with pytest.raises(ValueError, match=r"no snapshot at steps \[7\]"):
        class_spread(run, steps=[7], n_frequent=1)
    with pytest.raises(ValueError, match="n_frequent=2 needs at least 4 classes"):
        class_spread(run, n_frequent=2)


def test_top_two_ratio_by_hand():
    run = _hand_run([0, 1], {}, singular_w=[[4.0, 2.0], [3.0, 3.0], [6.0, 3.0]])
    assert top_two_ratio(run) == {"at start": 2.0, "lowest": 1.0, "lowest step": 1, "final": 2.0}
    assert top_two_ratio(run, from_step=2)["lowest step"] == 2
    with pytest.raises(ValueError, match="from_step 9"):
        top_two_ratio(run, from_step=9)


def test_balanced_start_has_no_gap_and_the_small_start_a_large_one():
    small = train_toy(replace(FAST, steps=5))
    balanced = train_toy(replace(FAST, steps=5, init="balanced"))
    assert balanced.balance[0] < 1e-12
    # independent Gaussians of equal scale: W^T W ~ n s^2 I = 8 U U^T, so the gap is about 7
    assert 5 < small.balance[0] < 10
    np.testing.assert_allclose(balanced.singular_w[0], balanced.singular_u[0], rtol=1e-10)
    assert balance_gap(balanced.embeddings, balanced.readout) == pytest.approx(balanced.balance[-1])
    with pytest.raises(ValueError, match="init"):
        ToyConfig(init="orthogonal")


def test_shape_seed_and_init_tables():
    conditions = {
        "main": replace(FAST, steps=400),
        "hard": replace(FAST, steps=400, label_smoothing=0.0),
    }
    runs = run_conditions(conditions=conditions)
    shapes = shape_table(runs).set_index(["condition", "variant"])
    assert shapes.loc[("main", "covariance"), "rises then falls"]
    assert not shapes.loc[("hard", "covariance"), "rises then falls"]
    assert shapes.loc[("hard", "covariance"), "peak step"] == 400
    seeds = seed_table({"main": replace(FAST, steps=50)}, [0, 1], steps=600)
    assert list(seeds["seed"]) == [0, 0, 1, 1] and set(seeds["variant"]) == {
        "covariance",
        "singular",
    }
    assert seeds[seeds["variant"] == "covariance"]["rises then falls"].all()
    assert (seeds["fall"] > 0.04).all()  # measured at 600 steps: 4.9-8.7%
    balanced = train_toy(replace(conditions["main"], init="balanced"))
    inits = init_table({"main": {"small": runs["main"], "balanced": balanced}}).set_index("init")
    assert inits.loc["balanced", "gap at start"] < 1e-12 < inits.loc["small", "gap at start"]
    assert inits.loc["balanced", "rises then falls"] and inits.loc["small", "rises then falls"]
