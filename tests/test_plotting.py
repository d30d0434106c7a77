"""The plotting package: every plot of its modules is reachable as ``plotting.<name>``."""

from __future__ import annotations

import importlib
import inspect

from repgeo_utils import plotting

MODULES = (
    "style", "finetuning", "similarity", "sae", "sae_diffing", "spectral", "training", "ablation",
)  # fmt: skip


def test_every_public_plot_is_re_exported():
    for name in MODULES:
        module = importlib.import_module(f"repgeo_utils.plotting.{name}")
        for attr, value in vars(module).items():
            if attr.startswith("plot_") and inspect.isfunction(value):
                assert getattr(plotting, attr) is value, f"plotting.{attr} is not {name}.{attr}"
    assert plotting.save_figure is plotting.style.save_figure
    assert plotting.use_style is plotting.style.use_style
    assert set(plotting.__all__) <= set(dir(plotting))


def test_running_mean_is_shared_by_the_training_curves():
    x, y = plotting.style.running_mean([1.0, 2.0, 3.0, 4.0], 2)
    assert list(x) == [1, 2, 3] and list(y) == [1.5, 2.5, 3.5]
    x, y = plotting.style.running_mean([1.0, 2.0], 5)  # too short: the values as they are
    assert list(x) == [0, 1] and list(y) == [1.0, 2.0]


def test_saved_figures_read_on_a_projector(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties
    from PIL import Image

    style = plotting.style
    with plt.rc_context():
        style.use_style()
        assert plt.rcParams["savefig.dpi"] == style.SAVE_DPI >= 150
        assert plt.rcParams["figure.dpi"] == style.DPI  # the notebooks' inline copies stay small
        for key in ("font.size", "axes.titlesize", "axes.labelsize", "legend.fontsize",
                    "xtick.labelsize", "ytick.labelsize"):  # fmt: skip
            points = FontProperties(size=plt.rcParams[key]).get_size_in_points()
            assert points >= style.MIN_FONT_PT, f"{key} is {points} pt"
    monkeypatch.setenv("REPGEO_FIGURES_DIR", str(tmp_path))
    with plt.rc_context({"savefig.bbox": None, "savefig.dpi": 72}):
        fig = plt.figure(figsize=(2.0, 1.5))
        path = plotting.save_figure(fig, "projector")
    assert Image.open(path).size == (2 * style.SAVE_DPI, 1.5 * style.SAVE_DPI)  # 320 x 240


def test_confusion_matrices_state_the_normalisation_and_labels_do_not_overlap():
    import numpy as np

    from repgeo_utils.finetune import EvalReport

    names = ["business", "entertainment", "politics", "sport", "tech"]
    y_true = [0, 0, 1, 1, 1, 1, 2, 3, 4, 4]
    y_pred = [0, 1, 1, 1, 1, 0, 2, 3, 4, 0]
    report = EvalReport.from_predictions(y_true, y_pred, names)
    fig = plotting.plot_confusion_matrices({"bbc-news": report})
    ax = fig.axes[0]
    assert "rows normalised" in fig._suptitle.get_text() and "recall" in fig._suptitle.get_text()
    assert "recall" in fig.axes[1].get_ylabel()  # the colour bar says what a cell is
    cells = [float(t.get_text()) for t in ax.texts]  # row by row
    assert cells[5:10] == [0.25, 0.75, 0.0, 0.0, 0.0]  # entertainment: 1 of 4 called business
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["business", "entertain.", "politics", "sport", "tech"]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert not left.overlaps(right), f"tick labels overlap: {left} {right}"
    counts = plotting.plot_confusion_matrices({"bbc-news": report}, normalize=False)
    assert [float(t.get_text()) for t in counts.axes[0].texts][5:7] == [1.0, 3.0]
    assert "counts" in counts._suptitle.get_text()
    np.testing.assert_allclose(counts.axes[0].collections[0].get_clim(), (0, 3))


def test_trajectory_phase_legend_is_outside_the_axes_and_shading_only_on_its_metric():
    import pandas as pd

    from repgeo_utils import spectral

    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000]
    rankme = [20, 20, 19, 18, 12, 6, 5, 8, 12, 16, 19, 20, 18, 16]
    table = pd.DataFrame(
        {"step": steps, "layer": 2, "rankme_covariance": rankme, "alpha": 1.0, "loss": 3.0}
    )
    phases = spectral.segment_phases(steps, rankme)
    assert len(phases.phases) == 3
    fig = plotting.plot_checkpoint_trajectory(table, phases=phases)
    rank_ax, alpha_ax, loss_ax = fig.axes
    assert len(rank_ax.patches) == 3 and not alpha_ax.patches and not loss_ax.patches
    for ax in (alpha_ax, loss_ax):  # the two later phases' starts, as thin dotted lines
        starts = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
        assert starts == [p.start_step for p in phases.phases[1:]]
    assert rank_ax.get_legend() is None and len(fig.legends) == 1
    legend = fig.legends[0]
    assert "RankMe (covariance eigenvalues)" in legend.get_title().get_text()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"legend covers {ax.get_ylabel()}"
    assert not box.overlaps(fig._suptitle.get_window_extent(renderer))
