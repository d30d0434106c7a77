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


def plot_pre_post_accuracy(table, *, paper=None, metric: str = "accuracy"):
    """Grouped bars: pre-trained vs fine-tuned ``metric`` per task (paper 1, Table 2 as a figure).

    ``table`` has columns ``task``, ``pre_<metric>``, ``post_<metric>``; ``paper`` optionally
    maps a task to the paper's (pre, post) numbers for the task it stands for, drawn as
    hollow markers.
    """
    import numpy as np

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
    import seaborn as sns

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
    import seaborn as sns

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
    """Training loss and validation accuracy per epoch, one line per task."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    for task, h in histories.items():
        a.plot(h["epoch"], h["train_loss"], marker="o", label=task)
        b.plot(h["epoch"], h["val_accuracy"], marker="o", label=task)
    a.set(xlabel="epoch", ylabel="training loss (cross-entropy)")
    b.set(xlabel="epoch", ylabel="validation accuracy")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def plot_sae_training(histories: dict, *, smooth: int = 25):
    """SAE training curves: reconstruction MSE (in the SAE's training units) and active
    latents per token (L0) against step, one line per run; ``histories`` maps a label to a
    ``sae.TrainHistory``. Curves are running means over ``smooth`` steps."""
    import numpy as np

    def running_mean(values):
        values = np.asarray(values, dtype=float)
        if len(values) < smooth or smooth <= 1:
            return np.arange(len(values)), values
        kernel = np.ones(smooth) / smooth
        return np.arange(smooth - 1, len(values)), np.convolve(values, kernel, mode="valid")

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.1))
    for label, history in histories.items():
        (line,) = a.plot(*running_mean(history.step_mse), lw=1.2, label=str(label))
        if history.step_l0 and not np.all(np.isnan(history.step_l0)):
            b.plot(*running_mean(history.step_l0), lw=1.2, color=line.get_color())
    a.set(xlabel="step", ylabel="MSE (scaled inputs ~ FVU)", yscale="log")
    b.set(xlabel="step", ylabel="active latents a token (L0)", yscale="log")
    a.legend(fontsize=7, frameon=True)
    fig.tight_layout()
    return fig


def plot_latent_density(frequencies: dict, *, dense_threshold: float = 0.1, bins: int = 40):
    """Histogram of log10 latent firing frequency, one step-line per SAE (``frequencies`` maps a
    label to per-latent frequencies); dead latents (never fire) are counted in the legend and
    the dense threshold is marked."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.4, 3.2))
    alive_all = [np.asarray(f)[np.asarray(f) > 0] for f in frequencies.values()]
    low = min((np.log10(f).min() for f in alive_all if len(f)), default=-4.0)
    edges = np.linspace(np.floor(low), 0.0, bins + 1)
    for (label, freq), alive in zip(frequencies.items(), alive_all, strict=True):
        dead = int((np.asarray(freq) == 0).sum())
        ax.hist(
            np.log10(alive), bins=edges, histtype="step", lw=1.3, label=f"{label} (dead: {dead})"
        )
    ax.axvline(np.log10(dense_threshold), color="k", ls="--", lw=0.8)
    ax.text(np.log10(dense_threshold), ax.get_ylim()[1] * 0.95, " dense", fontsize=8, va="top")
    ax.set(xlabel="log10 firing frequency (share of tokens)", ylabel="latents")
    ax.legend(fontsize=7, frameon=True)
    return fig


def plot_feature_matching(table, *, threshold: float | None = None, title: str | None = None):
    """How many fine-tuned features keep a pre-trained twin, per layer (one line per task),
    and the matched decoder cosines per layer (boxes, tasks side by side).

    ``table``: one row per matched fine-tuned feature with columns ``task``, ``layer`` and
    ``cosine`` (from ``sae.match_features``); ``threshold`` is the cosine that counts as a twin.
    """
    import numpy as np

    tasks = list(dict.fromkeys(table["task"]))
    layers = sorted(set(table["layer"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(tasks), 1)
    for i, task in enumerate(tasks):
        rows = table[table["task"] == task]
        cosines = [rows.loc[rows["layer"] == layer, "cosine"].to_numpy() for layer in layers]
        color = colors[i % len(colors)]
        if threshold is not None:
            share = [float((c >= threshold).mean()) if len(c) else np.nan for c in cosines]
            a.plot(range(len(layers)), share, marker="o", color=color, label=str(task))
        positions = np.arange(len(layers)) + (i - (len(tasks) - 1) / 2) * width
        parts = b.boxplot(
            cosines,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
            manage_ticks=False,
        )
        for box in parts["boxes"]:
            box.set(facecolor=color, alpha=0.5, edgecolor=color)
        for median in parts["medians"]:
            median.set(color="k")
    for ax in (a, b):
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("layer")
    a.set_ylabel(f"share with a twin (cosine >= {threshold})" if threshold else "share")
    a.set_ylim(-0.03, 1.03)
    a.legend(fontsize=8, frameon=True)
    b.set_ylabel("decoder cosine with the matched\npre-trained feature")
    if threshold is not None:
        b.axhline(threshold, color="k", ls="--", lw=0.8)
    fig.suptitle(title or "fine-tuned SAE features vs pre-trained ones", y=1.02)
    fig.tight_layout()
    return fig


def plot_token_strips(rows, *, vmax: float | None = None, title: str | None = None):
    """Token-level activations as coloured strips (paper 1, Figs 3-5): one strip per row, each
    token a cell shaded by its activation and labelled with its text.

    ``rows``: a list of ``(label, tokens, values)``; strips of one call share a colour scale
    (``vmax``, default the largest value), so a pre-trained and a fine-tuned strip of the same
    sentence can be compared cell by cell.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    if not rows:
        raise ValueError("rows is empty: nothing to draw.")
    peak = vmax or max((float(np.max(v)) for _, _, v in rows if len(v)), default=1.0) or 1.0
    norm, cmap = Normalize(0.0, peak), colormaps["Reds"]
    widths = [[max(len(t), 3) * 0.11 + 0.2 for t in tokens] for _, tokens, _ in rows]
    fig_width = min(max(max(sum(w) for w in widths) + 2.2, 5.0), 16.0)
    fig, ax = plt.subplots(figsize=(fig_width, 0.55 * len(rows) + 0.6))
    for r, ((label, tokens, values), cell_widths) in enumerate(zip(rows, widths, strict=True)):
        y, x = len(rows) - 1 - r, 0.0
        ax.text(-0.15, y + 0.4, str(label), ha="right", va="center", fontsize=8)
        for token, value, w in zip(tokens, values, cell_widths, strict=True):
            shade = cmap(norm(max(float(value), 0.0)))
            ax.add_patch(plt.Rectangle((x, y), w, 0.8, facecolor=shade, edgecolor="white"))
            dark = norm(max(float(value), 0.0)) > 0.6
            ax.text(
                x + w / 2,
                y + 0.4,
                token,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
            x += w
    ax.set_xlim(-0.05, max(sum(w) for w in widths) + 0.05)
    ax.set_ylim(-0.1, len(rows))
    ax.axis("off")
    fig.colorbar(
        plt.cm.ScalarMappable(norm=norm, cmap=cmap),
        ax=ax,
        fraction=0.02,
        pad=0.01,
        label="feature activation",
    )
    if title:
        ax.set_title(title, fontsize=10)
    return fig


#: Line colour per depth of the SAE grid (early, middle, late layer).
DEPTH_COLORS = {"early": "#1f77b4", "middle": "#ff7f0e", "late": "#2ca02c"}


def _running_mean(values, smooth: int):
    import numpy as np

    values = np.asarray(values, dtype=float)
    if smooth <= 1 or len(values) < smooth:
        return np.arange(len(values)), values
    kernel = np.ones(smooth) / smooth
    return np.arange(smooth - 1, len(values)), np.convolve(values, kernel, mode="valid")


def plot_sae_training_grid(histories: dict, *, smooth: int = 10):
    """Training curves of a task x depth x model SAE grid: one row per task, MSE (scaled inputs,
    so about the FVU) and active latents a token (L0) against step; colour = depth, solid =
    fine-tuned, dashed = pre-trained. ``histories`` maps ``(task, depth, model)`` to a
    ``sae.TrainHistory``; curves are running means over ``smooth`` steps."""
    tasks = list(dict.fromkeys(k[0] for k in histories))
    fig, axes = plt.subplots(
        len(tasks), 2, figsize=(8.6, 2.3 * len(tasks) + 0.4), squeeze=False, sharex="row"
    )
    for row, task in enumerate(tasks):
        a, b = axes[row]
        for (t, depth, model), h in histories.items():
            if t != task:
                continue
            style = dict(
                color=DEPTH_COLORS.get(depth),
                ls="-" if model == "fine-tuned" else "--",
                lw=1.2,
                label=f"{depth}, {model}",
            )
            for ax, values in ((a, h.step_mse), (b, h.step_l0)):
                x, y = _running_mean(values, smooth)
                every = max(1, len(x) // 120)  # at most ~120 points a line: small PNGs
                ax.plot(x[::every], y[::every], **style)
        a.set(ylabel=f"{task}\nMSE (~FVU)", yscale="log")
        b.set(ylabel="L0 (active latents)", yscale="log")
    axes[-1][0].set_xlabel("step")
    axes[-1][1].set_xlabel("step")
    axes[0][1].legend(fontsize=7, frameon=True, ncol=2)
    fig.tight_layout()
    return fig


def plot_latent_density_grid(frequencies: dict, *, dense_threshold: float = 0.1, bins: int = 30):
    """Latent firing-frequency histograms of an SAE grid: rows = tasks, columns = depths,
    pre-trained (grey) against fine-tuned (red). ``frequencies`` maps ``(task, depth, model)``
    to per-latent firing frequencies; dead latents (frequency 0) are counted in the legend."""
    import numpy as np

    tasks = list(dict.fromkeys(k[0] for k in frequencies))
    depths = list(dict.fromkeys(k[1] for k in frequencies))
    alive = [np.asarray(f)[np.asarray(f) > 0] for f in frequencies.values()]
    low = min((np.log10(f).min() for f in alive if len(f)), default=-4.0)
    edges = np.linspace(np.floor(low), 0.0, bins + 1)
    fig, axes = plt.subplots(
        len(tasks), len(depths), figsize=(3.0 * len(depths) + 0.6, 2.2 * len(tasks) + 0.5),
        squeeze=False, sharex=True,
    )  # fmt: skip
    for (task, depth, model), freq in frequencies.items():
        ax = axes[tasks.index(task)][depths.index(depth)]
        freq = np.asarray(freq)
        color = POST_COLOR if model == "fine-tuned" else PRE_COLOR
        dead = int((freq == 0).sum())
        ax.hist(np.log10(freq[freq > 0]), bins=edges, histtype="step", lw=1.4, color=color,
                label=f"{model} (dead {dead})")  # fmt: skip
        ax.axvline(np.log10(dense_threshold), color="k", ls="--", lw=0.7)
        ax.set_title(f"{task}, {depth}", fontsize=9)
        ax.legend(fontsize=7, frameon=True, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("log10 firing frequency")
    for row in axes:
        row[0].set_ylabel("latents")
    fig.tight_layout()
    return fig


def plot_feature_matching_with_control(
    table, control=None, *, threshold: float = 0.7, title: str | None = None
):
    """:func:`plot_feature_matching` plus, as dashed lines of the same colour, the share for a
    control (``control``: the same columns, e.g. a pre-trained SAE matched to a pre-trained SAE
    of another seed: the share that SAE training noise alone leaves)."""
    fig = plot_feature_matching(table, threshold=threshold, title=title)
    if control is None or len(control) == 0:
        return fig
    ax = fig.axes[0]
    tasks = list(dict.fromkeys(table["task"]))
    layers = sorted(set(table["layer"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, task in enumerate(tasks):
        rows = control[control["task"] == task]
        if rows.empty:
            continue
        share = [
            float((rows.loc[rows["layer"] == layer, "cosine"] >= threshold).mean())
            for layer in layers
        ]
        ax.plot(range(len(layers)), share, ls="--", marker="x", lw=1, color=colors[i % len(colors)],
                label="same model, other SAE seed" if i == 0 else None)  # fmt: skip
    ax.legend(fontsize=7, frameon=True)
    return fig


def plot_sae_settings(curves: dict, l0: dict | None = None, *, points: int = 40, title=None):
    """Training curves of SAE settings on the same data against epochs (so runs with different
    batch sizes line up), one line per setting: training FVU and, with ``l0``, active latents a
    token. ``curves`` maps a label to ``(epochs, fvu)`` per step and ``l0`` a label to L0 per
    step (``sae_experiments.compare_settings(...)``: ``.curves``, ``.l0``); each curve is a
    running mean over 1/``points`` of its steps."""
    fig, axes = plt.subplots(1, 2 if l0 else 1, figsize=(10.5 if l0 else 5.8, 3.3), squeeze=False)
    a = axes[0][0]
    for label, (epochs, fvu) in curves.items():
        window = max(1, len(fvu) // points)
        steps, y = _running_mean(fvu, window)
        (line,) = a.plot(epochs[steps], y, lw=1.3, label=str(label))
        if l0 and label in l0:
            steps, y = _running_mean(l0[label], window)
            axes[0][1].plot(epochs[steps], y, lw=1.3, color=line.get_color())
    a.set(xlabel="epoch", ylabel="training FVU (running mean)", yscale="log")
    a.legend(fontsize=7, frameon=True)
    if l0:
        axes[0][1].set(xlabel="epoch", ylabel="active latents a token (L0)", yscale="log")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_token_strip_pairs(left, right, *, titles=("pre-trained", "fine-tuned"), title=None):
    """Token strips of two models side by side (paper 1, Figs 3-5, panels A/B): ``left`` and
    ``right`` are lists of ``(label, tokens, values)`` with values already on a 0-1 scale (e.g.
    divided by each feature's maximum over the data set), one strip per row."""
    import numpy as np
    from matplotlib import colormaps

    cmap = colormaps["Reds"]
    panels = [p for p in (left, right) if p]
    if not panels:
        raise ValueError("Nothing to draw: both sides are empty.")

    def widths(rows):
        return [[max(len(t), 3) * 0.105 + 0.18 for t in tokens] for _, tokens, _ in rows]

    span = max(sum(w) for rows in panels for w in widths(rows))
    n_rows = max(len(rows) for rows in panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(min(2 * span + 3.5, 18), 0.42 * n_rows + 0.8), squeeze=False
    )
    for ax, rows, name in zip(axes[0], panels, titles, strict=False):
        for r, ((label, tokens, values), cell) in enumerate(zip(rows, widths(rows), strict=True)):
            y, x = n_rows - 1 - r, 0.0
            ax.text(-0.1, y + 0.4, str(label), ha="right", va="center", fontsize=7)
            for token, value, w in zip(tokens, values, cell, strict=True):
                v = float(np.clip(value, 0.0, 1.0))
                ax.add_patch(plt.Rectangle((x, y), w, 0.8, facecolor=cmap(v), edgecolor="white"))
                ax.text(x + w / 2, y + 0.4, token, ha="center", va="center", fontsize=6.5,
                        color="white" if v > 0.6 else "black")  # fmt: skip
                x += w
        ax.set_xlim(-0.05, span + 0.05)
        ax.set_ylim(-0.1, n_rows)
        ax.axis("off")
        ax.set_title(name, fontsize=9)
    fig.colorbar(
        plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap=cmap), ax=list(axes[0]),
        fraction=0.015, pad=0.01, label="activation / feature's max on the data",
    )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --- spectral geometry, pretraining phases, toy model (notebooks 05-07) --------------------

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

#: Axis labels of the per-layer spectral metrics (``spectral.layer_spectra`` columns).
SPECTRAL_METRIC_LABELS = {
    "rankme_covariance": "RankMe (covariance eigenvalues)",
    "rankme_singular": "RankMe (singular values)",
    "alpha": "alpha-ReQ",
}
#: Line colours of the two models compared per layer.
MODEL_COLORS = {"pre-trained": PRE_COLOR, "fine-tuned": POST_COLOR}


def plot_eigenspectra(spectra: dict, fits: dict | None = None, *, colors=None, title=None, ax=None):
    """Eigenvalues as fractions of the total variance against their rank, log-log.

    ``spectra`` maps a label to a descending spectrum; ``fits`` (optional) maps the same
    labels to ``spectral.AlphaReqFit``s, each drawn as a black dashed line over its fit range
    only, with alpha in the legend; the first fit's range is shaded. Zeros and the round-off
    of zeros (below 1e-13 of the largest) cannot go on a log axis and are left out, so a
    rank-k spectrum simply ends at rank k. ``colors`` optionally maps labels to colours.
    Returns the figure.
    """
    import numpy as np

    if not spectra:
        raise ValueError("spectra is empty: pass {label: eigenvalues}")
    fits, colors = fits or {}, colors or {}
    fig, ax = plt.subplots(figsize=(5.0, 3.6)) if ax is None else (ax.figure, ax)
    shaded = fit_drawn = False
    for label, eigenvalues in spectra.items():
        lam = np.asarray(eigenvalues, dtype=float)
        fraction = lam / lam.sum()
        ranks = np.arange(1, lam.size + 1)
        keep = fraction > 1e-13 * fraction.max()
        fit = fits.get(label)
        name = str(label) if fit is None else f"{label}: alpha = {fit.alpha:.2f}"
        ax.plot(ranks[keep], fraction[keep], lw=1.6, color=colors.get(label), label=name)
        if fit is None:
            continue
        first, last = fit.fit_range
        if not shaded:
            ax.axvspan(first, last, color="#e6e6e6", lw=0, zorder=0,
                       label=f"alpha fit range (ranks {first}-{last})")  # fmt: skip
            shaded = True
        r = np.geomspace(first, last, 50)
        ax.plot(r, fit.fraction_of_variance(r), color="black", ls="--", lw=1.3,
                label=None if fit_drawn else "power-law fit")  # fmt: skip
        fit_drawn = True
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="lambda_r / sum of eigenvalues")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(
        range(len(labels)), key=lambda i: labels[i].startswith(("alpha fit", "power-law"))
    )
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, frameon=True,
              loc="upper left", bbox_to_anchor=(1.02, 1.0))  # fmt: skip
    if title:
        ax.set_title(title)
    return fig


def plot_layer_spectra(
    table,
    metrics=("rankme_covariance", "rankme_singular", "alpha"),
    *,
    panel: str = "task",
    fit_range: tuple[int, int] = (12, 100),
    title: str | None = None,
):
    """Spectral metrics per layer, pre-trained vs fine-tuned: a row of panels per metric and a
    column per ``panel`` value (a task).

    ``table``: rows of ``spectral.layer_spectra`` with a ``model`` column (``"pre-trained"``,
    ``"fine-tuned"``: grey and red) and a ``panel`` column; each ``representation`` in it gets
    its own line style. ``fit_range`` labels the alpha axis. Returns the figure.
    """
    missing = [c for c in ("layer", "model", "representation", panel, *metrics)
               if c not in table.columns]  # fmt: skip
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    panels = list(dict.fromkeys(table[panel]))
    representations = list(dict.fromkeys(table["representation"]))
    dashes = dict(zip(representations, ["-", "--", ":", "-."], strict=False))
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(3.4 * len(panels), 2.5 * len(metrics)),
                             sharex=True, sharey="row", squeeze=False)  # fmt: skip
    for col, name in enumerate(panels):
        rows = table[table[panel] == name]
        for (model, representation), group in rows.groupby(["model", "representation"], sort=False):
            group = group.sort_values("layer")
            for ax, metric in zip(axes[:, col], metrics, strict=True):
                ax.plot(group["layer"], group[metric], marker="o", ms=3, lw=1.5,
                        ls=dashes.get(representation, "-"), color=MODEL_COLORS.get(model),
                        label=f"{model}, {representation}")  # fmt: skip
        axes[0, col].set_title(str(name))
        axes[-1, col].set_xlabel("layer (0 = embeddings)")
        axes[-1, col].set_xticks(sorted(set(table["layer"])))
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        label = SPECTRAL_METRIC_LABELS.get(metric, metric)
        if metric == "alpha":
            label += f"\n(ranks {fit_range[0]}-{fit_range[1]})"
        ax.set_ylabel(label, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), frameon=False,
               bbox_to_anchor=(0.5, 1.0))  # fmt: skip
    fig.suptitle(title or "spectral geometry per layer, pre-trained vs fine-tuned", y=1.04)
    fig.tight_layout()
    return fig


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
    ``spectral.PhaseSegmentation`` of the first metric's trajectory) shades each stretch in
    every panel. Returns the figure.
    """
    missing = [m for m in ("step", "layer", *metrics) if m not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    layer = int(table["layer"].max()) if layer is None else layer
    rows = table[table["layer"] == layer].sort_values("step")
    if rows.empty:
        raise ValueError(f"no rows for layer {layer}; layers: {sorted(table['layer'].unique())}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        if phases is not None:
            for phase in phases.phases:
                ax.axvspan(
                    phase.start_step,
                    phase.end_step,
                    alpha=0.35,
                    lw=0,
                    color=PHASE_COLORS.get(phase.name, "#eeeeee"),
                    label=phase.name,
                )
        ax.plot(rows["step"], rows[metric], marker="o", ms=3, color="#333333")
        ax.set_ylabel(TRAJECTORY_LABELS.get(metric, metric))
        _step_axis(ax)
    if phases is not None and phases.phases:
        handles, labels = axes[0][0].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axes[0][0].legend(unique.values(), unique.keys(), loc="best")
    fig.suptitle(title or f"last-token representations, hidden_states[{layer}]")
    fig.tight_layout()
    return fig


def plot_layer_trajectories(table, metric: str = "rankme_covariance", *, title: str | None = None):
    """``metric`` against training step, one line per layer (paper 2's Fig 3 layout)."""
    import numpy as np

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
    import numpy as np

    from .spectral import RANKME_LABELS

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


# --- post-training geometry and eigen-direction ablation (notebook 08) ---------------------

#: One colour per post-training stage (shaded behind the trajectories).
STAGE_COLORS = {"sft": "#1f77b4", "dpo": "#2ca02c", "rl": "#d62728"}


def _shade_stages(ax, table) -> None:
    """Shade each stage's span on an axis whose x is ``table['position']``."""
    from .posttrain import STAGE_TITLES

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


def plot_posttrain_trajectory(table, panels, *, title: str | None = None):
    """Measures over every saved checkpoint of the three stages, in training order.

    ``table`` is ``PosttrainMeasurements.trajectory``; ``panels`` is a list of
    ``(axis title, [(column, label), ...])``. The checkpoints are evenly spaced on the x axis
    (each stage saves on Pythia's log-then-linear schedule); tick labels give the step within
    the stage, ``0`` being the base model.
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
    for ax, (panel_title, series) in zip(axes.flat, panels, strict=False):
        for column, label in series:
            ax.plot(x, table[column], marker=".", ms=4, lw=1.4, label=label)
        _shade_stages(ax, table)
        ax.set_title(panel_title, pad=14)
        ax.set_xticks(x[marks], [str(int(steps[i])) for i in marks], fontsize=7)
        ax.set_xlabel("checkpoint (evenly spaced; tick = step in its stage)", fontsize=8)
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def _log2_integer_axis(ax) -> None:
    """A base-2 log x axis labelled with plain integers (1, 2, 4, ...)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


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
    import numpy as np

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
        _log2_integer_axis(a)
        a.set_xlabel(f"k (of n = {n} samples per prompt)")
    ax.set_ylabel("pass@k (unbiased estimator)")
    ax.legend(frameon=False, fontsize=8)
    ax_d.axhline(0, color="k", lw=0.8)
    ax_d.set_ylabel(f"pass@k minus {reference}")
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def plot_ablation(
    tables: dict,
    metrics: dict,
    *,
    floors: dict | None = None,
    mark_k=None,
    title: str | None = None,
):
    """Downstream metric when only the top-k eigen-directions are kept or when they are
    removed, against k (log axis); one panel per table (``spectral.ablation_sweep`` output),
    ``metrics[name] = (column, axis label)``. Dotted line: no ablation; dashed grey line:
    keep k = 0 (every token replaced by the mean), when the table has it; ``floors[name] =
    (value, label)`` adds another reference line (e.g. the majority-class accuracy);
    ``mark_k`` shades one k (e.g. the paper's 10)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 3.8), squeeze=False)
    for ax, (name, table) in zip(axes.flat, tables.items(), strict=True):
        column, label = metrics[name]
        base = float(table.loc[table["mode"] == "none", column].iloc[0])
        for mode, style in (("keep", "o-"), ("remove", "s--")):
            part = table[table["mode"] == mode].sort_values("k")
            part = part[part["k"] > 0]
            ax.plot(part["k"], part[column], style, ms=4, label=f"{mode} top-k")
        ax.axhline(base, color="k", lw=1.0, ls=":", label="no ablation", zorder=5)
        mean_only = table[(table["mode"] == "keep") & (table["k"] == 0)]
        if len(mean_only):
            ax.axhline(
                float(mean_only[column].iloc[0]),
                color="0.5",
                lw=1,
                ls="--",
                label="mean only (keep k = 0)",
            )
        if floors and name in floors:
            value, floor_label = floors[name]
            ax.axhline(value, color="0.3", lw=1, ls="-.", label=floor_label)
        if mark_k:
            ax.axvline(mark_k, color="0.85", lw=6, zorder=0)
        _log2_integer_axis(ax)
        ax.set_xlabel(f"k (eigen-directions, of d = {int(table['k'].max())})")
        ax.set_ylabel(label)
        ax.set_title(name)
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig
