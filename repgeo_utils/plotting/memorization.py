"""Notebook 09: distributional memorization and downstream accuracy over pretraining
checkpoints, on the same step axis and phase shading as notebook 06's RankMe trajectories."""

from __future__ import annotations

import matplotlib.pyplot as plt

from .training import PHASE_COLORS, _step_axis

SPLIT_COLORS = {"held-out": "#1f77b4", "training": "#d62728"}


def _shade(ax, phases) -> None:
    if phases is None:
        return
    for phase in phases.phases:
        ax.axvspan(phase.start_step, phase.end_step, alpha=0.3, lw=0,
                   color=PHASE_COLORS.get(phase.name, "#eeeeee"), label=phase.name)  # fmt: skip


def _need(table, columns) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")


def plot_memorization(trajectory, phases=None, *, title: str | None = None):
    """Left: Spearman correlation between the LM's probability of each next token and the
    infini-gram estimate, per checkpoint, for held-out and training text (bars: the jackknife
    spread over sequences). Right: RankMe (covariance) of the same checkpoints. ``phases`` (a
    ``spectral.PhaseSegmentation`` of RankMe) shades both. Returns the figure."""
    _need(trajectory, ("split", "step", "spearman", "spearman_spread", "rankme_covariance"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax in axes:
        _shade(ax, phases)
    for split, part in trajectory.sort_values("step").groupby("split"):
        axes[0].errorbar(part["step"], part["spearman"], yerr=part["spearman_spread"], marker="o",
                         ms=3, capsize=2, color=SPLIT_COLORS.get(str(split)), label=f"{split} text")  # fmt: skip
    axes[0].set_ylabel("Spearman rho: LM vs infini-gram")
    axes[0].set_title("distributional memorization", fontsize=10)
    geo = trajectory.drop_duplicates("step").sort_values("step")
    axes[1].plot(geo["step"], geo["rankme_covariance"], marker="o", ms=3, color="#333333")
    axes[1].set_ylabel("RankMe (covariance), final layer")
    axes[1].set_title("representation geometry", fontsize=10)
    for ax in axes:
        _step_axis(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[0].legend(unique.values(), unique.keys(), fontsize=7, loc="best", frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_downstream(downstream, phases=None, *, title: str | None = None):
    """One panel per task: linear-probe accuracy (last-token, final layer) and few-shot
    accuracy per checkpoint, with the majority-class rate as a dashed line; ``phases`` shades
    the RankMe phases. Returns the figure."""
    _need(downstream, ("task", "step", "probe_accuracy", "chance"))
    tasks = sorted(downstream["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = downstream[downstream["task"] == task].sort_values("step")
        _shade(ax, phases)
        ax.plot(part["step"], part["probe_accuracy"], marker="o", ms=3, color="#333333",
                label="linear probe")  # fmt: skip
        if "few_shot_accuracy" in part.columns and part["few_shot_accuracy"].notna().any():
            ax.plot(part["step"], part["few_shot_accuracy"], marker="s", ms=3, color="#8c564b",
                    ls=":", label="few-shot (answer likelihood)")  # fmt: skip
        ax.axhline(float(part["chance"].iloc[0]), color="#777777", ls="--", lw=1,
                   label="majority class")  # fmt: skip
        ax.set_ylabel("test accuracy")
        ax.set_title(task, fontsize=10)
        _step_axis(ax)
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[0][0].legend(unique.values(), unique.keys(), fontsize=7, loc="best", frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
