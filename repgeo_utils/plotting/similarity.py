"""Notebook 02: per-layer similarity of pre-trained and fine-tuned hidden states, and its
path across model sizes."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..similarity import MEASURE_LABELS


def plot_layer_similarity(
    table, measure: str, *, hue: str = "task", paper: dict | None = None, title: str | None = None
):
    """One similarity measure per layer, one line per ``hue`` value (paper 1, Fig 1).

    ``table``: the tidy output of ``similarity.layer_similarity`` (columns ``layer``,
    ``measure``, ``value``) with a ``hue`` column added. ``paper`` optionally maps a ``hue``
    value to the paper's last-layer number for the task it stands for, drawn as a hollow
    diamond at our last layer.
    """
    rows = table[table["measure"] == measure]
    if rows.empty:
        known = sorted(set(table["measure"]))
        raise ValueError(f"No rows for measure {measure!r}; measures: {known}")
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    last = int(rows["layer"].max())
    marked = False
    for name, group in rows.groupby(hue, sort=False):
        group = group.sort_values("layer")
        (line,) = ax.plot(group["layer"], group["value"], marker="o", ms=4, label=str(name))
        if paper and name in paper:
            ax.scatter([last], [paper[name]], marker="D", s=40, facecolor="white",
                       edgecolor=line.get_color(), linewidth=1.5, zorder=3)  # fmt: skip
            marked = True
    if marked:  # one legend entry for all the paper's marks, after the lines
        ax.scatter([], [], marker="D", s=40, facecolor="white", edgecolor="0.3",
                   label="paper 1, bert-base, layer 12")  # fmt: skip
    low = min(0.0, float(rows["value"].min()) - 0.05)
    ax.set_ylim(low, 1.03)
    ax.set_xticks(range(last + 1))
    ax.set_xlabel("layer (hidden_states index, 0 = embeddings)")
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.set_title(title or f"pre-trained vs fine-tuned: {MEASURE_LABELS.get(measure, measure)}")
    ax.legend(fontsize=8, frameon=True, loc="lower left")
    return fig


def plot_similarity_by_size(
    table, measure: str, *, panel: str = "task", hue: str = "model", title: str | None = None
):
    """One measure against relative depth, one line per model size and one panel per task
    (paper 1, Fig 2). ``table`` needs ``relative_depth``, ``measure``, ``value``, ``panel``
    and ``hue`` columns."""
    rows = table[table["measure"] == measure]
    panels = list(dict.fromkeys(rows[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], panels, strict=True):
        for model, group in rows[rows[panel] == name].groupby(hue, sort=False):
            group = group.sort_values("relative_depth")
            ax.plot(group["relative_depth"], group["value"], marker="o", ms=3, label=str(model))
        ax.set_title(str(name))
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_xlim(-0.03, 1.03)
    axes[0][0].set_ylabel(MEASURE_LABELS.get(measure, measure))
    axes[0][0].set_ylim(min(0.0, float(rows["value"].min()) - 0.05), 1.03)
    axes[0][-1].legend(fontsize=8, frameon=True, loc="lower left", title=hue)
    fig.suptitle(title or f"by model size: {MEASURE_LABELS.get(measure, measure)}", y=1.02)
    return fig
