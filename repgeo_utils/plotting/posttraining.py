"""Notebook 08's recorded standard run: post-training changes over seeds against the 2% band,
pass@k over seeds with the random-guess reference, and SFT from successive pretraining
checkpoints (paper 2, Fig 6B)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .style import log2_integer_axis
from .training import PHASE_COLORS

_STAGE_ORDER = ("SFT", "DPO", "RL (GRPO)")


def plot_seed_changes(
    changes: pd.DataFrame,
    measures: Sequence[tuple[str, str]],
    *,
    dead_band: float = 0.02,
    title: str | None = None,
):
    """Relative change (% of the stage's start) of each measure per stage: one dot per seed,
    the mean with its sample-sd error bar, and the ±``dead_band`` band inside which a single
    run calls a change 'no clear change'. SFT and DPO are shared by the RL variants and drawn
    once; RL is drawn per variant. ``changes``: ``posttrain_changes.csv``; ``measures``: list
    of (column, axis title)."""
    need = {"stage", "measure", "relative", "variant", "seed"}
    if need - set(changes.columns):
        raise ValueError(f"changes lacks {sorted(need - set(changes.columns))}")
    variants = list(dict.fromkeys(changes["variant"]))
    groups = [(s, variants[0]) for s in _STAGE_ORDER[:2]] + [("RL (GRPO)", v) for v in variants]
    labels = [s if s != "RL (GRPO)" else f"RL\n{v}" for s, v in groups]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.4 * len(measures), 3.4), squeeze=False)
    for ax, (column, panel) in zip(axes[0], measures, strict=True):
        ax.axhspan(-100 * dead_band, 100 * dead_band, color="0.85", lw=0,
                   label=f"±{dead_band:.0%} band (single run: no clear change)")  # fmt: skip
        ax.axhline(0, color="0.4", lw=0.8)
        for i, (stage, variant) in enumerate(groups):
            rows = changes[(changes["stage"] == stage) & (changes["variant"] == variant)
                           & (changes["measure"] == column)]  # fmt: skip
            values = 100 * rows["relative"].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if not len(values):
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
                continue
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.plot(i + np.asarray(jitter), values, "o", ms=4, color="C0", alpha=0.6,
                    label="one seed" if i == 0 else None)  # fmt: skip
            sd = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.errorbar(i + 0.3, values.mean(), yerr=sd, fmt="s", color="k", ms=5, capsize=3,
                        label="mean ± sd over seeds" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.3)
        ax.set_title(panel, fontsize=10)
        ax.set_ylabel("change over the stage (% of its start)", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=3, frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 1.0))  # fmt: skip
    fig.suptitle(title or "", y=1.08)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


def plot_pass_at_k_seeds(
    curves: pd.DataFrame,
    *,
    order: Sequence[str] | None = None,
    title: str | None = None,
):
    """pass@k against k (log axis), one panel per RL variant: the mean over seeds per
    checkpoint with the seeds' min-max band, and the random-guess reference (the rows of
    ``pass_at_k.csv`` whose checkpoint is ``random guess``) dashed."""
    reference = curves[curves["checkpoint"] == "random guess"].sort_values("k")
    if reference.empty:
        raise ValueError("curves hold no 'random guess' rows: the reference cannot be drawn")
    runs = curves[curves["checkpoint"] != "random guess"]
    variants = list(dict.fromkeys(runs["variant"]))
    order = list(order or dict.fromkeys(runs["checkpoint"]))
    fig, axes = plt.subplots(1, len(variants), figsize=(5.0 * len(variants), 3.7), squeeze=False,
                             sharey=True)  # fmt: skip
    n = int(runs["k"].max())
    for ax, variant in zip(axes[0], variants, strict=True):
        for i, checkpoint in enumerate(order):
            part = runs[(runs["variant"] == variant) & (runs["checkpoint"] == checkpoint)]
            if part.empty:
                continue
            g = part.groupby("k")["pass_at_k"]
            mean, lo, hi = g.mean(), g.min(), g.max()
            ax.plot(mean.index, mean.values, color=f"C{i}", lw=1.6, label=checkpoint)
            ax.fill_between(mean.index, lo.values, hi.values, color=f"C{i}", alpha=0.15, lw=0)
        ax.plot(reference["k"], reference["pass_at_k"], color="k", ls="--", lw=1,
                label="random guess")  # fmt: skip
        log2_integer_axis(ax)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"k (of n = {n} samples per prompt)")
        ax.set_title(f"GRPO {variant}", fontsize=10)
    axes[0][0].set_ylabel("pass@k (mean over seeds; band: min-max)")
    axes[0][-1].legend(frameon=False, fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def plot_checkpoint_sft(table: pd.DataFrame, *, title: str | None = None):
    """SFT from successive pretraining checkpoints (paper 2, Fig 6B): ID and OOD answer NLL
    of each base before SFT (dashed) and after it (solid) against the base's pretraining step
    (symlog axis, points coloured by the base's phase), and the after-SFT NLL against the
    base's RankMe and alpha-ReQ. ``table``: ``checkpoint_sft.csv``."""
    need = {"step", "id_nll", "ood_nll", "id_nll_base", "ood_nll_base", "rankme_covariance",
            "alpha", "phase"}  # fmt: skip
    if need - set(table.columns):
        raise ValueError(f"checkpoint SFT table lacks {sorted(need - set(table.columns))}")
    rows = table.sort_values("step")
    colors = [PHASE_COLORS.get(p, "#999999") for p in rows["phase"]]
    styles = {"id_nll": ("C0", "ID"), "ood_nll": ("C3", "OOD")}
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.7))
    ax = axes[0]
    for column, (color, name) in styles.items():
        ax.plot(rows["step"], rows[column], "-", color=color, lw=1.6, label=f"{name}, after SFT")
        ax.plot(rows["step"], rows[f"{column}_base"], "--", color=color, lw=1,
                label=f"{name}, base before SFT")  # fmt: skip
        ax.scatter(rows["step"], rows[column], c=colors, edgecolor=color, s=40, zorder=3)
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_xlabel("pretraining step of the base")
    ax.set_ylabel("answer NLL (nats per answer)")
    ax.legend(frameon=False, fontsize=7)
    for ax, (column, name) in zip(axes[1:], (("rankme_covariance", "RankMe (covariance) of the base"),
                                             ("alpha", "alpha-ReQ of the base")), strict=True):  # fmt: skip
        finite = rows[np.isfinite(rows[column].astype(float))]
        if finite.empty:
            ax.text(0.5, 0.5, f"{name}: not measured", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")  # fmt: skip
        for out, (color, label) in styles.items():
            ax.scatter(finite[column], finite[out], c=[PHASE_COLORS.get(p, "#999999")
                                                       for p in finite["phase"]],
                       edgecolor=color, s=40, label=f"{label}, after SFT")  # fmt: skip
        ax.set_xlabel(name)
        ax.set_ylabel("answer NLL after SFT (nats)")
    for phase in dict.fromkeys(rows["phase"]):
        axes[2].scatter([], [], color=PHASE_COLORS.get(phase, "#999999"), label=f"base: {phase}")
    axes[2].legend(frameon=False, fontsize=7)
    fig.suptitle(title or "SFT from successive pretraining checkpoints (paper 2, Fig 6B)", y=1.02)
    fig.tight_layout()
    return fig
