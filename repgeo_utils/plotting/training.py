"""Notebooks 06-08: metrics over training, against the step of pretraining checkpoints, the
gradient-descent step of the toy model, or the checkpoints of the post-training stages; and
pass@k before and after RL."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..spectral import RANKME_LABELS
from .style import log2_integer_axis

#: Axis labels of the checkpoint-sweep metrics (``pretrain.sweep_checkpoints(...).metrics``).
TRAJECTORY_LABELS = {
    "rankme_covariance": "RankMe (covariance eigenvalues)",
    "rankme_singular": "RankMe (singular values)",
    "alpha": "alpha-ReQ",
    "loss": "validation loss (nats/token)",
}
#: Shading of the phases found by ``spectral.segment_phases``.
PHASE_COLORS = {
    "warmup": "#bdbdbd",
    "entropy-seeking": "#9ecae1",
    "compression-seeking": "#fdae6b",
}


def _step_axis(ax) -> None:
    """Log-like step axis that still shows step 0 (symlog, linear below 1)."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_xlim(left=0)
    ax.set_xlabel("training step")


def plot_checkpoint_trajectory(
    table,
    metrics=("rankme_covariance", "alpha", "loss"),
    *,
    layer: int | None = None,
    phases=None,
    title: str | None = None,
):
    """One panel per metric against training step (symlog axis), for one layer.

    ``table`` is a checkpoint sweep's metrics (columns ``step``, ``layer`` and the metrics);
    ``layer`` defaults to the highest in the table (the final layer). ``phases`` (a
    ``spectral.PhaseSegmentation`` of the first metric's trajectory) shades each stretch on the
    first metric's panel and marks where each phase starts with a dotted line on the others;
    the phase legend sits above the panels, outside the axes. Returns the figure.
    """
    missing = [m for m in ("step", "layer", *metrics) if m not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    layer = int(table["layer"].max()) if layer is None else layer
    rows = table[table["layer"] == layer].sort_values("step")
    if rows.empty:
        raise ValueError(f"no rows for layer {layer}; layers: {sorted(table['layer'].unique())}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.5), squeeze=False)
    shown = phases is not None and bool(phases.phases)
    for i, (ax, metric) in enumerate(zip(axes[0], metrics, strict=True)):
        for phase in phases.phases if shown else ():
            if i == 0:  # the phases are the first metric's: shaded only on its panel
                ax.axvspan(
                    phase.start_step,
                    phase.end_step,
                    alpha=0.35,
                    lw=0,
                    color=PHASE_COLORS.get(phase.name, "#eeeeee"),
                    label=phase.name,
                )
            elif phase is not phases.phases[0]:  # elsewhere a thin line where a phase starts
                ax.axvline(phase.start_step, color="#555555", ls=":", lw=1.2)
        ax.plot(rows["step"], rows[metric], marker="o", ms=3, color="#333333")
        ax.set_ylabel(TRAJECTORY_LABELS.get(metric, metric))
        _step_axis(ax)
    fig.suptitle(title or f"last-token representations, hidden_states[{layer}]", y=0.99)
    if shown:
        handles, labels = axes[0][0].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        fig.legend(
            unique.values(),
            unique.keys(),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.915),
            ncol=len(unique),
            frameon=False,
            title=f"phases of {TRAJECTORY_LABELS.get(metrics[0], metrics[0])} (shaded on its "
            "panel; dotted lines on the others)",
            title_fontsize=9,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.82))
    else:
        fig.tight_layout()
    return fig


def plot_layer_trajectories(table, metric: str = "rankme_covariance", *, title: str | None = None):
    """``metric`` against training step, one line per layer (paper 2's Fig 3 layout)."""
    if metric not in table.columns:
        raise ValueError(f"table has no column {metric!r}; it has {list(table.columns)}")
    layers = sorted(table["layer"].unique())
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(layers)))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for color, layer in zip(colors, layers, strict=True):
        rows = table[table["layer"] == layer].sort_values("step")
        label = "embeddings" if layer == 0 else f"layer {layer}"
        ax.plot(rows["step"], rows[metric], marker="o", ms=2.5, color=color, label=label)
    ax.set_ylabel(TRAJECTORY_LABELS.get(metric, metric))
    _step_axis(ax)
    ax.legend(loc="best", ncol=2 if len(layers) > 5 else 1)
    ax.set_title(title or f"{TRAJECTORY_LABELS.get(metric, metric)} per layer")
    fig.tight_layout()
    return fig


def plot_toy_rankme(runs, verdicts=None, *, variants=("covariance", "singular"), title=None):
    """RankMe of the toy model's embeddings against gradient-descent step.

    Top row, a panel a condition: both RankMe variants (named in the legend), the dotted line
    at ``d`` (the most RankMe can reach). Bottom: every condition's first-variant RankMe
    divided by its peak after the collapse, from the collapse on, so a late fall of a few
    percent is visible side by side. ``runs`` maps condition names to ``toy.ToyRun``;
    ``verdicts`` (optional) maps them to the ``toy.RiseFall`` of the first variant, marked at
    the peak with the size of the fall. Symlog step axis (step 0 is the initialisation).
    Returns the figure.
    """
    if not runs:
        raise ValueError("runs is empty: pass {condition name: ToyRun}")
    verdicts = verdicts or {}
    styles = {"covariance": ("#1f4e79", "-"), "singular": ("#e08214", "--")}
    fig = plt.figure(figsize=(3.3 * len(runs), 6.6))
    grid = fig.add_gridspec(2, len(runs), height_ratios=(1.0, 0.9), hspace=0.55, top=0.85)
    for col, (name, run) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[0, col])
        cfg = run.config
        for variant in variants:
            color, dash = styles.get(variant, ("#333333", ":"))
            label = RANKME_LABELS.get(variant, variant)
            ax.plot(run.steps, run.rankme(variant), color=color, ls=dash, lw=1.6, label=label)
        ax.axhline(cfg.d_embed, color="#999999", ls=":", lw=1)
        verdict = verdicts.get(name)
        if verdict is not None:
            falls = verdict.rises_then_falls
            if falls:
                ax.plot([verdict.peak_step], [verdict.peak_value], "o", color="#c51b7d", ms=5)
            text = f"fall {100 * verdict.fall:.1f}% after the peak" if falls else "no fall"
            ax.text(
                0.97, 0.05, text, transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8.5, color="#c51b7d" if falls else "#555555",
            )  # fmt: skip
        loss = "CE" if cfg.loss == "cross_entropy" else "MSE"
        ax.set_title(
            f"{name}\nd={cfg.d_embed}, C={cfg.n_classes}, Zipf s={cfg.zipf_exponent:g}, "
            f"eps={cfg.label_smoothing:g}, {loss}",
            fontsize=9,
        )
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        ax.set_xlim(0, run.steps[-1])
        ax.set_ylim(0, cfg.d_embed * 1.08)
        ax.set_xlabel("gradient-descent step")
        if col == 0:
            ax.set_ylabel("RankMe of the embeddings F")
            handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 0.955))  # fmt: skip

    ax = fig.add_subplot(grid[1, :])
    first = variants[0]
    for name, run in runs.items():
        values = np.asarray(run.rankme(first))
        low = int(np.argmin(values))
        peak = values[low:].max()
        ax.plot(run.steps[low:], values[low:] / peak, lw=1.8, label=name)
    ax.axhline(1.0, color="#999999", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0.8, 1.01)
    ax.set_xlabel("gradient-descent step (from each condition's collapse on)")
    ax.set_ylabel("RankMe / its peak")
    ax.set_title(f"{RANKME_LABELS.get(first, first)} relative to its peak after the collapse",
                 fontsize=10)  # fmt: skip
    ax.legend(loc="lower left", ncol=len(runs), fontsize=8.5)
    fig.suptitle(title or "Toy model: RankMe of the embeddings over training, per condition",
                 y=0.995)  # fmt: skip
    return fig


def plot_toy_geometry(clusters, singular, *, steps, n_values: int = 3, title=None):
    """Class clusters and the top singular values of W and U over training (paper 2, Fig 5B-D).

    ``clusters`` maps condition names to ``toy.class_clusters`` tables, ``singular`` the same
    names to ``toy.singular_value_table`` tables; ``steps`` are the snapshot steps to draw
    (one scatter column each, e.g. the collapse, the RankMe peak and the end). One row per
    condition: the embeddings projected on their top two principal directions at each step,
    coloured by the class's frequency rank (dark: frequent; every class of the run, sorted so
    the frequent ones are drawn on top), then the top ``n_values`` singular values of W (solid)
    and U (dashed) against the step, with the drawn steps marked. Returns the figure.
    """
    if not clusters:
        raise ValueError("clusters is empty: pass {condition name: class_clusters(...) table}")
    missing = [name for name in clusters if name not in singular]
    if missing:
        raise ValueError(f"singular has no table for {missing}; it has {list(singular)}")
    steps = list(steps)
    names = list(clusters)
    fig, axes = plt.subplots(
        len(names), len(steps) + 1, figsize=(3.0 * len(steps) + 4.6, 3.1 * len(names)),
        gridspec_kw={"width_ratios": [1.0] * len(steps) + [1.6]}, squeeze=False,
    )  # fmt: skip
    cmap = plt.get_cmap("viridis")
    for row, name in enumerate(names):
        table = clusters[name]
        have = sorted(table["step"].unique())
        absent = [s for s in steps if s not in have]
        if absent:
            raise ValueError(f"{name}: no cluster snapshot at steps {absent}; it has {have}")
        top_rank = max(int(table["class_rank"].max()), 1)
        for col, step in enumerate(steps):
            ax = axes[row, col]
            part = table[table["step"] == step].sort_values("class_rank", ascending=False)
            points = ax.scatter(part["x"], part["y"], c=part["class_rank"], cmap=cmap, vmin=0,
                                vmax=top_rank, s=9, alpha=0.8, lw=0)  # fmt: skip
            ax.set_title(f"{name}\nstep {step}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
            if col == 0:
                ax.set_ylabel("principal direction 2")
            if row == len(names) - 1:
                ax.set_xlabel("principal direction 1")
        ax = axes[row, -1]
        values = singular[name]
        n_shown = min(n_values, int(values["index"].max()) + 1)
        colors = plt.get_cmap("tab10")(np.arange(n_shown))
        for i in range(n_shown):
            for matrix, dash in (("W", "-"), ("U", "--")):
                part = values[(values["matrix"] == matrix) & (values["index"] == i)]
                label = f"sigma_{i + 1}({matrix})"
                ax.plot(part["step"], part["value"], ls=dash, color=colors[i], lw=1.5,
                        label=label)  # fmt: skip
        for step in steps:
            ax.axvline(step, color="#999999", ls=":", lw=1)
        _step_axis(ax)
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("singular value")
        ax.set_title(f"{name}: top singular values of W and U", fontsize=9)
        ax.legend(loc="upper left", fontsize=7.5, ncol=2)
    cbar = fig.colorbar(points, ax=axes[:, : len(steps)].ravel().tolist(), shrink=0.8,
                        pad=0.02)  # fmt: skip
    cbar.set_label("class frequency rank (0 = most frequent)")
    fig.suptitle(title or "Toy model: class clusters and singular values over training")
    return fig


# --- post-training geometry and eigen-direction ablation (notebook 08) ---------------------

#: One colour per post-training stage (shaded behind the trajectories).
STAGE_COLORS = {"sft": "#1f77b4", "dpo": "#2ca02c", "rl": "#d62728"}


def _shade_stages(ax, table) -> None:
    """Shade each stage's span on an axis whose x is ``table['position']``."""
    # posttrain imports TRL (seconds); only this plot needs its stage titles
    from ..posttrain import STAGE_TITLES  # noqa: PLC0415

    for stage, part in table.groupby("stage", sort=False):
        lo, hi = part["position"].min(), part["position"].max()
        lo = lo - 0.5 if stage == "sft" else lo - 1  # a stage starts at the previous one's end
        ax.axvspan(lo, hi + 0.5, color=STAGE_COLORS.get(stage, "#cccccc"), alpha=0.08, lw=0)
        ax.text(
            (lo + hi) / 2,
            1.0,
            STAGE_TITLES.get(stage, stage),
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color=STAGE_COLORS.get(stage, "k"),
        )


def plot_posttrain_trajectory(table, panels, *, title: str | None = None,
                              dead_band: float | None = None):  # fmt: skip
    """Measures over every saved checkpoint of the three stages, in training order.

    ``table`` is ``PosttrainMeasurements.trajectory``; ``panels`` is a list of
    ``(axis title, [(column, label), ...])`` or ``(axis title, [(column, label), ...], y-axis
    label with its unit)``. The checkpoints are evenly spaced on the x axis (each stage saves
    on Pythia's log-then-linear schedule); tick labels give the step within the stage, ``0``
    being the base model. ``dead_band`` (e.g. 0.02) shades, over each stage, the band of
    ±``dead_band`` of the first series' value at the stage's start: a stage that ends inside
    it is called 'no clear change'.
    """
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    table = table.sort_values("position")
    x = table["position"].to_numpy()
    steps = table["step"].to_numpy()
    stage_ends = set(table.groupby("stage", sort=False)["position"].max())
    marks = [i for i in range(len(x)) if i == 0 or steps[i] in (16, 64) or x[i] in stage_ends]
    for ax, panel in zip(axes.flat, panels, strict=False):
        panel_title, series = panel[0], panel[1]
        for column, label in series:
            ax.plot(x, table[column], marker=".", ms=4, lw=1.4, label=label)
        if dead_band:
            _shade_dead_band(ax, table, series[0][0], dead_band)
        _shade_stages(ax, table)
        ax.set_title(panel_title, pad=14)
        ax.set_xticks(x[marks], [str(int(steps[i])) for i in marks], fontsize=7)
        ax.set_xlabel("checkpoint (evenly spaced; tick = step in its stage)", fontsize=8)
        if len(panel) > 2:
            ax.set_ylabel(panel[2], fontsize=8)
        if len(series) > 1 or dead_band:
            ax.legend(frameon=False, fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def _shade_dead_band(ax, table, column: str, band: float) -> None:
    """Over each stage, ±``band`` of ``column`` at the stage's start (the previous stage's
    end; SFT: the base model)."""
    start = table.iloc[0]
    first = True
    for _, part in table.groupby("stage", sort=False):
        value = float(start[column])
        lo = part["position"].min() - (0.5 if start is table.iloc[0] else 1)
        hi = part["position"].max() + 0.5
        if value == value:  # not NaN
            half = abs(value) * band
            ax.fill_between([lo, hi], value - half, value + half, color="0.6", alpha=0.35, lw=0,
                            label=f"±{band:.0%} of the stage's start" if first else None)  # fmt: skip
            first = False
        start = part.iloc[-1]


def plot_pass_at_k(
    curves,
    *,
    order=None,
    reference: str | None = None,
    n_labels: int | None = None,
    title: str | None = None,
):
    """pass@k against k (log axis) for each checkpoint of ``PosttrainMeasurements.pass_at_k``
    (in ``order``, default: as listed), and beside it each curve minus the ``reference``
    checkpoint's (default: the first). ``n_labels`` adds the curve of a guesser that names a
    uniformly random label each time, 1 - (1 - 1/n_labels)^k."""
    order = list(order or dict.fromkeys(curves["checkpoint"]))
    reference = reference or order[0]
    if reference not in order:
        raise ValueError(f"reference {reference!r} is not one of the checkpoints {order}")
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    ref = curves[curves["checkpoint"] == reference].set_index("k")["pass_at_k"]
    for i, label in enumerate(order):
        part = curves[curves["checkpoint"] == label].set_index("k")["pass_at_k"]
        color = f"C{i}"
        ax.plot(part.index, part.values, marker="o", ms=3, color=color, label=label)
        ax_d.plot(
            part.index, part.values - ref.loc[part.index].values, marker="o", ms=3, color=color
        )
    n = int(curves["k"].max())
    if n_labels:
        k = np.arange(1, n + 1)
        ax.plot(
            k,
            1 - (1 - 1 / n_labels) ** k,
            color="0.5",
            ls="--",
            lw=1,
            label=f"random label (1 of {n_labels})",
        )
    for a in (ax, ax_d):
        log2_integer_axis(a)
        a.set_xlabel(f"k (of n = {n} samples per prompt)")
    ax.set_ylabel("pass@k (unbiased estimator)")
    ax.legend(frameon=False, fontsize=8)
    ax_d.axhline(0, color="k", lw=0.8)
    ax_d.set_ylabel(f"pass@k minus {reference}")
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig
