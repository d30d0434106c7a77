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


#: Longest class name written in full on a confusion matrix's axes; longer ones are cut.
MAX_CLASS_NAME = 10


def short_class_name(name: str, limit: int = MAX_CLASS_NAME) -> str:
    """``name`` cut to ``limit`` characters with a trailing '.' ("entertainment" ->
    "entertain."), as it is when it fits."""
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "."


def plot_confusion_matrices(reports: dict, *, normalize: bool = True):
    """Confusion matrices (rows = true class, columns = predicted class), one panel per task.

    With ``normalize`` (the default) each row is divided by its sum: a cell is the share of the
    true class's test examples predicted as the column's class, so the diagonal is each class's
    recall and a row sums to 1. Otherwise cells are counts. Class names longer than
    ``MAX_CLASS_NAME`` characters are cut; the colour scale and what it means are on a shared
    colour bar.
    """
    if not reports:
        raise ValueError("reports is empty: pass {task name: EvalReport}")
    sizes = [len(rep.label_names) for rep in reports.values()]
    side = max(2.6, 0.62 * max(sizes) + 1.2)  # inches per panel: room for the cell numbers
    fig, axes = plt.subplots(
        1, len(reports), figsize=(side * len(reports) + 1.2, side + 0.9), squeeze=False
    )
    vmax = 1.0 if normalize else max(float(rep.confusion.max()) for rep in reports.values())
    for ax, (task, rep) in zip(axes[0], reports.items(), strict=True):
        m = rep.confusion.astype(float)
        if normalize:
            m = m / m.sum(axis=1, keepdims=True).clip(min=1)
        names = [short_class_name(n) for n in rep.label_names]
        sns.heatmap(
            m,
            annot=True,
            fmt=".2f" if normalize else ".0f",
            vmin=0,
            vmax=vmax,
            cmap="Blues",
            cbar=False,
            square=True,
            ax=ax,
            xticklabels=names,
            yticklabels=names,
            annot_kws={"fontsize": 9},
        )
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("predicted class", fontsize=10)
        ax.set_ylabel("true class", fontsize=10)
        ax.tick_params(axis="both", labelsize=9)
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
        plt.setp(ax.get_yticklabels(), rotation=0)
    what = (
        "share of the true class's examples\n(rows sum to 1; diagonal = recall)"
        if normalize
        else "test examples"
    )
    fig.suptitle(
        "Confusion matrices, rows normalised by the true class (diagonal = recall per class)"
        if normalize
        else "Confusion matrices (counts of test examples)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.915, 0.25, 0.015, 0.55))
    bar = fig.colorbar(axes[0][0].collections[0], cax=cax)
    bar.set_label(what, fontsize=9)
    bar.ax.tick_params(labelsize=9)
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
