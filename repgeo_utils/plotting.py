"""One figure style for every notebook, and ``save_figure``.

Figures are PNG at a modest DPI so committed notebooks stay small. Each figure is named after
its notebook (``01_finetuning_accuracy.png``); figures of a non-default profile go to
``figures/<profile>/`` so they never overwrite the committed quick-profile ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt

from .config import figures_dir

log = logging.getLogger(__name__)

DPI = 110

#: Colours for pre-trained vs fine-tuned, used by every notebook.
PRE_COLOR = "#7f7f7f"
POST_COLOR = "#d62728"


def use_style() -> None:
    """Apply the project's matplotlib/seaborn style (call once per notebook)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "figure.max_open_warning": 0,
            # deterministic PNG bytes: no creation date in the metadata
            "svg.hashsalt": "repgeo",
        }
    )


def save_figure(fig, name: str, profile: str = "quick") -> Path:
    """Write ``fig`` to ``figures/<name>.png`` (``figures/<profile>/`` for non-quick profiles)."""
    if not name or "/" in name:
        raise ValueError(f"Figure name must be a plain file name, got {name!r}")
    folder = figures_dir() if profile == "quick" else figures_dir() / profile
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, metadata={"Software": None})
    log.info("figure written: %s", path)
    return path


# --- fine-tuning (notebook 01) -------------------------------------------------------------

# --- layer similarity (notebook 02) --------------------------------------------------------


def plot_layer_similarity(
    table, measure: str, *, hue: str = "task", paper: dict | None = None, title: str | None = None
):
    """One similarity measure per layer, one line per ``hue`` value (paper 1, Fig 1).

    ``table``: the tidy output of ``similarity.layer_similarity`` (columns ``layer``,
    ``measure``, ``value``) with a ``hue`` column added. ``paper`` optionally maps a ``hue``
    value to the paper's last-layer number for the task it stands for, drawn as a hollow
    diamond at our last layer.
    """
    from .similarity import MEASURE_LABELS

    rows = table[table["measure"] == measure]
    if rows.empty:
        known = sorted(set(table["measure"]))
        raise ValueError(f"No rows for measure {measure!r}; measures: {known}")
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    last = int(rows["layer"].max())
    for i, (name, group) in enumerate(rows.groupby(hue, sort=False)):
        group = group.sort_values("layer")
        (line,) = ax.plot(group["layer"], group["value"], marker="o", ms=4, label=str(name))
        if paper and name in paper:
            ax.scatter([last], [paper[name]], marker="D", s=40, facecolor="white",
                       edgecolor=line.get_color(), linewidth=1.5, zorder=3,
                       label="paper 1, bert-base layer 12" if i == 0 else None)  # fmt: skip
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
    from .similarity import MEASURE_LABELS

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


# --- SAEs and token pictures (notebooks 03-04) ---------------------------------------------

# --- spectral geometry, pretraining phases, toy model (notebooks 05-07) --------------------
