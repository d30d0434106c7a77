"""Notebook 01: accuracy before and after fine-tuning, classification reports, confusion
matrices, training curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .style import POST_COLOR, PRE_COLOR


def plot_pre_post_accuracy(table, *, paper=None, metric: str = "accuracy"):
    """Grouped bars: pre-trained vs fine-tuned ``metric`` per task (paper 1, Table 2 as a figure).

    ``table`` has columns ``task``, ``pre_<metric>``, ``post_<metric>``; ``paper`` optionally
    maps a task to the paper's (pre, post) numbers for the task it stands for, drawn as
    hollow markers.
    """
    fig, ax = plt.subplots(figsize=(1.9 * len(table) + 1.5, 3.4))
    x = np.arange(len(table))
    w = 0.36
    pre = ax.bar(x - w / 2, table[f"pre_{metric}"], w, color=PRE_COLOR, label="pre-trained")
    post = ax.bar(x + w / 2, table[f"post_{metric}"], w, color=POST_COLOR, label="fine-tuned")
    ax.bar_label(pre, fmt="%.2f", fontsize=8, padding=-11, color="white")
    ax.bar_label(post, fmt="%.2f", fontsize=8, padding=-11, color="white")
    if paper:
        for i, task in enumerate(table["task"]):
            if task in paper:
                p_pre, p_post = paper[task]
                ax.scatter(
                    [i - w / 2, i + w / 2],
                    [p_pre, p_post],
                    marker="D",
                    s=22,
                    facecolor="white",
                    edgecolor="black",
                    zorder=3,
                    label="paper 1 (bert-base)" if i == 0 else None,
                )
    ax.set_xticks(x, table["task"])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(f"test {metric.replace('_', '-')}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    return fig


def plot_classification_reports(reports: dict, *, title: str = "fine-tuned"):
    """Per-class precision, recall and F1 as heatmaps, one panel per task (paper 1, Fig 6)."""
    fig, axes = plt.subplots(1, len(reports), figsize=(3.6 * len(reports), 2.9), squeeze=False)
    for ax, (task, rep) in zip(axes[0], reports.items(), strict=True):
        data = rep.per_class[["precision", "recall", "f1"]]
        sns.heatmap(
            data,
            annot=True,
            fmt=".2f",
            vmin=0,
            vmax=1,
            cmap="Reds",
            cbar=False,
            ax=ax,
            annot_kws={"fontsize": 8},
        )
        ax.set_title(
            f"{task} ({title})\naccuracy {rep.accuracy:.2f}, macro-F1 {rep.macro_f1:.2f}",
            fontsize=9,
        )
        ax.set_ylabel("")
        ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return fig


def plot_confusion_matrices(reports: dict, *, normalize: bool = True):
    """Confusion matrices (rows = true class), one panel per task; row-normalised by default."""
    fig, axes = plt.subplots(1, len(reports), figsize=(3.6 * len(reports), 3.2), squeeze=False)
    for ax, (task, rep) in zip(axes[0], reports.items(), strict=True):
        m = rep.confusion.astype(float)
        if normalize:
            m = m / m.sum(axis=1, keepdims=True).clip(min=1)
        sns.heatmap(
            m,
            annot=True,
            fmt=".2f" if normalize else "d",
            vmin=0,
            vmax=1 if normalize else None,
            cmap="Blues",
            cbar=False,
            ax=ax,
            xticklabels=rep.label_names,
            yticklabels=rep.label_names,
            annot_kws={"fontsize": 8},
        )
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return fig


def plot_training_curves(histories: dict):
    """Training loss (mean over each logging interval) and validation accuracy against the
    epoch (fractional: evaluations happen within epochs), one line per task."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    for task, h in histories.items():
        a.plot(h["epoch"], h["train_loss"], marker="o", label=task)
        b.plot(h["epoch"], h["val_accuracy"], marker="o", label=task)
    a.set(xlabel="epoch", ylabel="training loss (cross-entropy)")
    b.set(xlabel="epoch", ylabel="validation accuracy")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
